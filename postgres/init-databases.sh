#!/usr/bin/env bash
# First start of the scale variant's PostgreSQL (docker-compose.scale.yml): one role and one database each for
# Airflow and MLflow, so neither service can read the other's data. The official postgres image runs every
# /docker-entrypoint-initdb.d/*.sh once, on an empty data directory, as the superuser over the local socket.
#
# Usage: (by the postgres image's entrypoint)   AIRFLOW_DB_PASSWORD, MLFLOW_DB_PASSWORD from .env
# A later change of a password in .env does not reach an existing database: docs/scale-out.md says what to do.
set -euo pipefail

for key in AIRFLOW_DB_PASSWORD MLFLOW_DB_PASSWORD; do
  case "${!key:-}" in
    "" | changeme) echo "init-databases: $key is missing or a placeholder in .env. Run 'make env'." >&2; exit 1 ;;
  esac
done

# psql variables (:'name' quotes a literal, :"name" an identifier): the passwords never appear in the SQL text.
psql -v ON_ERROR_STOP=1 --no-psqlrc --username "${POSTGRES_USER:-postgres}" --dbname "${POSTGRES_DB:-postgres}" \
  -v airflow_password="$AIRFLOW_DB_PASSWORD" -v mlflow_password="$MLFLOW_DB_PASSWORD" <<'SQL'
CREATE ROLE airflow LOGIN PASSWORD :'airflow_password';
CREATE DATABASE airflow OWNER airflow;
CREATE ROLE mlflow LOGIN PASSWORD :'mlflow_password';
CREATE DATABASE mlflow OWNER mlflow;
-- PostgreSQL 15 no longer lets every role create tables in public; each database belongs to its own role.
REVOKE ALL ON DATABASE airflow FROM PUBLIC;
REVOKE ALL ON DATABASE mlflow FROM PUBLIC;
SQL
echo "init-databases: created the databases airflow and mlflow, each owned by its own role"
