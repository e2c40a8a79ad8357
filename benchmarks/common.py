"""What every part of the benchmark shares: figures and verdicts, the machine, processes, the compose stack it
runs under its own name, and the load client."""

from __future__ import annotations

import json
import os
import platform
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

import psutil

from scripts.stackclient import Airflow, AirflowError, http
from scripts.stackenv import read_env_file, urls, wait_for

__all__ = ["Airflow", "AirflowError", "http", "wait_for"]  # the parts take the project's client and wait from here
ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
PROJECT = "mlopsbench"
IMAGES = {"airflow": f"{PROJECT}-airflow:latest", "mlflow": f"{PROJECT}-mlflow:latest"}
DAG_ID = "mlops_pipeline"
SEED = {"inputs": [[5.1, 3.5, 1.4, 0.2]]}
STARTED = time.monotonic()


class BenchError(RuntimeError):
    """A part could not measure what it should; the message says why (the other parts still run)."""


def log(message: str) -> None:
    """Progress with the seconds since the start, so a slow step shows where it is slow."""
    print(f"[{time.monotonic() - STARTED:6.0f} s] {message}", flush=True)


# --- figures: the median of the runs, min and max beside it, and a verdict against the target
def summary(values: list[float]) -> dict[str, Any]:
    values = [v for v in values if v is not None]
    if not values:
        return {"median": None, "min": None, "max": None, "runs": []}
    rounded = [round(v, 4) for v in values]
    return {"median": round(statistics.median(values), 4), "min": min(rounded), "max": max(rounded), "runs": rounded}


def detail(part: str, name: str, values: list[float], unit: str) -> dict[str, Any]:
    """A breakdown row: what explains a target's figure."""
    return {"part": part, "name": name, "unit": unit, **summary(values)}


def target(
    part: str, name: str, values: list[float], unit: str, goal: float, reference: str, better: str = "lower"
) -> dict[str, Any]:
    """A target row: met when the median is on the `better` side of `goal` (computed from this run's reference)."""
    row = detail(part, name, values, unit)
    row.update(goal=round(goal, 4), better=better, reference=reference)
    row["verdict"] = verdict(row)
    return row


def verdict(row: dict[str, Any]) -> str:
    if row["median"] is None:
        return "not measured"
    gap = row["median"] - row["goal"] if row["better"] == "lower" else row["goal"] - row["median"]
    if gap <= 0:
        return "met"
    return f"missed by {fmt(gap, row['unit'])} ({gap / row['goal']:.0%})" if row["goal"] else "missed"


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "x":
        return f"{value:.2f}x"
    digits = 2 if unit == "cores" else 0 if unit == "requests" or abs(value) >= 100 else 1
    return f"{value:,.{digits}f} {unit}"


def machine() -> dict[str, Any]:
    """Printed and stored with the figures: a number means little without the machine it came from."""
    cpu = platform.processor() or platform.machine()
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    docker = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"], capture_output=True, text=True)
    return {
        "cpu": cpu,
        "cores": os.cpu_count() or 1,
        "ram_gib": round(psutil.virtual_memory().total / 1024**3, 1),
        "os": f"{platform.system()} {platform.release()}",
        "docker": docker.stdout.strip() or "unavailable",
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
    }


def epoch(stamp: str | None) -> float | None:
    """Seconds since the epoch of an RFC 3339 stamp (Docker's nanoseconds and Airflow's Z included)."""
    if not stamp:
        return None
    head, dot, frac = stamp.rstrip("Z").partition(".")
    frac = frac.split("+")[0].split("-")[0]
    return datetime.fromisoformat(head + "+00:00").timestamp() + (float(f"0.{frac}") if dot and frac else 0.0)


# --- processes on this machine
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(cmd: list[str], log_path: Path, env: dict[str, str]) -> subprocess.Popen:
    """A background process in its own process group (stop() ends the whole group), output to a file."""
    with open(log_path, "w") as out:
        return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen, first: int = signal.SIGTERM) -> None:
    """End the process group this bench started, politely first (with `first`), then with SIGKILL."""
    for sig, grace in ((first, 20), (signal.SIGKILL, 10)):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=grace)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            continue


def local_env() -> dict[str, str]:
    """The environment of local processes: the venv's tools on PATH, no usage reports."""
    venv_bin = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{venv_bin}{os.pathsep}{os.environ['PATH']}", "GIT_PYTHON_REFRESH": "quiet"}
    return {**env, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}


def alive_and(proc: subprocess.Popen, check: Any) -> Any:  # noqa: ANN401
    """check(), unless the process already exited (then why, at once, instead of a wait's timeout)."""
    if proc.poll() is not None:
        raise BenchError(f"{proc.args[0]} exited with {proc.returncode}; see its log")
    return check()


