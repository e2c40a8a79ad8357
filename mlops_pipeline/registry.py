"""Versions and aliases: register a run's model, and move the `champion` alias (which the model-server follows) to
it when the gate (evaluate.gate) passes it. Every decision is tagged on the version and the run.

Safe to repeat: a run is registered at most once, and the alias move is the last step, so a failure midway leaves
the old champion in place and a retry finishes the job.
"""

from __future__ import annotations

import logging
from typing import Any

from mlops_pipeline import evaluate
from mlops_pipeline.schema import CHAMPION, MODEL_ARTIFACT
from mlops_pipeline.settings import TrainSettings, from_env

log = logging.getLogger(__name__)


def champion(name: str, client: Any = None) -> Any:  # noqa: ANN401 - MLflow's ModelVersion, or None
    """The version the `champion` alias points at, or None before the first promotion."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        return (client or MlflowClient()).get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def register(run_id: str, name: str) -> str:
    """The run's model as a version of `name` (the one registered before, if any); returns the version."""
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient()
    existing = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    if existing:
        return min(existing, key=lambda v: int(v.version)).version
    # MLflow 3 keeps the model as a LoggedModel linked to the run; register that directly.
    run = client.get_run(run_id)
    outputs = run.outputs.model_outputs if run.outputs else []
    source = f"models:/{outputs[0].model_id}" if outputs else f"runs:/{run_id}/{MODEL_ARTIFACT}"
    return mlflow.register_model(source, name).version


def register_and_promote(run_id: str, settings: TrainSettings | None = None) -> dict:
    """Register the run's model; move `champion` to it only if it passes the gate (the DAG's `register` task)."""
    import mlflow
    from mlflow import MlflowClient

    settings = settings or from_env(TrainSettings)
    name, client = settings.registered_model_name, MlflowClient()
    version = register(run_id, name)
    current = champion(name, client)
    if current is not None and current.version == version:
        promoted, reason = True, f"version {version} is already the champion"
    else:
        promoted, reason = evaluate.gate(run_id, settings.min_accuracy, current)
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, version)
    decision = "promoted" if promoted else "rejected"
    for key, value in {"gate.decision": decision, "gate.reason": reason}.items():
        client.set_model_version_tag(name, version, key, value)
        client.set_tag(run_id, key, value)
    client.set_tag(run_id, "registered_model_version", f"{name}/{version}")
    log.info("%s/%s %s: %s", name, version, decision, reason)
    accuracy = mlflow.get_run(run_id).data.metrics[evaluate.METRIC]
    return {"model": name, "version": version, "promoted": promoted, "reason": reason, "accuracy": accuracy}
