#!/usr/bin/env bash
# Entry point of the MLflow tracking server: the `mlflow-server` compose service and local mode both run it.
# tracking_server.py reads and checks the settings (mlops_pipeline/settings.py, TrackingSettings) and starts
# `mlflow server`.
#
# Usage: tracking-server.sh     (settings from the environment; .env.example describes them)
set -euo pipefail
exec python "$(cd "$(dirname "$0")" && pwd)/tracking_server.py"
