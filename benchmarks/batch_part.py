"""Target 7 on the compose stack: batch_predict (mlops_pipeline/batch.py) against the same rows scored by one
fresh process, and the memory of its largest task.

A 1,000,000-row file scored end to end by the DAG (trigger to success) ÷ one fresh `python` in the scheduler's
container that reads the CSV, predicts with pyfunc and writes the output, interleaved; then a 10,000,000-row file
once, for the peak memory of its largest task (each task reports its own peak resident memory, which counts the
pages it shares with the scheduler it was forked from: an upper bound of what it costs)."""

from __future__ import annotations

import statistics
import time
from typing import Any

from benchmarks.common import BenchError, Stack, detail, log, target, wait_for
from benchmarks.compose_parts import champion_served, no_other_runs

DAG = "batch_predict"
RATIO, PEAK_MIB = 2.0, 500.0
ROWS, BIG_ROWS = 1_000_000, 10_000_000
# Rows in the ranges of Iris's features, written straight into BATCH_ROOT/input/ inside the scheduler's container.
GENERATE = """
import sys, numpy as np
from mlops_pipeline import batch
from mlops_pipeline.schema import FEATURE_NAMES
from mlops_pipeline.settings import BatchSettings, from_env
rows, name = int(sys.argv[1]), sys.argv[2]
path = batch.input_path(batch.root(from_env(BatchSettings)), name)
path.parent.mkdir(parents=True, exist_ok=True)
rng, low, high = np.random.default_rng(0), np.array([4.3, 2.0, 1.0, 0.1]), np.array([7.9, 4.4, 6.9, 2.5])
with open(path, "w") as f:
    f.write(",".join(FEATURE_NAMES) + "\\n")
    for start in range(0, rows, 1_000_000):
        np.savetxt(f, rng.uniform(low, high, (min(1_000_000, rows - start), 4)), fmt="%.2f", delimiter=",")
"""
# The reference: one process, the same rows, read -> pyfunc predict -> write.
REFERENCE = """
import sys, mlflow, pandas as pd
from mlops_pipeline import batch
from mlops_pipeline.schema import FEATURE_NAMES
from mlops_pipeline.settings import BatchSettings, from_env
cfg = from_env(BatchSettings)
base = batch.root(cfg)
model = mlflow.pyfunc.load_model(f"models:/{cfg.registered_model_name}/{sys.argv[2]}")
frame = pd.read_csv(batch.input_path(base, sys.argv[1]))
frame["prediction"] = model.predict(frame[list(FEATURE_NAMES)].to_numpy())
frame.to_csv(base / "reference.csv", index=False)
"""


def run_dag(stack: Stack, name: str) -> tuple[float, dict[str, Any]]:
    """Trigger batch_predict on `name` and wait: (seconds from the trigger to success, combine's result)."""
    airflow = stack.airflow()
    no_other_runs(airflow)
    started = time.monotonic()
    run_id = airflow.trigger(DAG, {"input": name})
    path = airflow.run_path(DAG, run_id)

    def finished() -> str | None:
        state = airflow.call("GET", path)["state"]
        return state if state in ("success", "failed") else None

    state = wait_for(f"{DAG} on {name}", finished, 1800, interval=0.2)
    seconds = time.monotonic() - started
    if state != "success":
        raise BenchError(f"{DAG} run {run_id} on {name}: {state}")
    result = airflow.xcom(DAG, run_id, "combine")
    assert isinstance(result, dict), result
    return seconds, result


def measure(stack: Stack, runs: int) -> tuple[list[dict], list[dict], list[str]]:
    part = "batch"
    version = champion_served(stack)["model_version"]
    scheduler = stack.container("airflow-scheduler")
    python = ["docker", "exec", scheduler, "python", "-c"]
    stack.run(*python, GENERATE, str(ROWS), "million.csv", timeout=600)
    dag_s, script_s, peaks = [], [], []
    for i in range(runs):
        seconds, result = run_dag(stack, "million.csv")
        if result["scored"] != ROWS:
            raise BenchError(f"{DAG} scored {result['scored']} of {ROWS} rows")
        dag_s.append(seconds)
        peaks.append(max(result["peak_mib"].values()))
        started = time.monotonic()
        stack.run(*python, REFERENCE, "million.csv", str(version), timeout=600)
        script_s.append(time.monotonic() - started)
        log(f"batch: run {i + 1}/{runs}: DAG {dag_s[-1]:.1f} s, one process {script_s[-1]:.1f} s")
    stack.run(*python, GENERATE, str(BIG_ROWS), "ten-million.csv", timeout=900)
    big_s, big = run_dag(stack, "ten-million.csv")
    log(f"batch: 10,000,000 rows in {big_s:.1f} s; peak memory per task {big['peak_mib']}")
    script = f"one process {statistics.median(script_s):.1f} s ({min(script_s):.1f}-{max(script_s):.1f})"
    ratios = [d / s for d, s in zip(dag_s, script_s, strict=True)]
    largest = max(big["peak_mib"].values())
    targets = [
        target(part, "1,000,000 rows: DAG run / one process", ratios, "x", RATIO, script),
        target(part, "10,000,000 rows: the largest task's peak memory", [largest], "MiB", PEAK_MIB, "1 run"),
    ]
    details = [
        detail(part, "1,000,000 rows: DAG run, trigger to success", dag_s, "s"),
        detail(part, "1,000,000 rows: one process (read, pyfunc predict, write; docker exec)", script_s, "s"),
        detail(part, "1,000,000 rows: the largest task's peak memory", peaks, "MiB"),
        detail(part, "10,000,000 rows: DAG run, trigger to success", [big_s], "s"),
        *(detail(part, f"10,000,000 rows: peak memory, {task}", [mib], "MiB") for task, mib in big["peak_mib"].items()),
    ]
    return targets, details, []
