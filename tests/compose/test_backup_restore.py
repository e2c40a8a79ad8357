"""make backup and make restore on a real engine, as a user needs them: the demo, appended rows and a retrain,
logged requests; a backup taken while a DAG run and a serving load are under way; every bad archive refused with
the volumes unchanged; ./clean_disk.sh --yes; the restore on the empty machine gives back the same models, runs,
history, data and log, and a new DAG run succeeds.

Its own compose project, images, .env and ports; tests run in file order and share the stack.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest
import requests
from sklearn.datasets import load_iris

from conftest import ROOT, ComposeProject, require_docker_engine
from mlops_pipeline.backup.archive import MANIFEST, VARIANTS
from mlops_pipeline.schema import FEATURE_NAMES, LABEL_COLUMN, MODEL_NAME
from scripts.stackclient import mlflow_login, registry_champion_version, wait_for_model
from scripts.stackenv import wait_for
from test_backup import rewritten

pytestmark = pytest.mark.compose
PROJECT = "mlopsbackup"
RESULTS = ROOT / "tests" / "artifacts" / "compose-backup-results.json"
PYTHON = [sys.executable, "-m"]
ROWS = load_iris().data.tolist()
SECRET_VALUE = "kept through a restore"

require_docker_engine()


class Stack(ComposeProject):
    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir, PROJECT)
        self.workdir = workdir
        self.before: dict = {}

    def script(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        run = subprocess.run(
            [*PYTHON, *args], cwd=ROOT, env={**self.env, **env}, capture_output=True, text=True, timeout=1200
        )
        print(run.stdout[-3000:], run.stderr[-3000:])
        return run

    def predictions(self) -> list[int]:
        with requests.Session() as session:
            answers = [
                session.post(f"{self.model_url}/invocations", json={"inputs": [row]}, timeout=10) for row in ROWS
            ]
        assert all(a.status_code == 200 for a in answers)
        return [a.json()["predictions"][0] for a in answers]

    def runs(self) -> dict[str, dict]:
        """Every MLflow run of the training experiment, with its metrics."""
        url = f"{self.mlflow_url}/api/2.0/mlflow"
        exp = requests.get(f"{url}/experiments/get-by-name?experiment_name=mlops_pipeline", timeout=10).json()
        body = {"experiment_ids": [exp["experiment"]["experiment_id"]]}
        found = requests.post(f"{url}/runs/search", json=body, timeout=10)
        return {
            r["info"]["run_id"]: {m["key"]: m["value"] for m in r["data"].get("metrics", [])}
            for r in found.json()["runs"]
        }

    def model_files(self, version: str) -> dict[str, bytes]:
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=self.mlflow_url, registry_uri=self.mlflow_url)
        local = mlflow.artifacts.download_artifacts(
            client.get_model_version_download_uri(MODEL_NAME, version),
            tracking_uri=self.mlflow_url,
            dst_path=str(self.workdir / f"model-{version}-{time.monotonic_ns()}"),
        )
        return {p.name: p.read_bytes() for p in sorted(Path(local).iterdir()) if p.is_file()}

    def dag_runs(self) -> dict[str, str]:
        airflow = self.airflow()
        return {
            f"{dag}/{r['dag_run_id']}": r["state"]
            for dag in ("mlops_pipeline", "monitor_model")
            for r in airflow.runs(dag)
        }

    def in_backup(self, program: str, *args: str) -> str:
        """A program's output, run in the backup service's container (every state volume under /state)."""
        run = ("--profile", "backup", "run", "--rm", "--no-deps", "-T", "--entrypoint", program, "backup")
        return self.compose(*run, *args).stdout

    def logged(self) -> list[str]:
        """The inference log's request IDs, read from its volume."""
        out = self.in_backup("sh", "-c", "cat /state/inference_log/date=*/*.jsonl 2>/dev/null; true")
        return [json.loads(line)["request_id"] for line in out.splitlines() if line.strip()]

    def volume_checksums(self) -> str:
        return self.in_backup("sh", "-c", "cd /state && find . -type f -exec sha256sum {} + | sort")

    def champion(self) -> str:
        status, champion = registry_champion_version(self.mlflow_url, MODEL_NAME, mlflow_login(self.cfg))
        assert status == 200, champion
        return str(champion["version"])


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    s = Stack(tmp_path_factory.mktemp("backup"))
    with s.lifetime(RESULTS, stop_timeout=20):
        yield s


