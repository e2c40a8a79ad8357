"""The model-server: MLflow's scoring protocol (what `mlflow models serve` speaks) as a small Starlette app. The
framework does routing and lifespan, MLflow does scoring (model.py); this module adds only what they lack:

1. It follows the registry's champion and switches versions without a failed request (watcher.py).
2. It says what it serves: every answer carries ``X-Model-Uri``, ``X-Model-Version`` and ``X-Model-Run-Id``, and
   ``GET /model`` returns the same as JSON (with the runtime: ONNX Runtime or scikit-learn, predictors.py).
3. It caps request bodies (MODEL_SERVER_MAX_BODY_BYTES): a larger body gets a JSON 413, unread.
4. Every error is JSON with an ``error_code``, a request without a Content-Type a 415 (MLflow's app gives a 500).
5. ``GET /metrics`` in Prometheus's format, added up over all workers (metrics.py).
6. It records every scored request in the inference log (inference_log.py) under a request ID that the answer's
   ``X-Request-Id`` header carries (a client's own plain ``X-Request-Id`` is kept).
7. A challenger beside the champion, in shadow or as a canary (challenger.py), and ``POST /feedback``: the true
   labels of earlier requests, into the inference log.

Before any model exists it answers 503 (so the healthcheck stays unhealthy) and says in its log what to do.
Settings: ServerSettings (settings.py; .env.example describes each key). mlflow/model-server.sh starts it:
``gunicorn --preload -k mlops_pipeline.serving.app.Worker 'mlops_pipeline.serving.app:create_app()'``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import mlflow.sklearn  # noqa: F401 - the flavor this stack serves, imported before gunicorn forks (see Worker)
import skops.io  # noqa: F401 - what mlflow.sklearn loads the model with
from mlflow.version import VERSION
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from uvicorn_worker import UvicornWorker

from mlops_pipeline.schema import ConfigError
from mlops_pipeline.serving import metrics
from mlops_pipeline.serving.challenger import (
    FEEDBACK_MAX_BYTES,
    REQUEST_ID_PATTERN,
    FeedbackError,
    Runs,
    in_canary,
    parse_feedback,
)
from mlops_pipeline.serving.inference_log import InferenceLog
from mlops_pipeline.serving.model import error
from mlops_pipeline.serving.watcher import ModelWatcher
from mlops_pipeline.settings import ServerSettings, from_env

log = logging.getLogger("model-server")
FIRST_LOAD_WAIT_SECONDS = 20  # a worker starts answering (503 until loaded) if the first load takes longer
REQUEST_ID = re.compile(REQUEST_ID_PATTERN)  # a client's X-Request-Id is kept only if it is this plain


class Worker(UvicornWorker):
    """gunicorn's worker: uvicorn on uvloop and httptools, never asyncio's fallbacks (whose multi-worker sockets
    lack TCP_NODELAY: every kept-alive answer would wait for a delayed ACK). gunicorn imports this module and builds
    the app once (--preload), then forks the workers: what is imported above is shared by them."""

    CONFIG_KWARGS = {"loop": "uvloop", "http": "httptools"}


Handler = Callable[[Request], Awaitable[Response]]


def timed(endpoint: str, handler: Handler) -> Handler:
    """The handler, counting its answer by status code and timing it (metrics.py); a handler that raises counts as
    the 500 Starlette then answers."""

    async def counted(request: Request) -> Response:
        start = time.perf_counter()
        try:
            response = await handler(request)
        except Exception:
            metrics.observe(endpoint, 500, time.perf_counter() - start)
            raise
        metrics.observe(endpoint, response.status_code, time.perf_counter() - start)
        return response

    return counted


async def read_body(request: Request, limit: int) -> bytes | None:
    """The whole body, or None when it exceeds `limit` (a declared Content-Length is checked before reading)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(recorder: InferenceLog | None | bool = True, **given: object) -> Starlette:
    """The app, with ServerSettings from the environment (`given` ones win, by field name). `recorder`: True makes
    the one the settings ask for (INFERENCE_LOG*), None records nothing."""
    try:
        settings = from_env(ServerSettings, **given)
        if recorder is True:
            recorder = InferenceLog.from_settings(settings)
    except ConfigError as exc:
        raise SystemExit(f"model-server: {exc}") from None
    counted, max_body = settings.model_server_metrics, settings.model_server_max_body_bytes
    watcher = ModelWatcher(settings, recorder or None)
    mode, share, runs = settings.challenger_mode, settings.canary_percent, Runs(counted)

    def not_loaded() -> JSONResponse:
        return error(503, "No model is loaded yet; see the server log.", code="MODEL_NOT_LOADED")

    async def invocations(request: Request) -> Response:
        current = watcher.current  # the model this request uses from start to end
        if current is None and watcher.loading.is_set():  # the first model is on its way: wait for it, not a 503
            await asyncio.to_thread(watcher.first_loaded.wait, FIRST_LOAD_WAIT_SECONDS)
            current = watcher.current
        if current is None:
            return not_loaded()
        content_type = request.headers.get("content-type")
        if content_type is None:  # MLflow's app fails with a 500 on a request without one
            return error(415, "A Content-Type header is required.", current.headers)
        body = await read_body(request, max_body)
        if body is None:
            message = f"Request body exceeds MODEL_SERVER_MAX_BODY_BYTES={max_body}."
            return error(413, message, current.headers, code="REQUEST_TOO_LARGE")
        # Inline, not in a thread: a worker scores one request at a time either way (predict holds the GIL),
        # and a thread hand-off costs two GIL waits per request. Model switches never block (ModelWatcher).
        request_id = request.headers.get("x-request-id", "")
        if not REQUEST_ID.fullmatch(request_id):
            request_id = uuid.uuid4().hex
        challenger, response = watcher.challenger, None
        if challenger is not None and mode == "canary" and in_canary(request_id, share):
            response = runs.canary(challenger, body, content_type, request_id)  # None: it failed, the champion answers
            if response is not None and counted:
                metrics.answered(challenger.version, "challenger")
        if response is None:
            response = current.score(body, content_type, request_id)
            if counted and response.status_code == 200:
                metrics.answered(current.version, "champion")
            if challenger is not None and mode == "shadow" and response.status_code == 200:
                runs.shadow(challenger, body, content_type, request_id)  # scored by the next tick
        return response

    async def feedback(request: Request) -> Response:
        """The true labels of earlier requests, by request ID, into the inference log (202: recorded)."""
        if watcher.recorder is None:
            return error(503, "INFERENCE_LOG is off: feedback has nowhere to be recorded.", code="FEEDBACK_OFF")
        if not (request.headers.get("content-type") or "").startswith("application/json"):
            return error(415, "Feedback is JSON: send Content-Type: application/json.")
        body = await read_body(request, FEEDBACK_MAX_BYTES)
        if body is None:
            return error(413, f"A feedback body is at most {FEEDBACK_MAX_BYTES} bytes.", code="REQUEST_TOO_LARGE")
        try:
            items = parse_feedback(body)
        except FeedbackError as exc:
            return error(400, f"Feedback refused, nothing recorded: {exc}", code="INVALID_PARAMETER_VALUE")
        recorded = sum(watcher.recorder.feedback(item.request_id, item.labels) for item in items)
        return JSONResponse({"recorded": recorded, "dropped": len(items) - recorded}, 202)

    async def ping(request: Request) -> Response:
        current = watcher.current
        return Response("\n", 200, current.headers, "application/json") if current else not_loaded()

    async def version(request: Request) -> Response:
        current = watcher.current
        return Response(VERSION, 200, current.headers, "application/json") if current else not_loaded()

    async def model(request: Request) -> JSONResponse:
        current, challenger = watcher.current, watcher.challenger
        if current is None:
            return JSONResponse({"model_uri": None}, 503)
        about: dict[str, object] = dict(current.info())
        if challenger is not None:
            about["challenger"] = {
                **challenger.info(),
                "mode": mode,
                "canary_percent": share if mode == "canary" else 0,
            }
        return JSONResponse(about, 200, current.headers)

    async def http_error(request: Request, exc: Exception) -> Response:
        """404 and 405 from the router, as JSON with the model headers."""
        assert isinstance(exc, HTTPException)
        headers = {**(watcher.current.headers if watcher.current else {}), **(exc.headers or {})}
        path = request.url.path
        allowed = (exc.headers or {}).get("Allow", "")
        message = f"{path} takes {allowed}" if exc.status_code == 405 else f"No such endpoint: {path}"
        if counted:  # a 405 names its route; every 404 is one label, whatever was asked for
            metrics.observe(path if exc.status_code == 405 else "unmatched", exc.status_code, 0.0)
        return error(exc.status_code, message, headers)

    async def scrape(request: Request) -> Response:
        body, content_type = metrics.exposition(settings.prometheus_multiproc_dir)
        return Response(body, 200, media_type=content_type)

    endpoints: dict[str, tuple[Handler, str]] = {
        "/invocations": (invocations, "POST"),
        "/ping": (ping, "GET"),
        "/health": (ping, "GET"),
        "/version": (version, "GET"),
        "/model": (model, "GET"),
        "/feedback": (feedback, "POST"),
    }
    if counted:
        endpoints["/metrics"] = (scrape, "GET")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # A worker accepts connections only after startup: one that starts while a model exists loads it first,
        # so no worker answers 503 beside one that serves (MODEL_SERVER_WORKERS > 1). The thread starts here,
        # in each worker, not in gunicorn's parent, which imported this module before forking.
        if watcher.recorder:
            watcher.recorder.start()  # its flusher thread, like the watcher's, belongs to this worker
        first_attempt = watcher.start()
        await asyncio.to_thread(first_attempt.wait, FIRST_LOAD_WAIT_SECONDS)
        ticker = asyncio.create_task(tick())
        yield
        ticker.cancel()
        await runs.run_shadows()  # a clean stop scores and records what waited
        watcher.stopped.set()
        if counted:
            metrics.publish()
        if watcher.recorder:
            watcher.recorder.close()  # a clean stop (SIGTERM) writes every recorded request

    async def tick() -> None:
        """Between requests, on this loop: the shadow's batch runs (challenger.py), then what the requests counted
        and recorded goes on (metrics.py and inference_log.py say why it waits for this)."""
        while True:
            await asyncio.sleep(metrics.PUBLISH_SECONDS)
            try:
                await runs.run_shadows()
                if counted:
                    metrics.publish()
                if watcher.recorder:
                    watcher.recorder.encode_pending()
            except Exception:  # the next tick tries again; a request never sees this
                log.exception("model-server: publishing the counts or encoding the inference log failed")

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    app = Starlette(
        routes=[
            Route(path, timed(path, handler) if counted else handler, methods=[method])
            for path, (handler, method) in endpoints.items()
        ],
        exception_handlers={HTTPException: http_error},
        lifespan=lifespan,
    )
    gc.freeze()  # what exists now is never collected: the forked workers do not copy those pages for the GC
    return app
