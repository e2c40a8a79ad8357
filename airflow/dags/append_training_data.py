"""append_training_data: add labeled rows to the training data, all or none, and with that update its asset, so
`mlops_pipeline` retrains by itself (data-aware scheduling).

Triggered with the rows in the run's conf, {"rows": [{"sepal length (cm)": 5.1, ..., "target": 0}, ...]}, by
`make append-data FILE=rows.csv` (scripts/append_data.py) or by anyone through Airflow's REST API. A row with a
wrong column, a value that is not a finite number or a label that is not a class fails the task, naming the row:
the file stays as it was and no asset event is emitted, so nothing retrains.
"""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.sdk import Asset, Param, dag, task

# airflow/models is on PYTHONPATH (see ml_pipeline.py). train_model imports nothing heavy at module level.
import train_model

TRAINING_DATA = Asset(name=train_model.TRAINING_DATA_NAME, uri=train_model.training_data_path().as_uri())


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
    @task(retries=0, outlets=[TRAINING_DATA])  # a bad row does not get better by retrying
    def append(params: dict) -> dict:
        """Check every row, then append them in one atomic rewrite; the asset event follows the task's success."""
        import pandas as pd

        from inference_data import append_rows_atomically, validate_labeled_rows

        labels = range(len(train_model.CLASS_NAMES))
        rows = validate_labeled_rows(
            pd.DataFrame(params["rows"]), train_model.FEATURE_NAMES, train_model.LABEL_COLUMN, labels
        )
        path = train_model.ensure_training_data()
        append_rows_atomically(path, rows)
        return {"appended": len(rows), "file": str(path)}

    append()


append_training_data()
