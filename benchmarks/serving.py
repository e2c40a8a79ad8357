"""Target 1, serving: single-row requests at 1 and 4 keep-alive connections (wrk) and a 10,000-row batch, against
the served model's in-process predict measured in the same run where the server runs (its image, or this venv)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
from common import (
    BENCH,
    ROOT,
    BenchError,
    Stack,
    batch_rows_per_s,
    detail,
    free_port,
    http,
    log,
    predicts,
    start,
    stop,
    target,
    wait_for,
    wrk,
)

CONNECTIONS = (1, 4)
BATCH_ROWS = 10_000
CEILING_SHARE, P99_MS, P50_SLACK_MS, BATCH_SHARE = 0.8, 25.0, 2.0, 0.5


def measure(url: str, pids: dict[str, list[int]], inprocess: dict, runs: int, seconds: int) -> dict[str, Any]:
    """wrk at each connection count and the batch, `runs` times, interleaved so noise spreads evenly. `pids`: the
    process trees whose CPU is counted per request (the server; in compose also docker-proxy)."""
    wrk(url, 4, 1, pids)  # warm-up: connections, caches, the first request of each worker
    load: dict[str, list[dict]] = {str(c): [] for c in CONNECTIONS}
    batches = []
    for _ in range(runs):
        for connections in CONNECTIONS:
            load[str(connections)].append(wrk(url, connections, seconds, pids))
        batches.append(batch_rows_per_s(url, BATCH_ROWS))
    return {"inprocess": inprocess, "load": load, "batch_rows_s": batches}


def rows(part: str, raw: dict[str, Any], cores: int) -> tuple[list[dict], list[dict], list[str]]:
    """The four targets of one serving setup, the breakdown that explains them, and that explanation in words."""
    ip = raw["inprocess"]
    predict = statistics.median(ip["predict_ms"])
    ceiling = cores * 1000 / predict
    batch_ref = statistics.median(ip["batch_rows_s"])

    def col(connections: int, key: str, scale: float = 1.0) -> list[float]:
        return [r[key] * scale for r in raw["load"][str(connections)]]

    def per(connections: int, key: str, group: str) -> list[float]:
        return [r[key][group] for r in raw["load"][str(connections)]]

    one = f"one in-process predict {predict:.2f} ms ({ip['trees']} trees)"
    targets = [
        target(part, "throughput at 4 connections", col(4, "rps"), "req/s", CEILING_SHARE * ceiling,
               f"ceiling {cores} cores / {predict:.2f} ms = {ceiling:,.0f} req/s; goal {CEILING_SHARE}x", "higher"),
        target(part, "p99 latency at 4 connections", col(4, "p99_us", 1e-3), "ms", P99_MS, one),
        target(part, "p50 latency at 1 connection", col(1, "p50_us", 1e-3), "ms", predict + P50_SLACK_MS,
               f"{one}; goal + {P50_SLACK_MS:g} ms"),
        target(part, "10,000-row batch", raw["batch_rows_s"], "rows/s", BATCH_SHARE * batch_ref,
               f"in-process {batch_ref:,.0f} rows/s; goal {BATCH_SHARE}x", "higher"),
    ]  # fmt: skip
    details = [
        detail(part, "in-process predict, one row (wall)", ip["predict_ms"], "ms"),
        detail(part, "in-process predict, one row (CPU)", ip["predict_cpu_ms"], "ms"),
        detail(part, "in-process predict, 10,000 rows", ip["batch_rows_s"], "rows/s"),
    ]
    groups = list(raw["load"]["4"][0]["cpu_ms"])
    for c in CONNECTIONS:
        details += [
            detail(part, f"{c} conn.: throughput", col(c, "rps"), "req/s"),
            detail(part, f"{c} conn.: p50 latency", col(c, "p50_us", 1e-3), "ms"),
            detail(part, f"{c} conn.: p99 latency", col(c, "p99_us", 1e-3), "ms"),
            *(detail(part, f"{c} conn.: {group} CPU per request", per(c, "cpu_ms", group), "ms") for group in groups),
            detail(part, f"{c} conn.: server, cores busy", per(c, "cores", "server"), "cores"),
            detail(part, f"{c} conn.: server, its busiest process", per(c, "busiest_cores", "server"), "cores"),
            detail(part, f"{c} conn.: wrk (the load client)", col(c, "client_cores"), "cores"),
            detail(part, f"{c} conn.: whole machine, cores busy", col(c, "machine_cores"), "cores"),
            detail(part, f"{c} conn.: failed requests", col(c, "errors"), "requests"),
        ]
    med = statistics.median
    others = med(col(4, "machine_cores")) - sum(med(per(4, "cores", g)) for g in groups) - med(col(4, "client_cores"))
    note = (
        f"At 4 connections a request costs the server {med(per(4, 'cpu_ms', 'server')):.2f} ms of CPU "
        f"(the predict alone {med(ip['predict_cpu_ms']):.2f} ms). The server kept {med(per(4, 'cores', 'server')):.2f} "
        f"of {cores} cores busy, its busiest process {med(per(4, 'busiest_cores', 'server')):.2f}; wrk "
        f"{med(col(4, 'client_cores')):.2f}; everything else on the machine {max(others, 0):.2f} cores."
    )
    return targets, details, [note]


def inprocess_local(model_uri: str, tracking_uri: str, runs: int, seconds: float) -> dict:
    """The reference of local mode: inprocess.py in this venv, in a process of its own."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "GIT_PYTHON_REFRESH": "quiet"}
    cmd = [sys.executable, str(BENCH / "inprocess.py"), model_uri, str(runs), str(seconds)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    if out.returncode != 0:
        raise BenchError(f"in-process predict failed: {out.stderr.strip()[-800:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def docker_proxy_pids(port: int) -> list[int]:
    """The userland proxy behind a published port: on the path of every request to the compose model-server."""
    pids = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["name"] == "docker-proxy" and str(port) in cmdline:
            pids.append(proc.pid)
    return pids


def compose(stack: Stack, runs: int, seconds: int, info: dict) -> dict[str, Any]:
    """The compose model-server through its published 127.0.0.1 port; the reference inside the same image."""
    cid = stack.container("model-server")
    script = (BENCH / "inprocess.py").read_text()
    log(f"serving-compose: in-process predict of {info['model_uri']} inside the model-server's container")
    cmd = ["docker", "exec", "-i", cid, "python", "-", info["model_uri"], str(runs), str(max(1.0, seconds / 2))]
    out = stack.run(*cmd, input=script)
    inprocess = json.loads(out.stdout.strip().splitlines()[-1])
    pids = {
        "server": [stack.init_pid("model-server")],
        "docker-proxy": docker_proxy_pids(stack.ports["MODEL_SERVER_PORT"]),
    }
    log(f"serving-compose: wrk at {CONNECTIONS} connections and {BATCH_ROWS:,} rows, {runs} x {seconds} s")
    return measure(stack.model_url, pids, inprocess, runs, seconds)


def local(tmp: Path, runs: int, seconds: int) -> dict[str, Any]:
    """mlflow/tracking-server.sh and mlflow/model-server.sh as local processes on free loopback ports, one model
    trained by airflow/models/train_model.py; every process is stopped before this returns (also on Ctrl-C)."""
    venv_bin = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{venv_bin}{os.pathsep}{os.environ['PATH']}", "GIT_PYTHON_REFRESH": "quiet"}
    env.update(MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true")
    procs: list[subprocess.Popen] = []

    def alive_and(proc: subprocess.Popen, check: Any) -> Any:  # noqa: ANN401
        if proc.poll() is not None:
            raise BenchError(f"{proc.args[0]} exited with {proc.returncode}; see its log in {tmp}")
        return check()

    try:
        port = free_port()
        tracking_uri = f"http://127.0.0.1:{port}"
        (tmp / "mlruns").mkdir(parents=True, exist_ok=True)
        tracking_env = {
            **env,
            "MLFLOW_DATA_DIR": str(tmp / "mlruns"),
            "MLFLOW_HOST": "127.0.0.1",
            "MLFLOW_PORT": str(port),
        }
        procs.append(start([str(ROOT / "mlflow" / "tracking-server.sh")], tmp / "tracking.log", tracking_env))
        check = lambda: http("GET", f"{tracking_uri}/health")[0] == 200  # noqa: E731
        wait_for("the local tracking server", lambda: alive_and(procs[0], check), 180)
        log("serving-local: tracking server up; training the default model (train_model.py)")
        train = [sys.executable, str(ROOT / "airflow" / "models" / "train_model.py"), "--tracking-uri", tracking_uri]
        out = subprocess.run(train, capture_output=True, text=True, env=env, timeout=600)
        if out.returncode != 0:
            raise BenchError(f"train_model.py failed: {out.stderr.strip()[-800:]}")
        run_id = out.stdout.strip().splitlines()[-1]
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server_env = {**env, "MLFLOW_TRACKING_URI": tracking_uri, "LATEST_MODEL_RUN_ID": run_id}
        server_env.update(MODEL_SERVER_HOST="127.0.0.1", MODEL_SERVER_PORT=str(port), MODEL_SERVER_WORKERS="")
        procs.append(start([str(ROOT / "mlflow" / "model-server.sh")], tmp / "model-server.log", server_env))
        wait_for("the local model-server to predict", lambda: alive_and(procs[1], lambda: predicts(url)), 180)
        log("serving-local: in-process predict in this venv")
        inprocess = inprocess_local(f"runs:/{run_id}/model", tracking_uri, runs, max(1.0, seconds / 2))
        log(f"serving-local: wrk at {CONNECTIONS} connections and {BATCH_ROWS:,} rows, {runs} x {seconds} s")
        return measure(url, {"server": [procs[1].pid]}, inprocess, runs, seconds)
    finally:
        for proc in reversed(procs):
            stop(proc)
