"""The README's UI walkthrough (step 6) in a real headless Chromium with a fresh profile, against any running stack.

Log into the Airflow UI, make sure `mlops_pipeline` is unpaused (the toggle), trigger it with the Trigger
button, watch the run until it is green; then MLflow from its home page, by the names the README gives: close the
assistant panel, switch the sidebar to Model training, Experiments -> the experiment -> the run that this DAG run's
`train` task logged (its parameters and metrics), its Artifacts (both plots), Model registry -> `iris-classifier`
with its `champion` alias. A screenshot is saved at every step; the README's named screens are checked for the
texts the README says they show (`make screenshots` publishes them, scripts/screenshots.py).

Everything a user does happens in the browser. The REST API is only read: the run's state (to know when to stop
watching), its task states (progress screenshots, failure message) and the `train` task's XCom (which MLflow run
to look for). The one write, optional, is test setup: `pause_first=True` pauses the DAG so the toggle gets clicked.
The REST calls go through the project's client (scripts/stackclient.py), every wait through stackenv.wait_for;
one more read: the MLflow run's parameters, which its Overview must show.

Usable from any suite (local mode, compose):

    from scripts.browser import require_chromium
    from scripts.ui_flow import run_ui_flow
    require_chromium()  # skips (or fails with REQUIRE_BROWSER=1) when there is no browser
    result = run_ui_flow(airflow_url, mlflow_url, "admin", password, shots_dir)

Uses Debian's Chromium (`apt-get install chromium`), never a browser downloaded by Playwright.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from urllib.parse import quote

from mlops_pipeline.schema import EXPERIMENT, MODEL_NAME
from scripts import ui_mlflow
from scripts.browser import (
    ACTION_TIMEOUT_MS,
    CHROMIUM,
    CHROMIUM_ARGS,
    POLL_SECONDS,
    Flow,
    UIFlowError,
    chromium_available,
    chromium_unavailable_reason,
    text,
)
from scripts.stackclient import Airflow, AirflowError
from scripts.stackenv import wait_for

DAG_ID = "mlops_pipeline"
ARTIFACTS = ("confusion_matrix.png", "feature_importance.png")  # the two plots `evaluate` logs


def mlflow_run_id_from(value: object) -> str:
    """The `train` task returns the MLflow run ID (a plain string; a dict with run_id is accepted too)."""
    if isinstance(value, dict):
        value = value.get("run_id") or value.get("mlflow_run_id")
    text = str(value or "").strip().strip('"')
    if not re.fullmatch(r"[0-9a-f]{32}", text):
        raise UIFlowError(f"the train task's return value is not an MLflow run ID: {value!r}")
    return text


def airflow_login(flow: Flow, airflow_url: str, dag_id: str, username: str, password: str) -> None:
    page = flow.page
    page.goto(f"{airflow_url}/dags/{dag_id}")  # FAB redirects to /auth/login/?next=...
    username_box = page.locator("input[name=username]")
    username_box.wait_for(state="visible")
    username_box.fill(username)
    page.locator("input[name=password]").fill(password)
    flow.shot("airflow-login")
    page.locator("input[type=submit], button[type=submit]").first.click()
    try:
        page.wait_for_url(lambda url: "/auth/login" not in url, timeout=ACTION_TIMEOUT_MS)
    except Exception:
        alerts = [a.strip() for a in page.locator(".alert").all_text_contents() if a.strip()]
        raise UIFlowError(
            f"still on the login page after signing in as '{username}' (wrong AIRFLOW_ADMIN_PASSWORD?); "
            f"the page says: {alerts or 'nothing'}"
        ) from None


def airflow_open_dag(flow: Flow, airflow_url: str, dag_id: str, timeout: float) -> None:
    """The DAG page, once the dag-processor has parsed the file (right after `up` it may not have)."""
    page = flow.page
    if not page.url.rstrip("/").endswith(f"/dags/{dag_id}"):
        page.goto(f"{airflow_url}/dags/{dag_id}")
    toggle = page.get_by_test_id("toggle-pause")

    def shown() -> bool:
        try:
            toggle.wait_for(state="visible", timeout=30_000)
        except Exception:
            page.reload()
            return False
        return True

    try:
        wait_for(f"the Airflow UI to show the DAG {dag_id}", shown, timeout, interval=0)
    except TimeoutError as exc:
        raise UIFlowError(str(exc)) from None
    page.get_by_test_id("trigger-dag-button").wait_for(state="visible")
    flow.screen("airflow-dag", dag_id, "Trigger")


def airflow_unpause(flow: Flow) -> bool:
    """Click the pause toggle if the DAG is paused (checked = running). Returns whether it was paused."""
    page = flow.page
    toggle = page.get_by_test_id("toggle-pause")
    if toggle.get_attribute("data-state") == "checked":
        return False
    toggle.click()
    # With [webserver] require_confirmation_dag_change the UI asks first.
    dialog = page.get_by_role("dialog")

    def unpaused() -> bool:
        if toggle.get_attribute("data-state") == "checked":
            return True
        if dialog.count() and dialog.first.is_visible():
            dialog.first.get_by_role("button", name=re.compile("confirm|unpause|yes", re.I)).first.click()
        return False

    try:
        wait_for("the DAG's toggle to show it unpaused", unpaused, ACTION_TIMEOUT_MS / 1000, interval=0.5)
    except TimeoutError as exc:
        raise UIFlowError(f"the DAG is still paused after clicking its toggle: {exc}") from None
    flow.shot("airflow-dag-unpaused")
    return True


def airflow_trigger(flow: Flow, dag_id: str) -> dict:
    """Trigger button, then the dialog's Trigger: returns the DAG run the UI created (its POST's answer)."""
    page = flow.page
    page.get_by_test_id("trigger-dag-button").click()
    submit = page.get_by_test_id("trigger-dag-submit")
    submit.wait_for(state="visible")
    flow.shot("airflow-trigger-dialog")
    with page.expect_response(
        lambda r: r.request.method == "POST" and r.url.split("?")[0].endswith(f"/dags/{dag_id}/dagRuns")
    ) as created:
        submit.click()
    answer = created.value
    if not answer.ok:
        raise UIFlowError(f"the UI's trigger request answered HTTP {answer.status}: {answer.text()}")
    return answer.json()


def airflow_watch_run(
    flow: Flow, api: Airflow, airflow_url: str, dag_id: str, dag_run_id: str, timeout: float
) -> tuple[str, dict[str, str | None]]:
    """Watch the run's page until the run is over; the REST API says when, the UI must agree.

    One screenshot per state the page shows (queued, running) and per task that starts running.
    """
    from playwright.sync_api import expect

    page = flow.page
    try:  # the UI opens the new run's page by itself
        page.wait_for_url(re.compile(r"/runs/"), timeout=15_000)
    except Exception:
        page.goto(f"{airflow_url}/dags/{dag_id}/runs/{quote(dag_run_id, safe='')}")
    badge = page.get_by_test_id("header-card").get_by_test_id("state-badge")
    badge.wait_for(state="visible")
    seen: set[str] = set()

    def finished() -> str | None:
        """The final state once the API reports it; meanwhile a screenshot of each new state and running task.
        A busy api-server (no answer, or an error status) counts as "not yet": the deadline still holds."""
        try:
            state = api.dag_run(dag_id, dag_run_id)["state"]
            if state in ("success", "failed"):
                return state
            running = sorted(t for t, s in api.task_states(dag_id, dag_run_id).items() if s == "running")
        except AirflowError:
            return None
        shown = text(badge).lower()
        for label in ([shown] if shown else []) + [f"{task}-running" for task in running]:
            if label not in seen:
                seen.add(label)
                flow.shot(f"airflow-run-{re.sub(r'[^a-z0-9]+', '-', label.lower())}")
        return None

    try:
        state = wait_for(f"{dag_id} run {dag_run_id} to finish", finished, timeout, interval=POLL_SECONDS)
    except TimeoutError as exc:
        raise UIFlowError(f"{exc}; tasks: {api.task_states(dag_id, dag_run_id)}") from None

    # The page refreshes itself while the run is active; give it time to show the end, then reload once.
    want = re.compile(rf"^\s*{state}\s*$", re.I)
    try:
        expect(badge).to_have_text(want, timeout=45_000)
    except AssertionError:
        page.reload()
        try:
            expect(badge).to_have_text(want, timeout=45_000)
        except AssertionError:
            raise UIFlowError(f"the API says the run is {state} but the UI still shows '{text(badge)}'") from None
    tasks = api.task_states(dag_id, dag_run_id)
    flow.screen(f"airflow-run-{state}", dag_id)
    return state, tasks


def run_ui_flow(
    airflow_url: str,
    mlflow_url: str,
    username: str,
    password: str,
    shots_dir: Path | str,
    *,
    dag_id: str = DAG_ID,
    experiment: str = EXPERIMENT,
    model: str = MODEL_NAME,
    artifacts: tuple[str, ...] = ARTIFACTS,
    mlflow_headers: dict[str, str] | None = None,
    run_timeout: float = 900,
    dag_timeout: float = 300,
    pause_first: bool = False,
) -> dict:
    """The README's step 6 in the browser; returns what it found. Raises UIFlowError naming the failed step.

    airflow_url, mlflow_url: where a browser on this machine reaches the UIs (e.g. http://127.0.0.1:8080).
    shots_dir: emptied of PNGs, then one screenshot per step (NN-step.png); FAILED-step.png on failure.
    mlflow_headers: for the one REST read of the MLflow run's parameters (MLFLOW_AUTH's basic-auth header).
    run_timeout: how long the DAG run may take; dag_timeout: how long the DAG may take to appear in the UI.
    pause_first: pause the DAG through the REST API before starting, so the UI toggle is exercised too
    (this stack creates DAGs unpaused). Only setup: unpausing and triggering happen in the browser.
    """
    from playwright.sync_api import sync_playwright

    if not chromium_available():
        raise UIFlowError(chromium_unavailable_reason() or "no browser")
    airflow_url, mlflow_url = airflow_url.rstrip("/"), mlflow_url.rstrip("/")
    shots = Path(shots_dir)
    shots.mkdir(parents=True, exist_ok=True)
    for old in shots.glob("*.png"):
        old.unlink()
    api = Airflow(airflow_url, username, password)
    if pause_first:  # test setup only: once the DAG is parsed, pause it
        api.wait_for_dag(dag_id, dag_timeout)
        api.set_paused(dag_id, True)
    started = time.monotonic()

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            flow = Flow(browser, shots)
            with flow.step("airflow-login"):
                airflow_login(flow, airflow_url, dag_id, username, password)
            with flow.step("airflow-open-dag"):
                airflow_open_dag(flow, airflow_url, dag_id, dag_timeout)
            with flow.step("airflow-unpause"):
                was_paused = airflow_unpause(flow)
            with flow.step("airflow-trigger"):
                created = airflow_trigger(flow, dag_id)
            dag_run_id = created["dag_run_id"]
            with flow.step("airflow-watch-run"):
                state, tasks = airflow_watch_run(flow, api, airflow_url, dag_id, dag_run_id, run_timeout)
            if state != "success":
                failed = sorted(t for t, s in tasks.items() if s not in ("success", "skipped"))
                raise UIFlowError(
                    f"{dag_id} run {dag_run_id} ended {state}; tasks {tasks}; not successful: {failed}. "
                    f"Read their logs in the Airflow UI; last screenshot: {flow.shots[-1]}"
                )
            mlflow_run_id = mlflow_run_id_from(api.xcom(dag_id, dag_run_id, "train"))
            params = ui_mlflow.run_params(mlflow_url, mlflow_run_id, mlflow_headers or {})
            with flow.step("mlflow-home"):
                ui_mlflow.home(flow, mlflow_url)
            with flow.step("mlflow-open-run"):
                experiment_id = ui_mlflow.open_run(flow, experiment, mlflow_run_id, params)
            with flow.step("mlflow-artifacts"):
                images = ui_mlflow.show_artifacts(flow, artifacts)
            with flow.step("mlflow-registry"):
                champion = ui_mlflow.registry(flow, model)
        finally:
            browser.close()

    return {
        "dag_run_id": dag_run_id,
        "dag_run_state": state,
        "triggered_by": api.dag_run(dag_id, dag_run_id).get("triggered_by"),
        "task_states": tasks,
        "was_paused": was_paused,
        "mlflow_run_id": mlflow_run_id,
        "mlflow_experiment_id": experiment_id,
        "run_params": params,
        "artifact_images": images,
        "champion_shown": champion,
        "hosts": sorted(flow.hosts),
        "screenshots": [str(p) for p in flow.shots],
        "screens": {name: str(path) for name, path in flow.screens.items()},
        "timings_s": {**flow.timings, "total": round(time.monotonic() - started, 1)},
    }
