"""update_run_id.sh against a real MLflow tracking server: picks the right run, edits .env safely.

Malformed answers come from a fake peer on 127.0.0.1: each must fail naming the problem and leave .env untouched."""

from __future__ import annotations

import http.server
import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from sklearn.datasets import load_iris

from conftest import ROOT, free_port
from mlops_pipeline import train

SCRIPT = ROOT / "update_run_id.sh"
ODD_ENV = (
    b"# a comment line\r\n"
    b"FERNET_KEY=abc=def==\r\n"
    b'QUOTED="value with spaces # not a comment"\r\n'
    b"LATEST_MODEL_RUN_ID=\r\n"
    b"\r\n"
    b"export OTHER='single=quoted'\r\n"
    b"LAST=no-final-newline"
)
FAKE_RUN_ID = "0123456789abcdef0123456789abcdef"
NO_RUN = (
    "no FINISHED run with a logged model in experiment '{experiment}' on {uri}. "
    "Trigger the DAG 'mlops_pipeline' and wait for it to succeed."
)


def run_script(env_file: Path, uri: str, experiment: str = "mlops_pipeline", **extra: str):  # noqa: ANN201
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_EXPERIMENT_NAME": experiment, **extra}
    return subprocess.run(
        [str(SCRIPT), "--env-file", str(env_file)], env=env, capture_output=True, text=True, timeout=60
    )


def lines_except_run_id(data: bytes) -> list[bytes]:
    return [line for line in data.split(b"\n") if not line.startswith(b"LATEST_MODEL_RUN_ID=")]


def odd_env_with(run_id: str) -> bytes:
    """ODD_ENV as the script must leave it: only the run ID filled in."""
    old = b"LATEST_MODEL_RUN_ID=\r\n"
    assert ODD_ENV.count(old) == 1
    return ODD_ENV.replace(old, f"LATEST_MODEL_RUN_ID={run_id}\r\n".encode())


@pytest.fixture
def env_file(tmp_path: Path) -> Path:
    path = tmp_path / ".env"
    path.write_bytes(ODD_ENV)
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def experiment(tracking_server: str) -> tuple[str, str]:
    """An experiment holding, newest last: an older model run, a model run (the answer), a failed run, a finished
    run without a model, a run still running. Each run gets an explicit start time, one second after the previous
    one, so the order never depends on the clock."""
    import mlflow

    name = "update-run-id-test"
    mlflow.set_tracking_uri(tracking_server)
    exp_id = mlflow.set_experiment(name).experiment_id  # also the active one, which log_run's resumed runs must match
    client = MlflowClient(tracking_server)
    start_times = iter(range(1_700_000_000_000, 1_700_000_100_000, 1_000))  # ms since the epoch

    def new_run() -> str:
        return client.create_run(exp_id, start_time=next(start_times)).info.run_id

    cfg = train.TrainConfig(n_estimators=5, max_depth=3)
    x, y = load_iris(return_X_y=True)
    model = train.fit(x, y, cfg)

    def model_run() -> str:
        run_id = new_run()
        with pytest.MonkeyPatch.context() as env:
            env.setenv("MLFLOW_RUN_ID", run_id)  # the mlflow.start_run() in log_run resumes this run
            assert train.log_run(model, cfg, x, {"accuracy": 1.0}) == run_id
        return run_id

    older = model_run()
    expected = model_run()
    assert older != expected
    client.set_terminated(new_run(), "FAILED")
    no_model = new_run()
    client.log_metric(no_model, "accuracy", 0.5)
    client.set_terminated(no_model, "FINISHED")
    new_run()  # still RUNNING: a training task that died midway
    return name, expected


def test_picks_newest_finished_run_with_a_model(tracking_server: str, experiment, env_file: Path) -> None:  # noqa: ANN001
    name, expected = experiment
    result = run_script(env_file, tracking_server, name)
    assert result.returncode == 0, result.stderr
    assert f"LATEST_MODEL_RUN_ID={expected}\r".encode() in env_file.read_bytes()
    assert env_file.read_bytes() == odd_env_with(expected)
    assert "docker compose up -d model-server" in result.stdout
    assert result.stdout.splitlines()[0] == (
        f"update_run_id: LATEST_MODEL_RUN_ID={expected} "
        f"(newest finished run with a model in experiment '{name}' on {tracking_server})"
    )
    assert result.stderr == ""


