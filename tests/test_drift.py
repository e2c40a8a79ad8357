"""mlops_pipeline/monitoring/drift.py: Evidently's verdict on served rows against training rows (none for rows like the
training rows, drift for a documented shift), and a whole check against a real tracking server: the window read
once, the figures and the HTML report logged to mlops_monitoring, "not enough data" and a missing reference."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from sklearn.datasets import load_iris

from mlops_pipeline import data, train
from mlops_pipeline.monitoring import drift
from mlops_pipeline.schema import CHAMPION, FEATURE_NAMES, LABEL_COLUMN, MONITORING_EXPERIMENT, ConfigError
from mlops_pipeline.serving.inference_log import InferenceLog
from mlops_pipeline.settings import MonitorSettings, from_env

FEATURES = list(FEATURE_NAMES)


def iris_frame() -> pd.DataFrame:
    x, y = load_iris(return_X_y=True)
    frame = pd.DataFrame(x, columns=FEATURES)
    frame[drift.PREDICTION] = y
    return frame


def served_like(reference: pd.DataFrame, rows: int, seed: int) -> pd.DataFrame:
    """Rows drawn from the reference with a little measurement noise, as drift-demo's normal traffic."""
    rng = np.random.default_rng(seed)
    sample = reference.sample(rows, replace=True, random_state=seed).reset_index(drop=True)
    sample[FEATURES] = (sample[FEATURES] + rng.normal(0, 0.05, (rows, len(FEATURES)))).round(2)
    return sample


def virginica_heavy(reference: pd.DataFrame, rows: int, seed: int) -> pd.DataFrame:
    """drift-demo's documented shift: the traffic's mix of flowers changes to virginica only."""
    return served_like(reference[reference[drift.PREDICTION] == 2], rows, seed)


def test_rows_like_the_training_rows_do_not_drift() -> None:
    reference = iris_frame()
    figures, _ = drift.compare(reference, served_like(reference, 300, seed=7), FEATURES)
    assert figures["dataset_drift"] == 0.0 and figures["drift_share"] < 0.5 and figures["prediction_drift"] == 0.0
    scores = {key.removeprefix("drift_score.") for key in figures if key.startswith("drift_score.")}
    assert scores == {*map(drift.metric_key, FEATURES), drift.PREDICTION}


def test_a_shifted_mix_drifts_in_the_features_and_the_predictions(tmp_path: Path) -> None:
    reference = iris_frame()
    figures, snapshot = drift.compare(reference, virginica_heavy(reference, 300, seed=7), FEATURES)
    assert figures["dataset_drift"] == 1.0 and figures["drift_share"] >= 0.5 and figures["drifted_columns"] >= 2
    assert figures["prediction_drift"] == 1.0 and figures["drift_score.prediction"] < 0.05
    assert figures["drift_score.petal_length_cm"] < 0.05
    snapshot.save_html(str(tmp_path / "r.html"))
    html = (tmp_path / "r.html").read_text()
    assert "<html" in html.lower() and "petal length (cm)" in html
    # Evidently's usage telemetry lives in its UI service: a report never loads it.
    assert "evidently.telemetry" not in sys.modules and "iterative_telemetry" not in sys.modules


def test_the_drift_rule_for_p_values_and_distances() -> None:
    assert drift.drifted(0.01, "K-S p_value", 0.05) and not drift.drifted(0.2, "K-S p_value", 0.05)
    assert drift.drifted(0.2, "Wasserstein distance (normed)", 0.1)
    assert not drift.drifted(0.05, "Wasserstein distance (normed)", 0.1)


def test_metric_keys_are_ones_mlflow_accepts() -> None:
    assert drift.metric_key("petal length (cm)") == "petal_length_cm"
    assert drift.metric_key(drift.PREDICTION) == "prediction"


# --- A whole check against a real tracking server -------------------------------------------------------------


def monitor_settings(directory: Path, min_rows: int) -> MonitorSettings:
    return from_env(MonitorSettings, inference_log_dir=directory, monitor_min_rows=min_rows, monitor_settle_seconds=0)


