"""Serving: what the model-server answers at the model's own speed, and what serving costs training.

Per setup (compose through the published 127.0.0.1 port; local processes), each figure against a reference from
the same run: `GET /ping` on the same server at 4 keep-alive connections (what its HTTP stack can answer), the
single-row `/invocations` at 1 and 4 connections (wrk), a 10,000-row request against the same server with
MODEL_SERVER_COMPILED=false (the scikit-learn path, switched through the stack's .env). In compose also: DAG runs
idle, under a saturating 4-connection load (wrk) and under an open-loop 200 req/s (hey), GET /ping under hey alone
and during a DAG run (the open-loop figures' floor), and the whole stack's memory after a serving load and two DAG
runs (the target) and after all of it.
"""

from __future__ import annotations

import json
import math
import signal
import statistics
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import psutil
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.common import (
    BENCH,
    ROOT,
    SEED,
    BenchError,
    Stack,
    alive_and,
    batch_rows_per_s,
    detail,
    free_port,
    http,
    local_env,
    log,
    model_server_env,
    predicts,
    start,
    stop,
    target,
    trained_model,
    wait_for,
    wrk,
    wrk_best,
)

CONNECTIONS = (1, 4)
BATCH_ROWS = 10_000
PING_SHARE, P99_MS, P50_MS, BATCH_RATIO = 0.5, 5.0, 1.0, 2.0
SATURATED_RATIO, OPEN_LOOP_RATIO, OPEN_LOOP_RPS, OPEN_LOOP_P99_MS, MEMORY_MIB = 1.5, 1.2, 200, 5.0, 1.6 * 1024
HEY_WORKERS = 4
T = TypeVar("T")


def runtime(url: str) -> str:
    status, body = http("GET", f"{url}/model")
    if status != 200:
        raise BenchError(f"{url}/model answered {status}")
    return body.get("runtime", "?")


def measure(url: str, pids: dict[str, list[int]], runs: int, seconds: int) -> dict[str, Any]:
    """wrk on /ping and /invocations and the big request, `runs` times, interleaved so noise spreads evenly. `pids`:
    the process trees whose CPU is counted per request (the server; in compose also docker-proxy)."""
    wrk(url, 4, 1, pids)  # warm-up: connections, caches, the first request of each worker
    out: dict[str, Any] = {"runtime": runtime(url), "ping": [], "load": {str(c): [] for c in CONNECTIONS}}
    out["batch_rows_s"] = []
    for _ in range(runs):
        out["ping"].append(wrk(url, 4, seconds, pids, path="/ping"))
        for connections in CONNECTIONS:
            out["load"][str(connections)].append(wrk(url, connections, seconds, pids))
        out["batch_rows_s"].append(batch_rows_per_s(url, BATCH_ROWS))
    return out


def measure_reference(url: str, pids: dict[str, list[int]], runs: int, seconds: int) -> dict[str, Any]:
    """The scikit-learn path of the same server: the big request, and single rows at 4 connections."""
    out: dict[str, Any] = {"runtime": runtime(url), "load": {"4": []}, "batch_rows_s": []}
    for _ in range(runs):
        out["load"]["4"].append(wrk(url, 4, seconds, pids))
        out["batch_rows_s"].append(batch_rows_per_s(url, BATCH_ROWS))
    return out


