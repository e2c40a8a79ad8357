# One target per job. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

UV_VERSION := 0.13.9
VENV := .venv
PY := $(VENV)/bin/python
# uv from PATH, else a pinned copy bootstrapped into .local/tools (needs only python3 with venv).
UV := $(or $(shell command -v uv 2>/dev/null),.local/tools/bin/uv)
export COMPOSE_BAKE := false
# MLflow 3 sends usage telemetry unless told not to (the images set the same): local mode, tests and benchmarks
# must not reach the internet at run time.
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true

.PHONY: help env venv demo up down append-data predict-batch drift-demo challenger-demo rollback backup restore logs local-demo local-up local-down local-status local-restart-model \
        scale-env scale-demo scale-up scale-backup scale-restore scale-down monitoring-env monitoring-up monitoring-down screenshots test test-fast lint format bench clean

help: ## show the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-20s %s\n", $$1, $$2}'

env: ## create .env with fresh secrets (never overwrites an existing one)
	@python3 -m scripts.make_env

.local/tools/bin/uv:
	python3 -m venv .local/tools
	.local/tools/bin/pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"

$(VENV)/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen
	@touch $@

venv: $(VENV)/.synced ## create/refresh the local environment from uv.lock

# make demo needs only the scripts' group (python-dotenv, tenacity, pyyaml), not the whole venv.
SCRIPTS_VENV := .local/scripts-venv
$(SCRIPTS_VENV)/.synced: pyproject.toml uv.lock | $(UV)
	UV_PROJECT_ENVIRONMENT=$(SCRIPTS_VENV) $(UV) sync --frozen --only-group scripts --quiet
	@touch $@

# --- Docker Compose --------------------------------------------------------------------------------
demo: env $(SCRIPTS_VENV)/.synced ## compose: build, start, train, serve, and print the seed's prediction
	$(SCRIPTS_VENV)/bin/python -m scripts.demo compose

up: env ## compose: start the stack and wait until it is healthy (model-server waits for a run ID)
	docker compose up -d --build --wait mlflow-server airflow-webserver airflow-scheduler airflow-dag-processor
	docker compose up -d --no-build model-server

down: ## compose: stop the stack (volumes, i.e. runs, models and history, are kept)
	docker compose --profile monitoring down

append-data: env $(SCRIPTS_VENV)/.synced ## on a running stack: append labeled rows (FILE=rows.csv) to the training data; mlops_pipeline retrains
	@test -n "$(FILE)" || { echo "usage: make append-data FILE=rows.csv (the training data's header: docs/inference-log.md)" >&2; exit 2; }
	$(SCRIPTS_VENV)/bin/python -m scripts.append_data "$(FILE)"

predict-batch: env $(SCRIPTS_VENV)/.synced ## on a running stack: score a CSV file (FILE=rows.csv, OUT=dir) with the champion, in chunks
	@test -n "$(FILE)" || { echo "usage: make predict-batch FILE=rows.csv [OUT=dir] (the Iris feature columns: docs/batch-predictions.md)" >&2; exit 2; }
	$(SCRIPTS_VENV)/bin/python -m scripts.predict_batch "$(FILE)" $(if $(OUT),--out "$(OUT)")

drift-demo: env $(SCRIPTS_VENV)/.synced ## on a running stack (after make demo): normal then shifted traffic, drift checks, labeled rows, retrain
	$(SCRIPTS_VENV)/bin/python -m scripts.drift_demo

challenger-demo: env $(SCRIPTS_VENV)/.synced ## on a running stack (after make demo): a challenger in shadow, feedback, the live comparison, approval, rollback
	$(SCRIPTS_VENV)/bin/python -m scripts.challenger_demo

rollback: env $(SCRIPTS_VENV)/.synced ## compose: move the champion alias back to the version it had before (docs/challenger.md)
	$(SCRIPTS_VENV)/bin/python -m scripts.challenger_demo rollback

backup: env $(SCRIPTS_VENV)/.synced ## compose: every piece of the stack's state in one archive, backups/<time>.tar.gz (OUT=file; WITH_SECRETS=1 adds .env)
	$(SCRIPTS_VENV)/bin/python -m scripts.backup backup $(if $(OUT),--out "$(OUT)") $(if $(filter 1,$(WITH_SECRETS)),--with-secrets)

restore: env $(SCRIPTS_VENV)/.synced ## compose: replace the state with an archive's (FILE=...; FORCE=1 if state exists: it is saved first), start the stack
	@test -n "$(FILE)" || { echo "usage: make restore FILE=backups/<archive>.tar.gz [FORCE=1] (docs/backup.md)" >&2; exit 2; }
	$(SCRIPTS_VENV)/bin/python -m scripts.backup restore "$(FILE)" $(if $(filter 1,$(FORCE)),--force)

logs: ## compose: follow the logs
	docker compose logs -f

clean: ## compose: remove this project's containers, volumes and images (asks first)
	./clean_disk.sh

# --- The scale-out variant: CeleryExecutor, PostgreSQL, Redis, SeaweedFS (docs/scale-out.md) --------------
SCALE_COMPOSE := docker compose -f docker-compose.yml -f docker-compose.scale.yml
SCALE_FILES := --compose-file docker-compose.yml --compose-file docker-compose.scale.yml
SCALE_SERVICES := mlflow-server airflow-webserver airflow-scheduler airflow-dag-processor airflow-worker