def log_rows(directory: Path, name: str, version: str, run_id: str, frame: pd.DataFrame) -> None:
    log = InferenceLog(directory)
    for i, row in enumerate(frame[FEATURES].to_numpy().tolist()):
        log.record(f"r{i}", name, version, run_id, [row], [int(frame[drift.PREDICTION].iloc[i])])
    log.close()


def checks(name: str) -> list:
    return MlflowClient().search_runs(
        [mlflow.get_experiment_by_name(MONITORING_EXPERIMENT).experiment_id],
        filter_string=f"tags.model_name = '{name}'",
        order_by=["attributes.start_time ASC"],
    )


@pytest.mark.slow
def test_a_check_reads_each_window_once_and_logs_figures_and_report(
    champion: tuple[str, str, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    name, version, run_id = champion
    cfg = monitor_settings(tmp_path, 100)
    reference = data.logged_rows(run_id).rename(columns={LABEL_COLUMN: drift.PREDICTION})

    with caplog.at_level(logging.INFO, logger="mlops_pipeline.monitoring.drift"):
        empty = drift.monitor(cfg)
    assert empty["status"] == "not enough data" and empty["rows"] == 0
    assert any("not enough data" in r.getMessage() for r in caplog.records)

    log_rows(tmp_path, name, version, run_id, served_like(reference, 200, seed=3))
    log_rows(tmp_path, name, "999", run_id, virginica_heavy(reference, 500, seed=4))  # another version: not read
    first = drift.monitor(cfg)  # close() wrote the records: they are older than the check's start
    assert first["status"] == "no drift" and first["rows"] == 200

    log_rows(tmp_path, name, version, run_id, virginica_heavy(reference, 150, seed=5))
    second = drift.monitor(cfg)
    assert second["status"] == "drift" and second["rows"] == 150  # only what arrived after the first check
    assert second["since"] == first["until"]

    # A window of one's own choosing (the DAG's `since`): both batches, and the last check's end moves on.
    again = drift.monitor(cfg, since=datetime.fromisoformat(first["since"]))
    assert again["rows"] == 350 and again["status"] == "drift"
    with pytest.raises(ConfigError, match="not before its end"):
        drift.monitor(cfg, since=datetime.now(UTC) + timedelta(hours=1))

    runs = checks(name)[:2]
    assert [r.data.metrics["dataset_drift"] for r in runs] == [0.0, 1.0]
    assert runs[1].data.metrics["prediction_drift"] == 1.0 and runs[1].data.metrics["rows"] == 150
    assert runs[1].data.tags["model_version"] == version and runs[1].data.tags["window_start"] == first["until"]
    html = mlflow.artifacts.load_text(f"runs:/{runs[1].info.run_id}/{drift.REPORT_ARTIFACT}")
    assert "<html" in html.lower() and "petal width (cm)" in html


@pytest.mark.slow
def test_a_version_without_reference_fails_only_its_check(
    tracking_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model from before runs logged their training rows: the check says so and fails; nothing is logged."""
    name = f"noref-{datetime.now(UTC):%H%M%S%f}"
    monkeypatch.setenv("REGISTERED_MODEL_NAME", name)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_server)
    mlflow.set_tracking_uri(tracking_server)
    x, y = load_iris(return_X_y=True)
    model = train.fit(x, y, train.TrainConfig(n_estimators=100, max_depth=3))
    mlflow.set_experiment("old-runs")
    with mlflow.start_run() as run:
        mlflow.sklearn.log_model(
            model, name="model", registered_model_name=name, skops_trusted_types=train.SKOPS_TRUSTED_TYPES
        )
    MlflowClient().set_registered_model_alias(name, CHAMPION, "1")
    log_rows(tmp_path, name, "1", run.info.run_id, served_like(iris_frame(), 20, seed=1))
    with pytest.raises(data.MissingReferenceError, match=run.info.run_id):
        drift.monitor(monitor_settings(tmp_path, 10))
    assert checks(name) == []


def test_no_champion_is_nothing_to_check(tracking_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REGISTERED_MODEL_NAME", "never-registered")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_server)
    assert drift.monitor(monitor_settings(tmp_path, 1))["status"] == "no champion"