def rows(part: str, raw: dict[str, Any]) -> tuple[list[dict], list[dict], list[str]]:
    """The serving targets of one setup, the breakdown that explains them, and that explanation in words."""
    compiled, sklearn = raw["compiled"], raw["sklearn"]
    med = statistics.median

    def col(run: dict, connections: int, key: str, scale: float = 1.0) -> list[float]:
        return [r[key] * scale for r in run["load"][str(connections)]]

    def per(run: dict, connections: int, key: str, group: str) -> list[float]:
        return [r[key][group] for r in run["load"][str(connections)]]

    ping = [r["rps"] for r in compiled["ping"]]
    shares = [i / p for i, p in zip(col(compiled, 4, "rps"), ping, strict=True)]
    batch = [c / med(sklearn["batch_rows_s"]) for c in compiled["batch_rows_s"]]
    served_by = f"served by {compiled['runtime']}"
    targets = [
        target(part, "/invocations ÷ GET /ping, 4 connections", shares, "x", PING_SHARE,
               f"/ping {med(ping):,.0f} req/s, /invocations {med(col(compiled, 4, 'rps')):,.0f} req/s; {served_by}",
               "higher"),
        target(part, "p99 latency at 4 connections", col(compiled, 4, "p99_us", 1e-3), "ms", P99_MS, served_by),
        target(part, "p50 latency at 1 connection", col(compiled, 1, "p50_us", 1e-3), "ms", P50_MS, served_by),
        target(part, "10,000-row request ÷ the scikit-learn path", batch, "x", BATCH_RATIO,
               f"{med(compiled['batch_rows_s']):,.0f} vs {med(sklearn['batch_rows_s']):,.0f} rows/s "
               f"({sklearn['runtime']}, MODEL_SERVER_COMPILED=false)", "higher"),
    ]  # fmt: skip
    details = [
        detail(part, "GET /ping, 4 conn.: throughput", ping, "req/s"),
        detail(part, "GET /ping, 4 conn.: p99 latency", [r["p99_us"] / 1e3 for r in compiled["ping"]], "ms"),
        detail(part, "10,000 rows, compiled", compiled["batch_rows_s"], "rows/s"),
        detail(part, "10,000 rows, scikit-learn path", sklearn["batch_rows_s"], "rows/s"),
        detail(part, "scikit-learn path, 4 conn.: throughput", col(sklearn, 4, "rps"), "req/s"),
        detail(part, "scikit-learn path, 4 conn.: p99 latency", col(sklearn, 4, "p99_us", 1e-3), "ms"),
    ]
    if "inprocess" in raw:
        ip = raw["inprocess"]
        details += [
            detail(part, "scikit-learn predict in process, one row", ip["predict_ms"], "ms"),
            detail(part, "scikit-learn predict in process, 10,000 rows", ip["batch_rows_s"], "rows/s"),
        ]
        if ip.get("compiled_batch_rows_s"):
            details.append(
                detail(part, "compiled predict in process, 10,000 rows", ip["compiled_batch_rows_s"], "rows/s")
            )
    groups = list(compiled["load"]["4"][0]["cpu_ms"])
    for c in CONNECTIONS:
        details += [
            detail(part, f"{c} conn.: throughput", col(compiled, c, "rps"), "req/s"),
            detail(part, f"{c} conn.: p50 latency", col(compiled, c, "p50_us", 1e-3), "ms"),
            detail(part, f"{c} conn.: p99 latency", col(compiled, c, "p99_us", 1e-3), "ms"),
            *(detail(part, f"{c} conn.: {g} CPU per request", per(compiled, c, "cpu_ms", g), "ms") for g in groups),
            detail(part, f"{c} conn.: server, cores busy", per(compiled, c, "cores", "server"), "cores"),
            detail(part, f"{c} conn.: wrk (the load client)", col(compiled, c, "client_cores"), "cores"),
            detail(part, f"{c} conn.: whole machine, cores busy", col(compiled, c, "machine_cores"), "cores"),
            detail(part, f"{c} conn.: failed requests", col(compiled, c, "errors"), "requests"),
        ]
    cpu = {g: med(per(compiled, 4, "cpu_ms", g)) for g in groups}
    note = (
        f"At 4 connections a request cost {', '.join(f'{g} {ms:.3f} ms' for g, ms in cpu.items())} of CPU and wrk "
        f"kept {med(col(compiled, 4, 'client_cores')):.2f} cores busy: on 2 cores the load client and the proxy take "
        "a share of every figure."
    )
    notes = [note]
    if "inprocess" in raw:
        path_ms = BATCH_ROWS / med(sklearn["batch_rows_s"]) * 1e3
        predict_ms = BATCH_ROWS / med(raw["inprocess"]["batch_rows_s"]) * 1e3
        notes.append(
            f"A {BATCH_ROWS:,}-row request on the scikit-learn path took {path_ms:.1f} ms, {predict_ms:.1f} ms of it "
            f"scikit-learn's predict: the other {path_ms - predict_ms:.1f} ms (JSON, conversion, answer, HTTP) stay on "
            f"any runtime, so a predict that took no time at all would give {path_ms / (path_ms - predict_ms):.2f}x."
        )
        if raw["inprocess"].get("compiled_batch_rows_s"):
            compiled_ms = BATCH_ROWS / med(raw["inprocess"]["compiled_batch_rows_s"]) * 1e3
            needed_ms = path_ms / BATCH_RATIO - (path_ms - predict_ms)
            need = (
                f"would need a compiled predict of at most {needed_ms:.1f} ms for those rows"
                if needed_ms > 0
                else "is out of reach of any predict: the rest of the request alone takes more than half of it"
            )
            notes.append(
                f"{BATCH_RATIO:.0f}x {need}; {compiled['runtime']}'s, in the same process, took {compiled_ms:.1f} ms."
            )
    return targets, details, notes


