"""mlops_pipeline: check the data, train an Iris RandomForest, evaluate it, register it and promote it if it
passes the quality gate.

Runs on Trigger and whenever the training data asset (the CSV file at TRAINING_DATA_PATH, default
$AIRFLOW_HOME/data/iris.csv) gets an event: the append_training_data DAG posts one when it adds labeled rows.

A thin layer over the mlops_pipeline package: each task calls one stage. The dag-processor re-parses this file
every few seconds, so nothing heavy (mlflow, sklearn, pandas) is imported at module level, only inside the tasks.
Settings come from the environment (.env; mlops_pipeline/settings.py reads them).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import Param, dag, task

from mlops_pipeline import data
from mlops_pipeline.settings import TrainSettings, from_env


def report_success(context: dict) -> None:
    """DAG callback (the dag-processor runs it): the run's duration and outcome to the Pushgateway."""
    from mlops_pipeline.monitoring import pipeline_metrics

    pipeline_metrics.dag_run_finished(context, succeeded=True)


def report_failure(context: dict) -> None:
    from mlops_pipeline.monitoring import pipeline_metrics

    pipeline_metrics.dag_run_finished(context, succeeded=False)


@dag(
    dag_id="mlops_pipeline",
    schedule=[data.asset()],  # an update of the training data; Trigger (UI, REST API, make demo) works as well
    start_date=datetime(2025, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 3, "retry_delay": timedelta(seconds=15)},
    tags=["mlops", "iris"],
    doc_md=__doc__,
    on_success_callback=report_success,
    on_failure_callback=report_failure,
    params={
        "promotion": Param(
            None,
            type=["null", "string"],
            enum=[None, "auto", "challenger"],
            description="what a model that passes the gate becomes (default: PROMOTION): champion, or challenger",
        ),
    },
)
def mlops_pipeline() -> None:
    @task(retries=0)  # bad data does not get better by retrying
    def check_data() -> dict:
        """The data file (seeded with Iris if missing) passes the row schema and holds every class."""
        return data.check(*data.load(from_env(TrainSettings).data_path))

    @task
    def train() -> str:
        """Train on the training split and log params, the rows and the model; the run ID goes to XCom."""
        from mlops_pipeline import train

        settings = from_env(TrainSettings)  # a bad RF_* setting fails here, naming it
        train.connect(settings)
        return train.train_and_log(settings)

    @task
    def evaluate(mlflow_run_id: str) -> dict:
        """MLflow's evaluation on the run's held-out rows: accuracy, F1, confusion matrix, feature importance."""
        from mlops_pipeline import evaluate, train

        train.connect(from_env(TrainSettings))
        return evaluate.evaluate_run(mlflow_run_id)

    @task
    def register(mlflow_run_id: str, params: dict) -> dict:
        """New version of the registered model; `champion` (or, PROMOTION=challenger, `challenger`) moves to it only if
        it passes the gate."""
        from mlops_pipeline import registry, train
        from mlops_pipeline.monitoring import pipeline_metrics

        given = {"promotion": params["promotion"]} if params.get("promotion") else {}
        settings = from_env(TrainSettings, **given)
        train.connect(settings)
        result = registry.register_and_promote(mlflow_run_id, settings)
        pipeline_metrics.model_registered(result)  # the accuracy and the gate's decision, for Prometheus
        return result

    # (`run_id` is a reserved name in Airflow's task context, hence `mlflow_run_id`.)
    mlflow_run_id = train()
    check_data() >> mlflow_run_id
    evaluate(mlflow_run_id) >> register(mlflow_run_id)


mlops_pipeline()
