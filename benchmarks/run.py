"""make bench: the performance targets, each against a reference measured in the same run.

Usage: python -m benchmarks.run [--parts serving-compose,...] [--runs 3] [--seconds 3] [--no-build]
(from the repository root, as `make bench` runs it: the benchmarks use the project's client, scripts/stackclient.py.)
Writes benchmarks/results.md, benchmarks/results.json and the PNG plots beside them (nothing outside benchmarks/).
The compose parts share one `mlopsbench` stack: cold starts first (each on fresh volumes, memory measured idle
after its DAG run), then serving, training and recovery on the last of them; `down -v` at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import backup_part, batch_part, challenger_part, compose_parts, monitoring_cost, peers, report, serving
from benchmarks.common import BENCH, AirflowError, BenchError, Stack, log, machine

PARTS = (
    "serving-compose",
    "monitoring",
    "challenger",
    "serving-vs-training",
    "serving-local",
    "training",
    "cold-start",
    "memory",
    "recovery",
    "drift-monitor",
    "batch",
    "backup",
    "peers",
)
# the order they run in
COMPOSE = (
    "cold-start",
    "memory",
    "serving-compose",
    "monitoring",
    "challenger",
    "serving-vs-training",
    "training",
    "drift-monitor",
    "batch",
    "recovery",
    "backup",
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, from {','.join(PARTS)}")
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (the median needs 3)")
    parser.add_argument("--seconds", type=int, default=10, help="seconds per wrk run (for a stable p99)")
    parser.add_argument("--no-build", action="store_true", help="use the mlopsbench images as they are")
    parser.add_argument("--out", type=Path, default=BENCH, help="where results.md/.json and the plots go")
    parser.add_argument("--merge", action="store_true", help="keep the other parts' figures of results.json")
    args = parser.parse_args(argv)
    given = [p for p in args.parts.split(",") if p]
    if unknown := set(given) - set(PARTS):
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
    args.parts = [p for p in PARTS if p in given]
    if args.runs < 1 or args.seconds < 1:
        parser.error("--runs and --seconds must be at least 1")
    return args


def ensure_load_tools() -> str:
    """wrk's and hey's versions; installed with apt-get when missing (the serving parts need them)."""
    missing = [tool for tool in ("wrk", "hey") if shutil.which(tool) is None]
    if missing:
        log(f"installing {' '.join(missing)} (apt-get install -y {' '.join(missing)})")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        if subprocess.run(["apt-get", "install", "-y", "-q", *missing], env=env, capture_output=True).returncode:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
            subprocess.run(["apt-get", "install", "-y", "-q", *missing], env=env, capture_output=True)
    if still := [tool for tool in ("wrk", "hey") if shutil.which(tool) is None]:
        raise BenchError(
            f"{' and '.join(still)} missing and could not be installed: apt-get install -y {' '.join(still)}"
        )
    out = subprocess.run(["wrk", "--version"], capture_output=True, text=True)
    return (out.stdout + out.stderr).split(" Copyright")[0].strip() + " and hey (Debian)"


class Results(dict):
    """The whole run as one JSON document: targets, breakdown rows, notes, plots, parts not measured, raw data."""

    def add(self, part: str, rows: tuple[list[dict], list[dict], list[str]]) -> None:
        targets, details, notes = rows
        self["targets"] += targets
        self["details"] += details
        self["notes"].setdefault(part, []).extend(notes)

    def attempt(self, part: str, measure: Callable[[], Any]) -> Any:  # noqa: ANN401
        """Run one part; its failure is recorded as "not measured" and the next part goes on."""
        started = time.monotonic()
        try:
            return measure()
        except Exception as exc:  # one part's failure must not lose the others' figures (SIGTERM still ends it)
            why = str(exc) if isinstance(exc, BenchError | AirflowError) else f"{type(exc).__name__}: {exc}"
            self["skipped"][part] = why.strip()[:1500]
            log(f"{part}: NOT MEASURED: {exc}")
            return None
        finally:
            self["part_seconds"][part] = round(self["part_seconds"].get(part, 0) + time.monotonic() - started, 1)


def compose_session(args: argparse.Namespace, results: Results, tmp: Path) -> None:
    wanted = [p for p in COMPOSE if p in args.parts]
    stack = Stack(tmp)
    try:
        if not args.no_build:
            log("compose: building the mlopsbench images (cached layers make this quick)")
            started = time.monotonic()
            stack.compose("build", timeout=1800)
            results["raw"]["build_s"] = round(time.monotonic() - started, 1)
        count = args.runs if {"cold-start", "memory"} & set(wanted) else 1
        starts: list[dict] = []
        for i in range(count):
            log(f"cold start {i + 1}/{count}: make demo on fresh volumes")
            starts.append(compose_parts.cold_start(stack, tmp))
            log(f"  first prediction after {starts[-1]['first_prediction_s']:.1f} s")
        results["raw"]["cold_starts"] = starts
        if "cold-start" in wanted:
            results.add("cold-start", compose_parts.cold_start_rows(starts))
            median = sorted(starts, key=lambda s: s["first_prediction_s"])[len(starts) // 2]
            report.cold_start_plot(median, args.out / "cold_start.png", compose_parts.COLD_START_S)
            results["plots"]["cold-start"] = ["cold_start.png"]
        if "memory" in wanted:
            results.attempt("memory", lambda: results.add("memory", memory(stack, starts)))
        after_demo = None
        if "backup" in wanted:  # on the state the demo left; the rest of the part runs last
            after_demo = results.attempt("backup", lambda: backup_part.round_trip(stack, tmp, "after the demo"))
        if "serving-compose" in wanted:
            results.attempt("serving-compose", lambda: serving_compose(stack, args, results))
        if "monitoring" in wanted:
            part = "monitoring"
            results.attempt(
                part, lambda: results.add(part, monitoring_cost.measure(stack, args.runs, args.seconds, results["raw"]))
            )
        if "challenger" in wanted:
            part = "challenger"
            results.attempt(
                part, lambda: results.add(part, challenger_part.measure(stack, args.runs, args.seconds, results["raw"]))
            )
        if "serving-vs-training" in wanted:
            part = "serving-vs-training"
            results.attempt(
                part, lambda: results.add(part, serving.training_under_load(stack, args.runs, args.seconds, tmp))
            )
        if "training" in wanted:
            results.attempt("training", lambda: results.add("training", compose_parts.training(stack, args.runs)))
        if "drift-monitor" in wanted:
            part = "drift-monitor"
            results.attempt(part, lambda: results.add(part, compose_parts.drift_monitor(stack, args.runs)))
        if "batch" in wanted:
            results.attempt("batch", lambda: results.add("batch", batch_part.measure(stack, args.runs)))
        if "recovery" in wanted:
            results.attempt("recovery", lambda: results.add("recovery", compose_parts.recovery(stack, args.runs)))
        if after_demo is not None:
            results.attempt("backup", lambda: results.add("backup", backup_part.measure(stack, tmp, after_demo)))
    finally:
        log("compose: down -v")
        stack.down()


def memory(stack: Stack, starts: list[dict]) -> tuple[list[dict], list[dict], list[str]]:
    return compose_parts.memory_rows(starts, compose_parts.image_sizes(stack))


def serving_compose(stack: Stack, args: argparse.Namespace, results: Results) -> None:
    info = compose_parts.champion_served(stack)
    raw = serving.compose(stack, args.runs, args.seconds, info)
    results["raw"]["serving-compose"] = raw
    results.add("serving-compose", serving.rows("serving-compose", raw))


def serving_local(args: argparse.Namespace, results: Results, tmp: Path) -> None:
    raw = serving.local(tmp / "local", args.runs, args.seconds)
    results["raw"]["serving-local"] = raw
    results.add("serving-local", serving.rows("serving-local", raw))


def peers_part(args: argparse.Namespace, results: Results, tmp: Path) -> None:
    results.add("peers", peers.measure(tmp / "peers", args.runs, args.seconds, results["raw"]))
    raw = results["raw"]["peers"]
    results["tables"]["peers"] = peers.table(raw)
    med = statistics.median
    rows = [
        (raw["labels"][name], med(r["c4"]["rps"] for r in runs), med(r["c4"]["p99_us"] for r in runs) / 1e3)
        for name, runs in raw["servers"].items()
        if name not in raw["failed"]
    ]
    report.peers_plot(rows, args.out / "peers.png")
    results["plots"]["peers"] = ["peers.png"]


def serving_plot(results: Results, out: Path) -> None:
    setups = {}
    for part in ("serving-compose", "serving-local"):
        raw = results["raw"].get(part)
        if not raw:
            continue
        ping = statistics.median(r["rps"] for r in raw["compiled"]["ping"])
        points = [
            {
                "connections": c,
                "rps": statistics.median(r["rps"] for r in runs),
                "p50": statistics.median(r["p50_us"] for r in runs) / 1000,
                "p99": statistics.median(r["p99_us"] for r in runs) / 1000,
            }
            for c, runs in raw["compiled"]["load"].items()
        ]
        setups[part] = {"ceiling": ping, "goal": serving.PING_SHARE * ping, "points": points}
    if setups:
        report.serving_plot(setups, out / "serving.png")
        results["plots"]["serving-compose" if "serving-compose" in setups else "serving-local"] = ["serving.png"]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so every `finally` stops what it started
    results = Results(
        started=datetime.now(UTC).isoformat(timespec="seconds"),
        settings={"parts": args.parts, "runs": args.runs, "seconds": args.seconds},
        machine=machine(),
        client="",
        targets=[],
        details=[],
        notes={},
        plots={},
        tables={},
        skipped={},
        part_seconds={},
        raw={},
    )
    print("Machine: " + ", ".join(f"{k}={v}" for k, v in results["machine"].items()), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="mlopsbench-"))
    try:
        if any(p.startswith("serving") or p in ("monitoring", "challenger", "peers") for p in args.parts):
            results["client"] = results.attempt("load tools", ensure_load_tools) or ""
        if [p for p in COMPOSE if p in args.parts]:
            results.attempt("compose", lambda: compose_session(args, results, tmp))
        if "serving-local" in args.parts:
            results.attempt("serving-local", lambda: serving_local(args, results, tmp))
        if "peers" in args.parts:
            results.attempt("peers", lambda: peers_part(args, results, tmp))
    except BaseException as exc:  # Ctrl-C or SIGTERM: what was measured is still written, and says so
        results["skipped"]["this run"] = f"interrupted ({type(exc).__name__}); the parts after it did not run"
        raise
    finally:
        results["runtime_s"] = round(time.monotonic() - started, 1)
        results["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
        serving_plot(results, args.out)
        if args.merge and (earlier := args.out / "results.json").exists():
            results = Results(
                report.merge(json.loads(earlier.read_text()), json.loads(json.dumps(results, default=str)))
            )
        (args.out / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
        (args.out / "results.md").write_text(report.markdown(results))
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nbench: {results['runtime_s'] / 60:.1f} min; {args.out}/results.md", flush=True)
    for row in results["targets"]:
        print(f"  {row['part']}: {row['name']}: {report.fmt(row['median'], row['unit'])}  {row['verdict']}")
    for part, why in results["skipped"].items():
        print(f"  NOT MEASURED {part}: {why.splitlines()[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