def test_1_demo_appended_rows_a_retrain_and_logged_requests(stack: Stack) -> None:
    demo = stack.script("scripts.demo", "compose")
    assert demo.returncode == 0, demo.stderr
    rows = stack.workdir / "rows.csv"
    header = ",".join(f'"{h}"' for h in [*FEATURE_NAMES, LABEL_COLUMN])
    rows.write_text(header + "\n6.1,2.8,4.7,1.2,1\n5.0,3.4,1.5,0.2,0\n7.2,3.0,5.8,1.6,2\n")
    appended = stack.script("scripts.append_data", str(rows))
    assert appended.returncode == 0 and "started by the asset event" in appended.stdout, appended.stderr
    wait_for_model(stack.model_url, "2")
    airflow = stack.airflow()
    airflow.call("POST", "/variables", {"key": "backup_check", "value": SECRET_VALUE})  # encrypted with the Fernet key
    stack.before = {
        "champion": stack.champion(),
        "predictions": stack.predictions(),
        "runs": stack.runs(),
        "dag_runs": stack.dag_runs(),
    }
    stack.before["model_files"] = stack.model_files(stack.before["champion"])
    assert stack.before["champion"] == "2" and len(stack.before["runs"]) >= 2  # with the gate's nested runs
    wait_for("the log to hold the 150 requests", lambda: len(stack.logged()) >= 151, 30)  # demo's seed request too
    stack.before["logged"] = stack.logged()


def test_2_a_backup_under_a_dag_run_and_serving_load_is_complete_and_consistent(stack: Stack) -> None:
    airflow = stack.airflow()
    monitor = airflow.trigger("monitor_model")
    stop, sent = threading.Event(), [0]

    def load() -> None:
        with requests.Session() as session:
            while not stop.is_set():
                session.post(f"{stack.model_url}/invocations", json={"inputs": [ROWS[0]]}, timeout=10)
                sent[0] += 1

    loader = threading.Thread(target=load)
    loader.start()
    try:
        wait_for(
            "the monitor run to start", lambda: airflow.dag_run("monitor_model", monitor)["state"] == "running", 60
        )
        started = time.monotonic()
        made = stack.script("scripts.backup", "backup", "--out", str(stack.workdir / "stack.tar.gz"))
        stack.results["backup_s"] = round(time.monotonic() - started, 1)
    finally:
        stop.set()
        loader.join()
    assert made.returncode == 0, made.stderr
    archive = Path(made.stdout.strip().splitlines()[-1])
    assert archive == stack.workdir / "stack.tar.gz" and archive.stat().st_mode & 0o777 == 0o600
    assert sent[0] > 100, "the load did not run during the backup"
    stack.results["archive_mb"] = round(archive.stat().st_size / 2**20, 2)
    with tarfile.open(archive) as tar:
        manifest = json.loads(tar.extractfile(MANIFEST).read())  # type: ignore[union-attr]
        names = tar.getnames()
    assert set(manifest["parts"]) == set(VARIANTS["default"]) and not manifest["with_secrets"]
    assert {"airflow_db/airflow.db", "mlruns/mlflow.db", "training_data/iris.csv"} <= set(names)
    assert not any(name.endswith(("-wal", "-shm", ".env")) for name in names)
    assert airflow.wait_for_run("monitor_model", monitor, progress=False) in ("success", "failed")


