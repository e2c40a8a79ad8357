"""update_run_id.sh against a real MLflow tracking server: picks the right run, edits .env safely."""

from __future__ import annotations

import http.server
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

import train_model
from conftest import ROOT, free_port

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


def run_script(env_file: Path, uri: str, experiment: str = "mlops_pipeline", **extra: str):  # noqa: ANN201
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_EXPERIMENT_NAME": experiment, **extra}
    return subprocess.run(
        [str(SCRIPT), "--env-file", str(env_file)], env=env, capture_output=True, text=True, timeout=60
    )


def lines_except_run_id(data: bytes) -> list[bytes]:
    return [line for line in data.split(b"\n") if not line.startswith(b"LATEST_MODEL_RUN_ID=")]


@pytest.fixture
def env_file(tmp_path: Path) -> Path:
    path = tmp_path / ".env"
    path.write_bytes(ODD_ENV)
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def experiment(tracking_server: str) -> tuple[str, str]:
    """An experiment holding, newest last: a model run (the answer), a failed run, a finished run without a model."""
    import mlflow

    name = "update-run-id-test"
    mlflow.set_tracking_uri(tracking_server)
    mlflow.set_experiment(name)
    cfg = train_model.TrainConfig(n_estimators=5)
    x, y = train_model.load_data()
    model = train_model.train(x, y, cfg)
    expected = train_model.log_run(model, cfg, x, {"accuracy": 1.0})
    client = MlflowClient(tracking_server)
    exp_id = client.get_experiment_by_name(name).experiment_id
    time.sleep(0.01)
    failed = client.create_run(exp_id)
    client.set_terminated(failed.info.run_id, "FAILED")
    no_model = client.create_run(exp_id)
    client.log_metric(no_model.info.run_id, "accuracy", 0.5)
    client.set_terminated(no_model.info.run_id, "FINISHED")
    client.create_run(exp_id)  # still RUNNING: a training task that died midway
    return name, expected


def test_picks_newest_finished_run_with_a_model(tracking_server: str, experiment, env_file: Path) -> None:  # noqa: ANN001
    name, expected = experiment
    result = run_script(env_file, tracking_server, name)
    assert result.returncode == 0, result.stderr
    assert f"LATEST_MODEL_RUN_ID={expected}\r".encode() in env_file.read_bytes()
    assert "docker compose up -d model-server" in result.stdout


def test_keeps_every_other_line_byte_for_byte(tracking_server: str, experiment, env_file: Path) -> None:  # noqa: ANN001
    name, _ = experiment
    assert run_script(env_file, tracking_server, name).returncode == 0
    assert lines_except_run_id(env_file.read_bytes()) == lines_except_run_id(ODD_ENV)
    assert env_file.read_bytes().endswith(b"LAST=no-final-newline")
    assert env_file.stat().st_mode & 0o777 == 0o600


def test_appends_the_key_when_absent(tracking_server: str, experiment, tmp_path: Path) -> None:  # noqa: ANN001
    name, expected = experiment
    path = tmp_path / ".env"
    path.write_bytes(b"A=1\nB=2")
    assert run_script(path, tracking_server, name).returncode == 0
    assert path.read_bytes() == f"A=1\nB=2\nLATEST_MODEL_RUN_ID={expected}\n".encode()


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
    assert not list(env_file.parent.glob(".env.*")), "temporary files left behind"


class _Handler(http.server.BaseHTTPRequestHandler):
    mode = "garbage"

    def do_GET(self) -> None:  # noqa: N802
        if self.mode == "slow":
            time.sleep(5)
        body = b"<html>not MLflow</html>" if self.mode == "garbage" else b'{"experiment": {"experiment_id": "1"}}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET  # noqa: N815

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(params=["garbage", "slow"])
def misbehaving_server(request: pytest.FixtureRequest) -> Iterator[str]:
    """A peer on 127.0.0.1 that answers with non-MLflow content, or too slowly."""
    handler = type("H", (_Handler,), {"mode": request.param})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def assert_failed_untouched(result: subprocess.CompletedProcess, env_file: Path, message: str) -> None:
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
    assert env_file.read_bytes() == ODD_ENV
    assert not list(env_file.parent.glob(".env.*"))


def test_unreachable_server(env_file: Path) -> None:
    result = run_script(env_file, f"http://127.0.0.1:{free_port()}")
    assert_failed_untouched(result, env_file, "cannot reach the MLflow tracking server")


def test_misbehaving_server(misbehaving_server: str, env_file: Path) -> None:
    result = run_script(env_file, misbehaving_server, UPDATE_RUN_ID_TIMEOUT="2")
    assert result.returncode != 0
    assert env_file.read_bytes() == ODD_ENV


def test_missing_experiment(tracking_server: str, env_file: Path) -> None:
    result = run_script(env_file, tracking_server, "no-such-experiment")
    assert_failed_untouched(result, env_file, "does not exist")


def test_only_failed_runs(tracking_server: str, env_file: Path) -> None:
    client = MlflowClient(tracking_server)
    exp_id = client.create_experiment("only-failed-runs")
    client.set_terminated(client.create_run(exp_id).info.run_id, "FAILED")
    result = run_script(env_file, tracking_server, "only-failed-runs")
    assert_failed_untouched(result, env_file, "no FINISHED run with a logged model")


def test_missing_env_file(tracking_server: str, tmp_path: Path) -> None:
    result = run_script(tmp_path / ".env", tracking_server)
    assert result.returncode != 0 and "make env" in result.stderr
    assert not (tmp_path / ".env").exists()


def test_read_only_env_file(tracking_server: str, experiment, env_file: Path) -> None:  # noqa: ANN001
    env_file.chmod(0o400)
    result = run_script(env_file, tracking_server, experiment[0])
    assert_failed_untouched(result, env_file, "read-only")
