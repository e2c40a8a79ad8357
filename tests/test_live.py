"""mlops_pipeline/monitoring/live.py: feedback joined with what each version predicted, through real inference-log
files (written by serving/inference_log.py, read by log_reader.read_records); monitor() against a real tracking
server and registry."""

from __future__ import annotations

import json
import math
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import mlflow
import numpy as np
from mlflow import MlflowClient

from conftest import train_run
from mlops_pipeline import registry
from mlops_pipeline.monitoring import live
from mlops_pipeline.monitoring.log_reader import read_records
from mlops_pipeline.schema import CHALLENGER, MONITORING_EXPERIMENT
from mlops_pipeline.serving.inference_log import InferenceLog
from mlops_pipeline.settings import LogSettings, MonitorSettings, TrainSettings, from_env

ROW = [5.1, 3.5, 1.4, 0.2]


def logged(tmp_path: Path, write: object) -> list[dict]:
    recorder = InferenceLog(tmp_path, flush_seconds=3600)
    recorder.start()
    write(recorder)  # type: ignore[operator]
    recorder.close()
    return read_records(LogSettings(inference_log_dir=tmp_path), since=datetime(2000, 1, 1, tzinfo=UTC))


def test_only_the_labeled_requests_are_held_and_the_join_is_the_same(tmp_path: Path) -> None:
    """500 requests, 10 of them labeled, and feedback for an ID never served: read_labeled holds the 10 requests'
    predictions and the 11 feedback records, and joins to what the whole log joins to."""

    def write(log: InferenceLog) -> None:
        for i in range(500):
            log.record(f"r{i}", "m", "1", "run", np.array([ROW]), np.array([i % 3]))
        for i in range(0, 500, 50):
            log.feedback(f"r{i}", [0])
        log.feedback("never-served", [1])

    everything = logged(tmp_path, write)
    cfg = from_env(MonitorSettings, inference_log_dir=tmp_path)
    held = live.read_labeled(cfg, datetime(2000, 1, 1, tzinfo=UTC), datetime.now(UTC) + timedelta(minutes=1))
    assert (len(everything), len(held)) == (511, 21)
    whole, labeled = live.join(everything), live.join(held)
    assert (labeled.used, labeled.unmatched) == (whole.used, whole.unmatched) == (10, 1)
    assert labeled.rows.equals(whole.rows) and len(labeled.rows) == 10


def test_shadow_traffic_joined_with_feedback_gives_each_versions_accuracy_on_the_same_rows(tmp_path: Path) -> None:
    """20 requests of 2 rows: the champion (v1) right on rows 0, wrong on rows 1 of the even requests; the
    challenger (v2) in shadow right on every row but row 1 of request 0. 16 requests get their labels."""

    def write(log: InferenceLog) -> None:
        for i in range(20):
            champion = np.array([1, 0 if i % 2 == 0 else 1])
            challenger = np.array([1, 0 if i == 0 else 1])
            log.record(f"r{i}", "iris", "1", "run1", np.array([ROW, ROW]), champion)
            log.record(f"r{i}", "iris", "2", "run2", np.array([ROW, ROW]), challenger, shadow=True)
        for i in range(16):
            log.feedback(f"r{i}", [1, 1])
        log.feedback("never-served", [0])
        log.feedback("r19", [1])  # one label for two rows
        log.feedback("r15", [1, 1])  # again: the later one counts, once

    joined = live.join(logged(tmp_path, write))
    assert (joined.used, joined.unmatched, joined.mismatched) == (16, 1, 1)
    got = live.figures(joined, champion="1", challenger="2", last=8)
    assert got["champion_labeled_rows"] == got["challenger_labeled_rows"] == got["same_rows"] == 32
    assert got["champion_live_accuracy"] == got["champion_accuracy_same_rows"] == 24 / 32  # 8 even requests wrong
    assert got["challenger_live_accuracy"] == got["challenger_accuracy_same_rows"] == 31 / 32
    assert got["agreement"] == 25 / 32  # they differ where the champion is wrong, except request 0
    assert got["champion_live_accuracy_last"] == 6 / 8  # the last 8 labeled rows: requests 12-15


