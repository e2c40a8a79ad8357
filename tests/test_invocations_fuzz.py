"""Property-based fuzzing of the model-server's /invocations (serving/app.py, in process through Starlette's
TestClient, serving a real model from a real tracking server).

More than 1,000 malformed requests go to the app: invalid JSON text, JSON of the wrong type or
shape for each of MLflow's input formats, huge numbers, NaN/Infinity literals, deep nesting, empty bodies,
wrong or missing content types and bodies above MODEL_SERVER_MAX_BODY_BYTES. Each must get a 4xx with a JSON
error body (never a 5xx, never a broken connection), and the server must still answer correctly afterwards.
MLflow 3.17's own app fails three of these with a 500 (and then drops the keep-alive connection): no
Content-Type, nesting deeper than the recursion limit, integers of more than 4,300 digits; and answers 415s as
text/plain. mlops_pipeline/serving/app.py (point 4 of its docstring) turns those into JSON 4xx; this test keeps it so.

Every payload is invalid by construction. What MLflow accepts (measured, so never generated as "malformed"):
rows of 4 numbers where a cell may also be null, NaN, a bool or a numeric string (" 1 ", "1_0" and "١" too);
keys it does not know next to exactly one input key; a dataframe_split with ragged rows (padded with NaN),
null or duplicate columns, or an index longer than the data; dataframe_records of plain lists. The
RandomForest predicts NaN/null cells (scikit-learn's missing-value support): 200, not an error.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import mlflow
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from mlops_pipeline.serving import app as serve

LIMIT = 1024 * 1024  # MODEL_SERVER_MAX_BODY_BYTES for this server: oversized bodies stay cheap
SEED = {"inputs": [[5.1, 3.5, 1.4, 0.2]]}
JSON = "application/json"
FORMATS = ("inputs", "instances", "dataframe_split", "dataframe_records")  # MLflow's input keys
LLM_KEYS = ("input", "prompt", "messages")  # MLflow's "unified LLM" keys: the whole body goes to the model
FLOAT_FREE = "gkmqwzGKMQWZ#@!%?"  # no float spelling (digits, e, inf, nan, infinity, _) contains these


class Raw(str):
    """JSON text emitted as is (numbers Python cannot print, e.g. an integer of 5,000 digits)."""


def to_json(value: object) -> str:
    """json.dumps (NaN and Infinity as the literals Python's json reads) with Raw pieces kept as they are."""
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(to_json(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{to_json(k)}: {to_json(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


@dataclass(frozen=True)
class Case:
    kind: str
    body: bytes
    content_type: str | None = JSON  # None: no Content-Type header at all
    expect: int = 400
    chunked: bool = False  # send without Content-Length (Transfer-Encoding: chunked)

    def __repr__(self) -> str:  # what Hypothesis prints for a failing case
        shown = self.body if len(self.body) <= 300 else self.body[:150] + b"..." + self.body[-50:]
        return (
            f"Case(kind={self.kind!r}, content_type={self.content_type!r}, expect={self.expect}, "
            f"chunked={self.chunked}, len={len(self.body)}, body={shown!r})"
        )


def json_case(kind: str, value: object, content_type: str = JSON) -> Case:
    return Case(kind, to_json(value).encode(), content_type)


# --- building blocks
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
# A cell MLflow accepts in a row of 4 (null and NaN are missing values the forest handles).
valid_cells = (
    st.floats(-1e6, 1e6)
    | st.integers(-(10**6), 10**6)
    | st.floats(-1e3, 1e3).map(repr)
    | st.none()
    | st.just(math.nan)
    | st.booleans()
)
# A cell that makes any row invalid.
non_numeric_strings = st.builds(
    lambda a, c, b: a + c + b, st.text(max_size=5), st.sampled_from(FLOAT_FREE), st.text(max_size=5)
)
huge_floats = st.floats(min_value=1e39, max_value=1.7e308) | st.floats(min_value=-1.7e308, max_value=-1e39)
huge_ints = st.builds(  # 40 digits overflow float32 (the forest's dtype), 310 float64, 4,301 Python's int parser
    lambda sign, digit, n: Raw(sign + digit + "0" * n),
    st.sampled_from(["", "-"]),
    st.sampled_from("123456789"),
    st.integers(39, 6000),
)
huge_literals = st.sampled_from([Raw("1e400"), Raw("-1e400"), Raw("1e99999"), Raw("1E39"), Raw("-3.5e38")])
poison_cells = (
    non_numeric_strings
    | st.sampled_from([math.inf, -math.inf])
    | huge_floats
    | huge_ints
    | huge_literals
    | st.lists(valid_cells, max_size=3)  # a nested list: ragged or 3-D
    | st.dictionaries(st.text(max_size=5), valid_cells, max_size=3)
)
valid_rows = st.lists(valid_cells, min_size=4, max_size=4)


@st.composite
def poisoned_rows(draw: st.DrawFn) -> list:
    """Rows of 4 cells, at least one of them poisoned, among valid rows."""
    bad = draw(valid_rows)
    bad[draw(st.integers(0, 3))] = draw(poison_cells)
    rows = draw(st.lists(valid_rows, max_size=3))
    rows.insert(draw(st.integers(0, len(rows))), bad)
    return rows


@st.composite
def wrong_width_rows(draw: st.DrawFn, ragged_ok_up_to_4: bool = False) -> list:
    """Rows whose widths are not all 4 (for pandas, which pads ragged rows, the widest must not be 4)."""
    widths = draw(st.lists(st.integers(0, 8), min_size=1, max_size=4).filter(lambda w: any(x != 4 for x in w)))
    if ragged_ok_up_to_4 and max(widths) == 4:
        widths.append(draw(st.sampled_from([5, 6, 7, 8])))
    return [draw(st.lists(valid_cells, min_size=w, max_size=w)) for w in widths]


bad_tensors = st.one_of(
    poisoned_rows(),
    wrong_width_rows(),
    st.just([]),
    st.lists(valid_cells, min_size=1, max_size=8),  # 1-D
    st.lists(valid_rows, min_size=1, max_size=3).map(lambda rows: [rows]),  # 3-D
    st.lists(st.dictionaries(st.text(max_size=5), valid_cells | valid_rows, max_size=4), min_size=1, max_size=3),
    scalars,
    st.dictionaries(st.text(max_size=5), json_values, max_size=4),
)
extra_keys = st.dictionaries(  # ignored by MLflow next to exactly one input key
    st.text(max_size=10).filter(lambda k: k not in FORMATS + LLM_KEYS) | st.just("params"), json_values, max_size=2
)


@st.composite
def bad_split(draw: st.DrawFn) -> object:
    rows4 = st.lists(valid_rows, min_size=1, max_size=3)
    names = st.lists(st.text(max_size=4), min_size=0, max_size=7)
    choice = draw(st.integers(0, 6))
    if choice == 0:  # not an object
        return draw(json_values.filter(lambda v: not isinstance(v, dict)))
    if choice == 1:  # no "data"
        return draw(st.dictionaries(st.sampled_from(["columns", "Data", "rows", "values"]), json_values, max_size=3))
    if choice == 2:  # a key split format does not have
        return {"data": draw(rows4), draw(st.sampled_from(["foo", "Data", "dtype", "orient"])): draw(json_values)}
    if choice == 3:  # data of the wrong type
        return {"data": draw(scalars | st.dictionaries(st.text(max_size=5), json_values, max_size=3))}
    if choice == 4:  # widest row is not 4 columns
        return {"data": draw(wrong_width_rows(ragged_ok_up_to_4=True))}
    if choice == 5:  # as many column names as cells, but not 4
        cols = draw(names.filter(lambda c: len(c) != 4))
        return {"columns": cols, "data": draw(st.lists(valid_rows, min_size=1, max_size=2))}
    return {"columns": ["a", "b", "c", "d"], "data": draw(poisoned_rows())}


@st.composite
def bad_records(draw: st.DrawFn) -> object:
    choice = draw(st.integers(0, 4))
    if choice == 0:  # not a list
        return draw(json_values.filter(lambda v: not isinstance(v, list)))
    if choice == 1:  # plain values: one column
        return draw(st.lists(scalars, max_size=5))
    if choice == 2:  # lists: the widest is not 4
        return draw(wrong_width_rows(ragged_ok_up_to_4=True))
    if choice == 3:  # records with the same keys, not 4 of them
        keys = draw(st.lists(st.text(max_size=4), unique=True, max_size=7).filter(lambda k: len(k) != 4))
        cells = st.lists(valid_cells, min_size=len(keys), max_size=len(keys))
        return [dict(zip(keys, draw(cells), strict=True)) for _ in range(draw(st.integers(1, 3)))]
    return [dict(zip("abcd", row, strict=True)) for row in draw(poisoned_rows())]  # 4 keys, a poisoned value


@st.composite
def wrong_shapes(draw: st.DrawFn) -> Case:
    """Valid JSON, exactly one input key, a value of the wrong type or shape."""
    key = draw(st.sampled_from(FORMATS))
    value = draw(
        bad_tensors if key in ("inputs", "instances") else bad_split() if key == "dataframe_split" else bad_records()
    )
    return json_case(f"wrong-{key}", {key: value, **draw(extra_keys)})


@st.composite
def wrong_keys(draw: st.DrawFn) -> Case:
    """A JSON object with none of MLflow's input keys, or more than one."""
    if draw(st.booleans()):
        keys = st.text(max_size=12).filter(lambda k: k not in FORMATS) | st.sampled_from(
            ["params", *LLM_KEYS, "Inputs", "INSTANCES", "dataframe", "data", "columns", "input_data", ""]
        )
        obj = draw(st.dictionaries(keys, json_values | valid_rows.map(lambda r: [r]), max_size=4))
    else:
        chosen = draw(st.lists(st.sampled_from(FORMATS), min_size=2, max_size=4, unique=True))
        obj = {k: draw(json_values | st.just(SEED["inputs"])) for k in chosen}
    return json_case("wrong-keys", obj)


def undecodable(body: bytes) -> bool:
    try:
        json.loads(body)
    except (ValueError, RecursionError):
        return True
    return False


seed_text = to_json(SEED)
invalid_json = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200).map(str.encode),
    st.lists(
        st.sampled_from(['{"inputs": ', "{", "}", "[", "]", ",", ":", '"', "'", "NaN", "Infinity", "nan", "inf"])
        | st.sampled_from(["undefined", "None", "True", "1e", "--1", "0x10", ".5", "01", "\\u12", "[5.1,]", "1_0"])
        | st.text(max_size=3),
        min_size=1,
        max_size=12,
    ).map(lambda parts: "".join(parts).encode()),
    st.tuples(st.integers(0, len(seed_text) - 1), st.integers(0, 5), st.text(max_size=3)).map(
        lambda t: (seed_text[: t[0]] + t[2] + seed_text[t[0] + t[1] :]).encode()  # the seed, edited
    ),
).filter(undecodable)
invalid_json_cases = st.builds(
    lambda body, ctype: Case("invalid-json", body, ctype),
    invalid_json,
    st.sampled_from([JSON, "application/json; charset=utf-8", "application/json;charset=UTF-8"]),
)
non_objects = json_values.filter(lambda v: not isinstance(v, dict)).map(lambda v: json_case("not-an-object", v))


@st.composite
def huge_numbers(draw: st.DrawFn) -> Case:
    """A number no float32 (the forest's dtype) holds, anywhere a number could be, including 400-digit ints."""
    number = draw(huge_floats | huge_ints | huge_literals | st.sampled_from([1e308, -1e308, math.inf, -math.inf]))
    row = draw(valid_rows)
    row[draw(st.integers(0, 3))] = number
    where = draw(st.sampled_from(["inputs", "instances", "split", "records", "bare", "scalar"]))
    value = {
        "inputs": {"inputs": [row]},
        "instances": {"instances": [row]},
        "split": {"dataframe_split": {"data": [row]}},
        "records": {"dataframe_records": [dict(zip("abcd", row, strict=True))]},
        "bare": [row],
        "scalar": {"inputs": number},
    }[where]
    return json_case("huge-number", value)


@st.composite
def nan_literals(draw: st.DrawFn) -> Case:
    """NaN/Infinity literals in otherwise wrong places (a NaN cell in a good row is a missing value: 200)."""
    literal = draw(st.sampled_from([Raw("NaN"), Raw("Infinity"), Raw("-Infinity")]))
    value = draw(
        st.sampled_from(
            [
                literal,
                [literal],
                {"inputs": literal},
                {"instances": [literal, literal, literal, literal]},
                {"inputs": [[literal]]},
                {"inputs": [[Raw("Infinity"), 1, 2, 3]]},
                {"dataframe_split": literal},
                {"dataframe_split": {"data": [[literal] * 5]}},
                {"dataframe_records": [literal]},
                {literal: 1},  # a JSON key must be a string: not even JSON
            ]
        )
    )
    return json_case("nan-infinity", value)


@st.composite
def deep_nesting(draw: st.DrawFn) -> Case:
    depth = draw(st.integers(3, 2000) | st.integers(2000, 20000))
    shape = draw(st.sampled_from(["open", "closed", "inputs", "objects", "mixed"]))
    body = {
        "open": "[" * depth,
        "closed": "[" * depth + "]" * depth,
        "inputs": '{"inputs": ' + "[" * depth + "1" + "]" * depth + "}",
        "objects": '{"a": ' * depth + "1" + "}" * depth,
        "mixed": '{"inputs": ' + '[{"x": ' * depth + "1" + "}]" * depth + "}",
    }[shape]
    return Case(f"deep-{shape}", body.encode())


UNSUPPORTED_TYPES = [
    None,
    "text/plain",
    "application/xml",
    "text/xml",
    "text/html",
    "application/x-www-form-urlencoded",
    "multipart/form-data",
    "application/octet-stream",
    "application/x-ndjson",
    "application/jsonl",
    "application/json-patch+json",
    "text/json",
    "application/javascript",
    "image/png",
    "*/*",
    "",
    "json",
    "application/json; charset=latin-1",
    "application/json; charset=utf-16",
    "application/json; format=pandas-split",  # MLflow 1.x's content type
    "application/json; foo=bar",
    "text/csv; header=present",
]
SUPPORTED_TYPES = {"application/json", "text/csv", "application/vnd.apache.parquet"}
random_types = st.from_regex(r"[a-z]{1,12}/[a-z0-9.+-]{1,20}", fullmatch=True).filter(
    lambda t: t not in SUPPORTED_TYPES
)
random_charsets = st.from_regex(r"[A-Za-z0-9-]{1,12}", fullmatch=True).filter(lambda c: c.lower() != "utf-8")
wrong_content_types = st.builds(
    lambda ctype, body: Case("content-type", body, ctype, expect=415),
    st.sampled_from(UNSUPPORTED_TYPES) | random_types | random_charsets.map(lambda c: f"application/json; charset={c}"),
    st.sampled_from([seed_text.encode(), b"", b"<inputs>5.1</inputs>", b"a,b,c,d\n5.1,3.5,1.4,0.2\n"])
    | st.binary(max_size=100),
)
empty_bodies = st.sampled_from(
    [
        Case("empty", b"", JSON),
        Case("empty", b"", "application/json; charset=utf-8"),
        Case("empty", b"", "text/csv"),
        Case("empty", b"", "application/vnd.apache.parquet"),
        Case("empty", b" \n\t ", JSON),
        Case("empty", b"", None, expect=415),
        Case("empty", b"", "text/plain", expect=415),
    ]
)


@st.composite
def other_formats(draw: st.DrawFn) -> Case:
    """CSV (MLflow cannot read it for a tensor signature) and Parquet bodies that are not what they claim."""
    if draw(st.booleans()):
        junk = draw(st.binary(max_size=200).filter(lambda b: not b.startswith(b"PAR1")))  # no Parquet magic
        return Case("parquet", junk, "application/vnd.apache.parquet")
    cols = draw(st.sampled_from([1, 2, 3, 5, 6, 7]))  # never the 4 columns the model takes
    header = ",".join(draw(st.lists(st.from_regex(r"[a-z]{1,3}", fullmatch=True), min_size=cols, max_size=cols)))
    cell = st.floats(-10, 10).map(repr) | st.from_regex(r"[a-z#@!]{1,5}", fullmatch=True)
    rows = draw(st.lists(st.lists(cell, min_size=1, max_size=7).map(",".join), max_size=3))
    return Case("csv", "\n".join([header, *rows]).encode(), "text/csv")


@st.composite
def oversized(draw: st.DrawFn) -> Case:
    """Above MODEL_SERVER_MAX_BODY_BYTES: with a Content-Length (refused unread) or chunked (refused at LIMIT)."""
    size = draw(st.integers(LIMIT + 1, 3 * LIMIT))
    unit = draw(st.sampled_from([b" ", b"[", b"\x00", b"9", b"[5.1, 3.5, 1.4, 0.2], "]))
    body = (unit * (size // len(unit) + 1))[:size]
    if draw(st.booleans()):  # even a perfectly good request is refused for its size
        rows = ", ".join(["[5.1, 3.5, 1.4, 0.2]"] * (size // 22 + 1))
        body = ('{"inputs": [' + rows + "]}").encode()
    ctype = draw(st.sampled_from([JSON, "text/csv", "text/plain", None]))
    expect = 415 if ctype is None else 413  # a missing Content-Type is refused first, before the body is read
    return Case("oversized", body, ctype, expect=expect, chunked=draw(st.booleans()))


malformed_requests = st.one_of(  # wrong shapes (3x) and deep nesting (2x) drawn more often
    invalid_json_cases,
    non_objects,
    wrong_keys(),
    wrong_shapes(),
    wrong_shapes(),
    wrong_shapes(),
    huge_numbers(),
    nan_literals(),
    deep_nesting(),
    deep_nesting(),
    empty_bodies,
    wrong_content_types,
    other_formats(),
    oversized(),
)


# --- the test
@pytest.fixture(scope="module")
def clients(tracking_server: str, trained_run: str) -> Iterator[tuple[TestClient, TestClient]]:
    """The model-server app (serving/app.py) in process, serving the trained run with a 1 MiB body limit: with
    the compiled runtime (ONNX Runtime) and with scikit-learn's predict (MODEL_SERVER_COMPILED=false)."""
    mlflow.set_tracking_uri(tracking_server)
    apps = [
        serve.create_app(
            model_uri=f"runs:/{trained_run}/model", model_server_max_body_bytes=LIMIT, model_server_compiled=c
        )
        for c in (True, False)
    ]
    with (
        TestClient(apps[0], raise_server_exceptions=False) as compiled,  # a 500 must be seen as one
        TestClient(apps[1], raise_server_exceptions=False) as sklearn,
    ):
        assert compiled.get("/model").json()["runtime"] == "onnxruntime"
        assert sklearn.get("/model").json()["runtime"] == "scikit-learn"
        yield compiled, sklearn


@pytest.fixture(scope="module")
def client(clients: tuple[TestClient, TestClient]) -> TestClient:
    return clients[0]


def send(client: TestClient, case: Case) -> httpx.Response:
    headers = {} if case.content_type is None else {"Content-Type": case.content_type}
    content: object = case.body
    if case.chunked:
        content = (case.body[i : i + 65536] for i in range(0, len(case.body), 65536))
    return client.post("/invocations", content=content, headers=headers)


def same_answer(clients: tuple[TestClient, TestClient], case: Case) -> httpx.Response:
    """The compiled runtime's answer, after checking it is the scikit-learn path's, status and bytes."""
    compiled, sklearn = (send(c, case) for c in clients)
    assert (compiled.status_code, compiled.content) == (sklearn.status_code, sklearn.content), case
    return compiled


def test_malformed_requests_get_a_json_4xx(
    clients: tuple[TestClient, TestClient], caplog: pytest.LogCaptureFixture
) -> None:
    client = clients[0]
    sent: Counter[str] = Counter()
    statuses: Counter[int] = Counter()

    # Generated cases (the @example cases come on top): the Hypothesis profile's count, 1,100 in make test and CI
    # ("thorough"), fewer in make test-fast ("quick", the edit loop); see tests/conftest.py.
    @settings(
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )
    @given(case=malformed_requests)
    @example(case=Case("deep-open", b"[" * 10_000))
    @example(case=Case("deep-inputs", b'{"inputs": ' + b"[" * 10_000 + b"1" + b"]" * 10_000 + b"}"))
    @example(case=Case("huge-number", b'{"inputs": [[' + b"9" * 400 + b", 3.5, 1.4, 0.2]]}"))
    @example(case=Case("huge-number", b'{"inputs": [[' + b"9" * 5000 + b", 3.5, 1.4, 0.2]]}"))
    @example(case=Case("huge-number", b'{"inputs": [[1e308, 3.5, 1.4, 0.2]]}'))
    @example(case=Case("nan-infinity", b'{"inputs": [[Infinity, 3.5, 1.4, 0.2]]}'))
    @example(case=Case("content-type", seed_text.encode(), None, expect=415))
    @example(case=Case("content-type", seed_text.encode(), "text/plain", expect=415))
    @example(case=Case("content-type", b"<inputs/>", "application/xml", expect=415))
    @example(case=Case("empty", b"", JSON))
    @example(case=Case("oversized", b"[" * (LIMIT + 1), JSON, expect=413))
    @example(case=Case("oversized", b"[" * (LIMIT + 1), JSON, expect=413, chunked=True))
    def check(case: Case) -> None:
        response = same_answer(clients, case)
        sent[case.kind] += 1
        statuses[response.status_code] += 1
        assert response.status_code == case.expect, (response.status_code, response.text[:500])
        assert response.headers["content-type"].startswith(JSON), response.headers
        body = response.json()
        assert isinstance(body, dict) and (body.get("error_code") or body.get("message")), body

    try:
        check()
    finally:
        print(f"\nfuzz: {sum(sent.values())} requests by kind {dict(sorted(sent.items()))}, statuses {dict(statuses)}")
    assert sum(sent.values()) >= 0.9 * settings().max_examples, sent

    # Still right, and nothing was logged as an unexpected error.
    assert client.get("/ping").status_code == 200
    answer = client.post("/invocations", json=SEED)
    assert answer.status_code == 200 and answer.json() == {"predictions": [0]}
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage()[:300] for r in errors]


def test_both_runtimes_answer_every_valid_request_alike(clients: tuple[TestClient, TestClient]) -> None:
    """Rows MLflow accepts (numbers far outside the training range, numeric strings, null/NaN, bools, integers):
    the compiled runtime gives the scikit-learn path's answer, byte for byte. Non-finite cells go to
    scikit-learn by design (Compiled.predict), so both answers come from it there."""
    statuses: Counter[int] = Counter()

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(rows=st.lists(valid_rows | st.lists(st.floats(-20, 20), min_size=4, max_size=4), min_size=1, max_size=30))
    @example(rows=[[5.1, 3.5, 1.4, 0.2]])
    @example(rows=[[None, 3.5, 1.4, 0.2], ["6.7", 3, True, 2.3]])
    def check(rows: list) -> None:
        response = same_answer(clients, json_case("valid", {"inputs": rows}))
        statuses[response.status_code] += 1

    check()
    assert statuses[200] >= 300, statuses  # valid by construction: answered, not refused
