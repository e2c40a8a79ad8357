#!/usr/bin/env bash
# Entry point of the `model-server` compose service and of local mode: serves runs:/$LATEST_MODEL_RUN_ID/model
# over MLflow's scoring protocol (/invocations, /ping, /health, /version).
#
# Usage: model-server.sh               (settings come from the environment)
#   LATEST_MODEL_RUN_ID   the MLflow run whose model to serve; set by ./update_run_id.sh
#   MLFLOW_TRACKING_URI   where the run lives                    (default http://mlflow-server:5000)
#   MODEL_SERVER_HOST / _PORT  where to listen                   (default 0.0.0.0:5001)
#   MODEL_SERVER_WORKERS  uvicorn workers                         (default 1)
#
# Without a usable run ID it does not exit (a restart policy would turn that into a crash loop): it says what
# to do and waits; nothing listens, so the healthcheck stays unhealthy.
set -euo pipefail

run_id="${LATEST_MODEL_RUN_ID:-}"
wait_for_run_id() {
  while true; do
    echo "model-server: $1" >&2
    echo "model-server: to serve a model: trigger the DAG 'mlops_pipeline' in Airflow, wait for it to succeed," >&2
    echo "model-server: then run ./update_run_id.sh and recreate this service: docker compose up -d model-server" >&2
    sleep "${MODEL_SERVER_WAIT_SECONDS:-60}"
  done
}
if [ -z "$run_id" ]; then
  wait_for_run_id "LATEST_MODEL_RUN_ID is empty, so there is no model to serve yet."
elif ! [[ "$run_id" =~ ^[0-9a-f]{32}$ ]]; then
  wait_for_run_id "LATEST_MODEL_RUN_ID='$run_id' is not an MLflow run ID (32 hex characters)."
fi

export MLFLOW_TRACKING_URI="${MLFLOW_TRACKING_URI:-http://mlflow-server:5000}"
echo "model-server: serving runs:/$run_id/model from $MLFLOW_TRACKING_URI" >&2
exec mlflow models serve \
  --model-uri "runs:/$run_id/model" \
  --env-manager local \
  --host "${MODEL_SERVER_HOST:-0.0.0.0}" \
  --port "${MODEL_SERVER_PORT:-5001}" \
  --workers "${MODEL_SERVER_WORKERS:-1}"
