"""The flow both stacks (compose and local mode) are timed on: log in to Airflow, wait for the DAG, trigger it,
wait for the first prediction; then read where the DAG run's time went from Airflow's REST API."""

from __future__ import annotations

import time
import urllib.request
from typing import Any

from common import BenchError, epoch, http, predicts, status_ok, wait_for

from demo import Airflow

DAG_ID = "mlops_pipeline"


def login(airflow_url: str, username: str, password: str, timeout: float) -> Airflow:
    """demo.py's Airflow client, once the API answers (its SystemExit becomes a BenchError)."""
    wait_for("Airflow's API", lambda: status_ok(f"{airflow_url}/api/v2/monitor/health"), timeout)
    deadline = time.monotonic() + 30  # the admin user may be created while the API already answers
    while True:
        try:
            return Airflow(airflow_url, username, password)
        except SystemExit as exc:
            if time.monotonic() > deadline:
                raise BenchError(str(exc)) from None
            time.sleep(0.5)


def dag_known(airflow: Airflow) -> bool:
    return http("GET", f"{airflow.base}/api/v2/dags/{DAG_ID}", headers=airflow.headers)[0] == 200


def run_path(run_id: str) -> str:
    return f"/dags/{DAG_ID}/dagRuns/{urllib.request.quote(run_id)}"


def run_state(airflow: Airflow, run_id: str) -> str:
    return airflow.call("GET", run_path(run_id))["state"]


def time_to_first_prediction(
    airflow_url: str, model_url: str, username: str, password: str, t0: float, timeout: float = 420
) -> tuple[dict[str, float], Airflow, str]:
    """Seconds from t0 (wall clock) to each milestone of a fresh stack's first prediction; also the client and run.

    Polls every 0.25 s; fails fast (not at the timeout) when the DAG run fails."""
    deadline = time.monotonic() + timeout
    marks: dict[str, float] = {}
    airflow = login(airflow_url, username, password, timeout)
    marks["airflow_api_answers"] = time.time() - t0
    wait_for(f"DAG {DAG_ID} known to the API", lambda: dag_known(airflow), deadline - time.monotonic())
    marks["dag_known"] = time.time() - t0
    try:
        run_id = airflow.trigger(DAG_ID)
    except SystemExit as exc:
        raise BenchError(str(exc)) from None
    marks["triggered"] = time.time() - t0
    checked = [time.monotonic()]

    def answered() -> bool:
        if predicts(model_url):
            return True
        if time.monotonic() - checked[0] > 2:
            checked[0] = time.monotonic()
            if run_state(airflow, run_id) == "failed":
                raise BenchError(f"the DAG run failed: {failed_tasks(airflow, run_id)}")
        return False

    wait_for("the first prediction", answered, deadline - time.monotonic())
    marks["first_prediction"] = time.time() - t0
    return marks, airflow, run_id


def trigger_and_wait(airflow: Airflow, timeout: float = 300) -> tuple[str, float]:
    """One DAG run on warm services: (run id, seconds from the trigger call to the API saying success)."""
    started = time.monotonic()
    try:
        run_id = airflow.trigger(DAG_ID)
    except SystemExit as exc:
        raise BenchError(str(exc)) from None
    state = wait_for(
        "the DAG run to finish",
        lambda: (s := run_state(airflow, run_id)) in ("success", "failed") and s,
        timeout,
        interval=0.2,
    )
    if state != "success":
        raise BenchError(f"the DAG run failed: {failed_tasks(airflow, run_id)}")
    return run_id, time.monotonic() - started


def wait_until_finished(airflow: Airflow, run_id: str, timeout: float = 120) -> str:
    return wait_for(
        "the DAG run to finish", lambda: (s := run_state(airflow, run_id)) in ("success", "failed") and s, timeout
    )


def failed_tasks(airflow: Airflow, run_id: str) -> str:
    tis = airflow.call("GET", f"{run_path(run_id)}/taskInstances").get("task_instances", [])
    bad = [f"{t['task_id']} ({t['state']})" for t in tis if t.get("state") in ("failed", "upstream_failed")]
    return ", ".join(bad) or "no failed task reported"


