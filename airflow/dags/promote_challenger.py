"""promote_challenger: should the model served beside the champion take its place?

On Trigger (UI, REST API, make challenger-demo). `compare` judges the challenger on the labels clients sent back
(POST /feedback): at least MIN_FEEDBACK labeled rows, and not worse than the champion on the same requests
(MLflow's validate_evaluation_results, as the offline gate). Ready, it asks a person: Airflow's Required actions page
(or its REST API, hitlDetails) shows both versions' figures, Approve or Reject, within PROMOTION_APPROVAL_HOURS
(then it counts as rejected). With PROMOTION_APPROVAL=auto nobody is asked. Approved, `champion` moves to the
challenger and the model-server follows; in every case `record` tags the challenger's version with the decision,
who made it and when. A thin layer over mlops_pipeline/promotion.py (docs/challenger.md).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import dag, task

from mlops_pipeline.settings import PromotionSettings, from_env

SETTINGS = from_env(PromotionSettings)  # read while the file is parsed: the approval's timeout
ANSWER = "answer"  # the approve task's XCom key with the person's answer (who, what, when, timed out)


class Approval(ApprovalOperator):
    """Airflow's ApprovalOperator, its answer also kept under the XCom key ANSWER: on Reject (or a timeout, which
    answers Reject) it skips promote by raising, so its return value, who answered and when, never reaches XCom."""

    def execute_complete(self, context, event):  # noqa: ANN001, ANN201 - ApprovalOperator's signature
        kept = {key: event.get(key) for key in ("chosen_options", "responded_by_user", "timedout")}
        responded_at = event.get("responded_at")
        kept["responded_at"] = responded_at.isoformat() if hasattr(responded_at, "isoformat") else responded_at
        context["ti"].xcom_push(key=ANSWER, value=kept)
        return super().execute_complete(context=context, event=event)


@dag(
    dag_id="promote_challenger",
    schedule=None,
    start_date=datetime(2025, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,  # one question to a person at a time
    tags=["mlops", "iris", "promotion"],
    doc_md=__doc__,
)
def promote_challenger() -> None:
    @task
    def compare() -> dict:
        """The challenger's figures on live traffic and whether it is ready to be judged by a person."""
        from mlops_pipeline import promotion

        return promotion.compare()

    @task.branch
    def route(verdict: dict) -> str:
        """Not ready: only record why. Ready: ask a person, or (PROMOTION_APPROVAL=auto) promote at once."""
        if not verdict["ready"]:
            return "record"
        return "promote" if verdict["approval"] == "auto" else "approve"

    approve = Approval(
        task_id="approve",
        subject="Promote challenger {{ ti.xcom_pull(task_ids='compare')['challenger'] }} to champion?",
        body="{{ ti.xcom_pull(task_ids='compare')['summary'] }}",
        defaults="Reject",  # what a timeout answers
        response_timeout=timedelta(hours=SETTINGS.promotion_approval_hours),
        ignore_downstream_trigger_rules=False,  # a rejection skips promote only; record still tags the decision
    )

    @task(trigger_rule="none_failed_min_one_success")  # after an approval, or straight from route (auto)
    def promote(verdict: dict, ti=None) -> str:  # noqa: ANN001 - Airflow's task instance
        """`champion` moves to the challenger; the approver is named in the alias history."""
        from mlops_pipeline import promotion, train

        train.connect(from_env(PromotionSettings))
        return promotion.promote(verdict, ti.xcom_pull(task_ids="approve", key=ANSWER))

    @task(trigger_rule="none_failed")  # after a promotion, a rejection (promote skipped) or a verdict of not ready
    def record(verdict: dict, ti=None) -> dict:  # noqa: ANN001
        """The decision, who made it and when, as tags of the challenger's version."""
        from mlops_pipeline import promotion, train

        train.connect(from_env(PromotionSettings))
        answer = ti.xcom_pull(task_ids="approve", key=ANSWER)
        return promotion.record(verdict, answer, ti.xcom_pull(task_ids="promote"))

    verdict = compare()
    routed, promoted, recorded = route(verdict), promote(verdict), record(verdict)
    routed >> [approve, promoted, recorded]
    approve >> promoted >> recorded


promote_challenger()
