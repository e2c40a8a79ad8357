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
# Needs bash, curl and python3 (standard library only: no jq, no dotenv).
set -euo pipefail

usage() { sed -n '5,10s/^# \{0,1\}//p' "$0"; }
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

# py MODE ARGS: the JSON and .env work, in Python's standard library only. Modes:
#   experiment-id       stdin: get-by-name's answer; prints experiment.experiment_id
#   search-body ID      prints the runs/search request for experiment ID
#   run-id              stdin: runs/search's answer; prints the run_id of the first FINISHED run with a model
#                       output (MLflow lists the newest first), or nothing when there is none
#   rewrite ENV TMP ID  writes ENV to TMP with every LATEST_MODEL_RUN_ID= line set to ID (appended when absent);
#                       every other byte stays: other lines, CRLF or LF (the first line's), a missing final newline
# A malformed answer exits non-zero with the problem on stderr.
py_src=$(cat <<'PY'
import json, re, sys

def answer():
    try:
        doc = json.loads(sys.stdin.read())
    except ValueError as exc:
        sys.exit(f"not JSON: {exc}")
    if not isinstance(doc, dict):
        sys.exit("not a JSON object")
    return doc

def experiment_id():
    exp = answer().get("experiment")
    exp_id = exp.get("experiment_id") if isinstance(exp, dict) else None
    if not isinstance(exp_id, str) or not exp_id:
        sys.exit("no experiment.experiment_id")
    print(exp_id)

def search_body(exp_id):
    print(json.dumps({"experiment_ids": [exp_id], "filter": "attributes.status = 'FINISHED'",
                      "order_by": ["attributes.start_time DESC"], "max_results": 50}))

def run_id():
    runs = answer().get("runs", [])  # MLflow leaves "runs" out when no run matches
    if not isinstance(runs, list):
        sys.exit("runs is not a list")
    for i, run in enumerate(runs):
        info = run.get("info") if isinstance(run, dict) else None
        outputs = run.get("outputs", {}) if isinstance(run, dict) else None
        if not isinstance(info, dict) or not isinstance(outputs, dict):
            sys.exit(f"runs[{i}] has no info or outputs object")
        if info.get("status") != "FINISHED" or not outputs.get("model_outputs"):
            continue
        rid = info.get("run_id")
        if not isinstance(rid, str) or not re.fullmatch("[0-9a-f]{32}", rid):
            sys.exit(f"runs[{i}].info.run_id is not a 32-digit hex run ID: {rid!r}")
        print(rid)
        return

def rewrite(env, tmp, rid):
    with open(env, "rb") as f:
        data = f.read()
    rid = rid.encode()
    if not data:
        new = b"LATEST_MODEL_RUN_ID=" + rid + b"\n"
    else:
        final_nl = data.endswith(b"\n")
        lines = data.split(b"\n")
        if final_nl:
            lines.pop()
        eol = b"\r\n" if lines[0].endswith(b"\r") else b"\n"
        found = False
        for i, line in enumerate(lines):
            m = re.match(rb"\s*(export\s+)?LATEST_MODEL_RUN_ID=", line)
            if m:
                lines[i] = m.group(0) + rid + (b"\r" if line.endswith(b"\r") else b"")
                found = True
        new = b"\n".join(lines)
        if found:
            new += b"\n" if final_nl else b""
        else:
            new += (b"\n" if final_nl else eol) + b"LATEST_MODEL_RUN_ID=" + rid + eol
    with open(tmp, "wb") as f:  # truncates TMP, keeps its mode
        f.write(new)

modes = {"experiment-id": experiment_id, "search-body": search_body, "run-id": run_id, "rewrite": rewrite}
try:
    modes[sys.argv[1]](*sys.argv[2:])
except OSError as exc:
    sys.exit(str(exc))
PY
)
py() { python3 -I -c "$py_src" "$@"; }  # -I: no PYTHON* settings, no modules from the cwd
command -v python3 >/dev/null || die "python3 not found; it is needed to read MLflow's answers"

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
# On a malformed answer py prints the problem (to stderr, captured here) and fails.
experiment_id=$(py experiment-id <<<"$body" 2>&1) ||
  die "unexpected answer from $uri to get-by-name ($experiment_id): ${body:0:200}"

# Newest finished runs first; the first whose outputs list a logged model wins. RUNNING or FAILED runs (a
# training task that died midway) never qualify.
search=$(py search-body "$experiment_id")
api POST /api/2.0/mlflow/runs/search -H 'Content-Type: application/json' --data "$search"
[ "$status" = 200 ] || die "the tracking server at $uri answered HTTP $status to runs/search: ${body:0:200}"
run_id=$(py run-id <<<"$body" 2>&1) || die "unexpected answer from $uri to runs/search ($run_id): ${body:0:200}"
[ -n "$run_id" ] || die "no FINISHED run with a logged model in experiment '$experiment' on $uri. Trigger the DAG 'mlops_pipeline' and wait for it to succeed."

if [ "$(env_value LATEST_MODEL_RUN_ID)" = "$run_id" ]; then
  echo "update_run_id: LATEST_MODEL_RUN_ID is already $run_id (newest finished run in '$experiment'); .env unchanged."
  exit 0
fi

# Write a full new copy beside .env, then rename it over .env (atomic). cp -p keeps .env's mode (0600).
tmp=$(mktemp "$(dirname "$env_file")/.env.XXXXXX.tmp") || die "cannot create a temporary file next to $env_file"
trap 'rm -f "$tmp"' EXIT
cp -p "$env_file" "$tmp"
problem=$(py rewrite "$env_file" "$tmp" "$run_id" 2>&1) || die "could not write the new .env ($problem); $env_file is unchanged"
mv -f "$tmp" "$env_file"
trap - EXIT

echo "update_run_id: LATEST_MODEL_RUN_ID=$run_id (newest finished run with a model in experiment '$experiment' on $uri)"
echo "update_run_id: now recreate the model-server so it serves this run:"
echo "    docker compose up -d model-server          # Docker Compose"
echo "    make local-restart-model                   # local mode"