def test_keeps_every_other_line_byte_for_byte(tracking_server: str, experiment, env_file: Path) -> None:  # noqa: ANN001
    name, expected = experiment
    assert run_script(env_file, tracking_server, name).returncode == 0
    assert lines_except_run_id(env_file.read_bytes()) == lines_except_run_id(ODD_ENV)
    assert env_file.read_bytes().endswith(b"LAST=no-final-newline")
    assert env_file.stat().st_mode & 0o777 == 0o600
    assert env_file.read_bytes() == odd_env_with(expected)


def test_a_second_run_changes_nothing(tracking_server: str, experiment, env_file: Path) -> None:  # noqa: ANN001
    name, expected = experiment
    assert run_script(env_file, tracking_server, name).returncode == 0
    before = env_file.stat()
    result = run_script(env_file, tracking_server, name)
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        f"update_run_id: LATEST_MODEL_RUN_ID is already {expected} (newest finished run in '{name}'); .env unchanged.\n"
    )
    after = env_file.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns), "the file was rewritten"
    assert env_file.read_bytes() == odd_env_with(expected)


def test_appends_the_key_when_absent(tracking_server: str, experiment, tmp_path: Path) -> None:  # noqa: ANN001
    name, expected = experiment
    path = tmp_path / ".env"
    path.write_bytes(b"A=1\nB=2")
    assert run_script(path, tracking_server, name).returncode == 0
    assert path.read_bytes() == f"A=1\nB=2\nLATEST_MODEL_RUN_ID={expected}\n".encode()


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (b"", b"LATEST_MODEL_RUN_ID=@\n"),
        (b"A=1\n", b"A=1\nLATEST_MODEL_RUN_ID=@\n"),
        (b"A=1\r\nB=2", b"A=1\r\nB=2\r\nLATEST_MODEL_RUN_ID=@\r\n"),
        (b"A=1\r\nB=2\r\n", b"A=1\r\nB=2\r\nLATEST_MODEL_RUN_ID=@\r\n"),
        # Every assignment of the key is set (the last one is the one compose reads); prefixes and CRs stay.
        (
            b"LATEST_MODEL_RUN_ID=old\n  export LATEST_MODEL_RUN_ID='x'\r\nLATEST_MODEL_RUN_ID_OLD=keep\nZ=\xff",
            b"LATEST_MODEL_RUN_ID=@\n  export LATEST_MODEL_RUN_ID=@\r\nLATEST_MODEL_RUN_ID_OLD=keep\nZ=\xff",
        ),
    ],
    ids=["empty", "lf", "crlf-no-final-newline", "crlf", "every-assignment"],
)
def test_rewrites_exactly(tracking_server: str, experiment, tmp_path: Path, before: bytes, after: bytes) -> None:  # noqa: ANN001
    name, expected = experiment
    path = tmp_path / ".env"
    path.write_bytes(before)
    path.chmod(0o640)
    result = run_script(path, tracking_server, name)
    assert result.returncode == 0, result.stderr
    assert path.read_bytes() == after.replace(b"@", expected.encode())
    assert path.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir()] == [".env"], "temporary files left behind"


def test_two_concurrent_runs_leave_a_valid_file(tracking_server: str, experiment, env_file: Path) -> None:  # noqa: ANN001
    name, expected = experiment
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_server, "MLFLOW_EXPERIMENT_NAME": name}
    procs = [
        subprocess.Popen([str(SCRIPT), "--env-file", str(env_file)], env=env, stdout=subprocess.DEVNULL)
        for _ in range(4)
    ]
    assert [p.wait(timeout=60) for p in procs] == [0, 0, 0, 0]
    data = env_file.read_bytes()
    assert lines_except_run_id(data) == lines_except_run_id(ODD_ENV)
    assert data.count(b"LATEST_MODEL_RUN_ID=") == 1 and expected.encode() in data
    assert data == odd_env_with(expected)
    assert env_file.stat().st_mode & 0o777 == 0o600
    assert not list(env_file.parent.glob(".env.*")), "temporary files left behind"


