"""mlflow/tracking_server.py (through tracking-server.sh): settings checked before MLflow starts, and the server the
tests run started as compose starts it (the job runner off)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from conftest import ROOT, TRACKING, venv_env

SCRIPT = ROOT / "mlflow" / "tracking-server.sh"


@pytest.mark.parametrize(
    ("values", "code", "message"),
    [
        ({"MLFLOW_DATA_DIR": "mlruns"}, 2, "MLFLOW_DATA_DIR must be an absolute path, got 'mlruns'"),
        ({"MLFLOW_AUTH": "maybe"}, 2, "MLFLOW_AUTH must be true or false, got 'maybe'"),
        ({"MLFLOW_DATA_DIR": "/nonexistent/mlruns"}, 1, "/nonexistent/mlruns is missing or not writable"),
    ],
)
def test_a_bad_setting_stops_it_before_mlflow_starts(values: dict, code: int, message: str) -> None:
    done = subprocess.run([str(SCRIPT)], env=venv_env(**values), capture_output=True, text=True, timeout=60)
    assert done.returncode == code and message in done.stderr, done.stderr


def test_the_running_server_has_no_job_runner(tracking_server: str) -> None:
    """MLflow's default starts its GenAI job runner's processes; this stack uses none of them."""
    environ = Path(f"/proc/{TRACKING['proc'].pid}/environ").read_bytes().split(b"\0")
    assert b"MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false" in environ
