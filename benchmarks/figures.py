"""Turn the raw measurements of each section into figures: one row each, median/min/max over the runs, with the
reference measured in the same run and the target where the brief sets one."""

from __future__ import annotations

import statistics
from typing import Any

from common import figure

TASKS = ("check_data", "train", "evaluate", "register")
MEMORY_TARGET_MIB = 1536
IMAGE_TARGET_MB = 900
FIRST_PREDICTION_TARGET_S = 60
P99_TARGET_MS = 25
TRAINING_TARGET_S = 8
THROUGHPUT_SHARE, BATCH_SHARE = 0.8, 0.5


def _column(cycles: list[dict], get: Any) -> list[float]:
    """One value per run (runs where it is unknown are left out)."""
    values = []
    for cycle in cycles:
        try:
            value = get(cycle)
        except (KeyError, TypeError, IndexError):
            value = None
        if value is not None:
            values.append(float(value))
    return values


def _task(run_or_cycle: dict, name: str) -> dict:
    run = run_or_cycle.get("dag_run", run_or_cycle)
    return next(t for t in run["tasks"] if t["task"] == name)


def milestones(cycle: dict) -> dict[str, float | None]:
    """Seconds after `up` of each step on the way to the first prediction (compose or local)."""
    svc, marks, run, model = cycle.get("services", {}), cycle["marks_s"], cycle["dag_run"], cycle["model_server"]
    queued = run["queued_at_s"]
    register = next((t for t in run["tasks"] if t["task"] == "register"), {})
    rows = {
        "mlflow-server healthy": svc.get("mlflow-server", {}).get("healthy"),
        "airflow-init exited (DB migrated, admin created)": svc.get("airflow-init", {}).get("die"),
        "airflow-webserver healthy": svc.get("airflow-webserver", {}).get("healthy"),
        "airflow-scheduler started": svc.get("airflow-scheduler", {}).get("start"),
        "mlflow-server answers": svc.get("mlflow_server_answers"),
        "airflow-init done": svc.get("airflow_init_done"),
        "Airflow API answers": marks.get("airflow_api_answers"),
        "DAG parsed (its first version serialized)": run.get("dag_parsed_s"),
        "DAG known to the API (as polled)": marks.get("dag_known"),
        "DAG run triggered": marks.get("triggered"),
        "DAG run running (scheduler picked it up)": queued + (run.get("queued_to_running_s") or 0),
        "register done (champion promoted)": queued + register["end_s"] if register.get("end_s") else None,
        "model-server starts loading the champion": model.get("load_start_s"),
        "model-server serves it": model.get("serving_s"),
        "first prediction": marks.get("first_prediction"),
    }
    return {k: v for k, v in rows.items() if v is not None}


def phases(cycle: dict) -> dict[str, float | None]:
    """Durations of the phases: where the time to first prediction goes."""
    svc, marks, run, model = cycle.get("services", {}), cycle["marks_s"], cycle["dag_run"], cycle["model_server"]
    queued = run["queued_at_s"]
    register_end = next((queued + t["end_s"] for t in run["tasks"] if t["task"] == "register" and t["end_s"]), None)

    def span(a: float | None, b: float | None) -> float | None:
        return round(b - a, 3) if a is not None and b is not None else None

    def started_to(service: str, event: str) -> float | None:
        return span(svc.get(service, {}).get("start"), svc.get(service, {}).get(event))

    rows = {
        "mlflow-server: start to healthy": started_to("mlflow-server", "healthy"),
        "airflow-init: container start to exit": started_to("airflow-init", "die"),
        "airflow-init: `airflow db migrate`": cycle.get("airflow_init", {}).get("migrate_s"),
        "airflow-init: admin user": cycle.get("airflow_init", {}).get("admin_user_s"),
        "airflow-webserver: start to healthy": started_to("airflow-webserver", "healthy"),
        "airflow-webserver: API answers to healthy (healthcheck interval)": span(
            marks.get("airflow_api_answers"), svc.get("airflow-webserver", {}).get("healthy")
        ),
        "airflow-scheduler: start to healthy": started_to("airflow-scheduler", "healthy"),
        "DAG parse: dag-processor start to DAG serialized": span(
            svc.get("airflow-dag-processor", {}).get("start"), run.get("dag_parsed_s")
        ),
        "DAG run: queued to running": run.get("queued_to_running_s"),
        "DAG run: task work (sum of task durations)": run.get("work_s"),
        "DAG run: Airflow overhead (queued to success minus work)": run.get("overhead_s"),
        "champion promoted to model-server loading (poll wait)": span(register_end, model.get("load_start_s")),
        "model-server: model load": model.get("model_load_s"),
        "model-server serving to first prediction (client poll)": span(
            model.get("serving_s"), marks.get("first_prediction")
        ),
    }
    return {k: v for k, v in rows.items() if v is not None}


