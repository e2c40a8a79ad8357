"""Challenger: what a challenger beside the champion costs serving (docs/challenger.md).

A challenger is trained on the bench stack (a mlops_pipeline run with promotion=challenger: the same model, the
same data). Then the compose model-server at 4 keep-alive connections (wrk, single rows, no request ID: the server
draws one per request) with CHALLENGER_MODE=off, shadow and canary (CANARY_PERCENT's default, 10), in an order that
turns round every run, so drift of the machine spreads over all three. Each switch recreates the service through
.env, as a user would. Targets: shadow ÷ off throughput >= 0.8 and shadow's p99 <= 1.2x off's; canary ÷ off >= 0.95
(no measurable cost). The challenger alias is removed at the end, so later parts serve the champion alone.
"""

from __future__ import annotations

import statistics
from typing import Any
from urllib.parse import quote

from benchmarks.common import Stack, detail, log, target
from benchmarks.serving import recreate_with, wrk_after_recreate
from mlops_pipeline.schema import CHALLENGER, MODEL_NAME
from scripts.challenger_demo import train_challenger, wait_for_challenger
from scripts.drift_demo import Stack as DemoStack
from scripts.stackclient import http

MODES = ("off", "shadow", "canary")


def measure(stack: Stack, runs: int, seconds: int, raw_out: dict) -> tuple[list[dict], list[dict], list[str]]:
    """The rows of this part; its wrk runs go to raw_out["challenger"]."""
    version = train_challenger(DemoStack(stack.cfg))
    raw: dict[str, Any] = {mode: [] for mode in MODES}
    raw_out["challenger"] = raw
    try:
        for i in range(runs):
            for mode in MODES if i % 2 == 0 else MODES[::-1]:
                recreate_with(stack, "CHALLENGER_MODE", mode)
                if mode != "off":
                    wait_for_challenger(stack.model_url, version)  # every worker has loaded it
                raw[mode].append(wrk_after_recreate(stack, seconds))
                log(f"challenger: run {i + 1}/{runs}, {mode}: {raw[mode][-1]['rps']:,.0f} req/s")
    finally:
        name = quote(MODEL_NAME)
        url = f"{stack.mlflow_url}/api/2.0/mlflow/registered-models/alias?name={name}&alias={CHALLENGER}"
        http("DELETE", url)
        recreate_with(stack, "CHALLENGER_MODE", "shadow")
    med = statistics.median
    off_rps, off_p99 = med(r["rps"] for r in raw["off"]), med(r["p99_us"] for r in raw["off"]) / 1e3
    targets, rows = [], []
    for mode, goal in (("shadow", 0.8), ("canary", 0.95)):
        ratios = [r["rps"] / o["rps"] for r, o in zip(raw[mode], raw["off"], strict=True)]
        reference = f"{med(r['rps'] for r in raw[mode]):,.0f} vs {off_rps:,.0f} req/s (CHALLENGER_MODE=off, same run)"
        name = f"/invocations at 4 conn.: {mode} ÷ off, throughput"
        targets.append(target("challenger", name, ratios, "x", goal, reference, "higher"))
    p99 = [r["p99_us"] / o["p99_us"] for r, o in zip(raw["shadow"], raw["off"], strict=True)]
    reference = f"shadow {med(r['p99_us'] for r in raw['shadow']) / 1e3:.1f} ms vs off {off_p99:.1f} ms, same run"
    targets.append(target("challenger", "/invocations at 4 conn.: shadow ÷ off, p99 latency", p99, "x", 1.2, reference))
    for mode in MODES:
        rows.append(detail("challenger", f"4 conn.: throughput, {mode}", [r["rps"] for r in raw[mode]], "req/s"))
        rows.append(detail("challenger", f"4 conn.: p99 latency, {mode}", [r["p99_us"] / 1e3 for r in raw[mode]], "ms"))
        cpu = [r["cpu_ms"]["server"] * 1000 for r in raw[mode]]
        rows.append(detail("challenger", f"4 conn.: server CPU per request, {mode}", cpu, "us"))
    notes = [
        f"The challenger is version {version}, trained like the champion. In shadow mode every request is scored "
        "twice (the second after the answer is sent, on the same worker); as a canary, 10% of requests go to it."
    ]
    return targets, rows, notes