scale-env: ## scale: create .env, or add the scale variant's secrets to an existing one (other lines untouched)
	@python3 -m scripts.make_env --add-missing

scale-demo: scale-env $(SCRIPTS_VENV)/.synced ## scale: the demo on Celery workers, PostgreSQL and S3 artifacts
	$(SCRIPTS_VENV)/bin/python -m scripts.demo compose $(SCALE_FILES)

scale-up: scale-env ## scale: start the scale variant and wait until it is healthy
	$(SCALE_COMPOSE) up -d --build --wait $(SCALE_SERVICES)
	$(SCALE_COMPOSE) up -d --no-build model-server

scale-backup: scale-env $(SCRIPTS_VENV)/.synced ## scale: make backup for the scale variant (both databases by pg_dump, the buckets, the volumes)
	$(SCRIPTS_VENV)/bin/python -m scripts.backup $(SCALE_FILES) backup $(if $(OUT),--out "$(OUT)") $(if $(filter 1,$(WITH_SECRETS)),--with-secrets)

scale-restore: scale-env $(SCRIPTS_VENV)/.synced ## scale: make restore for the scale variant (FILE=...; FORCE=1 if state exists: it is saved first)
	@test -n "$(FILE)" || { echo "usage: make scale-restore FILE=backups/<archive>.tar.gz [FORCE=1] (docs/backup.md)" >&2; exit 2; }
	$(SCRIPTS_VENV)/bin/python -m scripts.backup $(SCALE_FILES) restore "$(FILE)" $(if $(filter 1,$(FORCE)),--force)

scale-down: ## scale: stop the scale variant, Flower included (volumes, i.e. both databases and the bucket, are kept)
	$(SCALE_COMPOSE) --profile flower --profile monitoring down

# --- The monitoring profile: Prometheus, the Pushgateway and Grafana (docs/monitoring.md) -------------------
# MONITORING_COMPOSE: the compose command to add it to; for the scale variant: make monitoring-up MONITORING_COMPOSE="$(SCALE_COMPOSE)".
MONITORING_COMPOSE ?= docker compose
MONITORING_SERVICES := prometheus pushgateway grafana

monitoring-env: ## monitoring: create .env, or add Grafana's admin password to an existing one (other lines untouched)
	@python3 -m scripts.make_env --add-missing

monitoring-up: monitoring-env ## monitoring: start Prometheus (:9090), the Pushgateway and Grafana (:3000) beside the stack
	$(MONITORING_COMPOSE) --profile monitoring up -d --wait $(MONITORING_SERVICES)
	@echo "Prometheus: http://127.0.0.1:$${PROMETHEUS_PORT:-9090}   Grafana: http://127.0.0.1:$${GRAFANA_PORT:-3000} (admin / GRAFANA_ADMIN_PASSWORD in .env)"

monitoring-down: ## monitoring: stop the profile's services (their history volumes are kept)
	$(MONITORING_COMPOSE) --profile monitoring stop $(MONITORING_SERVICES)
	$(MONITORING_COMPOSE) --profile monitoring rm -f $(MONITORING_SERVICES)

# --- Local mode (no Docker) ------------------------------------------------------------------------
screenshots: venv ## on a running stack: README step 6 in a real browser (one DAG run), its key screens into docs/images/
	$(PY) -m scripts.screenshots

local-demo: env venv ## local: the same flow as `make demo`, as local processes
	$(PY) -m scripts.demo local

local-up: env venv ## local: start the stack and wait until it answers
	$(PY) -m scripts.local up

local-down: ## local: stop every process local mode started
	@if [ -x $(PY) ]; then $(PY) -m scripts.local down; fi

local-status: ## local: show each service's state
	$(PY) -m scripts.local status

local-restart-model: ## local: restart the model-server (after ./update_run_id.sh)
	$(PY) -m scripts.local restart model-server

# --- Quality ---------------------------------------------------------------------------------------
lint: venv ## ruff, shellcheck and hadolint
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/shellcheck update_run_id.sh clean_disk.sh scripts/*.sh airflow/*.sh mlflow/*.sh postgres/*.sh tests/*.sh .ci/run \
		tests/standins/*/*.sh tests/standins/redis/redis-server
	$(VENV)/bin/hadolint airflow/Dockerfile mlflow/Dockerfile tests/standins/*/Dockerfile

format: venv ## apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: venv lint ## lint, then every test (the compose suite needs a Docker engine; REQUIRE_DOCKER=1 makes that strict)
	$(PY) -m pytest -p no:randomly $(PYTEST_ARGS)

test-fast: venv ## the edit loop (< 100 s): unit and in-process tests, one tracking server; no Docker, browser or local stack
	$(PY) -m pytest -m "not (compose or local or browser or slow)" --hypothesis-profile=quick $(PYTEST_ARGS)

bench: venv ## benchmarks (not part of test; its runtime is in results.md): benchmarks/results.md; BENCH_ARGS="--help"
	$(PY) -m benchmarks.run $(BENCH_ARGS)
