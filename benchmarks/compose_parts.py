"""Targets 2-5 on the compose stack: cold start (`make demo` on fresh volumes) and where its time goes, memory
idle after a DAG run and image sizes, DAG runs against the same pipeline as one script, and the scheduler killed
during a run; 6, the drift monitor's duration over 100,000 logged rows. Everything runs under the `mlopsbench`
project (common.Stack)."""

from __future__ import annotations

import http.client
import json
import random
import re
import statistics
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil

from benchmarks.common import (
    DAG_ID,
    IMAGES,
    PROJECT,
    ROOT,
    Airflow,
    BenchError,
    Stack,
    detail,
    epoch,
    log,
    target,
    wait_for,
)
from mlops_pipeline.schema import MODEL_NAME
from scripts.stackclient import mlflow_login, registry_champion, wait_for_model
from scripts.stackenv import COMPOSE_CORE

COLD_START_S, DAG_S, RATIO, MEMORY_MIB, RECOVERY_S = 45.0, 8.0, 1.0, 1.6 * 1024, 90.0
# The MLflow image carries ONNX Runtime for the compiled predictions (serving/predictors.py). The Airflow image's
# target dates from before the drift monitor: Evidently and plotly add about 180 MB (docs/drift.md), a known miss.
IMAGE_MB = {"airflow": 900.0, "mlflow": 950.0}
UNITS = {"B": 1, "KIB": 1024, "MIB": 1024**2, "GIB": 1024**3, "KB": 1e3, "MB": 1e6, "GB": 1e9}


def run_path(run_id: str) -> str:
    return f"/dags/{DAG_ID}/dagRuns/{urllib.request.quote(run_id)}"


def champion_served(stack: Stack) -> dict:
    """Wait until every model-server worker serves the registry's champion, so no model load runs beside a
    measurement (the server polls every MODEL_POLL_SECONDS). Returns its /model answer."""
    name = stack.cfg.get("REGISTERED_MODEL_NAME") or MODEL_NAME
    status, version = registry_champion(stack.mlflow_url, name, mlflow_login(stack.cfg))
    return wait_for_model(stack.model_url, version if status == 200 else "", timeout=120)


def finished(airflow: Airflow, run_id: str) -> str | bool:
    state = airflow.call("GET", run_path(run_id))["state"]
    return state in ("success", "failed") and state


