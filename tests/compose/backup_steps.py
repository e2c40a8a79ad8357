"""make backup and make restore on the default suite's stack (tests/compose/test_stack.py steps 7d, 7e and 9), after
every earlier step left its state in it: DAG runs of every DAG, retrained and rolled-back versions, appended rows,
logged requests and feedback. A backup taken while a DAG run and a serving load are under way; every bad archive
refused with the volumes unchanged; ./clean_disk.sh --yes (step 8); the restore on the empty machine gives back the
same models, runs, history, data and log, and a new DAG run succeeds.

Plain functions of the suite's ComposeProject: the steps share its stack, so they live in its file's order.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tarfile
import threading
import time
from collections import Counter
from pathlib import Path

import requests
from sklearn.datasets import load_iris

from conftest import ROOT, ComposeProject
from mlops_pipeline.backup.archive import MANIFEST, VARIANTS
from mlops_pipeline.schema import MODEL_NAME
from scripts.stackclient import mlflow_login, registry_champion_version
from scripts.stackenv import wait_for
from test_backup import rewritten

ROWS = load_iris().data.tolist()
SECRET_VALUE = "kept through a restore"
DAGS = ("mlops_pipeline", "monitor_model", "promote_challenger")


def script(stack: ComposeProject, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    run = subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, env={**stack.env, **env}, capture_output=True, text=True, timeout=1200
    )
    print(run.stdout[-3000:], run.stderr[-3000:])
    return run


def predictions(stack: ComposeProject) -> list[int]:
    with requests.Session() as session:
        answers = [session.post(f"{stack.model_url}/invocations", json={"inputs": [row]}, timeout=10) for row in ROWS]
    assert all(a.status_code == 200 for a in answers)
    return [a.json()["predictions"][0] for a in answers]


def runs(stack: ComposeProject) -> dict[str, dict]:
    """Every MLflow run of the training experiment, with its metrics."""
    url = f"{stack.mlflow_url}/api/2.0/mlflow"
    exp = requests.get(f"{url}/experiments/get-by-name?experiment_name=mlops_pipeline", timeout=10).json()
    body = {"experiment_ids": [exp["experiment"]["experiment_id"]], "max_results": 1000}
    found = requests.post(f"{url}/runs/search", json=body, timeout=10)
    return {
        r["info"]["run_id"]: {m["key"]: m["value"] for m in r["data"].get("metrics", [])} for r in found.json()["runs"]
    }


def model_files(stack: ComposeProject, version: str, workdir: Path) -> dict[str, bytes]:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=stack.mlflow_url, registry_uri=stack.mlflow_url)
    local = mlflow.artifacts.download_artifacts(
        client.get_model_version_download_uri(MODEL_NAME, version),
        tracking_uri=stack.mlflow_url,
        dst_path=str(workdir / f"model-{version}-{time.monotonic_ns()}"),
    )
    return {p.name: p.read_bytes() for p in sorted(Path(local).iterdir()) if p.is_file()}


def dag_runs(stack: ComposeProject) -> dict[str, str]:
    airflow = stack.airflow()
    return {f"{dag}/{r['dag_run_id']}": r["state"] for dag in DAGS for r in airflow.runs(dag)}


def in_backup(stack: ComposeProject, program: str, *args: str) -> str:
    """A program's output, run in the backup service's container (every state volume under /state)."""
    run = ("--profile", "backup", "run", "--rm", "--no-deps", "-T", "--entrypoint", program, "backup")
    return stack.compose(*run, *args).stdout


def logged(stack: ComposeProject) -> list[str]:
    """The inference log's request IDs (predictions, shadow predictions and feedback), read from its volume."""
    out = in_backup(stack, "sh", "-c", "cat /state/inference_log/date=*/*.jsonl 2>/dev/null; true")
    return [json.loads(line)["request_id"] for line in out.splitlines() if line.strip()]


def volume_checksums(stack: ComposeProject) -> str:
    return in_backup(stack, "sh", "-c", "cd /state && find . -type f -exec sha256sum {} + | sort")


def champion(stack: ComposeProject) -> str:
    status, found = registry_champion_version(stack.mlflow_url, MODEL_NAME, mlflow_login(stack.cfg))
    assert status == 200, found
    return str(found["version"])


def served(stack: ComposeProject) -> str | None:
    """The model the model-server answers with: the champion's URI, or the run update_run_id.sh pinned."""
    return requests.get(f"{stack.model_url}/model", timeout=10).json().get("model_uri")


def before_backup(stack: ComposeProject, workdir: Path) -> dict:
    """What the restore must give back, read from the running stack; an Airflow variable encrypted with the
    Fernet key among it."""
    stack.airflow().call("POST", "/variables", {"key": "backup_check", "value": SECRET_VALUE})
    state = {"champion": champion(stack), "served": served(stack), "predictions": predictions(stack)}
    state["runs"] = runs(stack)
    state |= {"dag_runs": dag_runs(stack), "logged": logged(stack)}
    state["model_files"] = model_files(stack, state["champion"], workdir)
    assert len(state["runs"]) >= 4 and len(set(state["logged"])) > 400, (len(state["runs"]), len(state["logged"]))
    return state


