"""mlops_pipeline.serving.challenger and the app around it: a challenger beside the champion (shadow, canary), one
that raises or cannot load, and POST /feedback. In process (Starlette's TestClient) against a real tracking server
and registry; the inference log in a temporary folder, read back as files."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient
from sklearn.datasets import load_iris
from starlette.testclient import TestClient

from conftest import metric_value, train_run, wait_for
from mlops_pipeline import registry
from mlops_pipeline.monitoring import log_reader
from mlops_pipeline.schema import CHALLENGER, MODEL_ARTIFACT
from mlops_pipeline.serving import app as serve
from mlops_pipeline.serving import model as served
from mlops_pipeline.serving.challenger import FeedbackError, Runs, in_canary, parse_feedback
from mlops_pipeline.serving.inference_log import InferenceLog
from mlops_pipeline.settings import LogSettings, TrainSettings, from_env

ROWS = load_iris().data.tolist()


@pytest.fixture
def tracking(tracking_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_server)
    mlflow.set_tracking_uri(tracking_server)
    return tracking_server


@pytest.fixture(scope="module")
def versions(tracking_server: str) -> tuple[str, str, str]:
    """A registered model with a champion (version 1) and a different challenger (version 2, stumps)."""
    name = f"iris-challenger-{uuid.uuid4().hex[:8]}"
    mlflow.set_tracking_uri(tracking_server)
    first = train_run(tracking_server, "serve-test", rf_n_estimators=10)
    champion = registry.register_and_promote(first, from_env(TrainSettings, registered_model_name=name, min_accuracy=0))
    second = train_run(tracking_server, "serve-test", rf_n_estimators=10, rf_max_depth=1)
    challenger = mlflow.register_model(f"runs:/{second}/{MODEL_ARTIFACT}", name).version
    MlflowClient(tracking_server).set_registered_model_alias(name, CHALLENGER, challenger)
    return name, champion["version"], challenger


def app_client(name: str, recorder: InferenceLog | None = None, **settings: object) -> TestClient:
    app = serve.create_app(recorder=recorder, registered_model_name=name, model_poll_seconds=0.2, **settings)
    return TestClient(app)


def ask(client: TestClient, row: list[float], request_id: str) -> tuple[int, str, list]:
    answer = client.post("/invocations", json={"inputs": [row]}, headers={"X-Request-Id": request_id})
    return answer.status_code, answer.headers.get("X-Model-Version", ""), answer.json().get("predictions")


def records(folder: Path) -> list[dict]:
    return [json.loads(line) for path in sorted(folder.rglob("*.jsonl")) for line in path.read_text().splitlines()]


def metric(client: TestClient, name: str, **labels: str) -> float:
    return metric_value(client.get("/metrics").text, name, **labels)


# --- routing and feedback bodies, no server --------------------------------------------------------------------
@pytest.mark.parametrize("percent", [1, 10, 50])
def test_the_canary_share_holds_over_random_ids_and_an_id_always_goes_the_same_way(percent: float) -> None:
    ids = [uuid.uuid4().hex for _ in range(20_000)]
    picked = [in_canary(i, percent) for i in ids]
    assert abs(100 * sum(picked) / len(ids) - percent) <= 1.5
    assert [in_canary(i, percent) for i in ids[:2000]] == picked[:2000]
    assert not any(in_canary(i, 0) for i in ids[:2000]) and all(in_canary(i, 100) for i in ids[:2000])


def test_another_process_routes_every_id_alike() -> None:
    """Another process has another hash seed: the canary's hash must not depend on it, so every worker agrees."""
    ids = [uuid.uuid4().hex for _ in range(300)]
    code = "import sys; from mlops_pipeline.serving.challenger import in_canary as c; "
    code += "print(''.join('1' if c(i, 10) else '0' for i in sys.argv[1:]))"
    other = subprocess.run([sys.executable, "-c", code, *ids], capture_output=True, text=True, check=True)
    assert other.stdout.strip() == "".join("1" if in_canary(i, 10) else "0" for i in ids)
    assert 0 < other.stdout.count("1") < 300


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"{not json", "not JSON"),
        (b'"labels"', "must be"),
        (b"[]", "must be"),
        (b'{"request_id": "a1", "labels": [0], "rows": 1}', "rows: Extra inputs are not permitted"),
        (b'{"request_id": "a1", "labels": [3]}', "labels.0: Input should be less than 3"),
        (b'{"request_id": "a1", "labels": [-1]}', "labels.0: Input should be greater than or equal to 0"),
        (b'{"request_id": "a1", "labels": [true]}', "labels.0: Input should be a valid integer"),
        (b'{"request_id": "a1", "labels": [1.0]}', "labels.0: Input should be a valid integer"),
        (b'{"request_id": "a1", "labels": []}', "labels: List should have at least 1 item"),
        (b'{"request_id": "a b", "labels": [1]}', "request_id: String should match pattern"),
        (b'{"request_id": 12, "labels": [1]}', "request_id: Input should be a valid string"),
        (b'[{"request_id": "a1", "labels": [1]}, {"labels": [1]}]', "1.request_id: Field required"),
        (json.dumps([{"request_id": "a", "labels": [0]}] * 10_001).encode(), "at most 10000"),
    ],
)
def test_a_feedback_body_is_refused_naming_its_problem(body: bytes, problem: str) -> None:
    with pytest.raises(FeedbackError, match=problem.replace(".", r"\.").replace("[", r"\[")):
        parse_feedback(body)


