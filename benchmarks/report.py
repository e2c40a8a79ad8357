"""results.md (tables for people; the README includes it) and the plots, from the results of one run."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

DECIMALS = {"": 0, "s": 1, "MiB": 0, "MB": 0, "req/s": 1, "pred/s": 1, "ms": 1, "rows/s": 0}


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.{DECIMALS.get(unit, 2)}f} {unit}".rstrip()


def verdict(row: dict) -> str:
    """'met', or 'MISSED by <gap>' on the side the target is on, or '' without a target."""
    if row["target"] is None or row["median"] is None:
        return ""
    sign = "<=" if row["better"] == "lower" else ">="
    goal = f"{sign} {fmt(row['target'], row['unit'])}"
    if row["met"]:
        return f"{goal}: met"
    gap = abs(row["median"] - row["target"])
    return f"{goal}: **MISSED** by {fmt(gap, row['unit'])} ({100 * gap / row['target']:.0f}%)"


def table(rows: list[dict]) -> list[str]:
    out = ["| What | Median | Min - max | Runs | Reference (same run) | Target |", "|---|---|---|---|---|---|"]
    for row in rows:
        spread = f"{fmt(row['min'], row['unit'])} - {fmt(row['max'], row['unit'])}" if row["n"] > 1 else ""
        name = row["name"] + (f"<br><sub>{row['note']}</sub>" if row.get("note") else "")
        cells = [name, fmt(row["median"], row["unit"]), spread, str(row["n"]), row["reference"], verdict(row)]
        out.append("| " + " | ".join(cells) + " |")
    return out


# The README's table of targets lies between these two lines; `make bench` rewrites what is between them.
README_START = "<!-- make bench writes the table below; edit benchmarks/report.py, not the table -->"
README_END = "<!-- end of the make bench table -->"
README_PARTS = {"1": "Cold start", "2": "Memory and size", "3": "Training", "4": "Serving"}  # by section number


def readme_table(results: dict[str, Any]) -> str:
    """The targets of one run, for the README: median, min - max, the same run's reference, the verdict."""
    m = results["machine"]
    lines = [
        f"`make bench` of {results['started'][:10]} on {m['cpu']}, {m['cores']} cores (every figure the median of "
        "its runs, min - max beside it; benchmarks/results.md has all of them):",
        "",
        "| Target | Median (min - max) | Reference, same run | Verdict |",
        "|---|---|---|---|",
    ]
    for row in results["figures"]:
        if row["target"] is None:
            continue
        spread = f" ({fmt(row['min'], row['unit'])} - {fmt(row['max'], row['unit'])})" if row["n"] > 1 else ""
        part = README_PARTS.get(row["section"].split(".")[0], "")
        name = f"{part}: {row['name']}" if part else row["name"]
        cells = [name, fmt(row["median"], row["unit"]) + spread, row["reference"], verdict(row)]
        lines.append("| " + " | ".join(cell.replace("|", "/") for cell in cells) + " |")
    return "\n".join(lines)


def update_readme(results: dict[str, Any], readme: Path) -> None:
    """Replace the table between README_START and README_END; atomic, and the README is untouched on error."""
    text = readme.read_text()
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        raise ValueError(f"{readme}: the lines {README_START!r} and {README_END!r} are missing; README unchanged")
    new = text[: start + len(README_START)] + "\n" + readme_table(results) + "\n" + text[end:]
    tmp = readme.with_name(f".{readme.name}.bench-tmp")
    tmp.write_text(new)
    tmp.replace(readme)


def markdown(results: dict[str, Any], plots: list[str]) -> str:
    m = results["machine"]
    lines = [
        "# Benchmark results",
        "",
        f"`make bench` on {results['started']}, {results['runtime_s'] / 60:.1f} min (parts "
        f"{', '.join(results['settings']['parts'])}: {_section_times(results)}). Machine: {m['cpu']}, "
        f"{m['cores']} cores, {m['ram_gib']} GiB RAM, {m['os']}, kernel {m['kernel']}, Docker engine "
        f"{m['docker_engine']}, Compose {m['compose']}. Load average at start "
        f"{' / '.join(f'{x:.1f}' for x in m['load_average_at_start'])}, at the end "
        f"{' / '.join(f'{x:.1f}' for x in results['load_average_at_end'])}: other work on the machine slows "
        "every figure, so compare figures of one run only (each reference is measured in the same run).",
        "",
        f"Every figure is the median of the runs shown (min - max beside it). Load client: {results['client']}.",
        "",
    ]
    targets = [r for r in results["figures"] if r["target"] is not None]
    if targets:
        lines += ["## Targets", "", "| Target | Median | Verdict |", "|---|---|---|"]
        lines += [f"| {r['name']} | {fmt(r['median'], r['unit'])} | {verdict(r)} |" for r in targets]
        lines.append("")
    for section in sorted(dict.fromkeys(r["section"] for r in results["figures"])):  # "1. ..." to "4. ..."
        lines += [f"## {section}", ""]
        lines += table([r for r in results["figures"] if r["section"] == section])
        lines.append("")
    lines += [f"![{Path(p).stem}]({Path(p).name})" for p in plots]
    if results.get("notes"):
        lines += ["", "## What the numbers say", ""] + [f"- {note}" for note in results["notes"]]
    if results.get("skipped"):
        lines += ["", "## Not measured in this run", ""]
        lines += [f"- **{name}**: {why}" for name, why in results["skipped"].items()]
    return "\n".join(lines) + "\n"


def _section_times(results: dict[str, Any]) -> str:
    times = dict(results["details"].get("section_seconds", {}))
    build = results["details"].get("compose", {}).get("build_s")
    parts = [f"{name} {seconds / 60:.1f} min" for name, seconds in times.items()]
    return ", ".join(parts) + (f"; of which building the images {build:.0f} s" if build is not None else "")


