#!/usr/bin/env bash
# First start of the scale variant's PostgreSQL (docker-compose.scale.yml): one role and one database each for
# Airflow and MLflow, so neither service can read the other's data; and the model-server's inference log, a table
# the model-server may only add rows to (and delete old ones from) and the Airflow workers may only read.
# The official postgres image runs every /docker-entrypoint-initdb.d/*.sh once, on an empty data directory, as the
# superuser over the local socket.
#
# Usage: (by the postgres image's entrypoint)   AIRFLOW_DB_PASSWORD, MLFLOW_DB_PASSWORD,
#        INFERENCE_LOG_WRITER_PASSWORD, INFERENCE_LOG_READER_PASSWORD from .env
# A later change of a password in .env does not reach an existing database: docs/scale-out.md says what to do.
set -euo pipefail

for key in AIRFLOW_DB_PASSWORD MLFLOW_DB_PASSWORD INFERENCE_LOG_WRITER_PASSWORD INFERENCE_LOG_READER_PASSWORD; do
  case "${!key:-}" in
    "" | changeme) echo "init-databases: $key is missing or a placeholder in .env. Run 'make env'." >&2; exit 1 ;;
  esac
done

# psql variables (:'name' quotes a literal, :"name" an identifier): the passwords never appear in the SQL text.
psql -v ON_ERROR_STOP=1 --no-psqlrc --username "${POSTGRES_USER:-postgres}" --dbname "${POSTGRES_DB:-postgres}" \
  -v airflow_password="$AIRFLOW_DB_PASSWORD" -v mlflow_password="$MLFLOW_DB_PASSWORD" \
  -v writer_password="$INFERENCE_LOG_WRITER_PASSWORD" -v reader_password="$INFERENCE_LOG_READER_PASSWORD" <<'SQL'
CREATE ROLE airflow LOGIN PASSWORD :'airflow_password';
CREATE DATABASE airflow OWNER airflow;
CREATE ROLE mlflow LOGIN PASSWORD :'mlflow_password';
CREATE DATABASE mlflow OWNER mlflow;
-- PostgreSQL 15 no longer lets every role create tables in public; each database belongs to its own role.
REVOKE ALL ON DATABASE airflow FROM PUBLIC;
REVOKE ALL ON DATABASE mlflow FROM PUBLIC;

-- The inference log (mlops_pipeline/serving/inference_log.py writes, mlops_pipeline/monitoring/log_reader.py reads): owned by the
-- superuser, so neither role can change the table; one JSON record per scored request.
CREATE ROLE inference_writer LOGIN PASSWORD :'writer_password';
CREATE ROLE inference_reader LOGIN PASSWORD :'reader_password';
CREATE DATABASE inference_log;
REVOKE ALL ON DATABASE inference_log FROM PUBLIC;
GRANT CONNECT ON DATABASE inference_log TO inference_writer, inference_reader;
\connect inference_log
CREATE TABLE inference_log (ts timestamptz NOT NULL, model_version text NOT NULL, record jsonb NOT NULL);
CREATE INDEX inference_log_ts ON inference_log (ts);
-- The writer adds rows and deletes those past the retention (a DELETE's WHERE needs to read ts, nothing else).
GRANT INSERT, DELETE, SELECT (ts) ON inference_log TO inference_writer;
GRANT SELECT ON inference_log TO inference_reader;
SQL
echo "init-databases: created the databases airflow and mlflow, each owned by its own role, and inference_log"
