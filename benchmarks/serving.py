"""Section 4: serving. Single-row requests at 1, 4 and 16 connections (wrk, 127.0.0.1 only, bounded runs) and
batches of 1,000 and 10,000 rows, for the model-server (mlflow/model-server.sh as a local process) and a minimal
reference server (benchmarks/ref_server.py), against the same model's in-process predict measured in this run.

The load client is wrk (C, epoll, one thread): its own CPU time is measured and reported for every run, so a
run where the client could have been the bottleneck shows it. Batches are sent one at a time over one keep-alive
connection with http.client; their bodies are encoded before the clock starts.
"""

from __future__ import annotations

import http.client
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import (
    BENCH,
    ROOT,
    VENV_BIN,
    BenchError,
    free_port,
    group_cpu_seconds,
    log,
    predicts,
    start,
    status_ok,
    stop,
    wait_for,
)

CONNECTIONS = (1, 4, 16)
BATCH_ROWS = (1_000, 10_000)
LUA = BENCH / "wrk_post.lua"


@dataclass
class Server:
    """A server process the bench started (its own process group), and where it answers."""

    name: str
    proc: subprocess.Popen
    url: str
    workers: int = 1
    results: dict[str, Any] = field(default_factory=dict)


def wrk_version() -> str | None:
    """wrk's version, or None when wrk is not installed (run.py then installs it)."""
    if shutil.which("wrk") is None:
        return None
    out = subprocess.run(["wrk", "--version"], capture_output=True, text=True)
    return (out.stdout + out.stderr).splitlines()[0].split(" Copyright")[0].strip()


def install_wrk() -> str | None:
    """Debian's wrk, installed by the bench's setup when it is missing (as root, with apt-get)."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return None
    log("serving: installing wrk (apt-get install -y wrk)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], capture_output=True, env=env, timeout=600)
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], capture_output=True, env=env, timeout=600)
    return wrk_version()


def base_env() -> dict[str, str]:
    """The scripts find mlflow and uvicorn on PATH, as in the images."""
    return {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", "GIT_PYTHON_REFRESH": "quiet"}


def start_tracking(tmp: Path) -> tuple[subprocess.Popen, str]:
    """mlflow/tracking-server.sh on a free loopback port with a throwaway store (as tests/conftest.py does)."""
    port = free_port()
    env = {
        **base_env(),
        "MLFLOW_DATA_DIR": str(tmp / "mlruns"),
        "MLFLOW_HOST": "127.0.0.1",
        "MLFLOW_PORT": str(port),
    }
    (tmp / "mlruns").mkdir(parents=True, exist_ok=True)
    proc = start([str(ROOT / "mlflow" / "tracking-server.sh")], tmp / "tracking.log", env)
    url = f"http://127.0.0.1:{port}"
    wait_for("the tracking server", lambda: proc.poll() is None and status_ok(f"{url}/health"), 120)
    return proc, url


def train(tracking_uri: str, tmp: Path) -> str:
    """The DAG's `train` step with the stack's default settings (airflow/models/train_model.py): its run ID."""
    code = "import sys, train_model; train_model.connect(sys.argv[1], 'bench'); print(train_model.train_and_log())"
    cmd = [sys.executable, "-c", code, tracking_uri]
    out = subprocess.run(cmd, capture_output=True, text=True, env=base_env(), timeout=300, cwd=ROOT / "airflow/models")
    if out.returncode != 0:
        raise BenchError(f"training failed: {out.stderr.strip()[-800:]}")
    return out.stdout.strip().splitlines()[-1]


def start_server(name: str, cmd: list[str], env: dict[str, str], tmp: Path, port: int, workers: int) -> Server:
    proc = start(cmd, tmp / f"{name.replace(' ', '_')}.log", env)
    return Server(name, proc, f"http://127.0.0.1:{port}", workers)


def wait_ready(servers: list[Server]) -> list[Server]:
    """Servers start in parallel (each loads the model); wait until every one answers a prediction."""
    for server in servers:
        wait_for(f"{server.name} to predict", lambda s=server: s.proc.poll() is None and predicts(s.url), 180)
    return servers


def default_workers() -> int:
    """model-server.sh's default: one worker per CPU core this process may use, at most 4."""
    return min(len(os.sched_getaffinity(0)), 4)