def startup_figures(
    section: str, cycles: list[dict], reference: list[dict] | None, label: str, reference_label: str = ""
) -> list[dict]:
    """Time to first prediction (target 60 s for compose), then milestones and phases, medians over the cycles."""
    first = lambda c: c["marks_s"]["first_prediction"]  # noqa: E731
    rows = [
        figure(
            section,
            f"Time to first prediction ({label})",
            _column(cycles, first),
            "s",
            target=FIRST_PREDICTION_TARGET_S if label != "local mode" else None,
            reference=_ref(reference, first, "s", reference_label),
        )
    ]
    keys = list(dict.fromkeys(k for c in cycles for k in milestones(c)))
    for key in keys:
        get = lambda c, k=key: milestones(c).get(k)  # noqa: E731
        rows.append(figure(section, f"at: {key}", _column(cycles, get), "s", reference=_ref(reference, get, "s", "")))
    keys = list(dict.fromkeys(k for c in cycles for k in phases(c)))
    for key in keys:
        get = lambda c, k=key: phases(c).get(k)  # noqa: E731
        rows.append(
            figure(section, f"phase: {key}", _column(cycles, get), "s", reference=_ref(reference, get, "s", ""))
        )
    for name in TASKS:
        for what, key in (("gap before it", "gap_s"), ("duration", "duration_s")):
            get = lambda c, n=name, k=key: _task(c, n)[k]  # noqa: E731
            rows.append(
                figure(
                    section, f"task {name}: {what}", _column(cycles, get), "s", reference=_ref(reference, get, "s", "")
                )
            )
    return rows


def _ref(cycles: list[dict] | None, get: Any, unit: str, label: str) -> str:
    """The same figure on the reference runs, as 'label: median unit (min-max)'."""
    values = _column(cycles or [], get)
    if not values:
        return ""
    spread = f" ({min(values):.4g}-{max(values):.4g})" if len(values) > 1 else " (1 run)"
    return f"{label + ': ' if label else ''}{statistics.median(values):.4g} {unit}{spread}"


def memory_figures(first: list[dict], tuned: list[dict], defaults: list[dict]) -> list[dict]:
    """Sum of every container's memory, idle after a DAG run: after the first DAG run of fresh tuned stacks
    (target 1.5 GiB), and after DAG runs 1..n of one stack, tuned vs. the tools' defaults (like for like)."""
    section = "2. Memory, idle after a DAG run (docker stats, every container of the stack)"
    total = lambda c: sum(c["memory_mib"].values())  # noqa: E731
    n = len(defaults)
    rows = [
        figure(
            section,
            "Tuned (docker-compose.yml), after the first DAG run of a fresh stack",
            _column(first, total),
            "MiB",
            target=MEMORY_TARGET_MIB,
            reference=_ref(defaults[:1], total, "MiB", "tools' defaults, after its first DAG run"),
        ),
        figure(
            section,
            f"Tuned, after DAG runs 1-{len(tuned)} of one stack",
            _column(tuned, total),
            "MiB",
            reference=_ref(defaults, total, "MiB", f"tools' defaults, after DAG runs 1-{n}"),
        ),
        figure(
            section, f"Tools' defaults (defaults.override.yml), after DAG runs 1-{n}", _column(defaults, total), "MiB"
        ),
    ]
    services = sorted({s for c in tuned + defaults for s in c["memory_mib"]})
    for service in services:
        get = lambda c, s=service: c["memory_mib"].get(s)  # noqa: E731
        reference = _ref(defaults, get, "MiB", "defaults")
        rows.append(figure(section, f"{service}, tuned", _column(tuned, get), "MiB", reference=reference))
    return rows


def image_figures(images: dict[str, dict]) -> list[dict]:
    section = "2. Image sizes"
    return [
        figure(section, f"{name} image", [info["mb"]], "MB", target=IMAGE_TARGET_MB, note=_largest(info))
        for name, info in images.items()
    ]


def _largest(info: dict) -> str:
    top = [f"{name} {mib}" for mib, name in info.get("largest_mib", []) if name not in ("venv", "local")][:5]
    return "largest (MiB): " + ", ".join(top) if top else ""


