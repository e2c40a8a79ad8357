#!/usr/bin/env bash
# Entry point of the `model-server` compose service and of local mode. Serves a model over MLflow's scoring
# protocol (/invocations, /ping, /health, /version): MLflow's scoring code in a small Starlette app
# (mlops_pipeline/serving/app.py).
#   - LATEST_MODEL_RUN_ID set (the original tutorial's flow): serves runs:/$LATEST_MODEL_RUN_ID/model;
#   - LATEST_MODEL_RUN_ID empty: serves models:/$REGISTERED_MODEL_NAME@champion and follows the alias.
#
# Usage: model-server.sh               (settings come from the environment)
#   MLFLOW_TRACKING_URI        where runs and the registry live   (default http://mlflow-server:5000)
#   MODEL_SERVER_HOST / _PORT  where to listen                    (default 0.0.0.0:5001)
#   MODEL_SERVER_WORKERS       uvicorn worker processes           (default: one per CPU core, at most 4)
#   MODEL_SERVER_METRICS       true: GET /metrics for Prometheus (default true)
#   PROMETHEUS_MULTIPROC_DIR   where the workers keep their counts (default: a directory of this server's own
#                              in $TMPDIR); its *.db files are removed when the server starts and stops
#   the app's own settings: mlops_pipeline/settings.py (ServerSettings), described in .env.example
#
# It never exits for want of a model (a restart policy would turn that into a crash loop): until one can be
# loaded it answers /ping with 503, so the healthcheck stays unhealthy, and its log says what to do.
set -euo pipefail

run_id="${LATEST_MODEL_RUN_ID:-}"
if [ -n "$run_id" ] && ! [[ "$run_id" =~ ^[0-9a-f]{32}$ ]]; then
  while true; do
    echo "model-server: LATEST_MODEL_RUN_ID='$run_id' in .env is not an MLflow run ID (32 hex characters)." >&2
    echo "model-server: run ./update_run_id.sh (or empty it to follow the champion), then: docker compose up -d model-server" >&2
    sleep "${MODEL_SERVER_WAIT_SECONDS:-60}"
  done
fi

export MLFLOW_TRACKING_URI="${MLFLOW_TRACKING_URI:-http://mlflow-server:5000}"
if [ -n "$run_id" ]; then
  export MODEL_URI="runs:/$run_id/model"
  echo "model-server: serving $MODEL_URI (LATEST_MODEL_RUN_ID) from $MLFLOW_TRACKING_URI" >&2
else
  export MODEL_URI=""
  echo "model-server: LATEST_MODEL_RUN_ID is empty: following models:/${REGISTERED_MODEL_NAME:-iris-classifier}@champion on $MLFLOW_TRACKING_URI" >&2
fi
# A worker scores one request at a time (predict holds the GIL), so throughput comes from processes: one per core.
# At most 4 by default, so the default memory ceiling (mem_limit in docker-compose.yml) holds on bigger machines.
workers="${MODEL_SERVER_WORKERS:-}"
if [ -z "$workers" ]; then
  workers="$(nproc)"
  [ "$workers" -le 4 ] || workers=4
elif ! [[ "$workers" =~ ^[1-9][0-9]*$ ]]; then
  echo "model-server: MODEL_SERVER_WORKERS='$workers' must be a positive whole number (or empty for one per core)." >&2
  exit 2
fi
echo "model-server: $workers uvicorn worker(s)" >&2
# One scrape must add up every worker's counts: prometheus-client's multiprocess mode, one file per worker in a
# directory that starts empty (files of an earlier server would add its totals to ours). $$ becomes gunicorn's PID.
case "${MODEL_SERVER_METRICS:-true}" in
  true)
    export PROMETHEUS_MULTIPROC_DIR="${PROMETHEUS_MULTIPROC_DIR:-${TMPDIR:-/tmp}/model-server-metrics-$$}"
    mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
    rm -f "$PROMETHEUS_MULTIPROC_DIR"/*.db ;;
  false) unset PROMETHEUS_MULTIPROC_DIR ;;
  *) echo "model-server: MODEL_SERVER_METRICS='$MODEL_SERVER_METRICS' must be true or false." >&2; exit 2 ;;
esac
# gunicorn imports the app (MLflow, scikit-learn, ONNX Runtime) once, then forks the workers (--preload), so they
# share those pages; each worker is uvicorn on uvloop and httptools (app.Worker). --timeout: a worker whose
# event loop is stuck that long is replaced.
here="$(cd "$(dirname "$0")" && pwd)"
exec gunicorn 'mlops_pipeline.serving.app:create_app()' --preload --worker-class mlops_pipeline.serving.app.Worker \
  --config "$here/gunicorn.conf.py" \
  --bind "${MODEL_SERVER_HOST:-0.0.0.0}:${MODEL_SERVER_PORT:-5001}" \
  --workers "$workers" \
  --timeout 60
