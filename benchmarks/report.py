"""results.md (targets first, then the breakdown of each part) and the plots, from the results of one run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from benchmarks.common import fmt  # noqa: E402

TITLES = {
    "serving-compose": "1. Serving, compose (the model-server's published 127.0.0.1 port)",
    "serving-vs-training": "1b. Serving and training together: DAG runs under serving load, memory after it",
    "serving-local": "1c. Serving, local processes (mlflow/model-server.sh)",
    "monitoring": "1d. Monitoring: what /metrics costs serving, and the monitoring profile's memory",
    "challenger": "1e. Challenger: what a challenger in shadow or canary mode costs serving (docs/challenger.md)",
    "training": "2. Training: DAG run on warm services vs. one fresh process of the same pipeline",
    "cold-start": "3. Cold start: `make demo` on built images, fresh volumes, to the first prediction",
    "memory": "4. Memory and size",
    "recovery": "5. Recovery: the scheduler process killed during a DAG run",
    "drift-monitor": "6. Drift monitor: one monitor_model check over 100,000 logged rows",
    "batch": "7. Batch scoring: batch_predict on 1,000,000 rows vs. one process, and its largest task's memory",
    "peers": "8. Peers: ours against the model servers a user would pick instead (local processes, 2 workers each)",
    "backup": "9. Backup and restore: make backup and make restore FORCE=1, after the demo and after 100 DAG runs",
}


def merge(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The results of a run of some parts (`--merge`) in place of those parts' figures of an earlier full run: each
    part's figures, references included, come from one run; the header names the parts measured again, and when."""
    parts = set(new["settings"]["parts"])
    merged = {**old}
    for key in ("targets", "details"):
        merged[key] = [row for row in old[key] if row["part"] not in parts] + new[key]
    for key in ("notes", "plots", "tables", "raw", "skipped", "part_seconds"):
        merged[key] = {k: v for k, v in old.get(key, {}).items() if k not in parts} | new.get(key, {})
    again = {k: new[k] for k in ("started", "runtime_s", "load_average_end")}
    again |= {"parts": sorted(parts, key=list(TITLES).index), **{k: new["settings"][k] for k in ("runs", "seconds")}}
    merged["remeasured"] = [*old.get("remeasured", []), again]
    return merged


def spread(row: dict[str, Any]) -> str:
    return f"{fmt(row['min'], row['unit'])} - {fmt(row['max'], row['unit'])}" if len(row["runs"]) > 1 else "1 run"


def markdown(results: dict[str, Any]) -> str:
    m, s = results["machine"], results["settings"]
    load = " / ".join(f"{x:.2f}" for x in m["load_average_start"])
    end = " / ".join(f"{x:.2f}" for x in results["load_average_end"])
    lines = [
        "# Benchmark results",
        "",
        f"`make bench` of {results['started']}: {results['runtime_s'] / 60:.1f} min, `--runs {s['runs']} "
        f"--seconds {s['seconds']}`, parts {', '.join(s['parts'])}.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, {m['os']}, Docker engine {m['docker']}. "
        f"Load average (1/5/15 min) at the start {load}, at the end {end}. Other work on the machine slows every "
        "figure: compare figures of one run only (each reference below is measured in the same run).",
        "",
        "Every figure is the median of its runs, min - max beside it. Load clients: "
        f"{results['client']} (wrk: one thread, keep-alive, benchmarks/wrk.lua; hey: the rate-limited load), on the "
        "same cores as the server.",
        "",
    ]
    for again in results.get("remeasured", []):
        load_end = " / ".join(f"{x:.2f}" for x in again["load_average_end"])
        lines += [
            f'Measured again by `make bench BENCH_ARGS="--parts {",".join(again["parts"])} --merge"` of '
            f"{again['started']} ({again['runtime_s'] / 60:.1f} min, `--runs {again['runs']} --seconds "
            f"{again['seconds']}`, load average at its end {load_end}): "
            f"part {', '.join(again['parts'])}; the other parts' figures are the run's above.",
            "",
        ]
    if s["runs"] < 3:
        lines += ["**A short development run (fewer than 3 runs per figure): the figures are noisy.**", ""]
    lines += ["## Targets", "", "| Part | Target | Median (min - max) | Reference, same run | Goal | Verdict |"]
    lines.append("|---|---|---|---|---|---|")
    for row in sorted(results["targets"], key=lambda r: list(TITLES).index(r["part"])):
        goal = ("<= " if row["better"] == "lower" else ">= ") + fmt(row["goal"], row["unit"])
        cells = [
            row["part"],
            row["name"],
            f"{fmt(row['median'], row['unit'])} ({spread(row)})",
            row["reference"],
            goal,
            row["verdict"] if row["verdict"] == "met" else f"**{row['verdict']}**",
        ]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    for part, title in TITLES.items():
        rows = [r for r in results["details"] if r["part"] == part]
        if not rows:
            continue
        lines += ["", f"## {title}", ""]
        if table := results.get("tables", {}).get(part):
            lines += [*table, ""]
        timeline = any("at" in r for r in rows)
        head = (
            "| Step | Starts at (s after the start) | Takes | Min - max |"
            if timeline
            else "| What | Median | Min - max |"
        )
        lines += [head, "|---" * (4 if timeline else 3) + "|"]
        for r in rows:
            at = [fmt(r["at"], "s")] if timeline else []
            lines.append("| " + " | ".join([r["name"], *at, fmt(r["median"], r["unit"]), spread(r)]) + " |")
        lines += [""] + [f"- {note}" for note in results["notes"].get(part, [])]
        lines += [f"\n![{part}]({plot})" for plot in results["plots"].get(part, [])]
    if results["skipped"]:
        lines += ["", "## Not measured in this run", ""]
        lines += [f"- **{part}**: {why}" for part, why in results["skipped"].items()]
    return "\n".join(lines).rstrip() + "\n"