def inprocess(stack: Stack, model_uri: str, runs: int, seconds: float) -> dict:
    """scikit-learn's own predict inside the model-server's image (where the time of the scikit-learn path goes)."""
    script = (BENCH / "inprocess.py").read_text()
    cmd = ["docker", "exec", "-i", stack.container("model-server")]
    cmd += ["python", "-", model_uri, str(runs), str(seconds)]
    return json.loads(stack.run(*cmd, input=script).stdout.strip().splitlines()[-1])


def docker_proxy_pids(port: int) -> list[int]:
    """The userland proxy behind a published port: on the path of every request to the compose model-server."""
    pids = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["name"] == "docker-proxy" and str(port) in cmdline:
            pids.append(proc.pid)
    return pids


def recreate_with(stack: Stack, key: str, value: str) -> None:
    """KEY=value in the stack's .env (KEY may be several, joined by "+"), then the model-server recreated and
    answering (what a user does)."""
    keys = key.split("+")
    lines = [ln for ln in stack.env_file.read_text().splitlines() if ln.split("=", 1)[0] not in keys]
    stack.env_file.write_text("\n".join([*lines, *(f"{k}={value}" for k in keys)]) + "\n")
    stack.compose("up", "-d", "--no-deps", "--wait", "model-server", timeout=300)
    wait_for(f"the model-server with {key}={value}", lambda: predicts(stack.model_url), 120)