class _Handler(http.server.BaseHTTPRequestHandler):
    """Answers get-by-name (GET) and runs/search (POST) with fixed bodies; records the search requests."""

    get_answer: tuple[int, bytes] = (200, b"")
    post_answer: tuple[int, bytes] = (200, b"")
    delay = 0.0
    searches: list[bytes]

    def _answer(self, status: int, body: bytes) -> None:
        time.sleep(self.delay)
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        self._answer(*self.get_answer)

    def do_POST(self) -> None:  # noqa: N802
        self.searches.append(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        self._answer(*self.post_answer)

    def log_message(self, *args: object) -> None:
        pass


FakeServer = Callable[..., tuple[str, list[bytes]]]


@pytest.fixture
def fake_server() -> Iterator[FakeServer]:
    """Start a fake MLflow on 127.0.0.1: fake_server(get=(status, body), post=(status, body), delay=seconds)
    returns its URL and the list of runs/search request bodies it receives."""
    servers = []

    def start(
        get: tuple[int, bytes] = (200, b'{"experiment": {"experiment_id": "7"}}'),
        post: tuple[int, bytes] = (200, b"{}"),
        delay: float = 0.0,
    ) -> tuple[str, list[bytes]]:
        searches: list[bytes] = []
        handler = type("H", (_Handler,), {"get_answer": get, "post_answer": post, "delay": delay, "searches": searches})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()  # shutdown() waits one poll
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}", searches

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture(params=["garbage", "slow"])
def misbehaving_server(request: pytest.FixtureRequest, fake_server: FakeServer) -> tuple[str, str]:
    """A peer on 127.0.0.1 that answers with non-MLflow content, or too slowly; and the error it must cause."""
    if request.param == "garbage":
        url, _ = fake_server(get=(200, b"<html>not MLflow</html>"), post=(200, b"<html>not MLflow</html>"))
        return url, (
            f"unexpected answer from {url} to get-by-name (not JSON: Expecting value: line 1 column 1 (char 0)): "
            "<html>not MLflow</html>"
        )
    url, _ = fake_server(delay=5)
    return url, f"cannot reach the MLflow tracking server at {url} (curl exit 28: "


def assert_failed_untouched(
    result: subprocess.CompletedProcess,
    env_file: Path,
    message: str,
    *,
    content: bytes = ODD_ENV,
    mode: int = 0o600,
) -> None:
    assert result.returncode == 1, result.stderr
    assert message in result.stderr, result.stderr
    assert result.stdout == ""
    assert env_file.read_bytes() == content
    assert env_file.stat().st_mode & 0o777 == mode
    assert not list(env_file.parent.glob(".env.*"))


def test_unreachable_server(env_file: Path) -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    result = run_script(env_file, uri)
    assert_failed_untouched(result, env_file, "cannot reach the MLflow tracking server")
    assert result.stderr.startswith(f"update_run_id: cannot reach the MLflow tracking server at {uri} (curl exit 7: ")
    assert result.stderr.endswith("Is it running? Try: docker compose ps mlflow-server\n")


def test_misbehaving_server(misbehaving_server: tuple[str, str], env_file: Path) -> None:
    url, message = misbehaving_server
    result = run_script(env_file, url, UPDATE_RUN_ID_TIMEOUT="2")
    assert_failed_untouched(result, env_file, f"update_run_id: {message}")


@pytest.mark.parametrize(
    ("get", "post", "problem"),
    [
        ((200, b"{}"), None, "to get-by-name (no experiment.experiment_id): {}"),
        ((200, b'{"experiment": {"experiment_id": 7}}'), None, "to get-by-name (no experiment.experiment_id): "),
        ((200, b'["experiment"]'), None, 'to get-by-name (not a JSON object): ["experiment"]'),
        (None, (200, b'{"runs": {}}'), 'to runs/search (runs is not a list): {"runs": {}}'),
        (None, (200, b"[]"), "to runs/search (not a JSON object): []"),
        (
            None,
            (200, b'{"runs": [{"outputs": {"model_outputs": [{"model_id": "m-1"}]}}]}'),
            "to runs/search (runs[0] has no info or outputs object): ",
        ),
        (
            None,
            (
                200,
                b'{"runs": [{"info": {"run_id": "../x", "status": "FINISHED"}, "outputs": {"model_outputs": [{}]}}]}',
            ),
            "to runs/search (runs[0].info.run_id is not a 32-digit hex run ID: '../x'): ",
        ),
    ],
    ids=["get-empty", "get-id-not-a-string", "get-list", "runs-not-a-list", "search-list", "no-info", "bad-run-id"],
)
def test_json_of_the_wrong_shape(fake_server: FakeServer, env_file: Path, get, post, problem: str) -> None:  # noqa: ANN001
    url, _ = fake_server(**{k: v for k, v in {"get": get, "post": post}.items() if v is not None})
    result = run_script(env_file, url)
    assert_failed_untouched(result, env_file, f"update_run_id: unexpected answer from {url} {problem}")


