"""A challenger tried on live traffic before it takes over, on a running stack (docs/challenger.md): a second model
trained as the challenger, requests the champion answers while the challenger scores them in shadow, the true
labels sent back, the live comparison, the approval through Airflow's REST API, the new champion served, and the
rollback to the old one.

Usage: python -m scripts.challenger_demo [--requests N] [--screenshot PNG]  (make challenger-demo; .env or ENV_FILE)
       python -m scripts.challenger_demo rollback             (make rollback: champion back to its previous version)

Requests are drawn from the champion's own training rows (as make drift-demo's), one row each with a request ID of
this script's, and the row's true class is sent back as feedback. Seeded: the same stack gives the same traffic.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import time
import uuid
from pathlib import Path

from mlops_pipeline.schema import LABEL_COLUMN
from scripts.drift_demo import Stack, traffic
from scripts.stackclient import http, run_script, wait_for_model
from scripts.stackenv import ROOT, settings, urls, wait_for

TRAIN_DAG, MONITOR_DAG, PROMOTE_DAG = "mlops_pipeline", "monitor_model", "promote_challenger"
# make rollback: registry.rollback in the scheduler's container, which has the package and MLflow's credentials.
# Airflow 3.3 fails the approval task when the answer lands before the scheduler has handled the end of the process
# that asked (seen in test_stack 3i: answered 0.1 s after the question). A person is never that quick; this script is.
ANSWER_AFTER_SECONDS = 5
ROLLBACK = ["docker", "compose", "exec", "-T", "airflow-scheduler", "python", "-m", "mlops_pipeline.registry"]


def fail(message: str) -> SystemExit:
    return SystemExit(f"challenger-demo: {message}")


def say(message: str) -> None:
    print(f"challenger-demo: {message}", flush=True)


def rollback() -> str:
    """Run registry.rollback in the stack; returns what it printed."""
    done = subprocess.run([*ROLLBACK, "rollback"], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise fail(f"rollback failed: {(done.stderr or done.stdout).strip()}")
    return done.stdout.strip()


def wait_for_challenger(model_url: str, version: str, timeout: float = 180) -> dict:
    """Until the model-server's every worker has loaded `version` as the challenger (10 answers in a row)."""
    in_a_row: list[dict] = []

    def loaded() -> dict | None:
        status, info = http("GET", f"{model_url}/model")
        ok = status == 200 and isinstance(info, dict) and (info.get("challenger") or {}).get("model_version") == version
        in_a_row[:] = [*in_a_row, info] if ok else []
        return info["challenger"] if len(in_a_row) >= 10 else None

    return wait_for(f"the model-server to load version {version} as challenger", loaded, timeout, interval=0.1)


def run_dag(stack: Stack, dag_id: str, conf: dict | None = None) -> str:
    dag_run = stack.airflow.trigger(dag_id, conf)
    if stack.airflow.wait_for_run(dag_id, dag_run, timeout=600, progress=False) != "success":
        raise fail(f"{dag_id} run {dag_run} failed: {stack.airflow.why_failed(dag_id, dag_run)}")
    return dag_run


def train_challenger(stack: Stack) -> str:
    """A mlops_pipeline run with promotion=challenger; the version it registered as the challenger."""
    registered = stack.airflow.xcom(TRAIN_DAG, run_dag(stack, TRAIN_DAG, {"promotion": "challenger"}), "register")
    if not isinstance(registered, dict) or registered.get("alias") != "challenger":
        raise fail(f"the new model did not become the challenger: {registered}")
    return str(registered["version"])


def send_labeled(stack: Stack, reference: list[dict[str, str]], requests: int, rng: random.Random) -> int:
    """`requests` one-row requests drawn from `reference` (with measurement noise), then their true labels to
    /feedback; returns how many labels were recorded."""
    features = [c for c in reference[0] if c != LABEL_COLUMN]
    tag = uuid.uuid4().hex[:8]
    feedback = []
    for i in range(requests):
        row = rng.choice(reference)
        noisy = traffic([row], features, 1, rng)[0]  # this row, with measurement noise; its label stays true
        request_id = f"challenger-demo-{tag}-{i}"
        status, body = http("POST", f"{stack.model}/invocations", {"inputs": [noisy]}, {"X-Request-Id": request_id})
        if status != 200:
            raise fail(f"the model-server answered HTTP {status}: {body}")
        feedback.append({"request_id": request_id, "labels": [int(float(row[LABEL_COLUMN]))]})
    status, body = http("POST", f"{stack.model}/feedback", feedback)
    if status != 202:
        raise fail(f"/feedback answered HTTP {status}: {body}")
    time.sleep(2)  # the inference log is flushed every second
    return int(body["recorded"])


def approve(stack: Stack, screenshot: Path | None = None, timeout: float = 300, option: str = "Approve") -> dict:
    """One promote_challenger run: answer its question with `option` (Approve or Reject) through the REST API when
    it asks one (first, with `screenshot`, a picture of it on Airflow's Required actions page). Returns its record
    task's result (the decision tagged on the challenger)."""
    airflow = stack.airflow
    dag_run = airflow.trigger(PROMOTE_DAG)

    def asked_or_done() -> list[dict] | str | None:
        waiting = [h for h in airflow.hitl_details(PROMOTE_DAG, dag_run) if not h.get("response_received")]
        state = airflow.dag_run(PROMOTE_DAG, dag_run)["state"]
        return waiting or (state if state in ("success", "failed") else None)

    asked = wait_for(f"{PROMOTE_DAG} to ask for approval", asked_or_done, timeout, interval=2)
    if isinstance(asked, list):
        say(f"   Airflow asks: {asked[0]['subject']}")
        for line in (asked[0].get("body") or "").splitlines():
            say(f"     {line}")
        if screenshot is not None:
            required_actions(stack, asked[0]["subject"], screenshot)
        time.sleep(ANSWER_AFTER_SECONDS)
        airflow.answer(PROMOTE_DAG, dag_run, asked[0]["task_instance"]["task_id"], option)
        say(f"   answered {option} through Airflow's REST API as {stack.cfg.get('AIRFLOW_ADMIN_USERNAME') or 'admin'}")
    if airflow.wait_for_run(PROMOTE_DAG, dag_run, timeout=timeout, progress=False) != "success":
        raise fail(f"{PROMOTE_DAG} run {dag_run} failed: {airflow.why_failed(PROMOTE_DAG, dag_run)}")
    result = airflow.xcom(PROMOTE_DAG, dag_run, "record")
    if not isinstance(result, dict):
        raise fail(f"{PROMOTE_DAG} run {dag_run} recorded {result!r}")
    return result


def required_actions(stack: Stack, subject: str, target: Path) -> None:
    """The question on Airflow's Required actions page, as a 256-colour PNG at `target` (the browser suite's
    Chromium, driven by Playwright: needs .venv, not the scripts' venv)."""
    import tempfile

    from scripts.screenshots import save_small
    from scripts.ui_required_actions import required_actions_screen

    user, password = stack.cfg.get("AIRFLOW_ADMIN_USERNAME") or "admin", stack.cfg["AIRFLOW_ADMIN_PASSWORD"]
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="challenger-demo-") as shots:
        save_small(required_actions_screen(urls(stack.cfg)["airflow"], user, password, Path(shots), subject), target)
    say(f"   the question on Airflow's Required actions page: {target}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", nargs="?", choices=["run", "rollback"], default="run")
    parser.add_argument("--requests", type=int, default=200, help="labeled requests to send (default 200)")
    parser.add_argument("--screenshot", type=Path, help="save the approval's question on Required actions here")
    args = parser.parse_args(argv)
    if args.action == "rollback":
        print(rollback())
        return 0
    if args.requests < 1:
        raise fail("--requests must be at least 1")
    stack = Stack(settings(Path(os.environ.get("ENV_FILE", ROOT / ".env"))))
    rng = random.Random(20261208)
    champion = stack.champion()
    old = champion["version"]
    reference = stack.reference(champion["run_id"])
    wait_for_model(stack.model, old)

    say(f"1. training a challenger beside champion version {old} ({TRAIN_DAG} with promotion=challenger)")
    new = train_challenger(stack)
    loaded = wait_for_challenger(stack.model, new)
    say(f"   version {new} is the challenger, served in {loaded['mode']} mode")

    say(f"2. sending {args.requests} requests, then their true labels to /feedback")
    say(f"   recorded {send_labeled(stack, reference, args.requests, rng)} labels")

    say(f"3. comparing both versions on those labels ({MONITOR_DAG}'s check_live)")
    live = stack.airflow.xcom(MONITOR_DAG, run_dag(stack, MONITOR_DAG), "check_live")
    if not isinstance(live, dict) or live.get("status") != "compared":
        raise fail(f"no live comparison: {live}")
    say(
        f"   on the same {live['same_rows']} labeled rows: champion v{old} {live['champion_accuracy_same_rows']:.3f}, "
        f"challenger v{new} {live['challenger_accuracy_same_rows']:.3f}, agreement {live['agreement']:.3f}"
    )

    say(f"4. asking for the promotion ({PROMOTE_DAG})")
    decision = approve(stack, args.screenshot)
    if decision.get("promotion.decision") != "promoted":
        raise fail(f"the challenger was not promoted: {decision}")
    wait_for_model(stack.model, new)
    say(f"   the model-server serves version {new}, promoted by {decision['promotion.by']}")

    say("5. rolling back (make rollback)")
    say(f"   {rollback()}")
    info = wait_for_model(stack.model, old)
    say(f"done: the model-server serves {stack.name} version {info['model_version']} again")
    return 0


if __name__ == "__main__":
    run_script("challenger-demo", main)
