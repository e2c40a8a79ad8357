"""The scale-out variant (docker-compose.yml + docker-compose.scale.yml) on a real engine: CeleryExecutor with two
workers and Redis, Airflow and MLflow on PostgreSQL, the artifacts in SeaweedFS's S3 API behind the tracking server.

Runs under its own compose project name (`mlopsscale`), image names, .env and host ports, so neither a user's
stack nor the default suite's (`mlopstest`) is touched. Tests run in file order and share one stack; each step
needs the previous ones. What the default stack's suite (test_stack.py) already proves of the shared parts (the
model-server, the UI, update_run_id.sh's edge cases, clean_disk.sh) is not repeated here: this file checks what the
variant changes, with one DAG run per check.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tarfile
import textwrap
import time
import uuid
from pathlib import Path

import pytest
import requests

from conftest import ROOT, ComposeProject, require_docker_engine, training_runs
from mlops_pipeline.schema import FEATURE_NAMES
from scripts.make_env import SECRET_KEYS
from scripts.stackclient import Airflow
from scripts.stackenv import read_env_file, wait_for

pytestmark = pytest.mark.compose
PROJECT = "mlopsscale"
DAG = "mlops_pipeline"
SEED_PAYLOAD = {"inputs": [[5.1, 3.5, 1.4, 0.2]]}
RESULTS = ROOT / "tests" / "artifacts" / "scale-results.json"
ONE_SHOT = ["volume-init", "create-bucket", "airflow-init"]
ENGINES = ["postgres", "redis", "seaweedfs"]
AIRFLOW = ["airflow-webserver", "airflow-scheduler", "airflow-dag-processor", "airflow-worker"]
LONG_RUNNING = [*ENGINES, "mlflow-server", *AIRFLOW, "model-server"]
WORKERS = 2  # AIRFLOW_WORKER_REPLICAS' default


require_docker_engine()


class ScaleStack(ComposeProject):
    """One compose project of the scale variant, made for this test module."""

    def __init__(self, workdir: Path) -> None:
        # Airflow's OpenTelemetry metrics on (the default stack's suite runs with them off): every run of this suite
        # shows that the switch costs no run. The stand-in Prometheus cannot receive them (docs/monitoring.md).
        files = ("docker-compose.yml", "docker-compose.scale.yml")
        super().__init__(workdir, PROJECT, files, AIRFLOW_OTEL_METRICS="true", BATCH_CHUNK_ROWS="300")
        self.workdir = workdir
        self.images = [f"{PROJECT}-airflow:latest-scale", f"{PROJECT}-mlflow:latest-scale"]
        self.dag_runs: list[str] = []  # successful DAG runs so far, in order
        self.started = 0.0

    def sh(self, service: str, script: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """`sh -c script` in the service's (first) container."""
        return self.compose("exec", "-T", service, "sh", "-c", script, check=check)

    def inspect(self, container: str) -> dict:
        return json.loads(self.run("docker", "inspect", container).stdout)[0]

    def names(self, service: str) -> list[str]:
        return sorted(row["Name"] for row in self.containers() if row["Service"] == service)

    def run_dag(self) -> str:
        airflow = self.airflow()
        dag_run = airflow.trigger(DAG)
        assert airflow.wait_for_run(DAG, dag_run, timeout=600, progress=False) == "success"
        self.dag_runs.append(dag_run)
        return dag_run

    def task_instances(self, dag_run: str, airflow: Airflow | None = None) -> list[dict]:
        path = f"/dags/{DAG}/dagRuns/{dag_run}/taskInstances"
        return (airflow or self.airflow()).call("GET", path)["task_instances"]

    def host_client_env(self) -> dict[str, str]:
        """What an MLflow client on the host needs to load this variant's models (docs/scale-out.md)."""
        return {**self.env, "MLFLOW_TRACKING_URI": self.mlflow_url, "MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD": "false"}

    def predict(self) -> requests.Response:
        return requests.post(f"{self.model_url}/invocations", json=SEED_PAYLOAD, timeout=30)

    def mlflow(self, method: str, path: str, **kwargs: object) -> dict:
        answer = requests.request(method, f"{self.mlflow_url}/api/2.0/mlflow/{path}", timeout=10, **kwargs)
        assert answer.ok, f"{method} {path}: HTTP {answer.status_code} {answer.text[:300]}"
        return answer.json()

    def finished_runs(self) -> list[dict]:
        exp = self.mlflow("GET", "experiments/get-by-name", params={"experiment_name": "mlops_pipeline"})
        body = {"experiment_ids": [exp["experiment"]["experiment_id"]], "filter": "attributes.status = 'FINISHED'"}
        return training_runs(self.mlflow("POST", "runs/search", json=body).get("runs", []))

    def bucket_keys(self) -> list[str]:
        """Every object key in the artifact bucket, listed over S3 from mlflow-server (which holds the keys)."""
        script = (
            "import boto3, json, os; s3 = boto3.client('s3', endpoint_url=os.environ['MLFLOW_S3_ENDPOINT_URL']); "
            "pages = s3.get_paginator('list_objects_v2').paginate(Bucket=os.environ['S3_BUCKET']); "
            "print(json.dumps([o['Key'] for p in pages for o in p.get('Contents', [])]))"
        )
        out = self.compose(
            "exec", "-T", "-e", f"S3_BUCKET={self.cfg['S3_BUCKET']}", "mlflow-server", "python", "-c", script
        )
        return json.loads(out.stdout)

    def state(self) -> dict:
        """What must survive a restart: MLflow's runs and registered versions, the champion, Airflow's DAG history."""
        versions = self.mlflow("GET", "model-versions/search", params={"filter": "name='iris-classifier'"})
        champion = self.mlflow(
            "GET", "registered-models/alias", params={"name": "iris-classifier", "alias": "champion"}
        )
        airflow = self.airflow()
        runs = airflow.call("GET", f"/dags/{DAG}/dagRuns")
        history = {
            run["dag_run_id"]: sorted(
                (ti["task_id"], ti["state"], ti["hostname"]) for ti in self.task_instances(run["dag_run_id"], airflow)
            )
            for run in runs["dag_runs"]
        }
        return {
            "mlflow_runs": sorted(run["info"]["run_id"] for run in self.finished_runs()),
            "versions": sorted(v["version"] for v in versions["model_versions"]),
            "champion": champion["model_version"]["version"],
            "dag_runs": {run["dag_run_id"]: run["state"] for run in runs["dag_runs"]},
            "task_history": history,
        }


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    s = ScaleStack(tmp_path_factory.mktemp("scale"))
    with s.lifetime(RESULTS, stop_timeout=5):  # SeaweedFS is slow to stop on SIGTERM; the data is thrown away
        yield s