def wrk_after_recreate(stack: Stack, seconds: int) -> dict[str, Any]:
    """wrk at 4 connections against a just recreated model-server, with its and docker-proxy's CPU, after a 1 s
    warm-up in which every worker has answered: the best of 3 tries of half `seconds` (wrk_best says why)."""
    pids = {
        "server": [stack.init_pid("model-server")],
        "docker-proxy": docker_proxy_pids(stack.ports["MODEL_SERVER_PORT"]),
    }
    wrk(stack.model_url, 4, 1, pids)
    return wrk_best(stack.model_url, 4, max(3, seconds // 2), pids)


def switch(stack: Stack, compiled: bool) -> None:
    """MODEL_SERVER_COMPILED on or off."""
    recreate_with(stack, "MODEL_SERVER_COMPILED", "true" if compiled else "false")
    want = "onnxruntime" if compiled else "scikit-learn"
    wait_for(f"the model-server on {want}", lambda: runtime(stack.model_url) == want, 120)


def compose(stack: Stack, runs: int, seconds: int, info: dict) -> dict[str, Any]:
    """The compose model-server through its published port, compiled (the default) and with the switch off."""
    pids = lambda: {  # noqa: E731 - the container's processes change when it is recreated
        "server": [stack.init_pid("model-server")],
        "docker-proxy": docker_proxy_pids(stack.ports["MODEL_SERVER_PORT"]),
    }
    raw: dict[str, Any] = {"model_uri": info["model_uri"]}
    log(f"serving-compose: /ping, /invocations at {CONNECTIONS} connections, {BATCH_ROWS:,} rows, {runs} x {seconds} s")
    raw["compiled"] = measure(stack.model_url, pids(), runs, seconds)
    log("serving-compose: the same with MODEL_SERVER_COMPILED=false")
    switch(stack, compiled=False)
    try:
        raw["sklearn"] = measure_reference(stack.model_url, pids(), runs, seconds)
        raw["inprocess"] = inprocess(stack, info["model_uri"], runs, max(1.0, seconds / 2))
    finally:
        switch(stack, compiled=True)
    return raw


def local(tmp: Path, runs: int, seconds: int) -> dict[str, Any]:
    """mlflow/model-server.sh (compiled, then MODEL_SERVER_COMPILED=false) as local processes on free loopback ports,
    serving one model trained by mlops_pipeline.pipeline; every process is stopped before this returns (also on
    Ctrl-C)."""
    with trained_model(tmp) as (tracking_uri, run_id):
        raw: dict[str, Any] = {"model_uri": f"runs:/{run_id}/model"}
        for key, compiled in (("compiled", "true"), ("sklearn", "false")):
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            # the inference log on, as in compose; one worker per core
            server_env = {**local_env(), **model_server_env(tracking_uri, run_id, port, tmp / f"inference-log-{key}")}
            server_env.update(MODEL_SERVER_WORKERS="", MODEL_SERVER_COMPILED=compiled)
            server = start([str(ROOT / "mlflow" / "model-server.sh")], tmp / f"model-server-{key}.log", server_env)
            try:
                wait_for(
                    "the local model-server to predict", lambda s=server, u=url: alive_and(s, lambda: predicts(u)), 180
                )
                log(f"serving-local: {key}: /ping, /invocations at {CONNECTIONS} connections, {BATCH_ROWS:,} rows")
                measured = measure if key == "compiled" else measure_reference
                raw[key] = measured(url, {"server": [server.pid]}, runs, seconds)
            finally:
                stop(server)
        return raw


# --- what serving costs training (compose)
def hey_start(url: str, rps: int, seconds: int, out: Path, ping: bool = False) -> subprocess.Popen:
    """hey at `rps` requests/s in all (HEY_WORKERS workers, each rate-limited): an open-loop-like load that does not
    speed up when the server does. Per-request times go to `out` as CSV. `ping`: GET /ping instead of the seed's
    prediction, the same path through the port, the proxy and the HTTP stack without the model's work."""
    cmd = ["hey", "-z", f"{seconds}s", "-c", str(HEY_WORKERS), "-q", str(rps // HEY_WORKERS), "-o", "csv"]
    if ping:
        cmd.append(f"{url}/ping")
    else:
        cmd += ["-m", "POST", "-T", "application/json", "-d", json.dumps(SEED), f"{url}/invocations"]
    return subprocess.Popen(cmd, stdout=out.open("w"), stderr=subprocess.STDOUT)


def hey_result(proc: subprocess.Popen, out: Path, started: float) -> dict[str, float]:
    """Stop hey (SIGINT: it writes what it measured) and read its CSV: rate, p99 and non-200 answers."""
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    lines = out.read_text().splitlines()
    header = lines[0].split(",") if lines else []
    if "response-time" not in header:
        raise BenchError(f"hey wrote no CSV: {' '.join(lines[:3])[:300]}")
    rows_ = [dict(zip(header, ln.split(","), strict=False)) for ln in lines[1:] if ln.count(",") == len(header) - 1]
    times = sorted(float(r["response-time"]) * 1000 for r in rows_)
    if not times:
        raise BenchError("hey sent no request")
    return {
        "rps": len(times) / (time.monotonic() - started),
        "p99_ms": times[min(len(times) - 1, int(0.99 * len(times)))],
        "p50_ms": times[len(times) // 2],
        "errors": sum(r["status-code"] != "200" for r in rows_),
    }


def hey_for(url: str, seconds: int, out: Path, ping: bool = False) -> dict[str, float]:
    """hey at OPEN_LOOP_RPS for `seconds`, nothing else started meanwhile: what it measured."""
    started = time.monotonic()
    proc = hey_start(url, OPEN_LOOP_RPS, 600, out, ping)
    time.sleep(seconds)
    return hey_result(proc, out, started)


def hey_during(url: str, out: Path, action: Callable[[], T], ping: bool = False) -> tuple[T, dict[str, float]]:
    """hey at OPEN_LOOP_RPS while `action` runs (started once the load is on): its result and what hey measured."""
    started = time.monotonic()
    proc = hey_start(url, OPEN_LOOP_RPS, 600, out, ping)
    try:
        time.sleep(2)  # the load is on before the action starts
        done = action()
    finally:
        measured = hey_result(proc, out, started)
    return done, measured


def served_histogram(url: str) -> dict[float, float]:
    """The model-server's own latency histogram of /invocations (mlflow/metrics.py): cumulative counts by upper
    bound in seconds, the time inside the app, without the port, docker-proxy, the socket queue or the client."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    for family in text_string_to_metric_families(text):
        if family.name == "model_server_request_duration_seconds":
            return {
                float(s.labels["le"]): s.value
                for s in family.samples
                if s.name.endswith("_bucket") and s.labels.get("endpoint") == "/invocations"
            }
    raise BenchError(f"{url}/metrics has no model_server_request_duration_seconds (MODEL_SERVER_METRICS=false?)")


def in_app_p99_ms(before: dict[float, float], after: dict[float, float]) -> float:
    """The upper bound of the bucket that holds the 99th percentile of the requests answered between two scrapes."""
    total = after[math.inf] - before[math.inf]
    return next(le * 1000 for le in sorted(after) if after[le] - before[le] >= 0.99 * total)


def training_under_load(stack: Stack, runs: int, seconds: int, tmp: Path) -> tuple[list[dict], list[dict], list[str]]:
    """DAG runs idle, under wrk at 4 connections (as fast as the server answers) and under hey at OPEN_LOOP_RPS,
    interleaved; each run starts once the model-server serves the previous champion. hey on GET /ping alone and
    during one more DAG run gives the floor of the open-loop figures. The stack's memory first as the target says,
    after a serving load (wrk, then hey) and two DAG runs, and again after all of it."""
    from benchmarks.compose_parts import (  # the training part's helpers
        champion_served,
        dag_run,
        idle_memory,
        no_other_runs,
    )

    part = "serving-vs-training"
    airflow = stack.airflow()
    champion_served(stack)
    serving_load = subprocess.run(
        ["wrk", "-t1", "-c4", f"-d{seconds}s", "-s", str(BENCH / "wrk.lua"), f"{stack.model_url}/invocations"],
        capture_output=True,
    )
    if serving_load.returncode != 0:
        raise BenchError(f"wrk failed: {serving_load.stderr.decode()[-300:]}")
    hey_for(stack.model_url, seconds, tmp / "hey-memory.csv")
    for _ in range(2):
        dag_run(airflow)
        champion_served(stack)
    memory = idle_memory(stack)
    idle, saturated, open_loop, hey, hey_alone, ping_alone, ping_dag, in_app = [], [], [], [], [], [], [], []
    for i in range(runs):
        champion_served(stack)
        no_other_runs(airflow)  # dag_run waits too, but a load started before it would measure the wait
        hey_alone.append(hey_for(stack.model_url, seconds, tmp / f"hey-alone-{i}.csv"))
        # The floor of the open-loop figures: GET /ping at the same rate, alone and during a DAG run.
        ping_alone.append(hey_for(stack.model_url, seconds, tmp / f"hey-ping-alone-{i}.csv", ping=True))
        ping_dag.append(hey_during(stack.model_url, tmp / f"hey-ping-{i}.csv", lambda: dag_run(airflow), ping=True)[1])
        champion_served(stack)
        idle.append(dag_run(airflow)[1])
        champion_served(stack)
        no_other_runs(airflow)
        load = subprocess.Popen(
            ["wrk", "-t1", "-c4", "-d600s", "-s", str(BENCH / "wrk.lua"), f"{stack.model_url}/invocations"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            time.sleep(2)  # the load is on before the trigger
            saturated.append(dag_run(airflow)[1])
        finally:
            load.kill()
            load.wait()
        champion_served(stack)
        no_other_runs(airflow)
        before = served_histogram(stack.model_url)
        (_, seconds_under_hey), measured = hey_during(stack.model_url, tmp / f"hey-{i}.csv", lambda: dag_run(airflow))
        in_app.append(in_app_p99_ms(before, served_histogram(stack.model_url)))
        open_loop.append(seconds_under_hey)
        hey.append(measured)
        log(f"{part}: run {i + 1}/{runs}: DAG idle {idle[-1]:.1f} s, under wrk {saturated[-1]:.1f} s, "
            f"under hey {open_loop[-1]:.1f} s (p99 {hey[-1]['p99_ms']:.2f} ms)")  # fmt: skip
    champion_served(stack)
    memory_after_all = idle_memory(stack)
    runs_done = 2 + 4 * runs
    med = statistics.median
    ref = f"DAG idle {med(idle):.1f} s"
    targets = [
        target(part, "DAG run under a saturating 4-connection load ÷ idle", [s / med(idle) for s in saturated], "x",
               SATURATED_RATIO, ref),
        target(part, f"DAG run under {OPEN_LOOP_RPS} req/s ÷ idle", [s / med(idle) for s in open_loop], "x",
               OPEN_LOOP_RATIO, ref),
        target(part, f"serving p99 at {OPEN_LOOP_RPS} req/s during the DAG run", [h["p99_ms"] for h in hey], "ms",
               OPEN_LOOP_P99_MS, f"hey, {HEY_WORKERS} workers"),
        target(part, "whole stack's memory after a serving load and two DAG runs", [sum(memory.values())], "MiB",
               MEMORY_MIB, ", ".join(f"{k} {v:,.0f}" for k, v in sorted(memory.items(), key=lambda kv: -kv[1])[:3])),
    ]  # fmt: skip
    details = [
        detail(part, "DAG run idle", idle, "s"),
        detail(part, "DAG run under wrk, 4 connections", saturated, "s"),
        detail(part, f"DAG run under hey, {OPEN_LOOP_RPS} req/s", open_loop, "s"),
        detail(part, "hey: achieved rate", [h["rps"] for h in hey], "req/s"),
        detail(part, "hey: p50 latency", [h["p50_ms"] for h in hey], "ms"),
        detail(part, "the same requests inside the model-server: p99 (its histogram's bucket bound)", in_app, "ms"),
        detail(
            part, f"hey alone (no DAG run), {OPEN_LOOP_RPS} req/s: p50 latency", [h["p50_ms"] for h in hey_alone], "ms"
        ),
        detail(
            part, f"hey alone (no DAG run), {OPEN_LOOP_RPS} req/s: p99 latency", [h["p99_ms"] for h in hey_alone], "ms"
        ),
        detail(part, "hey: failed requests", [h["errors"] for h in hey], "requests"),
        detail(part, f"GET /ping alone, {OPEN_LOOP_RPS} req/s: p99 latency", [h["p99_ms"] for h in ping_alone], "ms"),
        detail(part, f"GET /ping, {OPEN_LOOP_RPS} req/s, during a DAG run: p99", [p["p99_ms"] for p in ping_dag], "ms"),
        *(
            detail(part, f"{name}, after the load and two DAG runs", [mib], "MiB")
            for name, mib in sorted(memory.items())
        ),
        detail(part, f"whole stack, after all {runs_done} DAG runs and loads", [sum(memory_after_all.values())], "MiB"),
        *(
            detail(part, f"{name}, after all {runs_done} DAG runs and loads", [mib], "MiB")
            for name, mib in sorted(memory_after_all.items())
        ),
    ]
    grown = sum(memory_after_all.values()) - sum(memory.values())
    note = (
        f"Memory is `docker stats`' figure, which counts recently used file pages (task logs, artifacts, the SQLite "
        f"files, the inference log) besides the processes' own: {runs_done - 2} more DAG runs, each a model switch "
        f"of the model-server, and their loads added {grown:,.0f} MiB."
    )
    inside = (
        f"During the DAG runs hey saw a p99 of {med([h['p99_ms'] for h in hey]):.1f} ms; inside the model-server (its "
        f"/metrics histogram, from the app receiving a request to its answer) the same requests' p99 was at most "
        f"{med(in_app):.1f} ms: the rest is the published port, docker-proxy, the socket queue and the client, "
        f"waiting for the 2 cores the DAG's task processes share."
    )
    return targets, details, [note, inside]
