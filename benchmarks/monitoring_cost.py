"""Monitoring: what `/metrics` and the inference log cost serving, and what the monitoring profile costs in memory.

1. The compose model-server at 4 keep-alive connections (wrk, single rows) with MODEL_SERVER_METRICS=true and
   =false, alternating `runs` times, on first and then off first (each switch recreates the service through the
   stack's .env, as a user would), so drift of the machine spreads over both. Target: with ÷ without >= 0.95.
   The same for INFERENCE_LOG (the inference log, docs/inference-log.md): >= 0.9; and for both at once (the
   defaults ÷ both off): >= 0.9.
2. The profile's services (Prometheus, the Pushgateway, Grafana where its image exists) started beside the stack,
   scraping it for a minute: their memory (`docker stats`), reported, no target.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from benchmarks.common import Stack, detail, log, target
from benchmarks.compose_parts import idle_memory
from benchmarks.serving import recreate_with, wrk_after_recreate

# Each switch, and the share of throughput it may cost at most.
SWITCHES = {
    "MODEL_SERVER_METRICS": ("/metrics", 0.95),
    "INFERENCE_LOG": ("the inference log", 0.9),
    "MODEL_SERVER_METRICS+INFERENCE_LOG": ("/metrics and the inference log", 0.9),  # the defaults ÷ both off
}
PROFILE = ["prometheus", "pushgateway", "grafana"]
SCRAPE_FOR_S = 60


def switch_cost(stack: Stack, switch: str, runs: int, seconds: int) -> dict[str, Any]:
    raw: dict[str, Any] = {"on": [], "off": []}
    try:
        for i in range(runs):
            for key in ("on", "off") if i % 2 == 0 else ("off", "on"):  # alternated, so drift spreads over both
                recreate_with(stack, switch, "true" if key == "on" else "false")
                raw[key].append(wrk_after_recreate(stack, seconds))
                log(f"monitoring: run {i + 1}/{runs}, {switch} {key}: {raw[key][-1]['rps']:,.0f} req/s")
    finally:
        recreate_with(stack, switch, "true")
    return raw


def profile_memory(stack: Stack) -> dict[str, float]:
    present = [
        s
        for s in PROFILE
        if s != "grafana" or stack.run("docker", "image", "inspect", grafana_image(stack), check=False).returncode == 0
    ]
    stack.compose("--profile", "monitoring", "up", "-d", "--no-build", "--wait", *present, timeout=300)
    try:
        time.sleep(SCRAPE_FOR_S)  # a benchmark's wait, not an ordering: a minute of scrapes before measuring
        memory = idle_memory(stack)
        return {name: memory[name] for name in present if name in memory}
    finally:
        stack.compose("--profile", "monitoring", "rm", "-s", "-f", *present, check=False)


def grafana_image(stack: Stack) -> str:
    out = stack.compose("--profile", "monitoring", "config", "--images").stdout.split()
    return next(image for image in out if image.startswith("grafana/"))


def measure(stack: Stack, runs: int, seconds: int, raw_out: dict) -> tuple[list[dict], list[dict], list[str]]:
    """The rows of this part; its wrk runs go to raw_out["monitoring"]."""
    raw_out["monitoring"] = {}
    targets, rows = [], []
    for switch, (what, share) in SWITCHES.items():
        raw = raw_out["monitoring"][switch] = switch_cost(stack, switch, runs, seconds)
        ratios = [on["rps"] / off["rps"] for on, off in zip(raw["on"], raw["off"], strict=True)]
        on = statistics.median(r["rps"] for r in raw["on"])
        off = statistics.median(r["rps"] for r in raw["off"])
        reference = f"{on:,.0f} vs {off:,.0f} req/s ({switch}=false, same run)"
        name = f"/invocations at 4 conn.: with {what} ÷ without"
        targets.append(target("monitoring", name, ratios, "x", share, reference, "higher"))
        for k in ("on", "off"):
            rows.append(detail("monitoring", f"4 conn.: throughput, {what} {k}", [r["rps"] for r in raw[k]], "req/s"))
            rows.append(
                detail("monitoring", f"4 conn.: p99 latency, {what} {k}", [r["p99_us"] / 1e3 for r in raw[k]], "ms")
            )
            # The server's own CPU per request: less noisy than throughput on a shared machine.
            cpu = [r["cpu_ms"]["server"] * 1000 for r in raw[k]]
            rows.append(detail("monitoring", f"4 conn.: server CPU per request, {what} {k}", cpu, "us"))
    memory = profile_memory(stack)
    rows += [detail("monitoring", f"idle memory: {name}", [mib], "MiB") for name, mib in memory.items()]
    rows.append(detail("monitoring", "idle memory: the profile", [sum(memory.values())], "MiB"))
    notes = [
        f"The monitoring profile's services after {SCRAPE_FOR_S} s of scraping the stack: "
        + ", ".join(f"{n} {m:.0f} MiB" for n, m in memory.items())
        + ("" if "grafana" in memory else " (no Grafana image on this engine: not measured)")
        + "."
    ]
    return targets, rows, notes