def backup_under_load(stack: ComposeProject, archive: Path) -> None:
    """make backup while a monitor_model run and a serving load are under way: a complete, private archive."""
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
        running = lambda: airflow.dag_run("monitor_model", monitor)["state"] == "running"  # noqa: E731
        wait_for("the monitor run to start", running, 60)
        started = time.monotonic()
        made = script(stack, "scripts.backup", "backup", "--out", str(archive))
        stack.results["backup_s"] = round(time.monotonic() - started, 1)
    finally:
        stop.set()
        loader.join()
    assert made.returncode == 0, made.stderr
    assert Path(made.stdout.strip().splitlines()[-1]) == archive and archive.stat().st_mode & 0o777 == 0o600
    assert sent[0] > 100, "the load did not run during the backup"
    stack.results["archive_mb"] = round(archive.stat().st_size / 2**20, 2)
    with tarfile.open(archive) as tar:
        manifest = json.loads(tar.extractfile(MANIFEST).read())  # type: ignore[union-attr]
        names = tar.getnames()
    assert set(manifest["parts"]) == set(VARIANTS["default"]) and not manifest["with_secrets"]
    assert {"airflow_db/airflow.db", "mlruns/mlflow.db", "training_data/iris.csv"} <= set(names)
    assert not any(name.endswith(("-wal", "-shm", ".env")) for name in names)
    assert airflow.wait_for_run("monitor_model", monitor, progress=False) in ("success", "failed")


def bad_archives_refused(stack: ComposeProject, archive: Path) -> None:
    """A flipped byte, a truncated file, another variant, another Fernet key and a stack with state: each refused,
    naming the problem, with every volume's checksums unchanged."""
    workdir, good = archive.parent, archive.read_bytes()
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0x01
    bad = {
        "flipped.tar.gz": (bytes(flipped), "corrupted|truncated"),
        "truncated.tar.gz": (good[: len(good) * 2 // 3], "truncated"),
        "scale.tar.gz": (rewritten(good, lambda m: m.update(variant="scale")), "scale variant"),
    }
    stack.compose("--profile", "monitoring", "stop")  # so the volumes hold still
    before = volume_checksums(stack)
    for name, (data, message) in bad.items():
        (workdir / name).write_bytes(data)
        refused = script(stack, "scripts.backup", "restore", str(workdir / name), "--force")
        assert refused.returncode != 0 and re.search(message, refused.stderr), (name, refused.stderr)
        assert "refused; nothing was changed" in refused.stderr, refused.stderr
    other_key = script(stack, "scripts.backup", "restore", str(archive), "--force", FERNET_KEY="x" * 43 + "=")
    assert other_key.returncode != 0 and "another FERNET_KEY" in other_key.stderr, other_key.stderr
    held = script(stack, "scripts.backup", "restore", str(archive))
    assert held.returncode != 0 and "already has state" in held.stderr and "FORCE=1" in held.stderr, held.stderr
    assert volume_checksums(stack) == before


def restore_and_check(stack: ComposeProject, archive: Path, before: dict, project: str) -> None:
    """make restore on a machine clean_disk.sh emptied: the same champion, predictions, runs, model files, DAG runs,
    log, and Airflow variable; both SQLite files intact; a new DAG run succeeds."""
    label = f"label=com.docker.compose.project={project}"
    assert stack.run("docker", "volume", "ls", "-q", "--filter", label).stdout.strip() == ""
    started = time.monotonic()
    restored = script(stack, "scripts.backup", "restore", str(archive))
    stack.results["restore_s"] = round(time.monotonic() - started, 1)
    assert restored.returncode == 0, restored.stderr
    wait_for(f"the model-server to serve {before['served']}", lambda: served(stack) == before["served"], 180, 1)
    assert champion(stack) == before["champion"]
    assert predictions(stack) == before["predictions"]
    assert runs(stack) == before["runs"]
    assert model_files(stack, before["champion"], archive.parent) == before["model_files"]
    after = dag_runs(stack)
    assert {k: v for k, v in after.items() if k in before["dag_runs"]} == before["dag_runs"]
    kept, now = Counter(before["logged"]), Counter(logged(stack))  # every record, shadow and feedback too
    assert all(now[request_id] >= count for request_id, count in kept.items())
    airflow = stack.airflow()
    assert airflow.call("GET", "/variables/backup_check")["value"] == SECRET_VALUE  # the Fernet key still opens it
    check = "import sqlite3, sys; print([sqlite3.connect(p).execute('PRAGMA integrity_check').fetchone()[0] "
    check += "for p in sys.argv[1:]])"
    out = in_backup(stack, "python", "-c", check, "/state/airflow_db/airflow.db", "/state/mlruns/mlflow.db")
    assert out.strip() == "['ok', 'ok']"
    run = airflow.trigger("mlops_pipeline")
    assert airflow.wait_for_run("mlops_pipeline", run, progress=False) == "success"