def test_feedback_is_one_object_or_a_list() -> None:
    assert [(f.request_id, f.labels) for f in parse_feedback(b'{"request_id": "r-1", "labels": [0, 2]}')] == [
        ("r-1", [0, 2])
    ]
    many = parse_feedback(b'[{"request_id": "a", "labels": [1]}, {"request_id": "b:2", "labels": [2, 2, 0]}]')
    assert [f.request_id for f in many] == ["a", "b:2"]


# --- the app with a registry -------------------------------------------------------------------------------------
def test_shadow_never_changes_an_answer_and_logs_both_versions_under_each_request_id(
    tracking: str, versions: tuple[str, str, str], tmp_path: Path
) -> None:
    name, champion, challenger = versions
    with app_client(name, model_server_compiled=False) as alone:  # the champion's answers with no challenger
        expected = [ask(alone, row, f"alone-{i}")[2] for i, row in enumerate(ROWS)]
    recorder = InferenceLog(tmp_path, flush_seconds=3600)
    with app_client(name, recorder, model_server_compiled=False) as client:
        wait_for("the challenger", lambda: "challenger" in client.get("/model").json(), 30)
        about = client.get("/model").json()
        assert about["model_version"] == champion
        assert about["challenger"]["model_version"] == challenger and about["challenger"]["mode"] == "shadow"
        counts = [  # the counters of this process: earlier apps in it counted too
            (
                "model_server_challenger_predictions_total",
                {"model_version": challenger, "mode": "shadow", "result": "ok"},
            ),
            ("model_server_answers_total", {"model_version": champion, "role": "champion"}),
        ]
        before = [metric(client, name, **labels) for name, labels in counts]
        answers = [ask(client, row, f"req-{i}") for i, row in enumerate(ROWS)]
        done = lambda: metric(client, counts[0][0], **counts[0][1]) - before[0] >= len(ROWS)  # noqa: E731
        wait_for("the shadow's batches", done, 10)  # the worker's tick scores them, after the answers
        shadowed, served = (metric(client, n, **labels) - b for (n, labels), b in zip(counts, before, strict=True))
    assert [a[:2] for a in answers] == [(200, champion)] * len(ROWS)
    assert [a[2] for a in answers] == expected
    logged = records(tmp_path)
    by_id: dict[str, dict[str, list]] = {}
    for record in logged:
        kind = "shadow" if record.get("shadow") else "served"
        by_id.setdefault(record["request_id"], {})[kind] = [record["model_version"], record["predictions"]]
    assert len(by_id) == len(ROWS) and all(set(kinds) == {"served", "shadow"} for kinds in by_id.values())
    assert all(kinds["served"][0] == champion and kinds["shadow"][0] == challenger for kinds in by_id.values())
    differ = sum(kinds["served"][1] != kinds["shadow"][1] for kinds in by_id.values())
    assert differ > 0, "the challenger predicts as the champion does: this test could not see a changed answer"
    assert shadowed == len(ROWS) and served == len(ROWS)
    frame = log_reader.read(LogSettings(inference_log_dir=tmp_path), since=datetime(2000, 1, 1, tzinfo=UTC))
    assert len(frame) == len(ROWS) and set(frame["model_version"]) == {champion}  # drift reads what was served