def run_breakdown(airflow: Airflow, run_id: str) -> dict[str, Any]:
    """Where a DAG run's time went, from the API's own timestamps (independent of how often we poll).

    Per task: the gap since its upstream task ended (scheduling, queueing, process start: Airflow's overhead)
    and its duration (the task's work, including its own imports). The DAG is a chain, so gaps add up."""
    run = airflow.call("GET", run_path(run_id))
    tis = airflow.call("GET", f"{run_path(run_id)}/taskInstances").get("task_instances", [])
    tis = sorted((t for t in tis if t.get("start_date")), key=lambda t: epoch(t["start_date"]) or 0)
    queued, started, ended = epoch(run.get("queued_at")), epoch(run.get("start_date")), epoch(run.get("end_date"))
    tasks, previous_end = [], started
    for ti in tis:
        begin, end = epoch(ti["start_date"]), epoch(ti.get("end_date"))
        scheduled, queued_when = epoch(ti.get("scheduled_when")), epoch(ti.get("queued_when"))
        tasks.append(
            {
                "task": ti["task_id"],
                "state": ti.get("state"),
                "try": ti.get("try_number"),
                "gap_s": _diff(begin, previous_end),
                "to_scheduled_s": _diff(scheduled, previous_end),
                "scheduled_to_queued_s": _diff(queued_when, scheduled),
                "queued_to_running_s": _diff(begin, queued_when),
                "duration_s": _diff(end, begin),
                "start_s": _diff(begin, queued),
                "end_s": _diff(end, queued),
                **task_log_profile(airflow, run_id, ti, begin),
            }
        )
        previous_end = end
    work = sum(t["duration_s"] or 0 for t in tasks)
    total = _diff(ended, queued)
    return {
        "state": run.get("state"),
        "total_s": total,
        "queued_to_running_s": _diff(started, queued),
        "last_task_to_success_s": _diff(ended, previous_end),
        "work_s": round(work, 3),
        "overhead_s": round(total - work, 3) if total is not None else None,
        "tasks": tasks,
        "queued_at": queued,
        "dag_parsed_at": epoch((run.get("dag_versions") or [{}])[0].get("created_at")),
    }


def task_log_profile(airflow: Airflow, run_id: str, ti: dict, begin: float | None) -> dict[str, Any]:
    """From the task's own log: how long Airflow's pre-execute step took (DAG file parse in the task process),
    and how many Python warnings the task logged over how many seconds (each one is a log event shipped to the
    supervisor: a storm of them is time the task spends on neither Airflow's work nor its own)."""
    path = f"{run_path(run_id)}/taskInstances/{ti['task_id']}/logs/{ti.get('try_number') or 1}"
    status, body = http(
        "GET", f"{airflow.base}/api/v2{path}", headers={**airflow.headers, "Accept": "application/json"}
    )
    events = [
        e for e in (body.get("content", []) if status == 200 and isinstance(body, dict) else []) if "timestamp" in e
    ]
    stamps = [epoch(e["timestamp"]) or 0.0 for e in events]
    warned = [t for t, e in zip(stamps, events, strict=True) if e.get("logger") == "py.warnings"]
    pre = next((t for t, e in zip(stamps, events, strict=True) if e.get("event") == "::endgroup::"), None)
    return {
        "log_events": len(events),
        "warnings": len(warned),
        "warnings_span_s": round(max(warned) - min(warned), 3) if warned else 0.0,
        "pre_execute_s": _diff(pre, begin),
    }


def relative_to(breakdown: dict[str, Any], t0: float) -> None:
    """Replace a run breakdown's epochs by seconds after t0 (when the stack's start began)."""
    for key, name in (("queued_at", "queued_at_s"), ("dag_parsed_at", "dag_parsed_s")):
        value = breakdown.pop(key, None)
        breakdown[name] = round(value - t0, 3) if value is not None else None


def _diff(a: float | None, b: float | None) -> float | None:
    return round(a - b, 3) if a is not None and b is not None else None