# --- 3. cold start, and 4. memory idle after its DAG run
def cold_start(stack: Stack, tmp: Path) -> dict[str, Any]:
    """`scripts/demo.py compose` (what `make demo` runs) on fresh volumes and built images, to the prediction it
    prints; where the time went from `docker events`, the REST API and the model-server's log. Then the stack's
    memory, idle after that DAG run. The stack keeps running."""
    stack.down()
    t0 = time.time()
    label = f"label=com.docker.compose.project={PROJECT}"
    events_cmd = ["docker", "events", "--since", f"{t0:.3f}", "--format", "{{json .}}", "--filter", label]
    with open(tmp / "events.jsonl", "w") as out:
        events = subprocess.Popen(events_cmd, stdout=out)
    demo = subprocess.Popen(
        [sys.executable, "-m", "scripts.demo", "compose"],
        cwd=ROOT,
        env=stack.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines = [(time.time() - t0, line.rstrip()) for line in demo.stdout]
        if demo.wait() != 0:
            raise BenchError("make demo failed:\n" + "\n".join(line for _, line in lines[-15:]))
    finally:
        for proc in (demo, events):
            proc.terminate()
            proc.wait(timeout=30)
    first = next((t for t, line in lines if line.startswith('{"predictions"')), None)
    if first is None:
        raise BenchError("make demo printed no prediction")
    airflow = stack.airflow()
    run = airflow.call("GET", f"/dags/{DAG_ID}/dagRuns")["dag_runs"][0]
    tis = airflow.call("GET", f"{run_path(run['dag_run_id'])}/taskInstances")["task_instances"]
    steps = service_steps(tmp / "events.jsonl", t0)
    parsed = epoch((run.get("dag_versions") or [{}])[0].get("created_at"))
    steps.append(("DAG parsed (first version stored)", parsed - t0, parsed - t0) if parsed else None)
    steps.append(("DAG run: triggered to running", epoch(run["queued_at"]) - t0, epoch(run["start_date"]) - t0))
    last = epoch(run["start_date"])
    for ti in sorted(tis, key=lambda ti: epoch(ti["start_date"]) or 0):
        begin, end = epoch(ti["start_date"]), epoch(ti["end_date"])
        steps.append((f"task {ti['task_id']} (after {begin - last:.1f} s of scheduling)", begin - t0, end - t0))
        last = end
    steps.append(("DAG run: last task to success", last - t0, epoch(run["end_date"]) - t0))
    steps.append(model_load(stack, t0))
    steps.append(("first prediction (make demo prints it)", first, first))
    steps = sorted((s for s in steps if s is not None), key=lambda s: (s[1], s[2]))
    core = [end for name, _, end in steps if name.split(":")[0] in COMPOSE_CORE and name.endswith("healthy")]
    return {
        "first_prediction_s": round(first, 2),
        "core_healthy_s": round(max(core), 2) if len(core) == len(COMPOSE_CORE) else None,
        "dag_run_s": round(epoch(run["end_date"]) - epoch(run["queued_at"]), 2),
        "steps": steps,
        "memory_mib": idle_memory(stack),
    }


def service_steps(path: Path, t0: float) -> list[tuple[str, float, float]]:
    """Per service, seconds after the start to create/start/healthy/exit (the first of each), from docker events."""
    marks: dict[str, dict[str, float]] = {}
    for line in path.read_text().splitlines():
        event = json.loads(line)
        service = event.get("Actor", {}).get("Attributes", {}).get("com.docker.compose.service")
        action = (event.get("Action") or event.get("status") or "").replace("health_status: ", "")
        if event.get("Type") == "container" and service and action in ("create", "start", "healthy", "die"):
            marks.setdefault(service, {}).setdefault(action, event["timeNano"] / 1e9 - t0)
    created = min((m["create"] for m in marks.values() if "create" in m), default=0.0)
    steps = [("compose: image build check, create containers", 0.0, created)]
    for service, m in sorted(marks.items(), key=lambda kv: kv[1].get("start", 1e9)):
        end_key = "healthy" if "healthy" in m else "die" if "die" in m else None
        if "start" in m and end_key:
            steps.append(
                (f"{service}: start to {'healthy' if end_key == 'healthy' else 'exit'}", m["start"], m[end_key])
            )
    return steps


def model_load(stack: Stack, t0: float) -> tuple[str, float, float] | None:
    """The model-server's first 'loading' to 'now serving' log lines (its own words, Docker's timestamps)."""
    out = stack.compose("logs", "--timestamps", "--no-log-prefix", "--no-color", "model-server", check=False).stdout
    marks: dict[str, float] = {}
    for line in out.splitlines():
        stamp, _, text = line.partition(" ")
        for key in ("loading", "now serving"):
            if key in text and key not in marks:
                marks[key] = epoch(stamp) - t0
    if len(marks) < 2:
        return None
    return ("model-server: load the champion", marks["loading"], marks["now serving"])


def idle_memory(stack: Stack) -> dict[str, float]:
    """MiB per running container (`docker stats --no-stream`), the smaller of two samples: a parse or task
    process forked just then is not idle memory."""
    cids = stack.compose("ps", "-q").stdout.split()
    samples = []
    for _ in range(2):
        out = stack.run("docker", "stats", "--no-stream", "--format", "{{.Name}}\t{{.MemUsage}}", *cids).stdout
        sample = {}
        for line in out.splitlines():
            name, usage = line.split("\t")
            number, unit = re.match(r"([\d.]+)\s*([KMG]?i?B)", usage).groups()
            sample[re.sub(rf"^{PROJECT}-|-\d+$", "", name)] = float(number) * UNITS[unit.upper()] / 1024**2
        samples.append(sample)
    return {name: round(min(s.get(name, v) for s in samples), 1) for name, v in samples[0].items()}


def cold_start_rows(starts: list[dict]) -> tuple[list[dict], list[dict], list[str]]:
    part = "cold-start"
    steps: dict[str, list[tuple[float, float]]] = {}
    for run in starts:
        for name, begin, end in run["steps"]:
            steps.setdefault(name.split(" (after")[0], []).append((begin, end))
    details = []
    for name, spans in steps.items():
        row = detail(part, name, [end - begin for begin, end in spans], "s")
        row["at"] = detail(part, name, [begin for begin, _ in spans], "s")["median"]
        details.append(row)
    firsts = [s["first_prediction_s"] for s in starts]
    core = statistics.median(s["core_healthy_s"] or 0 for s in starts)
    dag = statistics.median(s["dag_run_s"] for s in starts)
    reference = f"`up --wait` done (core healthy) at {core:.1f} s; the DAG run takes {dag:.1f} s"
    return [target(part, "make demo to the first prediction", firsts, "s", COLD_START_S, reference)], details, []


def memory_rows(starts: list[dict], images: dict[str, dict]) -> tuple[list[dict], list[dict], list[str]]:
    part = "memory"
    services = sorted({s for run in starts for s in run["memory_mib"]})
    totals = [sum(run["memory_mib"].values()) for run in starts]
    per = {s: [run["memory_mib"].get(s, 0.0) for run in starts] for s in services}
    largest = sorted(services, key=lambda s: -statistics.median(per[s]))[:2]
    reference = ", ".join(f"{s} {statistics.median(per[s]):,.0f} MiB" for s in largest)
    targets = [target(part, "whole stack idle after a DAG run", totals, "MiB", MEMORY_MIB, reference)]
    for name, image in images.items():
        targets.append(target(part, f"{name} image", [image["mb"]], "MB", IMAGE_MB[name], image["reference"]))
    details = [detail(part, f"{s} (idle, after the DAG run)", per[s], "MiB") for s in services]
    notes = [f"{name} image, largest packages (MiB): {image['largest']}" for name, image in images.items()]
    return targets, details, notes


def image_sizes(stack: Stack) -> dict[str, dict]:
    """Each image's size against its base image's, and its five largest Python packages (where the size goes)."""
    sizes = {}
    for name, image in IMAGES.items():
        dockerfile = (ROOT / name / "Dockerfile").read_text()
        base = re.findall(r"^FROM\s+(\S+)", dockerfile, re.MULTILINE)[-1]
        inspect = stack.run("docker", "image", "inspect", "-f", "{{.Size}}", image, base, check=False).stdout.split()
        du = "du -sm /opt/venv/lib/python3.11/site-packages/* | sort -rn | head -5"
        out = stack.run("docker", "run", "--rm", "--network", "none", "--entrypoint", "sh", image, "-c", du).stdout
        largest = ", ".join(f"{Path(p).name} {mb}" for mb, p in (ln.split("\t") for ln in out.splitlines()))
        base_mb = f"{int(inspect[1]) / 1e6:,.0f} MB" if len(inspect) > 1 else "?"
        sizes[name] = {"mb": int(inspect[0]) / 1e6, "reference": f"base {base} {base_mb}", "largest": largest}
    return sizes


# --- 2. training: DAG runs on warm services against the same pipeline as one process
def no_other_runs(airflow: Airflow, timeout: float = 900) -> None:
    """Wait until no DAG run is queued or running. The stack schedules monitor_model hourly, and its check of the
    serving parts' logged requests takes minutes of CPU: a timed run must not share the machine with it (the run of
    12:48 lost its DAG-under-load figures to the 13:00 check)."""
    started = time.monotonic()

    def none() -> bool:
        return airflow.call("GET", "/dags/~/dagRuns?state=queued&state=running&limit=1")["total_entries"] == 0

    wait_for("the stack's other DAG runs to finish", none, timeout, interval=1)
    if time.monotonic() - started > 2:
        log(f"  waited {time.monotonic() - started:.0f} s for a DAG run the bench did not start (a scheduled one)")


def dag_run(airflow: Airflow) -> tuple[str, float]:
    """Trigger and wait: (run id, seconds from the trigger call until the API says success)."""
    no_other_runs(airflow)
    started = time.monotonic()
    run_id = airflow.trigger(DAG_ID)  # an AirflowError is reported as the part's failure
    state = wait_for("the DAG run", lambda: finished(airflow, run_id), 600, interval=0.2)
    if state != "success":
        raise BenchError(f"DAG run {run_id} {state}")
    return run_id, time.monotonic() - started


def run_breakdown(airflow: Airflow, run_id: str) -> dict[str, float]:
    """Where a run's time went, from the API's own timestamps: per task the wait to be queued (scheduling), queued
    to running (the executor starting the task process) and the run itself (the task's imports included)."""
    run = airflow.call("GET", run_path(run_id))
    tis = airflow.call("GET", f"{run_path(run_id)}/taskInstances")["task_instances"]
    steps = {"run: queued to running": epoch(run["start_date"]) - epoch(run["queued_at"])}
    last = epoch(run["start_date"])
    for ti in sorted(tis, key=lambda ti: epoch(ti["start_date"]) or 0):
        begin, end, queued = epoch(ti["start_date"]), epoch(ti["end_date"]), epoch(ti.get("queued_when")) or last
        steps[f"{ti['task_id']}: scheduling (previous end to queued)"] = queued - last
        steps[f"{ti['task_id']}: queued to running"] = begin - queued
        steps[f"{ti['task_id']}: runs"] = end - begin
        last = end
    steps["run: last task to success"] = epoch(run["end_date"]) - last
    return steps


def training(stack: Stack, runs: int) -> tuple[list[dict], list[dict], list[str]]:
    """DAG runs and `python -m mlops_pipeline.pipeline --register` in the scheduler's container (same image, same
    tracking server), interleaved; each starts once the model-server has loaded the previous champion."""
    part = "training"
    airflow = stack.airflow()
    scheduler = stack.container("airflow-scheduler")
    dag_s, script_s, breakdowns = [], [], []
    for i in range(runs):
        champion_served(stack)
        run_id, seconds = dag_run(airflow)
        dag_s.append(seconds)
        breakdowns.append(run_breakdown(airflow, run_id))
        champion_served(stack)
        started = time.monotonic()
        stack.run("docker", "exec", scheduler, "python", "-m", "mlops_pipeline.pipeline", "--register")
        script_s.append(time.monotonic() - started)
        log(f"training: run {i + 1}/{runs}: DAG {dag_s[-1]:.1f} s, script {script_s[-1]:.1f} s")
    script = f"fresh script {statistics.median(script_s):.1f} s ({min(script_s):.1f}-{max(script_s):.1f})"
    targets = [
        target(part, "DAG run / script run", [d / s for d, s in zip(dag_s, script_s, strict=True)], "x", RATIO, script),
        target(part, "DAG run, trigger to success", dag_s, "s", DAG_S, script),
    ]
    work = [sum(v for k, v in b.items() if k.endswith(": runs")) for b in breakdowns]
    details = [
        detail(part, "DAG run, trigger to success (client, polls every 0.2 s)", dag_s, "s"),
        detail(part, "script: python -m mlops_pipeline.pipeline --register (docker exec)", script_s, "s"),
        detail(part, "DAG: sum of task runs", work, "s"),
        detail(
            part,
            "DAG: the rest (scheduling, queueing, polling)",
            [d - w for d, w in zip(dag_s, work, strict=True)],
            "s",
        ),
    ]
    details += [detail(part, key, [b.get(key) for b in breakdowns], "s") for key in breakdowns[0]]
    return targets, details, []


# --- 5. recovery: the scheduler process killed during a run
def kill_scheduler(stack: Stack) -> None:
    """SIGKILL the scheduler's main process (as the OOM killer would). Not `docker kill`: Docker counts that as
    a manual stop and the restart policy would not act."""
    init = psutil.Process(stack.init_pid("airflow-scheduler"))
    main = [p for p in init.children() if "scheduler" in " ".join(p.cmdline())]
    if not main:
        raise BenchError("no scheduler process in the airflow-scheduler container")
    main[0].kill()


def scheduler_state(stack: Stack, cid: str) -> tuple[float | None, str]:
    """When the scheduler's container last started, and its health (the container keeps its id on restarts)."""
    out = stack.run("docker", "inspect", "-f", "{{.State.StartedAt}} {{.State.Health.Status}}", cid)
    started, _, health = out.stdout.strip().partition(" ")
    return epoch(started), health


def recovery_run(stack: Stack, airflow: Airflow, cid: str) -> dict[str, Any]:
    """One run: trigger, wait for `train` to run, kill the scheduler, wait for the run to end. Seconds after the
    kill of: the container's restart, its health, the run's end; and what happened to each retried task."""
    champion_served(stack)
    run_id = airflow.trigger(DAG_ID)
    tis = f"{run_path(run_id)}/taskInstances"

    def train_running() -> bool:
        return any(
            t["task_id"] == "train" and t["state"] == "running" for t in airflow.call("GET", tis)["task_instances"]
        )

    wait_for("task train to run", train_running, 180, interval=0.2)
    killed = time.time()
    kill_scheduler(stack)
    marks: dict[str, Any] = {}

    def done() -> str | bool:
        started, health = scheduler_state(stack, cid)
        if started and started > killed:
            marks.setdefault("restarted", started - killed)
            if health == "healthy":
                marks.setdefault("healthy", time.time() - killed)
        return finished(airflow, run_id)

    marks["state"] = wait_for("the run to finish after the kill", done, 900, interval=1.0)
    marks["seconds"] = time.time() - killed
    marks["retries"] = []
    for ti in airflow.call("GET", tis)["task_instances"]:
        if (ti.get("try_number") or 1) > 1:
            tries = airflow.call("GET", f"{tis}/{ti['task_id']}/tries")["task_instances"]
            words = [
                f"try {t['try_number']} {t['state']}, ended {epoch(t['end_date']) - killed:.0f} s after the kill"
                for t in tries
                if t.get("end_date")
            ]
            marks["retries"].append(f"{ti['task_id']}: " + "; ".join(words))
    wait_for("the scheduler to be healthy", lambda: scheduler_state(stack, cid)[1] == "healthy", 180, interval=1.0)
    return marks


def recovery(stack: Stack, runs: int) -> tuple[list[dict], list[dict], list[str]]:
    """Kill to run success, `runs` times; stops after a run that took more than twice the target (more runs would
    cost minutes each and tell nothing new)."""
    part = "recovery"
    airflow = stack.airflow()
    cid = stack.container("airflow-scheduler")
    done, notes = [], []
    for i in range(runs):
        done.append(recovery_run(stack, airflow, cid))
        run = done[-1]
        log(f"recovery: run {i + 1}/{runs}: {run['state']} {run['seconds']:.0f} s after the kill")
        notes += [f"run {i + 1}: {words}" for words in run["retries"]]
        if run["state"] != "success":
            notes.append(f"run {i + 1}: the DAG run ended {run['state']} {run['seconds']:.0f} s after the kill")
        if run["seconds"] > 2 * RECOVERY_S and i + 1 < runs:
            notes.append(f"stopped after run {i + 1}: it took more than twice the target")
            break
    took = [r["seconds"] for r in done if r["state"] == "success"]
    healthy = [r.get("healthy") for r in done]
    reference = f"scheduler healthy again {statistics.median([h for h in healthy if h] or [0]):.0f} s after the kill"
    targets = [target(part, "scheduler killed during a run: kill to run success", took, "s", RECOVERY_S, reference)]
    details = [
        detail(part, "kill to scheduler container restarted", [r.get("restarted") for r in done], "s"),
        detail(part, "kill to scheduler healthy", healthy, "s"),
        detail(part, "kill to run success", took, "s"),
    ]
    return targets, details, notes


# --- 6. the drift monitor: one monitor_model check over 100,000 logged rows
MONITOR_DAG = "monitor_model"
MONITOR_ROWS, ROWS_PER_REQUEST, SENDERS = 100_000, 10, 4


def iris_like_rows(count: int, seed: int) -> list[list[float]]:
    """Plausible flowers (the three species' means with some spread): the drift verdict does not matter here, only
    that Evidently gets varied numbers to test."""
    rng = random.Random(seed)
    means = ((5.0, 3.4, 1.5, 0.2), (5.9, 2.8, 4.3, 1.3), (6.6, 3.0, 5.6, 2.0))
    return [[round(rng.gauss(m, 0.3), 1) for m in rng.choice(means)] for _ in range(count)]


def log_rows(stack: Stack, rows: list[list[float]]) -> None:
    """Send the rows through the model-server's published port, ROWS_PER_REQUEST a request, on SENDERS kept-alive
    connections: what it answers is what its inference log records."""
    port = int(stack.model_url.rsplit(":", 1)[1])
    batches = [rows[i : i + ROWS_PER_REQUEST] for i in range(0, len(rows), ROWS_PER_REQUEST)]

    def send(share: list[list[list[float]]]) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            for batch in share:
                conn.request(
                    "POST", "/invocations", json.dumps({"inputs": batch}), {"Content-Type": "application/json"}
                )
                answer = conn.getresponse()
                answer.read()
                if answer.status != 200:
                    raise BenchError(f"the model-server answered HTTP {answer.status} while logging rows")
        finally:
            conn.close()

    with ThreadPoolExecutor(SENDERS) as pool:
        list(pool.map(send, [batches[i::SENDERS] for i in range(SENDERS)]))


def drift_monitor(stack: Stack, runs: int) -> tuple[list[dict], list[dict], list[str]]:
    """Log MONITOR_ROWS rows, then time a monitor_model run that reads exactly them (its `since`): trigger to
    success, and the check task's own run (imports, reading the log, Evidently, the report to MLflow)."""
    part = "drift-monitor"
    airflow = stack.airflow()
    champion_served(stack)
    settle = float(stack.cfg.get("MONITOR_SETTLE_SECONDS") or 5) + 2
    dag_s, task_s, log_s = [], [], []
    for i in range(runs):
        since = datetime.now(UTC) - timedelta(seconds=1)
        started = time.monotonic()
        log_rows(stack, iris_like_rows(MONITOR_ROWS, seed=i))
        log_s.append(time.monotonic() - started)
        time.sleep(settle)  # the check reads up to MONITOR_SETTLE_SECONDS before it starts
        no_other_runs(airflow)  # max_active_runs=1: the trigger would queue behind the hourly check
        started = time.monotonic()
        run_id = airflow.trigger(MONITOR_DAG, {"since": since.isoformat(), "min_rows": MONITOR_ROWS})
        path = f"/dags/{MONITOR_DAG}/dagRuns/{urllib.request.quote(run_id)}"

        def done(path: str = path) -> str | bool:
            state = airflow.call("GET", path)["state"]
            return state in ("success", "failed") and state

        if wait_for("the monitor_model run", done, 600, interval=0.2) != "success":
            raise BenchError(f"monitor_model run {run_id} failed: {airflow.why_failed(MONITOR_DAG, run_id)}")
        dag_s.append(time.monotonic() - started)
        ti = airflow.call("GET", f"{path}/taskInstances/check_drift")
        task_s.append(epoch(ti["end_date"]) - epoch(ti["start_date"]))
        result = airflow.xcom(MONITOR_DAG, run_id, "check_drift")
        if not isinstance(result, dict) or result.get("rows") != MONITOR_ROWS:
            raise BenchError(f"monitor_model read {result!r}, not {MONITOR_ROWS} rows")
        log(f"drift-monitor: run {i + 1}/{runs}: {dag_s[-1]:.1f} s trigger to success, check task {task_s[-1]:.1f} s")
    details = [
        detail(part, f"monitor_model over {MONITOR_ROWS:,} logged rows: trigger to success", dag_s, "s"),
        detail(part, "its check_drift task (imports, reading the log, Evidently, report to MLflow)", task_s, "s"),
        detail(
            part, f"logging them: {MONITOR_ROWS // ROWS_PER_REQUEST:,} requests of {ROWS_PER_REQUEST} rows", log_s, "s"
        ),
    ]
    notes = [f"{MONITOR_ROWS:,} rows in the inference log, read in full by each check (its `since`); no target set"]
    return [], details, notes
