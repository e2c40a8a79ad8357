"""mlops_pipeline/promotion.py: the challenger judged on real inference-log files and a real registry (the session's
tracking server), then promoted or not, and the decision tagged on its version."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from conftest import train_run
from mlops_pipeline import promotion, registry
from mlops_pipeline.schema import CHALLENGER
from mlops_pipeline.serving.inference_log import InferenceLog
from mlops_pipeline.settings import PromotionSettings, TrainSettings, from_env

ROW = [5.1, 3.5, 1.4, 0.2]


def new_versions(tracking_server: str) -> tuple[str, str, str]:
    """(model name, champion version, challenger version): two small forests, the second as challenger."""
    name = f"iris-promo-{uuid.uuid4().hex[:8]}"
    train = from_env(TrainSettings, registered_model_name=name, min_accuracy=0, promotion="challenger")
    first = registry.register_and_promote(train_run(tracking_server, "promo-test", rf_n_estimators=5), train)
    second = registry.register_and_promote(train_run(tracking_server, "promo-test", rf_n_estimators=5), train)
    assert (first["alias"], second["alias"]) == ("champion", CHALLENGER)
    return name, first["version"], second["version"]


@pytest.fixture(scope="module")
def versions(tracking_server: str) -> tuple[str, str, str]:
    """Shared by the tests that move no alias (pytest-randomly runs them in any order)."""
    return new_versions(tracking_server)


def settings(tracking_server: str, name: str, log_dir: Path, **values: object) -> PromotionSettings:
    given = {"mlflow_tracking_uri": tracking_server, "registered_model_name": name, "inference_log_dir": log_dir}
    return from_env(PromotionSettings, **given, **values)


def shadow_log(log_dir: Path, name: str, champion: str, challenger: str, requests: int, wrong: dict) -> None:
    """`requests` requests of 2 rows, true labels [1, 1]; `wrong[role]` requests (the first ones) that role got
    wrong on row 0."""
    log = InferenceLog(log_dir, flush_seconds=3600)
    log.start()
    for i in range(requests):
        for version, role in ((champion, "champion"), (challenger, "challenger")):
            guess = np.array([0 if i < wrong[role] else 1, 1])
            log.record(f"q{i}", name, version, "r", np.array([ROW, ROW]), guess, shadow=role == "challenger")
        log.feedback(f"q{i}", [1, 1])
    log.close()


def test_a_challenger_with_too_few_labels_is_not_ready_and_says_how_many(
    tracking_server: str, versions: tuple[str, str, str], tmp_path: Path
) -> None:
    name, champion, challenger = versions
    nothing = promotion.compare(settings(tracking_server, name, tmp_path / "empty"))  # no labeled row at all
    assert nothing["reason"].startswith("0 labeled rows") and nothing["challenger_accuracy"] is None
    json.dumps(nothing, allow_nan=False)  # a task's result: JSON without NaN, or Airflow refuses the XCom
    shadow_log(tmp_path, name, champion, challenger, 40, {"champion": 4, "challenger": 0})
    verdict = promotion.compare(settings(tracking_server, name, tmp_path))  # MIN_FEEDBACK 100 > 80 rows
    assert not verdict["ready"] and verdict["reason"] == "80 labeled rows of the challenger, MIN_FEEDBACK is 100"
    tags = promotion.record(verdict, None, None)
    assert tags[promotion.DECISION] == "not ready"
    assert MlflowClient().get_model_version(name, challenger).tags[promotion.REASON] == verdict["reason"]
    assert registry.champion(name).version == champion


def test_a_worse_challenger_is_not_ready_by_mlflows_verdict(
    tracking_server: str, versions: tuple[str, str, str], tmp_path: Path
) -> None:
    name, champion, challenger = versions
    shadow_log(tmp_path, name, champion, challenger, 60, {"champion": 0, "challenger": 1})
    verdict = promotion.compare(settings(tracking_server, name, tmp_path, min_feedback=50))
    assert not verdict["ready"] and verdict["reason"].startswith("worse on live traffic"), verdict


def test_a_canary_is_judged_on_the_requests_each_version_answered(
    tracking_server: str, versions: tuple[str, str, str], tmp_path: Path
) -> None:
    name, champion, challenger = versions
    log = InferenceLog(tmp_path, flush_seconds=3600)
    log.start()
    for i in range(40):  # 10 answered by the challenger (all right), 30 by the champion (3 wrong)
        version = challenger if i < 10 else champion
        log.record(f"c{i}", name, version, "r", np.array([ROW]), np.array([2 if 10 <= i < 13 else 0]))
        log.feedback(f"c{i}", [0])
    log.close()
    verdict = promotion.compare(settings(tracking_server, name, tmp_path, min_feedback=10))
    assert verdict["ready"] and "each on its own requests" in verdict["reason"], verdict
    assert (verdict["labeled_rows"], verdict["champion_accuracy"]) == (10, 0.9)


def test_rejected_and_timed_out_answers_move_nothing_and_say_so(
    tracking_server: str, versions: tuple[str, str, str], tmp_path: Path
) -> None:
    name, champion, challenger = versions
    verdict = {"ready": True, "reason": "not worse", "model": name, "challenger": challenger}
    at = datetime(2026, 12, 8, 10, tzinfo=UTC)
    rejected = {"chosen_options": ["Reject"], "responded_by_user": {"id": "2", "name": "bo"}, "responded_at": at}
    assert promotion.record(verdict, rejected, None)[promotion.DECISION] == "rejected"
    assert MlflowClient().get_model_version(name, challenger).tags[promotion.BY] == "bo"
    timed_out = {"chosen_options": ["Reject"], "responded_by_user": None, "responded_at": at, "timedout": True}
    tags = promotion.record(verdict, timed_out, None)
    assert tags[promotion.DECISION] == "timed out" and "PROMOTION_APPROVAL_HOURS" in tags[promotion.REASON]
    assert registry.champion(name).version == champion
    assert registry.champion(name, alias=CHALLENGER).version == challenger


def test_a_better_challenger_is_ready_then_promoted_and_the_approver_is_tagged(
    tracking_server: str, tmp_path: Path
) -> None:
    name, champion, challenger = new_versions(tracking_server)  # its own: it moves the aliases
    shadow_log(tmp_path, name, champion, challenger, 60, {"champion": 6, "challenger": 0})
    verdict = promotion.compare(settings(tracking_server, name, tmp_path))
    assert verdict["ready"] and verdict["labeled_rows"] == 120, verdict
    assert (verdict["challenger_accuracy"], verdict["champion_accuracy"]) == (1.0, 114 / 120)
    assert "on the same requests" in verdict["reason"] and f"version {challenger} (challenger)" in verdict["summary"]
    answer = {
        "chosen_options": ["Approve"],
        "responded_by_user": {"id": "1", "name": "ana"},
        "responded_at": datetime(2026, 12, 8, 9, tzinfo=UTC),
        "timedout": False,
    }
    assert promotion.promote(verdict, answer) == challenger
    assert registry.champion(name).version == challenger and registry.champion(name, alias=CHALLENGER) is None
    moved = registry.history(name, challenger)[-2]
    assert (moved["alias"], moved["action"], moved["by"]) == ("champion", "set", "ana")
    tags = promotion.record(verdict, answer, challenger)
    assert tags == {
        promotion.DECISION: "promoted",
        promotion.REASON: verdict["reason"],
        promotion.BY: "ana",
        promotion.AT: "2026-12-08 09:00:00+00:00",
    }
    with pytest.raises(RuntimeError, match=f"no longer version {challenger}"):  # approved twice: nothing moves
        promotion.promote(verdict, answer)
