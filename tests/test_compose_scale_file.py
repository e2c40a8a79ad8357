"""docker-compose.scale.yml on top of docker-compose.yml: valid for Compose v2 and shaped the way the scale-out
variant promises (docs/scale-out.md). No engine needed; tests/compose/test_scale.py runs the variant for real."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, make_env_file, require_compose
from scripts.make_env import SECRET_KEYS
from scripts.stackenv import read_env_file

BASE = ROOT / "docker-compose.yml"
SCALE = ROOT / "docker-compose.scale.yml"
LONG_RUNNING = {
    "postgres",
    "redis",
    "seaweedfs",
    "mlflow-server",
    "airflow-webserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-worker",
    "model-server",
}
SCALE_SECRETS = ("POSTGRES_PASSWORD", "AIRFLOW_DB_PASSWORD", "MLFLOW_DB_PASSWORD", "REDIS_PASSWORD")


def compose(env_file: os.PathLike, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    cmd = ["docker", "compose", "--env-file", str(env_file), "-f", str(BASE), "-f", str(SCALE), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env)


@pytest.fixture(scope="module")
def env_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh .env, made as `make env` makes it."""
    return make_env_file(tmp_path_factory.mktemp("env") / ".env")


@pytest.fixture(scope="module")
def resolved(env_file: Path) -> dict:
    """`docker compose config` of both files for a fresh .env (Flower's profile on), i.e. what Compose runs."""
    require_compose()
    result = compose(env_file, "--profile", "flower", "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_config_is_valid_and_a_missing_scale_secret_is_refused_by_name(resolved: dict, tmp_path) -> None:  # noqa: ANN001
    env_file = make_env_file(tmp_path / ".env")
    assert compose(env_file, "config", "-q").returncode == 0
    for key in SCALE_SECRETS:
        lines = [line for line in env_file.read_text().splitlines() if not line.startswith(f"{key}=")]
        (tmp_path / "missing.env").write_text("\n".join(lines) + "\n")
        env = {k: v for k, v in os.environ.items() if k not in SCALE_SECRETS}
        result = compose(tmp_path / "missing.env", "config", "-q", env=env)
        assert result.returncode != 0 and key in result.stderr, (key, result.stderr)


def test_same_services_and_ports_plus_the_engines(resolved: dict) -> None:
    services = resolved["services"]
    base = {name for name, s in yaml.safe_load(BASE.read_text())["services"].items() if "profiles" not in s}
    assert set(services) == base | {"postgres", "redis", "seaweedfs", "create-bucket", "airflow-worker", "flower"}
    published = {name: [(p["host_ip"], p["published"]) for p in s.get("ports", [])] for name, s in services.items()}
    assert published.pop("airflow-webserver") == [("127.0.0.1", "8080")]
    assert published.pop("mlflow-server") == [("127.0.0.1", "5000")]
    assert published.pop("model-server") == [("127.0.0.1", "5001")]
    assert published.pop("flower") == [("127.0.0.1", "5555")]
    assert not any(published.values()), published
    assert services["flower"]["profiles"] == ["flower"]


def test_engines_are_pinned_official_images_run_unprivileged(resolved: dict) -> None:
    services = resolved["services"]
    assert re.fullmatch(r"postgres:15\.\d+(-\w+)?", services["postgres"]["image"])
    assert re.fullmatch(r"redis:7\.0\.\d+(-\w+)?", services["redis"]["image"])
    assert re.fullmatch(r"chrislusf/seaweedfs:\d+\.\d+", services["seaweedfs"]["image"])
    for name in ("postgres", "redis", "seaweedfs"):
        assert services[name]["user"] not in ("", "0", "root", "0:0"), name
    for name in LONG_RUNNING:
        service = services[name]
        assert int(service["mem_limit"]) > 0, name
        assert service.get("healthcheck", {}).get("test"), name
        assert service.get("restart") == "unless-stopped", name
        assert "no-new-privileges:true" in service.get("security_opt", []), name


def test_celery_postgres_and_s3_settings(resolved: dict) -> None:
    services = resolved["services"]
    for name in ("airflow-init", "airflow-webserver", "airflow-scheduler", "airflow-dag-processor", "airflow-worker"):
        env = services[name]["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == "postgresql+psycopg2://airflow@postgres:5432/airflow"
        assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://:") and env[
            "AIRFLOW__CELERY__BROKER_URL"
        ].endswith("@redis:6379/0")
        assert services[name]["image"].endswith("-scale"), name
    worker = services["airflow-worker"]
    assert worker["deploy"]["replicas"] == 2
    assert worker["environment"]["AIRFLOW__CELERY__WORKER_CONCURRENCY"] == "2"
    # The scheduler's own limit must not cap the workers' slots (the default stack's AIRFLOW_PARALLELISM is 2).
    slots = worker["deploy"]["replicas"] * int(worker["environment"]["AIRFLOW__CELERY__WORKER_CONCURRENCY"])
    assert int(services["airflow-scheduler"]["environment"]["AIRFLOW__CORE__PARALLELISM"]) >= slots
    assert "--skip-serve-logs" in worker["command"]
    assert {m["target"]: m["source"] for m in worker["volumes"]}["/opt/airflow/logs"] == "airflow_logs"
    mlflow = services["mlflow-server"]["environment"]
    assert mlflow["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://mlflow@postgres:5432/mlflow")
    assert mlflow["MLFLOW_ARTIFACTS_DESTINATION"] == "s3://mlflow/artifacts"
    assert mlflow["MLFLOW_S3_ENDPOINT_URL"] == "http://seaweedfs:8333"


def holding(services: dict, secret: str) -> set[str]:
    """The services whose environment carries `secret`."""
    return {name for name, s in services.items() if secret in json.dumps(s.get("environment") or {})}


def test_only_the_tracking_server_holds_the_artifact_keys_and_the_workers_only_the_batch_keys(
    resolved: dict, env_file: Path
) -> None:
    """The admin identity (the artifacts) stays with mlflow-server and create-bucket; the scheduler and the workers
    reach the store with the batch identity only, which SeaweedFS confines to the batch bucket."""
    services, env = resolved["services"], read_env_file(env_file)
    assert resolved["networks"]["artifacts"].get("internal") is True
    on_store_network = {name for name, s in services.items() if "artifacts" in (s.get("networks") or {})}
    assert on_store_network == {"seaweedfs", "create-bucket", "mlflow-server", "airflow-scheduler", "airflow-worker"}
    assert holding(services, env["S3_SECRET_ACCESS_KEY"]) == {"seaweedfs", "create-bucket", "mlflow-server"}
    assert holding(services, env["S3_BATCH_SECRET_ACCESS_KEY"]) == {"seaweedfs", "airflow-scheduler", "airflow-worker"}
    worker = services["airflow-worker"]["environment"]
    assert worker["BATCH_ROOT"] == "s3://batch" and worker["BATCH_CONN_ID"] == "batch_storage"
    connection = json.loads(worker["AIRFLOW_CONN_BATCH_STORAGE"])
    assert connection["extra"]["endpoint_url"] == "http://seaweedfs:8333" and connection["conn_type"] == "aws"
    assert services["create-bucket"]["command"][-2:] == ["mlflow", "batch"]
    for name in ("airflow-worker", "model-server"):
        assert services[name]["environment"]["MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD"] == "false", name


def test_no_secret_values_in_the_file() -> None:
    """Secrets reach the services only as ${...} references to .env."""
    for line in SCALE.read_text().splitlines():
        if line.lstrip().startswith("#"):
            continue
        for key in (*SECRET_KEYS, "S3_ACCESS_KEY_ID"):
            if key in line:
                assert "${" + key in line, line


def test_the_backup_service_reaches_the_engines_as_their_admins_and_mounts_the_variants_volumes(
    env_file: Path,
) -> None:
    """make scale-backup: pg_dump as PostgreSQL's superuser, every bucket as the S3 admin (the only other holder of
    those keys besides mlflow-server and create-bucket), and the volumes the scale variant still uses."""
    from mlops_pipeline.backup.archive import volumes

    result = compose(env_file, "--profile", "backup", "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    services, env = json.loads(result.stdout)["services"], read_env_file(env_file)
    backup = services["backup"]
    assert backup["image"].endswith("-scale") and "network_mode" not in backup
    assert set(backup["networks"]) == {"default", "artifacts"}
    assert backup["environment"]["BACKUP_VARIANT"] == "scale"
    assert backup["environment"]["PGPASSWORD"] == env["POSTGRES_PASSWORD"]
    assert backup["environment"]["AWS_SECRET_ACCESS_KEY"] == env["S3_SECRET_ACCESS_KEY"]
    assert {m["target"]: m["source"] for m in backup["volumes"]} == {f"/state/{v}": v for v in volumes("scale")}
    assert services["airflow-init"]["build"]["args"]["EXTRA_APT"] == "postgresql-client-15"
    assert backup["cap_drop"] == ["ALL"] and backup["user"] == "0:0"
