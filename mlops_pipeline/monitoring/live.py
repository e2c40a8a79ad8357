"""How each model version does on live traffic: the true labels clients sent back (POST /feedback) joined with what
each version predicted for those requests, served or in shadow (docs/challenger.md). Plain functions over the
inference log's records (read_labeled: the labeled requests' only); what the monitor logs and pushes is built from
``figures()``.

A label is matched by request ID and row. Feedback for an ID that was never logged is counted as unmatched, and
feedback whose label count differs from the rows that request had as mismatched; neither is used. When a client
sends feedback for the same request twice, the later one counts.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd

from mlops_pipeline import registry, train
from mlops_pipeline.monitoring import log_reader, pipeline_metrics
from mlops_pipeline.schema import CHALLENGER, FEEDBACK_FIELDS, MONITORING_EXPERIMENT, SHADOW
from mlops_pipeline.settings import MonitorSettings, from_env

log = logging.getLogger(__name__)

LABELS = FEEDBACK_FIELDS[2]
COLUMNS = ["request_id", "row", "label", "model_version", "prediction", "shadow"]


@dataclass
class Joined:
    """One row per labeled input row and version that predicted it (COLUMNS), and the feedback not used."""

    rows: pd.DataFrame
    unmatched: int = 0  # feedback items whose request ID was never logged
    mismatched: int = 0  # feedback items whose label count is not the request's row count
    used: int = 0  # feedback items joined
    versions: set[str] = field(default_factory=set)


def join(records: Iterable[dict]) -> Joined:
    """The labeled rows of every version that predicted them (the served answer and any shadow prediction)."""
    labels: dict[str, list] = {}
    predicted: dict[str, list[tuple[str, list, bool]]] = {}
    for record in records:
        if LABELS in record:
            labels[record["request_id"]] = record[LABELS]
        elif isinstance(record.get("predictions"), list):
            key = record["request_id"]
            predicted.setdefault(key, []).append(
                (str(record["model_version"]), record["predictions"], bool(record.get(SHADOW)))
            )
    joined, rows = Joined(pd.DataFrame(columns=COLUMNS)), []
    for request_id, truth in labels.items():
        answers = predicted.get(request_id)
        if not answers:
            joined.unmatched += 1
            continue
        if any(len(predictions) != len(truth) for _, predictions, _ in answers):
            joined.mismatched += 1
            continue
        joined.used += 1
        for version, predictions, shadow in answers:
            joined.versions.add(version)
            rows += [
                (request_id, i, label, version, prediction, shadow)
                for i, (label, prediction) in enumerate(zip(truth, predictions, strict=True))
            ]
    if rows:
        joined.rows = pd.DataFrame(rows, columns=COLUMNS)
    return joined


def accuracy(rows: pd.DataFrame) -> float:
    return float((rows["prediction"] == rows["label"]).mean()) if len(rows) else float("nan")


def figures(joined: Joined, champion: str, challenger: str | None = None, last: int | None = None) -> dict[str, float]:
    """Per version its live accuracy and labeled rows; with a challenger, both versions' accuracy on the rows both
    predicted (the same requests: shadow mode) and how often they agreed there. `last`: the champion's accuracy
    over its last that many labeled rows too (the alert's window)."""
    rows = joined.rows
    out: dict[str, float] = {
        "feedback_used": joined.used,
        "feedback_unmatched": joined.unmatched,
        "feedback_mismatched": joined.mismatched,
    }
    for role, version in (("champion", champion), ("challenger", challenger)):
        if version is None:
            continue
        mine = rows[rows["model_version"] == version]
        out[f"{role}_labeled_rows"] = len(mine)
        out[f"{role}_live_accuracy"] = accuracy(mine)
    if last is not None:
        mine = rows[rows["model_version"] == champion]
        out["champion_live_accuracy_last"] = accuracy(mine.tail(last))
    if challenger is not None:
        key = ["request_id", "row"]
        ours = rows[rows["model_version"] == champion].drop_duplicates(key)
        theirs = rows[rows["model_version"] == challenger].drop_duplicates(key)
        both = ours.merge(theirs, on=[*key, "label"], suffixes=("_champion", "_challenger"))
        out["same_rows"] = len(both)
        if len(both):
            out["champion_accuracy_same_rows"] = float((both["prediction_champion"] == both["label"]).mean())
            out["challenger_accuracy_same_rows"] = float((both["prediction_challenger"] == both["label"]).mean())
            out["agreement"] = float((both["prediction_champion"] == both["prediction_challenger"]).mean())
    return out


def plain(figures: dict[str, Any]) -> dict[str, Any]:
    """The figures with None for NaN (no rows behind it): a task's result must be JSON, which has no NaN."""
    return {key: None if isinstance(value, float) and math.isnan(value) else value for key, value in figures.items()}


def read_labeled(cfg: MonitorSettings, since: datetime, until: datetime) -> list[dict]:
    """The feedback records of the window, then the predictions of the requests they name: two passes over the log,
    so what is held grows with the labels, not with the traffic (a busy log has millions of unlabeled requests)."""
    labels = log_reader.read_records(cfg, since, until, keep=lambda record: LABELS in record, marker=f'"{LABELS}"')
    labeled = {record["request_id"] for record in labels}

    def answered(record: dict) -> bool:
        return LABELS not in record and record.get("request_id") in labeled

    return [*log_reader.read_records(cfg, since, until, keep=answered), *labels] if labeled else labels


@dataclass
class Observed:
    """What the log says now about the registry's champion and challenger: their versions, the join, the figures."""

    model: str
    champion: str
    challenger: str | None
    joined: Joined
    figures: dict[str, float]


def observe(cfg: MonitorSettings, now: datetime | None = None) -> Observed | None:
    """The last MONITOR_LIVE_DAYS of the log joined with its feedback, for the champion (and the challenger, if
    any); None without a champion."""
    name = cfg.registered_model_name
    champion = registry.champion(name)
    if champion is None:
        return None
    challenger = registry.champion(name, alias=CHALLENGER)
    versions = str(champion.version), str(challenger.version) if challenger else None
    until = now or datetime.now(UTC)
    joined = join(read_labeled(cfg, until - timedelta(days=cfg.monitor_live_days), until))
    return Observed(name, *versions, joined, figures(joined, *versions, cfg.monitor_live_last_rows))


def monitor(cfg: MonitorSettings | None = None, now: datetime | None = None) -> dict[str, Any]:
    """Log the live figures of the champion (and the challenger, if any) to MLflow's monitoring experiment, as a run
    tagged `check=live`, and push them to the Pushgateway. Returns them (the task result); without feedback yet,
    says so and logs nothing."""
    import mlflow

    cfg = cfg or from_env(MonitorSettings)
    train.connect(cfg, MONITORING_EXPERIMENT)
    seen = observe(cfg, now)
    if seen is None:
        return {"status": "no champion", "model": cfg.registered_model_name}
    joined, got = seen.joined, seen.figures
    versions = {"champion": seen.champion, "challenger": seen.challenger}
    if not joined.used:
        log.info(
            "live: no feedback joined yet for %s (%d unmatched, %d mismatched)",
            seen.model,
            joined.unmatched,
            joined.mismatched,
        )
        return plain({"status": "no feedback", "model": seen.model, **versions, **got})
    tags = {"check": "live", "model_name": seen.model, "champion_version": seen.champion}
    tags |= {"challenger_version": seen.challenger} if seen.challenger else {}
    with mlflow.start_run(run_name=f"live {seen.model} v{seen.champion}", tags=tags) as run:
        mlflow.log_metrics({key: value for key, value in got.items() if not math.isnan(value)})
    pipeline_metrics.live_checked(cfg.pushgateway_url, seen.model, got, cfg.min_accuracy)
    log.info("live: %s %s", seen.model, ", ".join(f"{k} {v:.4g}" for k, v in got.items()))
    return plain({"status": "compared", "model": seen.model, "monitoring_run_id": run.info.run_id, **versions, **got})
