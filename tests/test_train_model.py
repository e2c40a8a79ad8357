"""airflow/models/train_model.py against a real MLflow tracking server."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from sklearn.datasets import load_iris
from sklearn.model_selection import train_test_split

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


IRIS = load_iris()
IRIS_SPLIT = train_test_split(IRIS.data, IRIS.target, test_size=0.2, random_state=42, stratify=IRIS.target)
COLUMNS = [*IRIS.feature_names, "target"]


def csv_lines(x: np.ndarray, y: np.ndarray) -> list[str]:
    """Rows as the data file holds them, written here without train_model."""
    return [",".join([*(repr(float(v)) for v in row), str(label)]) for row, label in zip(x, y, strict=True)]


def iris_csv_lines() -> list[str]:
    return [",".join(COLUMNS), *csv_lines(IRIS.data, IRIS.target)]


def appended_rows(count: int) -> tuple[np.ndarray, np.ndarray]:
    """Labeled rows as a retraining would append them: Iris rows, slightly moved."""
    rng = np.random.default_rng(7)
    picked = rng.integers(0, len(IRIS.data), count)
    return np.round(IRIS.data[picked] + rng.normal(0, 0.2, (count, 4)), 2), IRIS.target[picked]


def test_a_missing_data_file_is_seeded_with_exactly_iris(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "volume" / "iris.csv"
    monkeypatch.setenv("TRAINING_DATA_PATH", str(path))
    x, y = train_model.load_data()
    assert x.dtype == np.float64 and np.array_equal(x, IRIS.data)  # the same values in the same order
    assert np.array_equal(y, IRIS.target)
    assert list(train_model.FEATURE_NAMES) == IRIS.feature_names and train_model.LABEL_COLUMN == "target"
    assert path.read_text().splitlines()[0] == ",".join(COLUMNS)
    assert os.listdir(path.parent) == ["iris.csv"]  # no temporary file left beside it
    # An existing file is read as it is, never seeded again.
    with path.open("a") as f:
        f.write("5.0,3.4,1.5,0.2,0\n")
    assert len(train_model.load_data()[0]) == len(IRIS.data) + 1


def test_appended_rows_never_move_a_row_to_the_other_side() -> None:
    cfg = train_model.TrainConfig()
    # The seeded rows split exactly as Iris always did: the first run trains the model it always trained.
    for got, expected in zip(train_model.split(IRIS.data, IRIS.target, cfg), IRIS_SPLIT, strict=True):
        assert np.array_equal(got, expected)
    extra_x, extra_y = appended_rows(100)
    x, y = np.concatenate([IRIS.data, extra_x]), np.concatenate([IRIS.target, extra_y])
    x_train, x_test, y_train, y_test = train_model.split(x, y, cfg)
    assert len(x_test) > len(IRIS_SPLIT[1]) and len(x_train) > len(IRIS_SPLIT[0])  # new rows on both sides
    for rows in (150, 151, 200):
        before = train_model.split(x[:rows], y[:rows], cfg)
        for earlier, later in zip(before, (x_train, x_test, y_train, y_test), strict=True):
            assert np.array_equal(later[: len(earlier)], earlier), rows


def column_dropped(lines: list[str]) -> list[str]:
    return [",".join(line.split(",")[:3] + line.split(",")[4:]) for line in lines]


def column_added(lines: list[str]) -> list[str]:
    return [f"{lines[0]},colour"] + [f"{line},red" for line in lines[1:]]


def row_replaced(row: int, text: str) -> Callable[[list[str]], list[str]]:
    return lambda lines: [*lines[:row], text, *lines[row + 1 :]]


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (column_dropped, r"header: missing columns \['petal width \(cm\)'\], unexpected columns \[\]"),
        (column_added, r"header: missing columns \[\], unexpected columns \['colour'\]"),
        (row_replaced(4, "5.0,abc,1.4,0.2,0"), r"row 4 \(line 5\): sepal width \(cm\) is 'abc', not a finite number"),
        (row_replaced(9, "5.0,3.1,,0.2,1"), r"row 9 \(line 10\): petal length \(cm\) is '', not a finite number"),
        (row_replaced(7, "5.0,3.1,1.4,0.2,3"), r"row 7 \(line 8\): target is '3', not one of 0, 1, 2"),
        (row_replaced(150, "6.1,2.8,4.7,1.2,1.0"), r"row 150 \(line 151\): target is '1.0', not one of 0, 1, 2"),
    ],
)
def test_a_malformed_data_file_is_refused_naming_row_and_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, edit: Callable[[list[str]], list[str]], problem: str
) -> None:
    path = tmp_path / "iris.csv"
    path.write_text("\n".join(edit(iris_csv_lines())) + "\n")
    before = path.read_bytes()
    monkeypatch.setenv("TRAINING_DATA_PATH", str(path))
    with pytest.raises(train_model.DataError) as refused:
        train_model.load_data()
    assert str(refused.value).startswith(f"{path}: ")
    assert re.search(problem, str(refused.value)), str(refused.value)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["iris.csv"]


def test_a_run_logs_its_training_rows_as_input_and_reference(
    tracking_server: str, trained_run: str, training_data: Path
) -> None:
    run = MlflowClient(tracking_server).get_run(trained_run)
    [logged] = run.inputs.dataset_inputs
    assert logged.dataset.name == "iris_training_data"
    assert {tag.key: tag.value for tag in logged.tags}["mlflow.data.context"] == "training"
    assert json.loads(logged.dataset.source) == {"uri": training_data.as_uri()}
    assert json.loads(logged.dataset.profile)["num_rows"] == len(IRIS_SPLIT[0])
    assert run.data.params["data_rows"] == str(len(IRIS.data))
    mlflow.set_tracking_uri(tracking_server)
    reference = train_model.load_reference(trained_run)
    assert list(reference.columns) == COLUMNS
    assert np.array_equal(reference[IRIS.feature_names].to_numpy(), IRIS_SPLIT[0])
    assert np.array_equal(reference["target"].to_numpy(), IRIS_SPLIT[2])


def test_load_reference_of_a_run_without_one_says_so(tracking_server: str) -> None:
    client = MlflowClient(tracking_server)
    experiment = client.get_experiment_by_name("test-no-reference") or client.get_experiment(
        client.create_experiment("test-no-reference")
    )
    run_id = client.create_run(experiment.experiment_id).info.run_id  # as a run trained before this change
    mlflow.set_tracking_uri(tracking_server)
    with pytest.raises(train_model.MissingReferenceError, match=f"run {run_id} has no reference/train.csv"):
        train_model.load_reference(run_id)


def test_a_run_keeps_its_held_out_rows_when_rows_are_appended(
    tracking_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "iris.csv"
    monkeypatch.setenv("TRAINING_DATA_PATH", str(path))
    run_id = train_model.run(tracking_server, "test-appends", train_model.TrainConfig(n_estimators=5))
    x_test, y_test = train_model.held_out(run_id)
    assert np.array_equal(x_test, IRIS_SPLIT[1]) and np.array_equal(y_test, IRIS_SPLIT[3])

    with path.open("a") as f:
        f.write("\n".join(csv_lines(*appended_rows(40))) + "\n")
    assert len(train_model.load_data()[0]) == len(IRIS.data) + 40
    after = train_model.held_out(run_id)
    assert np.array_equal(after[0], x_test) and np.array_equal(after[1], y_test)

    # A changed row (not an appended one) is refused: the run's held-out rows can no longer be told.
    text = path.read_text()
    changed = text.replace("\n4.9,3.0,1.4,0.2,0\n", "\n4.9,3.0,1.4,0.3,0\n", 1)  # Iris's second row
    assert changed != text
    path.write_text(changed)
    with pytest.raises(train_model.DataError, match=f"{run_id} split: rows were changed or removed"):
        train_model.held_out(run_id)