def model_server_env(tracking_uri: str, run_id: str, port: int, log_dir: Path) -> dict[str, str]:
    """mlflow/model-server.sh's settings for a local process: the run pinned, 127.0.0.1:port, its inference log."""
    env = {"MLFLOW_TRACKING_URI": tracking_uri, "LATEST_MODEL_RUN_ID": run_id, "INFERENCE_LOG_DIR": str(log_dir)}
    return {**env, "MODEL_SERVER_HOST": "127.0.0.1", "MODEL_SERVER_PORT": str(port)}


@contextmanager
def trained_model(tmp: Path) -> Iterator[tuple[str, str]]:
    """mlflow/tracking-server.sh on a free 127.0.0.1 port and one model trained by mlops_pipeline.pipeline: the
    tracking URI and the run ID. The server stops on exit (also on Ctrl-C)."""
    env, port = local_env(), free_port()
    tracking_uri = f"http://127.0.0.1:{port}"
    (tmp / "mlruns").mkdir(parents=True, exist_ok=True)
    tracking_env = {**env, "MLFLOW_DATA_DIR": str(tmp / "mlruns"), "MLFLOW_HOST": "127.0.0.1", "MLFLOW_PORT": str(port)}
    server = start([str(ROOT / "mlflow" / "tracking-server.sh")], tmp / "tracking.log", tracking_env)
    try:
        check = lambda: http("GET", f"{tracking_uri}/health")[0] == 200  # noqa: E731
        wait_for("the local tracking server", lambda: alive_and(server, check), 180)
        log("local: tracking server up; training the default model (mlops_pipeline.pipeline)")
        train = [sys.executable, "-m", "mlops_pipeline.pipeline"]
        env["MLFLOW_TRACKING_URI"] = tracking_uri
        out = subprocess.run(train, capture_output=True, text=True, env=env, timeout=600)
        if out.returncode != 0:
            raise BenchError(f"mlops_pipeline.pipeline failed: {out.stderr.strip()[-800:]}")
        yield tracking_uri, out.stdout.strip().splitlines()[-1]
    finally:
        stop(server)


