"""The loop from serving back to training, on a running stack: normal traffic and a drift check (no drift), shifted
traffic and a check (drift, report in MLflow), labeled rows of the shifted traffic appended, the retraining the
asset starts, and the new champion serving.

Usage: python -m scripts.drift_demo [--requests N] [--labeled M]      (make drift-demo; .env or ENV_FILE)

Traffic is drawn from the champion's own training rows (its reference/train.csv in MLflow), one row per request,
each feature with a little measurement noise (sd 0.05 cm). The shift (docs/drift.md): the mix of flowers changes
to virginica only, so every feature's distribution and the predicted classes move while each row is still a real
flower; the labeled rows appended are such virginica rows with their true label. Seeded: the same stack gives the
same traffic.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import random
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

from mlops_pipeline.schema import CLASS_NAMES, LABEL_COLUMN, MODEL_NAME, REFERENCE_ARTIFACT
from scripts import append_data
from scripts.stackclient import Airflow, http, mlflow_login, registry_champion_version, run_script, wait_for_model
from scripts.stackenv import ROOT, settings, urls

MONITOR_DAG = "monitor_model"
VIRGINICA = CLASS_NAMES.index("virginica")
NOISE_CM = 0.05


def fail(message: str) -> SystemExit:
    return SystemExit(f"drift-demo: {message}")


class Stack:
    """The three services, addressed as .env publishes them."""

    def __init__(self, cfg: dict[str, str]) -> None:
        self.cfg = cfg
        self.mlflow, self.model = urls(cfg)["mlflow"], urls(cfg)["model"]
        self.mlflow_headers = mlflow_login(cfg)
        self.name = cfg.get("REGISTERED_MODEL_NAME") or MODEL_NAME
        self.airflow = Airflow.login(cfg)

    def champion(self) -> dict:
        """The registry's champion (MLflow REST): its version and run ID."""
        status, version = registry_champion_version(self.mlflow, self.name, self.mlflow_headers)
        if status != 200 or not version:
            raise fail(f"{self.name} has no champion yet (MLflow answered HTTP {status}): run make demo first")
        return version

    def reference(self, run_id: str) -> list[dict[str, str]]:
        """The rows the champion was trained on, as its run logged them."""
        url = f"{self.mlflow}/get-artifact?path={quote(REFERENCE_ARTIFACT)}&run_uuid={quote(run_id)}"
        status, body = http("GET", url, headers=self.mlflow_headers)
        if status != 200 or not isinstance(body, str):
            raise fail(f"run {run_id} has no {REFERENCE_ARTIFACT} (HTTP {status}): it predates runs logging their rows")
        return list(csv.DictReader(io.StringIO(body)))

    def send(self, rows: list[list[float]]) -> None:
        for row in rows:
            status, body = http("POST", f"{self.model}/invocations", {"inputs": [row]})
            if status != 200:
                raise fail(f"the model-server answered HTTP {status} to {row}: {body}")

    def check(self, conf: dict) -> dict:
        """One monitor_model run; its task's result (drift.monitor's)."""
        dag_run = self.airflow.trigger(MONITOR_DAG, conf)
        if self.airflow.wait_for_run(MONITOR_DAG, dag_run, timeout=300, progress=False) != "success":
            raise fail(f"{MONITOR_DAG} run {dag_run} failed: {self.airflow.why_failed(MONITOR_DAG, dag_run)}")
        result = self.airflow.xcom(MONITOR_DAG, dag_run, "check_drift")
        if not isinstance(result, dict):
            raise fail(f"{MONITOR_DAG} run {dag_run} returned {result!r}")
        return result

    def run_link(self, run_id: str) -> str:
        status, body = http(
            "GET", f"{self.mlflow}/api/2.0/mlflow/runs/get?run_id={run_id}", headers=self.mlflow_headers
        )
        experiment = body["run"]["info"]["experiment_id"] if status == 200 and isinstance(body, dict) else "0"
        return f"{self.mlflow}/#/experiments/{experiment}/runs/{run_id}/artifacts"


def traffic(reference: list[dict[str, str]], features: list[str], count: int, rng: random.Random) -> list[list[float]]:
    """count rows drawn from the reference with measurement noise."""
    return [
        [round(float(row[f]) + rng.gauss(0, NOISE_CM), 2) for f in features]
        for row in (rng.choice(reference) for _ in range(count))
    ]


def settle(cfg: dict[str, str]) -> None:
    """Let the monitor's window reach past the traffic just sent: a check stops reading MONITOR_SETTLE_SECONDS
    before it starts, and the model-server flushes its log every second."""
    time.sleep(float(cfg.get("MONITOR_SETTLE_SECONDS") or 5) + 2)


def say(result: dict) -> str:
    share = result.get("drift_share")
    figures = f", drift share {share:.2f}, prediction drift {result['prediction_drift']}" if share is not None else ""
    return f"{result['status']} ({result['rows']} rows{figures})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="requests of each kind of traffic (default 200)")
    parser.add_argument("--labeled", type=int, default=30, help="labeled shifted rows to append (default 30)")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.labeled < 1:
        raise fail("--requests and --labeled must be at least 1")
    cfg = settings(Path(os.environ.get("ENV_FILE", ROOT / ".env")))
    stack = Stack(cfg)
    rng = random.Random(20261204)
    champion = stack.champion()
    version = champion["version"]
    reference = stack.reference(champion["run_id"])
    features = [c for c in reference[0] if c != LABEL_COLUMN]
    print(f"drift-demo: {stack.name} version {version} is champion; {len(reference)} training rows as reference")
    wait_for_model(stack.model, version)
    stack.airflow.wait_for_dag(MONITOR_DAG)

    def send_and_check(step: str, rows: list[dict[str, str]], expected: str) -> dict:
        """Send the traffic, then one check of exactly it (its `since`: an hourly check in between changes
        nothing), which must find what is expected."""
        since = datetime.now(UTC) - timedelta(seconds=1)
        stack.send(traffic(rows, features, args.requests, rng))
        print(f"drift-demo: {step}; checking", flush=True)
        settle(cfg)
        result = stack.check({"since": since.isoformat(), "min_rows": args.requests})
        print(f"drift-demo:    monitor_model: {say(result)}")
        if result["status"] != expected:
            raise fail(f"expected {expected} ({step}), got {result}")
        return result

    send_and_check(f"1. sent {args.requests} requests drawn from the training rows", reference, "no drift")
    virginica = [row for row in reference if int(float(row[LABEL_COLUMN])) == VIRGINICA]
    second = send_and_check(f"2. sent {args.requests} requests of virginica only (the shift)", virginica, "drift")
    print(f"drift-demo:    the report: {stack.run_link(second['monitoring_run_id'])} (drift_report.html)")

    labeled = traffic(virginica, features, args.labeled, rng)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "labeled.csv"
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow([*features, LABEL_COLUMN])
            writer.writerows([*row, VIRGINICA] for row in labeled)
        print(f"drift-demo: 3. appending {args.labeled} labeled rows of the shifted traffic", flush=True)
        append_data.main([str(path)])
    new = stack.champion()["version"]
    if new == version:
        raise fail(f"the retrained model was not promoted: version {version} still serves")
    info = wait_for_model(stack.model, new)
    print(f"drift-demo: done: the model-server serves {stack.name} version {info['model_version']} (was {version})")
    return 0


if __name__ == "__main__":
    run_script("drift-demo", main)
