#!/usr/bin/env bash
# Point the model-server at the newest trained model: find the newest FINISHED run with a logged model in the
# experiment on the MLflow tracking server and set LATEST_MODEL_RUN_ID in .env.
#
# Usage: ./update_run_id.sh [--env-file PATH] [-h]
#   MLFLOW_TRACKING_URI     default http://127.0.0.1:$MLFLOW_PORT (MLFLOW_PORT from .env, else 5000)
#   MLFLOW_EXPERIMENT_NAME  default: the value in .env, else mlops_pipeline
#   UPDATE_RUN_ID_TIMEOUT   seconds per request to the tracking server (default 15)
#   MLFLOW_AUTH, MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD   the MLflow login, when MLflow asks for one
#                           (default: the values in .env)
#
# Every other line of .env (keys, comments, order, CRLF) stays byte-for-byte as it was; the new file replaces
# the old one atomically. On any failure .env is left untouched and the script exits non-zero.
# Needs bash, curl, awk, grep (no jq).
set -euo pipefail

usage() { sed -n '5,9s/^# \{0,1\}//p' "$0"; }
die() { echo "update_run_id: $*" >&2; exit 1; }

env_file="${ENV_FILE:-$(cd "$(dirname "$0")" && pwd)/.env}"
while [ "$#" -gt 0 ]; do
  case "$1" in
    --env-file) [ "$#" -ge 2 ] || { usage >&2; exit 2; }; env_file="$2"; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "update_run_id: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
done

[ -f "$env_file" ] || die "$env_file not found. Create it first: make env"
[ -r "$env_file" ] || die "$env_file is not readable"
# Read-only means read-only, even for root (who could write it anyway).
if [ ! -w "$env_file" ] || [ -z "$(find "$env_file" -prune -perm -u+w)" ]; then
  die "$env_file is read-only; make it writable (chmod u+w $env_file) or set LATEST_MODEL_RUN_ID by hand"
fi

# The last KEY=value in .env, without surrounding quotes or a trailing CR (the way docker compose reads it).
env_value() {
  local value
  value=$(grep -E "^[[:space:]]*(export[[:space:]]+)?$1=" "$env_file" | tail -n 1 || true)
  value="${value#*=}"
  value="${value%$'\r'}"
  case "$value" in
    \"*\") value="${value:1:${#value}-2}" ;;
    \'*\') value="${value:1:${#value}-2}" ;;
  esac
  printf '%s' "$value"
}

port="$(env_value MLFLOW_PORT)"
uri="${MLFLOW_TRACKING_URI:-http://127.0.0.1:${port:-5000}}"
uri="${uri%/}"
experiment="${MLFLOW_EXPERIMENT_NAME:-$(env_value MLFLOW_EXPERIMENT_NAME)}"
experiment="${experiment:-mlops_pipeline}"
timeout="${UPDATE_RUN_ID_TIMEOUT:-15}"

# With MLflow's basic auth on, log in as MLFLOW_TRACKING_USERNAME. The password goes to curl on stdin (a
# --config line), never on the command line where `ps` would show it.
curl_config=""
case "${MLFLOW_AUTH:-$(env_value MLFLOW_AUTH)}" in
  true | 1 | yes)
    user="${MLFLOW_TRACKING_USERNAME:-$(env_value MLFLOW_TRACKING_USERNAME)}"
    password="${MLFLOW_TRACKING_PASSWORD:-$(env_value MLFLOW_TRACKING_PASSWORD)}"
    [ -n "$password" ] || die "MLFLOW_AUTH is on but MLFLOW_TRACKING_PASSWORD is empty in $env_file"
    credentials="${user:-admin}:$password"
    credentials="${credentials//\\/\\\\}"
    curl_config="user = \"${credentials//\"/\\\"}\"" ;;
esac

# api METHOD PATH [curl args...]: sets $status and $body; dies when the server cannot be reached.
api() {
  local method="$1" path="$2" out rc=0
  shift 2
  out=$(printf '%s\n' "$curl_config" | curl -sS --config - --connect-timeout 5 --max-time "$timeout" \
    -X "$method" -w '\n%{http_code}' "$@" "$uri$path" 2>&1) || rc=$?
  if [ "$rc" -ne 0 ]; then
    die "cannot reach the MLflow tracking server at $uri (curl exit $rc: ${out%%$'\n'*}). Is it running? Try: docker compose ps mlflow-server"
  fi
  status="${out##*$'\n'}"
  body="${out%$'\n'*}"
}

api GET /api/2.0/mlflow/experiments/get-by-name -G --data-urlencode "experiment_name=$experiment"
case "$status" in
  200) ;;
  404) die "experiment '$experiment' does not exist on $uri yet. Trigger the DAG 'mlops_pipeline' in Airflow first." ;;
  401 | 403)
    if [ -n "$curl_config" ]; then die "the tracking server at $uri refused the login of MLFLOW_TRACKING_USERNAME (HTTP $status)"; fi
    die "the tracking server at $uri asks for a login (HTTP $status): set MLFLOW_AUTH=true and MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD in $env_file" ;;
  *) die "the tracking server at $uri answered HTTP $status to get-by-name: ${body:0:200}" ;;
