"""Every fact the stages share, defined once: the data's columns and classes, the registry's names, the inference
log's record format, and the errors that name a bad setting or a bad row."""

from __future__ import annotations

from datetime import date
from pathlib import Path

# The training data's columns: scikit-learn's load_iris().feature_names and an integer label, the index into
# CLASS_NAMES.
FEATURE_NAMES = ("sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)")
LABEL_COLUMN = "target"
CLASS_NAMES = ("setosa", "versicolor", "virginica")
IRIS_ROWS = 150  # the seeded rows: data.split() splits them as it did before the data was a file

EXPERIMENT = "mlops_pipeline"  # where training runs are logged (MLFLOW_EXPERIMENT_NAME's default)
MONITORING_EXPERIMENT = "mlops_monitoring"  # where drift checks are logged
BATCH_EXPERIMENT = "mlops_batch"  # where batch scoring runs are logged
MODEL_NAME = "iris-classifier"  # the registered model (REGISTERED_MODEL_NAME's default)
CHAMPION = "champion"  # the registry alias the gate moves and the model-server follows
CHALLENGER = "challenger"  # the alias of a model tried beside the champion (docs/challenger.md)
MODEL_ARTIFACT = "model"  # the original tutorial serves runs:/<run_id>/model
BATCH_PREDICTIONS = "batch_predictions"  # the Airflow asset a batch_predict run updates with its output
TRAINING_DATA_NAME = "iris_training_data"  # the Airflow asset's name and the MLflow dataset's
EVALUATION_DATA_NAME = "iris_held_out"  # the held-out rows a run is judged on (MLflow dataset, context evaluation)
REFERENCE_ARTIFACT = "reference/train.csv"  # a run's training rows, for a monitor to compare served inputs with
HELD_OUT_ARTIFACT = "reference/held_out.csv"  # a run's held-out rows, for the gate to judge a later model on

# The inference log: the keys of every record, in order, and its date partitions (date=YYYY-MM-DD). A challenger's
# shadow predictions (which no client saw) have one more key, SHADOW, true; the true labels a client sends back
# later (POST /feedback) are records of FEEDBACK_FIELDS, one label per row of that request.
LOG_FIELDS = ("ts", "request_id", "model_name", "model_version", "run_id", "inputs", "predictions")
SHADOW = "shadow"
FEEDBACK_FIELDS = ("ts", "request_id", "labels")


def partition_date(path: Path) -> date | None:
    """The day of a ``date=YYYY-MM-DD`` folder; None for anything else, which readers and retention leave alone."""
    try:
        return date.fromisoformat(path.name.removeprefix("date=")) if path.name.startswith("date=") else None
    except ValueError:
        return None


class ConfigError(ValueError):
    """A setting is unusable; the message names it and what it accepts."""


class DataError(ValueError):
    """Rows are not what the model expects; the message names the file or row and the problem."""
