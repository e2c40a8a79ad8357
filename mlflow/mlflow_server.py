"""`mlflow server`, with its options, without the idle parent process it leaves behind.

`mlflow server` prepares the stores and the server's environment, then starts uvicorn as a child process
and waits for it. That parent keeps everything it imported (~150 MB, about 40% of the tracking server's
memory; see benchmarks/) for the whole life of the server, doing nothing. This runs MLflow's own CLI
unchanged and replaces only its last step: instead of spawning uvicorn, it becomes uvicorn (exec), with the
same command line and environment. Signals then reach uvicorn directly. With MLflow's job runner on
(MLFLOW_SERVER_ENABLE_JOB_EXECUTION=true, off in this stack) the parent supervises the runner, so this is
plain `mlflow server`.

Usage: python mlflow_server.py [mlflow server options]   (see tracking-server.sh)
"""

from __future__ import annotations

import os
import sys
from typing import Any

import mlflow.server
from mlflow.cli import cli
from mlflow.environment_variables import MLFLOW_SERVER_ENABLE_JOB_EXECUTION


def exec_server(cmd: list[str], *, extra_env: dict[str, str] | None = None, **_: Any) -> None:
    """Stands in for mlflow.utils.process._exec_cmd at the one place `mlflow server` starts uvicorn."""
    cmd = [str(part) for part in cmd]
    os.execvpe(cmd[0], cmd, {**os.environ, **(extra_env or {})})


if __name__ == "__main__":
    if not MLFLOW_SERVER_ENABLE_JOB_EXECUTION.get():
        if not callable(getattr(mlflow.server, "_exec_cmd", None)):
            raise SystemExit(f"mlflow_server.py: MLflow {mlflow.__version__} no longer starts uvicorn via _exec_cmd")
        mlflow.server._exec_cmd = exec_server
    cli(["server", *sys.argv[1:]], prog_name="mlflow")
