"""The monitoring profile's files (monitoring/): what Prometheus scrapes and alerts on, and what Grafana shows,
checked against the code that produces the metrics. Prometheus itself loads them in the compose suite
(tests/compose/test_stack.py 3c-3f), which also runs every dashboard query."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
import yaml

from conftest import ROOT, make_env_file, require_compose

MONITORING = ROOT / "monitoring"
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
PROMETHEUS = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
ALERTS = yaml.safe_load((MONITORING / "alerts.yml").read_text())
DASHBOARD = json.loads((MONITORING / "grafana" / "dashboards" / "mlops.json").read_text())
# Every metric name the code defines (metrics.py and pipeline_metrics.py spell each one once, in quotes).
SOURCES = [
    ROOT / "mlops_pipeline" / "serving" / "metrics.py",
    ROOT / "mlops_pipeline" / "monitoring" / "pipeline_metrics.py",
]
DEFINED = {m for path in SOURCES for m in re.findall(r'"((?:model_server|mlops)_[a-z_]+)"', path.read_text())}
# MLflow's exporter (prometheus-flask-exporter, defaults_prefix="mlflow") and Prometheus's own `up`.
OTHERS = {"mlflow_http_request_total", "up"}
SUFFIXES = ("_bucket", "_count", "_sum")


def names_in(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (identifiers followed by a selector, a range or a closing paren)."""
    found = set(re.findall(r"\b((?:model_server|mlops|mlflow)_[a-z_]+|up)\s*[{\[)]", expr))
    return {next((n.removesuffix(s) for s in SUFFIXES if n.endswith(s)), n) for n in found}


def rules() -> list[dict]:
    return [rule for group in ALERTS["groups"] for rule in group["rules"]]


def panels() -> list[dict]:
    return [p for p in DASHBOARD["panels"] if p["type"] != "row"]


def test_scrapes_the_services_by_their_compose_names_and_ports() -> None:
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in PROMETHEUS["scrape_configs"]}
    assert targets["model-server"] == ["model-server:5001"]
    assert targets["mlflow-server"] == ["mlflow-server:5000"]
    assert targets["pushgateway"] == ["pushgateway:9091"]
    for job, (target,) in targets.items():
        service = target.split(":")[0]
        assert service == "localhost" or service in COMPOSE["services"], job
    pushgateway = next(job for job in PROMETHEUS["scrape_configs"] if job["job_name"] == "pushgateway")
    assert pushgateway["honor_labels"] is True  # the pushed dag_id/job labels survive the scrape


def test_the_files_prometheus_reads_are_the_ones_compose_mounts() -> None:
    mounts = {
        v.split(":")[1]: v.split(":")[0] for v in COMPOSE["services"]["prometheus"]["volumes"] if v.startswith(".")
    }
    assert mounts["/etc/prometheus/prometheus.yml"] == "./monitoring/prometheus.yml"
    for rule_file in PROMETHEUS["rule_files"]:
        assert (ROOT / mounts[rule_file].removeprefix("./")).is_file(), rule_file
    command = " ".join(COMPOSE["services"]["prometheus"]["command"])
    assert "--storage.tsdb.retention.time=" in command and "--storage.tsdb.retention.size=" in command


def test_the_required_alerts_each_say_what_to_do() -> None:
    by_name = {rule["alert"]: rule for rule in rules()}
    assert {"ModelServerDown", "ModelServerErrors", "ModelServerSlow", "ChampionFailedToLoad"} <= set(by_name)
    assert {"NoSuccessfulTrainingRun", "TrainingRunFailed"} <= set(by_name)
    assert {"ModelDataDrift", "DriftCheckStale", "ChampionLiveAccuracyLow"} <= set(by_name)
    for name, rule in by_name.items():
        assert rule["annotations"]["summary"] and rule["annotations"]["action"], name
        assert rule["labels"]["severity"] in ("warning", "critical"), name
    assert by_name["ModelServerDown"]["for"] == "1m"