def model_server(
    tmp: Path, tracking_uri: str, run_id: str, workers: int | None = None, access_log: bool = True
) -> Server:
    """mlflow/model-server.sh serving runs:/RUN_ID/model with its default worker count (or `workers`), or
    (access_log=False) its uvicorn line plus --no-access-log: the one flag a tuning recommendation is measured for."""
    default = workers is None
    workers = default_workers() if workers is None else workers
    port = free_port()
    env = {
        **base_env(),
        "MLFLOW_TRACKING_URI": tracking_uri,
        "LATEST_MODEL_RUN_ID": run_id,
        "MODEL_URI": f"runs:/{run_id}/model",
        "MODEL_SERVER_HOST": "127.0.0.1",
        "MODEL_SERVER_PORT": str(port),
        "MODEL_SERVER_WORKERS": "" if default else str(workers),
    }
    cmd = [str(ROOT / "mlflow" / "model-server.sh")]
    if not access_log:
        cmd = [str(VENV_BIN / "uvicorn"), "serve:create_app", "--factory", "--app-dir", str(ROOT / "mlflow")]
        cmd += ["--host", "127.0.0.1", "--port", str(port), "--workers", str(workers), "--no-access-log"]
    name = "model-server" + ("" if access_log else " --no-access-log") + ("" if default else f" x{workers}")
    return start_server(name, cmd, env, tmp, port, workers)


def reference_server(tmp: Path, tracking_uri: str, run_id: str) -> Server:
    """benchmarks/ref_server.py under the same uvicorn settings as model-server.sh (same worker count)."""
    workers = default_workers()
    port = free_port()
    env = {**base_env(), "MLFLOW_TRACKING_URI": tracking_uri, "MODEL_URI": f"runs:/{run_id}/model"}
    cmd = [str(VENV_BIN / "uvicorn"), "ref_server:create_app", "--factory", "--app-dir", str(BENCH)]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    return start_server("reference (FastAPI)", cmd, env, tmp, port, workers)


# --- load
def wrk(url: str, connections: int, seconds: float, pgid: int | None = None, netns_pid: int | None = None) -> dict:
    """One bounded wrk run of single-row POSTs; adds req/s, the client's CPU share and the server's CPU."""
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s", "-s", str(LUA), url]
    if netns_pid is not None:  # the container's own loopback: no docker-proxy between client and server
        cmd = ["nsenter", "-t", str(netns_pid), "-n", *cmd]
    before_client = resource.getrusage(resource.RUSAGE_CHILDREN)
    before_server = group_cpu_seconds(pgid) if pgid else 0.0
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    after_client = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if out.returncode != 0 or line is None:
        raise BenchError(f"wrk failed: {out.stderr.strip()[-400:] or out.stdout[-400:]}")
    result = json.loads(line.removeprefix("WRKJSON "))
    duration = result["duration_us"] / 1e6
    result["rps"] = result["requests"] / duration
    client_cpu = (after_client.ru_utime + after_client.ru_stime) - (before_client.ru_utime + before_client.ru_stime)
    result["client_cpu_share"] = client_cpu / duration
    if pgid:
        result["server_cpu_ms_per_request"] = (
            1000 * (group_cpu_seconds(pgid) - before_server) / max(1, result["requests"])
        )
    result["errors"] = sum(result[k] for k in ("connect_errors", "read_errors", "write_errors", "status_errors"))
    return result


def load_matrix(servers: list[Server], runs: int, seconds: float) -> None:
    """Every server at every connection count, `runs` times, interleaved so noise spreads evenly."""
    for server in servers:
        wrk(f"{server.url}/invocations", 4, 1.0)  # warm-up: executor threads, caches
    for run in range(runs):
        for connections in CONNECTIONS:
            for server in servers:
                result = wrk(f"{server.url}/invocations", connections, seconds, server.proc.pid)
                server.results.setdefault(f"c{connections}", []).append(result)
        log(f"  serving: run {run + 1}/{runs} done")