def test_1_up_builds_and_every_service_becomes_healthy(stack: ScaleStack) -> None:
    started = time.monotonic()
    stack.compose("build")
    stack.results["build_s"] = round(time.monotonic() - started, 1)
    stack.started = time.monotonic()  # the cold start: up on built images, fresh volumes
    waited = [*ONE_SHOT, *ENGINES, "mlflow-server", *AIRFLOW]
    stack.compose("up", "-d", "--no-build", "--wait", "--wait-timeout", "300", *waited)
    stack.results["up_to_healthy_s"] = round(time.monotonic() - stack.started, 1)
    stack.compose("up", "-d", "--no-build", "model-server")
    # The monitoring profile on top of the scale file (Prometheus and the Pushgateway; Grafana adds nothing here).
    stack.compose("--profile", "monitoring", "up", "-d", "--no-build", "--wait", "prometheus", "pushgateway")
    rows = stack.containers()
    for row in rows:
        if row["Service"] in ONE_SHOT:
            assert row["State"] == "exited" and row["ExitCode"] == 0, row
        elif row["Service"] != "model-server":
            assert row["Health"] == "healthy", row
    assert len(stack.names("airflow-worker")) == WORKERS
    stack.results["image_sizes_mb"] = {
        image: round(int(stack.run("docker", "image", "inspect", "-f", "{{.Size}}", image).stdout) / 1e6)
        for image in stack.images
    }


def test_1b_unprivileged_loopback_only_and_memory_ceilings(stack: ScaleStack) -> None:
    """Every container but the default stack's root one-shot volume-init (test_stack.py checks that one)."""
    limits = {}
    for row in stack.containers():
        if row["Service"] == "volume-init":
            continue
        info = stack.inspect(row["Name"])
        user = info["Config"]["User"]
        assert user and user.split(":")[0] not in ("0", "root"), f"{row['Name']} runs as {user!r}"
        host = info["HostConfig"]
        assert not host["Privileged"] and not host.get("CapAdd"), row["Name"]
        assert "no-new-privileges:true" in (host.get("SecurityOpt") or []), row["Name"]
        for container_port, bindings in (host.get("PortBindings") or {}).items():
            assert container_port in ("8080/tcp", "5000/tcp", "5001/tcp", "9090/tcp"), (row["Name"], container_port)
            assert all(b["HostIp"] == "127.0.0.1" for b in bindings), f"{row['Name']}: {bindings}"
        assert host["Memory"] > 0, f"{row['Name']} has no memory ceiling"
        if row["Service"] in LONG_RUNNING:
            limits[row["Name"].removeprefix(f"{PROJECT}-")] = host["Memory"] // 2**20
    for service in ENGINES:  # the official images' own users, also for the processes inside
        assert stack.sh(service, "id -u").stdout.strip() != "0", service
    stack.results["memory_limits_mib"] = limits
    stack.results["memory_limits_total_gib"] = round(sum(limits.values()) / 1024, 2)


