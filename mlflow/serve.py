"""Model server: MLflow's scoring protocol (what `mlflow models serve` speaks) as a small Starlette app, plus:

1. It follows the registry: with no fixed model it serves ``models:/<name>@champion`` and, when the alias
   moves, loads the new version completely, then swaps it in. Requests in flight finish on the old model, so
   none fails during the switch; if the new version cannot be loaded, the old one keeps serving.
2. It says what it serves: every answer carries ``X-Model-Uri``, ``X-Model-Version`` and ``X-Model-Run-Id``,
   and ``GET /model`` returns the same as JSON.
3. It caps request bodies (``MODEL_SERVER_MAX_BODY_BYTES``): a larger body gets a JSON 413, unread.
4. Every error is JSON with an ``error_code``. The request JSON is decoded here (standard library) before MLflow
   sees it, so nesting deeper than the recursion limit or an integer of more than 4,300 digits is a 400
   (MLflow 3.17 answers both with a 500), and so is a request without a Content-Type (415).
5. Scoring is MLflow's: ``scoring_server.invocations`` (its parsing, schema enforcement, predict and answer
   format). For the original tutorial's payload, ``{"inputs": [[...], ...]}`` to a scikit-learn model whose
   signature is one unnamed tensor, it takes a short path through MLflow's public functions instead
   (``convert_data_type`` with that tensor spec, then pyfunc ``predict``), which skips a second JSON decoding
   and a deep copy of every row. Whatever the short path does not cover, or fails on, goes the full way, so
   answers and error messages stay MLflow's (tests/test_model_server.py checks both byte for byte).
6. A scikit-learn tree ensemble on the short path predicts with a compiled copy in ONNX Runtime, served only
   after it gave scikit-learn's answers on a wide check (predictors.py); ``GET /model`` names the runtime.
7. ``GET /metrics``: requests by endpoint and status, latency, rows and classes predicted, the served model and its
   loads, in Prometheus's format, added up over all workers (metrics.py).
8. It records what it predicts: every scored request, its rows, its predictions and the model that answered go to
   the inference log (inference_log.py, for the drift monitor) under a request ID that the answer's
   ``X-Request-Id`` header carries (a client's own valid ``X-Request-Id`` is kept).

Before any model exists it answers 503 (so the healthcheck stays unhealthy) and says in its log what to do.

Usage (see model-server.sh): gunicorn --preload -k serve.Worker 'serve:create_app()', configured by the environment:
  MODEL_URI                    a fixed model (e.g. runs:/<id>/model); empty: follow the champion
  REGISTERED_MODEL_NAME        the registered model to follow (default iris-classifier)
  MODEL_POLL_SECONDS           how often to check the alias (default 5)
  MODEL_SERVER_MAX_BODY_BYTES  request size limit (default 10 MiB)
  MODEL_SERVER_COMPILED        true (default): a scikit-learn tree ensemble predicts in ONNX Runtime once a check
                               showed the same answers (predictors.py); false: always scikit-learn
  MODEL_SERVER_METRICS         true (default): count and serve /metrics; false: neither (no /metrics route)
  PROMETHEUS_MULTIPROC_DIR     where the workers' counts live (model-server.sh sets it; unset: this process only)
  INFERENCE_LOG                true (default): record every scored request; false: record nothing
  INFERENCE_LOG_DIR, _FLUSH_SECONDS, _RETENTION_DAYS, _MAX_MB: where and how (inference_log.py)
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, replace
from functools import cached_property
from http import HTTPStatus
from typing import Any

import mlflow.sklearn  # noqa: F401 - the flavor this stack serves, imported before gunicorn forks (see Worker)
import numpy as np
import skops.io  # noqa: F401 - what mlflow.sklearn loads the model with
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import scoring_server
from mlflow.utils.proto_json_utils import MlflowInvalidInputException, convert_data_type
from mlflow.version import VERSION
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from uvicorn_worker import UvicornWorker

import metrics
from inference_log import InferenceLog
from predictors import RUNTIME, SKLEARN, Compiled, compile_model

log = logging.getLogger("model-server")
CHAMPION = "champion"
FIRST_LOAD_WAIT_SECONDS = 20  # a worker starts answering (503 until loaded) if the first load takes longer
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")  # a client's X-Request-Id is kept only if it is this plain


class Worker(UvicornWorker):
    """gunicorn's worker: uvicorn on uvloop and httptools, never asyncio's fallbacks (whose multi-worker sockets
    lack TCP_NODELAY: every kept-alive answer would wait for a delayed ACK). gunicorn imports this module and builds
    the app once (--preload), then forks the workers: what is imported above is shared by them."""

    CONFIG_KWARGS = {"loop": "uvloop", "http": "httptools"}


def is_utf8_json(content_type: str) -> bool:
    """The content types MLflow decodes as JSON: application/json, with at most a charset=utf-8 parameter."""
    mime, *parameters = (part.strip() for part in content_type.split(";"))
    return mime == "application/json" and all(
        key == "charset" and value.lower() == "utf-8" for key, _, value in (p.partition("=") for p in parameters)
    )


def env_flag(name: str, default: bool) -> bool:
    """A true/false setting; anything else stops the server with the setting's name (a typo must not silently pick
    a runtime)."""
    value = os.environ.get(name, "").strip().lower()
    if value in ("", "true", "false"):
        return default if not value else value == "true"
    raise SystemExit(f"model-server: {name}={os.environ[name]!r} must be true or false")


def error(status: int, message: str, headers: dict[str, str] | None = None, code: str | None = None) -> JSONResponse:
    return JSONResponse({"error_code": code or HTTPStatus(status).name, "message": message}, status, headers)


@dataclass(frozen=True)
class Loaded:
    """One loaded model and what identifies it. Immutable: a request holds on to the one it started with."""

    model: Any  # mlflow.pyfunc.PyFuncModel
    uri: str
    version: str = ""
    run_id: str = ""
    compiled: Compiled | None = None  # the short path's predict when set (predictors.py), else scikit-learn's
    counted: bool = False  # count rows and classes predicted (metrics.py)
    recorder: InferenceLog | None = None  # where scored requests are recorded (inference_log.py)
    name: str = ""  # the registered model's name, for the inference log ("" for a pinned run)

    def info(self) -> dict[str, str]:
        runtime = RUNTIME if self.compiled else SKLEARN
        return {"model_uri": self.uri, "model_version": self.version, "run_id": self.run_id, "runtime": runtime}

    def metric_labels(self, model_name: str) -> dict[str, str]:
        info = self.info()
        return {"model_name": model_name, **{k: info[k] for k in ("model_version", "run_id", "model_uri", "runtime")}}

    @cached_property
    def headers(self) -> dict[str, str]:
        return {"X-Model-Uri": self.uri, "X-Model-Version": self.version, "X-Model-Run-Id": self.run_id}

    @cached_property
    def input_schema(self) -> Any:
        return self.model.metadata.get_input_schema()

    @cached_property
    def tensor_spec(self) -> Any:
        """The signature's one unnamed tensor, for the short path; None: always MLflow's full path. Only
        scikit-learn models: a custom pyfunc model's signature may come from type hints, which MLflow parses
        differently."""
        flavor = self.model.metadata.flavors.get("python_function", {})
        schema = self.input_schema
        if flavor.get("loader_module") != "mlflow.sklearn" or schema is None or not schema.is_tensor_spec():
            return None
        if len(schema.inputs) != 1 or schema.has_input_names():
            return None
        return schema.inputs[0]

    def score(self, body: bytes, content_type: str, request_id: str = "") -> Response:
        """Answer one /invocations request as MLflow's scoring server does."""
        headers = {**self.headers, "X-Request-Id": request_id} if request_id else self.headers
        payload = None
        try:
            if is_utf8_json(content_type):
                payload = decode_json(body)
                short = self.short_path(payload, request_id)
                if short is not None:
                    return Response(short, headers=headers, media_type="application/json")
            result = scoring_server.invocations(body, content_type, self.model, self.input_schema)
        except MlflowException as exc:
            return Response(exc.serialize_as_json(), exc.get_http_status_code(), headers, "application/json")
        if result.mimetype == "application/json":
            if result.status == 200 and (self.counted or self.recorder):
                predictions = json.loads(result.response).get("predictions")
                if self.counted:
                    metrics.predicted_json(predictions)
                self.record(request_id, input_rows(payload), predictions)
            return Response(result.response, result.status, headers, "application/json")
        return error(result.status, result.response, headers)  # MLflow's plain-text 415s, as JSON

    def record(self, request_id: str, rows: Any, predictions: Any) -> None:
        if self.recorder is not None:
            self.recorder.record(request_id, self.name, self.version, self.run_id, rows, predictions)

    def short_path(self, request: object, request_id: str = "") -> bytes | None:
        """The answer to a decoded plain {"inputs": [[...], ...]}, or None for anything else and for any error
        (MLflow's full path then answers, and words the error)."""
        if self.tensor_spec is None:
            return None
        if type(request) is not dict or request.keys() != {"inputs"}:
            return None
        rows = request["inputs"]
        if type(rows) is not list or not rows or any(type(row) is dict for row in rows):
            return None
        try:
            x = convert_data_type(rows, self.tensor_spec)
            predictions = None
            if self.compiled is not None and fits(self.tensor_spec, x):
                predictions = self.compiled.predict(x)
            if predictions is None:
                predictions = self.model.predict(x)
        except Exception:  # noqa: BLE001 - MLflow's path decides what the error is and how it is worded
            return None
        if not isinstance(predictions, np.ndarray):
            return None  # MLflow's encoder handles the other output types
        if self.counted:
            metrics.predicted(predictions)
        self.record(request_id, x, predictions)
        return json.dumps({"predictions": predictions.tolist()}).encode()


