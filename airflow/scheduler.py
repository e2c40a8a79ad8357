"""`airflow scheduler`, with the training libraries imported before it starts.

The LocalExecutor forks its worker processes from the scheduler, and each task process is forked from a worker,
so every task starts with MLflow, scikit-learn, skops and matplotlib already imported instead of paying for those
imports on every run (with Airflow loaded, skops' import searches every loaded module; the cost is measured in
benchmarks/results.md). The pages are shared between the processes (copy-on-write; the executor freezes the
garbage collector before forking), so it costs memory once. Only third-party libraries are imported here, and the
one warnings filter (airflow/models/shim_warnings.py): the project's training and DAG code is imported by each
task, so an edit on the host takes effect on the next run without a restart.

Usage: python scheduler.py [airflow scheduler options]   (the airflow-scheduler service's command)
"""

from __future__ import annotations

import sys

from shim_warnings import ignore_airflow_shim_warnings  # airflow/models, on PYTHONPATH

ignore_airflow_shim_warnings()  # before skops' import probes Airflow's deprecated shims

import matplotlib  # noqa: E402

matplotlib.use("Agg")  # no display in a container; the evaluate task only saves figures

import matplotlib.pyplot  # noqa: E402, F401
import mlflow  # noqa: E402, F401
import mlflow.sklearn  # noqa: E402, F401
import sklearn.datasets  # noqa: E402, F401
import sklearn.ensemble  # noqa: E402, F401
import sklearn.metrics  # noqa: E402, F401
import sklearn.model_selection  # noqa: E402, F401
import skops.io  # noqa: E402, F401
from airflow.__main__ import main  # noqa: E402

if __name__ == "__main__":
    sys.argv = ["airflow", "scheduler", *sys.argv[1:]]
    sys.exit(main())
