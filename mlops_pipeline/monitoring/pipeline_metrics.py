"""What a finished pipeline run tells Prometheus, through the Pushgateway (Prometheus's pattern for batch jobs:
a DAG run ends before any scrape could reach it, so it pushes its figures and the Pushgateway keeps them).

Three groups, each replaced by its next push (`pushadd`: only the metrics pushed are replaced, so a failed run keeps
the time of the last success):
- job="mlops_dag_run", dag_id=...: the last finished run's duration, outcome and end time, and the time of the last
  successful one. Pushed by the DAG's success and failure callbacks (in Airflow 3 the dag-processor runs them).
- job="mlops_model", model=...: the trained model's test accuracy, its version, and the gate's decision. Pushed by
  the `register` task, wherever it runs (a Celery worker in the scale variant).
- job="mlops_drift", model=...: the last drift check's verdict (monitor_model DAG, monitoring/drift.py): dataset
  drift 1/0, the share of drifted features, prediction drift 1/0, the rows and version it looked at, when it ended.
- job="mlops_live", model=...: the last live comparison (monitor_model DAG, monitoring/live.py): each version's
  accuracy on the labels clients sent back. Replaced whole (`push_to_gateway`), so a challenger that is gone leaves
  no figure behind.

PUSHGATEWAY_URL says where (compose sets http://pushgateway:9091); empty: nothing is pushed. A push that fails (the
monitoring profile is not up) logs one line and never fails the task or the run.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, push_to_gateway, pushadd_to_gateway

from mlops_pipeline.settings import Settings, from_env

log = logging.getLogger(__name__)
PUSH_TIMEOUT_SECONDS = 3.0
HELP = {  # every gauge pushed, with its help text
    "mlops_dag_run_succeeded": "1 if the last finished run succeeded, 0 if it failed.",
    "mlops_dag_run_end_timestamp_seconds": "When the last finished run ended (Unix time).",
    "mlops_dag_run_duration_seconds": "How long the last finished run took.",
    "mlops_dag_run_last_success_timestamp_seconds": "When the last successful run ended.",
    "mlops_model_test_accuracy": "Held-out accuracy of the last model the pipeline registered.",
    "mlops_model_version": "Registry version of the last model the pipeline registered.",
    "mlops_model_promoted": "1 if the quality gate promoted the last registered model to champion.",
    "mlops_drift_detected": "1 if the last drift check found the served inputs drifted from the training rows.",
    "mlops_drift_share": "Share of feature columns that drifted in the last drift check.",
    "mlops_prediction_drift": "1 if the predicted classes drifted in the last drift check.",
    "mlops_drift_rows": "Logged rows the last drift check compared.",
    "mlops_drift_model_version": "Registry version the last drift check looked at.",
    "mlops_drift_check_timestamp_seconds": "When the last drift check ended (Unix time).",
    "mlops_batch_rows_scored": "Rows the last batch_predict run scored.",
    "mlops_batch_rows_rejected": "Rows the last batch_predict run refused (the row schema).",
    "mlops_batch_duration_seconds": "How long the last batch_predict run took, from its start to its output.",
    "mlops_live_champion_accuracy": "The champion's accuracy on every labeled row of the live comparison's window.",
    "mlops_live_champion_accuracy_last": "The champion's accuracy on its latest MONITOR_LIVE_LAST_ROWS labeled rows.",
    "mlops_live_champion_labeled_rows": "Labeled rows the champion answered in the live comparison's window.",
    "mlops_live_challenger_accuracy": "The challenger's accuracy on every labeled row it predicted.",
    "mlops_live_challenger_labeled_rows": "Labeled rows the challenger predicted (shadow or canary).",
    "mlops_live_agreement": "Share of the rows both versions predicted on which they gave the same class.",
    "mlops_live_feedback_unmatched": "Feedback items whose request ID the inference log does not have.",
    "mlops_live_min_accuracy": "MIN_ACCURACY: the floor the champion's recent live accuracy is alerted on.",
    "mlops_live_check_timestamp_seconds": "When the last live comparison ended (Unix time).",
}
LIVE = {  # the live comparison's figure (live.figures) behind each pushed gauge
    "mlops_live_champion_accuracy": "champion_live_accuracy",
    "mlops_live_champion_accuracy_last": "champion_live_accuracy_last",
    "mlops_live_champion_labeled_rows": "champion_labeled_rows",
    "mlops_live_challenger_accuracy": "challenger_live_accuracy",
    "mlops_live_challenger_labeled_rows": "challenger_labeled_rows",
    "mlops_live_agreement": "agreement",
    "mlops_live_feedback_unmatched": "feedback_unmatched",
}


def push(
    job: str, grouping_key: dict[str, str], values: dict[str, float], url: str | None = None, replace: bool = False
) -> bool:
    """Push the gauges {name: value} to the group at `url` (default: PUSHGATEWAY_URL), adding to the group's other
    gauges or (`replace`) instead of them; False (and one log line) when it could not be done."""
    url = (from_env(Settings).pushgateway_url if url is None else url).strip()
    if not url:
        return False
    registry = CollectorRegistry()
    for name, number in values.items():
        Gauge(name, HELP[name], registry=registry).set(number)
    try:
        send = push_to_gateway if replace else pushadd_to_gateway
        send(url, job=job, registry=registry, grouping_key=grouping_key, timeout=PUSH_TIMEOUT_SECONDS)
    except Exception as exc:  # noqa: BLE001 - metrics must never fail a run
        log.warning("pipeline metrics: not pushed to %s (%s); is the monitoring profile up?", url, exc)
        return False
    return True


def dag_run_finished(context: dict[str, Any], succeeded: bool) -> None:
    """For a DAG's on_success_callback and on_failure_callback (the DAG file binds `succeeded`). A run without a
    start time (failed before it began) has no duration."""
    dag_run, dag_id = context.get("dag_run"), context["dag"].dag_id
    start, end = getattr(dag_run, "start_date", None), getattr(dag_run, "end_date", None)
    end_ts = end.timestamp() if end else time.time()
    values = {"mlops_dag_run_succeeded": float(succeeded), "mlops_dag_run_end_timestamp_seconds": end_ts}
    if start is not None:
        values["mlops_dag_run_duration_seconds"] = end_ts - start.timestamp()
    if succeeded:
        values["mlops_dag_run_last_success_timestamp_seconds"] = end_ts
    if push("mlops_dag_run", {"dag_id": dag_id}, values):
        log.info("pipeline metrics: pushed %s run %s (%s)", dag_id, context.get("run_id"), ["failed", "ok"][succeeded])


def model_registered(result: dict[str, Any]) -> None:
    """After the quality gate (registry.register_and_promote's result)."""
    values = {
        "mlops_model_test_accuracy": result["accuracy"],
        "mlops_model_version": float(result["version"]),
        "mlops_model_promoted": float(result["promoted"]),
    }
    push("mlops_model", {"model": result["model"]}, values)


def drift_checked(url: str, model: str, version: str, figures: dict[str, float], rows: int) -> None:
    """After a drift check that had enough rows (drift.monitor; figures: drift.compare's)."""
    values = {
        "mlops_drift_detected": figures["dataset_drift"],
        "mlops_drift_share": figures["drift_share"],
        "mlops_prediction_drift": figures["prediction_drift"],
        "mlops_drift_rows": float(rows),
        "mlops_drift_model_version": float(version),
        "mlops_drift_check_timestamp_seconds": time.time(),
    }
    if push("mlops_drift", {"model": model}, values, url):
        log.info("pipeline metrics: pushed the drift check of %s version %s", model, version)


def batch_scored(url: str, model: str, counts: dict[str, int], duration: float) -> None:
    """After a batch_predict run wrote its output (batch.combine)."""
    values = {
        "mlops_batch_rows_scored": float(counts["scored"]),
        "mlops_batch_rows_rejected": float(counts["rejected"]),
        "mlops_batch_duration_seconds": duration,
    }
    push("mlops_batch", {"model": model}, values, url)


def live_checked(url: str, model: str, figures: dict[str, float], floor: float) -> None:
    """After a live comparison that joined feedback (live.monitor; figures: live.figures'). A figure without rows
    behind it (NaN) is left out, not pushed as a number."""
    values = {name: figures[key] for name, key in LIVE.items() if key in figures and not math.isnan(figures[key])}
    values |= {"mlops_live_min_accuracy": floor, "mlops_live_check_timestamp_seconds": time.time()}
    if push("mlops_live", {"model": model}, values, url, replace=True):
        log.info("pipeline metrics: pushed the live comparison of %s", model)
