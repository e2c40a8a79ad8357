"""The model-server's inference log: every scored request as one JSON line, for the drift monitor to read.

A request must never wait for the log's file or database: ``record()`` only queues what was scored (a tuple);
``encode_pending()`` turns the queue into JSON lines, and the app calls it on the worker's event loop between
requests (app.py's ticker, every few tens of milliseconds); a background thread writes each flush as whole lines to
``<dir>/date=YYYY-MM-DD/<hostname>-<pid>.jsonl`` (the record's own UTC date, so a reader can tell from a
partition's name which records it holds). One file per process: gunicorn's workers never share one, and a
restarted worker with a reused pid appends after a newline. A SIGKILL loses at most the records of the last flush
interval (written data is in the page cache); ``close()`` writes everything, so a clean shutdown loses none.
Memory is bounded by ``max_buffered`` (further records are dropped and counted), disk by ``retention_days`` and
``max_bytes`` (the oldest files go first).

Why the event loop encodes in batches: encoding is most of the log's work. In each request it cost several times
what it costs in a batch (cold caches between parsing and predicting; benchmarks/results.md, part peers,
measures what is left). In a thread it competes for the GIL: for the tens of milliseconds a busy
second's encoding took, the kernel let the thread run whole time slices while a request waited, which roughly
doubled the p99 of one worker at 2 connections (commit 18d9233). On the loop, a batch runs between two requests.

The scale-out variant writes the same records to a PostgreSQL table instead (TableSink; ``INFERENCE_LOG_DB``):
a Celery worker on another host can read a table, not this host's volume.

Fork-safe with ``gunicorn --preload``: nothing starts at import or construction; each worker calls ``start()``.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from mlops_pipeline.schema import FEEDBACK_FIELDS, LOG_FIELDS, SHADOW
from mlops_pipeline.serving.log_sinks import FileSink, Row, TableSink
from mlops_pipeline.settings import MIB, ServerSettings

log = logging.getLogger("model-server")
MINUTE = 60  # how often the limits are checked and a drop is warned about


def encodable(value: Any) -> Any:  # noqa: ANN401
    """json's fallback for what the request path hands over: arrays, frames and numpy scalars as lists and numbers;
    anything else is refused."""
    value = value.to_numpy() if hasattr(value, "to_numpy") else value
    if not hasattr(value, "tolist"):
        raise TypeError(f"{type(value).__name__} is not JSON serializable")
    return value.tolist()


ENCODER = json.JSONEncoder(separators=(",", ":"), default=encodable)
TS, REQUEST_ID, *MODEL_FIELDS, INPUTS, PREDICTIONS = LOG_FIELDS
LABELS = FEEDBACK_FIELDS[2]
PLAIN = re.compile(r"[A-Za-z0-9._:-]*")  # a string that is its own JSON text between quotes


def as_json(value: Any) -> str:  # noqa: ANN401
    """JSON text of a logged value. An array of finite numbers (the short path's inputs and predictions) is its
    list's repr without spaces: the same text as json's, in a third of the time."""
    if isinstance(value, np.ndarray) and value.dtype.kind in "fiu":
        text = repr(value.tolist())
        if "n" not in text:  # nan and inf are not JSON
            return text.replace(" ", "")
    if isinstance(value, str) and PLAIN.fullmatch(value):
        return f'"{value}"'
    return ENCODER.encode(value)


class InferenceLog:
    """One process's log writer over a sink (FileSink, or TableSink when `database` is given). ``dropped`` counts
    records that never reached the sink (full buffer, failed write, unencodable value), for /metrics."""

    def __init__(
        self,
        directory: str | Path = "",
        flush_seconds: float = 1.0,
        retention_days: int = 7,
        max_bytes: int = 512 * MIB,
        max_buffered: int = 100_000,
        database: str | None = None,
        database_password: str | None = None,
    ) -> None:
        self.sink: FileSink | TableSink = (
            TableSink(database, database_password, retention_days)
            if database
            else FileSink(Path(directory), retention_days, max_bytes)
        )
        self.flush_seconds = flush_seconds
        self.max_buffered = max_buffered
        self.dropped = 0
        self._queued: deque[tuple] = deque()  # as recorded; append and popleft are thread-safe without a lock
        self._buffer: deque[list[Row]] = deque()  # encoded, one list per encode_pending, for the flusher
        self._encoded = self._written = 0  # rows into and out of the buffer (each counter has one writer)
        self._encode_lock = threading.Lock()  # the event loop's and a flush's encode_pending take turns
        self._clock = (0, "")  # the last second a record was stamped with, and its date and time as text
        self._heads: dict[tuple, str] = {}  # (model name, version, run ID): their JSON text
        self._flush_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned_at = -float("inf")
        self._housekept_at = -float("inf")

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> InferenceLog | None:
        """The writer the settings ask for, or None when INFERENCE_LOG is false."""
        if not settings.inference_log:
            return None
        secret = settings.inference_log_db_password
        return cls(
            settings.inference_log_dir,
            flush_seconds=settings.inference_log_flush_seconds,
            retention_days=settings.inference_log_retention_days,
            max_bytes=settings.inference_log_max_mb * MIB,
            database=settings.inference_log_db,
            database_password=secret.get_secret_value() if secret else None,
        )

    def record(
        self,
        request_id: str,
        model_name: str,
        model_version: str,
        run_id: str,
        inputs: Any,
        predictions: Any,
        shadow: bool = False,
    ) -> bool:
        """Queue one scored request (its values must not change afterwards: the app hands over fresh ones); False
        when the buffer is full and it was dropped. `shadow`: a challenger's predictions no client saw."""
        if self.full():
            return False
        self._queued.append((time.time(), request_id, model_name, model_version, run_id, inputs, predictions, shadow))
        return True

    def feedback(self, request_id: str, labels: list[int]) -> bool:
        """Queue the true labels of an earlier request (POST /feedback); False when dropped, as record()."""
        if self.full():
            return False
        self._queued.append((time.time(), request_id, None, None, None, None, labels, False))
        return True

    def full(self) -> bool:
        if len(self._queued) + self._encoded - self._written < self.max_buffered:
            return False
        self.dropped += 1
        if time.monotonic() - self._warned_at >= MINUTE:
            self._warned_at = time.monotonic()
            log.warning("inference log: buffer full (%d records), %d dropped so far", self.max_buffered, self.dropped)
        return True

    def encode_pending(self) -> None:
        """Turn the queued records into lines for the next flush, time stamp first; a value that is not JSON drops
        its record alone (logged with the request ID)."""
        with self._encode_lock:
            batch: list[Row] = []
            for _ in range(len(self._queued)):
                ts, request_id, *model, inputs, predictions, shadow = self._queued.popleft()
                try:
                    if model[0] is None:  # feedback: the labels of an earlier request
                        rest = f'"{REQUEST_ID}":{as_json(request_id)},"{LABELS}":{as_json(predictions)}}}'
                        model[1] = ""
                    else:
                        head = self._heads.get(tuple(model)) or self.head(*model)
                        rest = f'"{REQUEST_ID}":{as_json(request_id)},{head},"{INPUTS}":{as_json(inputs)},'
                        rest += f'"{PREDICTIONS}":{as_json(predictions)}'
                        rest += f',"{SHADOW}":true}}' if shadow else "}"
                except (TypeError, ValueError) as e:
                    self.dropped += 1
                    log.warning("inference log: request %s not encodable (%s), dropped", request_id, e)
                    continue
                second, prefix = self._clock
                if int(ts) != second:  # about a second's records share their date and time: formatted once
                    second = int(ts)
                    prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
                    self._clock = (second, prefix)
                stamp = f"{prefix}.{int(ts % 1 * 1_000_000):06d}+00:00"
                batch.append((stamp, model[1], f'{{"{TS}":"{stamp}",{rest}'))
            if batch:
                self._buffer.append(batch)
                self._encoded += len(batch)

    def head(self, *model: str) -> str:
        """The model's fields as JSON text, made once per served model."""
        self._heads[model] = ENCODER.encode(dict(zip(MODEL_FIELDS, model, strict=True)))[1:-1]
        return self._heads[model]

    def start(self) -> None:
        """Check the sink (a bad directory or database URL fails here, loudly) and start this process's flusher."""
        self.sink.start()
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="inference-log", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop the flusher and write everything still buffered."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.flush()
        self.sink.close()

    def _run(self) -> None:
        while not self._stop.wait(self.flush_seconds):
            try:
                self.flush()
            except Exception:  # noqa: BLE001 - the flusher must outlive any one bad flush
                log.exception("inference log: flush failed")

    def flush(self) -> None:
        """Write the buffered records now, then enforce the limits if it is time to."""
        with self._flush_lock:
            self.encode_pending()  # what the event loop has not encoded yet (close(), a process without one)
            rows: list[Row] = []
            for _ in range(len(self._buffer)):
                rows += self._buffer.popleft()
            if rows:  # one write per day file: each write lets the event loop's thread take the GIL back
                self.dropped += self.sink.write(rows)
                self._written += len(rows)
            if time.monotonic() - self._housekept_at >= MINUTE:
                self._housekept_at = time.monotonic()
                try:
                    self.sink.enforce_limits()
                except Exception as e:  # noqa: BLE001 - e.g. another user's file, the database away: next minute
                    log.warning("inference log: limits not enforced in %s: %s", self.sink, e)
