"""Judge a run's model on the held-out rows it logged, with MLflow's own evaluation API: `mlflow.models.evaluate`
for the figures (accuracy, F1, precision, recall, the confusion matrix, per-class metrics) and
`mlflow.validate_evaluation_results` for the gate: at least MIN_ACCURACY, and not worse than the champion on the
same rows. The decision is returned, not acted on: registry.py moves the alias.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from mlops_pipeline.data import logged_rows
from mlops_pipeline.schema import CLASS_NAMES, FEATURE_NAMES, HELD_OUT_ARTIFACT, LABEL_COLUMN, MODEL_ARTIFACT

if TYPE_CHECKING:
    import pandas as pd
    from mlflow.models import EvaluationResult

log = logging.getLogger(__name__)
METRIC = "accuracy_score"  # the gate's metric, as MLflow's classifier evaluator names it


def evaluate(model_uri: str, rows: pd.DataFrame) -> EvaluationResult:
    """MLflow's classifier evaluation of the model's predictions for the rows, logged to the active run."""
    import mlflow

    predicted = rows.assign(prediction=mlflow.sklearn.load_model(model_uri).predict(rows[list(FEATURE_NAMES)]))
    config = {"log_model_explainability": False, "label_list": list(range(len(CLASS_NAMES)))}
    return mlflow.models.evaluate(
        data=predicted, predictions="prediction", targets=LABEL_COLUMN, model_type="classifier", evaluator_config=config
    )


def evaluate_run(run_id: str) -> dict[str, float]:
    """The run's model on its held-out rows (the DAG's `evaluate` task): MLflow's figures and plots, and a
    feature-importance plot, on the run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow

    uri = f"runs:/{run_id}/{MODEL_ARTIFACT}"
    with mlflow.start_run(run_id=run_id):
        result = evaluate(uri, logged_rows(run_id, HELD_OUT_ARTIFACT))
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.barh(FEATURE_NAMES, mlflow.sklearn.load_model(uri).feature_importances_)
        ax.set_xlabel("importance (mean decrease in impurity)")
        ax.set_title("Feature importance")
        fig.tight_layout()
        mlflow.log_figure(fig, "feature_importance.png")
        plt.close(fig)
    return dict(result.metrics)


def not_worse(metric: str, floor: float, candidate: float, baseline: float | None) -> str | None:
    """MLflow's verdict (`validate_evaluation_results`): None when `candidate` is at least `floor` and, with a
    baseline, not below it (a tie keeps the newer model); otherwise MLflow's words for the check that failed."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.models import EvaluationResult, MetricThreshold

    change = {"min_relative_change": 0.0} if baseline is not None else {}
    thresholds = {metric: MetricThreshold(threshold=floor, greater_is_better=True, **change)}
    results = [EvaluationResult(metrics={metric: value}, artifacts={}) for value in (candidate, baseline)]
    try:
        mlflow.validate_evaluation_results(thresholds, results[0], results[1] if baseline is not None else None)
    except MlflowException as exc:  # ModelValidationFailedException: the message says which check failed
        return exc.message
    return None


def gate(run_id: str, floor: float, champion: Any = None) -> tuple[bool, str]:  # noqa: ANN401 - a ModelVersion
    """(passed, why): the run's held-out accuracy is at least `floor`, and, when there is a champion (a registry
    ModelVersion), not below the champion's on the same held-out rows (evaluated now, in a run nested in the
    candidate's)."""
    import mlflow

    metrics = mlflow.get_run(run_id).data.metrics
    if METRIC not in metrics:
        raise RuntimeError(f"run {run_id} has no {METRIC} metric: evaluate it before registering")
    accuracy, baseline = metrics[METRIC], None
    if champion is not None:  # in a run of its own, nested in the candidate's: its figures and plots stay apart
        rows, label = logged_rows(run_id, HELD_OUT_ARTIFACT), f"champion v{champion.version} on these held-out rows"
        with mlflow.start_run(run_id=run_id), mlflow.start_run(run_name=label, nested=True):
            baseline = evaluate(f"models:/{champion.name}/{champion.version}", rows).metrics[METRIC]
    failed = not_worse(METRIC, floor, accuracy, baseline)
    if failed:
        log.info("gate: %s", failed)
    passed = failed is None
    # The decision is MLflow's; the words say which check decided it.
    floor_text = f"MIN_ACCURACY {floor:.4f}"
    if accuracy < floor:
        return passed, f"accuracy {accuracy:.4f} is below {floor_text}"
    if baseline is None:
        return passed, f"accuracy {accuracy:.4f} >= {floor_text}; no champion yet"
    theirs = f"champion v{champion.version}'s {baseline:.4f}"
    if not passed:
        return passed, f"accuracy {accuracy:.4f} is worse than {theirs} on the same held-out rows"
    return passed, f"accuracy {accuracy:.4f} >= {floor_text} and >= {theirs}"
