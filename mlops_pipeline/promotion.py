"""Should the challenger become the champion? The promote_challenger DAG's stages (docs/challenger.md): judge it on
live traffic, then record what was decided. The alias itself moves in registry.py; the approval in between is
Airflow's (ApprovalOperator), so nothing here waits for a person.

The verdict is MLflow's `validate_evaluation_results`, as the offline gate's (evaluate.not_worse): the challenger's
live accuracy must be at least MIN_ACCURACY and not below the champion's. In shadow mode both predicted the same
rows, and those rows are compared; in canary mode they answered different requests, and each one's own labeled
rows are. Either way the challenger needs MIN_FEEDBACK labeled rows first.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from mlops_pipeline import evaluate, registry, train
from mlops_pipeline.monitoring import live
from mlops_pipeline.schema import CHALLENGER, MONITORING_EXPERIMENT
from mlops_pipeline.settings import PromotionSettings, from_env

log = logging.getLogger(__name__)
METRIC = "live_accuracy"
DECISION, REASON, BY, AT = "promotion.decision", "promotion.reason", "promotion.by", "promotion.at"  # version tags


def compare(cfg: PromotionSettings | None = None, now: datetime | None = None) -> dict[str, Any]:
    """The challenger's verdict on live traffic: `ready` (enough labeled rows and not worse than the champion),
    the reason in words, both versions and their figures, and a summary for the person who approves."""
    cfg = cfg or from_env(PromotionSettings)
    train.connect(cfg, MONITORING_EXPERIMENT)
    seen = live.observe(cfg, now)
    if seen is None or seen.challenger is None:
        what = "no champion" if seen is None else f"no challenger beside champion v{seen.champion}"
        return {"ready": False, "reason": what, "model": cfg.registered_model_name, "challenger": None}
    got = seen.figures
    if got.get("same_rows"):  # shadow: the same requests
        basis, rows = "on the same requests", int(got["same_rows"])
        mine, theirs = got["challenger_accuracy_same_rows"], got["champion_accuracy_same_rows"]
    else:  # canary: each on the requests it answered
        basis, rows = "each on its own requests", int(got["challenger_labeled_rows"])
        mine, theirs = got["challenger_live_accuracy"], got["champion_live_accuracy"]
    figures = f"challenger v{seen.challenger} {mine:.4f}, champion v{seen.champion} {theirs:.4f} {basis}"
    if rows < cfg.min_feedback:
        ready, reason = False, f"{rows} labeled rows of the challenger, MIN_FEEDBACK is {cfg.min_feedback}"
    elif (failed := evaluate.not_worse(METRIC, cfg.min_accuracy, mine, theirs)) is not None:
        log.info("promotion: %s", failed)
        ready, reason = False, f"worse on live traffic: {figures}, MIN_ACCURACY {cfg.min_accuracy:.4f}"
    else:
        ready, reason = True, f"not worse on live traffic: {figures} ({rows} labeled rows)"
    summary = "\n".join(
        [
            f"Promote {seen.model} version {seen.challenger} (challenger) to champion, replacing version "
            f"{seen.champion}?",
            "",
            "| | champion | challenger |",
            "|---|---|---|",
            f"| version | {seen.champion} | {seen.challenger} |",
            f"| live accuracy {basis} | {theirs:.4f} | {mine:.4f} |",
            f"| labeled rows | {int(got['champion_labeled_rows'])} | {int(got['challenger_labeled_rows'])} |",
            "",
            f"Agreement on the same rows: {got.get('agreement', float('nan')):.4f}. Verdict: {reason}.",
        ]
    )
    log.info("promotion: %s v%s %s", seen.model, seen.challenger, reason)
    return live.plain(
        {
            "ready": ready,
            "reason": reason,
            "model": seen.model,
            "champion": seen.champion,
            "challenger": seen.challenger,
            "labeled_rows": rows,
            "challenger_accuracy": mine,
            "champion_accuracy": theirs,
            "approval": cfg.promotion_approval,
            "summary": summary,
        }
    )


def approver(answer: dict[str, Any] | None) -> str:
    """Who approved, from ApprovalOperator's result (its `responded_by_user`), or why nobody had to."""
    user = (answer or {}).get("responded_by_user")
    if isinstance(user, dict):
        return str(user.get("name") or user.get("id"))
    return str(user) if user else "PROMOTION_APPROVAL=auto"


def promote(verdict: dict[str, Any], answer: dict[str, Any] | None) -> str:
    """Move champion to the judged challenger, unless the alias moved meanwhile (then nothing moves: the approval
    was for another version). Returns the new champion's version."""
    name, version = verdict["model"], verdict["challenger"]
    current = registry.champion(name, alias=CHALLENGER)
    if current is None or str(current.version) != version:
        raise RuntimeError(f"the challenger of '{name}' is no longer version {version}: not promoted, judge it again")
    return registry.promote_challenger(name, approver(answer), verdict["reason"])


def record(verdict: dict[str, Any], answer: dict[str, Any] | None, promoted: str | None) -> dict[str, str]:
    """Tag the challenger's version with the decision, who made it and when (promoted, rejected, timed out, or not
    ready); returns the tags. Nothing to tag without a challenger."""
    from mlflow import MlflowClient

    chosen = (answer or {}).get("chosen_options") or []
    at = str((answer or {}).get("responded_at") or datetime.now().astimezone().isoformat(timespec="seconds"))
    if promoted:
        tags = {DECISION: "promoted", REASON: verdict["reason"], BY: approver(answer)}
    elif not verdict["ready"]:
        tags = {DECISION: "not ready", REASON: verdict["reason"], BY: "promote_challenger"}
    elif (answer or {}).get("timedout"):
        tags = {DECISION: "timed out", REASON: "nobody answered within PROMOTION_APPROVAL_HOURS", BY: "Airflow"}
    else:
        tags = {DECISION: "rejected", REASON: f"answered {chosen or 'nothing'}", BY: approver(answer)}
    tags[AT] = at
    if verdict.get("challenger"):
        client = MlflowClient()
        for key, value in tags.items():
            client.set_model_version_tag(verdict["model"], verdict["challenger"], key, value)
    log.info("promotion: %s v%s %s", verdict["model"], verdict.get("challenger"), tags)
    return tags
