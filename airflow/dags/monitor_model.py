"""monitor_model: is the champion still seeing the kind of data it was trained on?

Hourly (and on Trigger): reads what the model-server logged for the champion since its last check (the
inference_log volume, INFERENCE_LOG_DIR; a run's `since` picks another start), and with at least MONITOR_MIN_ROWS
rows (or the run's `min_rows`) runs Evidently's data drift report against the rows that version was trained on.
The figures and the HTML report are logged to MLflow's `mlops_monitoring` experiment and pushed to the
Pushgateway, where the ModelDataDrift alert watches them (monitoring/alerts.yml). Fewer rows: the task ends green
with a "not enough data" line and the next check reads the same window again. A thin layer over
mlops_pipeline/monitoring/drift.py (docs/drift.md).

Beside it, `check_live` joins the labels clients sent back (POST /feedback) with what the champion, and a
challenger if there is one, predicted: each version's live accuracy, to MLflow and the Pushgateway, where the
ChampionLiveAccuracyLow alert watches the champion's latest labeled rows (monitoring/live.py, docs/challenger.md).
"""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.sdk import Param, dag, task


@dag(
    dag_id="monitor_model",
    schedule="@hourly",
    start_date=datetime(2025, 1, 1, tzinfo=UTC),
    catchup=False,  # one check reads everything since the last one: missed hours need no runs of their own
    max_active_runs=1,  # two checks at once would read the same window twice
    params={
        "min_rows": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            description="fewer logged rows: no verdict (default: MONITOR_MIN_ROWS)",
        ),
        "since": Param(
            None,
            type=["null", "string"],
            format="date-time",
            description="read the log from this time (ISO 8601, UTC if no zone) instead of from the last check",
        ),
    },
    tags=["mlops", "iris", "monitoring"],
    doc_md=__doc__,
)
def monitor_model() -> None:
    @task(retries=1)
    def check_drift(params: dict) -> dict:
        """Evidently's verdict on the champion's logged traffic, or why there is none yet."""
        from mlops_pipeline.monitoring import drift
        from mlops_pipeline.settings import MonitorSettings, from_env

        given = {"monitor_min_rows": params["min_rows"]} if params.get("min_rows") is not None else {}
        since = datetime.fromisoformat(params["since"]) if params.get("since") else None
        return drift.monitor(from_env(MonitorSettings, **given), since=since)

    @task(retries=1)
    def check_live() -> dict:
        """Each version's accuracy on the feedback of the last MONITOR_LIVE_DAYS, or why there is none yet."""
        from mlops_pipeline.monitoring import live

        return live.monitor()

    check_drift()
    check_live()


monitor_model()
