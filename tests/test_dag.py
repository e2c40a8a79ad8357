"""DAG integrity: airflow/dags/ parses without errors and each DAG has the specified shape."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from conftest import ROOT

DAGS = ROOT / "airflow" / "dags"


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201 - Airflow type
    os.environ["AIRFLOW_HOME"] = str(tmp_path_factory.mktemp("airflow_home"))
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "false"
    from airflow.models.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


def test_no_import_errors(dagbag) -> None:  # noqa: ANN001
    assert dagbag.import_errors == {}


def test_dag_shape(dagbag, training_data: Path) -> None:  # noqa: ANN001
    assert set(dagbag.dags) == {
        "mlops_pipeline",
        "append_training_data",
        "monitor_model",
        "batch_predict",
        "promote_challenger",
    }
    dag = dagbag.dags["mlops_pipeline"]
    # Runs when the training data file's asset gets an event (and on Trigger, as every DAG does).
    assert type(dag.timetable).__name__ == "AssetTriggeredTimetable"
    assets = [(a.name, a.uri) for a in dag.timetable.asset_condition.objects]
    assert assets == [("iris_training_data", f"file://{training_data}")]
    assert {t.task_id for t in dag.tasks} == {"check_data", "train", "evaluate", "register"}
    downstream = {t.task_id: {d.task_id for d in t.downstream_list} for t in dag.tasks}
    assert downstream == {
        "check_data": {"train"},
        "train": {"evaluate", "register"},
        "evaluate": {"register"},
        "register": set(),
    }
    for task_id in ("train", "evaluate", "register"):
        assert dag.get_task(task_id).retries >= 1, task_id
    # A finished run reports its duration and outcome to the Pushgateway (monitoring/pipeline_metrics.py).
    assert dag.on_success_callback.__name__ == "report_success"
    assert dag.on_failure_callback.__name__ == "report_failure"


def test_parsing_does_not_import_heavy_libraries(tmp_path: Path) -> None:
    """The dag-processor re-parses the files constantly: mlflow/sklearn/pandas must load only inside the tasks,
    and naming the asset must not create its file. One fresh interpreter parses the files one after the other and
    says, after each, which heavy library it has loaded."""
    code = (
        "import json, runpy, sys\n"
        "for path in sys.argv[1:]:\n"
        "    runpy.run_path(path)\n"
        "    print(json.dumps([path, [m for m in ('mlflow', 'sklearn', 'pandas') if m in sys.modules]]))\n"
    )
    data = tmp_path / "iris.csv"
    env = {**os.environ, "AIRFLOW__CORE__LOAD_EXAMPLES": "false", "TRAINING_DATA_PATH": str(data)}
    files = [
        str(DAGS / name)
        for name in (
            "ml_pipeline.py",
            "monitor_model.py",
            "append_training_data.py",
            "batch_predict.py",
            "promote_challenger.py",
        )
    ]
    result = subprocess.run([sys.executable, "-c", code, *files], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    found = [json.loads(line) for line in result.stdout.splitlines() if line.startswith('["')]
    assert found == [[path, []] for path in files]
    assert not data.exists()


def test_batch_predict_maps_one_scoring_task_per_chunk(dagbag) -> None:  # noqa: ANN001
    """plan -> score (mapped over plan's chunks) -> combine, which updates the batch_predictions asset."""
    dag = dagbag.dags["batch_predict"]
    downstream = {t.task_id: {d.task_id for d in t.downstream_list} for t in dag.tasks}
    assert downstream == {"plan": {"score", "combine"}, "score": {"combine"}, "combine": set()}
    assert type(dag.get_task("score")).__name__.endswith("MappedOperator")
    assert [a.name for a in dag.get_task("combine").outlets] == ["batch_predictions"]
    assert dag.get_task("plan").retries == 0 and dag.params["input"] == ""


def test_the_monitor_checks_hourly_one_run_at_a_time_and_takes_a_minimum(dagbag, monkeypatch) -> None:  # noqa: ANN001
    """monitor_model: hourly without catch-up (one check reads all since the last), never two at once; the run's
    min_rows overrides MONITOR_MIN_ROWS and reaches the check."""
    dag = dagbag.dags["monitor_model"]
    assert type(dag.timetable).__name__ == "CronTriggerTimetable"
    assert dag.timetable.expression == "0 * * * *"
    assert dag.catchup is False and dag.max_active_runs == 1
    assert [t.task_id for t in dag.tasks] == ["check_drift", "check_live"]
    from mlops_pipeline.monitoring import drift

    seen = []
    record = lambda cfg, since: seen.append((cfg.monitor_min_rows, since)) or {"status": "ok"}  # noqa: E731
    monkeypatch.setattr(drift, "monitor", record)
    monkeypatch.setenv("MONITOR_MIN_ROWS", "100")
    task = dag.get_task("check_drift")
    assert task.python_callable(params={"min_rows": 7, "since": "2026-12-04T10:00:00+00:00"}) == {"status": "ok"}
    task.python_callable(params={"min_rows": None, "since": None})
    assert seen == [(7, datetime(2026, 12, 4, 10, tzinfo=UTC)), (100, None)]


def test_appending_rows_updates_the_asset_mlops_pipeline_runs_on(dagbag, tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    """The append task's outlet is the asset mlops_pipeline is scheduled on; its rows go in all or none."""
    from mlops_pipeline import data as stage
    from mlops_pipeline.schema import FEATURE_NAMES, IRIS_ROWS, DataError

    dag = dagbag.dags["append_training_data"]
    task = dag.get_task("append")
    outlets = [(a.name, a.uri) for a in task.outlets]
    schedule = [(a.name, a.uri) for a in dagbag.dags["mlops_pipeline"].timetable.asset_condition.objects]
    assert outlets == schedule
    data = tmp_path / "iris.csv"
    monkeypatch.setenv("TRAINING_DATA_PATH", str(data))
    good = dict(zip(FEATURE_NAMES, ("6.1", "2.8", "4.7", "1.2"), strict=True)) | {"target": "1"}
    assert task.python_callable(params={"rows": [good, good]}) == {"appended": 2, "file": str(data)}
    x, y = stage.load(data)
    assert len(x) == IRIS_ROWS + 2 and x[-1].tolist() == [6.1, 2.8, 4.7, 1.2] and y[-1] == 1
    before = data.read_bytes()
    with pytest.raises(DataError, match="row 2: target is '7'"):
        task.python_callable(params={"rows": [good, good | {"target": "7"}]})
    assert data.read_bytes() == before


def test_promote_challenger_asks_a_person_between_the_verdict_and_the_move(dagbag) -> None:  # noqa: ANN001
    """compare -> route -> approve (Airflow's ApprovalOperator, Reject on timeout) -> promote -> record; route may
    go straight to promote (PROMOTION_APPROVAL=auto) or to record (not ready); record runs after a rejection."""
    dag = dagbag.dags["promote_challenger"]
    assert type(dag.timetable).__name__ == "NullTimetable" and dag.max_active_runs == 1
    downstream = {t.task_id: {d.task_id for d in t.downstream_list} for t in dag.tasks}
    assert downstream == {
        "compare": {"route", "promote", "record"},
        "route": {"approve", "promote", "record"},
        "approve": {"promote"},
        "promote": {"record"},
        "record": set(),
    }
    from airflow.providers.standard.operators.hitl import ApprovalOperator

    approve = dag.get_task("approve")
    assert isinstance(approve, ApprovalOperator) and approve.defaults == ["Reject"]
    assert approve.response_timeout.total_seconds() == 24 * 3600
    # A rejection (or a timeout) skips only the direct downstream task, promote: record must still tag it.
    assert approve.ignore_downstream_trigger_rules is False
    assert dag.get_task("promote").trigger_rule == "none_failed_min_one_success"
    assert dag.get_task("record").trigger_rule == "none_failed"
    route = dag.get_task("route").python_callable
    ready = {"ready": True, "approval": "manual"}
    assert route(ready) == "approve" and route(ready | {"approval": "auto"}) == "promote"
    assert route({"ready": False, "approval": "auto"}) == "record"