def test_1c_postgres_holds_two_databases_each_for_its_own_role(stack: ScaleStack) -> None:
    psql = "psql -U postgres -tAc"
    version = stack.sh("postgres", f"{psql} 'show server_version'").stdout.strip()
    assert version.startswith("15."), version
    owners = stack.sh(
        "postgres", "psql -U postgres -tAc \"select datname || '=' || pg_get_userbyid(datdba) from pg_database\""
    )
    assert {"airflow=airflow", "mlflow=mlflow"} <= set(owners.stdout.split()), owners.stdout
    # From another container (inside the postgres container loopback is trusted, as in the official image):
    # MLflow's role opens its own database with its password (PGPASSWORD), not Airflow's; a wrong one is refused.
    probe = textwrap.dedent(
        """
        import psycopg2
        for db, password in (("mlflow", None), ("airflow", None), ("mlflow", "wrong")):
            try:  # password None: libpq takes PGPASSWORD, the service's own
                psycopg2.connect(host="postgres", user="mlflow", dbname=db, password=password).close()
                print(db, "ok")
            except psycopg2.OperationalError as e:
                print(db, "refused:", str(e).strip().splitlines()[0])
        """
    )
    out = stack.compose("exec", "-T", "mlflow-server", "python", "-c", probe).stdout.splitlines()
    assert out[0] == "mlflow ok", out
    assert out[1].startswith("airflow refused:") and "permission denied" in out[1], out
    assert out[2].startswith("mlflow refused:") and "password authentication failed" in out[2], out
    stack.results["postgres_version"] = version


def test_1d_redis_and_the_bucket_refuse_strangers(stack: ScaleStack) -> None:
    info = stack.sh("redis", "redis-cli info server").stdout
    version = next(line.split(":")[1].strip() for line in info.splitlines() if line.startswith("redis_version:"))
    assert version.startswith("7.0."), version
    anonymous = stack.sh("redis", "env -u REDISCLI_AUTH redis-cli ping").stdout
    assert "NOAUTH" in anonymous, anonymous
    stack.results["redis_version"] = version
    # SeaweedFS's S3 API: an unsigned request and a wrong secret are refused (seen from mlflow-server).
    probe = textwrap.dedent(
        """
        import os, sys, urllib.error, urllib.request
        import boto3
        try:
            urllib.request.urlopen("http://seaweedfs:8333/" + sys.argv[1], timeout=5)
            print("anonymous: allowed")
        except urllib.error.HTTPError as e:
            print("anonymous:", e.code)
        s3 = boto3.client("s3", endpoint_url=os.environ["MLFLOW_S3_ENDPOINT_URL"],
                          aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"], aws_secret_access_key="wrong")
        try:
            s3.list_objects_v2(Bucket=sys.argv[1])
            print("wrong secret: allowed")
        except Exception as e:
            print("wrong secret:", type(e).__name__, e)
        """
    )
    out = stack.compose("exec", "-T", "mlflow-server", "python", "-c", probe, stack.cfg["S3_BUCKET"]).stdout
    assert "anonymous: 403" in out and "SignatureDoesNotMatch" in out, out


def test_1e_only_the_tracking_server_holds_the_artifact_keys_and_the_batch_keys_open_one_bucket(
    stack: ScaleStack,
) -> None:
    """Proxied artifacts: only mlflow-server (and the one-shot create-bucket) know the admin's keys; the model-server
    cannot reach SeaweedFS at all. The scheduler and the workers reach it with the batch identity, which SeaweedFS
    lets into batch_predict's bucket and refuses on the artifact bucket."""
    secret = stack.cfg["S3_SECRET_ACCESS_KEY"]
    for service in [*AIRFLOW, "model-server"]:
        for name in stack.names(service):
            env = stack.inspect(name)["Config"]["Env"]
            assert not [e for e in env if e.startswith("AWS_") or secret in e], name
    for service in ("model-server", "airflow-webserver", "airflow-dag-processor"):
        assert stack.sh(service, "getent hosts seaweedfs", check=False).returncode != 0, f"{service} reaches seaweedfs"
    probe = textwrap.dedent(
        """
        import json, os, sys
        import boto3
        key = json.loads(os.environ["AIRFLOW_CONN_BATCH_STORAGE"])
        s3 = boto3.client("s3", endpoint_url="http://seaweedfs:8333", region_name="us-east-1",
                          aws_access_key_id=key["login"], aws_secret_access_key=key["password"])
        for bucket in sys.argv[1:]:
            try:
                s3.list_objects_v2(Bucket=bucket)
                print(bucket, "allowed")
            except Exception as e:
                print(bucket, type(e).__name__, e)
        """
    )
    buckets = [stack.cfg["S3_BATCH_BUCKET"], stack.cfg["S3_BUCKET"]]
    out = stack.compose("exec", "-T", "airflow-worker", "python", "-c", probe, *buckets).stdout
    assert f"{buckets[0]} allowed" in out and "AccessDenied" in out.split(buckets[1], 1)[1], out


