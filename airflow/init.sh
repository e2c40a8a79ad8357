#!/usr/bin/env bash
# One-shot set-up (the `airflow-init` service, and local mode): migrate the metadata DB and create the
# admin user from .env. Idempotent: safe to run on every `up`.
#
# Usage: init.sh          (reads AIRFLOW_ADMIN_USERNAME / AIRFLOW_ADMIN_PASSWORD from the environment)
set -euo pipefail

user="${AIRFLOW_ADMIN_USERNAME:-admin}"
password="${AIRFLOW_ADMIN_PASSWORD:-}"
case "$password" in
  "" | changeme | admin)
    echo "airflow-init: AIRFLOW_ADMIN_PASSWORD is missing or a well-known default in .env. Run 'make env'." >&2
    exit 1 ;;
esac

echo "airflow-init: migrating the metadata database"
airflow db migrate

# `users create` for an existing user prints a notice and exits 0, so a re-run is harmless. It does not change
# an existing user's password: use `airflow users reset-password` for that (docs/troubleshooting.md).
echo "airflow-init: ensuring the admin user '$user' exists"
airflow users create \
  --username "$user" \
  --password="$password" \
  --firstname Admin \
  --lastname User \
  --role Admin \
  --email "${AIRFLOW_ADMIN_EMAIL:-admin@example.com}"
echo "airflow-init: done"
