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

    from scripts.ui_flow import require_chromium, run_ui_flow
    require_chromium()  # skips (or fails with REQUIRE_BROWSER=1) when there is no browser
    result = run_ui_flow(airflow_url, mlflow_url, "admin", password, shots_dir)

Uses Debian's Chromium (`apt-get install chromium`), never a browser downloaded by Playwright.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit

from mlops_pipeline.schema import EXPERIMENT, MODEL_NAME
from scripts.stackclient import Airflow, AirflowError, http
from scripts.stackenv import wait_for

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Locator, Page, Request

DAG_ID = "mlops_pipeline"
ARTIFACTS = ("confusion_matrix.png", "feature_importance.png")  # the two plots `evaluate` logs
PARAMS = ("n_estimators", "max_depth")  # the seed's hyper-parameters, shown on the run's Overview
CHROMIUM = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))
# Root, no GPU, closed network: no sandbox, and none of Chromium's own background traffic.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1600, "height": 1000}
# A loaded 2-core machine renders slowly: generous per-action limits, bounded overall ones.
ACTION_TIMEOUT_MS = 60_000
NAVIGATION_TIMEOUT_MS = 120_000
POLL_SECONDS = 3.0


class UIFlowError(AssertionError):
    """A step of the UI flow failed; the message names the step and the screenshot of the moment."""


def chromium_unavailable_reason() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        return f"no Chromium at {CHROMIUM} (apt-get install chromium, or set CHROMIUM_PATH)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the Python package playwright is not installed (uv sync installs it with the dev group)"
    return None


def chromium_available() -> bool:
    return chromium_unavailable_reason() is None


