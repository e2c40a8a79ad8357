"""Versions and aliases: register a run's model, and move the `champion` alias (which the model-server follows) to
it when the gate (evaluate.gate) passes it; with PROMOTION=challenger the `challenger` alias instead, and champion
moves later, by a person's approval (docs/challenger.md). Every decision is tagged on the version and the run, and
every alias move is added to the history tag (HISTORY) of the versions it leaves and reaches: who, when, why.

Safe to repeat: a run is registered at most once, and the alias move is the last step, so a failure midway leaves
the old champion in place and a retry finishes the job.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from mlops_pipeline import evaluate
from mlops_pipeline.schema import CHALLENGER, CHAMPION, MODEL_ARTIFACT
from mlops_pipeline.settings import Settings, TrainSettings, from_env

log = logging.getLogger(__name__)
HISTORY = "alias.history"  # a version's tag: a JSON list of the alias moves that reached or left it


def champion(name: str, client: Any = None, alias: str = CHAMPION) -> Any:  # noqa: ANN401 - a ModelVersion, or None
    """The version the alias (`champion` unless told) points at, or None when it points nowhere."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        return (client or MlflowClient()).get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def history(name: str, version: str, client: Any = None) -> list[dict]:  # noqa: ANN401
    """The alias moves that reached or left a version, oldest first."""
    from mlflow import MlflowClient

    tags = (client or MlflowClient()).get_model_version(name, version).tags
    return json.loads(tags.get(HISTORY, "[]"))


def move_alias(name: str, alias: str, version: str | None, by: str, why: str, client: Any = None) -> str | None:  # noqa: ANN401
    """Point `alias` at `version` (None: remove it) and add the move to both versions' history; returns the version
    it pointed at before (None: nowhere). The move comes first: a failure afterwards loses a history line, never
    the move."""
    from mlflow import MlflowClient

    client = client or MlflowClient()
    before = champion(name, client, alias)
    previous = before.version if before is not None else None
    if version is not None:
        client.set_registered_model_alias(name, alias, version)
    elif previous is not None:
        client.delete_registered_model_alias(name, alias)
    event = {"alias": alias, "at": datetime.now(UTC).isoformat(timespec="seconds"), "by": by, "why": why}
    if previous is not None and previous != version:
        record(name, previous, {**event, "action": "left", "to": version}, client)
    if version is not None and previous != version:
        record(name, version, {**event, "action": "set", "previous": previous}, client)
    return previous


def record(name: str, version: str, event: dict, client: Any) -> None:  # noqa: ANN401
    client.set_model_version_tag(name, version, HISTORY, json.dumps([*history(name, version, client), event]))


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
    alias = None
    if current is not None and current.version == version:
        promoted, reason = True, f"version {version} is already the champion"
    else:
        promoted, reason = evaluate.gate(run_id, settings.min_accuracy, current)
        if promoted:  # the first model ever becomes the champion: there is nothing to challenge yet
            alias = CHALLENGER if settings.promotion == "challenger" and current is not None else CHAMPION
            move_alias(name, alias, version, "the gate (mlops_pipeline's register task)", reason, client)
    decision = "promoted" if promoted else "rejected"
    for key, value in {"gate.decision": decision, "gate.reason": reason, "gate.alias": alias or "-"}.items():
        client.set_model_version_tag(name, version, key, value)
        client.set_tag(run_id, key, value)
    client.set_tag(run_id, "registered_model_version", f"{name}/{version}")
    log.info("%s/%s %s (alias %s): %s", name, version, decision, alias or "unchanged", reason)
    accuracy = mlflow.get_run(run_id).data.metrics[evaluate.METRIC]
    result = {"model": name, "version": version, "promoted": promoted, "reason": reason, "accuracy": accuracy}
    return {**result, "alias": alias or (CHAMPION if promoted else None)}


def promote_challenger(name: str, by: str, why: str, client: Any = None) -> str:  # noqa: ANN401
    """The challenger becomes the champion (after a person's approval); its alias goes. Returns its version."""
    from mlflow import MlflowClient

    client = client or MlflowClient()
    challenger = champion(name, client, CHALLENGER)
    if challenger is None:
        raise LookupError(f"'{name}' has no challenger to promote")
    move_alias(name, CHAMPION, challenger.version, by, why, client)
    move_alias(name, CHALLENGER, None, by, f"promoted to champion: {why}", client)
    return challenger.version


def rollback(name: str, by: str, client: Any = None) -> tuple[str, str]:  # noqa: ANN401
    """Point `champion` back at the version it had before its last move; returns (from, to)."""
    from mlflow import MlflowClient

    client = client or MlflowClient()
    current = champion(name, client)
    if current is None:
        raise LookupError(f"'{name}' has no champion to roll back")
    moves = [e for e in history(name, current.version, client) if e["alias"] == CHAMPION and e["action"] == "set"]
    previous = moves[-1].get("previous") if moves else None
    if not previous:
        raise LookupError(f"version {current.version} of '{name}' is its first champion: there is none to go back to")
    move_alias(name, CHAMPION, previous, by, f"rollback from version {current.version}", client)
    return current.version, previous


def main(argv: list[str] | None = None) -> int:
    """`python -m mlops_pipeline.registry rollback` (make rollback runs it in the scheduler's container)."""
    parser = argparse.ArgumentParser(description="Move the registry's champion alias back to its previous version.")
    parser.add_argument("action", choices=["rollback"])
    parser.add_argument("--by", default="make rollback", help="who or what moves it (the alias history says)")
    args = parser.parse_args(argv)
    name = from_env(Settings).registered_model_name
    try:
        was, now = rollback(name, args.by)
    except LookupError as exc:
        print(f"rollback: {exc}", file=sys.stderr)
        return 1
    print(f"rollback: {name}'s champion moved from version {was} back to {now}; the model-server follows it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