# Where a profiled sample's innermost frame lies (py-spy's "(file:line)", stdlib files without a directory),
# for the breakdown of a request's CPU. The first bucket that matches wins.
PROFILE_BUCKETS = (
    ("scikit-learn/joblib per-tree wrapper (re-applies config and every warning filter for each tree)",
     ("sklearn/utils/parallel.py", "sklearn/_config.py", "(warnings.py", "(contextlib.py", "(functools.py", "(re/",
      "joblib/")),
    ("scikit-learn predict (tree traversal, input checks)", ("sklearn/",)),
    ("MLflow pyfunc (schema enforcement)", ("mlflow/",)),
    ("JSON and numpy conversion", ("(json/", "numpy/")),
    ("HTTP (uvicorn, asyncio) and serve.py", ("uvicorn/", "(asyncio/", "httptools", "uvloop", "serve.py")),
)  # fmt: skip


def profile(server: Server, seconds: float, tmp: Path) -> dict[str, Any]:
    """py-spy samples of the server's processes (--subprocesses: every worker) while wrk runs at 4 connections:
    the share of CPU samples per bucket of PROFILE_BUCKETS, by the file of the innermost frame."""
    spy = VENV_BIN / "py-spy"
    if not spy.exists():
        return {"skipped": "py-spy is not installed (uv sync --group dev)"}
    raw = tmp / f"profile-{server.name.replace(' ', '_')}.txt"
    cmd = [str(spy), "record", "--pid", str(server.proc.pid), "--subprocesses", "--nonblocking", "--rate", "250"]
    cmd += ["--duration", str(int(seconds)), "--format", "raw", "--output", str(raw)]
    recorder = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    wrk(f"{server.url}/invocations", 4, seconds)
    _, err = recorder.communicate(timeout=seconds + 60)
    if recorder.returncode != 0 or not raw.exists():
        return {"skipped": f"py-spy failed: {err.strip()[-300:]}"}
    shares: dict[str, int] = {name: 0 for name, _ in PROFILE_BUCKETS}
    shares["other"] = total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        leaf, n = stack.rsplit(";", 1)[-1], int(count)
        total += n
        name = next((b for b, parts in PROFILE_BUCKETS if any(p in leaf for p in parts)), "other")
        shares[name] += n
    return {"samples": total, "share": {k: round(v / total, 3) for k, v in shares.items()} if total else {}}


def variant_points(servers: list[Server], connections: tuple[int, ...], runs: int, seconds: float) -> None:
    for server in servers:
        wrk(f"{server.url}/invocations", 4, 1.0)
    for _ in range(runs):
        for connections_ in connections:
            for server in servers:
                result = wrk(f"{server.url}/invocations", connections_, seconds, server.proc.pid)
                server.results.setdefault(f"c{connections_}", []).append(result)


def batch_body(rows: int) -> bytes:
    """The same rows inprocess.py predicts (Iris repeated), as the JSON the client sends."""
    from sklearn.datasets import load_iris  # the bench's venv has it; imported only here

    x = load_iris().data.tolist()
    return json.dumps({"inputs": [x[i % len(x)] for i in range(rows)]}).encode()