def serving_plot(serving: dict[str, Any], cores: int, path: Path) -> Path:
    """Throughput and p50/p99 latency against connections, min-max as error bars, the ceiling as a line."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    per_core = statistics.median(serving["ceiling"]["single_cpu"])
    for index, (name, server) in enumerate(serving["servers"].items()):
        points = sorted((int(k[1:]), runs) for k, runs in server["load"].items())
        xs = [c for c, _ in points]
        for axis, key, scale, style in (
            (left, "rps", 1, "-o"),
            (right, "p99_us", 1e-3, "-o"),
            (right, "p50_us", 1e-3, ":s"),
        ):
            values = [[r[key] * scale for r in runs] for _, runs in points]
            med = [statistics.median(v) for v in values]
            err = [
                [m - min(v) for m, v in zip(med, values, strict=True)],
                [max(v) - m for m, v in zip(med, values, strict=True)],
            ]
            label = name if axis is left else f"{name} p{key[1:3]}"
            axis.errorbar(xs, med, yerr=err, fmt=style, capsize=3, label=label, color=f"C{index}")
    for workers in sorted({min(s["workers"], cores) for s in serving["servers"].values()}):
        left.axhline(per_core * workers, color="grey", linestyle="--", linewidth=1)
        left.annotate(f"in-process ceiling, {workers} core(s)", (1, per_core * workers), va="bottom", fontsize=8)
    right.axhline(25, color="red", linestyle="--", linewidth=1)
    right.annotate("p99 target 25 ms", (1, 25), va="bottom", fontsize=8, color="red")
    for axis, title, unit in ((left, "Throughput, single-row requests", "requests/s"), (right, "Latency", "ms")):
        axis.set_xscale("log", base=2)
        axis.set_xticks([1, 4, 16], ["1", "4", "16"])
        axis.set_xlabel("concurrent connections (wrk)")
        axis.set_ylabel(unit)
        axis.set_title(title)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    right.set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _startup_rows(cycle: dict[str, Any]) -> list[tuple[str, list[tuple[float, float, str]]]]:
    """Rows of the startup timeline: (label, [(begin, end, colour)]) in seconds after `up`."""
    svc, marks, model = cycle["services"], cycle["marks_s"], cycle["model_server"]
    init = cycle.get("airflow_init", {})
    rows: list[tuple[str, list[tuple[float, float, str]]]] = []
    for service, ev in sorted(svc.items(), key=lambda kv: kv[1].get("start", 0)):
        begin = ev.get("start")
        if begin is None:
            continue
        if service == "airflow-init" and init.get("migrate_start_s") is not None:
            migrated = init["migrate_start_s"] + (init.get("migrate_s") or 0)
            parts = [(begin, migrated, "tab:blue"), (migrated, ev.get("die", migrated), "tab:purple")]
            rows.append(("airflow-init: db migrate | admin user", parts))
        elif service == "airflow-webserver" and ev.get("healthy") is not None:
            answers = marks.get("airflow_api_answers", ev["healthy"])
            rows.append(
                (
                    "airflow-webserver: starting | health-check lag",
                    [(begin, answers, "tab:blue"), (answers, ev["healthy"], "lightgrey")],
                )
            )
        elif service == "model-server":
            rows.append(("model-server (start to ready)", [(begin, model.get("uvicorn_ready_s") or begin, "tab:blue")]))
        else:
            end = ev.get("healthy") or ev.get("die")
            if end is not None:
                rows.append(
                    (
                        f"{service} ({'start to healthy' if ev.get('healthy') else 'to exit'})",
                        [(begin, end, "tab:blue")],
                    )
                )
    queued = cycle["dag_run"]["queued_at_s"]
    for task in cycle["dag_run"]["tasks"]:
        if task["start_s"] is not None and task["end_s"] is not None:
            rows.append((f"task {task['task']}", [(queued + task["start_s"], queued + task["end_s"], "tab:green")]))
    if model.get("load_start_s") is not None and model.get("serving_s") is not None:
        rows.append(("model-server: load the champion", [(model["load_start_s"], model["serving_s"], "tab:orange")]))
    return rows


def startup_plot(cycle: dict[str, Any], path: Path, target: float = 60) -> Path:
    """One compose cold start (the median run) as a timeline: containers, DAG tasks, model load, milestones."""
    rows = _startup_rows(cycle)
    fig, ax = plt.subplots(figsize=(11, 0.42 * len(rows) + 1.8))
    for i, (_, parts) in enumerate(rows):
        for begin, end, color in parts:
            ax.barh(i, max(end - begin, 0.3), left=begin, color=color)
        total = parts[-1][1] - parts[0][0]
        ax.text(parts[-1][1] + 0.5, i, f"{total:.1f} s", va="center", fontsize=7)
    ax.set_yticks(range(len(rows)), [label for label, _ in rows], fontsize=8)
    ax.invert_yaxis()
    marks = cycle["marks_s"]
    for key, color, style in (("triggered", "black", "--"), ("first_prediction", "red", "--")):
        label = f"{key.replace('_', ' ')} at {marks[key]:.1f} s"
        ax.axvline(marks[key], color=color, linestyle=style, linewidth=1, label=label)
    ax.axvline(target, color="grey", linestyle=":", linewidth=1, label=f"target {target:.0f} s")
    ax.legend(loc="lower left", fontsize=8)
    ax.set_xlabel("seconds after `docker compose up -d` (fresh volumes, images built)")
    ax.set_title("Compose: from `up` to the first prediction (median run)")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
