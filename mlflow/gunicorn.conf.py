"""gunicorn's settings file for the model-server (model-server.sh passes it with -c): the hooks that keep the
Prometheus counts of all workers right (metrics.py). Flags stay on model-server.sh's command line."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def child_exit(server: Any, worker: Any) -> None:
    """A worker exited (crash, timeout, restart): its live gauges go; its counters stay in the totals."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


def on_exit(server: Any) -> None:
    """The server stops: its count files go (the next start begins at zero, as Prometheus expects of a restart)."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        for path in Path(directory).glob("*.db"):
            path.unlink(missing_ok=True)
