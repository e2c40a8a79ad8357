"""Append labeled rows to the stack's training data; mlops_pipeline then retrains by itself (its asset changed).

Usage: python -m scripts.append_data ROWS.csv [--no-wait]      (make append-data FILE=ROWS.csv; .env or ENV_FILE)

ROWS.csv has the training data's header: the four Iris feature columns as scikit-learn names them and `target`
(0 setosa, 1 versicolor, 2 virginica). The rows go to Airflow's `append_training_data` DAG through its REST API;
its task checks every row and appends them all or none, and its success updates the training data asset, which
starts an `mlops_pipeline` run. A bad row is refused with the task's message naming it, and nothing changes.
Without --no-wait the script waits for that run and prints the gate's decision.
"""

from __future__ import annotations

import argparse
import csv
import os
from pathlib import Path

from scripts.stackclient import Airflow, run_script
from scripts.stackenv import ROOT, settings, wait_for

APPEND_DAG = "append_training_data"
TRAINING_DAG = "mlops_pipeline"


def read_rows(path: Path) -> list[dict[str, str]]:
    """The CSV's rows as sent (the task checks them); only an unreadable or empty file is refused here."""
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise SystemExit(f"append-data: cannot read {path}: {exc}") from None
    if not rows:
        raise SystemExit(f"append-data: {path} has no rows under its header")
    return rows


def refusal(airflow: Airflow, dag_run_id: str) -> str:
    """The task's own words for why it refused the rows: the exception its log records (the schema's DataError
    names the row and the problem)."""
    error = airflow.task_error(APPEND_DAG, dag_run_id, "append")
    if error is None:
        return "see the task log of append_training_data in the Airflow UI"
    return error["exc_value"] if error.get("exc_type") == "DataError" else f"{error['exc_type']}: {error['exc_value']}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path, help="CSV with the training data's header")
    parser.add_argument("--no-wait", action="store_true", help="do not wait for the retraining run")
    args = parser.parse_args(argv)
    rows = read_rows(args.file)
    cfg = settings(Path(os.environ.get("ENV_FILE", ROOT / ".env")))
    airflow = Airflow.login(cfg)
    airflow.wait_for_dag(APPEND_DAG)
    airflow.set_paused(TRAINING_DAG, False)  # a paused DAG would not run on the asset event
    before = {run["dag_run_id"] for run in airflow.runs(TRAINING_DAG)}
    dag_run = airflow.trigger(APPEND_DAG, {"rows": rows})
    if airflow.wait_for_run(APPEND_DAG, dag_run, timeout=300) != "success":
        raise SystemExit(f"append-data: refused, nothing appended: {refusal(airflow, dag_run)}")
    print(f"append-data: {len(rows)} rows appended; the training data asset is updated", flush=True)
    if args.no_wait:
        return 0

    def retraining() -> dict | None:
        new = [r for r in airflow.runs(TRAINING_DAG) if r["dag_run_id"] not in before]
        return next((r for r in new if r.get("run_type") == "asset_triggered"), None)

    run = wait_for(f"{TRAINING_DAG} to start on the asset event", retraining, 120, interval=2)
    print(f"append-data: {TRAINING_DAG} run {run['dag_run_id']} started by the asset event", flush=True)
    if airflow.wait_for_run(TRAINING_DAG, run["dag_run_id"]) != "success":
        raise SystemExit(f"append-data: {TRAINING_DAG} failed; read its task logs in the Airflow UI")
    gate = airflow.xcom(TRAINING_DAG, run["dag_run_id"], "register")
    gate = gate if isinstance(gate, dict) else {}
    verdict = f"promoted to {gate.get('alias') or 'champion'}" if gate.get("promoted") else "not promoted"
    print(f"append-data: version {gate.get('version')} {verdict}: {gate.get('reason')}")
    return 0


if __name__ == "__main__":
    run_script("append-data", main)
