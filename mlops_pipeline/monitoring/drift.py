"""Is the champion still seeing the kind of data it was trained on? Evidently compares what the model-server logged
for it (log_reader) with the rows it was trained on (data.logged_rows); the figures and the HTML report go to MLflow
(experiment ``mlops_monitoring``), the figures also to Prometheus.

Plain functions, no Airflow: the monitor_model DAG calls ``monitor()``, the tests call the parts. Each check reads
the log from where the last check of the same model version stopped, so every logged request is looked at once;
a window with fewer than MONITOR_MIN_ROWS rows is left to grow and the check ends with a "not enough data" line.
"""

from __future__ import annotations

import logging
import os
import tempfile
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from mlops_pipeline import data, registry, train
from mlops_pipeline.monitoring import log_reader, pipeline_metrics
from mlops_pipeline.monitoring.log_reader import utc
from mlops_pipeline.schema import FEATURE_NAMES, MONITORING_EXPERIMENT, ConfigError
from mlops_pipeline.settings import MonitorSettings, from_env

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)
REPORT_ARTIFACT = "drift_report.html"
PREDICTION = "prediction"
# Tags of a check's MLflow run: which model version it looked at, and the window of the log it read.
TAG_MODEL, TAG_VERSION, TAG_START, TAG_END = "model_name", "model_version", "window_start", "window_end"


def metric_key(column: str) -> str:
    """An MLflow metric key for a column (no parentheses: "petal length (cm)" -> petal_length_cm)."""
    return "_".join(column.replace("(", " ").replace(")", " ").split())


def drifted(score: float, method: str, threshold: float) -> bool:
    """Evidently's rule for one column: a p-value below the threshold, or a distance at or above it."""
    return score < threshold if "p_value" in method else score >= threshold


def compare(reference: pd.DataFrame, current: pd.DataFrame, features: list[str]) -> tuple[dict[str, float], Any]:
    """Evidently's data drift preset on the features (per column K-S for numbers, the dataset drifting when at least
    half of them do) and a drift test on the predicted class (chi-square below 1,000 reference rows). Returns the
    figures as MLflow metrics (dataset_drift and prediction_drift 1/0, drift_share, drifted_columns,
    drift_score.<column>) and Evidently's snapshot (its save_html writes the report)."""
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
    figures: dict[str, float] = {}
    for metric in snapshot.dict()["metrics"]:
        config, value = metric["config"], metric["value"]
        if config["type"].endswith(":DriftedColumnsCount"):
            figures["dataset_drift"] = float(value["share"] >= config["drift_share"])
            figures["drift_share"], figures["drifted_columns"] = float(value["share"]), float(value["count"])
        elif config["type"].endswith(":ValueDrift"):
            figures[f"drift_score.{metric_key(config['column'])}"] = float(value)
            if config["column"] == PREDICTION:
                figures["prediction_drift"] = float(drifted(value, config["method"], config["threshold"]))
    expected = ["dataset_drift", "prediction_drift", *(f"drift_score.{metric_key(c)}" for c in columns)]
    if missing := [key for key in expected if key not in figures]:
        raise RuntimeError(f"Evidently's report has no {missing}: has its result format changed?")
    return figures, snapshot


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

    reference = data.logged_rows(run_id)
    model = mlflow.sklearn.load_model(f"models:/{model_name}/{version}")
    reference[PREDICTION] = model.predict(reference[list(FEATURE_NAMES)].to_numpy())
    return reference


def monitor(
    cfg: MonitorSettings | None = None, now: datetime | None = None, since: datetime | None = None
) -> dict[str, Any]:
    """Check the champion's logged inputs and predictions since its last check (or since `since`); log the result to
    MLflow and push it to the Pushgateway. Returns what was found (the DAG's task result)."""
    import mlflow

    cfg = cfg or from_env(MonitorSettings)
    name = cfg.registered_model_name
    train.connect(cfg, MONITORING_EXPERIMENT)
    champion = registry.champion(name)
    if champion is None:
        log.info("monitor: %s has no champion yet: nothing is served, nothing to check", name)
        return {"status": "no champion", "model": name}
    version = str(champion.version)
    until = utc(now or datetime.now(UTC)) - timedelta(seconds=cfg.monitor_settle_seconds)
    if since is None:
        since = last_window_end(name, version) or datetime.fromtimestamp(champion.creation_timestamp / 1000, UTC)
    since = utc(since)
    if since >= until:
        raise ConfigError(f"the window starts at {since.isoformat()}, not before its end {until.isoformat()}")
    features = list(FEATURE_NAMES)
    current = log_reader.read(cfg, since, until, version, features)
    current = current[current["model_name"] == name]
    window = {"model": name, "version": version, "since": since.isoformat(), "until": until.isoformat()}
    if len(current) < cfg.monitor_min_rows:
        log.info(
            "monitor: not enough data: %d logged rows of %s version %s in [%s, %s), MONITOR_MIN_ROWS=%d; "
            "the next check reads this window again with what arrives meanwhile",
            len(current), name, version, window["since"], window["until"], cfg.monitor_min_rows,
        )  # fmt: skip
        return {"status": "not enough data", "rows": len(current), **window}
    reference = reference_with_predictions(name, version, champion.run_id)
    figures, snapshot = compare(reference, current, features)
    tags = {TAG_MODEL: name, TAG_VERSION: version, TAG_START: window["since"], TAG_END: window["until"]}
    with mlflow.start_run(run_name=f"drift {name} v{version}", tags={**tags, "model_run_id": champion.run_id}) as run:
        mlflow.log_params({"rows": len(current), "reference_rows": len(reference), "min_rows": cfg.monitor_min_rows})
        mlflow.log_metrics({**figures, "rows": float(len(current))})
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, REPORT_ARTIFACT)
            snapshot.save_html(path)
            mlflow.log_artifact(path)
    pipeline_metrics.drift_checked(cfg.pushgateway_url, name, version, figures, len(current))
    log.info(
        "monitor: %s version %s, %d rows: %s (%d of %d features drifted, share %.2f; prediction drift: %s); "
        "report: run %s, artifact %s",
        name, version, len(current), "DRIFT" if figures["dataset_drift"] else "no drift", figures["drifted_columns"],
        len(features), figures["drift_share"], "yes" if figures["prediction_drift"] else "no", run.info.run_id,
        REPORT_ARTIFACT,
    )  # fmt: skip
    return {
        "status": "drift" if figures["dataset_drift"] else "no drift",
        "rows": len(current),
        "drift_share": figures["drift_share"],
        "prediction_drift": bool(figures["prediction_drift"]),
        "monitoring_run_id": run.info.run_id,
        **window,
    }
