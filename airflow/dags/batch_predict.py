"""batch_predict: score a whole CSV file with the champion, in chunks spread over the workers.

Triggered with the input's name, {"input": "rows.csv"}, by `make predict-batch FILE=rows.csv` (which first puts the
file under BATCH_ROOT/input/) or by anyone through Airflow's REST API. `plan` resolves the champion's version once
and splits the file into chunks of BATCH_CHUNK_ROWS rows; `score` runs once per chunk (dynamic task mapping:
the scale variant's Celery workers share them); `combine` writes BATCH_ROOT/output/<stem>/v<version>/
predictions.csv (and rejected.csv: the rows the training data's schema refuses, with their row number and reason),
records the run in MLflow's `mlops_batch` experiment and updates the `batch_predictions` asset.

A thin layer over mlops_pipeline/batch.py (docs/batch-predictions.md).
"""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.sdk import Asset, Param, dag, task

from mlops_pipeline.schema import BATCH_PREDICTIONS

OUTPUT = Asset(name=BATCH_PREDICTIONS)  # a downstream DAG can run whenever a new output is written


@dag(
    dag_id="batch_predict",
    schedule=None,  # on request: each run names its input
    start_date=datetime(2025, 1, 1, tzinfo=UTC),
    catchup=False,
    params={"input": Param("", type="string", description="a file name under BATCH_ROOT/input/, e.g. rows.csv")},
    tags=["mlops", "iris", "batch"],
    doc_md=__doc__,
)
def batch_predict() -> None:
    @task(retries=0)  # a missing file or no champion does not get better by retrying
    def plan(params: dict) -> list[dict]:
        """Check the input, resolve the champion's version once, split the file into chunks (each with the job)."""
        from mlops_pipeline import batch, train
        from mlops_pipeline.settings import BatchSettings, from_env

        cfg = from_env(BatchSettings)
        train.connect(cfg)
        planned = batch.plan(cfg, params["input"])
        return [{"job": planned["job"], "chunk": chunk} for chunk in planned["chunks"]]

    @task(retries=1)
    def score(work: dict) -> dict:
        """Score one chunk with the planned version; refused rows go to the chunk's rejects."""
        from mlops_pipeline import batch, train
        from mlops_pipeline.settings import BatchSettings, from_env

        cfg = from_env(BatchSettings)
        train.connect(cfg)
        return batch.score(cfg, work["job"], work["chunk"])

    @task(retries=1, outlets=[OUTPUT])
    def combine(planned: list, results: list, outlet_events=None) -> dict:  # noqa: ANN001 - Airflow's accessor
        """The parts in row order as one output per input and version; the run in MLflow and the Pushgateway."""
        from mlops_pipeline import batch
        from mlops_pipeline.settings import BatchSettings, from_env

        result = batch.combine(from_env(BatchSettings), planned[0]["job"], list(results))
        outlet_events[OUTPUT].extra = {k: result[k] for k in ("output", "rejects", "version", "scored")}
        return result

    planned = plan()
    combine(planned, score.expand(work=planned))


batch_predict()