def require_chromium() -> None:
    """In a pytest test or fixture: skip without a browser, or fail when REQUIRE_BROWSER=1."""
    import pytest

    reason = chromium_unavailable_reason()
    if reason is None:
        return
    if os.environ.get("REQUIRE_BROWSER") == "1":
        pytest.fail(f"REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


def mlflow_run_id_from(value: object) -> str:
    """The `train` task returns the MLflow run ID (a plain string; a dict with run_id is accepted too)."""
    if isinstance(value, dict):
        value = value.get("run_id") or value.get("mlflow_run_id")
    text = str(value or "").strip().strip('"')
    if not re.fullmatch(r"[0-9a-f]{32}", text):
        raise UIFlowError(f"the train task's return value is not an MLflow run ID: {value!r}")
    return text


def run_params(mlflow_url: str, run_id: str, headers: dict[str, str]) -> dict[str, str]:
    """The run's hyper-parameters as MLflow stores them (what its Overview must show): one REST read."""
    status, body = http("GET", f"{mlflow_url}/api/2.0/mlflow/runs/get?run_id={run_id}", headers=headers)
    if status != 200 or not isinstance(body, dict):
        raise UIFlowError(f"MLflow answered HTTP {status} for run {run_id}: {body}")
    stored = {p["key"]: p["value"] for p in body["run"]["data"].get("params", [])}
    missing = [k for k in PARAMS if k not in stored]
    if missing:
        raise UIFlowError(f"run {run_id} has no parameter {missing} (it has {sorted(stored)})")
    return {k: stored[k] for k in PARAMS}


class _Flow:
    def __init__(self, browser: Browser, shots_dir: Path) -> None:
        self.context = browser.new_context(viewport=VIEWPORT)
        self.context.set_default_timeout(ACTION_TIMEOUT_MS)
        self.context.set_default_navigation_timeout(NAVIGATION_TIMEOUT_MS)
        # A fresh profile, as a newcomer's browser: nothing in localStorage, every first-visit panel shows.
        self.page: Page = self.context.new_page()
        self.hosts: set[str] = set()  # every host the pages asked something of (the UIs must not call out)
        self.page.on("request", self._asked)
        self.shots_dir = shots_dir
        self.shots: list[Path] = []
        self.screens: dict[str, Path] = {}  # the named screens of README step 6 (make screenshots copies them)
        self.timings: dict[str, float] = {}

    def _asked(self, request: Request) -> None:
        if request.url.startswith(("http:", "https:", "ws:", "wss:")):  # not blob: or data: (the image previews)
            self.hosts.add(urlsplit(request.url).netloc)

    def shot(self, name: str) -> Path:
        path = self.shots_dir / f"{len(self.shots) + 1:02d}-{name}.png"
        self.page.screenshot(path=str(path), full_page=False)
        self.shots.append(path)
        return path

    def screen(self, name: str, *texts: str | re.Pattern[str]) -> Path:
        """A named screen of README step 6: every text the README says it shows must be on it, then a screenshot."""
        from playwright.sync_api import expect

        for text in texts:
            try:
                expect(self.page.get_by_text(text, exact=True).filter(visible=True).first).to_be_visible()
            except AssertionError:
                shown = text if isinstance(text, str) else text.pattern
                raise UIFlowError(f"the screen '{name}' does not show '{shown}' (README step 6 says it does)") from None
        self.screens[name] = self.shot(name)
        return self.screens[name]

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        except Exception as exc:
            try:
                failure = self.shot(f"FAILED-{name}")
                where = f"; screenshot {failure}, page {self.page.url}"
            except Exception as shot_exc:  # the original error matters more
                where = f"; no screenshot ({shot_exc})"
            raise UIFlowError(
                f"UI step '{name}' failed after {time.monotonic() - started:.0f} s{where}: {exc}"
            ) from exc
        self.timings[name] = round(time.monotonic() - started, 1)


def _airflow_login(flow: _Flow, airflow_url: str, dag_id: str, username: str, password: str) -> None:
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


def _airflow_open_dag(flow: _Flow, airflow_url: str, dag_id: str, timeout: float) -> None:
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


def _airflow_unpause(flow: _Flow) -> bool:
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


def _airflow_trigger(flow: _Flow, dag_id: str) -> dict:
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


def _text(locator: Locator) -> str:
    """A locator's text, or "" while the page is busy re-rendering or reloading."""
    try:
        return (locator.first.text_content(timeout=5_000) or "").strip()
    except Exception:
        return ""


def _airflow_watch_run(
    flow: _Flow, api: Airflow, airflow_url: str, dag_id: str, dag_run_id: str, timeout: float
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
        shown = _text(badge).lower()
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
            raise UIFlowError(f"the API says the run is {state} but the UI still shows '{_text(badge)}'") from None
    tasks = api.task_states(dag_id, dag_run_id)
    flow.screen(f"airflow-run-{state}", dag_id)
    return state, tasks


def _mlflow_home(flow: _Flow, mlflow_url: str) -> None:
    """MLflow's home page in its default GenAI view: close the assistant panel, switch to Model training."""
    from playwright.sync_api import expect

    page = flow.page
    page.goto(f"{mlflow_url}/")
    page.get_by_text("Welcome to MLflow", exact=True).wait_for(state="visible")
    # MLflow 3.17 opens its assistant panel on a first visit, a moment after the page (MLflow has no setting for it).
    assistant = page.get_by_text("MLflow Assistant").filter(visible=True)  # the panel's title (with "Beta")
    try:
        assistant.first.wait_for(state="visible", timeout=15_000)
    except Exception:  # noqa: S110 - a browser that closed it before, or a UI without it: nothing to close
        pass
    flow.screen("mlflow-home", "GenAI", "Model training")
    if assistant.count():
        close = page.get_by_role("button", name="Close", exact=True).filter(visible=True)  # the panel's ×
        close.first.click()
        expect(close).to_have_count(0)
    registry = page.get_by_role("link", name="Model registry", exact=True)
    page.get_by_role("button", name="Model training", exact=True).click()
    registry.wait_for(state="visible")
    flow.screen("mlflow-model-training", "Experiments", "Model registry")


def _mlflow_open_run(flow: _Flow, experiment: str, mlflow_run_id: str, params: dict[str, str]) -> str:
    """Experiments -> the experiment -> the run; its Overview shows the parameters and the metrics.
    Returns the experiment ID from the run's URL."""
    from playwright.sync_api import expect

    page = flow.page
    page.get_by_role("link", name="Experiments", exact=True).click()
    page.get_by_role("link", name=experiment, exact=True).first.click()
    run_link = page.locator(f'a[href*="/runs/{mlflow_run_id}"]').first
    try:
        run_link.wait_for(state="visible", timeout=45_000)
    except Exception:
        # Not on the first page of the runs table: ask the table's own search box.
        search = page.get_by_test_id("search-box").first  # the <input> itself
        search.fill(f"attributes.run_id = '{mlflow_run_id}'")
        search.press("Enter")
        run_link.wait_for(state="visible")
    run_link.hover()  # highlights the row in the screenshot
    flow.screen("mlflow-experiment-runs", experiment, "Runs")
    run_link.click()
    page.wait_for_url(re.compile(rf"#/experiments/[^/]+/runs/{mlflow_run_id}"))
    expect(page.get_by_test_id("key-value-Run ID")).to_contain_text(mlflow_run_id)
    headings = [re.compile(rf"^{h} \(\d+\)$") for h in ("Metrics", "Parameters", "Logged models")]
    flow.screen("mlflow-run", *headings, *[t for kv in params.items() for t in kv], "accuracy_score", "f1_score")
    found = re.search(r"#/experiments/([^/]+)/runs/", page.url)
    return found.group(1) if found else ""


def _mlflow_show_artifacts(flow: _Flow, artifacts: tuple[str, ...]) -> dict[str, dict]:
    """The run's Artifacts tab, then each image in the tree; each preview must be a loaded image."""
    page = flow.page
    page.get_by_role("tab", name="Artifacts").click()
    sizes = {}
    for artifact in artifacts:
        node = page.get_by_test_id("artifact-tree-node").filter(has_text=artifact).first
        try:
            node.wait_for(state="visible")
        except Exception:
            names = [n.strip() for n in page.get_by_test_id("artifact-tree-node").all_text_contents()]
            raise UIFlowError(f"{artifact} is not among the run's artifacts in the UI: {names}") from None
        node.click()
        image = page.locator(f'img[alt="{artifact}"]').first  # the preview (its src is a blob: URL)
        image.wait_for(state="visible")
        page.wait_for_function(
            "img => img.complete && img.naturalWidth > 0", arg=image.element_handle(), timeout=ACTION_TIMEOUT_MS
        )
        sizes[artifact] = image.evaluate("img => ({width: img.naturalWidth, height: img.naturalHeight})")
        flow.screen(f"mlflow-artifact-{artifact.rsplit('.', 1)[0].replace('_', '-')}", artifact)
    return sizes


def _mlflow_registry(flow: _Flow, model: str) -> str:
    """Model registry -> the model; returns the version the page shows with the alias `champion` ("" if none)."""
    from playwright.sync_api import expect

    page = flow.page
    page.get_by_role("link", name="Model registry", exact=True).click()
    row = page.get_by_role("row").filter(has=page.get_by_role("link", name=model, exact=True))
    row.first.wait_for(state="visible")
    # A first visit announces the new Model Registry UI in a dialog (already on): close it.
    dialog = page.get_by_role("dialog").filter(has_text="Model Registry UI")
    try:
        dialog.first.wait_for(state="visible", timeout=5_000)
        dialog.first.get_by_role("button", name="Close").first.click()
        dialog.first.wait_for(state="hidden")
    except Exception:  # noqa: S110 - a browser that closed it before, or a UI without it
        pass
    expect(page.locator("[class*=modal-mask]").filter(visible=True)).to_have_count(0)  # its shade has faded
    flow.screen("mlflow-model-registry", "Registered Models", model)
    found = re.search(r"@\s*champion\s*:?\s*Version\s+(\d+)", row.first.inner_text())
    page.get_by_role("link", name=model, exact=True).first.click()
    page.wait_for_url(re.compile(rf"#/models/{re.escape(model)}$"))
    flow.screen("mlflow-registered-model", model, "Versions", "Aliases")
    return found.group(1) if found else ""


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
            flow = _Flow(browser, shots)
            with flow.step("airflow-login"):
                _airflow_login(flow, airflow_url, dag_id, username, password)
            with flow.step("airflow-open-dag"):
                _airflow_open_dag(flow, airflow_url, dag_id, dag_timeout)
            with flow.step("airflow-unpause"):
                was_paused = _airflow_unpause(flow)
            with flow.step("airflow-trigger"):
                created = _airflow_trigger(flow, dag_id)
            dag_run_id = created["dag_run_id"]
            with flow.step("airflow-watch-run"):
                state, tasks = _airflow_watch_run(flow, api, airflow_url, dag_id, dag_run_id, run_timeout)
            if state != "success":
                failed = sorted(t for t, s in tasks.items() if s not in ("success", "skipped"))
                raise UIFlowError(
                    f"{dag_id} run {dag_run_id} ended {state}; tasks {tasks}; not successful: {failed}. "
                    f"Read their logs in the Airflow UI; last screenshot: {flow.shots[-1]}"
                )
            mlflow_run_id = mlflow_run_id_from(api.xcom(dag_id, dag_run_id, "train"))
            params = run_params(mlflow_url, mlflow_run_id, mlflow_headers or {})
            with flow.step("mlflow-home"):
                _mlflow_home(flow, mlflow_url)
            with flow.step("mlflow-open-run"):
                experiment_id = _mlflow_open_run(flow, experiment, mlflow_run_id, params)
            with flow.step("mlflow-artifacts"):
                images = _mlflow_show_artifacts(flow, artifacts)
            with flow.step("mlflow-registry"):
                champion = _mlflow_registry(flow, model)
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