esac
experiment_id=$(printf '%s' "$body" | grep -o '"experiment_id":[[:space:]]*"[^"]*"' | head -n 1 | sed 's/.*"\([^"]*\)"$/\1/' || true)
[ -n "$experiment_id" ] || die "unexpected answer from $uri (no experiment_id): ${body:0:200}"

# Newest finished runs first; the first whose outputs list a logged model wins. RUNNING or FAILED runs (a
# training task that died midway) never qualify.
search=$(printf '{"experiment_ids": ["%s"], "filter": "attributes.status = '"'"'FINISHED'"'"'", "order_by": ["attributes.start_time DESC"], "max_results": 50}' "$experiment_id")
api POST /api/2.0/mlflow/runs/search -H 'Content-Type: application/json' --data "$search"
[ "$status" = 200 ] || die "the tracking server at $uri answered HTTP $status to runs/search: ${body:0:200}"
case "$body" in
  "{"*"}") ;;
  *) die "unexpected answer from $uri to runs/search (not JSON): ${body:0:200}" ;;
esac
# One record per run: split at each run's `"info": {` (inside JSON strings quotes are escaped, so this
# pattern only occurs between runs), keep the first with a model output, read its run_id.
run_id=$(printf '%s' "$body" | awk 'BEGIN { RS = "\"info\":[[:space:]]*[{]" } NR > 1 && /"model_outputs":[[:space:]]*\[[[:space:]]*[{]/ { print; exit }' \
  | grep -o '"run_id":[[:space:]]*"[0-9a-f]\{32\}"' | head -n 1 | grep -o '[0-9a-f]\{32\}' || true)
[ -n "$run_id" ] || die "no FINISHED run with a logged model in experiment '$experiment' on $uri. Trigger the DAG 'mlops_pipeline' and wait for it to succeed."

if [ "$(env_value LATEST_MODEL_RUN_ID)" = "$run_id" ]; then
  echo "update_run_id: LATEST_MODEL_RUN_ID is already $run_id (newest finished run in '$experiment'); .env unchanged."
  exit 0
fi

# Write a full new copy beside .env, then rename it over .env (atomic). cp -p keeps .env's mode (0600).
tmp=$(mktemp "$(dirname "$env_file")/.env.XXXXXX.tmp") || die "cannot create a temporary file next to $env_file"
trap 'rm -f "$tmp"' EXIT
cp -p "$env_file" "$tmp"
final_newline=1
if [ -s "$env_file" ] && [ -n "$(tail -c 1 "$env_file")" ]; then final_newline=0; fi
awk -v id="$run_id" -v final_nl="$final_newline" '
  function emit(line) { if (NR > 1) printf "%s\n", held; held = line }
  {
    line = $0
    if (match(line, /^[[:space:]]*(export[[:space:]]+)?LATEST_MODEL_RUN_ID=/)) {
      cr = (line ~ /\r$/) ? "\r" : ""
      line = substr(line, 1, RLENGTH) id cr
      found = 1
    }
    if (NR == 1) eol = (line ~ /\r$/) ? "\r\n" : "\n"
    emit(line)
  }
  END {
    if (NR == 0) { printf "LATEST_MODEL_RUN_ID=%s\n", id; exit }
    if (found) { printf "%s%s", held, (final_nl ? "\n" : "") ; exit }
    printf "%s", held
    printf "%sLATEST_MODEL_RUN_ID=%s%s", (final_nl ? "\n" : eol), id, eol
  }' "$env_file" >"$tmp" || die "could not write the new .env; $env_file is unchanged"
grep -q "^[[:space:]]*\(export[[:space:]]*\)\{0,1\}LATEST_MODEL_RUN_ID=$run_id" "$tmp" || die "internal error: the new .env lacks the run ID; $env_file is unchanged"
mv -f "$tmp" "$env_file"
trap - EXIT

echo "update_run_id: LATEST_MODEL_RUN_ID=$run_id (newest finished run with a model in experiment '$experiment' on $uri)"
echo "update_run_id: now recreate the model-server so it serves this run:"
echo "    docker compose up -d model-server          # Docker Compose"
echo "    make local-restart-model                   # local mode"
