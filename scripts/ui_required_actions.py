"""Airflow's Required actions page in a real browser: the question a human-in-the-loop task waits on, as a person
sees it (scripts/challenger_demo.py --screenshot; the compose suite takes it every run)."""

from __future__ import annotations

from pathlib import Path

from scripts.browser import CHROMIUM, CHROMIUM_ARGS, Flow, UIFlowError, chromium_available, chromium_unavailable_reason
from scripts.ui_flow import airflow_login


def required_actions_screen(airflow_url: str, username: str, password: str, shots_dir: Path, subject: str) -> Path:
    """Airflow's Required actions page in the browser, logged in, showing a waiting question with this subject;
    returns its screenshot (docs/challenger.md shows it). Raises UIFlowError naming the failed step."""
    from playwright.sync_api import sync_playwright

    if not chromium_available():
        raise UIFlowError(chromium_unavailable_reason() or "no browser")
    airflow_url = airflow_url.rstrip("/")
    shots_dir.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            flow = Flow(browser, shots_dir)
            with flow.step("airflow-login"):
                airflow_login(flow, airflow_url, "promote_challenger", username, password)
            with flow.step("airflow-required-actions"):
                flow.page.goto(f"{airflow_url}/required_actions?response_received=false")
                flow.screen("airflow-required-actions", subject)
            with flow.step("airflow-required-action-review"):  # the question itself, with its two buttons
                flow.page.get_by_text(subject, exact=True).first.click()
                return flow.screen("airflow-required-action-review", "Approve", "Reject")
        finally:
            browser.close()