def input_rows(payload: object) -> Any:
    """The rows of a JSON payload MLflow's full path scored, for the inference log: the tensor forms' lists and
    dataframe_split's data as they came; dataframe_records' values by position; None for a CSV body."""
    if not isinstance(payload, dict) or len(payload) != 1:
        return None
    key, value = next(iter(payload.items()))
    if key == "dataframe_split" and isinstance(value, dict):
        return value.get("data")
    if key == "dataframe_records" and isinstance(value, list):
        return [list(row.values()) if isinstance(row, dict) else row for row in value]
    return value if key in ("inputs", "instances") else None


def fits(spec: Any, x: np.ndarray) -> bool:
    """x passes MLflow's schema enforcement of the tensor spec unchanged (what pyfunc predict would check first)."""
    shape = spec.shape
    return (
        x.dtype == spec.type and x.ndim == len(shape) and all(s in (-1, n) for s, n in zip(shape, x.shape, strict=True))
    )


def decode_json(body: bytes) -> object:
    """json.loads, with every failure an MLflow input error (a 400): MLflow maps only JSONDecodeError and
    UnicodeDecodeError, so RecursionError and the ValueError of a too-long integer reached it as 500s."""
    try:
        return json.loads(body)
    except (RecursionError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise MlflowInvalidInputException(
            f"Ensure that input is a valid JSON formatted string. Error: {exc!r}"
        ) from None


def load(
    uri: str,
    version: str = "",
    run_id: str = "",
    compiled: bool = True,
    counted: bool = False,
    recorder: InferenceLog | None = None,
    name: str = "",
) -> Loaded:
    """Load a model completely (nothing is swapped yet), the way MLflow's scoring server loads it, and, for a
    scikit-learn tree ensemble served by the short path, its checked compiled copy (unless `compiled` is off)."""
    model = scoring_server.load_model_with_mlflow_config(uri)
    run_id = run_id or (model.metadata.run_id or "")
    loaded = Loaded(model, uri, version, run_id, counted=counted, recorder=recorder, name=name)
    if compiled and loaded.tensor_spec is not None:
        loaded = replace(loaded, compiled=compile_model(model.get_raw_model(), model.input_example))
    log.info("model-server: %s predicts with %s", uri, loaded.info()["runtime"])
    return loaded


class ModelWatcher:
    """Holds the model being served and replaces it when the champion moves (a background thread, so the event
    loop never waits for a load)."""

    def __init__(
        self,
        fixed_uri: str,
        model_name: str,
        poll_seconds: float,
        compiled: bool = True,
        counted: bool = False,
        recorder: InferenceLog | None = None,
    ) -> None:
        self.fixed_uri = fixed_uri
        self.model_name = model_name
        self.poll_seconds = poll_seconds
        self.compiled = compiled
        self.counted = counted  # count loads and the served model (metrics.py), and pass it on to Loaded
        self.recorder = recorder  # passed on to Loaded
        self.current: Loaded | None = None
        self.stopped = threading.Event()
        self.loading = threading.Event()  # set while a load is under way
        self.first_loaded = threading.Event()  # set once any model serves
        self.last_hint = 0.0

    def start(self) -> threading.Event:
        """Start watching; the event is set once the first load attempt is over (loaded, or nothing to load)."""
        first_attempt = threading.Event()
        threading.Thread(target=self.watch, args=(first_attempt,), name="model-watcher", daemon=True).start()
        return first_attempt

    def watch(self, first_attempt: threading.Event) -> None:
        while not self.stopped.is_set():
            try:
                self.refresh()
            except Exception:  # keep serving whatever is loaded; say why the new one is not
                if self.counted:
                    metrics.loaded(ok=False)
                log.exception("model-server: could not load the new model; still serving %s", self.describe())
            first_attempt.set()
            if self.fixed_uri and self.current:
                return  # a fixed model never changes
            # Until a model serves, look every second: every worker polls on its own, and one that found the new
            # champion seconds after another would answer 503 meanwhile.
            self.stopped.wait(self.poll_seconds if self.current else min(1.0, self.poll_seconds))

    def refresh(self) -> None:
        if self.fixed_uri:
            with self.loading_flag():
                self.swap(load(self.fixed_uri, compiled=self.compiled, counted=self.counted, recorder=self.recorder))
            return
        try:
            target = MlflowClient().get_model_version_by_alias(self.model_name, CHAMPION)
        except MlflowException:
            self.hint(f"no model '{self.model_name}@{CHAMPION}' in the registry yet")
            return
        if self.current and self.current.version == target.version:
            return
        log.info("model-server: loading %s version %s (run %s)", self.model_name, target.version, target.run_id)
        uri = f"models:/{self.model_name}/{target.version}"
        with self.loading_flag():
            self.swap(
                load(
                    uri,
                    target.version,
                    target.run_id or "",
                    compiled=self.compiled,
                    counted=self.counted,
                    recorder=self.recorder,
                    name=self.model_name,
                )
            )

    @contextmanager
    def loading_flag(self) -> Iterator[None]:
        self.loading.set()
        try:
            yield
        finally:
            self.loading.clear()

    def swap(self, new: Loaded) -> None:
        old, self.current = self.current, new  # one reference assignment: a request sees old or new, never neither
        self.first_loaded.set()
        if self.counted:
            name = "" if self.fixed_uri else self.model_name
            metrics.loaded(ok=True)
            metrics.serving(new.metric_labels(name), old.metric_labels(name) if old else None)
        log.info("model-server: now serving %s (was %s)", self.describe(), old.uri if old else "nothing")

    def describe(self) -> str:
        c = self.current
        return f"{c.uri} (version {c.version or '-'}, run {c.run_id or '-'})" if c else "nothing"

    def hint(self, why: str) -> None:
        if time.monotonic() - self.last_hint > 60:
            self.last_hint = time.monotonic()
            log.warning(
                "model-server: %s. Trigger the DAG 'mlops_pipeline' in Airflow; once it promotes a model this "
                "server loads it by itself. (Or run ./update_run_id.sh and recreate this service to serve one run.)",
                why,
            )


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


def create_app(
    fixed_uri: str | None = None,
    model_name: str | None = None,
    poll_seconds: float | None = None,
    max_body: int | None = None,
    compiled: bool | None = None,
    counted: bool | None = None,
    recorder: InferenceLog | None | bool = True,
) -> Starlette:
    """The app; arguments left out come from the environment (see the module docstring). `recorder`: True reads
    INFERENCE_LOG*, None records nothing."""
    env = os.environ.get
    counted = env_flag("MODEL_SERVER_METRICS", default=True) if counted is None else counted
    if recorder is True:
        try:
            recorder = InferenceLog.from_env()
        except ValueError as exc:
            raise SystemExit(f"model-server: {exc}") from None
    watcher = ModelWatcher(
        fixed_uri=env("MODEL_URI", "") if fixed_uri is None else fixed_uri,
        model_name=model_name or env("REGISTERED_MODEL_NAME") or "iris-classifier",
        poll_seconds=poll_seconds or float(env("MODEL_POLL_SECONDS") or 5),
        compiled=env_flag("MODEL_SERVER_COMPILED", default=True) if compiled is None else compiled,
        counted=counted,
        recorder=recorder or None,
    )
    max_body = max_body or int(env("MODEL_SERVER_MAX_BODY_BYTES") or 10 * 1024 * 1024)

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
        return current.score(body, content_type, request_id)

    async def ping(request: Request) -> Response:
        current = watcher.current
        return Response("\n", 200, current.headers, "application/json") if current else not_loaded()

    async def version(request: Request) -> Response:
        current = watcher.current
        return Response(VERSION, 200, current.headers, "application/json") if current else not_loaded()

    async def model(request: Request) -> JSONResponse:
        current = watcher.current
        return JSONResponse(current.info(), 200, current.headers) if current else JSONResponse({"model_uri": None}, 503)

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
        body, content_type = metrics.exposition()
        return Response(body, 200, media_type=content_type)

    endpoints: dict[str, tuple[Handler, str]] = {
        "/invocations": (invocations, "POST"),
        "/ping": (ping, "GET"),
        "/health": (ping, "GET"),
        "/version": (version, "GET"),
        "/model": (model, "GET"),
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
        yield
        watcher.stopped.set()
        if watcher.recorder:
            watcher.recorder.close()  # a clean stop (SIGTERM) writes every recorded request

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
