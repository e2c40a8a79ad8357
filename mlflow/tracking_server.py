"""Entry point of the MLflow tracking server (the `mlflow-server` compose service and local mode, through
tracking-server.sh): `mlflow server`, MLflow's documented CLI, with TrackingSettings (mlops_pipeline/settings.py).

Usage: python tracking_server.py     (settings from the environment; .env.example describes them)
"""

from __future__ import annotations

import os
import secrets
import sys
import tempfile
from pathlib import Path

from mlops_pipeline.data import atomic_write
from mlops_pipeline.schema import ConfigError
from mlops_pipeline.settings import TrackingSettings, from_env

PLACEHOLDERS = {"", "changeme", "password1234"}  # what .env.example and MLflow's own docs show


def auth(settings: TrackingSettings, data: Path) -> dict[str, str]:
    """MLflow's basic-auth app: its config and user store beside the tracking data (the admin is created on the
    first start only), and the key it signs CSRF tokens with, made once and kept so it survives restarts."""
    if settings.mlflow_auth_admin_password.get_secret_value() in PLACEHOLDERS:
        sys.exit(
            "tracking-server: MLFLOW_AUTH is on but MLFLOW_TRACKING_PASSWORD is missing or a placeholder in .env. "
            "Run 'make env' or set it."
        )
    config = (
        f"[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:///{data}/basic_auth.db\n"
        f"admin_username = {settings.mlflow_auth_admin_username}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    atomic_write(data / "basic_auth.ini", lambda f: f.write(config.encode()), 0o600)
    key = data / "flask_secret_key"
    if not key.is_file() or not key.read_text().strip():
        atomic_write(key, lambda f: f.write(secrets.token_urlsafe(48).encode()), 0o600)
    print(f"tracking-server: basic auth is on (admin user '{settings.mlflow_auth_admin_username}')", file=sys.stderr)
    return {"MLFLOW_AUTH_CONFIG_PATH": str(data / "basic_auth.ini"), "MLFLOW_FLASK_SERVER_SECRET_KEY": key.read_text()}


def main() -> None:
    try:
        settings = from_env(TrackingSettings)
    except ConfigError as exc:
        print(f"tracking-server: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    data = settings.mlflow_data_dir
    if not data.is_dir() or not os.access(data, os.W_OK):
        sys.exit(
            f"tracking-server: {data} is missing or not writable by uid {os.getuid()}.\n"
            "tracking-server: in compose, volume-init prepares it; run 'docker compose up volume-init'."
        )
    (data / "artifacts").mkdir(exist_ok=True)
    args = [
        *("--backend-store-uri", settings.mlflow_backend_store_uri or f"sqlite:///{data}/mlflow.db"),
        *("--artifacts-destination", settings.mlflow_artifacts_destination or str(data / "artifacts")),
        *("--serve-artifacts", "--host", settings.mlflow_host, "--port", str(settings.mlflow_port)),
        *("--workers", str(settings.mlflow_workers), "--allowed-hosts", settings.mlflow_allowed_hosts),
    ]
    # MLflow reads this one itself; its default (on) would start the job runner's processes.
    os.environ["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = str(settings.mlflow_server_enable_job_execution).lower()
    if settings.mlflow_auth:
        os.environ.update(auth(settings, data))  # for MLflow's auth app, in the process exec'd below
        args += ["--app-name", "basic-auth"]
    if settings.mlflow_metrics:
        # MLflow's own exporter (prometheus-flask-exporter, multiprocess): the tracking API's request counts and
        # latency on /metrics. Its count files go in a directory of this server's own that starts empty.
        counts = Path(tempfile.gettempdir()) / f"mlflow-metrics-{os.getpid()}"
        counts.mkdir(exist_ok=True)
        for stale in counts.glob("*.db"):
            stale.unlink()
        args += ["--expose-prometheus", str(counts)]
    # MLflow starts uvicorn as a child and waits for it; exec keeps this process's PID (and its signals).
    os.execvp("mlflow", ["mlflow", "server", *args])


if __name__ == "__main__":
    main()