def test_3_bad_archives_and_a_stack_with_state_are_refused_and_nothing_changes(stack: Stack) -> None:
    archive = stack.workdir / "stack.tar.gz"
    good = archive.read_bytes()
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0x01
    bad = {
        "flipped.tar.gz": (bytes(flipped), "corrupted|truncated"),
        "truncated.tar.gz": (good[: len(good) * 2 // 3], "truncated"),
        "scale.tar.gz": (rewritten(good, lambda m: m.update(variant="scale")), "scale variant"),
    }
    stack.compose("--profile", "monitoring", "stop")  # so the volumes hold still
    before = stack.volume_checksums()
    for name, (data, message) in bad.items():
        (stack.workdir / name).write_bytes(data)
        refused = stack.script("scripts.backup", "restore", str(stack.workdir / name), "--force")
        assert refused.returncode != 0 and re.search(message, refused.stderr), (name, refused.stderr)
        assert "refused; nothing was changed" in refused.stderr, refused.stderr
    other_key = stack.script("scripts.backup", "restore", str(archive), "--force", FERNET_KEY="x" * 43 + "=")
    assert other_key.returncode != 0 and "another FERNET_KEY" in other_key.stderr, other_key.stderr
    held = stack.script("scripts.backup", "restore", str(archive))
    assert held.returncode != 0 and "already has state" in held.stderr and "FORCE=1" in held.stderr, held.stderr
    assert stack.volume_checksums() == before


def test_4_restore_on_an_empty_machine_gives_everything_back(stack: Stack) -> None:
    # The build cache survives (a second tag keeps the layers), so the restore's build takes seconds, not minutes
    # of downloads: everything else of the project goes (tests/compose/test_stack.py checks clean_disk.sh itself).
    cache = [f"{PROJECT}-cache-{i}:latest" for i in range(2)]
    for image, tag in zip((stack.env["AIRFLOW_IMAGE"], stack.env["MLFLOW_IMAGE"]), cache, strict=True):
        stack.run("docker", "tag", image, tag)
    try:
        wiped = stack.run(str(ROOT / "clean_disk.sh"), "--yes", check=False, timeout=300)
        assert wiped.returncode == 0, wiped.stderr
        restore_and_check(stack)
    finally:
        stack.run("docker", "image", "rm", *cache, check=False)


def restore_and_check(stack: Stack) -> None:
    label = f"label=com.docker.compose.project={PROJECT}"
    assert stack.run("docker", "volume", "ls", "-q", "--filter", label).stdout.strip() == ""
    started = time.monotonic()
    restored = stack.script("scripts.backup", "restore", str(stack.workdir / "stack.tar.gz"))
    stack.results["restore_s"] = round(time.monotonic() - started, 1)
    assert restored.returncode == 0, restored.stderr
    before = stack.before
    wait_for_model(stack.model_url, before["champion"])
    assert stack.champion() == before["champion"]
    assert stack.predictions() == before["predictions"]
    assert stack.runs() == before["runs"]
    assert stack.model_files(before["champion"]) == before["model_files"]
    dag_runs = stack.dag_runs()
    assert {k: v for k, v in dag_runs.items() if k in before["dag_runs"]} == before["dag_runs"]
    logged = stack.logged()
    assert set(before["logged"]) <= set(logged) and len(logged) == len(set(logged))
    airflow = stack.airflow()
    assert airflow.call("GET", "/variables/backup_check")["value"] == SECRET_VALUE  # the Fernet key still opens it
    check = "import sqlite3, sys; print([sqlite3.connect(p).execute('PRAGMA integrity_check').fetchone()[0] "
    check += "for p in sys.argv[1:]])"
    out = stack.in_backup("python", "-c", check, "/state/airflow_db/airflow.db", "/state/mlruns/mlflow.db")
    assert out.strip() == "['ok', 'ok']"
    run = airflow.trigger("mlops_pipeline")
    assert airflow.wait_for_run("mlops_pipeline", run, progress=False) == "success"