def test_2_the_seed_flow_end_to_end(stack: ScaleStack) -> None:
    """Trigger, success, the model-server follows the champion (the cold start ends at that first prediction);
    then the original tutorial's steps: update_run_id.sh, recreate the model-server, the seed's curl."""
    airflow = stack.airflow()
    airflow.wait_for_dag(DAG)
    started = time.monotonic()
    stack.run_dag()
    stack.results["trigger_to_success_s"] = round(time.monotonic() - started, 1)

    def champion_answers() -> requests.Response | None:
        answer = stack.predict()
        return answer if answer.status_code == 200 and answer.headers.get("X-Model-Version") == "1" else None

    answer = wait_for("the model-server to serve the champion", champion_answers, 120, interval=0.5)
    stack.results["cold_start_up_to_first_prediction_s"] = round(time.monotonic() - stack.started, 1)
    assert answer.json() == {"predictions": [0]}

    result = stack.run(str(ROOT / "update_run_id.sh"), check=False)
    assert result.returncode == 0, result.stderr
    run_id = stack.finished_runs()[0]["info"]["run_id"]
    assert read_env_file(stack.env_file)["LATEST_MODEL_RUN_ID"] == run_id
    stack.compose("up", "-d", "--no-build", "--wait", "model-server")
    answer = stack.predict()
    assert answer.json() == {"predictions": [0]}
    assert answer.headers["X-Model-Uri"] == f"runs:/{run_id}/model"


def test_3_tasks_of_several_runs_ran_on_two_workers(stack: ScaleStack) -> None:
    started = time.monotonic()
    stack.run_dag()
    stack.results["trigger_to_success_warm_s"] = round(time.monotonic() - started, 1)
    worker_hosts = {stack.inspect(name)["Config"]["Hostname"] for name in stack.names("airflow-worker")}
    airflow = stack.airflow()
    ran_on = {ti["hostname"] for run in stack.dag_runs for ti in stack.task_instances(run, airflow)}
    assert ran_on <= worker_hosts, f"tasks ran on {ran_on}, the workers are {worker_hosts}"
    assert len(ran_on) == WORKERS, f"the tasks of {len(stack.dag_runs)} runs all ran on {ran_on}"
    stack.results["task_hosts"] = sorted(ran_on)


def test_3b_prometheus_has_what_the_workers_pushed_and_scrapes_the_servers(stack: ScaleStack) -> None:
    """The register task runs on a Celery worker and pushes the gate's decision; the dag-processor runs the DAG's
    callbacks and pushes the run's outcome: both reach the same Pushgateway and Prometheus."""
    promoted = 'mlops_model_promoted{model="iris-classifier"}'
    wait_for("the pushed gate decision", lambda: stack.promql_value(promoted) == 1, 90, 3)
    assert stack.promql_value('mlops_model_test_accuracy{model="iris-classifier"}') >= 0.9
    succeeded = 'mlops_dag_run_succeeded{dag_id="mlops_pipeline"}'
    wait_for("the pushed DAG run", lambda: stack.promql_value(succeeded) == 1, 90, 3)
    assert stack.promql_value('mlops_dag_run_duration_seconds{dag_id="mlops_pipeline"}') > 0
    for job in ("model-server", "mlflow-server", "pushgateway"):
        wait_for(f"{job} scraped", lambda job=job: stack.promql_value(f'up{{job="{job}"}}') == 1, 60, 3)
    # test_2 recreated the model-server just before its last request: the next scrape (15 s) brings that count.
    served = 'sum(model_server_requests_total{endpoint="/invocations",code="200"})'
    wait_for("the model-server's request count", lambda: (stack.promql_value(served) or 0) >= 1, 60, 3)
    # The OpenTelemetry switch as Airflow reads it, where the tasks ran (and those runs succeeded).
    for name in ("airflow-worker", "airflow-scheduler"):
        out = stack.sh(name, "airflow config get-value metrics otel_on").stdout  # with the exporter's log lines
        assert "true" in [line.strip().lower() for line in out.splitlines()], (name, out)


def logged_ids(stack: ScaleStack, prefix: str) -> list[str]:
    """Request IDs in the inference log's table that start with prefix (read as the superuser, in postgres)."""
    query = f"select record->>'request_id' from inference_log where record->>'request_id' like '{prefix}%'"  # noqa: S608 - our own hex
    return stack.sh("postgres", f'psql -U postgres -d inference_log -tAc "{query}"').stdout.split()