def test_canary_answers_its_share_by_request_id_and_names_the_version(
    tracking: str, versions: tuple[str, str, str]
) -> None:
    name, champion, challenger = versions
    with app_client(name, challenger_mode="canary", canary_percent=30) as client:
        wait_for("the challenger", lambda: "challenger" in client.get("/model").json(), 30)
        assert client.get("/model").json()["challenger"]["canary_percent"] == 30
        ids = [uuid.uuid4().hex for _ in range(300)]
        first = [ask(client, ROWS[0], i) for i in ids]
        again = [ask(client, ROWS[0], i) for i in ids]
    assert [v for _, v, _ in first] == [challenger if in_canary(i, 30) else champion for i in ids]
    assert [v for _, v, _ in again] == [v for _, v, _ in first]  # the same ID, the same model
    assert 0.2 < Counter(v for _, v, _ in first)[challenger] / len(ids) < 0.4


class Raising(mlflow.pyfunc.PythonModel):
    """A challenger that fails on every request."""

    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201
        raise RuntimeError("the challenger is broken")


class ExtraRow(mlflow.pyfunc.PythonModel):
    """A challenger that answers with one prediction too many (a wrong shape MLflow itself lets through)."""

    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201
        return np.ones(len(model_input) + 1, dtype=np.int64)


@pytest.mark.parametrize("mode", ["shadow", "canary"])
@pytest.mark.parametrize("broken_model", [Raising, ExtraRow])
def test_a_broken_challenger_leaves_every_answer_to_the_champion(
    tracking: str, mode: str, broken_model: type, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="model-server")
    name = f"iris-raising-{uuid.uuid4().hex[:8]}"
    first = train_run(tracking, "serve-test", rf_n_estimators=10)
    champion = registry.register_and_promote(first, from_env(TrainSettings, registered_model_name=name, min_accuracy=0))
    with mlflow.start_run(experiment_id=mlflow.set_experiment("serve-test").experiment_id):
        info = mlflow.pyfunc.log_model(name=MODEL_ARTIFACT, python_model=broken_model(), pip_requirements=["mlflow"])
    broken = mlflow.register_model(info.model_uri, name).version
    MlflowClient(tracking).set_registered_model_alias(name, CHALLENGER, broken)
    with app_client(name, challenger_mode=mode, canary_percent=100, model_server_compiled=False) as client:
        wait_for("the challenger", lambda: "challenger" in client.get("/model").json(), 30)
        labels = {"model_version": broken, "mode": mode, "result": "error"}
        before = metric(client, "model_server_challenger_predictions_total", **labels)
        answers = [ask(client, row, f"r{i}") for i, row in enumerate(ROWS[:40])]
        failed = lambda: metric(client, "model_server_challenger_predictions_total", **labels) - before  # noqa: E731
        wait_for("the challenger's 40 errors", lambda: failed() >= 40, 10)
        assert failed() == 40
    assert {a[:2] for a in answers} == {(200, champion["version"])}
    assert [a[2] for a in answers] == [[0]] * 40  # the first 40 Iris rows are setosa


def test_the_shadow_batch_records_each_request_as_if_scored_alone(
    tracking: str, versions: tuple[str, str, str], tmp_path: Path
) -> None:
    """One tick's queue, mixed: plain requests (one predict call for all), other formats and bodies that fail
    (each on its own), and a plain request that fails the batch call (then every request goes one by one)."""
    name, _, version = versions
    recorder = InferenceLog(tmp_path, flush_seconds=3600)
    challenger = served.load(f"models:/{name}/{version}", version, recorder=recorder, name=name)
    assert challenger.compiled is not None  # the batch goes through the compiled copy
    json_type, plain = "application/json", lambda rows: json.dumps({"inputs": rows}).encode()  # noqa: E731
    good = {
        "one": (plain([ROWS[0]]), json_type),
        "three": (plain(ROWS[50:53]), json_type),
        "split": (json.dumps({"dataframe_split": {"data": ROWS[100:102]}}).encode(), json_type),
        "not-json": (b"{", json_type),
    }
    runs = Runs(counted=False)
    recorder.start()
    try:
        for request_id, (body, content_type) in good.items():
            runs.shadow(challenger, body, content_type, request_id)
        asyncio.run(runs.run_shadows())
        assert (runs.failures, list(runs.queued)) == (1, [])  # "not-json" alone failed
        for request_id, (body, content_type) in good.items():
            runs.shadow(challenger, body, content_type, f"{request_id}-2")
        runs.shadow(challenger, plain([[1.0, 2.0]]), json_type, "too-narrow-2")  # fails the batch's call
        asyncio.run(runs.run_shadows())
        assert runs.failures == 3  # "not-json-2" and "too-narrow-2", each on its own
    finally:
        recorder.close()
    logged = {r["request_id"]: r for r in records(tmp_path)}
    expected = {
        "one": ROWS[0:1],
        "three": ROWS[50:53],
        "split": ROWS[100:102],
    }
    assert set(logged) == {*expected, *(f"{k}-2" for k in expected)}
    for request_id, rows in expected.items():
        want = challenger.model.get_raw_model().predict(np.array(rows)).tolist()
        for logged_id in (request_id, f"{request_id}-2"):
            record = logged[logged_id]
            assert (record["inputs"], record["predictions"], record["shadow"]) == (rows, want, True)
            assert record["model_version"] == version