def warm_figures(runs: list[dict], section: str, reference: list[dict] | None = None) -> list[dict]:
    """DAG runs on warm services: trigger to success, split into the tasks' work and Airflow's own overhead
    (queueing, scheduling gaps, process start), per task; and the share of the work spent logging warnings."""
    whole = [
        ("DAG run on warm services: trigger to success (client, polling every 0.2 s)", lambda r: r["client_s"]),
        ("Queued to success (Airflow's timestamps)", lambda r: r["total_s"]),
        ("Task work (sum of task durations)", lambda r: r["work_s"]),
        ("Airflow overhead (queued to success minus work)", lambda r: r["overhead_s"]),
        ("of which: queued to running (run picked up)", lambda r: r["queued_to_running_s"]),
        ("of which: last task end to run success", lambda r: r["last_task_to_success_s"]),
    ]
    rows = [
        figure(
            section,
            name,
            _column(runs, get),
            "s",
            reference=_ref(reference, get, "s", ""),
            # The target, on the stack as shipped (the proposed variant is compared with it instead).
            target=TRAINING_TARGET_S if name.startswith("DAG run") and reference is None else None,
        )
        for name, get in whole
    ]
    parts = [
        ("gap before it (scheduling, queueing, process start)", "gap_s"),
        ("duration (work)", "duration_s"),
        ("of the duration, Airflow pre-execute (DAG parse in the task)", "pre_execute_s"),
        ("of the duration, logging Python warnings (first to last)", "warnings_span_s"),
        ("warnings logged", "warnings"),
    ]
    for name in TASKS:
        for what, key in parts:
            get = lambda r, n=name, k=key: _task(r, n)[k]  # noqa: E731
            unit = "" if key == "warnings" else "s"
            rows.append(
                figure(section, f"{name}: {what}", _column(runs, get), unit, reference=_ref(reference, get, unit, ""))
            )
    return rows


def serving_figures(data: dict, cores: int) -> list[dict]:
    """Throughput and latency against the in-process ceiling and the reference server; batch rows per second."""
    section = "4. Serving (local processes, wrk on 127.0.0.1)"
    ceiling = data["ceiling"]
    per_core = statistics.median(ceiling["single_cpu"])
    rows = [
        figure(section, "Ceiling: in-process pyfunc predict, 1 row, per core", ceiling["single_cpu"], "pred/s",
               note="thread CPU time; wall-clock: " + _med(ceiling["single_wall"]) + " pred/s"),
        figure(section, "The bare scikit-learn estimator's predict, 1 row, per core", ceiling["raw_cpu"], "pred/s"),
    ]  # fmt: skip
    reference = data["servers"].get("reference (FastAPI)", {}).get("load", {})
    for name, server in data["servers"].items():
        ceiling_here = per_core * min(server["workers"], cores)
        for key, runs in server["load"].items():
            connections = int(key[1:])
            rps = [r["rps"] for r in runs]
            is_main = name == "model-server" and connections == 4
            ref_runs = reference.get(key, []) if name != "reference (FastAPI)" else []
            rows.append(
                figure(
                    section,
                    f"{name}: throughput at {connections} connection(s)",
                    rps,
                    "req/s",
                    target=round(THROUGHPUT_SHARE * ceiling_here, 1) if is_main else None,
                    better="higher",
                    reference="; ".join(
                        filter(
                            None,
                            [_ref_runs(ref_runs, "rps", "req/s", "reference"), f"ceiling {ceiling_here:.4g} req/s"],
                        )
                    )
                    + f" ({min(server['workers'], cores)} core(s))",
                    note=f"server CPU {_med([r.get('server_cpu_ms_per_request', 0) for r in runs])} ms/req, "
                    f"wrk CPU {100 * max(r['client_cpu_share'] for r in runs):.0f}% of a core at most, "
                    f"errors {sum(r['errors'] for r in runs)}",
                )
            )
            for pct in (50, 99):
                rows.append(
                    figure(
                        section,
                        f"{name}: p{pct} latency at {connections} connection(s)",
                        [r[f"p{pct}_us"] / 1000 for r in runs],
                        "ms",
                        target=P99_TARGET_MS if is_main and pct == 99 else None,
                        reference=_ref_runs(ref_runs, f"p{pct}_us", "ms", "reference", 1e-3),
                    )
                )
    for rows_n, in_process in ceiling["batch"].items():
        for name, per_server in data["batches"].items():
            target = round(BATCH_SHARE * statistics.median(in_process)) if name == "model-server" else None
            rows.append(
                figure(
                    section,
                    f"{name}: batch of {int(rows_n):,} rows",
                    per_server.get(rows_n, []),
                    "rows/s",
                    target=target,
                    better="higher",
                    reference=f"in-process predict {statistics.median(in_process):,.0f} rows/s",
                )
            )
    return rows


