"""The browser the UI flows drive: Debian's Chromium, headless, with a fresh profile (never a browser downloaded
by Playwright), and Flow, one page with a screenshot at every step and the README's named screens checked."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Locator, Page, Request

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


class Flow:
    """One browser page of a UI flow: screenshots, the named screens, each step timed and named on failure."""

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


def text(locator: Locator) -> str:
    """A locator's text, or "" while the page is busy re-rendering or reloading."""
    try:
        return (locator.first.text_content(timeout=5_000) or "").strip()
    except Exception:
        return ""
