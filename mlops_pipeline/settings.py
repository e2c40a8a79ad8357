"""Every setting, read from the environment and validated once (pydantic-settings); no other module reads
os.environ. Each default is defined here only; .env.example describes the keys for people, and compose and local
mode pass .env through. An empty value counts as unset (compose passes `${KEY:-}` for a key .env leaves out).

A bad value stops the stage that reads it with a ConfigError naming the key and what it accepts: a typo must not
silently pick a default.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal, TypeVar

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mlops_pipeline.schema import EXPERIMENT, MODEL_ARTIFACT, MODEL_NAME, ConfigError

NEVER_PROMOTE = 1.5  # the highest MIN_ACCURACY accepted: above 1 no model passes
MIB = 1024 * 1024
S = TypeVar("S", bound="Settings")

PositiveInt = Annotated[int, Field(gt=0, description="a positive integer")]
Flag = Annotated[bool, Field(description="true or false")]


class Settings(BaseSettings):
    """What every stage shares: where MLflow is, which registered model and experiment are ours, where pipeline
    metrics go."""

    model_config = SettingsConfigDict(env_ignore_empty=True, extra="ignore", validate_default=True)

    mlflow_tracking_uri: str = "http://localhost:5000"
    registered_model_name: str = Field(
        MODEL_NAME, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$", description="letters, digits, '_', '.' or '-'"
    )
    mlflow_experiment_name: str = EXPERIMENT  # where training runs go (the monitor logs to its own)
    pushgateway_url: str = ""  # empty: pipeline metrics are not pushed
    # The accuracy a model must keep: the gate's floor (held-out rows), the live alert's and the promotion's.
    min_accuracy: float = Field(
        0.9, ge=0, le=NEVER_PROMOTE, description=f"a number from 0 to 1 (or up to {NEVER_PROMOTE}: promote nothing)"
    )


class DataSettings(BaseSettings):
    """Where the training data file is; the DAG files read it while they are parsed, so it stands alone."""

    model_config = Settings.model_config
    training_data_path: Path | None = None  # None: $AIRFLOW_HOME/data/iris.csv
    airflow_home: Path = Path("~/airflow")

    @property
    def data_path(self) -> Path:
        """The training data file: the image's /opt/airflow/data/iris.csv, local mode's state folder."""
        return (self.training_data_path or self.airflow_home / "data" / "iris.csv").expanduser().absolute()


class TrainSettings(Settings, DataSettings):
    """The training DAG's: the experiment, the tutorial's hyper-parameters, the gate's floor and the data file."""

    rf_n_estimators: PositiveInt = 100
    rf_max_depth: PositiveInt | None = Field(3, description="a positive integer or 'none' (unlimited)")
    # What a model that passes the gate becomes: the champion at once (auto), or the challenger, served beside it
    # until a person approves (docs/challenger.md).
    promotion: Literal["auto", "challenger"] = "auto"

    @field_validator("rf_max_depth", mode="before")
    @classmethod
    def unlimited(cls, value: object) -> object:
        return None if isinstance(value, str) and value.strip().lower() == "none" else value


class BatchSettings(Settings, DataSettings):
    """The batch_predict DAG's: where its files live and how many rows one task scores (docs/batch-predictions.md)."""

    batch_root: str = ""  # empty: $AIRFLOW_HOME/batch; a URL (s3://bucket/prefix): Airflow's object storage
    batch_conn_id: str = ""  # the Airflow connection for that URL (keys, endpoint)
    batch_chunk_rows: PositiveInt = 250_000


class LogSettings(Settings):
    """Where the inference log lives: files by date in a folder, or the scale variant's PostgreSQL table."""

    inference_log_dir: Path = Path("/mlflow/inference-log")
    inference_log_db: str | None = None  # a libpq URL: the table instead of the files
    inference_log_db_password: SecretStr | None = None


class MonitorSettings(LogSettings):
    """The drift monitor's: how many logged rows a verdict needs, and how far behind now a check stops reading."""

    monitor_min_rows: PositiveInt = 100
    monitor_settle_seconds: float = Field(
        5, ge=0, le=3600, allow_inf_nan=False, description="a number of seconds in [0, 3600]"
    )
    # The live comparison (monitoring/live.py): how far back it reads the log for predictions and their feedback,
    # and over how many of the champion's latest labeled rows its recent accuracy is taken.
    monitor_live_days: PositiveInt = 7
    monitor_live_last_rows: PositiveInt = 200


class PromotionSettings(MonitorSettings):
    """The promote_challenger DAG's (docs/challenger.md): how many labeled rows a verdict needs, and whether a person
    approves it (and how long they have) or it is applied at once."""

    min_feedback: PositiveInt = 100
    promotion_approval: Literal["manual", "auto"] = "manual"
    promotion_approval_hours: float = Field(
        24, gt=0, le=24 * 30, allow_inf_nan=False, description="a number of hours in (0, 720]"
    )


class ServerSettings(LogSettings):
    """The model-server's (mlflow/gunicorn.conf.py and the app read them; .env.example describes each key)."""

    latest_model_run_id: str = Field(
        "", pattern="^([0-9a-f]{32})?$", description="an MLflow run ID (32 hex characters) or empty (the champion)"
    )
    model_uri: str = ""  # any fixed model URI (tests, benchmarks); wins over LATEST_MODEL_RUN_ID
    model_server_host: str = "0.0.0.0"  # noqa: S104 - in its container; compose publishes it on BIND_ADDRESS
    model_server_port: int = Field(5001, gt=0, lt=65536, description="a TCP port number")
    model_server_workers: PositiveInt | None = Field(None, description="a positive integer (or empty: one per core)")
    model_poll_seconds: float = Field(5, gt=0, description="a positive number of seconds")
    model_server_max_body_bytes: PositiveInt = 10 * MIB
    model_server_compiled: Flag = True
    model_server_metrics: Flag = True
    prometheus_multiproc_dir: Path | None = None  # set by model-server.sh: the workers' shared counts
    inference_log: Flag = True
    inference_log_flush_seconds: float = Field(1, ge=0.01, allow_inf_nan=False, description="a number of at least 0.01")
    inference_log_retention_days: PositiveInt = 7
    inference_log_max_mb: PositiveInt = 512
    # A challenger beside the champion (docs/challenger.md): how it is served, and the canary's share of requests.
    challenger_mode: Literal["shadow", "canary", "off"] = "shadow"
    canary_percent: float = Field(10, ge=0, le=100, allow_inf_nan=False, description="a percentage in [0, 100]")

    @property
    def fixed_uri(self) -> str:
        """The pinned model (the original tutorial's runs:/<LATEST_MODEL_RUN_ID>/model); "": follow the champion."""
        run_id = self.latest_model_run_id
        return self.model_uri or (f"runs:/{run_id}/{MODEL_ARTIFACT}" if run_id else "")

    @property
    def workers(self) -> int:
        """A worker scores one request at a time (predict holds the GIL): one per usable core, at most 4 by default
        so the compose file's memory limit holds on bigger machines."""
        return self.model_server_workers or min(len(os.sched_getaffinity(0)), 4)


class TrackingSettings(BaseSettings):
    """The tracking server's: mlflow/tracking_server.py passes them to `mlflow server` (the store and the artifacts
    under MLFLOW_DATA_DIR unless the scale variant names PostgreSQL and s3:// in MLflow's own two keys)."""

    model_config = Settings.model_config
    mlflow_data_dir: Path = Field(Path("/mlflow/mlruns"), description="an absolute path")
    mlflow_backend_store_uri: str = ""  # empty: sqlite:///<MLFLOW_DATA_DIR>/mlflow.db
    mlflow_artifacts_destination: str = ""  # empty: <MLFLOW_DATA_DIR>/artifacts
    mlflow_host: str = "0.0.0.0"  # noqa: S104 - in its container; compose publishes it on BIND_ADDRESS
    mlflow_port: int = Field(5000, gt=0, lt=65536, description="a TCP port number")
    mlflow_workers: PositiveInt = 1
    mlflow_allowed_hosts: str = "localhost,localhost:*,127.0.0.1,127.0.0.1:*,mlflow-server,mlflow-server:*"
    mlflow_auth: Flag = False
    mlflow_auth_admin_username: str = "admin"
    mlflow_auth_admin_password: SecretStr = SecretStr("")
    mlflow_metrics: Flag = True
    mlflow_server_enable_job_execution: Flag = False  # MLflow's GenAI job runner: unused here, a set of processes

    @field_validator("mlflow_data_dir")
    @classmethod
    def absolute(cls, value: Path) -> Path:
        if not value.is_absolute():
            raise ValueError("a relative path")
        return value


class BackupSettings(BaseSettings):
    """The backup container (mlops_pipeline/backup): which variant's state it holds, and Airflow's Fernet key,
    whose fingerprint an archive records so a restore can tell whether Airflow's encrypted fields stay readable."""

    model_config = Settings.model_config
    backup_variant: Literal["default", "scale"] = "default"
    fernet_key: SecretStr = Field(SecretStr(""), description="Airflow's Fernet key (make env writes it to .env)")


def from_env(cls: type[S], **values: object) -> S:
    """The settings from the environment (values given here win), or a ConfigError naming each bad key."""
    try:
        return cls(**values)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = str(error["loc"][0])
            field = cls.model_fields.get(name)
            accepted = (field.description if field else None) or error["msg"].lower()
            problems.append(f"{name.upper()} must be {accepted}, got {error.get('input')!r}")
        raise ConfigError("; ".join(problems)) from None
