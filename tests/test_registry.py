"""The pipeline's data check, evaluation artifacts and registry quality gate, against a real MLflow server."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from mlflow import MlflowClient

import train_model


@pytest.fixture
def model_name() -> str:
    return f"iris-test-{uuid.uuid4().hex[:8]}"


def new_run(tracking_server: str, **cfg: int) -> str:
    """check -> train -> evaluate, as the DAG does it."""
    return train_model.run(tracking_server, "registry-test", train_model.TrainConfig(**cfg))


def champion(tracking_server: str, name: str) -> str:
    return MlflowClient(tracking_server).get_model_version_by_alias(name, train_model.CHAMPION).version


def test_check_data_accepts_iris_and_names_each_problem() -> None:
    x, y = train_model.load_data()
    assert train_model.check_data(x, y) == {"rows": 150, "features": 4, "classes": 3}
    gaps = x.copy()
    gaps[3, 2] = np.nan
    with pytest.raises(train_model.DataError, match="1 missing feature values"):
        train_model.check_data(gaps, y)
    with pytest.raises(train_model.DataError, match="virginica"):
        train_model.check_data(x[y != 2], y[y != 2])
    with pytest.raises(train_model.DataError, match="4 feature columns"):
        train_model.check_data(x[:, :3], y)


def test_evaluation_logs_per_class_metrics_and_images(tracking_server: str, trained_run: str) -> None:
    client = MlflowClient(tracking_server)
    metrics = client.get_run(trained_run).data.metrics
    for name in train_model.CLASS_NAMES:
        assert {f"precision_{name}", f"recall_{name}", f"f1_{name}"} <= set(metrics)
    artifacts = {a.path: a.file_size for a in client.list_artifacts(trained_run)}
    assert artifacts.get("confusion_matrix.png", 0) > 1000
    assert artifacts.get("feature_importance.png", 0) > 1000


def test_gate_promotes_a_good_model_then_refuses_a_bad_one(tracking_server: str, model_name: str) -> None:
    client = MlflowClient(tracking_server)
    good = new_run(tracking_server)
    first = train_model.register_and_promote(good, model_name, min_accuracy=0.9)
    assert first["promoted"] and "no champion yet" in first["reason"]
    assert champion(tracking_server, model_name) == first["version"]
    assert client.get_run(good).data.tags["gate.decision"] == "promoted"

    # MIN_ACCURACY above what any model can reach: registered, not promoted, the old champion stays.
    strict = new_run(tracking_server)
    second = train_model.register_and_promote(strict, model_name, min_accuracy=1.01)
    assert not second["promoted"] and "below MIN_ACCURACY" in second["reason"]
    assert champion(tracking_server, model_name) == first["version"]
    version = client.get_model_version(model_name, second["version"])
    assert version.tags["gate.decision"] == "rejected" and "MIN_ACCURACY" in version.tags["gate.reason"]
    assert client.get_run(strict).data.tags["gate.reason"] == second["reason"]


def test_gate_refuses_a_model_worse_than_the_champion(tracking_server: str, model_name: str) -> None:
    good = train_model.register_and_promote(new_run(tracking_server), model_name, min_accuracy=0.0)
    weak = train_model.register_and_promote(
        new_run(tracking_server, n_estimators=1, max_depth=1), model_name, min_accuracy=0.0
    )
    assert not weak["promoted"] and "worse than champion" in weak["reason"]
    assert champion(tracking_server, model_name) == good["version"]


def test_registering_the_same_run_again_makes_no_duplicate(tracking_server: str, model_name: str) -> None:
    run_id = new_run(tracking_server)
    first = train_model.register_and_promote(run_id, model_name, min_accuracy=0.9)
    again = train_model.register_and_promote(run_id, model_name, min_accuracy=0.9)
    assert again["version"] == first["version"] and again["promoted"]
    versions = MlflowClient(tracking_server).search_model_versions(f"name = '{model_name}'")
    assert [v.version for v in versions] == [first["version"]]


@pytest.mark.parametrize(("raw", "floor"), [("0", 0.0), ("0.9", 0.9), ("1.01", 1.01), ("1.5", 1.5)])
def test_min_accuracy_takes_an_accuracy_or_a_floor_nothing_passes(raw: str, floor: float) -> None:
    assert train_model.min_accuracy_from_env({"MIN_ACCURACY": raw}) == floor


@pytest.mark.parametrize("raw", ["abc", "-0.1", "nan", "2"])
def test_bad_min_accuracy_names_the_setting(raw: str) -> None:
    with pytest.raises(train_model.ConfigError, match="MIN_ACCURACY"):
        train_model.min_accuracy_from_env({"MIN_ACCURACY": raw})


def test_bad_model_name_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REGISTERED_MODEL_NAME", "bad name'; --")
    with pytest.raises(train_model.ConfigError, match="REGISTERED_MODEL_NAME"):
        train_model.model_name_from_env()
