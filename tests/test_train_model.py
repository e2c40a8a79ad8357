"""airflow/models/train_model.py against a real MLflow tracking server."""

from __future__ import annotations

import importlib.metadata
import time

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

import train_model


def test_run_logs_params_metrics_and_a_model(tracking_server: str, trained_run: str) -> None:
    run = MlflowClient(tracking_server).get_run(trained_run)
    assert run.info.status == "FINISHED"
    assert run.data.params["n_estimators"] == str(train_model.TrainConfig().n_estimators)
    assert run.data.params["max_depth"] == "3"
    assert run.data.metrics["accuracy"] >= 0.9
    assert run.outputs.model_outputs, "the run lists no logged model"


def test_logged_model_loads_and_predicts_iris(tracking_server: str, trained_run: str) -> None:
    mlflow.set_tracking_uri(tracking_server)
    model = mlflow.pyfunc.load_model(f"runs:/{trained_run}/model")
    # The seed's payload row is a setosa (class 0).
    assert list(model.predict(np.array([[5.1, 3.5, 1.4, 0.2]]))) == [0]
    x, y = train_model.load_data()
    assert (model.predict(x) == y).mean() > 0.95


def test_model_signature_accepts_the_seed_payload_shape(tracking_server: str, trained_run: str) -> None:
    mlflow.set_tracking_uri(tracking_server)
    info = mlflow.models.get_model_info(f"runs:/{trained_run}/model")
    inputs = info.signature.inputs.to_dict()
    assert inputs[0]["type"] == "tensor" and list(inputs[0]["tensor-spec"]["shape"]) == [-1, 4]


def test_hyper_parameters_are_overridable(tracking_server: str) -> None:
    cfg = train_model.config_from_env({"RF_N_ESTIMATORS": "7", "RF_MAX_DEPTH": "none"})
    assert cfg.n_estimators == 7 and cfg.max_depth is None
    run_id = train_model.run(tracking_server, "test-overrides", cfg)
    params = MlflowClient(tracking_server).get_run(run_id).data.params
    assert params["n_estimators"] == "7" and params["max_depth"] == "None"


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"RF_N_ESTIMATORS": "abc"}, "RF_N_ESTIMATORS"),
        ({"RF_N_ESTIMATORS": "0"}, "RF_N_ESTIMATORS"),
        ({"RF_MAX_DEPTH": "-3"}, "RF_MAX_DEPTH"),
        ({"RF_MAX_DEPTH": "3.5"}, "RF_MAX_DEPTH"),
    ],
)
def test_bad_settings_name_the_setting(env: dict[str, str], named: str) -> None:
    with pytest.raises(train_model.ConfigError, match=named):
        train_model.config_from_env(env)


def test_unreachable_tracking_server_fails_fast_naming_the_setting() -> None:
    started = time.monotonic()
    with pytest.raises(train_model.ConfigError, match="MLFLOW_TRACKING_URI"):
        train_model.run("http://127.0.0.1:9", "x", train_model.TrainConfig())
    assert time.monotonic() - started < 10


def test_pip_requirements_pin_the_installed_versions() -> None:
    """The served model needs MLflow, scikit-learn, skops and numpy at exactly the versions that trained it."""
    pinned = dict(r.split("==", 1) for r in train_model.pip_requirements())
    assert set(pinned) == {"mlflow", "scikit-learn", "skops", "numpy"}
    for package, pin in pinned.items():
        assert pin == importlib.metadata.version(package), package
