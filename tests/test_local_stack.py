"""The whole local flow end to end, as `make local-demo` runs it (registry + champion), then the seed's run-ID flow
(update_run_id.sh + restart), then `make local-down` leaves nothing behind."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from conftest import ROOT, free_port, make_env_file, metric_value, stack_env, wait_until_up
from mlops_pipeline.serving.metrics import PUBLISH_SECONDS
from scripts.stackenv import read_env_file

pytestmark = pytest.mark.local


def script(env: dict[str, str], name: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """`python -m scripts.NAME ARGS` from the repository root, as the make targets run it."""
    command = [sys.executable, "-m", f"scripts.{name}", *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def processes_mentioning(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            environ = (proc / "environ").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if (text in cmdline or text in environ) and str(os.getpid()) != proc.name:
            found.append(f"{proc.name}: {cmdline[:120]}")
    return found


def test_local_demo_end_to_end(tmp_path: Path) -> None:
    ports = {"AIRFLOW_PORT": free_port(), "MLFLOW_PORT": free_port(), "MODEL_SERVER_PORT": free_port()}
    env_file = make_env_file(tmp_path / ".env", **{k: str(v) for k, v in ports.items()})
    state = tmp_path / "state"
    env = stack_env(ENV_FILE=str(env_file), LOCAL_STATE_DIR=str(state))
    try:
        demo = script(env, "demo", "local", timeout=900)
        print(demo.stdout[-3000:], demo.stderr[-3000:])
        assert demo.returncode == 0
        assert '{"predictions": [0]}' in demo.stdout
        assert "mlops_pipeline is success" in demo.stdout
        assert "iris-classifier version 1 PROMOTED to champion" in demo.stdout
        model_url = f"http://127.0.0.1:{ports['MODEL_SERVER_PORT']}"
        seed = {"inputs": [[5.1, 3.5, 1.4, 0.2]]}
        answer = requests.post(f"{model_url}/invocations", json=seed, timeout=30)
        assert answer.json() == {"predictions": [0]}
        assert answer.headers["X-Model-Uri"] == "models:/iris-classifier/1"
        # Local mode's model-server counts for Prometheus too (model-server.sh's multiprocess directory).
        time.sleep(2 * PUBLISH_SECONDS)  # every worker has published its counts (metrics.py): the scrape sees all
        scraped = requests.get(f"{model_url}/metrics", timeout=10).text
        assert metric_value(scraped, "model_server_requests_total", endpoint="/invocations", code="200") >= 1, scraped

        # Airflow's API refuses calls without credentials.
        airflow = f"http://127.0.0.1:{ports['AIRFLOW_PORT']}"
        assert requests.get(f"{airflow}/api/v2/dags", timeout=10).status_code == 401

        # The seed's flow: update_run_id.sh pins the newest run, a restart serves exactly that run.
        pin = subprocess.run(["./update_run_id.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert pin.returncode == 0, pin.stderr
        run_id = read_env_file(env_file)["LATEST_MODEL_RUN_ID"]
        assert len(run_id) == 32
        assert script(env, "local", "restart", "model-server", timeout=120).returncode == 0
        wait_until_up(f"{model_url}/ping", timeout=120)
        answer = requests.post(f"{model_url}/invocations", json=seed, timeout=30)
        assert answer.json() == {"predictions": [0]}
        assert answer.headers["X-Model-Run-Id"] == run_id and answer.headers["X-Model-Uri"] == f"runs:/{run_id}/model"
    finally:
        down = script(env, "local", "down", timeout=120)
    assert down.returncode == 0, down.stderr
    assert processes_mentioning(str(state)) == []
    assert all(port_is_free(p) for p in ports.values())
