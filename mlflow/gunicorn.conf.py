"""gunicorn's settings for the model-server, from ServerSettings (mlops_pipeline/settings.py; .env.example
describes each key): model-server.sh only starts gunicorn with this file. A bad setting stops the server here, with
exit code 2 and the key named, before anything is imported or forked.

gunicorn imports the app (MLflow, scikit-learn, ONNX Runtime) once, then forks the workers (preload), so they share
those pages; each worker is uvicorn on uvloop and httptools (app.Worker). The hooks keep the Prometheus counts of
all workers right (mlops_pipeline/serving/metrics.py).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from mlops_pipeline.schema import CHAMPION, ConfigError
from mlops_pipeline.settings import ServerSettings, from_env

try:
    settings = from_env(ServerSettings)
except ConfigError as exc:
    print(f"model-server: {exc}", file=sys.stderr)
    raise SystemExit(2) from None

wsgi_app = "mlops_pipeline.serving.app:create_app()"
worker_class = "mlops_pipeline.serving.app.Worker"
preload_app = True
bind = f"{settings.model_server_host}:{settings.model_server_port}"
workers = settings.workers
timeout = 60  # a worker whose event loop is stuck this long is replaced

# One scrape must add up every worker's counts: prometheus-client's multiprocess mode, one file per worker in a
# directory that starts empty (files of an earlier server would add its totals to ours). prometheus-client reads
# the variable when it is first imported, which is after this file.
COUNTS = None
if settings.model_server_metrics:
    default = Path(tempfile.gettempdir()) / f"model-server-metrics-{os.getpid()}"
    COUNTS = settings.prometheus_multiproc_dir or default
    COUNTS.mkdir(parents=True, exist_ok=True)
    for stale in COUNTS.glob("*.db"):
        stale.unlink()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(COUNTS)
else:
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)

model = settings.fixed_uri or f"models:/{settings.registered_model_name}@{CHAMPION} (following the alias)"
print(f"model-server: {workers} uvicorn worker(s) on {bind}, serving {model}", file=sys.stderr)


def child_exit(server: Any, worker: Any) -> None:
    """A worker exited (crash, timeout, restart): its live gauges go; its counters stay in the totals."""
    if COUNTS:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


def on_exit(server: Any) -> None:
    """The server stops: its count files go (the next start begins at zero, as Prometheus expects of a restart)."""
    if COUNTS:
        for path in COUNTS.glob("*.db"):
            path.unlink(missing_ok=True)
