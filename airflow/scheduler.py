"""`airflow scheduler`, with the training libraries imported before it starts.

The LocalExecutor forks its worker processes from the scheduler, and each task process is forked from a worker,
so every task starts with MLflow, scikit-learn, skops and matplotlib already imported instead of paying for those
imports on every run (with Airflow loaded, skops' import searches every loaded module; the cost is measured in
benchmarks/results.md). The pages are shared between the processes (copy-on-write), so it costs memory once, as
long as no process's garbage collector writes to them: keep_imports_frozen below. Only third-party libraries are
imported here, and the one warnings filter (importing mlops_pipeline applies it): the project's stages and DAG code
are imported by each task, so a DAG file edited on the host takes effect on the next run without a restart.

Usage: python scheduler.py [airflow scheduler options]   (the airflow-scheduler service's command)
"""

from __future__ import annotations

import gc
import sys
import threading
import time

import mlops_pipeline  # noqa: F401 - its warnings filter, before skops' import probes Airflow's deprecated shims

# isort: split
import matplotlib

matplotlib.use("Agg")  # no display in a container; the evaluate task only saves figures

import matplotlib.pyplot  # noqa: F401
import mlflow  # noqa: F401
import mlflow.sklearn  # noqa: F401
import sklearn.datasets  # noqa: F401
import sklearn.ensemble  # noqa: F401
import sklearn.metrics  # noqa: F401
import sklearn.model_selection  # noqa: F401
import skops.io  # noqa: F401
from airflow.__main__ import main


def keep_imports_frozen(interval: float = 1.0) -> None:
    """Keep what this process imported out of its own garbage collections, so its pages stay shared with the
    processes forked from it. The LocalExecutor freezes the collector while it forks its workers and unfreezes it
    right after; the scheduler's next full collection then writes to every object it had (a collection rewrites each
    object's header) and the kernel copies those pages, a few minutes after the first task
    (benchmarks/results.md). Objects are still freed when nothing refers to them; only cycles among frozen ones
    are not collected, so the collection before the first freeze leaves none of the imports' garbage behind."""
    gc.collect()
    gc.freeze()

    def refreeze() -> None:
        while True:
            time.sleep(interval)
            if gc.get_freeze_count() == 0:  # the executor unfroze after forking: freeze again
                gc.freeze()

    threading.Thread(target=refreeze, name="keep-imports-frozen", daemon=True).start()


if __name__ == "__main__":
    keep_imports_frozen()
    sys.argv = ["airflow", "scheduler", *sys.argv[1:]]
    sys.exit(main())
