#!/usr/bin/env bash
# Entry point of the MLflow tracking server: the `mlflow-server` compose service and local mode both run it,
# so the flags live in one place.
#
# Usage: tracking-server.sh            (settings come from the environment, defaults below)
#   MLFLOW_DATA_DIR       where the SQLite store and the artifacts live   (default /mlflow/mlruns)
#   MLFLOW_HOST / _PORT   where to listen                                  (default 0.0.0.0:5000)
#   MLFLOW_WORKERS        uvicorn workers; 1 is plenty for one team         (default 1)
#   MLFLOW_ALLOWED_HOSTS  Host headers accepted (DNS-rebinding protection) (default: loopback + service name)
set -euo pipefail

data="${MLFLOW_DATA_DIR:-/mlflow/mlruns}"
case "$data" in
  /*) ;;
  *) echo "tracking-server: MLFLOW_DATA_DIR must be an absolute path, got '$data'" >&2; exit 2 ;;
esac
if [ ! -d "$data" ] || [ ! -w "$data" ]; then
  echo "tracking-server: $data is missing or not writable by $(id -un) (uid $(id -u))." >&2
  echo "tracking-server: in compose, volume-init prepares it; run 'docker compose up volume-init'." >&2
  exit 1
fi
mkdir -p "$data/artifacts"

# The background job runner (for MLflow's GenAI jobs) is unused here and costs ~10 processes.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"

exec mlflow server \
  --backend-store-uri "sqlite:///$data/mlflow.db" \
  --artifacts-destination "$data/artifacts" \
  --serve-artifacts \
  --host "${MLFLOW_HOST:-0.0.0.0}" \
  --port "${MLFLOW_PORT:-5000}" \
  --workers "${MLFLOW_WORKERS:-1}" \
  --allowed-hosts "${MLFLOW_ALLOWED_HOSTS:-localhost,localhost:*,127.0.0.1,127.0.0.1:*,mlflow-server,mlflow-server:*}"
