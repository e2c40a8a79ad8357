"""docker-compose.yml: valid for Compose v2 and shaped the way the stack promises."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import yaml

from conftest import ROOT, make_env_file, require_compose
from scripts.make_env import SECRET_KEYS

COMPOSE = ROOT / "docker-compose.yml"
LONG_RUNNING = {"mlflow-server", "airflow-webserver", "airflow-scheduler", "airflow-dag-processor", "model-server"}
ONE_SHOT = {"volume-init", "airflow-init"}
MONITORING = {"prometheus", "pushgateway", "grafana"}  # the `monitoring` profile (tests/test_monitoring_config.py)
BACKUP = {"backup"}  # the `backup` profile: make backup and make restore (tests/test_backup.py)


needs_compose = pytest.mark.usefixtures("compose_v2")


@pytest.fixture(scope="module")
def spec() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def resolved(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """`docker compose config` output for a fresh .env, i.e. what Compose will really run."""
    require_compose()
    env_file = make_env_file(tmp_path_factory.mktemp("env") / ".env")
    out = subprocess.run(
        ["docker", "compose", "--env-file", str(env_file), "-f", str(COMPOSE), "config", "--format", "json"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out)


@needs_compose
def test_config_is_valid_for_compose_v2(tmp_path) -> None:  # noqa: ANN001
    env_file = make_env_file(tmp_path / ".env")
    result = subprocess.run(
        ["docker", "compose", "--env-file", str(env_file), "-f", str(COMPOSE), "config", "-q"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


@needs_compose
def test_missing_secret_is_refused_by_name(tmp_path) -> None:  # noqa: ANN001
    env_file = tmp_path / ".env"
    env_file.write_text("AIRFLOW_JWT_SECRET=x\nAIRFLOW_SECRET_KEY=x\nAIRFLOW_ADMIN_PASSWORD=x\n")
    env = {k: v for k, v in os.environ.items() if k != "FERNET_KEY"}
    result = subprocess.run(
        ["docker", "compose", "--env-file", str(env_file), "-f", str(COMPOSE), "config", "-q"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode != 0 and "FERNET_KEY" in result.stderr


def test_no_version_key_and_the_seed_service_names(spec: dict) -> None:
    assert "version" not in spec
    by_profile = {name: tuple(service.get("profiles", ())) for name, service in spec["services"].items()}
    assert {name for name, profiles in by_profile.items() if not profiles} == LONG_RUNNING | ONE_SHOT
    assert {name for name, profiles in by_profile.items() if profiles} == MONITORING | BACKUP
    assert all(by_profile[name] == ("monitoring",) for name in MONITORING)
    assert by_profile["backup"] == ("backup",)


def test_the_backup_service_holds_every_volume_but_the_monitoring_history(spec: dict) -> None:
    """A new volume must be added to the backup (mlops_pipeline/backup VARIANTS) or named here as left out."""
    from mlops_pipeline.backup.archive import VARIANTS

    parts = VARIANTS["default"]

    left_out = {"prometheus_data", "grafana_data"}  # docs/backup.md says why
    mounts = dict(m.split(":")[::-1] for m in spec["services"]["backup"]["volumes"])
    assert set(spec["volumes"]) - left_out == set(parts) == {target.split("/")[-1] for target in mounts}
    assert all(mounts[f"/state/{part}"] == part for part in parts)
    backup = spec["services"]["backup"]
    assert backup["network_mode"] == "none" and backup["cap_drop"] == ["ALL"]


def test_every_long_running_service_has_a_healthcheck_and_init(spec: dict) -> None:
    for name in LONG_RUNNING | MONITORING:
        service = spec["services"][name]
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        # Prometheus, the Pushgateway and Grafana are Go binaries that handle SIGTERM as PID 1 (official images).
        assert name in MONITORING or service.get("init") is True, f"{name}: PID 1 would swallow SIGTERM"
        assert service.get("restart") == "unless-stopped", name


def test_start_order_uses_conditions(spec: dict) -> None:
    services = spec["services"]
    assert services["mlflow-server"]["depends_on"]["volume-init"]["condition"] == "service_completed_successfully"
    for name in ("airflow-webserver", "airflow-scheduler", "airflow-dag-processor"):
        assert services[name]["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"
    assert services["airflow-scheduler"]["depends_on"]["mlflow-server"]["condition"] == "service_healthy"
    assert services["model-server"]["depends_on"]["mlflow-server"]["condition"] == "service_healthy"


def test_published_ports_bind_to_loopback_by_default(resolved: dict) -> None:
    published = {
        name: [(p["host_ip"], p["published"]) for p in service.get("ports", [])]
        for name, service in resolved["services"].items()
    }
    assert published["airflow-webserver"] == [("127.0.0.1", "8080")]
    assert published["mlflow-server"] == [("127.0.0.1", "5000")]
    assert published["model-server"] == [("127.0.0.1", "5001")]
    others = set(published) - {"airflow-webserver", "mlflow-server", "model-server"}
    assert all(not published[name] for name in others)


def test_shared_airflow_settings_and_volumes(resolved: dict) -> None:
    services = resolved["services"]
    for name in ("airflow-init", "airflow-webserver", "airflow-scheduler", "airflow-dag-processor"):
        env = services[name]["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("sqlite:////opt/airflow/db/")
        assert env["AIRFLOW__CORE__AUTH_MANAGER"].endswith("FabAuthManager")
        assert int(env["AIRFLOW__CORE__PARALLELISM"]) <= 8
        mounts = {m["target"]: m for m in services[name]["volumes"]}
        assert mounts["/opt/airflow/db"]["source"] == "airflow_db"
        assert mounts["/opt/airflow/dags"].get("read_only") is True
        assert services[name]["user"] == "50000:0"
    assert {m["target"]: m["source"] for m in services["mlflow-server"]["volumes"]} == {"/mlflow/mlruns": "mlruns"}
    assert not any("mlruns" == m.get("source") for m in services["airflow-scheduler"]["volumes"])


def test_no_secret_values_in_the_file() -> None:
    """Secrets reach the services only as ${...} references to .env."""
    text = COMPOSE.read_text()
    for key in SECRET_KEYS:
        for line in text.splitlines():
            if key in line and not line.lstrip().startswith("#"):
                assert "${" + key in line, line
    assert "admin:admin" not in text and "password: admin" not in text.lower()


def test_local_mode_uses_the_compose_settings(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """scripts/local.py runs each service with the compose file's command and environment."""
    env_file = make_env_file(tmp_path / ".env")
    monkeypatch.setenv("ENV_FILE", str(env_file))
    import importlib

    from scripts import local

    local = importlib.reload(local)
    command, env = local.command_and_env("airflow-scheduler")
    scheduler = [str(ROOT / "airflow" / "entrypoint.sh"), "python", str(ROOT / "airflow" / "scheduler.py")]
    assert command == [*scheduler, "--skip-serve-logs"]
    assert env["AIRFLOW__CORE__PARALLELISM"] == "2"
    assert env["AIRFLOW__CORE__AUTH_MANAGER"].endswith("FabAuthManager")
    assert env["AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME"] == "0.25"
    assert env["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5000"
    command, env = local.command_and_env("mlflow-server")
    assert command == [str(ROOT / "mlflow" / "tracking-server.sh")]
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
