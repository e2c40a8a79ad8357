#!/usr/bin/env bash
# Entry point of every Airflow container (and of local mode): refuse to start with a missing or placeholder
# secret, naming the .env key, then run the command given.
#
# Usage: entrypoint.sh COMMAND [ARGS...]     e.g. entrypoint.sh airflow scheduler
set -euo pipefail

if [ "$#" -eq 0 ]; then
  echo "usage: entrypoint.sh COMMAND [ARGS...]" >&2
  exit 2
fi

fail=0
check_secret() {  # check_secret ENV_KEY_IN_DOT_ENV VARIABLE_THE_PROCESS_READS
  local value="${!2:-}"
  case "$value" in
    "" | changeme | change-me | CHANGE_ME | "<"*">")
      echo "airflow: $1 is missing or still a placeholder in .env ($2). Run 'make env' (it never overwrites an existing .env) or set it by hand." >&2
      fail=1 ;;
  esac
}
check_secret FERNET_KEY AIRFLOW__CORE__FERNET_KEY
check_secret AIRFLOW_JWT_SECRET AIRFLOW__API_AUTH__JWT_SECRET
check_secret AIRFLOW_SECRET_KEY AIRFLOW__API__SECRET_KEY
[ "$fail" -eq 0 ] || exit 1

exec "$@"
