"""Model server: MLflow's own scoring app (the protocol of `mlflow models serve`), plus three things it lacks.

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

Request parsing, prediction and error responses are MLflow's (``mlflow.pyfunc.scoring_server.init``).
Before any model exists it answers ``/ping`` with 503 (unhealthy) and says in its log what to do.

Usage (see model-server.sh): uvicorn --factory serve:create_app, configured by the environment:
  MODEL_URI                  a fixed model (e.g. runs:/<id>/model); empty: follow the champion
  REGISTERED_MODEL_NAME      the registered model to follow (default iris-classifier)
  MODEL_POLL_SECONDS         how often to check the alias (default 10)
  MODEL_SERVER_MAX_BODY_BYTES  request size limit (default 10 MiB)
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from functools import wraps
from http import HTTPStatus
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger("model-server")
CHAMPION = "champion"


@dataclass(frozen=True)
class Loaded:
    app: ASGIApp
    uri: str
    version: str = ""
    run_id: str = ""
    loaded_at: float = field(default_factory=time.time)

    def info(self) -> dict[str, str]:
        return {"model_uri": self.uri, "model_version": self.version, "run_id": self.run_id}


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
    """Load a model completely and build MLflow's scoring app around it (nothing is swapped yet)."""
    from mlflow.pyfunc import scoring_server

    _map_undecodable_json_to_400()
    model = scoring_server.load_model_with_mlflow_config(uri)
    run_id = run_id or (model.metadata.run_id or "")
    return Loaded(scoring_server.init(model), uri, version, run_id)


async def _send_json(send: Send, status: int, body: dict, headers: list | None = None) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                *(headers or []),
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


async def _send_error_as_json(send: Send, start: Message, body: bytes) -> None:
    """Forward an error answer of MLflow's app unchanged if its body is JSON, else wrapped in JSON."""
    try:
        json.loads(body)
    except ValueError:
        status = start["status"]
        code = HTTPStatus(status).name if status in set(HTTPStatus) else "ERROR"
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() not in (b"content-type", b"content-length")]
        await _send_json(send, status, {"error_code": code, "message": body.decode(errors="replace")}, headers)
        return
    await send(start)
    await send({"type": "http.response.body", "body": body})


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
    def start(self) -> None:
        threading.Thread(target=self._watch, name="model-watcher", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                self.refresh()
            except Exception:  # keep serving whatever is loaded; say why the new one is not
                log.exception("model-server: could not load the new model; still serving %s", self.describe())
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
        if path == "/invocations" and scope.get("method") == "POST" and b"content-type" not in dict(scope["headers"]):
            await _send_json(  # MLflow's app fails with a 500 on a request without one
                send, 415, {"error_code": "UNSUPPORTED_MEDIA_TYPE", "message": "A Content-Type header is required."}
            )
            return
        body = await self._read_body(scope, receive, send)
        if body is None:
            return

        async def replay() -> Message:
            nonlocal body
            chunk, body = body, b""
            return {"type": "http.request", "body": chunk, "more_body": False}

        headers = [
            (b"x-model-uri", current.uri.encode()),
            (b"x-model-version", current.version.encode()),
            (b"x-model-run-id", current.run_id.encode()),
        ]

        error_start: Message | None = None  # an error answer is held until its whole body is known
        error_body: list[bytes] = []

        async def send_with_headers(message: Message) -> None:
            nonlocal error_start
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *headers]}
                if message["status"] >= 400:
                    error_start = message
                    return
            elif error_start is not None and message["type"] == "http.response.body":
                error_body.append(message.get("body", b""))
                if not message.get("more_body", False):
                    await _send_error_as_json(send, error_start, b"".join(error_body))
                return
            await send(message)

        await current.app(scope, replay, send_with_headers)

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
                self.start()
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
        poll_seconds=float(os.environ.get("MODEL_POLL_SECONDS") or 10),
        max_body=int(os.environ.get("MODEL_SERVER_MAX_BODY_BYTES") or 10 * 1024 * 1024),
    )
