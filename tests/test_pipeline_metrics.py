"""mlops_pipeline/monitoring/pipeline_metrics.py: what a finished run pushes, and that a push can never fail a run. The
pushes go to a small HTTP peer on 127.0.0.1 that records them (the compose suites push to the real Pushgateway)."""

from __future__ import annotations

import http.server
import logging
import os
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import free_port
from mlops_pipeline.monitoring import pipeline_metrics


class Recorder(http.server.BaseHTTPRequestHandler):
    pushes: list[tuple[str, str, str]] = []
    status = 200

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"])).decode()
        self.pushes.append((self.command, self.path, body))
        self.send_response(self.status)
        self.end_headers()

    do_PUT = do_POST  # noqa: N815

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def gateway(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[Recorder]]:
    Recorder.pushes, Recorder.status = [], 200
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Recorder)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    monkeypatch.setenv("PUSHGATEWAY_URL", f"http://127.0.0.1:{server.server_port}")
    yield Recorder
    server.shutdown()


def values(body: str) -> dict[str, float]:
    return {s.name: s.value for f in text_string_to_metric_families(body) for s in f.samples}


def context(dag_id: str, start: datetime | None, end: datetime | None) -> dict:
    return {
        "dag": SimpleNamespace(dag_id=dag_id),
        "run_id": "manual__1",
        "dag_run": SimpleNamespace(start_date=start, end_date=end),
    }


def test_a_successful_run_pushes_its_duration_outcome_and_success_time(gateway: type[Recorder]) -> None:
    end = datetime(2026, 12, 3, 1, 0, tzinfo=UTC)
    pipeline_metrics.dag_run_finished(context("mlops_pipeline", end - timedelta(seconds=42), end), succeeded=True)
    ((method, path, body),) = gateway.pushes
    # POST (pushadd): only these metrics of the group are replaced.
    assert (method, path) == ("POST", "/metrics/job/mlops_dag_run/dag_id/mlops_pipeline")
    assert values(body) == {
        "mlops_dag_run_succeeded": 1.0,
        "mlops_dag_run_duration_seconds": 42.0,
        "mlops_dag_run_end_timestamp_seconds": end.timestamp(),
        "mlops_dag_run_last_success_timestamp_seconds": end.timestamp(),
    }


def test_a_failed_run_keeps_the_last_success_time(gateway: type[Recorder]) -> None:
    end = datetime(2026, 12, 3, 2, 0, tzinfo=UTC)
    pipeline_metrics.dag_run_finished(context("mlops_pipeline", end - timedelta(seconds=5), end), succeeded=False)
    pushed = values(gateway.pushes[0][2])
    assert pushed["mlops_dag_run_succeeded"] == 0.0
    assert "mlops_dag_run_last_success_timestamp_seconds" not in pushed  # not pushed: the gateway keeps the old one


def test_a_run_that_never_started_has_no_duration(gateway: type[Recorder]) -> None:
    pipeline_metrics.dag_run_finished(context("mlops_pipeline", None, None), succeeded=False)
    assert "mlops_dag_run_duration_seconds" not in values(gateway.pushes[0][2])


def test_the_gate_decision_is_pushed_per_model(gateway: type[Recorder]) -> None:
    result = {"model": "iris-classifier", "version": "3", "promoted": False, "reason": "worse", "accuracy": 0.93}
    pipeline_metrics.model_registered(result)
    ((method, path, body),) = gateway.pushes
    assert (method, path) == ("POST", "/metrics/job/mlops_model/model/iris-classifier")
    assert values(body) == {"mlops_model_test_accuracy": 0.93, "mlops_model_version": 3.0, "mlops_model_promoted": 0}


def test_the_live_comparison_replaces_its_group_and_leaves_out_figures_without_rows(gateway: type[Recorder]) -> None:
    """PUT: a challenger gone since the last comparison leaves no figure behind; a NaN (no labeled rows) is not a
    number Prometheus should alert on."""
    got = {"champion_live_accuracy": 0.95, "champion_live_accuracy_last": float("nan"), "champion_labeled_rows": 40}
    got |= {"feedback_unmatched": 2, "feedback_used": 20, "agreement": 0.9}
    pipeline_metrics.live_checked(os.environ["PUSHGATEWAY_URL"], "iris-classifier", got, 0.9)
    ((method, path, body),) = gateway.pushes
    assert (method, path) == ("PUT", "/metrics/job/mlops_live/model/iris-classifier")
    pushed = values(body)
    assert pushed.pop("mlops_live_check_timestamp_seconds") > 0
    assert pushed == {
        "mlops_live_champion_accuracy": 0.95,
        "mlops_live_champion_labeled_rows": 40,
        "mlops_live_feedback_unmatched": 2,
        "mlops_live_agreement": 0.9,
        "mlops_live_min_accuracy": 0.9,
    }


@pytest.mark.parametrize("where", ["refused", "error"])
def test_a_failed_push_logs_one_line_and_never_raises(
    where: str, gateway: type[Recorder], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    if where == "refused":
        monkeypatch.setenv("PUSHGATEWAY_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    else:
        gateway.status = 500
    caplog.set_level(logging.WARNING)
    assert pipeline_metrics.push("mlops_model", {"model": "m"}, {"mlops_model_version": 1.0}) is False
    assert len(caplog.records) == 1 and "is the monitoring profile up?" in caplog.text


def test_no_url_means_nothing_is_pushed(gateway: type[Recorder], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUSHGATEWAY_URL", "")
    pipeline_metrics.model_registered({"model": "m", "version": "1", "promoted": True, "accuracy": 1.0})
    assert gateway.pushes == []
