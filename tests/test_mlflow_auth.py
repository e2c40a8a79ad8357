"""MLflow's basic auth switch (MLFLOW_AUTH=true): the tracking server refuses anonymous calls, and training,
update_run_id.sh and the model-server log in through MLflow's standard client variables."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from conftest import ROOT, free_port, service, train_run, venv_env

USER, PASSWORD = "admin", "s3cret-for-tests"


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data = tmp_path_factory.mktemp("mlruns-auth")
    port = free_port()
    env = dict(
        os.environ,
        MLFLOW_DATA_DIR=str(data),
        MLFLOW_HOST="127.0.0.1",
        MLFLOW_PORT=str(port),
        MLFLOW_AUTH="true",
        MLFLOW_AUTH_ADMIN_USERNAME=USER,
        MLFLOW_AUTH_ADMIN_PASSWORD=PASSWORD,
    )
    uri = f"http://127.0.0.1:{port}"
    with service(ROOT / "mlflow" / "tracking-server.sh", data / "server.log", env, f"{uri}/health", timeout=180):
        yield uri


def test_placeholder_password_is_refused(tmp_path: Path) -> None:
    env = venv_env(MLFLOW_DATA_DIR=str(tmp_path), MLFLOW_AUTH="true", MLFLOW_AUTH_ADMIN_PASSWORD="changeme")
    result = subprocess.run([str(ROOT / "mlflow" / "tracking-server.sh")], env=env, capture_output=True, text=True)
    assert result.returncode == 1 and "MLFLOW_TRACKING_PASSWORD" in result.stderr


@pytest.mark.slow  # a second tracking server
def test_anonymous_and_wrong_logins_are_refused(auth_server: str) -> None:
    search = f"{auth_server}/api/2.0/mlflow/experiments/search"
    assert requests.post(search, json={"max_results": 1}, timeout=10).status_code == 401
    assert requests.post(search, json={"max_results": 1}, auth=(USER, "wrong"), timeout=10).status_code == 401
    assert requests.post(search, json={"max_results": 1}, auth=(USER, PASSWORD), timeout=10).ok


@pytest.mark.slow
def test_training_update_run_id_and_serving_log_in(
    auth_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", USER)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    run_id = train_run(auth_server, rf_n_estimators=10)

    env_file = tmp_path / ".env"
    env_file.write_text(f"MLFLOW_AUTH=true\nMLFLOW_TRACKING_USERNAME={USER}\nMLFLOW_TRACKING_PASSWORD={PASSWORD}\n")
    script_env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
    script_env["MLFLOW_TRACKING_URI"] = auth_server
    ok = subprocess.run(
        [str(ROOT / "update_run_id.sh"), "--env-file", str(env_file)], env=script_env, capture_output=True, text=True
    )
    assert ok.returncode == 0, ok.stderr
    assert f"LATEST_MODEL_RUN_ID={run_id}" in env_file.read_text()
    assert PASSWORD not in ok.stdout + ok.stderr

    anonymous = tmp_path / "anon.env"
    anonymous.write_text("A=1\n")
    refused = subprocess.run(
        [str(ROOT / "update_run_id.sh"), "--env-file", str(anonymous)], env=script_env, capture_output=True, text=True
    )
    assert refused.returncode != 0 and "asks for a login" in refused.stderr
    assert anonymous.read_text() == "A=1\n"

    port = free_port()
    server_env = dict(
        os.environ,
        MLFLOW_TRACKING_URI=auth_server,
        MLFLOW_TRACKING_USERNAME=USER,
        MLFLOW_TRACKING_PASSWORD=PASSWORD,
        LATEST_MODEL_RUN_ID=run_id,
        MODEL_SERVER_HOST="127.0.0.1",
        MODEL_SERVER_PORT=str(port),
    )
    log = tmp_path / "model-server.log"
    with service(ROOT / "mlflow" / "model-server.sh", log, server_env, f"http://127.0.0.1:{port}/ping", timeout=120):
        answer = requests.post(f"http://127.0.0.1:{port}/invocations", json={"inputs": [[5.1, 3.5, 1.4, 0.2]]})
        assert answer.json() == {"predictions": [0]}
