#!/usr/bin/env bash
# Entry point of the MLflow tracking server: the `mlflow-server` compose service and local mode both run it,
# so the flags live in one place.
#
# Usage: tracking-server.sh            (settings come from the environment, defaults below)
#   MLFLOW_DATA_DIR       where the SQLite store and the artifacts live   (default /mlflow/mlruns)
#   MLFLOW_BACKEND_STORE_URI      the tracking store  (default sqlite:///$MLFLOW_DATA_DIR/mlflow.db)
#   MLFLOW_ARTIFACTS_DESTINATION  where the proxied artifacts go (default $MLFLOW_DATA_DIR/artifacts); the scale
#                         variant sets both: PostgreSQL and s3://... (MLflow's own names for these two options)
#   MLFLOW_HOST / _PORT   where to listen                                  (default 0.0.0.0:5000)
#   MLFLOW_WORKERS        uvicorn workers; 1 is plenty for one team         (default 1)
#   MLFLOW_ALLOWED_HOSTS  Host headers accepted (DNS-rebinding protection) (default: loopback + service name)
#   MLFLOW_AUTH           true: MLflow's built-in basic auth (--app-name basic-auth); the admin is
#                         MLFLOW_AUTH_ADMIN_USERNAME / MLFLOW_AUTH_ADMIN_PASSWORD     (default false)
#   MLFLOW_METRICS        true: GET /metrics for Prometheus (MLflow's --expose-prometheus) (default true)
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

# The background job runner (for MLflow's GenAI jobs) is unused here and costs a set of processes.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"

auth_args=()
case "${MLFLOW_AUTH:-false}" in
  true | 1 | yes)
    case "${MLFLOW_AUTH_ADMIN_PASSWORD:-}" in
      "" | changeme | password1234)
        echo "tracking-server: MLFLOW_AUTH is on but MLFLOW_TRACKING_PASSWORD is missing or a placeholder in .env. Run 'make env' or set it." >&2
        exit 1 ;;
    esac
    # The user store lives beside the tracking data; the admin is created on the first start only.
    cat >"$data/basic_auth.ini" <<INI
[mlflow]
default_permission = READ
database_uri = sqlite:///$data/basic_auth.db
admin_username = ${MLFLOW_AUTH_ADMIN_USERNAME:-admin}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
    export MLFLOW_AUTH_CONFIG_PATH="$data/basic_auth.ini"
    # The auth app signs CSRF tokens with a key that must survive restarts: made once, kept beside the data.
    if [ -z "${MLFLOW_FLASK_SERVER_SECRET_KEY:-}" ]; then
      if [ ! -s "$data/flask_secret_key" ]; then
        (umask 077 && python -c 'import secrets; print(secrets.token_urlsafe(48))' >"$data/flask_secret_key")
      fi
      MLFLOW_FLASK_SERVER_SECRET_KEY="$(cat "$data/flask_secret_key")"
      export MLFLOW_FLASK_SERVER_SECRET_KEY
    fi
    auth_args=(--app-name basic-auth)
    echo "tracking-server: basic auth is on (admin user '${MLFLOW_AUTH_ADMIN_USERNAME:-admin}')" >&2 ;;
  false | 0 | no | "") ;;
  *) echo "tracking-server: MLFLOW_AUTH must be true or false, got '${MLFLOW_AUTH}'" >&2; exit 2 ;;
esac

# MLflow's own Prometheus exporter (prometheus-flask-exporter in its multiprocess mode): request counts and latency
# of the tracking API on /metrics. Its count files go in a directory of this server's own that starts empty.
metrics_args=()
case "${MLFLOW_METRICS:-true}" in
  true)
    metrics_dir="${TMPDIR:-/tmp}/mlflow-metrics-$$"
    mkdir -p "$metrics_dir" && rm -f "$metrics_dir"/*.db
    metrics_args=(--expose-prometheus "$metrics_dir") ;;
  false) ;;
  *) echo "tracking-server: MLFLOW_METRICS must be true or false, got '${MLFLOW_METRICS}'" >&2; exit 2 ;;
esac

# MLflow's documented CLI. It starts uvicorn as a child and waits for it (that parent costs memory too).
exec mlflow server \
  --backend-store-uri "${MLFLOW_BACKEND_STORE_URI:-sqlite:///$data/mlflow.db}" \
  --artifacts-destination "${MLFLOW_ARTIFACTS_DESTINATION:-$data/artifacts}" \
  --serve-artifacts \
  --host "${MLFLOW_HOST:-0.0.0.0}" \
  --port "${MLFLOW_PORT:-5000}" \
  --workers "${MLFLOW_WORKERS:-1}" \
  --allowed-hosts "${MLFLOW_ALLOWED_HOSTS:-localhost,localhost:*,127.0.0.1,127.0.0.1:*,mlflow-server,mlflow-server:*}" \
  "${auth_args[@]}" "${metrics_args[@]}"