def compose_serving_figures(point: dict[str, list[dict]]) -> list[dict]:
    section = "4. Serving: the compose model-server (default workers), 4 connections"
    rows = []
    for path, runs in point.items():
        label = {
            "published_port": "through the published port (docker-proxy)",
            "container_loopback": "inside its network namespace",
        }[path]
        rows.append(figure(section, f"throughput {label}", [r["rps"] for r in runs], "req/s", better="higher"))
        rows.append(figure(section, f"p99 latency {label}", [r["p99_us"] / 1000 for r in runs], "ms"))
    return rows


def _med(values: list[float]) -> str:
    return f"{statistics.median(values):.3g}" if values else "n/a"


def _ref_runs(runs: list[dict], key: str, unit: str, label: str, scale: float = 1.0) -> str:
    values = [r[key] * scale for r in runs]
    return f"{label}: {statistics.median(values):.4g} {unit}" if values else ""


# --- a few conclusions computed from the numbers of the run (results.md, "What the numbers say")
def notes(results: dict) -> list[str]:
    details = results["details"]
    compose = details.get("compose", {})
    found = [
        _serving_note(details.get("serving")),
        _startup_note(compose.get("cycles", {}).get("tuned", [])),
        _warnings_note(compose.get("warm_runs", [])),
        _memory_note(compose.get("cycles", {})),
    ]
    return [note for note in found if note]


def _serving_note(data: dict | None) -> str:
    if not data:
        return ""
    per_core = statistics.median(data["ceiling"]["single_cpu"])
    raw = statistics.median(data["ceiling"]["raw_cpu"])
    cpu = {
        name: statistics.median(r.get("server_cpu_ms_per_request", 0) for r in server["load"].get("c4", [{}]))
        for name, server in data["servers"].items()
        if server["load"].get("c4")
    }
    overhead = "; ".join(f"{name} {ms - 1000 / per_core:+.1f} ms" for name, ms in cpu.items())
    share = data.get("profile", {}).get("share", {})
    where = "; ".join(f"{name} {100 * v:.0f}%" for name, v in sorted(share.items(), key=lambda kv: -kv[1]) if v)
    return (
        f"One in-process pyfunc predict of one row costs {1000 / per_core:.1f} ms of CPU ({1000 / raw:.1f} ms in "
        f"scikit-learn's RandomForest itself), so one worker cannot answer the last of 4 concurrent requests in "
        f"less than about {4000 / per_core:.0f} ms. CPU per request beyond that predict, at 4 connections: "
        f"{overhead}."
        + (f" Where the model-server's CPU goes at 4 connections (py-spy, innermost frame): {where}." if where else "")
    )


def _startup_note(cycles: list[dict]) -> str:
    spans: dict[str, list[float]] = {}
    for cycle in cycles:
        for key, value in phases(cycle).items():
            spans.setdefault(key, []).append(value)
    top = sorted(((statistics.median(v), k) for k, v in spans.items()), reverse=True)[:4]
    return "Longest phases of a compose cold start: " + "; ".join(f"{k} {v:.1f} s" for v, k in top) + "." if top else ""


def _warnings_note(runs: list[dict]) -> str:
    if not runs:
        return ""
    spans = [sum(t.get("warnings_span_s") or 0 for t in r["tasks"]) for r in runs]
    counts = [sum(t.get("warnings") or 0 for t in r["tasks"]) for r in runs]
    work = [r["work_s"] for r in runs]
    if not max(counts):
        return ""
    return (
        f"On warm services the tasks of one DAG run log {statistics.median(counts):.0f} Python warnings "
        f"(skops looks up every scipy ufunc in every loaded module, and each of Airflow's deprecated-attribute "
        f"modules answers with a warning): {statistics.median(spans):.1f} s from first to last of "
        f"{statistics.median(work):.1f} s of task work."
    )


def _memory_note(cycles: dict) -> str:
    tuned, defaults = cycles.get("tuned", []), cycles.get("defaults", [])
    if not tuned or not defaults:
        return ""
    lines = []
    for service in sorted(defaults[0]["memory_mib"]):
        t = statistics.median(c["memory_mib"].get(service, 0) for c in tuned)
        d = defaults[0]["memory_mib"][service]
        if abs(d - t) > 50:
            lines.append(f"{service} {d:.0f} MiB on the defaults vs. {t:.0f} MiB tuned")
    return "Where the defaults cost memory (after the first DAG run): " + "; ".join(lines) + "." if lines else ""
