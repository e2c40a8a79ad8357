"""append_training_data: add labeled rows to the training data, all or none, and with that update its asset, so
`mlops_pipeline` retrains by itself (data-aware scheduling).

Triggered with the rows in the run's conf, {"rows": [{"sepal length (cm)": 5.1, ..., "target": 0}, ...]}, by
`make append-data FILE=rows.csv` (scripts/append_data.py) or by anyone through Airflow's REST API. Rows that fail
the training data's schema (mlops_pipeline/data.py) fail the task, naming the row: the file stays as it was and no
asset event is emitted, so nothing retrains.
"""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.sdk import Param, dag, task

from mlops_pipeline import data


@dag(
    dag_id="append_training_data",
    schedule=None,  # on request only: each run carries its rows
    start_date=datetime(2025, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,  # appends one after the other: the file is rewritten whole each time
    params={"rows": Param([], type="array", description="labeled rows: the training data's columns as keys")},
    tags=["mlops", "iris"],
    doc_md=__doc__,
)
def append_training_data() -> None:
    @task(retries=0, outlets=[data.asset()])  # a bad row does not get better by retrying
    def append(params: dict) -> dict:
        """Check every row, then append them in one atomic rewrite; the asset event follows the task's success."""
        import pandas as pd

        from mlops_pipeline.settings import DataSettings, from_env

        path = from_env(DataSettings).data_path
        return {"appended": data.append(path, pd.DataFrame(params["rows"])), "file": str(path)}

    append()


append_training_data()
