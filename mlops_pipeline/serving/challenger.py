"""A challenger beside the champion (docs/challenger.md): which requests it answers, how it scores off the answer's
path, and the true labels clients send back.

- canary: a stable share of requests, picked by a hash of the request ID, so the same ID always reaches the same
  model, on every worker and after a restart;
- shadow: the champion answers; the request waits in a queue, and the worker's tick (app.py, every
  PUBLISH_SECONDS, on the event loop: a thread would compete for the GIL with the next request) scores what is
  queued, SHADOW_BATCH requests per predict call, then records each request's predictions in the inference log
  under its request ID, marked as shadow. One call for many requests is what keeps the shadow's cost low
  (benchmarks/results.md, part challenger). Whatever the challenger does, the answer was already sent;
- feedback: ``POST /feedback`` bodies, checked by pydantic. The server keeps no state between workers, so it checks
  what a body says on its own; whether the labels match the rows of the request they name is the monitor's join.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections import deque
from typing import Annotated

import numpy as np
from mlflow.utils.proto_json_utils import convert_data_type
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from starlette.responses import Response

from mlops_pipeline.schema import CLASS_NAMES
from mlops_pipeline.serving import metrics
from mlops_pipeline.serving.model import Loaded, decode_json, is_utf8_json, plain_inputs

log = logging.getLogger("model-server")
REQUEST_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"  # what the server itself keeps of a client's X-Request-Id
FEEDBACK_MAX_BYTES = 1024 * 1024
FEEDBACK_MAX_ITEMS = 10_000
SLOTS = 10_000  # canary shares in steps of 0.01 percentage points
SHADOW_QUEUE = 10_000  # requests waiting for the next tick; beyond that a shadow is dropped (counted, not scored)
SHADOW_BATCH = 32  # requests per predict call; the loop answers waiting requests between batches
Queued = tuple[Loaded, bytes, str, str]  # a shadow's challenger, body, content type and request ID


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
        self.queued: deque[Queued] = deque()

    def shadow(self, challenger: Loaded, body: bytes, content_type: str, request_id: str) -> None:
        """Queue a request the champion answered for the next tick's batch (run_shadows)."""
        if len(self.queued) < SHADOW_QUEUE:
            self.queued.append((challenger, body, content_type, request_id))
        elif self.counted:
            metrics.challenger_ran(challenger.version, "shadow", "dropped")

    async def run_shadows(self) -> None:
        """Score what was queued since the last tick, SHADOW_BATCH requests at a time with the event loop's turn in
        between (a request that arrives waits for one batch, not for the whole queue): one predict call for the
        plain {"inputs": [[...]]} requests of each challenger, then a record per request; the other requests
        (other formats, or all of them when the batch call fails) one by one, each with its own outcome."""
        waiting = len(self.queued)  # what came later waits for the next tick
        while waiting > 0:
            by_challenger: dict[int, list[Queued]] = {}
            for _ in range(min(SHADOW_BATCH, waiting)):
                item = self.queued.popleft()  # a batch leaves the queue whole: a cancelled tick loses none
                by_challenger.setdefault(id(item[0]), []).append(item)
            waiting -= SHADOW_BATCH
            for items in by_challenger.values():
                for challenger, body, content_type, request_id in self.batch(items):
                    self.canary(challenger, body, content_type, request_id, mode="shadow")
            if waiting > 0:
                await asyncio.sleep(0)

    def batch(self, items: list[Queued]) -> list[Queued]:
        """Score and record the plain requests of one challenger together; what is left for one-by-one scoring."""
        challenger = items[0][0]
        if challenger.tensor_spec is None:
            return items
        plain: list[tuple[str, int]] = []
        rows: list = []
        rest: list[Queued] = []
        for item in items:
            try:
                inputs = plain_inputs(decode_json(item[1])) if is_utf8_json(item[2]) else None
            except Exception:  # noqa: BLE001 - not JSON: its own scoring words the error
                inputs = None
            if inputs is None:
                rest.append(item)
            else:
                plain.append((item[3], len(inputs)))
                rows.extend(inputs)
        if not plain:
            return rest
        try:
            x = convert_data_type(rows, challenger.tensor_spec)
            predictions = challenger.predict(x)
            if not isinstance(predictions, np.ndarray) or predictions.shape[:1] != (len(x),):
                return items  # one by one: the checks of a single answer decide
        except Exception:  # noqa: BLE001 - one bad request fails a batch; one by one, it fails alone
            return items
        start = 0
        for request_id, count in plain:
            challenger.record(request_id, x[start : start + count], predictions[start : start + count], shadow=True)
            start += count
        if self.counted:
            metrics.challenger_ran(challenger.version, "shadow", "ok", len(plain))
        return rest

    def canary(
        self, challenger: Loaded, body: bytes, content_type: str, request_id: str, mode: str = "canary"
    ) -> Response | None:
        """The challenger's answer, or None when it failed or answered with the wrong number of predictions (the
        champion then answers)."""
        try:
            response: Response | None = challenger.score(
                body, content_type, request_id, shadow=mode == "shadow", checked=True
            )
        except Exception:  # noqa: BLE001 - a challenger's failure is counted, never raised
            response = None
            if time.monotonic() - self.warned_at >= 60:
                self.warned_at = time.monotonic()
                log.exception("model-server: the challenger (version %s) failed (%s)", challenger.version, mode)
        ok = response is not None and response.status_code == 200
        if not ok:
            self.failures += 1
        if self.counted:
            metrics.challenger_ran(challenger.version, mode, "ok" if ok else "error")
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
