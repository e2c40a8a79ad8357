"""mlops_pipeline: check the data, train an Iris RandomForest, evaluate it, register it and promote it if it
passes the quality gate.

Runs on Trigger and whenever the training data asset (the CSV file at TRAINING_DATA_PATH, default
$AIRFLOW_HOME/data/iris.csv) gets an event: whoever appends labeled rows posts one through Airflow's API.

A thin layer over airflow/models/train_model.py. The dag-processor re-parses this file every few seconds, so
nothing heavy (mlflow, sklearn, pandas) is imported at module level, only inside the tasks. Settings come from the
environment (.env): MLFLOW_TRACKING_URI, MLFLOW_EXPERIMENT_NAME, RF_N_ESTIMATORS, RF_MAX_DEPTH,
REGISTERED_MODEL_NAME, MIN_ACCURACY, TRAINING_DATA_PATH, PUSHGATEWAY_URL (where a finished run and the gate's
decision are pushed for Prometheus: airflow/models/pipeline_metrics.py).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import Asset, dag, task

# airflow/models is on PYTHONPATH: the image sets it, local mode (scripts/local.py) and pytest (pyproject.toml)
# likewise. train_model imports mlflow, sklearn and pandas only inside its functions.
import train_model

# Named from the environment the tasks read it with; the file is seeded by the first task that reads it.
TRAINING_DATA = Asset(name=train_model.TRAINING_DATA_NAME, uri=train_model.training_data_path().as_uri())


def report_success(context: dict) -> None:
    """DAG callback (the dag-processor runs it): the run's duration and outcome to the Pushgateway."""
    import pipeline_metrics

    pipeline_metrics.dag_run_finished(context, succeeded=True)


def report_failure(context: dict) -> None:
    import pipeline_metrics

    pipeline_metrics.dag_run_finished(context, succeeded=False)


@dag(
    dag_id="mlops_pipeline",
    schedule=[TRAINING_DATA],  # an update of the training data; Trigger (UI, REST API, make demo) works as well
    start_date=datetime(2025, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 3, "retry_delay": timedelta(seconds=15)},
    tags=["mlops", "iris"],
    doc_md=__doc__,
    on_success_callback=report_success,
    on_failure_callback=report_failure,
)
def mlops_pipeline() -> None:
    @task(retries=0)  # bad data does not get better by retrying
    def check_data() -> dict:
        """The data file (seeded with Iris if missing) reads cleanly: shape, no missing values, all classes."""
        return train_model.check_data(*train_model.load_data())

    @task
    def train() -> str:
        """Train on the training split and log params, the training rows and the model; the run ID goes to XCom."""
        cfg = train_model.config_from_env()  # a bad RF_* setting fails here, naming it
        train_model.connect()
        return train_model.train_and_log(cfg)

    @task
    def evaluate(mlflow_run_id: str) -> dict:
        """Held-out accuracy, per-class precision/recall/F1, confusion matrix and feature importance."""
        train_model.connect()
        return train_model.evaluate_run(mlflow_run_id)

    @task
    def register(mlflow_run_id: str) -> dict:
        """New version of the registered model; `champion` moves to it only if it passes the gate."""
        train_model.min_accuracy_from_env()  # fail fast on a bad MIN_ACCURACY
        train_model.connect()
        result = train_model.register_and_promote(mlflow_run_id)
        import pipeline_metrics

        pipeline_metrics.model_registered(result)  # the accuracy and the gate's decision, for Prometheus
        return result

    # (`run_id` is a reserved name in Airflow's task context, hence `mlflow_run_id`.)
    mlflow_run_id = train()
    check_data() >> mlflow_run_id
    evaluate(mlflow_run_id) >> register(mlflow_run_id)


mlops_pipeline()
