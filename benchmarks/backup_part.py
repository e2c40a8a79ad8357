"""Backup: what `make backup` and `make restore` take on the compose stack (docs/backup.md), reported, no target.

Measured twice on the bench's stack: right after the demo, and after 100 runs of mlops_pipeline in all (the bench's
own runs, then more, a few at a time). Each time: the backup's duration (the stack running), the archive's size,
and the restore's duration with FORCE=1 over the same stack (the safety archive of the state it replaces, the stop,
the swap, the migrations and the start until healthy included: what a user waits for).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import DAG_ID, ROOT, BenchError, Stack, detail, log, wait_for
from benchmarks.compose_parts import no_other_runs

PART = "backup"
DAG_RUNS = 100
IN_FLIGHT = 4  # queued or running at once: the LocalExecutor runs 2 tasks at a time (AIRFLOW_PARALLELISM)


def round_trip(stack: Stack, tmp: Path, when: str) -> dict[str, Any]:
    archive = tmp / f"backup-{when.replace(' ', '-')}.tar.gz"
    archive.unlink(missing_ok=True)
    script = [sys.executable, "-m", "scripts.backup"]
    started = time.monotonic()
    stack.run(*script, "backup", "--out", str(archive), timeout=1800)
    backup_s = time.monotonic() - started
    started = time.monotonic()
    restored = stack.run(*script, "restore", str(archive), "--force", timeout=1800)
    restore_s = time.monotonic() - started
    for line in restored.stdout.splitlines():  # the safety archive of the replaced state: not the bench's to keep
        if line.startswith(str(ROOT / "backups" / "pre-restore-")):
            Path(line).unlink(missing_ok=True)
    size_mib = archive.stat().st_size / 2**20
    log(f"backup: {when}: backup {backup_s:.1f} s, {size_mib:.1f} MiB, restore {restore_s:.1f} s")
    return {"backup_s": backup_s, "restore_s": restore_s, "archive_mib": size_mib}


def top_up_runs(stack: Stack) -> int:
    """Trigger runs of mlops_pipeline until it has DAG_RUNS, at most IN_FLIGHT at a time, and wait for all:
    returns how many ran. (A burst of 99 triggers at once made SQLite's writer lock fail one with an HTTP 500.)"""
    airflow = stack.airflow()
    no_other_runs(airflow)
    have = airflow.call("GET", f"/dags/{DAG_ID}/dagRuns?limit=1")["total_entries"]
    missing = max(0, DAG_RUNS - have)
    log(f"backup: {have} runs of {DAG_ID} so far; triggering {missing} more, {IN_FLIGHT} at a time")
    for _ in range(missing):
        wait_for("room for another run", lambda: active(stack) < IN_FLIGHT, 900, interval=1)
        airflow.trigger(DAG_ID)  # retried on SQLite's HTTP 500 (scripts/stackclient.py)
    wait_for(f"{missing} DAG runs", lambda: active(stack) == 0, 1800, interval=2)
    failed = airflow.call("GET", f"/dags/{DAG_ID}/dagRuns?state=failed&limit=1")["total_entries"]
    if failed:
        raise BenchError(f"{failed} runs of {DAG_ID} failed")
    return missing


def active(stack: Stack) -> int:
    return stack.airflow().call("GET", "/dags/~/dagRuns?state=queued&state=running&limit=1")["total_entries"]


def measure(stack: Stack, tmp: Path, after_demo: dict[str, Any]) -> tuple[list[dict], list[dict], list[str]]:
    """The rows of this part: `after_demo` was measured right after the demo (run.py), this adds the rest."""
    top_up_runs(stack)
    after_runs = round_trip(stack, tmp, f"after {DAG_RUNS} DAG runs")
    details = [
        detail(PART, f"{key.split('_')[0]} {when}", [figures[key]], unit)
        for when, figures in (("after the demo", after_demo), (f"after {DAG_RUNS} DAG runs", after_runs))
        for key, unit in (("backup_s", "s"), ("archive_mib", "MiB"), ("restore_s", "s"))
    ]
    notes = [
        "restore: with FORCE=1 over the same stack, so it includes the safety archive of the state it replaces, "
        "the stop, the swap, MLflow's migration check and the start until healthy"
    ]
    return [], details, notes
