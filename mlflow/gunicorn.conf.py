"""gunicorn's settings file for the model-server (model-server.sh passes it with -c): the hooks that keep the
Prometheus counts of all workers right (mlops_pipeline/serving/metrics.py). Flags stay on model-server.sh's command
line."""

from __future__ import annotations

from typing import Any

from prometheus_client import multiprocess

from mlops_pipeline.settings import ServerSettings, from_env

COUNTS = from_env(ServerSettings).prometheus_multiproc_dir  # where the workers keep their counts (None: not counted)


def child_exit(server: Any, worker: Any) -> None:
    """A worker exited (crash, timeout, restart): its live gauges go; its counters stay in the totals."""
    if COUNTS:
        multiprocess.mark_process_dead(worker.pid)


def on_exit(server: Any) -> None:
    """The server stops: its count files go (the next start begins at zero, as Prometheus expects of a restart)."""
    if COUNTS:
        for path in COUNTS.glob("*.db"):
            path.unlink(missing_ok=True)
