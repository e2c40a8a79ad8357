"""A challenger beside the champion (docs/challenger.md): which requests it answers, how it scores off the answer's
path, and the true labels clients send back.

- canary: a stable share of requests, picked by a hash of the request ID, so the same ID always reaches the same
  model, on every worker and after a restart;
- shadow: the champion answers; after the answer is sent, the challenger scores the same body on the worker's
  event loop (a thread would compete for the GIL with the next request) and its predictions go to the inference
  log under the same request ID, marked as shadow. Whatever the challenger does, the answer was already sent;
- feedback: ``POST /feedback`` bodies, checked by pydantic. The server keeps no state between workers, so it checks
  what a body says on its own; whether the labels match the rows of the request they name is the monitor's join.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from starlette.background import BackgroundTask
from starlette.responses import Response

from mlops_pipeline.schema import CLASS_NAMES
from mlops_pipeline.serving import metrics
from mlops_pipeline.serving.model import Loaded

log = logging.getLogger("model-server")
REQUEST_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"  # what the server itself keeps of a client's X-Request-Id
FEEDBACK_MAX_BYTES = 1024 * 1024
FEEDBACK_MAX_ITEMS = 10_000
SLOTS = 10_000  # canary shares in steps of 0.01 percentage points


def in_canary(request_id: str, percent: float) -> bool:
    """Whether this request ID is in the canary's share (BLAKE2b: stable across processes, unlike hash())."""
    digest = hashlib.blake2b(request_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % SLOTS < percent * (SLOTS // 100)


class Runs:
    """Runs a challenger in shadow or as a canary, and counts what it did. A challenger that raises or answers an
    error is counted (and logged once a minute) and never seen by a client: in shadow the answer was sent already;
    as a canary the champion answers instead."""

    def __init__(self, counted: bool) -> None:
        self.counted = counted
        self.failures = 0
        self.warned_at = -float("inf")

    def shadow(self, challenger: Loaded, body: bytes, content_type: str, request_id: str) -> BackgroundTask:
        """What the answer runs once it is sent (on the event loop: a thread would compete for the GIL)."""
        return BackgroundTask(self.run_shadow, challenger, body, content_type, request_id)

    async def run_shadow(self, challenger: Loaded, body: bytes, content_type: str, request_id: str) -> None:
        self.canary(challenger, body, content_type, request_id, mode="shadow")

    def canary(
        self, challenger: Loaded, body: bytes, content_type: str, request_id: str, mode: str = "canary"
    ) -> Response | None:
        """The challenger's answer, or None when it failed (the champion then answers)."""
        try:
            response: Response | None = challenger.score(body, content_type, request_id, shadow=mode == "shadow")
        except Exception:  # noqa: BLE001 - a challenger's failure is counted, never raised
            response = None
            if time.monotonic() - self.warned_at >= 60:
                self.warned_at = time.monotonic()
                log.exception("model-server: the challenger (version %s) failed (%s)", challenger.version, mode)
        ok = response is not None and response.status_code == 200
        if not ok:
            self.failures += 1
        if self.counted:
            metrics.challenger_ran(challenger.version, mode, ok)
        return response if ok else None


class Feedback(BaseModel):
    """The true labels of one earlier request: one per row it sent, each a class index."""

    model_config = ConfigDict(extra="forbid", strict=True)
    request_id: Annotated[str, Field(pattern=REQUEST_ID_PATTERN)]
    labels: Annotated[list[Annotated[int, Field(ge=0, lt=len(CLASS_NAMES))]], Field(min_length=1)]


FEEDBACK = TypeAdapter(list[Feedback])


class FeedbackError(ValueError):
    """A feedback body that is refused; the message names the problem."""


def parse_feedback(body: bytes) -> list[Feedback]:
    """One object or a list of them; every item checked before any is used."""
    try:
        decoded = json.loads(body)
    except (RecursionError, ValueError) as exc:
        raise FeedbackError(f"the body is not JSON: {exc}") from None
    items = [decoded] if isinstance(decoded, dict) else decoded
    if not isinstance(items, list) or not items:
        raise FeedbackError('the body must be {"request_id": "...", "labels": [...]} or a non-empty list of them')
    if len(items) > FEEDBACK_MAX_ITEMS:
        raise FeedbackError(f"{len(items)} items: at most {FEEDBACK_MAX_ITEMS} in one body")
    try:
        return FEEDBACK.validate_python(items)
    except ValidationError as exc:
        problems = [f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}" for error in exc.errors()[:5]]
        raise FeedbackError("; ".join(problems)) from None
