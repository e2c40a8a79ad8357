"""Peers: the model-server against the servers a user would pick instead, on the same logged model.

The tutorial's forest, trained by mlops_pipeline.pipeline and logged to a local tracking server, is served by ours
(mlflow/model-server.sh, with its defaults and with /metrics and the inference log off) and by each peer of
peer_servers.py (its own pinned venv, made once with uv and cached), all as local processes with 2 worker
processes on 127.0.0.1. Rounds are interleaved: in each round every server is started, checked, measured and
stopped in turn (every other round in reverse order), so a drift of the machine spreads over all of them. Before
any of a server's figures counts, it must answer all 150 Iris rows (one per request, and all in one request)
exactly as scikit-learn does.

Per server and round: cold start (process start to the first correct answer), one-row requests at 1 and 4
keep-alive connections (wrk, one thread, each server's own protocol), a 1,000-row request (median of 5 after a
warm-up), memory after the load (PSS of the process tree, so pages the workers share count once) and CPU per
request (the tree's user and system time during the 4-connection run).
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

import psutil

from benchmarks import peer_servers
from benchmarks.common import (
    ROOT,
    BenchError,
    detail,
    free_port,
    local_env,
    log,
    model_server_env,
    start,
    stop,
    target,
    trained_model,
    wrk,
    wrk_best,
)

PART = "peers"
THROUGHPUT_TIMES, P99_SHARE, OBSERVABILITY_SHARE = 10.0, 1 / 3, 0.90
BIG_ROWS, BIG_REPEATS = 1_000, 5
ONE_ROW = [[5.1, 3.5, 1.4, 0.2]]  # the original tutorial's curl
OURS, OURS_OFF = "ours", "ours-off"


@dataclass(frozen=True)
class Server:
    """One server under test: how to start it, ask it and read its answer."""

    name: str
    label: str
    path: str
    stop_signal: int
    command: Callable[[Path, int], tuple[list[str], dict[str, str]]]  # (workdir, port) -> argv, extra env
    body: Callable[[list[list[float]]], bytes]
    predictions: Callable[[bytes], list[int]]


def ours(name: str, tracking_uri: str, run_id: str, extra: dict[str, str]) -> Server:
    def command(workdir: Path, port: int) -> tuple[list[str], dict[str, str]]:
        env = model_server_env(tracking_uri, run_id, port, workdir / "inference-log")
        env.update(MODEL_SERVER_WORKERS="2", PROMETHEUS_MULTIPROC_DIR=str(workdir / "counts"))
        return [str(ROOT / "mlflow" / "model-server.sh")], {**env, **extra}

    switches = "; ".join(f"{k}={v}" for k, v in extra.items()) or "defaults: /metrics and the inference log on"
    return Server(
        name=name,
        label=f"ours ({switches})",
        path="/invocations",
        stop_signal=signal.SIGTERM,
        command=command,
        body=lambda rows: json.dumps({"inputs": rows}).encode(),
        predictions=lambda answer: [int(p) for p in json.loads(answer)["predictions"]],
    )


def peer(spec: peer_servers.Peer, python: Path, model_dir: Path) -> Server:
    return Server(
        name=spec.name,
        label=spec.label,
        path=spec.path,
        stop_signal=spec.stop_signal,
        command=lambda workdir, port: spec.command(python, model_dir, port, workdir),
        body=spec.body,
        predictions=spec.predictions,
    )


def export(tracking_uri: str, run_id: str, model_dir: Path) -> tuple[list[list[float]], list[int]]:
    """The logged model as an MLflow model directory and as a joblib file (what the peers load), and the 150 Iris
    rows with scikit-learn's own predictions for them."""
    import joblib
    import mlflow
    import mlflow.sklearn

    from mlops_pipeline import data
    from mlops_pipeline.schema import FEATURE_NAMES

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.artifacts.download_artifacts(f"runs:/{run_id}/model", dst_path=str(model_dir / "download"))
    (model_dir / "download" / "model").rename(model_dir / "mlflow-model")
    model = mlflow.sklearn.load_model(str(model_dir / "mlflow-model"))
    joblib.dump(model, model_dir / "model.joblib")
    frame = data.read(data.seed(model_dir / "iris.csv"))
    rows = frame[list(FEATURE_NAMES)].to_numpy().tolist()
    return rows, [int(p) for p in model.predict(frame[list(FEATURE_NAMES)].to_numpy())]


