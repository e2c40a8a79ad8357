"""DAG integrity: airflow/dags/ml_pipeline.py parses without errors and has the specified shape."""

from __future__ import annotations

import os
import subprocess
import sys

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


def test_dag_shape(dagbag) -> None:  # noqa: ANN001
    assert set(dagbag.dags) == {"mlops_pipeline"}
    dag = dagbag.dags["mlops_pipeline"]
    assert type(dag.timetable).__name__ == "NullTimetable"  # manual: triggered from the UI, the REST API or make demo
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
    # A finished run reports its duration and outcome to the Pushgateway (airflow/models/pipeline_metrics.py).
    assert dag.on_success_callback.__name__ == "report_success"
    assert dag.on_failure_callback.__name__ == "report_failure"


def test_parsing_does_not_import_heavy_libraries() -> None:
    """The dag-processor re-parses the file constantly: mlflow/sklearn must load only inside the task."""
    code = (
        "import runpy, sys; runpy.run_path(sys.argv[1]);"
        "heavy = [m for m in ('mlflow', 'sklearn', 'pandas') if m in sys.modules];"
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    env = {**os.environ, "AIRFLOW__CORE__LOAD_EXAMPLES": "false"}
    result = subprocess.run(
        [sys.executable, "-c", code, str(DAGS / "ml_pipeline.py")], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
