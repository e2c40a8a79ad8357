"""mlops_pipeline/settings.py: each key read once, its default, and a refusal that names the key."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mlops_pipeline.schema import ConfigError
from mlops_pipeline.settings import MonitorSettings, ServerSettings, TrackingSettings, TrainSettings, from_env

KEYS = (
    "RF_N_ESTIMATORS", "RF_MAX_DEPTH", "MIN_ACCURACY", "REGISTERED_MODEL_NAME", "MONITOR_MIN_ROWS",
    "MONITOR_SETTLE_SECONDS", "INFERENCE_LOG", "INFERENCE_LOG_DIR", "INFERENCE_LOG_DB", "MODEL_SERVER_METRICS",
    "INFERENCE_LOG_FLUSH_SECONDS", "INFERENCE_LOG_RETENTION_DAYS", "INFERENCE_LOG_MAX_MB", "MODEL_POLL_SECONDS",
    "LATEST_MODEL_RUN_ID", "MODEL_URI", "MODEL_SERVER_WORKERS", "MODEL_SERVER_PORT", "MLFLOW_DATA_DIR", "MLFLOW_AUTH",
    "MLFLOW_WORKERS",
)  # fmt: skip


@pytest.fixture(autouse=True)
def clean(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in KEYS:
        monkeypatch.delenv(key, raising=False)


def test_defaults_are_the_original_tutorials() -> None:
    train = from_env(TrainSettings)
    assert (train.rf_n_estimators, train.rf_max_depth, train.min_accuracy) == (100, 3, 0.9)
    assert train.registered_model_name == "iris-classifier"
    monitor = from_env(MonitorSettings)
    assert (monitor.monitor_min_rows, monitor.monitor_settle_seconds) == (100, 5.0)
    server = from_env(ServerSettings)
    assert server.inference_log and server.model_server_metrics and server.model_server_compiled


def test_an_empty_value_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """What compose passes for a key .env leaves out (`${KEY:-}`)."""
    monkeypatch.setenv("MIN_ACCURACY", "")
    monkeypatch.setenv("RF_N_ESTIMATORS", "")
    assert (from_env(TrainSettings).min_accuracy, from_env(TrainSettings).rf_n_estimators) == (0.9, 100)


def test_values_from_the_environment_and_given_ones(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RF_N_ESTIMATORS", "7")
    monkeypatch.setenv("RF_MAX_DEPTH", "none")
    monkeypatch.setenv("TRAINING_DATA_PATH", str(tmp_path / "d.csv"))
    settings = from_env(TrainSettings, min_accuracy="1.5")
    assert (settings.rf_n_estimators, settings.rf_max_depth, settings.min_accuracy) == (7, None, 1.5)
    assert settings.data_path == tmp_path / "d.csv"


def test_the_data_file_defaults_to_airflow_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("TRAINING_DATA_PATH")
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    assert from_env(TrainSettings).data_path == tmp_path / "data" / "iris.csv"


@pytest.mark.parametrize(
    ("cls", "key", "value", "accepted"),
    [
        (TrainSettings, "RF_N_ESTIMATORS", "abc", "a positive integer"),
        (TrainSettings, "RF_N_ESTIMATORS", "0", "a positive integer"),
        (TrainSettings, "RF_MAX_DEPTH", "-3", "a positive integer or 'none'"),
        (TrainSettings, "RF_MAX_DEPTH", "3.5", "a positive integer or 'none'"),
        (TrainSettings, "MIN_ACCURACY", "abc", "a number from 0 to 1"),
        (TrainSettings, "MIN_ACCURACY", "-0.1", "a number from 0 to 1"),
        (TrainSettings, "MIN_ACCURACY", "nan", "a number from 0 to 1"),
        (TrainSettings, "MIN_ACCURACY", "2", "a number from 0 to 1"),
        (TrainSettings, "REGISTERED_MODEL_NAME", "bad name'; --", "letters, digits"),
        (MonitorSettings, "MONITOR_MIN_ROWS", "0", "a positive integer"),
        (MonitorSettings, "MONITOR_SETTLE_SECONDS", "-1", "[0, 3600]"),
        (MonitorSettings, "MONITOR_SETTLE_SECONDS", "abc", "[0, 3600]"),
        (ServerSettings, "INFERENCE_LOG", "maybe", "true or false"),
        (ServerSettings, "MODEL_SERVER_METRICS", "yes please", "true or false"),
        (ServerSettings, "INFERENCE_LOG_FLUSH_SECONDS", "0", "at least 0.01"),
        (ServerSettings, "INFERENCE_LOG_FLUSH_SECONDS", "inf", "at least 0.01"),
        (ServerSettings, "INFERENCE_LOG_FLUSH_SECONDS", "nan", "at least 0.01"),
        (MonitorSettings, "MONITOR_SETTLE_SECONDS", "nan", "[0, 3600]"),
        (ServerSettings, "INFERENCE_LOG_RETENTION_DAYS", "0", "a positive integer"),
        (ServerSettings, "INFERENCE_LOG_MAX_MB", "1.5", "a positive integer"),
        (ServerSettings, "MODEL_POLL_SECONDS", "0", "a positive number"),
        (ServerSettings, "LATEST_MODEL_RUN_ID", "abc", "an MLflow run ID (32 hex characters)"),
        (ServerSettings, "MODEL_SERVER_WORKERS", "two", "a positive integer (or empty: one per core)"),
        (ServerSettings, "MODEL_SERVER_PORT", "70000", "a TCP port number"),
        (TrackingSettings, "MLFLOW_DATA_DIR", "mlruns", "an absolute path"),
        (TrackingSettings, "MLFLOW_AUTH", "maybe", "true or false"),
        (TrackingSettings, "MLFLOW_WORKERS", "0", "a positive integer"),
    ],
)
def test_a_bad_value_is_refused_naming_the_key_and_what_it_accepts(
    monkeypatch: pytest.MonkeyPatch, cls: type, key: str, value: str, accepted: str
) -> None:
    monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError) as refused:
        from_env(cls)
    assert str(refused.value).startswith(f"{key} must be ") and accepted in str(refused.value)
    assert repr(value) in str(refused.value)


def test_the_served_model_and_the_worker_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """LATEST_MODEL_RUN_ID pins the original tutorial's runs:/<id>/model; empty follows the champion."""
    assert from_env(ServerSettings).fixed_uri == ""
    monkeypatch.setenv("LATEST_MODEL_RUN_ID", "0123456789abcdef0123456789abcdef")
    assert from_env(ServerSettings).fixed_uri == "runs:/0123456789abcdef0123456789abcdef/model"
    assert from_env(ServerSettings, model_uri="models:/m/1").fixed_uri == "models:/m/1"
    assert from_env(ServerSettings).workers == min(len(os.sched_getaffinity(0)), 4)
    assert from_env(ServerSettings, model_server_workers="7").workers == 7


def test_each_stage_reads_only_its_own_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad training setting fails training, not the drift monitor or the model-server."""
    monkeypatch.setenv("RF_N_ESTIMATORS", "many")
    assert from_env(MonitorSettings).monitor_min_rows == 100
    assert from_env(ServerSettings).inference_log
    with pytest.raises(ConfigError, match="RF_N_ESTIMATORS"):
        from_env(TrainSettings)
