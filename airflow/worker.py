"""`airflow celery worker`, with the training libraries imported before it starts (the scale-out variant).

The same preload as airflow/scheduler.py, for the same reason: Celery's prefork pool forks its child processes
from this one, and Airflow forks each task process from a pool child, so every task starts with MLflow,
scikit-learn, skops and matplotlib already imported instead of importing them on every run. The import list lives in
scheduler.py only (importing it runs those imports; its own `main` runs only as a script).

Usage: python worker.py [airflow celery worker options]   (the airflow-worker service's command)
"""

from __future__ import annotations

import sys

import scheduler  # noqa: F401 - the preload: MLflow, scikit-learn, skops, matplotlib (Agg)
from airflow.__main__ import main

if __name__ == "__main__":
    sys.argv = ["airflow", "celery", "worker", *sys.argv[1:]]
    sys.exit(main())
