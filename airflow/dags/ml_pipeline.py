"""mlops_pipeline: train the Iris RandomForest and log it to MLflow.

A thin layer over airflow/models/train_model.py. The dag-processor re-parses this file every few seconds,
so nothing heavy (mlflow, sklearn) is imported at module level, only inside the task.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from airflow.sdk import dag, task

# dags/ and models/ sit side by side, in the repository and in the containers (/opt/airflow/...).
MODELS_DIR = Path(__file__).resolve().parent.parent / "models"


@dag(
    dag_id="mlops_pipeline",
    schedule=None,  # triggered by hand (UI, REST API, make demo)
    start_date=datetime(2025, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["mlops", "iris"],
    doc_md=__doc__,
)
def mlops_pipeline() -> None:
    @task(retries=2, retry_delay=timedelta(seconds=20))
    def train_model() -> str:
        """Train, evaluate and log; the returned run ID lands in XCom."""
        import sys

        if str(MODELS_DIR) not in sys.path:
            sys.path.insert(0, str(MODELS_DIR))
        import train_model as training

        return training.run()

    train_model()


mlops_pipeline()
