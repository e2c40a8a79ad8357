"""The serving reference: the served model's own pyfunc predict, in one process with nothing else in it.

Usage: python inprocess.py MODEL_URI RUNS SECONDS   (MLFLOW_TRACKING_URI from the environment)
Runs inside the model-server's image (`docker exec -i ... python - ... < inprocess.py`) and in the local venv, so
it needs only what the image has. Prints one JSON line: per run, the wall and CPU milliseconds of one single-row
predict, and rows per second of one 10,000-row predict, scikit-learn's and the model-server's compiled copy's
(mlops_pipeline/serving/predictors.py, installed in the image and in the local venv).
"""

import json
import statistics
import sys
import time
from collections.abc import Callable

import mlflow.pyfunc
import numpy as np

ROW = np.array([[5.1, 3.5, 1.4, 0.2]])
BATCH = np.repeat(ROW, 10_000, axis=0)


def single(model: mlflow.pyfunc.PyFuncModel, seconds: float) -> tuple[float, float]:
    """(wall ms, CPU ms) per call of a predict loop lasting `seconds`."""
    model.predict(ROW)
    calls, wall, cpu = 0, time.perf_counter(), time.thread_time()
    while time.perf_counter() - wall < seconds:
        model.predict(ROW)
        calls += 1
    return 1000 * (time.perf_counter() - wall) / calls, 1000 * (time.thread_time() - cpu) / calls


def batch(predict: Callable[[np.ndarray], object], repeats: int = 3) -> float:
    predict(BATCH)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        predict(BATCH)
        times.append(time.perf_counter() - started)
    return len(BATCH) / statistics.median(times)


def main(uri: str, runs: int, seconds: float) -> dict:
    model = mlflow.pyfunc.load_model(uri)
    result = {"uri": uri, "trees": getattr(model.get_raw_model(), "n_estimators", None)}
    result.update(predict_ms=[], predict_cpu_ms=[], batch_rows_s=[], compiled_batch_rows_s=[])
    from mlops_pipeline.serving.predictors import compile_model

    compiled = compile_model(model.get_raw_model(), model.input_example)
    for _ in range(runs):
        wall, cpu = single(model, seconds)
        result["predict_ms"].append(wall)
        result["predict_cpu_ms"].append(cpu)
        result["batch_rows_s"].append(batch(model.predict))
        if compiled is not None:
            result["compiled_batch_rows_s"].append(batch(compiled.predict))
    return result


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]))))