def batch_rate(url: str, body: bytes, rows: int, repeats: int = 3) -> float:
    """Rows per second for one request of `rows` rows (median of `repeats`, one keep-alive connection)."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    headers = {"Content-Type": "application/json"}
    times = []
    try:
        for i in range(repeats + 1):
            started = time.perf_counter()
            conn.request("POST", "/invocations", body, headers)
            response = conn.getresponse()
            payload = response.read()
            if response.status != 200:
                raise BenchError(f"{url} answered {response.status} to {rows} rows: {payload[:200]!r}")
            if i:  # the first one warms up
                times.append(time.perf_counter() - started)
    finally:
        conn.close()
    return rows / statistics.median(times)


def batch_matrix(servers: list[Server], runs: int) -> dict[str, dict[str, list[float]]]:
    """Rows per second of every server for every batch size, `runs` times, interleaved."""
    batches: dict[str, dict[str, list[float]]] = {s.name: {} for s in servers}
    bodies = {rows: batch_body(rows) for rows in BATCH_ROWS}
    for _ in range(runs):
        for rows, body in bodies.items():
            for server in servers:
                batches[server.name].setdefault(str(rows), []).append(batch_rate(server.url, body, rows))
    return batches


def inprocess(tracking_uri: str, run_id: str, runs: int, seconds: float, tmp: Path) -> dict[str, Any]:
    """The ceiling, from benchmarks/inprocess.py in its own process."""
    env = {**base_env(), "MLFLOW_TRACKING_URI": tracking_uri}
    cmd = [sys.executable, str(BENCH / "inprocess.py"), f"runs:/{run_id}/model", str(runs), str(seconds)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    if out.returncode != 0:
        raise BenchError(f"in-process predict failed: {out.stderr.strip()[-800:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def compose_point(model_url: str, netns_pid: int | None, runs: int, seconds: float) -> dict[str, list[dict]]:
    """The compose model-server at 4 connections: through the published port (docker-proxy) and, where nsenter
    works, from inside its network namespace (the container's own 127.0.0.1)."""
    results: dict[str, list[dict]] = {"published_port": []}
    wrk(f"{model_url}/invocations", 4, 1.0)
    paths = [("published_port", model_url, None)]
    if netns_pid and shutil.which("nsenter"):
        results["container_loopback"] = []
        paths.append(("container_loopback", "http://127.0.0.1:5001", netns_pid))
    for _ in range(runs):
        for key, url, pid in paths:
            try:
                results[key].append(wrk(f"{url}/invocations", 4, seconds, netns_pid=pid))
            except BenchError as exc:
                results.pop(key, None)
                log(f"  compose serving via {key} skipped: {exc}")
                paths = [p for p in paths if p[0] != key]
    return results


def measure(runs: int, seconds: float, tmp: Path) -> dict[str, Any]:
    """Everything of section 4 on local processes; every process started here is stopped before returning."""
    procs: list[subprocess.Popen] = []
    try:
        tracking, tracking_uri = start_tracking(tmp)
        procs.append(tracking)
        log("serving: tracking server up; training one model")
        run_id = train(tracking_uri, tmp)
        main = [model_server(tmp, tracking_uri, run_id), reference_server(tmp, tracking_uri, run_id)]
        procs += [s.proc for s in main]
        wait_ready(main)
        log(f"serving: model-server and reference server predict; in-process ceiling ({runs} runs)")
        ceiling = inprocess(tracking_uri, run_id, runs, min(seconds, 3.0), tmp)
        log(f"serving: wrk at {CONNECTIONS} connections, {runs} x {seconds:g} s per point")
        load_matrix(main, runs, seconds)
        batches = batch_matrix(main, runs)
        log("serving: py-spy profile of the model-server at 4 connections")
        profiled = profile(main[0], max(seconds, 5.0), tmp)
        for server in main:  # only the variants run from here on
            stop(server.proc)
        log("serving: variants (--no-access-log; 1 worker)")
        quiet, one = (
            model_server(tmp, tracking_uri, run_id, access_log=False),
            model_server(tmp, tracking_uri, run_id, 1),
        )
        procs += [quiet.proc, one.proc]
        wait_ready([quiet, one])
        variant_points([quiet], (4,), runs, seconds)
        variant_points([one], (1, 4), runs, seconds)
        variants = [quiet, one]
    finally:
        for proc in reversed(procs):
            stop(proc)
    return {
        "run_id": run_id,
        "ceiling": ceiling,
        "servers": {s.name: {"workers": s.workers, "load": s.results} for s in main + variants},
        "batches": batches,
        "profile": profiled,
    }
