#!/usr/bin/env bash
# Entry point of the `model-server` compose service and of local mode: MLflow's scoring protocol (/invocations,
# /ping, /health, /version) from a small Starlette app (mlops_pipeline/serving/app.py) under gunicorn. Serves
# runs:/$LATEST_MODEL_RUN_ID/model when that is set (the original tutorial's flow), else follows
# models:/$REGISTERED_MODEL_NAME@champion.
#
# Usage: model-server.sh     (settings from the environment: gunicorn.conf.py reads and checks them)
#
# It never exits for want of a model (a restart policy would turn that into a crash loop): until one can be
# loaded it answers /ping with 503, so the healthcheck stays unhealthy, and its log says what to do.
set -euo pipefail
exec gunicorn --config "$(cd "$(dirname "$0")" && pwd)/gunicorn.conf.py"