def test_canary_answers_count_for_the_version_that_answered_and_share_no_rows(tmp_path: Path) -> None:
    def write(log: InferenceLog) -> None:
        for i in range(10):
            version = "2" if i < 3 else "1"
            log.record(f"c{i}", "iris", version, "run", np.array([ROW]), np.array([0 if version == "2" else 1]))
            log.feedback(f"c{i}", [0])

    got = live.figures(live.join(logged(tmp_path, write)), champion="1", challenger="2")
    assert (got["champion_labeled_rows"], got["challenger_labeled_rows"], got["same_rows"]) == (7, 3, 0)
    assert (got["champion_live_accuracy"], got["challenger_live_accuracy"]) == (0.0, 1.0)
    assert "agreement" not in got


def test_no_feedback_yet_is_no_figure_not_an_error(tmp_path: Path) -> None:
    joined = live.join(logged(tmp_path, lambda log: log.record("a", "iris", "1", "r", np.array([ROW]), np.array([0]))))
    got = live.figures(joined, champion="1")
    assert got["champion_labeled_rows"] == 0 and math.isnan(got["champion_live_accuracy"])


def test_monitor_logs_the_comparison_to_mlflow_and_nothing_without_feedback(
    tracking_server: str, tmp_path: Path
) -> None:
    name = f"iris-live-{uuid.uuid4().hex[:8]}"
    train = from_env(TrainSettings, registered_model_name=name, min_accuracy=0, promotion="challenger")
    champion = registry.register_and_promote(train_run(tracking_server, "live-test", rf_n_estimators=5), train)
    challenger = registry.register_and_promote(train_run(tracking_server, "live-test", rf_n_estimators=5), train)
    assert challenger["alias"] == CHALLENGER
    cfg = from_env(
        MonitorSettings, mlflow_tracking_uri=tracking_server, registered_model_name=name, inference_log_dir=tmp_path
    )

    def served(log: InferenceLog) -> None:
        for i in range(4):
            log.record(f"m{i}", name, champion["version"], "r", np.array([ROW]), np.array([0]))
            log.record(f"m{i}", name, challenger["version"], "r", np.array([ROW]), np.array([i % 2]), shadow=True)

    logged(tmp_path / "a", served)
    waiting = live.monitor(from_env(MonitorSettings, **{**cfg.model_dump(), "inference_log_dir": tmp_path / "a"}))
    assert waiting["status"] == "no feedback" and waiting["challenger"] == challenger["version"]
    assert waiting["champion_live_accuracy"] is None  # no rows: None, as JSON (Airflow's XCom) has no NaN
    json.dumps(waiting, allow_nan=False)

    def with_feedback(log: InferenceLog) -> None:
        served(log)
        for i in range(4):
            log.feedback(f"m{i}", [0])

    logged(tmp_path / "b", with_feedback)
    done = live.monitor(from_env(MonitorSettings, **{**cfg.model_dump(), "inference_log_dir": tmp_path / "b"}))
    assert done["status"] == "compared"
    assert (done["champion_live_accuracy"], done["challenger_live_accuracy"], done["agreement"]) == (1.0, 0.5, 0.5)
    mlflow.set_tracking_uri(tracking_server)
    runs = mlflow.search_runs(
        experiment_names=[MONITORING_EXPERIMENT], filter_string=f"tags.model_name = '{name}'", output_format="list"
    )
    assert [r.info.run_id for r in runs] == [done["monitoring_run_id"]]  # the first check logged nothing
    run = MlflowClient(tracking_server).get_run(done["monitoring_run_id"])
    assert run.data.tags["check"] == "live" and run.data.tags["challenger_version"] == challenger["version"]
    assert run.data.metrics["challenger_accuracy_same_rows"] == 0.5 and run.data.metrics["same_rows"] == 4