def post(url: str, path: str, body: bytes, timeout: float = 30) -> tuple[int, bytes]:
    host, port = url.removeprefix("http://").split(":")
    conn = HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("POST", path, body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def answers(server: Server, url: str, rows: list[list[float]]) -> list[int] | None:
    """Its predictions for these rows in one request; None while it cannot answer (starting, or an error)."""
    try:
        status, answer = post(url, server.path, server.body(rows))
        return server.predictions(answer) if status == 200 else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check(server: Server, url: str, rows: list[list[float]], expected: list[int]) -> None:
    """All 150 rows as scikit-learn answers them, one per request and all in one; else no figure of it counts."""
    one_by_one = [(answers(server, url, [row]) or [None])[0] for row in rows]
    wrong = [i for i, (got, want) in enumerate(zip(one_by_one, expected, strict=True)) if got != want]
    if wrong or answers(server, url, rows) != expected:
        raise BenchError(f"{server.label} did not answer as scikit-learn does (rows {wrong[:10]}, or all 150 at once)")


def pss_mib(pid: int) -> float:
    """Proportional set size of the process tree: a page shared by n processes counts 1/n in each."""
    root = psutil.Process(pid)
    total = 0
    for proc in [root, *root.children(recursive=True)]:
        try:
            total += proc.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total / 2**20


def big_request_ms(server: Server, url: str, rows: list[list[float]]) -> float:
    body = server.body((rows * (BIG_ROWS // len(rows) + 1))[:BIG_ROWS])
    times = []
    for i in range(BIG_REPEATS + 1):
        started = time.perf_counter()
        status, answer = post(url, server.path, body, timeout=120)
        if status != 200 or len(server.predictions(answer)) != BIG_ROWS:
            raise BenchError(f"{server.label} answered {status} to {BIG_ROWS} rows: {answer[:200]!r}")
        if i:  # the first one warms up
            times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def one_round(server: Server, tmp: Path, rows: list[list[float]], expected: list[int], seconds: int) -> dict:
    workdir = tmp / f"{server.name}-{time.monotonic_ns()}"
    workdir.mkdir(parents=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv, extra = server.command(workdir, port)
    started = time.monotonic()
    proc = start(argv, workdir / "server.log", {**local_env(), **extra})
    try:
        while answers(server, url, ONE_ROW) != expected[:1]:
            if proc.poll() is not None or time.monotonic() - started > 300:
                tail = (workdir / "server.log").read_text(errors="replace")[-600:]
                raise BenchError(f"{server.label} did not answer within 300 s (exit {proc.poll()}): {tail}")
            time.sleep(0.05)
        out: dict[str, Any] = {"cold_start_s": time.monotonic() - started}
        check(server, url, rows, expected)
        body = workdir / "one-row.json"
        body.write_bytes(server.body(ONE_ROW))
        pids = {"server": [proc.pid]}
        wrk(url, 4, 1, pids, server.path, body)  # warm-up: every worker has answered
        out["c1"] = wrk(url, 1, seconds, pids, server.path, body)
        out["c4"] = wrk_best(url, 4, max(3, seconds // 2), pids, server.path, body)  # how the workers split 4
        out["big_ms"] = big_request_ms(server, url, rows)
        out["pss_mib"] = pss_mib(proc.pid)
        return out
    finally:
        stop(proc, server.stop_signal)


def measure(tmp: Path, runs: int, seconds: int, raw_out: dict) -> tuple[list[dict], list[dict], list[str]]:
    """The rows of this part; the raw measurements go to raw_out["peers"]."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mlops-bench" / "peers"
    raw: dict[str, Any] = raw_out.setdefault(PART, {"servers": {}, "failed": {}, "labels": {}})
    with trained_model(tmp) as (tracking_uri, run_id):
        model_dir = tmp / "model"
        model_dir.mkdir(parents=True, exist_ok=True)
        rows, expected = export(tracking_uri, run_id, model_dir)
        servers = [
            ours(OURS, tracking_uri, run_id, {}),
            ours(OURS_OFF, tracking_uri, run_id, {"MODEL_SERVER_METRICS": "false", "INFERENCE_LOG": "false"}),
        ]
        for spec in peer_servers.PEERS:
            started = time.monotonic()
            try:
                servers.append(peer(spec, peer_servers.environment(spec, cache), model_dir))
            except (RuntimeError, subprocess.SubprocessError, OSError) as exc:
                raw["failed"][spec.name] = f"{spec.label}: its environment could not be made: {exc}"
                continue
            log(f"peers: {spec.label}'s environment ready in {time.monotonic() - started:.0f} s ({cache})")
        raw["labels"] = labels = {s.name: s.label for s in servers}
        for i in range(runs):
            for server in servers if i % 2 == 0 else servers[::-1]:  # alternated: a drift of the machine spreads
                if server.name in raw["failed"]:
                    continue
                try:
                    measured = one_round(server, tmp, rows, expected, seconds)
                except BenchError as exc:
                    raw["failed"][server.name] = str(exc)
                    log(f"peers: {server.label}: NOT MEASURED: {exc}")
                    continue
                raw["servers"].setdefault(server.name, []).append(measured)
                log(
                    f"peers: round {i + 1}/{runs}, {server.name}: {measured['c4']['rps']:,.0f} req/s at 4 conn., "
                    f"p99 {measured['c4']['p99_us'] / 1e3:.1f} ms, cold start {measured['cold_start_s']:.1f} s"
                )
    return rows_of(raw, labels)


def rows_of(raw: dict[str, Any], labels: dict[str, str]) -> tuple[list[dict], list[dict], list[str]]:
    done = {name: runs for name, runs in raw["servers"].items() if name not in raw["failed"]}
    if OURS not in done or OURS_OFF not in done:
        raise BenchError(f"our server was not measured: {raw['failed']}")
    peers = [name for name in done if name not in (OURS, OURS_OFF)]
    if not peers:
        raise BenchError(f"no peer was measured: {raw['failed']}")
    n = min(len(runs) for runs in done.values())

    def per_round(name: str, key: str, field: str) -> list[float]:
        return [run[key][field] for run in done[name][:n]]

    best_rps = [max(done[p][i]["c4"]["rps"] for p in peers) for i in range(n)]
    best_p99 = [min(done[p][i]["c4"]["p99_us"] for p in peers) for i in range(n)]
    med = statistics.median
    best = labels[max(peers, key=lambda p: med(per_round(p, "c4", "rps")))]
    ours_rps, off_rps, ours_p99 = (
        per_round(OURS, "c4", "rps"),
        per_round(OURS_OFF, "c4", "rps"),
        per_round(OURS, "c4", "p99_us"),
    )

    def ratios(a: list[float], b: list[float]) -> list[float]:
        return [x / y for x, y in zip(a, b, strict=True)]

    targets = [
        target(PART, "ours (defaults) ÷ the best peer, req/s at 4 conn.", ratios(ours_rps, best_rps), "x",
               THROUGHPUT_TIMES, f"the best peer ({best}) {med(best_rps):,.0f} req/s; ours {med(ours_rps):,.0f}",
               "higher"),
        target(PART, "ours (defaults) ÷ the best peer, p99 at 4 conn.", ratios(ours_p99, best_p99), "x", P99_SHARE,
               f"the best peer's p99 {med(best_p99) / 1e3:.1f} ms; ours {med(ours_p99) / 1e3:.2f} ms"),
        target(PART, "ours: defaults ÷ /metrics and the inference log off, req/s at 4 conn.",
               ratios(ours_rps, off_rps), "x", OBSERVABILITY_SHARE,
               f"{med(ours_rps):,.0f} vs {med(off_rps):,.0f} req/s, local processes", "higher"),
    ]  # fmt: skip
    details = []
    for name, runs in done.items():
        runs = runs[:n]
        label = labels[name]
        details += [
            detail(PART, f"{label}: req/s, 4 conn.", [r["c4"]["rps"] for r in runs], "req/s"),
            detail(PART, f"{label}: p99, 4 conn.", [r["c4"]["p99_us"] / 1e3 for r in runs], "ms"),
            detail(PART, f"{label}: p50, 1 conn.", [r["c1"]["p50_us"] / 1e3 for r in runs], "ms"),
            detail(PART, f"{label}: req/s, 1 conn.", [r["c1"]["rps"] for r in runs], "req/s"),
            detail(PART, f"{label}: {BIG_ROWS:,}-row request", [r["big_ms"] for r in runs], "ms"),
            detail(PART, f"{label}: cold start to the first correct answer", [r["cold_start_s"] for r in runs], "s"),
            detail(PART, f"{label}: memory (PSS of all its processes)", [r["pss_mib"] for r in runs], "MiB"),
            detail(PART, f"{label}: CPU per request, 4 conn.", [r["c4"]["cpu_ms"]["server"] for r in runs], "ms"),
            detail(
                PART, f"{label}: failed requests", [r["c4"]["errors"] + r["c1"]["errors"] for r in runs], "requests"
            ),
        ]
    passed = ", ".join(labels[name] for name in done)
    notes = [f"Every server answered all 150 Iris rows as scikit-learn does before its figures counted: {passed}."]
    notes += [f"{labels.get(name, name)}: {spec}" for name, spec in settings_notes().items()]
    notes += [f"Not measured: {why}" for why in raw["failed"].values()]
    return targets, details, notes


def settings_notes() -> dict[str, str]:
    """Each peer's settings and the page they follow, for results.md."""
    ours_note = (
        "gunicorn with 2 uvicorn workers (uvloop, httptools), MODEL_SERVER_WORKERS=2, the compiled predictor (ONNX "
        "Runtime), as mlflow/model-server.sh starts it in local mode"
    )
    return {OURS: ours_note} | {p.name: f"{p.settings} ({p.docs})" for p in peer_servers.PEERS}


def table(raw: dict[str, Any]) -> list[str]:
    """The headline table: one line per server, medians."""
    med, labels = statistics.median, raw["labels"]
    columns = ["req/s, 4 conn.", "p99 ms, 4 conn.", "p50 ms, 1 conn.", "1,000 rows, ms", "cold start, s", "PSS, MiB"]
    lines = ["| Server | " + " | ".join([*columns, "CPU ms/request"]) + " |", "|---" * (len(columns) + 2) + "|"]
    for name, runs in raw["servers"].items():
        if name in raw["failed"]:
            continue
        cells = [
            labels.get(name, name),
            f"{med(r['c4']['rps'] for r in runs):,.0f}",
            f"{med(r['c4']['p99_us'] for r in runs) / 1e3:.1f}",
            f"{med(r['c1']['p50_us'] for r in runs) / 1e3:.2f}",
            f"{med(r['big_ms'] for r in runs):.1f}",
            f"{med(r['cold_start_s'] for r in runs):.1f}",
            f"{med(r['pss_mib'] for r in runs):,.0f}",
            f"{med(r['c4']['cpu_ms']['server'] for r in runs):.3f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines
