"""Score a CSV file with the stack's champion: the batch_predict DAG, from a file on this machine to its results.

Usage: python -m scripts.predict_batch ROWS.csv [--out DIR]      (make predict-batch FILE=ROWS.csv [OUT=DIR])
  The scale variant: COMPOSE_FILE=docker-compose.yml:docker-compose.scale.yml (docker compose reads it).

ROWS.csv has the four Iris feature columns as scikit-learn names them; any other column (an ID) is carried through.
The file goes to BATCH_ROOT/input/ inside the stack (`python -m mlops_pipeline.batch put`, in the scheduler's
container: a volume, or the scale variant's bucket), the DAG scores it, and the results come back beside the input
(or in --out): <stem>.predictions.csv and, when the training data's schema refused rows, <stem>.rejected.csv.
A refused file (missing columns, empty, no champion yet) exits non-zero with the task's own words.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
from pathlib import Path

from scripts.stackclient import Airflow, run_script
from scripts.stackenv import ROOT, settings

DAG_ID = "batch_predict"
SERVICE = "airflow-scheduler"  # has the package and the batch storage in both variants
BATCH = ["exec", "-T", SERVICE, "python", "-m", "mlops_pipeline.batch"]  # put NAME < file, get PATH > file


def fetch(compose: list[str], relative: str, target: Path) -> None:
    """A file under BATCH_ROOT to `target`, written whole or not at all."""
    with tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", delete=False) as f:
        done = subprocess.run(
            [*compose, "exec", "-T", SERVICE, "python", "-m", "mlops_pipeline.batch", "get", relative], stdout=f
        )
    if done.returncode != 0:
        Path(f.name).unlink()
        raise SystemExit(f"predict-batch: could not copy {relative} back")
    os.replace(f.name, target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path, help="CSV with the Iris feature columns")
    parser.add_argument("--out", type=Path, help="where the results go (default: beside the input)")
    args = parser.parse_args(argv)
    if not args.file.is_file():
        raise SystemExit(f"predict-batch: {args.file}: no such file")
    out = args.out or args.file.parent
    out.mkdir(parents=True, exist_ok=True)
    cfg = settings(Path(os.environ.get("ENV_FILE", ROOT / ".env")))
    compose = ["docker", "compose"]

    print(f"== put {args.file} into the stack", flush=True)
    with args.file.open("rb") as f:
        if subprocess.run([*compose, *BATCH, "put", args.file.name], stdin=f).returncode != 0:
            raise SystemExit("predict-batch: could not put the file into the stack (is it up? make up)")
    airflow = Airflow.login(cfg)
    airflow.wait_for_dag(DAG_ID)
    airflow.set_paused(DAG_ID, False)
    dag_run = airflow.trigger(DAG_ID, {"input": args.file.name})
    print(f"== {DAG_ID} run {dag_run}", flush=True)
    if airflow.wait_for_run(DAG_ID, dag_run) != "success":
        raise SystemExit(f"predict-batch: refused: {airflow.why_failed(DAG_ID, dag_run)}")
    result = airflow.xcom(DAG_ID, dag_run, "combine")
    assert isinstance(result, dict), result
    stem = args.file.stem
    fetch(compose, result["output"], out / f"{stem}.predictions.csv")
    print(
        f"rows in {result['rows']}, scored {result['scored']}, rejected {result['rejected']} "
        f"(model version {result['version']}, {result['duration_seconds']:.1f} s)"
    )
    print(f"  {out / f'{stem}.predictions.csv'}")
    if result["rejects"]:
        fetch(compose, result["rejects"], out / f"{stem}.rejected.csv")
        print(f"  {out / f'{stem}.rejected.csv'} (each refused row's number and reason)")
    return 0


if __name__ == "__main__":
    run_script("predict-batch", main)
