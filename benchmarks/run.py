"""make bench: the stack's four numbers, each against a reference measured in the same run.

1. time to first prediction from `docker compose up` (fresh volumes), and where it goes; the same in local mode
2. memory after one DAG run, idle, tuned vs. the tools' defaults; image sizes
3. DAG runs on warm services: Airflow's overhead vs. the tasks' work
4. serving: throughput and latency at 1/4/16 connections vs. in-process predict and a minimal FastAPI server

Usage: python benchmarks/run.py [--runs 3] [--warm-runs 3] [--seconds 3] [--parts compose,serving] [--local-runs 3]
Writes benchmarks/results.json, benchmarks/results.md and the PNG plots beside them, and the table of targets in
README.md (between its two marker lines). Not part of `make test`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compose_bench  # noqa: E402
import figures  # noqa: E402
import local_bench  # noqa: E402
import pipeline  # noqa: E402
import report  # noqa: E402
import serving  # noqa: E402
from common import BENCH, BenchError, http, log, machine, wait_for  # noqa: E402

PARTS = ("compose", "proposed", "local", "serving")
DEFAULT_PARTS = ("compose", "serving")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (medians need >= 3)")
    parser.add_argument("--warm-runs", type=int, default=3, help="DAG runs on warm services")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of one wrk run")
    parser.add_argument("--local-runs", type=int, default=3, help="cold starts of local mode (part `local`)")
    parser.add_argument(
        "--parts", default=",".join(DEFAULT_PARTS), help=f"comma-separated, from {','.join(PARTS)} (order kept)"
    )
    parser.add_argument("--out", type=Path, default=BENCH, help="where results.json/.md and the plots go")
    args = parser.parse_args(argv)
    args.parts = [p for p in args.parts.split(",") if p]
    if unknown := set(args.parts) - set(PARTS):
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
    return args


def compose_section(args: argparse.Namespace, results: dict, tmp: Path) -> None:
    """Sections 1-3 and the compose serving point. Cold starts: tuned, defaults, then the other tuned ones (so
    noise spreads over both settings); the defaults stack also gets runs-1 more DAG runs, for memory samples
    after DAG runs 1..runs like those of the last tuned stack; warm runs and wrk use the last tuned stack."""
    if problem := compose_bench.engine_problem():
        raise BenchError(problem)
    compose_bench.write_overrides()
    tuned = compose_bench.Stack(tmp / "tuned")
    defaults = compose_bench.Stack(tmp / "defaults", compose_bench.DEFAULTS_OVERRIDE)
    details = results["details"].setdefault("compose", {"cycles": {"tuned": [], "defaults": []}})
    log("compose: building the images (cached layers make this quick after the first time)")
    details["build_s"] = round(compose_bench.build(tuned), 1)
    details["images"] = compose_bench.image_sizes(tuned)
    results["figures"] += figures.image_figures(details["images"])
    try:
        airflow = None
        plan = ["tuned"] * args.runs
        plan.insert(min(1, args.runs - 1), "defaults")  # second, or first when there is one tuned run only
        for label in plan:
            if label == "tuned":
                detail, airflow = cold_start(tuned, tmp, label)
            else:
                try:
                    detail, client = cold_start(defaults, tmp, label)
                    detail["later_runs"] = warm_runs(client, args.runs - 1, defaults, "defaults")
                except BenchError as exc:
                    results["skipped"]["compose defaults"] = str(exc).splitlines()[0][:500]
                    log(f"  FAILED (the tuned runs go on): {exc}")
                    continue
            details["cycles"][label].append(detail)
        details["warm_runs"] = warm_runs(airflow, args.warm_runs, tuned, "tuned")
        details["serving"] = compose_serving(tuned, args)
    finally:
        tuned.down()
        _compose_figures(results, details)


def cold_start(stack: compose_bench.Stack, tmp: Path, label: str) -> tuple[dict, Any]:
    """One `up` on fresh volumes to the first prediction, then the memory once the DAG run is over."""
    log(f"compose: cold start on {label} settings")
    detail, airflow, _ = compose_bench.cycle(stack, tmp)
    detail["memory_mib"] = compose_bench.idle_memory(stack)
    total = sum(detail["memory_mib"].values())
    log(f"  first prediction after {detail['marks_s']['first_prediction']:.1f} s; memory {total:.0f} MiB")
    return detail, airflow


def warm_runs(airflow: Any, count: int, stack: compose_bench.Stack | None = None, label: str = "") -> list[dict]:
    """DAG runs one after the other on running services; with a stack, its memory after each (idle)."""
    runs = []
    for i in range(count):
        run_id, seconds = pipeline.trigger_and_wait(airflow)
        breakdown = pipeline.run_breakdown(airflow, run_id)
        breakdown["client_s"] = round(seconds, 3)
        pipeline.relative_to(breakdown, breakdown["queued_at"])
        if stack is not None:
            breakdown["memory_mib"] = compose_bench.idle_memory(stack)
        runs.append(breakdown)
        log(f"compose: DAG run {i + 1}/{count} on warm {label} services: {seconds:.1f} s")
    return runs


def compose_serving(stack: compose_bench.Stack, args: argparse.Namespace) -> dict:
    """wrk against the compose model-server once it serves the newest champion (no load in the background)."""
    newest = str(1 + args.warm_runs)
    try:
        wait_for("the model-server to serve the newest champion", lambda: _serves(stack.model_url, newest), 60)
    except BenchError as exc:
        log(f"compose: {exc}; measuring anyway")
    cid = stack.compose("ps", "-q", "model-server").stdout.strip()
    pid = int(stack.run("docker", "inspect", "-f", "{{.State.Pid}}", cid).stdout.strip() or 0)
    log("compose: wrk against the compose model-server (4 connections)")
    return serving.compose_point(stack.model_url, pid or None, args.runs, args.seconds)


def _serves(url: str, version: str) -> bool:
    status, body = http("GET", f"{url}/model")
    return status == 200 and isinstance(body, dict) and body.get("model_version") == version


def _compose_figures(results: dict, details: dict) -> None:
    tuned, defaults = details["cycles"]["tuned"], details["cycles"]["defaults"]
    section = "1. Time to first prediction, compose (from `up` on built images, fresh volumes)"
    if tuned:
        results["figures"] += figures.startup_figures(section, tuned, defaults, "compose, tuned", "tools' defaults")
    if tuned or defaults:
        last_tuned = ([tuned[-1]] if tuned else []) + details.get("warm_runs", [])
        later = [r for c in defaults for r in [c, *c.get("later_runs", [])]]
        results["figures"] += figures.memory_figures(tuned, last_tuned[: len(later) or None], later)
    if details.get("warm_runs"):
        results["figures"] += figures.warm_figures(details["warm_runs"], "3. DAG runs on warm services, compose")
    if details.get("serving"):
        results["figures"] += figures.compose_serving_figures(details["serving"])


def proposed_section(args: argparse.Namespace, results: dict, tmp: Path) -> None:
    """Optional: the recommended tuning (benchmarks/proposed.override.yml), cold starts and warm runs, against
    the tuned stack of this run when `compose` ran too."""
    if problem := compose_bench.engine_problem():
        raise BenchError(problem)
    compose_bench.write_overrides()
    stack = compose_bench.Stack(tmp / "proposed", compose_bench.PROPOSED_OVERRIDE)
    details = results["details"].setdefault("proposed", {"cycles": []})
    if "compose" not in results["details"]:  # else the images of this run are built already
        compose_bench.build(stack)
    airflow = None
    try:
        for _ in range(args.runs):
            detail, airflow = cold_start(stack, tmp, "proposed")
            details["cycles"].append(detail)
        details["warm_runs"] = warm_runs(airflow, args.warm_runs, stack, "proposed")
    finally:
        stack.down()
        tuned = results["details"].get("compose", {})
        if details["cycles"]:
            section = "1d. Time to first prediction, compose with benchmarks/proposed.override.yml"
            reference = tuned.get("cycles", {}).get("tuned")
            results["figures"] += figures.startup_figures(section, details["cycles"], reference, "proposed", "tuned")
        if details.get("warm_runs"):
            section = "3b. DAG runs on warm services, compose with benchmarks/proposed.override.yml"
            results["figures"] += figures.warm_figures(details["warm_runs"], section, tuned.get("warm_runs"))


def local_section(args: argparse.Namespace, results: dict, tmp: Path) -> None:
    cycles = results["details"].setdefault("local", {"cycles": []})["cycles"]
    try:
        for i in range(args.local_runs):
            log(f"local: cold start {i + 1}/{args.local_runs} (scripts/local.py up)")
            cycles.append(local_bench.cycle(tmp))
            log(f"  first prediction after {cycles[-1]['marks_s']['first_prediction']:.1f} s")
    finally:
        if cycles:
            section = "1c. Time to first prediction, local mode (scripts/local.py up, empty state)"
            results["figures"] += figures.startup_figures(section, cycles, None, "local mode")


def serving_section(args: argparse.Namespace, results: dict, tmp: Path) -> None:
    data = serving.measure(args.runs, args.seconds, tmp / "serving")
    results["details"]["serving"] = data
    results["figures"] += figures.serving_figures(data, os.cpu_count() or 1)


def run_parts(args: argparse.Namespace, results: dict, tmp: Path) -> None:
    sections = {
        "compose": compose_section,
        "proposed": proposed_section,
        "local": local_section,
        "serving": serving_section,
    }
    for part in args.parts:
        if part == "local" and args.local_runs < 1:
            results["skipped"]["local"] = "--local-runs 0"
            continue
        started = time.monotonic()
        try:
            sections[part](args, results, tmp)
        except BenchError as exc:
            results["skipped"][part] = str(exc).strip().splitlines()[0][:500]
            results["details"].setdefault("errors", {})[part] = str(exc)[-4000:]
            log(f"{part}: FAILED: {exc}")
        results["details"].setdefault("section_seconds", {})[part] = round(time.monotonic() - started, 1)


def write(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    plots = []
    cores = results["machine"]["cores"] or 1
    tuned = results["details"].get("compose", {}).get("cycles", {}).get("tuned", [])
    if tuned:
        median_run = sorted(tuned, key=lambda c: c["marks_s"]["first_prediction"])[len(tuned) // 2]
        plots.append(report.startup_plot(median_run, out / "startup.png"))
    if results["details"].get("serving"):
        plots.append(report.serving_plot(results["details"]["serving"], cores, out / "serving.png"))
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    (out / "results.md").write_text(report.markdown(results, [str(p) for p in plots]))
    if out.resolve() == BENCH.resolve() and results["figures"]:  # the committed results: the README shows them
        report.update_readme(results, BENCH.parent / "README.md")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so every `finally` stops what it started
    info = machine()
    print("Machine: " + ", ".join(f"{k}={v}" for k, v in info.items()), flush=True)
    client = serving.wrk_version() or (serving.install_wrk() if "serving" in args.parts else None)
    if "serving" in args.parts and client is None:
        sys.exit("bench: wrk is not installed and could not be installed: apt-get install -y wrk")
    results: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": info,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "client": f"{client}, one thread, keep-alive, benchmarks/wrk_post.lua; batches: Python http.client",
        "figures": [],
        "details": {},
        "skipped": {},
    }
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="mlopsbench-"))
    try:
        run_parts(args, results, tmp)
    finally:
        results["runtime_s"] = round(time.monotonic() - started, 1)
        results["load_average_at_end"] = list(os.getloadavg())
        results["notes"] = figures.notes(results)
        write(results, args.out)
        shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"\nbench: {results['runtime_s'] / 60:.1f} min; results in {args.out}/results.md and results.json", flush=True
    )
    for row in results["figures"]:
        if row["target"] is not None:
            print(f"  {row['name']}: {report.fmt(row['median'], row['unit'])}  {report.verdict(row)}")
    for part, why in results["skipped"].items():
        print(f"  NOT MEASURED {part}: {why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