def test_non_json_200_from_runs_search(fake_server: FakeServer, env_file: Path) -> None:
    url, searches = fake_server(post=(200, b"OK, searching"))
    result = run_script(env_file, url)
    assert_failed_untouched(
        result,
        env_file,
        f"update_run_id: unexpected answer from {url} to runs/search "
        "(not JSON: Expecting value: line 1 column 1 (char 0)): OK, searching\n",
    )
    # The search asked for the experiment get-by-name named, finished runs, newest first.
    assert [json.loads(s) for s in searches] == [
        {
            "experiment_ids": ["7"],
            "filter": "attributes.status = 'FINISHED'",
            "order_by": ["attributes.start_time DESC"],
            "max_results": 50,
        }
    ]


@pytest.mark.parametrize("status", [500, 302])
def test_http_errors_name_the_status(fake_server: FakeServer, env_file: Path, status: int) -> None:
    url, _ = fake_server(post=(status, b"broken"))
    result = run_script(env_file, url)
    assert_failed_untouched(
        result, env_file, f"update_run_id: the tracking server at {url} answered HTTP {status} to runs/search: broken\n"
    )


def run(run_id: str, status: str = "FINISHED", model: bool = True) -> dict:
    return {
        "info": {"run_id": run_id, "status": status},
        **({"outputs": {"model_outputs": [{"model_id": "m-1", "step": 0}]}} if model else {}),
    }


@pytest.mark.parametrize(
    "answer",
    [
        {},  # MLflow's answer when no run matches
        {"runs": []},
        {"runs": [run(FAKE_RUN_ID, model=False)]},
        {"runs": [{"info": {"run_id": FAKE_RUN_ID, "status": "FINISHED"}, "outputs": {"model_outputs": []}}]},
        {"runs": [run(FAKE_RUN_ID, status="RUNNING"), run(FAKE_RUN_ID, status="FAILED")]},
    ],
    ids=["no-runs-key", "no-runs", "no-outputs", "empty-model-outputs", "not-finished"],
)
def test_no_run_with_a_model(fake_server: FakeServer, env_file: Path, answer: dict) -> None:
    url, _ = fake_server(post=(200, json.dumps(answer).encode()))
    assert_failed_untouched(
        run_script(env_file, url), env_file, f"update_run_id: {NO_RUN.format(experiment='mlops_pipeline', uri=url)}\n"
    )


def test_takes_the_first_finished_model_run_in_the_servers_order(fake_server: FakeServer, env_file: Path) -> None:
    first, second = FAKE_RUN_ID, "f" * 32
    answer = {"runs": [run("a" * 32, model=False), run("b" * 32, status="RUNNING"), run(first), run(second)]}
    url, _ = fake_server(post=(200, json.dumps(answer).encode()))
    result = run_script(env_file, url)
    assert result.returncode == 0, result.stderr
    assert env_file.read_bytes() == odd_env_with(first)


def test_missing_experiment(tracking_server: str, env_file: Path) -> None:
    result = run_script(env_file, tracking_server, "no-such-experiment")
    assert_failed_untouched(result, env_file, "does not exist")
    assert result.stderr == (
        f"update_run_id: experiment 'no-such-experiment' does not exist on {tracking_server} yet. "
        "Trigger the DAG 'mlops_pipeline' in Airflow first.\n"
    )


def test_only_failed_runs(tracking_server: str, env_file: Path) -> None:
    client = MlflowClient(tracking_server)
    exp_id = client.create_experiment("only-failed-runs")
    client.set_terminated(client.create_run(exp_id).info.run_id, "FAILED")
    result = run_script(env_file, tracking_server, "only-failed-runs")
    assert_failed_untouched(result, env_file, "no FINISHED run with a logged model")
    assert result.stderr == f"update_run_id: {NO_RUN.format(experiment='only-failed-runs', uri=tracking_server)}\n"


def test_missing_env_file(tracking_server: str, tmp_path: Path) -> None:
    result = run_script(tmp_path / ".env", tracking_server)
    assert result.returncode == 1
    assert result.stderr == f"update_run_id: {tmp_path / '.env'} not found. Create it first: make env\n"
    assert list(tmp_path.iterdir()) == []


def test_read_only_env_file(tracking_server: str, experiment, env_file: Path) -> None:  # noqa: ANN001
    env_file.chmod(0o400)
    result = run_script(env_file, tracking_server, experiment[0])
    assert_failed_untouched(result, env_file, "read-only", mode=0o400)
    assert re.fullmatch(
        rf"update_run_id: {re.escape(str(env_file))} is read-only; make it writable \(chmod u\+w .*\) "
        r"or set LATEST_MODEL_RUN_ID by hand\n",
        result.stderr,
    )