def test_3c_the_inference_log_is_a_table_the_server_may_only_write_and_the_workers_only_read(
    stack: ScaleStack,
) -> None:
    """The scale variant's inference log is in PostgreSQL, reachable from any host: the model-server's role adds
    rows but cannot read them, the workers' role reads them but cannot add any. N answered requests are N rows with
    their IDs; a restart (SIGTERM) loses none, a SIGKILL at most the last flush interval."""
    probe = textwrap.dedent(
        """
        import os, sys, psycopg2
        connection = psycopg2.connect(os.environ["INFERENCE_LOG_DB"], password=os.environ["INFERENCE_LOG_DB_PASSWORD"])
        connection.autocommit = True
        for statement in sys.argv[1:]:
            try:
                with connection.cursor() as cursor:
                    cursor.execute(statement)
                print("ok")
            except psycopg2.Error as e:
                print("refused:", str(e).strip().splitlines()[0])
        """
    )
    select = "select record from inference_log limit 1"  # count(*) needs only the writer's SELECT on ts
    insert = "insert into inference_log values (now(), 'probe', '{}'::jsonb)"
    writer = stack.compose("exec", "-T", "model-server", "python", "-c", probe, select, insert).stdout.splitlines()
    assert writer[0].startswith("refused:") and "permission denied" in writer[0], writer
    assert writer[1] == "ok", writer
    reader = stack.compose("exec", "-T", "airflow-worker", "python", "-c", probe, select, insert).stdout.splitlines()
    assert reader[0] == "ok" and reader[1].startswith("refused:") and "permission denied" in reader[1], reader
    stack.sh(
        "postgres", "psql -U postgres -d inference_log -tAc \"delete from inference_log where model_version = 'probe'\""
    )

    run = uuid.uuid4().hex[:8]
    sent = {"flushed": [], "unflushed": [], "restarted": []}
    with requests.Session() as session:
        for kind in sent:
            for i in range(100 if kind != "unflushed" else 50):
                request_id = f"{run}-{kind}-{i}"
                answer = session.post(
                    f"{stack.model_url}/invocations",
                    json=SEED_PAYLOAD,
                    headers={"X-Request-Id": request_id},
                    timeout=10,
                )
                assert answer.status_code == 200 and answer.headers["X-Request-Id"] == request_id
                sent[kind].append(request_id)
            if kind == "flushed":
                wait_for("100 rows in the table", lambda: len(logged_ids(stack, f"{run}-flushed")) == 100, 30)
            elif kind == "unflushed":
                stack.sh("model-server", "kill -KILL -1", check=False)
            else:
                stack.compose("restart", "--timeout", "20", "model-server")
            wait_for("the model-server to answer", lambda: stack.predict().status_code == 200, 90, interval=1)
    logged = logged_ids(stack, run)
    assert len(logged) == len(set(logged)), "a request was recorded twice"
    assert set(sent["flushed"]) | set(sent["restarted"]) <= set(logged), "acknowledged and flushed records lost"
    assert set(logged) <= {i for ids in sent.values() for i in ids}
    stack.results["inference_log_lost_to_sigkill"] = len(set(sent["unflushed"]) - set(logged))


def test_3d_drift_demo_on_celery_workers_reading_the_table(stack: ScaleStack) -> None:
    """make drift-demo on the scale variant: the monitor runs on a worker and reads the log from PostgreSQL; the
    asset-triggered retrain runs there too. The model-server first goes back from the pinned run (test_2) to
    following the champion."""
    env = stack.env_file.read_text()
    stack.env_file.write_text(
        "".join(
            "LATEST_MODEL_RUN_ID=\n" if line.startswith("LATEST_MODEL_RUN_ID=") else line
            for line in env.splitlines(keepends=True)
        )
    )
    stack.compose("up", "-d", "--no-build", "--wait", "model-server")
    airflow = stack.airflow()
    before = {r["dag_run_id"] for r in airflow.runs(DAG)}
    script = [str(ROOT / ".venv" / "bin" / "python"), "-m", "scripts.drift_demo"]
    demo = stack.run(*script, check=False)
    out = demo.stdout + demo.stderr
    assert demo.returncode == 0, out
    checks = [
        line.split("monitor_model: ")[1].split(" (")[0] for line in demo.stdout.splitlines() if "monitor_model:" in line
    ]
    assert checks == ["no drift", "drift"], out
    served = re.search(r"serves iris-classifier version (\d+) \(was (\d+)\)$", demo.stdout.strip())
    assert served and int(served[1]) > int(served[2]), out
    monitor_runs = airflow.runs("monitor_model")
    hosts = {
        ti["hostname"]
        for r in monitor_runs
        for ti in airflow.call("GET", f"/dags/monitor_model/dagRuns/{r['dag_run_id']}/taskInstances")["task_instances"]
    }
    workers = {stack.inspect(name)["Config"]["Hostname"] for name in stack.names("airflow-worker")}
    assert hosts and hosts <= workers, (hosts, workers)
    stack.dag_runs += [r["dag_run_id"] for r in airflow.runs(DAG) if r["dag_run_id"] not in before]


