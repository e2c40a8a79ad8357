"""Is the champion still seeing the kind of data it was trained on? Evidently compares what the model-server logged
for it (inference_data.read_inference_log) with the rows it was trained on (train_model.load_reference); the
figures and the HTML report go to MLflow (experiment ``mlops_monitoring``), the figures also to Prometheus.

Plain functions, no Airflow: the monitor_model DAG calls ``monitor()``, the tests call the parts. Each check reads
the log from where the last check of the same model version stopped, so every logged request is looked at once;
a window with fewer than MONITOR_MIN_ROWS rows is left to grow and the check ends with a "not enough data" line.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pipeline_metrics
import train_model
from inference_data import read_inference_log, read_inference_table, utc

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

MONITORING_EXPERIMENT = "mlops_monitoring"
REPORT_ARTIFACT = "drift_report.html"
PREDICTION = "prediction"
DEFAULT_LOG_DIR = "/opt/airflow/inference-log"  # the inference_log volume, read-only in the Airflow containers
# Tags of a check's MLflow run: which model version it looked at, and the window of the log it read.
TAG_MODEL, TAG_VERSION, TAG_START, TAG_END = "model_name", "model_version", "window_start", "window_end"


@dataclass(frozen=True)
class MonitorConfig:
    log_dir: Path
    min_rows: int  # fewer logged rows than this: no verdict yet, the window keeps growing
    # The window ends this long before the check starts: the model-server flushes its log every second
    # (INFERENCE_LOG_FLUSH_SECONDS), so a request answered just before the check is read by the next one.
    settle_seconds: float
    # The scale variant's log: a PostgreSQL table (a libpq URL and the read-only role's password) instead of files.
    log_db: str | None = None
    log_db_password: str | None = None


def config_from_env(env: os._Environ[str] | dict[str, str] | None = None) -> MonitorConfig:
    env = os.environ if env is None else env
    min_rows = train_model.int_setting("MONITOR_MIN_ROWS", env.get("MONITOR_MIN_ROWS") or "100")
    raw = env.get("MONITOR_SETTLE_SECONDS") or "5"
    try:
        settle = float(raw)
    except ValueError:
        settle = -1.0
    if not 0 <= settle <= 3600:
        raise train_model.ConfigError(f"MONITOR_SETTLE_SECONDS must be a number of seconds in [0, 3600], got {raw!r}")
    log_dir = Path(env.get("INFERENCE_LOG_DIR") or DEFAULT_LOG_DIR)
    database = env.get("INFERENCE_LOG_DB") or None
    return MonitorConfig(log_dir, min_rows or 100, settle, database, env.get("INFERENCE_LOG_DB_PASSWORD") or None)


def read_window(cfg: MonitorConfig, since: datetime, until: datetime, version: str) -> pd.DataFrame:
    """The logged rows of one model version in [since, until), from the files or the scale variant's table."""
    features = list(train_model.FEATURE_NAMES)
    if cfg.log_db is not None:
        return read_inference_table(cfg.log_db, cfg.log_db_password, since, until, version, features)
    return read_inference_log(cfg.log_dir, since, until, model_version=version, feature_names=features)


@dataclass(frozen=True)
class DriftResult:
    """Evidently's verdict: per feature column a drift test (K-S for numbers, chi-square for the predicted class
    below 1,000 reference rows), the dataset drifting when at least drift_share_limit of the features do."""

    dataset_drift: bool
    drift_share: float  # the share of feature columns that drifted
    drifted_columns: int
    drift_share_limit: float
    prediction_drift: bool
    column_scores: dict[str, float]  # per column (features and prediction): the test's score, e.g. a p-value
    column_methods: dict[str, str]

    def metrics(self) -> dict[str, float]:
        """The figures as MLflow metrics (keys allow no parentheses: "petal length (cm)" -> petal_length_cm)."""
        figures = {
            "dataset_drift": float(self.dataset_drift),
            "drift_share": self.drift_share,
            "drifted_columns": float(self.drifted_columns),
            "prediction_drift": float(self.prediction_drift),
        }
        for column, score in self.column_scores.items():
            figures[f"drift_score.{metric_key(column)}"] = score
        return figures


def metric_key(column: str) -> str:
    return "_".join(column.replace("(", " ").replace(")", " ").split())


def drifted(score: float, method: str, threshold: float) -> bool:
    """Evidently's rule for one column: a p-value below the threshold, or a distance at or above it."""
    return score < threshold if "p_value" in method else score >= threshold


def compare(reference: pd.DataFrame, current: pd.DataFrame, features: list[str]) -> tuple[DriftResult, Any]:
    """Run Evidently's data drift preset on the features and a drift metric on the predicted class; returns the
    verdict and Evidently's snapshot (its save_html writes the report)."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift
    from evidently.presets import DataDriftPreset

    columns = [*features, PREDICTION]
    definition = DataDefinition(numerical_columns=list(features), categorical_columns=[PREDICTION])
    report = Report([DataDriftPreset(columns=list(features)), ValueDrift(column=PREDICTION)])
    snapshot = report.run(
        Dataset.from_pandas(current[columns], data_definition=definition),
        Dataset.from_pandas(reference[columns], data_definition=definition),
    )
    share, count, limit = 0.0, 0, 0.5
    scores: dict[str, float] = {}
    methods: dict[str, str] = {}
    thresholds: dict[str, float] = {}
    for metric in snapshot.dict()["metrics"]:
        config, value = metric["config"], metric["value"]
        if config["type"].endswith(":DriftedColumnsCount"):
            share, count, limit = float(value["share"]), int(value["count"]), float(config["drift_share"])
        elif config["type"].endswith(":ValueDrift"):
            column = config["column"]
            scores[column], methods[column], thresholds[column] = float(value), config["method"], config["threshold"]
    missing = [c for c in columns if c not in scores]
    if missing:
        raise RuntimeError(f"Evidently's report has no drift score for {missing}: has its result format changed?")
    result = DriftResult(
        dataset_drift=share >= limit,
        drift_share=share,
        drifted_columns=count,
        drift_share_limit=limit,
        prediction_drift=drifted(scores[PREDICTION], methods[PREDICTION], thresholds[PREDICTION]),
        column_scores=scores,
        column_methods=methods,
    )
    return result, snapshot


def last_window_end(model_name: str, version: str) -> datetime | None:
    """Where the last check of this model version stopped reading (None: never checked)."""
    import mlflow

    runs = mlflow.search_runs(
        experiment_names=[MONITORING_EXPERIMENT],
        filter_string=f"tags.{TAG_MODEL} = '{model_name}' and tags.{TAG_VERSION} = '{version}'",
        order_by=[f"tags.{TAG_END} DESC"],
        max_results=1,
        output_format="list",
    )
    return datetime.fromisoformat(runs[0].data.tags[TAG_END]) if runs else None


def reference_with_predictions(model_name: str, version: str, run_id: str) -> pd.DataFrame:
    """The version's training rows and what it predicts for them: the distribution its served predictions are
    compared with. A version trained before runs logged their rows raises MissingReferenceError."""
    import mlflow

    reference = train_model.load_reference(run_id)
    model = mlflow.sklearn.load_model(f"models:/{model_name}/{version}")
    reference[PREDICTION] = model.predict(reference[list(train_model.FEATURE_NAMES)].to_numpy())
    return reference


def monitor(
    cfg: MonitorConfig | None = None, now: datetime | None = None, since: datetime | None = None
) -> dict[str, Any]:
    """Check the champion's logged inputs and predictions since its last check (or since `since`); log the result to
    MLflow and push it to the Pushgateway. Returns what was found (the DAG's task result)."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    cfg = cfg or config_from_env()
    name = train_model.model_name_from_env()
    train_model.connect(experiment=MONITORING_EXPERIMENT)
    try:
        champion = MlflowClient().get_model_version_by_alias(name, train_model.CHAMPION)
    except MlflowException:
        log.info("monitor: %s has no %s yet: nothing is served, nothing to check", name, train_model.CHAMPION)
        return {"status": "no champion", "model": name}
    version = str(champion.version)
    until = utc(now or datetime.now(UTC)) - timedelta(seconds=cfg.settle_seconds)
    if since is None:
        since = last_window_end(name, version) or datetime.fromtimestamp(champion.creation_timestamp / 1000, UTC)
    since = utc(since)
    if since >= until:
        raise train_model.ConfigError(
            f"the window starts at {since.isoformat()}, not before its end {until.isoformat()}"
        )
    features = list(train_model.FEATURE_NAMES)
    current = read_window(cfg, since, until, version)
    current = current[current["model_name"] == name]
    window = {"model": name, "version": version, "since": since.isoformat(), "until": until.isoformat()}
    if len(current) < cfg.min_rows:
        log.info(
            "monitor: not enough data: %d logged rows of %s version %s in [%s, %s), MONITOR_MIN_ROWS=%d; "
            "the next check reads this window again with what arrives meanwhile",
            len(current), name, version, window["since"], window["until"], cfg.min_rows,
        )  # fmt: skip
        return {"status": "not enough data", "rows": len(current), **window}
    reference = reference_with_predictions(name, version, champion.run_id)
    result, snapshot = compare(reference, current, features)
    tags = {TAG_MODEL: name, TAG_VERSION: version, TAG_START: window["since"], TAG_END: window["until"]}
    with mlflow.start_run(run_name=f"drift {name} v{version}", tags={**tags, "model_run_id": champion.run_id}) as run:
        mlflow.log_params({"rows": len(current), "reference_rows": len(reference), "min_rows": cfg.min_rows})
        mlflow.log_metrics({**result.metrics(), "rows": float(len(current))})
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, REPORT_ARTIFACT)
            snapshot.save_html(path)
            mlflow.log_artifact(path)
    pipeline_metrics.drift_checked(name, version, result.metrics(), len(current))
    log.info(
        "monitor: %s version %s, %d rows: %s (%d of %d features drifted, share %.2f; prediction drift: %s); "
        "report: run %s, artifact %s",
        name, version, len(current), "DRIFT" if result.dataset_drift else "no drift", result.drifted_columns,
        len(features), result.drift_share, "yes" if result.prediction_drift else "no", run.info.run_id, REPORT_ARTIFACT,
    )  # fmt: skip
    return {
        "status": "drift" if result.dataset_drift else "no drift",
        "rows": len(current),
        "drift_share": result.drift_share,
        "prediction_drift": result.prediction_drift,
        "monitoring_run_id": run.info.run_id,
        **window,
    }