@pytest.mark.parametrize("source", ["alert rules", "dashboard"])
def test_every_metric_queried_is_one_the_stack_produces(source: str) -> None:
    exprs = (
        [r["expr"] for r in rules()] if source == "alert rules" else [t["expr"] for p in panels() for t in p["targets"]]
    )
    used = set().union(*map(names_in, exprs))
    assert used, exprs
    assert used <= DEFINED | OTHERS, f"{source} query metrics nobody produces: {sorted(used - DEFINED - OTHERS)}"


def test_the_dashboard_covers_serving_and_the_pipeline_from_the_provisioned_source() -> None:
    datasource = yaml.safe_load((MONITORING / "grafana/provisioning/datasources/prometheus.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    used = set().union(*(names_in(t["expr"]) for p in panels() for t in p["targets"]))
    wanted = {"model_server_requests_total", "model_server_request_duration_seconds", "model_server_model_info"}
    wanted |= {"model_server_predictions_total", "mlops_dag_run_duration_seconds", "mlops_dag_run_succeeded"}
    assert wanted <= used
    for panel in panels():
        assert panel["description"], panel["title"]
        assert panel["datasource"]["uid"] == uid and all(t["datasource"]["uid"] == uid for t in panel["targets"])
    ids = [p["id"] for p in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))
    provider = yaml.safe_load((MONITORING / "grafana/provisioning/dashboards/mlops.yml").read_text())
    mounts = dict(v.split(":")[1::-1] for v in COMPOSE["services"]["grafana"]["volumes"] if v.startswith("."))
    assert mounts[provider["providers"][0]["options"]["path"]] == "./monitoring/grafana/dashboards"


@pytest.mark.parametrize("password", ["", "changeme", "a-real-one"])
def test_grafana_refuses_to_start_without_a_real_admin_password(password: str) -> None:
    """The entrypoint's guard, run by sh as compose runs it (`$$` is compose's escape of `$`; Grafana's own start
    script replaced by an echo: CI has no Grafana image)."""
    grafana = COMPOSE["services"]["grafana"]
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == "${GRAFANA_ADMIN_PASSWORD:-}"
    shell, flag, script = grafana["entrypoint"]
    assert script.endswith("exec /run.sh")
    script = script.replace("$$", "$").removesuffix("exec /run.sh") + "echo grafana-started"
    env = {"PATH": "/usr/bin:/bin", "GF_SECURITY_ADMIN_PASSWORD": password}
    result = subprocess.run([shell, flag, script], env=env, capture_output=True, text=True, timeout=10)
    if password == "a-real-one":
        assert result.returncode == 0 and result.stdout.strip() == "grafana-started"
    else:
        assert result.returncode == 1 and "make monitoring-env" in result.stderr and not result.stdout


def test_grafana_does_not_phone_home() -> None:
    env = COMPOSE["services"]["grafana"]["environment"]
    keys = ("REPORTING_ENABLED", "CHECK_FOR_UPDATES", "CHECK_FOR_PLUGIN_UPDATES")
    assert [env[f"GF_ANALYTICS_{key}"] for key in keys] == ["false"] * 3
    assert env["GF_NEWS_NEWS_FEED_ENABLED"] == "false"


@pytest.mark.parametrize("switch", ["true", "false"])
def test_airflows_opentelemetry_switch_reaches_every_airflow_service(switch: str, tmp_path) -> None:  # noqa: ANN001
    """What Airflow reads with AIRFLOW_OTEL_METRICS on and off (the scale suite runs the DAG with it on; the hop into
    Prometheus needs the official image: docs/monitoring.md)."""
    require_compose()
    env_file = make_env_file(tmp_path / ".env", AIRFLOW_OTEL_METRICS=switch)
    config = subprocess.run(
        [
            "docker",
            "compose",
            "--env-file",
            str(env_file),
            "-f",
            str(ROOT / "docker-compose.yml"),
            "--profile",
            "monitoring",
            "config",
            "--format",
            "json",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    services = json.loads(config.stdout)["services"]
    airflow = [name for name in services if name.startswith("airflow-")]
    assert len(airflow) == 4
    for name in airflow:
        env = services[name]["environment"]
        assert env["AIRFLOW__METRICS__OTEL_ON"] == switch, name
        assert env["OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"] == "http://prometheus:9090/api/v1/otlp/v1/metrics"
    assert "--web.enable-otlp-receiver" in services["prometheus"]["command"]