def cold_start_plot(run: dict[str, Any], path: Path, target_s: float) -> None:
    """The median cold start as a timeline: containers, DAG tasks, model load, the prediction."""
    steps = run["steps"]
    fig, ax = plt.subplots(figsize=(10, 0.35 * len(steps) + 1.5))
    for i, (name, begin, end) in enumerate(steps):
        color = "tab:green" if name.startswith("task") else "tab:orange" if "champion" in name else "tab:blue"
        ax.barh(i, max(end - begin, 0.3), left=begin, color=color)
        ax.text(max(end, begin + 0.3) + 0.4, i, f"{end - begin:.1f} s", va="center", fontsize=7)
    ax.set_yticks(range(len(steps)), [name for name, _, _ in steps], fontsize=7)
    ax.invert_yaxis()
    ax.axvline(run["first_prediction_s"], color="red", linestyle="--", linewidth=1, label="first prediction")
    ax.axvline(target_s, color="grey", linestyle=":", linewidth=1, label=f"target {target_s:.0f} s")
    ax.set_xlabel("seconds after `make demo` started (images built, fresh volumes)")
    ax.set_title(f"Cold start, the median run: first prediction after {run['first_prediction_s']:.1f} s")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def serving_plot(setups: dict[str, dict[str, Any]], path: Path) -> None:
    """/invocations throughput per connection count against GET /ping on the same server and the goal; p50/p99 on
    the bars."""
    fig, axes = plt.subplots(1, len(setups), figsize=(5 * len(setups), 3.8), squeeze=False)
    for ax, (part, rows) in zip(axes[0], setups.items(), strict=True):
        ceiling, goal = rows["ceiling"], rows["goal"]
        for i, point in enumerate(rows["points"]):
            ax.bar(i, point["rps"], color="tab:blue")
            label = f"p50 {point['p50']:.2f} ms\np99 {point['p99']:.2f} ms"
            ax.text(i, point["rps"], label, ha="center", va="bottom", fontsize=8)
        ax.axhline(ceiling, color="grey", linestyle="--", linewidth=1, label=f"GET /ping, 4 conn. {ceiling:,.0f}")
        ax.axhline(goal, color="red", linestyle=":", linewidth=1, label=f"goal {goal:,.0f}")
        ax.set_xticks(range(len(rows["points"])), [f"{p['connections']} conn." for p in rows["points"]])
        ax.set_ylim(0, max(ceiling, *(p["rps"] for p in rows["points"])) * 1.3)
        ax.set_ylabel("requests/s (single row)")
        ax.set_title(part)
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def peers_plot(rows: list[tuple[str, float, float]], path: Path) -> None:
    """Throughput at 4 connections per server (log scale: they differ by orders of magnitude), p99 on the bars."""
    fig, ax = plt.subplots(figsize=(10, 0.5 * len(rows) + 1.5))
    for i, (label, rps, p99_ms) in enumerate(rows):
        ax.barh(i, rps, color="tab:blue" if label.startswith("ours") else "tab:gray")
        ax.text(rps * 1.05, i, f"{rps:,.0f} req/s, p99 {p99_ms:.1f} ms", va="center", fontsize=8)
    ax.set_yticks(range(len(rows)), [label for label, _, _ in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlim(right=max(rps for _, rps, _ in rows) * 8)
    ax.set_xlabel("one-row requests/s at 4 keep-alive connections (wrk), log scale; 2 worker processes each")
    ax.set_title("The same logged forest, served by each (medians of the rounds)")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
