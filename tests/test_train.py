"""mlops_pipeline/train.py against a real MLflow tracking server: the run's params, model, and the rows it logs."""

from __future__ import annotations

import importlib.metadata
import json
import time

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from sklearn.datasets import load_iris
from sklearn.model_selection import train_test_split

from conftest import train_run
from mlops_pipeline import data, pipeline, train
from mlops_pipeline.schema import HELD_OUT_ARTIFACT, ConfigError
from mlops_pipeline.settings import TrainSettings, from_env

IRIS = load_iris()
IRIS_SPLIT = train_test_split(IRIS.data, IRIS.target, test_size=0.2, random_state=42, stratify=IRIS.target)
COLUMNS = [*IRIS.feature_names, "target"]


def test_run_logs_params_metrics_and_a_model(tracking_server: str, trained_run: str) -> None:
    run = MlflowClient(tracking_server).get_run(trained_run)
    assert run.info.status == "FINISHED"
    assert run.data.params["n_estimators"] == "100"
    assert run.data.params["max_depth"] == "3"
    assert run.data.metrics["accuracy_score"] >= 0.9
    assert run.outputs.model_outputs, "the run lists no logged model"


def test_logged_model_loads_and_predicts_iris(tracking_server: str, trained_run: str) -> None:
    mlflow.set_tracking_uri(tracking_server)
    model = mlflow.pyfunc.load_model(f"runs:/{trained_run}/model")
    # The seed's payload row is a setosa (class 0).
    assert list(model.predict(np.array([[5.1, 3.5, 1.4, 0.2]]))) == [0]
    assert (model.predict(IRIS.data) == IRIS.target).mean() > 0.95


def test_model_signature_accepts_the_seed_payload_shape(tracking_server: str, trained_run: str) -> None:
    mlflow.set_tracking_uri(tracking_server)
    info = mlflow.models.get_model_info(f"runs:/{trained_run}/model")
    inputs = info.signature.inputs.to_dict()
    assert inputs[0]["type"] == "tensor" and list(inputs[0]["tensor-spec"]["shape"]) == [-1, 4]


def test_hyper_parameters_come_from_the_settings(tracking_server: str) -> None:
    run_id = train_run(tracking_server, "test-overrides", rf_n_estimators="7", rf_max_depth="none")
    params = MlflowClient(tracking_server).get_run(run_id).data.params
    assert params["n_estimators"] == "7" and params["max_depth"] == "None"


def test_unreachable_tracking_server_fails_fast_naming_the_setting() -> None:
    started = time.monotonic()
    with pytest.raises(ConfigError, match="MLFLOW_TRACKING_URI"):
        pipeline.run(from_env(TrainSettings, mlflow_tracking_uri="http://127.0.0.1:9"))
    assert time.monotonic() - started < 10


def test_pip_requirements_pin_the_installed_versions() -> None:
    """The served model needs MLflow, scikit-learn, skops and numpy at exactly the versions that trained it."""
    pinned = dict(r.split("==", 1) for r in train.pip_requirements())
    assert set(pinned) == {"mlflow", "scikit-learn", "skops", "numpy"}
    for package, pin in pinned.items():
        assert pin == importlib.metadata.version(package), package


def test_a_run_logs_its_training_and_held_out_rows(tracking_server: str, trained_run: str, training_data) -> None:
    run = MlflowClient(tracking_server).get_run(trained_run)
    contexts = [
        ({tag.key: tag.value for tag in i.tags}.get("mlflow.data.context"), i.dataset)
        for i in run.inputs.dataset_inputs
    ]
    inputs = {context: dataset for context, dataset in contexts if context}  # mlflow.models.evaluate adds its own
    assert inputs["training"].name == "iris_training_data" and inputs["evaluation"].name == "iris_held_out"
    assert json.loads(inputs["training"].source) == {"uri": training_data.as_uri()}
    assert json.loads(inputs["training"].profile)["num_rows"] == len(IRIS_SPLIT[0])
    assert json.loads(inputs["evaluation"].profile)["num_rows"] == len(IRIS_SPLIT[1])
    mlflow.set_tracking_uri(tracking_server)
    for artifact, x, y in ((None, IRIS_SPLIT[0], IRIS_SPLIT[2]), (HELD_OUT_ARTIFACT, IRIS_SPLIT[1], IRIS_SPLIT[3])):
        rows = data.logged_rows(trained_run, *([artifact] if artifact else []))
        assert list(rows.columns) == COLUMNS
        assert np.array_equal(rows[IRIS.feature_names].to_numpy(), x) and np.array_equal(rows["target"], y)


def test_logged_rows_of_a_run_without_them_says_so(tracking_server: str) -> None:
    client = MlflowClient(tracking_server)
    experiment = client.get_experiment_by_name("test-no-reference") or client.get_experiment(
        client.create_experiment("test-no-reference")
    )
    run_id = client.create_run(experiment.experiment_id).info.run_id  # as a run trained before runs logged rows
    mlflow.set_tracking_uri(tracking_server)
    with pytest.raises(data.MissingReferenceError, match=f"run {run_id} has no reference/train.csv"):
        data.logged_rows(run_id)


def test_a_run_keeps_its_held_out_rows_when_rows_are_appended(tracking_server: str, tmp_path) -> None:
    path = tmp_path / "iris.csv"
    run_id = train_run(tracking_server, "test-appends", rf_n_estimators=5, training_data_path=str(path))
    mlflow.set_tracking_uri(tracking_server)
    before = data.logged_rows(run_id, HELD_OUT_ARTIFACT)
    x, y = data.load(path)
    data.append(path, data.as_frame(x[:40] + 0.1, y[:40]))
    assert len(data.load(path)[0]) == len(IRIS.data) + 40
    assert data.logged_rows(run_id, HELD_OUT_ARTIFACT).equals(before)
