"""Fit the original tutorial's RandomForest on the training split and log the run: its parameters, the rows it
trained on (its reference, for drift monitoring), the rows it is judged on (for the gate) and the model.

Plain functions, so the same code runs from the Airflow DAG, from the tests and in one process (pipeline.py), with
no orchestrator in the way. mlflow, scikit-learn and pandas are imported inside the functions.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import asdict, dataclass
from importlib.metadata import version
from typing import TYPE_CHECKING

from mlops_pipeline import data
from mlops_pipeline.schema import (
    EVALUATION_DATA_NAME,
    HELD_OUT_ARTIFACT,
    LABEL_COLUMN,
    MODEL_ARTIFACT,
    REFERENCE_ARTIFACT,
    TRAINING_DATA_NAME,
    ConfigError,
)
from mlops_pipeline.settings import Settings, TrainSettings

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    from sklearn.ensemble import RandomForestClassifier

log = logging.getLogger(__name__)
# skops refuses to load anything it does not know; a forest is made of these trees (MLflow 3's default format).
# Naming the type keeps skops' safety instead of falling back to pickle.
SKOPS_TRUSTED_TYPES = ["sklearn.tree._tree.Tree"]


@dataclass(frozen=True)
class TrainConfig:
    """What a run is trained with, logged as its parameters. The original tutorial's model comes from the settings'
    defaults (RF_N_ESTIMATORS=100, RF_MAX_DEPTH=3); the split is fixed."""

    n_estimators: int
    max_depth: int | None
    test_size: float = 0.2
    random_state: int = 42

    @classmethod
    def from_settings(cls, settings: TrainSettings) -> TrainConfig:
        return cls(n_estimators=settings.rf_n_estimators, max_depth=settings.rf_max_depth)


def connect(settings: Settings, experiment: str | None = None) -> None:
    """Point MLflow at the tracking server and experiment; fail in seconds, naming the setting, instead of after
    MLflow's minutes of retries."""
    import mlflow
    import requests
    from mlflow.exceptions import MlflowException

    uri = settings.mlflow_tracking_uri
    if uri.startswith(("http://", "https://")):
        try:
            requests.get(f"{uri.rstrip('/')}/health", timeout=5).raise_for_status()
        except requests.RequestException as exc:
            raise ConfigError(f"MLFLOW_TRACKING_URI={uri} is not reachable: {exc}") from None
    mlflow.set_tracking_uri(uri)
    experiment = experiment or settings.mlflow_experiment_name
    try:
        mlflow.set_experiment(experiment)
    except MlflowException as exc:
        raise ConfigError(f"MLFLOW_EXPERIMENT_NAME={experiment!r} cannot be used: {exc.message}") from None


def fit(x: np.ndarray, y: np.ndarray, cfg: TrainConfig) -> RandomForestClassifier:
    from sklearn.ensemble import RandomForestClassifier

    model = RandomForestClassifier(
        n_estimators=cfg.n_estimators, max_depth=cfg.max_depth, random_state=cfg.random_state
    )
    return model.fit(x, y)


def pip_requirements() -> list[str]:
    """Explicit requirements: letting MLflow infer them starts a slow environment probe on every run. The Airflow
    image has only mlflow-skinny (the client); the model needs MLflow itself to be served, at the same version."""
    import mlflow

    return [f"mlflow=={mlflow.__version__}"] + [f"{pkg}=={version(pkg)}" for pkg in ("scikit-learn", "skops", "numpy")]


def log_rows(frame: pd.DataFrame, artifact: str, name: str, context: str, source: str) -> None:
    """Rows as an input of the active run (an MLflow dataset) and as a CSV artifact a later stage reads back."""
    import mlflow
    from mlflow.data.sources import LocalArtifactDatasetSource

    with warnings.catch_warnings():
        # MLflow's notes on its own code, not on these rows: its digest calls pandas in a way pandas 4 will refuse,
        # and its schema hint says integer columns cannot hold missing values (the labels never do).
        warnings.filterwarnings("ignore", message="Starting with pandas version 4.0", module="mlflow")
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer", module="mlflow")
        dataset = mlflow.data.from_pandas(
            frame, source=LocalArtifactDatasetSource(source), name=name, targets=LABEL_COLUMN
        )  # a source object: a path string makes MLflow warn
        mlflow.log_input(dataset, context=context)
    mlflow.log_text(frame.to_csv(index=False, lineterminator="\n"), artifact)


def log_run(
    model: RandomForestClassifier,
    cfg: TrainConfig,
    x_example: np.ndarray,
    metrics: dict[str, float] | None = None,
    rows: dict[str, pd.DataFrame] | None = None,
    source: str = "",
) -> str:
    """Log params (and metrics, if given) and the model in the active experiment; return the run ID. `rows`: the
    training and held-out rows ({"training": ..., "evaluation": ...}), logged as inputs and artifacts."""
    import mlflow
    from mlflow.models import infer_signature

    # A numpy example gives a tensor signature, so the original tutorial's {"inputs": [[...]]} payload is accepted.
    example = x_example[:5]
    signature = infer_signature(example, model.predict(example))
    artifacts = {
        "training": (REFERENCE_ARTIFACT, TRAINING_DATA_NAME),
        "evaluation": (HELD_OUT_ARTIFACT, EVALUATION_DATA_NAME),
    }
    with mlflow.start_run() as run:
        mlflow.log_params(asdict(cfg))
        if metrics:
            mlflow.log_metrics(metrics)
        for context, frame in (rows or {}).items():
            artifact, name = artifacts[context]
            log_rows(frame, artifact, name, context, source)
        mlflow.sklearn.log_model(
            model,
            name=MODEL_ARTIFACT,
            signature=signature,
            input_example=example,
            pip_requirements=pip_requirements(),
            serialization_format="skops",
            skops_trusted_types=SKOPS_TRUSTED_TYPES,
        )
        return run.info.run_id


def train_and_log(settings: TrainSettings) -> str:
    """Train on the training split and log the run (the DAG's `train` task); return the run ID."""
    cfg = TrainConfig.from_settings(settings)
    path = settings.data_path
    x, y = data.load(path)
    x_train, x_test, y_train, y_test = data.split(x, y, cfg.test_size, cfg.random_state)
    rows = {"training": data.as_frame(x_train, y_train), "evaluation": data.as_frame(x_test, y_test)}
    return log_run(fit(x_train, y_train, cfg), cfg, x_train, rows=rows, source=path.as_uri())
