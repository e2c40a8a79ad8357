"""The serving ceiling: the same model's in-process predict, in a process of its own (nothing else in it).

Usage: python benchmarks/inprocess.py MODEL_URI RUNS SECONDS   (MLFLOW_TRACKING_URI from the environment)
Prints one JSON object: single-row predictions per second of one core (thread CPU time, and wall clock), the
same for the bare scikit-learn estimator (what pyfunc adds), and rows per second for 1,000 and 10,000 rows.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable

import mlflow.pyfunc
import numpy as np
from sklearn.datasets import load_iris

BATCHES = (1_000, 10_000)


def rate(call: Callable[[], object], seconds: float) -> tuple[float, float]:
    """(calls per thread-CPU-second, calls per wall second) of a loop of `call` lasting `seconds`."""
    call()  # warm
    n, wall, cpu = 0, time.perf_counter(), time.thread_time()
    while time.perf_counter() - wall < seconds:
        call()
        n += 1
    return n / (time.thread_time() - cpu), n / (time.perf_counter() - wall)


def batch_rows(rows: int) -> np.ndarray:
    """Iris rows repeated to `rows` rows: the same values the benchmark's clients send."""
    x = load_iris().data
    return np.resize(x, (rows, x.shape[1])).astype(np.float64)


def per_row_rate(predict: Callable[[np.ndarray], object], x: np.ndarray, repeats: int = 3) -> float:
    """Rows per wall second for one predict call on `x` (median of `repeats`)."""
    predict(x)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        predict(x)
        times.append(time.perf_counter() - started)
    return len(x) / statistics.median(times)


def main(model_uri: str, runs: int, seconds: float) -> dict:
    model = mlflow.pyfunc.load_model(model_uri)
    raw = model.get_raw_model()
    row = np.array([[5.1, 3.5, 1.4, 0.2]])
    result: dict = {"single_cpu": [], "single_wall": [], "raw_cpu": [], "batch": {str(n): [] for n in BATCHES}}
    batches = {n: batch_rows(n) for n in BATCHES}
    for _ in range(runs):
        cpu, wall = rate(lambda: model.predict(row), seconds)
        result["single_cpu"].append(cpu)
        result["single_wall"].append(wall)
        result["raw_cpu"].append(rate(lambda: raw.predict(row), seconds / 2)[0])
        for n, x in batches.items():
            result["batch"][str(n)].append(per_row_rate(model.predict, x))
    return result


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]))))