def cpu_seconds(roots: list[int]) -> dict[int, float]:
    """User + system CPU seconds of each of these processes and all their descendants (psutil)."""
    spent = {}
    for pid in roots:
        try:
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for proc in procs:
            try:
                times = proc.cpu_times()
                spent[proc.pid] = times.user + times.system
            except psutil.NoSuchProcess:
                continue
    return spent


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent on anything (all cores), for "who else used the CPU"."""
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


# --- the compose stack, under its own project name, images, .env and ports
class Stack:
    """The `mlopsbench` compose project: a throwaway .env with fresh secrets and free ports, its own images."""

    def __init__(self, workdir: Path) -> None:
        keys = ("AIRFLOW_PORT", "MLFLOW_PORT", "MODEL_SERVER_PORT", "PROMETHEUS_PORT", "GRAFANA_PORT")
        self.ports = {key: free_port() for key in keys}
        self.env_file = workdir / "bench.env"
        sets = [arg for key, port in self.ports.items() for arg in ("--set", f"{key}={port}")]
        make_env = [sys.executable, "-m", "scripts.make_env", "--env-file", str(self.env_file), *sets]
        subprocess.run(make_env, cwd=ROOT, check=True, capture_output=True)
        self.cfg = read_env_file(self.env_file)
        self.env = {
            **os.environ,
            "COMPOSE_PROJECT_NAME": PROJECT,
            "COMPOSE_ENV_FILES": str(self.env_file),
            "ENV_FILE": str(self.env_file),  # scripts/demo.py
            "AIRFLOW_IMAGE": IMAGES["airflow"],
            "MLFLOW_IMAGE": IMAGES["mlflow"],
            "COMPOSE_BAKE": "false",
            "DOCKER_BUILDKIT": "0",
        }
        self.airflow_url, self.mlflow_url, self.model_url = urls(self.cfg).values()

    def run(self, *args: str, check: bool = True, timeout: float = 600, **kw: Any) -> subprocess.CompletedProcess:
        out = subprocess.run(args, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout, **kw)
        if check and out.returncode != 0:
            raise BenchError(f"`{' '.join(args[:5])}` failed: {(out.stderr or out.stdout).strip()[-800:]}")
        return out

    def compose(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        return self.run("docker", "compose", *args, check=check, timeout=timeout)

    def container(self, service: str) -> str:
        cid = self.compose("ps", "-q", service).stdout.strip()
        if not cid:
            raise BenchError(f"{service} is not running")
        return cid

    def init_pid(self, service: str) -> int:
        """The host PID of the container's init: its process tree is the service's CPU."""
        return int(self.run("docker", "inspect", "-f", "{{.State.Pid}}", self.container(service)).stdout)

    def airflow(self) -> Airflow:
        """The project's Airflow client (scripts/stackclient.py), logged in as the admin of this stack's .env."""
        try:
            return Airflow.login(self.cfg)
        except AirflowError as exc:
            raise BenchError(str(exc)) from None

    def down(self) -> None:
        """Containers, network and volumes gone; killed first, since nothing of it is kept."""
        self.compose("--profile", "monitoring", "kill", check=False)
        self.compose("--profile", "monitoring", "down", "--volumes", "--remove-orphans", "--timeout", "0", check=False)


# --- load: wrk for single rows (keep-alive, C, one thread), http.client for the big batch
EVEN_SPLIT_TRIES = 3  # wrk_best's tries; P(no even split of 4 over 2 workers in 3) is about 0.07


def wrk(
    url: str, connections: int, seconds: int, pids: dict[str, list[int]], path: str = "", body: Path | None = None
) -> dict[str, Any]:
    """One bounded wrk run of the seed payload to /invocations (or a GET of `path`; or a POST of the JSON file `body`
    to `path`). Adds req/s and, to explain it, where the CPU went: per group of process trees in `pids` (the server;
    in compose also docker-proxy) the CPU ms per request, the cores it kept busy and its busiest process's; wrk's
    own share of a core; and the cores the whole machine kept busy."""
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "-s", str(BENCH / "wrk.lua")]
    before_client, before_machine = resource.getrusage(resource.RUSAGE_CHILDREN), machine_busy_seconds()
    before = {name: cpu_seconds(group) for name, group in pids.items()}
    env = {**os.environ, "WRK_GET": "1" if path and body is None else "0", "WRK_BODY_FILE": str(body or "")}
    out = subprocess.run(
        [*cmd, url + (path or "/invocations")], capture_output=True, text=True, timeout=seconds + 60, env=env
    )
    after = {name: cpu_seconds(group) for name, group in pids.items()}
    after_client, after_machine = resource.getrusage(resource.RUSAGE_CHILDREN), machine_busy_seconds()
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if out.returncode != 0 or line is None:
        raise BenchError(f"wrk failed: {(out.stderr or out.stdout).strip()[-400:]}")
    result = json.loads(line.removeprefix("WRKJSON "))
    duration, requests = result["duration_us"] / 1e6, max(1, result["requests"])
    client = sum(getattr(after_client, f) - getattr(before_client, f) for f in ("ru_utime", "ru_stime"))
    errors = sum(result[k] for k in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts"))
    result.update(rps=result["requests"] / duration, client_cores=client / duration, errors=errors)
    result["machine_cores"] = (after_machine - before_machine) / duration
    result["cpu_ms"], result["cores"], result["busiest_cores"] = {}, {}, {}
    for name, now in after.items():
        spent = [cpu - before[name].get(pid, 0.0) for pid, cpu in now.items()]
        result["cpu_ms"][name] = 1000 * sum(spent) / requests
        result["cores"][name] = sum(spent) / duration
        result["busiest_cores"][name] = max(spent, default=0.0) / duration
    return result


def wrk_best(
    url: str, connections: int, seconds: int, pids: dict[str, list[int]], path: str = "", body: Path | None = None
) -> dict[str, Any]:
    """The best of EVEN_SPLIT_TRIES wrk runs, each `seconds` long with new connections. gunicorn's workers split a
    few keep-alive connections by chance (4 over 2 workers, 40 tries here: 2-2 23 times, 4-0 10, 3-1 7), and an
    uneven split halves throughput at worst; the best run is the even split, so configurations compare on the same
    footing. Keeps every try's req/s (`tries_rps`) and counts the failed requests of all of them."""
    runs = [wrk(url, connections, seconds, pids, path, body) for _ in range(EVEN_SPLIT_TRIES)]
    best = max(runs, key=lambda run: run["rps"])
    return {**best, "tries_rps": [run["rps"] for run in runs], "errors": sum(run["errors"] for run in runs)}


def batch_rows_per_s(url: str, rows: int, repeats: int = 3) -> float:
    """Rows per second of one request of `rows` seed rows (median of `repeats` after a warm-up, one connection)."""
    body = json.dumps({"inputs": SEED["inputs"] * rows}).encode()
    host, port = url.removeprefix("http://").split(":")
    conn = HTTPConnection(host, int(port), timeout=120)
    times = []
    try:
        for i in range(repeats + 1):
            started = time.perf_counter()
            conn.request("POST", "/invocations", body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            answer = response.read()
            if response.status != 200:
                raise BenchError(f"{url} answered {response.status} to {rows} rows: {answer[:200]!r}")
            if i:
                times.append(time.perf_counter() - started)
    finally:
        conn.close()
    return rows / statistics.median(times)


def predicts(url: str) -> bool:
    status, body = http("POST", f"{url}/invocations", SEED)
    return status == 200 and isinstance(body, dict) and "predictions" in body