def test_a_challenger_that_cannot_load_never_disturbs_the_champion(
    tracking: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="model-server")
    name = f"iris-unloadable-{uuid.uuid4().hex[:8]}"
    first = train_run(tracking, "serve-test", rf_n_estimators=10)
    champion = registry.register_and_promote(first, from_env(TrainSettings, registered_model_name=name, min_accuracy=0))
    client = MlflowClient(tracking)
    empty = client.create_run(client.get_experiment_by_name("serve-test").experiment_id).info
    client.set_terminated(empty.run_id)
    broken = client.create_model_version(name, source=f"{empty.artifact_uri}/model", run_id=empty.run_id)
    client.set_registered_model_alias(name, CHALLENGER, broken.version)
    with app_client(name) as app:
        wait_for("the failed load", lambda: "could not load the challenger" in caplog.text, 30)
        assert ask(app, ROWS[0], "x1") == (200, champion["version"], [0])
        assert "challenger" not in app.get("/model").json()
        client.delete_registered_model_alias(name, CHALLENGER)
        assert ask(app, ROWS[100], "x2") == (200, champion["version"], [2])


def test_feedback_is_recorded_and_a_bad_body_records_nothing(
    tracking: str, versions: tuple[str, str, str], tmp_path: Path
) -> None:
    name = versions[0]
    recorder = InferenceLog(tmp_path, flush_seconds=3600)
    with app_client(name, recorder, challenger_mode="off") as client:
        assert ask(client, ROWS[0], "req-1")[0] == 200
        one = client.post("/feedback", json={"request_id": "req-1", "labels": [0]})
        many = client.post(
            "/feedback", json=[{"request_id": "req-2", "labels": [1, 2]}, {"request_id": "never-served", "labels": [0]}]
        )
        refused = [
            client.post("/feedback", json={"request_id": "req-3", "labels": [7]}),
            client.post("/feedback", content=b"{", headers={"Content-Type": "application/json"}),
            client.post(
                "/feedback", content=b'{"request_id": "r", "labels": [0]}', headers={"Content-Type": "text/plain"}
            ),
            client.post(
                "/feedback", content=b"[" + b" " * (1024 * 1024) + b"]", headers={"Content-Type": "application/json"}
            ),
        ]
    assert (one.status_code, one.json()) == (202, {"recorded": 1, "dropped": 0})
    assert (many.status_code, many.json()) == (202, {"recorded": 2, "dropped": 0})
    assert [r.status_code for r in refused] == [400, 400, 415, 413]
    assert "labels.0: Input should be less than 3" in refused[0].json()["message"]
    feedback = [r for r in records(tmp_path) if "labels" in r]
    assert [(r["request_id"], r["labels"]) for r in feedback] == [
        ("req-1", [0]),
        ("req-2", [1, 2]),
        ("never-served", [0]),
    ]
    assert all(set(r) == {"ts", "request_id", "labels"} for r in feedback)
    frame = log_reader.read(LogSettings(inference_log_dir=tmp_path), since=datetime(2000, 1, 1, tzinfo=UTC))
    assert list(frame["request_id"]) == ["req-1"]  # feedback is not a served row


def test_feedback_without_an_inference_log_says_so(tracking: str, versions: tuple[str, str, str]) -> None:
    with app_client(versions[0]) as client:
        answer = client.post("/feedback", json={"request_id": "a", "labels": [0]})
    assert answer.status_code == 503 and "INFERENCE_LOG is off" in answer.json()["message"]