def test_3d2_feedback_goes_to_the_table_and_the_live_check_on_a_worker_joins_it(stack: ScaleStack) -> None:
    """POST /feedback on the scale variant: the labels are rows of the same PostgreSQL table as the predictions,
    and monitor_model's check_live (on a Celery worker, reading the table) joins them."""
    run = uuid.uuid4().hex[:8]
    ids = [f"{run}-fb-{i}" for i in range(20)]
    with requests.Session() as session:
        for request_id in ids:
            answer = session.post(
                f"{stack.model_url}/invocations", json=SEED_PAYLOAD, headers={"X-Request-Id": request_id}, timeout=10
            )
            assert answer.status_code == 200
        sent = session.post(f"{stack.model_url}/feedback", json=[{"request_id": i, "labels": [0]} for i in ids])
    assert sent.status_code == 202 and sent.json()["recorded"] == 20, sent.text
    query = f"select count(*) from inference_log where record->>'request_id' like '{run}-fb-%' and record ? 'labels'"  # noqa: S608 - our own hex
    count = lambda: stack.sh("postgres", f'psql -U postgres -d inference_log -tAc "{query}"').stdout.strip()  # noqa: E731
    wait_for("the 20 labels in the table", lambda: count() == "20", 30)
    airflow = stack.airflow()
    monitor = airflow.trigger("monitor_model")
    assert airflow.wait_for_run("monitor_model", monitor, timeout=300, progress=False) == "success"
    live = airflow.xcom("monitor_model", monitor, "check_live")
    assert isinstance(live, dict) and live["status"] == "compared", live
    assert live["feedback_used"] >= 20 and live["champion_labeled_rows"] >= 20, live


def test_3e_predict_batch_spreads_its_chunks_over_both_workers_and_keeps_its_files_in_the_bucket(
    stack: ScaleStack, tmp_path: Path
) -> None:
    """make predict-batch on the variant: 1,000 rows in 4 chunks (BATCH_CHUNK_ROWS=300) scored on both workers as
    scikit-learn scores them; the input and the output are objects in batch_predict's bucket."""
    import numpy as np
    import pandas as pd
    from sklearn.datasets import load_iris

    x = load_iris().data
    x = np.concatenate([x, np.random.default_rng(5).uniform(x.min(axis=0), x.max(axis=0), (850, 4)).round(2)])
    frame = pd.DataFrame(x, columns=list(FEATURE_NAMES)).assign(id=[f"{i:04d}" for i in range(1000)])
    frame.to_csv(tmp_path / "rows.csv", index=False)
    script = [str(ROOT / ".venv" / "bin" / "python"), "-m", "scripts.predict_batch", str(tmp_path / "rows.csv")]
    done = stack.run(*script, check=False)
    assert done.returncode == 0 and "rows in 1000, scored 1000, rejected 0" in done.stdout, done.stdout + done.stderr
    version = re.search(r"model version (\d+),", done.stdout).group(1)
    # scikit-learn's own predict of that version, loaded as a client on the host loads it (docs/scale-out.md).
    load = (
        f"import json, sys, mlflow, pandas; model = mlflow.sklearn.load_model('models:/iris-classifier/{version}'); "
        "rows = pandas.read_csv(sys.argv[1])[sys.argv[2:]].to_numpy(); print(json.dumps(model.predict(rows).tolist()))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", load, str(tmp_path / "rows.csv"), *FEATURE_NAMES],
        env=stack.host_client_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    out = pd.read_csv(tmp_path / "rows.predictions.csv", dtype={"id": str})
    assert out["id"].tolist() == frame["id"].tolist() and out["prediction"].tolist() == json.loads(loaded.stdout)

    airflow = stack.airflow()
    last = airflow.run_path("batch_predict", airflow.runs("batch_predict")[0]["dag_run_id"])
    scored = [ti for ti in airflow.call("GET", f"{last}/taskInstances")["task_instances"] if ti["task_id"] == "score"]
    assert sorted(ti["map_index"] for ti in scored) == [0, 1, 2, 3]
    hosts = {ti["hostname"] for ti in scored}
    assert hosts == {stack.inspect(name)["Config"]["Hostname"] for name in stack.names("airflow-worker")}, hosts
    listing = textwrap.dedent(
        """
        import json, os, sys
        import boto3
        key = json.loads(os.environ["AIRFLOW_CONN_BATCH_STORAGE"])
        s3 = boto3.client("s3", endpoint_url="http://seaweedfs:8333", region_name="us-east-1",
                          aws_access_key_id=key["login"], aws_secret_access_key=key["password"])
        print(json.dumps([o["Key"] for o in s3.list_objects_v2(Bucket=sys.argv[1]).get("Contents", [])]))
        """
    )
    keys = json.loads(stack.compose("exec", "-T", "airflow-worker", "python", "-c", listing, "batch").stdout)
    assert sorted(keys) == ["input/rows.csv", f"output/rows/v{version}/predictions.csv"], keys


