"""mlops_pipeline/evaluate.py: MLflow's evaluation of a run on its held-out rows, and the gate's decision by
mlflow.validate_evaluation_results, against a real MLflow tracking server."""

from __future__ import annotations

import uuid

from mlflow import MlflowClient

from conftest import train_run
from mlops_pipeline import evaluate, registry
from mlops_pipeline.schema import CLASS_NAMES


def test_evaluation_logs_mlflows_figures_and_images(tracking_server: str, trained_run: str) -> None:
    client = MlflowClient(tracking_server)
    metrics = client.get_run(trained_run).data.metrics
    assert {"accuracy_score", "f1_score", "precision_score", "recall_score"} <= set(metrics)
    assert metrics["example_count"] == 30
    artifacts = {a.path: a.file_size for a in client.list_artifacts(trained_run)}
    assert artifacts.get("confusion_matrix.png", 0) > 1000
    assert artifacts.get("feature_importance.png", 0) > 1000
    per_class = client.download_artifacts(trained_run, "per_class_metrics.csv")
    assert len(open(per_class).read().splitlines()) == 1 + len(CLASS_NAMES)


def test_the_gate_without_a_champion_is_the_floor(tracking_server: str, trained_run: str) -> None:
    assert evaluate.gate(trained_run, 0.9)[0]
    passed, reason = evaluate.gate(trained_run, 1.01)
    assert not passed and "below MIN_ACCURACY 1.0100" in reason


def test_the_gate_compares_with_the_champion_on_the_same_rows(tracking_server: str) -> None:
    name = f"iris-gate-{uuid.uuid4().hex[:8]}"
    strong, weak = (
        train_run(tracking_server, "gate", rf_n_estimators=10),
        train_run(tracking_server, "gate", rf_n_estimators=1, rf_max_depth=1),
    )
    champion = MlflowClient(tracking_server).get_model_version(name, registry.register(strong, name))
    passed, reason = evaluate.gate(weak, 0.0, champion)
    assert not passed and f"worse than champion v{champion.version}'s" in reason
    client = MlflowClient(tracking_server)
    run = client.get_run(weak)
    [nested] = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{weak}'")
    assert nested.info.run_name == f"champion v{champion.version} on these held-out rows"
    assert nested.data.metrics["accuracy_score"] > run.data.metrics["accuracy_score"]  # the champion's figures
    assert "confusion_matrix.png" in {a.path for a in client.list_artifacts(nested.info.run_id)}
    per_class = client.download_artifacts(weak, "per_class_metrics.csv")  # the candidate's own, not overwritten
    assert open(per_class).read().count("\n") == 1 + len(CLASS_NAMES)
    assert evaluate.gate(strong, 0.0, champion)[0]  # a tie keeps the newer model
