"""Model server: MLflow's scoring protocol (the one `mlflow models serve` speaks), plus what it lacks.

1. It follows the registry: with no fixed model it serves ``models:/<name>@champion`` and, when the alias
   moves, loads the new version fully and then swaps it in. In-flight requests finish on the old model, so no
   request fails during the switch; if the new version fails to load, the old one keeps serving.
2. It says what it serves: every response carries ``X-Model-Uri``, ``X-Model-Version`` and ``X-Model-Run-Id``,
   and ``GET /model`` returns the same as JSON.
3. It caps request bodies (``MODEL_SERVER_MAX_BODY_BYTES``): a larger body gets a JSON 413 before anything
   is parsed.
4. Every error answer is JSON with an ``error_code`` (MLflow's 415s are text/plain), and three malformed
   requests MLflow 3.17 answers with a 500 get a 4xx: no Content-Type (415), JSON nested deeper than Python's
   recursion limit and integers of more than 4,300 digits (400). See tests/test_invocations_fuzz.py.
5. It is lean (benchmarks/, "Serving"). Requests are scored with MLflow's own scoring code
   (``scoring_server.invocations``: parsing, schema enforcement, pyfunc predict, response format), called
   inline on the event loop rather than through MLflow's FastAPI app, which hands every request to a thread
   and so waits for the GIL twice per request (+10 ms on a 10 ms predict). The seed's payload,
   ``{"inputs": [[...], ...]}`` for a model with a tensor signature, takes a short path through the same
   MLflow functions (``convert_data_type`` with the signature's tensor spec, pyfunc ``predict``) minus the
   second ``json.loads`` and the ``deepcopy`` of every row that MLflow's parser does (4x the predict's time
   at 10,000 rows). Anything else, and any request the short path fails on, goes through MLflow's full path,
   so every answer and error message is MLflow's; tests/test_model_server.py checks both paths answer byte
   for byte alike. MLflow's request timeout (MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT) does not apply: it
   never stopped a predict, only answered 504 while the predict went on.

Before any model exists it answers ``/ping`` with 503 (unhealthy) and says in its log what to do.

Usage (see model-server.sh): uvicorn --factory serve:create_app, configured by the environment:
  MODEL_URI                  a fixed model (e.g. runs:/<id>/model); empty: follow the champion
  REGISTERED_MODEL_NAME      the registered model to follow (default iris-classifier)
  MODEL_POLL_SECONDS         how often to check the alias (default 5)
  MODEL_SERVER_MAX_BODY_BYTES  request size limit (default 10 MiB)
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from functools import cached_property, wraps
from http import HTTPStatus
from typing import Any

import numpy as np

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

log = logging.getLogger("model-server")
CHAMPION = "champion"
# MLflow's endpoints and their methods.
ROUTES = {"/invocations": "POST", "/ping": "GET", "/health": "GET", "/version": "GET"}
JSON_TYPES = frozenset({"application/json", "application/json; charset=utf-8", "application/json;charset=utf-8"})


@dataclass(frozen=True)
class Scored:
    status: int
    body: bytes
    content_type: bytes = b"application/json"


@dataclass(frozen=True)
class Loaded:
    model: Any  # mlflow.pyfunc.PyFuncModel
    uri: str
    version: str = ""
    run_id: str = ""
    loaded_at: float = field(default_factory=time.time)

    def info(self) -> dict[str, str]:
        return {"model_uri": self.uri, "model_version": self.version, "run_id": self.run_id}

    @cached_property
    def input_schema(self) -> Any:
        return self.model.metadata.get_input_schema()

    @cached_property
    def tensor_spec(self) -> Any:
        """The signature's one unnamed tensor, the short path's only case (None: always MLflow's parser)."""
        schema = self.input_schema
        if schema is None or not schema.is_tensor_spec() or len(schema.inputs) != 1 or schema.has_input_names():
            return None
        if getattr(self.model.metadata, "_is_signature_from_type_hint", lambda: False)():
            return None
        return schema.inputs[0]

    def score(self, body: bytes, content_type: str) -> Scored:
        """Answer one /invocations request as MLflow's scoring server does, byte for byte."""
        from mlflow.exceptions import MlflowException
        from mlflow.pyfunc import scoring_server

        try:
            short = self._short_path(body, content_type)
            if short is not None:
                return short
            result = scoring_server.invocations(body, content_type, self.model, self.input_schema)
        except MlflowException as exc:
            return Scored(exc.get_http_status_code(), exc.serialize_as_json().encode())
        if result.mimetype == "application/json":
            return Scored(result.status, result.response.encode())
        status = HTTPStatus(result.status)  # MLflow's plain-text answers (unsupported media types): as JSON
        return Scored(status, json.dumps({"error_code": status.name, "message": result.response}).encode())

    def _short_path(self, body: bytes, content_type: str) -> Scored | None:
        """A plain {"inputs": [[...], ...]} request: the steps of MLflow's parser for it (convert_data_type with
        the signature's tensor spec, then pyfunc predict), minus its second json.loads and its deepcopy of every
        row. None, for anything else and for any error: MLflow's full path then answers (and words the error)."""
        from mlflow.utils.proto_json_utils import convert_data_type

        if self.tensor_spec is None or content_type.strip().lower() not in JSON_TYPES:
            return None
        try:
            request = json.loads(body)
            if type(request) is not dict or request.keys() != {"inputs"}:
                return None
            rows = request["inputs"]
            if type(rows) is not list or not rows or any(type(row) is dict for row in rows):
                return None
            predictions = self.model.predict(convert_data_type(rows, self.tensor_spec))
        except Exception:  # noqa: BLE001 - MLflow's path decides what the error is and how it is worded
            return None
        if not isinstance(predictions, np.ndarray):
            return None  # MLflow's encoder handles the other output types
        return Scored(200, json.dumps({"predictions": predictions.tolist()}).encode())


def _map_undecodable_json_to_400() -> None:
    """MLflow turns a body json.loads rejects into a 400, but only for JSONDecodeError and UnicodeDecodeError:
    RecursionError (nesting deeper than the recursion limit) and ValueError (an integer of more than 4,300
    digits) escape as 500s. Extend its mapping to those two, at the one place MLflow decodes request JSON."""
    from mlflow.pyfunc import scoring_server
    from mlflow.utils.proto_json_utils import MlflowInvalidInputException

    decode = scoring_server._decode_json_input
    if getattr(decode, "__wrapped__", None):
        return  # already done

    @wraps(decode)
    def decode_json_input(json_input: Any) -> Any:
        try:
            return decode(json_input)
        except (RecursionError, ValueError) as exc:  # MLflow's own errors are MlflowExceptions, not ValueErrors
            raise MlflowInvalidInputException(
                f"Ensure that input is a valid JSON formatted string. Error: {exc!r}"
            ) from exc

    scoring_server._decode_json_input = decode_json_input


def load(uri: str, version: str = "", run_id: str = "") -> Loaded:
    """Load a model completely (nothing is swapped yet)."""
    from mlflow.environment_variables import _MLFLOW_IS_IN_SERVING_ENVIRONMENT
    from mlflow.pyfunc import scoring_server

    _map_undecodable_json_to_400()
    os.environ[_MLFLOW_IS_IN_SERVING_ENVIRONMENT.name] = "true"  # as MLflow's scoring server sets it
    model = scoring_server.load_model_with_mlflow_config(uri)
    loaded = Loaded(model, uri, version, run_id or (model.metadata.run_id or ""))
    _ = loaded.tensor_spec  # work out the short path before the first request
    return loaded


async def _send(
    send: Send, status: int, body: bytes, headers: list | None = None, ctype: bytes = b"application/json"
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*(headers or []), (b"content-type", ctype), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _send_json(send: Send, status: int, body: dict, headers: list | None = None) -> None:
    await _send(send, status, json.dumps(body).encode(), headers)


def _error(status: HTTPStatus, message: str) -> dict[str, str]:
    return {"error_code": status.name, "message": message}


class ModelServer:
    """An ASGI app that forwards to the current model's scoring app and can swap that app at any time."""

    def __init__(self, fixed_uri: str, model_name: str, poll_seconds: float, max_body: int) -> None:
        self.fixed_uri = fixed_uri
        self.model_name = model_name
        self.poll_seconds = poll_seconds
        self.max_body = max_body
        self.current: Loaded | None = None
        self._stop = threading.Event()
        self._last_hint = 0.0

    # --- model management (a background thread; the event loop never blocks on loading)
    def start(self) -> threading.Event:
        """Start watching; the event is set once the first load attempt is over (loaded, or nothing to load)."""
        first_attempt = threading.Event()
        threading.Thread(target=self._watch, args=(first_attempt,), name="model-watcher", daemon=True).start()
        return first_attempt

    def stop(self) -> None:
        self._stop.set()

    def _watch(self, first_attempt: threading.Event) -> None:
        while not self._stop.is_set():
            try:
                self.refresh()
            except Exception:  # keep serving whatever is loaded; say why the new one is not
                log.exception("model-server: could not load the new model; still serving %s", self.describe())
            first_attempt.set()
            self._stop.wait(self.poll_seconds if self.current else min(self.poll_seconds, 5))
            if self.fixed_uri and self.current:
                return  # a fixed model never changes

    def refresh(self) -> None:
        if self.fixed_uri:
            self.swap(load(self.fixed_uri))
            return
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        try:
            target = MlflowClient().get_model_version_by_alias(self.model_name, CHAMPION)
        except MlflowException:
            self._hint(f"no model '{self.model_name}@{CHAMPION}' in the registry yet")
            return
        if self.current and self.current.version == target.version:
            return
        log.info("model-server: loading %s version %s (run %s)", self.model_name, target.version, target.run_id)
        uri = f"models:/{self.model_name}/{target.version}"
        self.swap(load(uri, target.version, target.run_id or ""))

    def swap(self, new: Loaded) -> None:
        old, self.current = self.current, new  # one reference assignment: requests see old or new, never neither
        log.info("model-server: now serving %s (was %s)", self.describe(), old.uri if old else "nothing")

    def describe(self) -> str:
        c = self.current
        return f"{c.uri} (version {c.version or '-'}, run {c.run_id or '-'})" if c else "nothing"

    def _hint(self, why: str) -> None:
        if time.monotonic() - self._last_hint > 60:
            self._last_hint = time.monotonic()
            log.warning(
                "model-server: %s. Trigger the DAG 'mlops_pipeline' in Airflow; once it promotes a model this "
                "server loads it by itself. (Or run ./update_run_id.sh and recreate this service to serve one run.)",
                why,
            )

    # --- ASGI
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        current = self.current  # the model this request uses from start to end
        path = scope.get("path", "")
        if path == "/model" and scope.get("method") == "GET":
            await _send_json(send, 200 if current else 503, current.info() if current else {"model_uri": None})
            return
        if current is None:
            await _send_json(
                send, 503, {"error_code": "MODEL_NOT_LOADED", "message": "No model is loaded yet; see the server log."}
            )
            return
        method = scope.get("method")
        headers = [
            (b"x-model-uri", current.uri.encode()),
            (b"x-model-version", current.version.encode()),
            (b"x-model-run-id", current.run_id.encode()),
        ]
        if path not in ROUTES:
            await _send_json(send, 404, _error(HTTPStatus.NOT_FOUND, f"No such endpoint: {path}"), headers)
            return
        if method != ROUTES[path]:
            status = HTTPStatus.METHOD_NOT_ALLOWED
            await _send_json(send, status, _error(status, f"{path} takes {ROUTES[path]}"), headers)
            return
        if path in ("/ping", "/health"):
            await _send(send, 200, b"\n", headers)
            return
        if path == "/version":
            from mlflow.version import VERSION

            await _send(send, 200, VERSION.encode(), headers)
            return
        content_type = dict(scope["headers"]).get(b"content-type")
        if content_type is None:  # MLflow's app fails with a 500 on a request without one
            status = HTTPStatus.UNSUPPORTED_MEDIA_TYPE
            await _send_json(send, status, _error(status, "A Content-Type header is required."), headers)
            return
        body = await self._read_body(scope, receive, send)
        if body is None:
            return
        try:
            # Inline, not in a thread: a worker scores one request at a time either way (the GIL), and a
            # thread hand-off costs two GIL waits per request. Model switches never block (see _watch).
            scored = current.score(body, content_type.decode("latin-1"))
        except Exception:  # a bug, not bad input: log it, answer JSON
            log.exception("model-server: unexpected error scoring a request")
            status = HTTPStatus.INTERNAL_SERVER_ERROR
            await _send_json(send, status, _error(status, "Unexpected error; see the server log."), headers)
            return
        await _send(send, scored.status, scored.body, headers, scored.content_type)

    async def _read_body(self, scope: Scope, receive: Receive, send: Send) -> bytes | None:
        """The whole body, or None after answering 413 when it exceeds the limit (checked before reading)."""
        declared = dict(scope.get("headers", [])).get(b"content-length")
        too_large = {
            "error_code": "REQUEST_TOO_LARGE",
            "message": f"Request body exceeds MODEL_SERVER_MAX_BODY_BYTES={self.max_body}.",
        }
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            await _send_json(send, 413, too_large)
            return None
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                await _send_json(send, 413, too_large)
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                # uvicorn accepts connections only after startup: a worker that starts while a model exists
                # loads it first, so no worker answers 503 beside one that serves (MODEL_SERVER_WORKERS > 1).
                first_attempt = self.start()
                while not first_attempt.is_set():
                    await asyncio.sleep(0.05)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return


def create_app() -> ModelServer:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    return ModelServer(
        fixed_uri=os.environ.get("MODEL_URI", ""),
        model_name=os.environ.get("REGISTERED_MODEL_NAME") or "iris-classifier",
        poll_seconds=float(os.environ.get("MODEL_POLL_SECONDS") or 5),
        max_body=int(os.environ.get("MODEL_SERVER_MAX_BODY_BYTES") or 10 * 1024 * 1024),
    )
