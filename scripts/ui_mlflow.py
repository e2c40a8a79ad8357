"""The MLflow half of the README's UI walkthrough (scripts/ui_flow.py): the home page, the run, its artifacts, the
registry, each as the README names them."""

from __future__ import annotations

import re

from scripts.browser import ACTION_TIMEOUT_MS, Flow, UIFlowError
from scripts.stackclient import http

PARAMS = ("n_estimators", "max_depth")  # the seed's hyper-parameters, shown on the run's Overview


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


def home(flow: Flow, mlflow_url: str) -> None:
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


def open_run(flow: Flow, experiment: str, mlflow_run_id: str, params: dict[str, str]) -> str:
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


def show_artifacts(flow: Flow, artifacts: tuple[str, ...]) -> dict[str, dict]:
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


def registry(flow: Flow, model: str) -> str:
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
