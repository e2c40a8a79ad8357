"""Section 1 in local mode: `scripts/local.py up` (its own ENV_FILE, LOCAL_STATE_DIR and ports) to the first
prediction, timed like the compose stack, then `local.py down` and the state folder removed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pipeline
from common import ROOT, BenchError, free_port, log_epoch

from stackenv import read_env_file

MILESTONES = {
    "mlflow-server is up": "mlflow_server_answers",
    "airflow-init done": "airflow_init_done",
    "airflow-webserver is up": "airflow_webserver_answers",
    "airflow-scheduler is up": "airflow_scheduler_answers",
}


def cycle(workdir: Path, timeout: float = 420) -> dict[str, Any]:
    """One cold start of local mode from an empty state folder; always stopped and cleaned up after."""
    ports = {"AIRFLOW_PORT": free_port(), "MLFLOW_PORT": free_port(), "MODEL_SERVER_PORT": free_port()}
    env_file = workdir / "local.env"
    env_file.unlink(missing_ok=True)
    sets = [a for k, v in ports.items() for a in ("--set", f"{k}={v}")]
    cmd = [sys.executable, "scripts/make_env.py", "--env-file", str(env_file), *sets]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
    password = read_env_file(env_file)["AIRFLOW_ADMIN_PASSWORD"]
    state = workdir / "local-state"
    shutil.rmtree(state, ignore_errors=True)
    env = {**os.environ, "ENV_FILE": str(env_file), "LOCAL_STATE_DIR": str(state)}
    lines: list[tuple[float, str]] = []
    t0 = time.time()
    up = subprocess.Popen(
        [sys.executable, "scripts/local.py", "up"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    reader = threading.Thread(target=lambda: lines.extend((time.time() - t0, ln) for ln in up.stdout), daemon=True)
    reader.start()
    try:
        marks, airflow, run_id = pipeline.time_to_first_prediction(
            f"http://127.0.0.1:{ports['AIRFLOW_PORT']}",
            f"http://127.0.0.1:{ports['MODEL_SERVER_PORT']}",
            "admin",
            password,
            t0,
            timeout,
        )
        if up.wait(timeout=120) != 0:
            raise BenchError("scripts/local.py up failed: " + "".join(ln for _, ln in lines)[-800:])
        pipeline.wait_until_finished(airflow, run_id)
        detail = {
            "marks_s": {k: round(v, 3) for k, v in marks.items()},
            "services": {key: _first(lines, text) for text, key in MILESTONES.items()},
            "model_server": _model_server_phases(state / "logs" / "model-server.log", t0),
            "dag_run": pipeline.run_breakdown(airflow, run_id),
        }
        pipeline.relative_to(detail["dag_run"], t0)
        return detail
    finally:
        if up.poll() is None:
            up.kill()
        subprocess.run(
            [sys.executable, "scripts/local.py", "down"], cwd=ROOT, env=env, capture_output=True, timeout=180
        )
        shutil.rmtree(state, ignore_errors=True)


def _first(lines: list[tuple[float, str]], text: str) -> float | None:
    return next((round(t, 3) for t, line in lines if text in line), None)


def _model_server_phases(path: Path, t0: float) -> dict[str, float | None]:
    marks: dict[str, float | None] = {"loading": None, "serving": None}
    patterns = {"loading": "model-server: loading", "serving": "now serving"}
    for line in path.read_text(errors="replace").splitlines() if path.exists() else []:
        stamp = log_epoch(line)
        for key, pattern in patterns.items():
            if stamp is not None and marks[key] is None and pattern in line:
                marks[key] = round(stamp - t0, 3)
    load = round(marks["serving"] - marks["loading"], 3) if None not in marks.values() else None
    return {"load_start_s": marks["loading"], "serving_s": marks["serving"], "model_load_s": load}
