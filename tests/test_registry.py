"""mlops_pipeline/registry.py: versions, the champion alias moved by the gate's decision, and its tags, against a
real MLflow tracking server."""

from __future__ import annotations

import uuid

import pytest
from mlflow import MlflowClient

from conftest import train_run
from mlops_pipeline import registry
from mlops_pipeline.settings import TrainSettings, from_env


@pytest.fixture
def model_name() -> str:
    return f"iris-test-{uuid.uuid4().hex[:8]}"


def new_run(tracking_server: str, **settings: object) -> str:
    """check -> train -> evaluate, as the DAG does it; 10 trees unless told otherwise (held-out accuracy 0.967, as
    the tutorial's 100: the gate's logic is under test here, not the model)."""
    return train_run(tracking_server, "registry-test", **{"rf_n_estimators": 10, **settings})


def promote(run_id: str, name: str, floor: float) -> dict:
    return registry.register_and_promote(
        run_id, from_env(TrainSettings, registered_model_name=name, min_accuracy=floor)
    )


def champion(tracking_server: str, name: str) -> str:
    return registry.champion(name, MlflowClient(tracking_server)).version


def test_gate_promotes_a_good_model_then_refuses_a_bad_one(tracking_server: str, model_name: str) -> None:
    client = MlflowClient(tracking_server)
    good = new_run(tracking_server)
    first = promote(good, model_name, 0.9)
    assert first["promoted"] and "no champion yet" in first["reason"]
    assert champion(tracking_server, model_name) == first["version"]
    assert client.get_run(good).data.tags["gate.decision"] == "promoted"

    # MIN_ACCURACY above what any model can reach: registered, not promoted, the old champion stays.
    strict = new_run(tracking_server)
    second = promote(strict, model_name, 1.01)
    assert not second["promoted"] and "below MIN_ACCURACY" in second["reason"]
    assert champion(tracking_server, model_name) == first["version"]
    version = client.get_model_version(model_name, second["version"])
    assert version.tags["gate.decision"] == "rejected" and "MIN_ACCURACY" in version.tags["gate.reason"]
    assert client.get_run(strict).data.tags["gate.reason"] == second["reason"]


def test_gate_refuses_a_model_worse_than_the_champion(tracking_server: str, model_name: str) -> None:
    good = promote(new_run(tracking_server), model_name, 0.0)
    weak = promote(new_run(tracking_server, rf_n_estimators=1, rf_max_depth=1), model_name, 0.0)
    assert not weak["promoted"] and "worse than champion" in weak["reason"]
    assert champion(tracking_server, model_name) == good["version"]


def test_registering_the_same_run_again_makes_no_duplicate(tracking_server: str, model_name: str) -> None:
    run_id = new_run(tracking_server)
    first = promote(run_id, model_name, 0.9)
    again = promote(run_id, model_name, 0.9)
    assert again["version"] == first["version"] and again["promoted"]
    versions = MlflowClient(tracking_server).search_model_versions(f"name = '{model_name}'")
    assert [v.version for v in versions] == [first["version"]]


def test_with_promotion_challenger_a_passing_model_becomes_the_challenger_then_champion_by_approval(
    tracking_server: str, model_name: str
) -> None:
    """PROMOTION=challenger: the first model is the champion (nothing to challenge); the next that passes gets the
    challenger alias and champion stays; approval moves champion to it and drops the challenger alias; rollback
    moves champion back. Each move is in the history of the versions it reached and left."""
    client = MlflowClient(tracking_server)
    settings = from_env(TrainSettings, registered_model_name=model_name, min_accuracy=0, promotion="challenger")
    first = registry.register_and_promote(new_run(tracking_server), settings)
    second = registry.register_and_promote(new_run(tracking_server), settings)
    assert (first["alias"], second["alias"]) == ("champion", "challenger")
    assert champion(tracking_server, model_name) == first["version"]
    assert registry.champion(model_name, client, "challenger").version == second["version"]
    assert client.get_model_version(model_name, second["version"]).tags["gate.alias"] == "challenger"

    assert registry.promote_challenger(model_name, "ana", "live accuracy 0.97 vs 0.95") == second["version"]
    assert champion(tracking_server, model_name) == second["version"]
    assert registry.champion(model_name, client, "challenger") is None
    moves = registry.history(model_name, second["version"], client)
    assert [(m["alias"], m["action"], m["by"]) for m in moves] == [
        ("challenger", "set", "the gate (mlops_pipeline's register task)"),
        ("champion", "set", "ana"),
        ("challenger", "left", "ana"),
    ]
    assert moves[1]["previous"] == first["version"] and moves[1]["why"] == "live accuracy 0.97 vs 0.95"
    assert registry.history(model_name, first["version"], client)[-1]["action"] == "left"

    assert registry.rollback(model_name, "make rollback") == (second["version"], first["version"])
    assert champion(tracking_server, model_name) == first["version"]
    with pytest.raises(LookupError, match="no challenger to promote"):
        registry.promote_challenger(model_name, "ana", "again")


def test_the_first_champion_has_nothing_to_roll_back_to(
    tracking_server: str, model_name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    promote(new_run(tracking_server), model_name, 0.0)
    with pytest.raises(LookupError, match="first champion"):
        registry.rollback(model_name, "make rollback")
    monkeypatch.setenv("REGISTERED_MODEL_NAME", model_name)  # make rollback's command line says the same, exit 1
    assert registry.main(["rollback"]) == 1
    assert "is its first champion" in capsys.readouterr().err
    promote(new_run(tracking_server), model_name, 0.0)
    assert registry.main(["rollback"]) == 0
    assert "moved from version 2 back to 1" in capsys.readouterr().out
