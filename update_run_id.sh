#!/usr/bin/env bash
# Set LATEST_MODEL_RUN_ID in .env to the newest FINISHED run with a logged model on the MLflow tracking server.
# Usage: ./update_run_id.sh [--env-file PATH] [-h]
#   MLFLOW_TRACKING_URI     default http://127.0.0.1:$MLFLOW_PORT (MLFLOW_PORT from .env, else 5000)
#   MLFLOW_EXPERIMENT_NAME  default: the value in .env, else mlops_pipeline
#   UPDATE_RUN_ID_TIMEOUT   seconds per request to the tracking server (default 15)
#   MLFLOW_AUTH, MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD   the MLflow login, when MLflow asks for one
#                           (default: the values in .env)
set -euo pipefail
usage() { sed -n '3,8s/^# \{0,1\}//p' "$0"; }
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
[ -w "$env_file" ] && [ -n "$(find "$env_file" -prune -perm -u+w)" ] ||  # find: read-only even for root
  die "$env_file is read-only; make it writable (chmod u+w $env_file) or set LATEST_MODEL_RUN_ID by hand"
env_value() {  # the last KEY=value in .env, unquoted and without a trailing CR, as docker compose reads it
  local value && value=$(grep -E "^[[:space:]]*(export[[:space:]]+)?$1=" "$env_file" | tail -n 1 || true)
  value="${value#*=}" && value="${value%$'\r'}"
  case "$value" in \"*\" | \'*\') value="${value:1:${#value}-2}" ;; esac && printf '%s' "$value"
}
py() { python3 -I -c "$py_src" "$@"; }  # MODE [ARGS]: the JSON and .env work; -I: no PYTHON* settings, no cwd modules
py_src=$(cat <<'PY'
import json, pathlib, re, sys
try:
    if sys.argv[1] == "rewrite":  # ENV TMP ID: ENV to TMP, each assignment's value set to ID (an export, a CR stay)
        data, rid = pathlib.Path(sys.argv[2]).read_bytes(), sys.argv[4].encode()
        new, found = re.subn(rb"(?m)^(\s*(export\s+)?LATEST_MODEL_RUN_ID=)[^\n]*?(?=\r?$)", lambda m: m[1] + rid, data)
        eol = b"\r\n" if data.split(b"\n", 1)[0].endswith(b"\r") else b"\n"  # the first line's, for a new last line
        new = new if found else data + (eol if data and not data.endswith(b"\n") else b"") + b"LATEST_MODEL_RUN_ID=" + rid + eol
        pathlib.Path(sys.argv[3]).write_bytes(new)  # truncates TMP, keeps its mode
        sys.exit()
    doc = json.loads(sys.stdin.read())  # the other modes read an answer of MLflow
except OSError as exc:
    sys.exit(str(exc))
except ValueError as exc:
    sys.exit(f"not JSON: {exc}")
isinstance(doc, dict) or sys.exit("not a JSON object")  # like bash's `|| die`
if sys.argv[1] == "search-body":  # get-by-name's answer -> the runs/search request: finished runs, newest first
    exp_id = doc["experiment"].get("experiment_id") if isinstance(doc.get("experiment"), dict) else None
    isinstance(exp_id, str) and exp_id or sys.exit("no experiment.experiment_id")
    sys.exit(print(json.dumps({"experiment_ids": [exp_id], "filter": "attributes.status = 'FINISHED'",
                               "order_by": ["attributes.start_time DESC"], "max_results": 50})))
isinstance(runs := doc.get("runs", []), list) or sys.exit("runs is not a list")  # run-id; MLflow omits "runs" if none
for i, run in enumerate(runs):
    info, outputs = (run.get("info"), run.get("outputs", {})) if isinstance(run, dict) else (None, None)
    isinstance(info, dict) and isinstance(outputs, dict) or sys.exit(f"runs[{i}] has no info or outputs object")
    if info.get("status") == "FINISHED" and outputs.get("model_outputs"):
        rid = info.get("run_id")
        isinstance(rid, str) and re.fullmatch("[0-9a-f]{32}", rid) or sys.exit(f"runs[{i}].info.run_id is not a 32-digit hex run ID: {rid!r}")
        sys.exit(print(rid))
PY
)
command -v python3 >/dev/null || die "python3 not found; it is needed to read MLflow's answers"
port="$(env_value MLFLOW_PORT)"
uri="${MLFLOW_TRACKING_URI:-http://127.0.0.1:${port:-5000}}" && uri="${uri%/}"
experiment="${MLFLOW_EXPERIMENT_NAME:-$(env_value MLFLOW_EXPERIMENT_NAME)}" && experiment="${experiment:-mlops_pipeline}"
curl_config=""  # with MLflow's basic auth on, the login: curl reads it on stdin, so `ps` never shows the password
case "${MLFLOW_AUTH:-$(env_value MLFLOW_AUTH)}" in
  true | 1 | yes)
    user="${MLFLOW_TRACKING_USERNAME:-$(env_value MLFLOW_TRACKING_USERNAME)}"
    password="${MLFLOW_TRACKING_PASSWORD:-$(env_value MLFLOW_TRACKING_PASSWORD)}"
    [ -n "$password" ] || die "MLFLOW_AUTH is on but MLFLOW_TRACKING_PASSWORD is empty in $env_file"
    credentials="${user:-admin}:$password" && credentials="${credentials//\\/\\\\}"
    curl_config="user = \"${credentials//\"/\\\"}\"" ;;
esac
ask() {  # NAME PATH MODE [curl args...]: sets $answer to `py MODE` of the answer to request NAME, or dies
  local name="$1" path="$2" mode="$3" out status rc=0 && shift 3
  out=$(printf '%s\n' "$curl_config" | curl -sS --config - --connect-timeout 5 --max-time "${UPDATE_RUN_ID_TIMEOUT:-15}" -w '\n%{http_code}' "$@" "$uri/api/2.0/mlflow/$path" 2>&1) || rc=$?
  [ "$rc" -eq 0 ] || die "cannot reach the MLflow tracking server at $uri (curl exit $rc: ${out%%$'\n'*}). Is it running? Try: docker compose ps mlflow-server"
  status="${out##*$'\n'}" && out="${out%$'\n'*}"
  case "$name $status" in
    *" 200") answer=$(py "$mode" <<<"$out" 2>&1) || die "unexpected answer from $uri to $name ($answer): ${out:0:200}" ;;
    "get-by-name 404") die "experiment '$experiment' does not exist on $uri yet. Trigger the DAG 'mlops_pipeline' in Airflow first." ;;
    "get-by-name 401" | "get-by-name 403")
      [ -z "$curl_config" ] || die "the tracking server at $uri refused the login of MLFLOW_TRACKING_USERNAME (HTTP $status)"
      die "the tracking server at $uri asks for a login (HTTP $status): set MLFLOW_AUTH=true and MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD in $env_file" ;;
    *) die "the tracking server at $uri answered HTTP $status to $name: ${out:0:200}" ;;
  esac
}
ask get-by-name experiments/get-by-name search-body -G --data-urlencode "experiment_name=$experiment"
ask runs/search runs/search run-id -H 'Content-Type: application/json' --data "$answer" && run_id="$answer"
[ -n "$run_id" ] || die "no FINISHED run with a logged model in experiment '$experiment' on $uri. Trigger the DAG 'mlops_pipeline' and wait for it to succeed."
[ "$(env_value LATEST_MODEL_RUN_ID)" != "$run_id" ] || { echo "update_run_id: LATEST_MODEL_RUN_ID is already $run_id (newest finished run in '$experiment'); .env unchanged."; exit 0; }
tmp=$(mktemp "$(dirname "$env_file")/.env.XXXXXX.tmp") || die "cannot create a temporary file next to $env_file"
trap 'rm -f "$tmp"' EXIT  # a full copy beside .env, with its mode (cp -p), renamed over it: atomic
cp -p "$env_file" "$tmp"
problem=$(py rewrite "$env_file" "$tmp" "$run_id" 2>&1) || die "could not write the new .env ($problem); $env_file is unchanged"
mv -f "$tmp" "$env_file"
trap - EXIT
printf 'update_run_id: %s\n' "LATEST_MODEL_RUN_ID=$run_id (newest finished run with a model in experiment '$experiment' on $uri)" \
  "now recreate the model-server so it serves this run:"
printf '    %s\n' "docker compose up -d model-server          # Docker Compose" "make local-restart-model                   # local mode"
