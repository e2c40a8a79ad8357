"""Helpers shared by the benchmark sections: statistics, figures, the machine, processes, polling, timestamps."""

from __future__ import annotations

import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(ROOT / "scripts"))
from demo import http  # noqa: E402  (the project's own stdlib JSON client)

__all__ = ["http"]
VENV_BIN = Path(sys.executable).parent
SEED = {"inputs": [[5.1, 3.5, 1.4, 0.2]]}


class BenchError(RuntimeError):
    """A section could not measure what it should; the message says why (the run goes on with the next one)."""


def log(message: str) -> None:
    """Progress on stdout, with the time since the bench started, so a slow step shows where it is slow."""
    print(f"[{time.monotonic() - STARTED:6.0f} s] {message}", flush=True)


STARTED = time.monotonic()


# --- statistics: every figure is a median of several runs, with min and max
def summary(values: list[float], digits: int = 3) -> dict[str, Any]:
    """Median, min and max of the runs (and the runs themselves), rounded for people."""
    if not values:
        return {"median": None, "min": None, "max": None, "n": 0, "runs": []}
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
        "n": len(values),
        "runs": [round(v, digits) for v in values],
    }


def figure(
    section: str,
    name: str,
    values: list[float],
    unit: str,
    *,
    target: float | None = None,
    better: str = "lower",
    reference: str = "",
    note: str = "",
) -> dict[str, Any]:
    """One row of results.md: the median of `values` against an optional target (met when on `better` side)."""
    row: dict[str, Any] = {"section": section, "name": name, "unit": unit, **summary(values)}
    row.update(target=target, better=better, reference=reference, note=note, met=None)
    if target is not None and row["median"] is not None:
        row["met"] = row["median"] <= target if better == "lower" else row["median"] >= target
    return row


# --- the machine the numbers come from
def machine() -> dict[str, Any]:
    """CPU model, cores, RAM, kernel, engine: printed and stored so numbers are never read without them."""
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in _read("/proc/cpuinfo").splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or platform.machine(),
    )
    mem_kb = next(
        (int(line.split()[1]) for line in _read("/proc/meminfo").splitlines() if line.startswith("MemTotal")), 0
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gib": round(mem_kb / 1024**2, 1),
        "arch": platform.machine(),
        "kernel": platform.release(),
        "os": _os_name(),
        "python": platform.python_version(),
        "docker_engine": _cmd(["docker", "version", "--format", "{{.Server.Version}}"]),
        "compose": _cmd(["docker", "compose", "version", "--short"]),
        "load_average_at_start": list(os.getloadavg()),
    }


def _os_name() -> str:
    for line in _read("/etc/os-release").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip('"')
    return platform.system()


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _cmd(args: list[str]) -> str:
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "unavailable"
    return out.stdout.strip() if out.returncode == 0 else "unavailable"


# --- ports, processes
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(cmd: list[str], log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """A background process in its own session (its whole group is stopped by stop()), output to a file."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as out:
        return subprocess.Popen(
            cmd,
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def stop(proc: subprocess.Popen | None, timeout: float = 30) -> None:
    """Stop the process group the bench started (never anything else), politely first."""
    if proc is None or proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def group_cpu_seconds(pgid: int) -> float:
    """User+system CPU of every live process in a process group (from /proc): what a server spent."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid:  # field 5 of stat: the process group
            total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


def wait_for(what: str, check: Callable[[], Any], timeout: float, interval: float = 0.25) -> Any:
    """Poll `check` until it returns something truthy; its exceptions (nothing listening yet) count as 'not yet'."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = check()
        except (OSError, ValueError):
            result = None
        if result:
            return result
        time.sleep(interval)
    raise BenchError(f"{what} did not happen within {timeout:.0f} s")


def status_ok(url: str) -> bool:
    return http("GET", url)[0] == 200


def predicts(url: str) -> bool:
    """True once the model-server answers the seed's payload with predictions."""
    status, body = http("POST", f"{url}/invocations", SEED)
    return status == 200 and isinstance(body, dict) and "predictions" in body


# --- timestamps: Docker (RFC 3339 with nanoseconds), Airflow's API (ISO 8601 with Z), Python logging
_FRACTION = re.compile(r"(\.\d{6})\d+")


def epoch(stamp: str | None) -> float | None:
    """Seconds since the epoch of an ISO/RFC 3339 timestamp (UTC when it says Z), None for None."""
    if not stamp:
        return None
    stamp = _FRACTION.sub(r"\1", stamp.strip()).replace("Z", "+00:00")
    return datetime.fromisoformat(stamp).timestamp()


def log_epoch(line: str) -> float | None:
    """The timestamp of a Python logging line ('2026-01-01 12:00:00,123 ...', local time), or None."""
    match = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3})", line)
    if not match:
        return None
    return datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S").timestamp() + int(match[2]) / 1000