def test_4_the_model_is_objects_in_the_bucket_not_files_on_a_volume(stack: ScaleStack) -> None:
    run = stack.finished_runs()[0]
    model_id = run["outputs"]["model_outputs"][0]["model_id"]
    exp = stack.mlflow("GET", "experiments/get", params={"experiment_id": run["info"]["experiment_id"]})
    assert exp["experiment"]["artifact_location"].startswith("mlflow-artifacts:"), exp
    keys = stack.bucket_keys()
    model_files = {key.rsplit("/", 1)[1] for key in keys if f"/models/{model_id}/artifacts/" in key}
    assert {"MLmodel", "model.skops"} <= model_files, keys
    plots = {key.rsplit("/", 1)[1] for key in keys if f"/{run['info']['run_id']}/artifacts/" in key}
    assert {"confusion_matrix.png", "feature_importance.png"} <= plots, keys
    # The tracking server's volume has no file at all (it would hold only MLflow's login store, which is off).
    assert stack.sh("mlflow-server", "find /mlflow/mlruns -type f").stdout.strip() == ""
    stack.results["bucket_objects"] = len(keys)


def test_5_postgres_and_seaweedfs_restart_and_the_stack_answers_again_by_itself(
    stack: ScaleStack, tmp_path: Path
) -> None:
    before = stack.state()
    assert len(before["dag_runs"]) == len(stack.dag_runs) and set(before["dag_runs"].values()) == {"success"}
    started = time.monotonic()
    stack.compose("restart", "postgres", "seaweedfs")
    stack.results["postgres_seaweedfs_restart_s"] = round(time.monotonic() - started, 1)
    stack.wait_healthy(LONG_RUNNING)  # nobody is restarted by hand: what fell over comes back by itself
    stack.results["restart_to_all_healthy_s"] = round(time.monotonic() - started, 1)
    assert stack.state() == before

    # The champion still loads from the bucket, through the tracking server, as a client on the host loads it.
    load = (
        "import mlflow; model = mlflow.pyfunc.load_model('models:/iris-classifier@champion'); "
        "import numpy; print(model.predict(numpy.array([[5.1, 3.5, 1.4, 0.2]])).tolist())"
    )
    client = stack.host_client_env()
    loaded = subprocess.run(
        [sys.executable, "-c", load], env=client, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert loaded.returncode == 0 and loaded.stdout.strip() == "[0]", loaded.stderr[-2000:]
    assert stack.predict().json() == {"predictions": [0]}


def test_6_a_worker_killed_mid_task_its_task_is_retried_on_the_other_and_the_run_succeeds(stack: ScaleStack) -> None:
    """The container of the worker running `train` is SIGKILLed (docker kill: it stays down, as a lost machine
    would). The scheduler notices the missing heartbeats, the retry goes to the other worker, the run succeeds."""
    airflow = stack.airflow()
    dag_run = airflow.trigger(DAG)
    train = f"/dags/{DAG}/dagRuns/{dag_run}/taskInstances/train"

    def running_on() -> str | None:
        ti = airflow.call("GET", train)
        return ti["hostname"] if ti["state"] == "running" and ti["hostname"] else None

    victim = wait_for("train to run on a worker", running_on, 180, interval=0.2)
    container = next(n for n in stack.names("airflow-worker") if stack.inspect(n)["Config"]["Hostname"] == victim)
    stack.run("docker", "kill", "--signal", "KILL", container)
    killed = time.monotonic()
    try:
        assert airflow.wait_for_run(DAG, dag_run, timeout=600, progress=False) == "success"
        stack.results["worker_kill_to_run_success_s"] = round(time.monotonic() - killed, 1)
        stack.dag_runs.append(dag_run)
        tries = airflow.call("GET", f"{train}/tries")["task_instances"]
        assert [t["hostname"] for t in tries][0] == victim and tries[0]["state"] == "failed", tries
        assert tries[-1]["state"] == "success" and tries[-1]["hostname"] not in ("", victim), tries
        assert stack.inspect(container)["State"]["Status"] == "exited"  # the retry did not wait for it
    finally:
        stack.run("docker", "start", container)
    stack.wait_healthy(["airflow-worker"])


def test_7_memory_after_the_runs_and_no_secret_in_logs_or_images(stack: ScaleStack) -> None:
    stats = stack.run("docker", "stats", "--no-stream", "--format", "{{.Name}}\t{{.MemUsage}}\t{{.MemPerc}}").stdout
    usage = {}
    for name, mem, percent in (line.split("\t") for line in stats.splitlines()):
        if name.startswith(f"{PROJECT}-"):
            usage[name.removeprefix(f"{PROJECT}-")] = mem.split(" / ")[0]
            assert float(percent.rstrip("%")) < 80, f"{name} uses {percent} of its memory limit"
    stack.results["memory_after_dag_runs"] = usage
    secrets = [value for key, value in stack.cfg.items() if key in SECRET_KEYS]
    logs = stack.compose("logs", "--no-color").stdout
    for key in SECRET_KEYS:
        assert stack.cfg[key] not in logs, f"{key} appears in the logs"
    for image in stack.images:
        history = (
            stack.run("docker", "history", "--no-trunc", image).stdout + stack.run("docker", "inspect", image).stdout
        )
        assert not [s for s in secrets if s in history], image


def test_8_backup_and_restore_over_postgres_and_the_bucket_onto_an_empty_machine(stack: ScaleStack) -> None:
    """make scale-backup of the running stack; every volume gone (down -v: both databases, the bucket, the queue);
    make scale-restore on that empty machine: the same MLflow runs, versions and champion, the same DAG runs and
    task history, every object of the buckets, every inference-log row, the same predictions; then a new run.
    (The refusals are test_stack.py's (backup_steps.py) and test_backup_engines.py's.)"""
    rows = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]
    with requests.Session() as session:
        answers = [session.post(f"{stack.model_url}/invocations", json={"inputs": [r]}, timeout=30) for r in rows]
    assert all(a.status_code == 200 for a in answers)
    predictions = [a.json()["predictions"] for a in answers]
    logged = (  # the row count and a digest of every logged record
        "psql -U postgres -d inference_log -tAc "
        "\"select count(*) || ' ' || md5(string_agg(record::text, '|' order by record::text)) from inference_log\""
    )
    wait_for("the requests in the inference log", lambda: stack.sh("postgres", logged).stdout.split()[0] != "0", 30)
    time.sleep(3)  # the model-server's last flush
    before = {**stack.state(), "bucket": sorted(stack.bucket_keys()), "logged": stack.sh("postgres", logged).stdout}
    files = ("--compose-file", "docker-compose.yml", "--compose-file", "docker-compose.scale.yml")
    archive = stack.workdir / "scale.tar.gz"

    def script(*args: str) -> subprocess.CompletedProcess[str]:
        run = stack.run(sys.executable, "-m", "scripts.backup", *files, *args, check=False, timeout=1200)
        print(run.stdout[-3000:], run.stderr[-3000:])
        return run

    started = time.monotonic()
    made = script("backup", "--out", str(archive))
    assert made.returncode == 0, made.stderr
    stack.results["scale_backup_s"] = round(time.monotonic() - started, 1)
    stack.results["scale_archive_mb"] = round(archive.stat().st_size / 2**20, 2)
    with tarfile.open(archive) as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
    assert manifest["variant"] == "scale"
    dumps = {n for n in manifest["files"] if n.startswith("postgres/")}
    assert dumps == {"postgres/airflow.dump", "postgres/mlflow.dump", "postgres/inference_log.dump"}
    objects = {n.split("/", 2)[2] for n in manifest["files"] if n.startswith(f"bucket/{stack.cfg['S3_BUCKET']}/")}
    assert objects == set(before["bucket"]) and objects

    stack.compose("--profile", "flower", "--profile", "monitoring", "down", "--volumes", "--remove-orphans")
    label = f"label=com.docker.compose.project={PROJECT}"
    assert stack.run("docker", "volume", "ls", "-q", "--filter", label).stdout.strip() == ""
    started = time.monotonic()
    restored = script("restore", str(archive))
    assert restored.returncode == 0, restored.stderr
    stack.results["scale_restore_s"] = round(time.monotonic() - started, 1)
    assert stack.sh("postgres", logged).stdout == before["logged"]  # every row, before any new request
    wait_for("the champion served", lambda: stack.predict().status_code == 200, 180)
    assert {**stack.state(), "bucket": sorted(stack.bucket_keys()), "logged": before["logged"]} == before
    with requests.Session() as session:
        again = [session.post(f"{stack.model_url}/invocations", json={"inputs": [r]}, timeout=30) for r in rows]
    assert [a.json()["predictions"] for a in again] == predictions
    stack.run_dag()
