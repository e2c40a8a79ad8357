"""The model-server's inference log: every scored request as one JSON line, for the drift monitor to read.

A request must never wait for the log's file or database, so ``record()`` encodes the record as JSON (a few
microseconds) and appends it to this worker's in-memory buffer; a background thread puts the timestamp in front
and writes each flush as whole lines to ``<dir>/date=YYYY-MM-DD/<hostname>-<pid>.jsonl`` (the record's own UTC
date, so a reader can tell from a partition's name which records it holds). One file per process: gunicorn's
workers never share one, and a restarted worker with a reused pid appends after a newline. A SIGKILL loses at most
the records of the last flush interval (written data is in the page cache); ``close()`` writes everything, so a
clean shutdown loses none. Memory is bounded by ``max_buffered`` (further records are dropped and counted), disk by
``retention_days`` and ``max_bytes`` (the oldest files go first).

Why the request encodes and the thread does not: encoding is most of the log's work, and a thread that does it is
a second runnable thread in the worker. For the tens of milliseconds a flush of a busy second took, the kernel let
it run whole time slices while a request waited, which roughly doubled the p99 of one worker at 2 connections.
Encoded on the request path (a few microseconds), the flush is the time stamps and the write (the figures: commit
18d9233 and benchmarks/results.md).

The scale-out variant writes the same records to a PostgreSQL table instead (TableSink; ``INFERENCE_LOG_DB``):
a Celery worker on another host can read a table, not this host's volume.

Fork-safe with ``gunicorn --preload``: nothing starts at import or construction; each worker calls ``start()``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections import deque
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from mlops_pipeline.schema import LOG_FIELDS, ConfigError, partition_date
from mlops_pipeline.settings import MIB, ServerSettings

log = logging.getLogger("model-server")
MINUTE = 60  # how often the limits are checked and a drop is warned about
CHUNK = 64  # records per write: a request waiting for the GIL never waits for a whole flush
Row = tuple[str, str, str]  # (timestamp, model version, JSON line)


def encodable(value: Any) -> Any:  # noqa: ANN401
    """json's fallback for what the request path hands over: arrays, frames and numpy scalars as lists and numbers;
    anything else is refused."""
    value = value.to_numpy() if hasattr(value, "to_numpy") else value
    if not hasattr(value, "tolist"):
        raise TypeError(f"{type(value).__name__} is not JSON serializable")
    return value.tolist()


ENCODER = json.JSONEncoder(separators=(",", ":"), default=encodable)


class FileSink:
    """JSON Lines in date partitions, one file per process; bounded by age and by total size."""

    def __init__(self, directory: Path, retention_days: int, max_bytes: int) -> None:
        self.directory, self.retention_days, self.max_bytes = directory, retention_days, max_bytes

    def __str__(self) -> str:
        return str(self.directory)

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)

    def write(self, rows: list[Row]) -> int:
        """Append the rows to their days' files; returns how many could not be written."""
        days: dict[str, list[str]] = {}
        for stamp, _version, line in rows:
            days.setdefault(stamp[:10], []).append(line)
        file = f"{socket.gethostname()}-{os.getpid()}.jsonl"  # at flush time: a forked worker has its own
        return sum(self.append(self.directory / f"date={day}" / file, lines) for day, lines in days.items())

    def append(self, path: Path, lines: list[str]) -> int:
        data = ("\n".join(lines) + "\n").encode()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a+b", buffering=0) as f:
                if f.seek(0, os.SEEK_END) and (f.seek(-1, os.SEEK_END), f.read(1))[1] != b"\n":
                    data = b"\n" + data  # a torn line from a killed process stays one bad line, not two
                f.write(data)
        except OSError as e:
            log.warning("inference log: %d records not written to %s: %s", len(lines), path, e)
            return len(lines)
        return 0

    def enforce_limits(self) -> None:
        """Delete partitions older than retention_days, then the oldest files until under max_bytes. Workers may
        race on the same files; whatever another already deleted is skipped."""
        oldest_kept = datetime.now(UTC).date() - timedelta(days=self.retention_days)
        files: list[tuple[date, float, Path, int]] = []
        for part in self.directory.glob("date=*"):
            day = partition_date(part)
            if day is None or not part.is_dir():
                continue
            for file in part.glob("*.jsonl"):
                try:
                    stat = file.stat()
                except FileNotFoundError:
                    continue
                if day < oldest_kept:
                    file.unlink(missing_ok=True)
                else:
                    files.append((day, stat.st_mtime, file, stat.st_size))
            if day < oldest_kept:
                with contextlib.suppress(OSError):  # not empty (a file that is not ours) or already gone
                    part.rmdir()
        total = sum(size for *_, size in files)
        for _day, _mtime, file, size in sorted(files):
            if total <= self.max_bytes:
                break
            file.unlink(missing_ok=True)
            total -= size

    def close(self) -> None:
        """Nothing to release: each flush opens and closes its files."""


class TableSink:
    """The scale variant's PostgreSQL table: one row per request, (ts, model_version, record), the record being the
    JSON line as jsonb; one transaction per flush (psycopg2 releases the GIL while it waits for the server).
    Retention deletes rows older than retention_days (the size limit is the files' only)."""

    def __init__(self, url: str, password: str | None, retention_days: int) -> None:
        self.url, self.password, self.retention_days = url, password, retention_days
        self.connection: Any = None  # the flusher's own, opened at its first flush

    def __str__(self) -> str:
        return "the database"

    def start(self) -> None:
        import psycopg2.extensions

        try:
            psycopg2.extensions.parse_dsn(self.url)
        except psycopg2.ProgrammingError as e:
            raise ConfigError(f"INFERENCE_LOG_DB is not a PostgreSQL URL: {e}") from None

    def connect(self) -> Any:  # noqa: ANN401 - psycopg2's connection
        import psycopg2

        if self.connection is None or self.connection.closed:
            self.connection = psycopg2.connect(self.url, password=self.password, connect_timeout=5)
        return self.connection

    def write(self, rows: list[Row]) -> int:
        """A failure drops and counts the rows, as a failed file write does, and the next flush reconnects."""
        import psycopg2
        from psycopg2.extras import execute_values

        try:
            connection = self.connect()
            with connection, connection.cursor() as cursor:
                sql = "INSERT INTO inference_log (ts, model_version, record) VALUES %s"
                execute_values(cursor, sql, rows, template="(%s, %s, %s::jsonb)", page_size=CHUNK)
        except psycopg2.Error as e:
            log.warning("inference log: %d records not written to the database: %s", len(rows), str(e).strip())
            self.close()
            return len(rows)
        return 0

    def enforce_limits(self) -> None:
        connection = self.connect()
        with connection, connection.cursor() as cursor:
            sql = "DELETE FROM inference_log WHERE ts < now() - make_interval(days => %s)"
            cursor.execute(sql, (self.retention_days,))

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


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
        self._buffer: deque[tuple] = deque()  # append and popleft are thread-safe without a lock
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
        self, request_id: str, model_name: str, model_version: str, run_id: str, inputs: Any, predictions: Any
    ) -> bool:
        """Queue one scored request, encoded now (see the module docstring); False when it was dropped: the
        buffer is full, or a value is not JSON (logged with the request ID)."""
        if len(self._buffer) >= self.max_buffered:
            self.dropped += 1
            if time.monotonic() - self._warned_at >= MINUTE:
                self._warned_at = time.monotonic()
                log.warning(
                    "inference log: buffer full (%d records), %d dropped so far", self.max_buffered, self.dropped
                )
            return False
        ts = time.time()
        values = (request_id, model_name, model_version, run_id, inputs, predictions)
        try:
            rest = ENCODER.encode(dict(zip(LOG_FIELDS[1:], values, strict=True)))  # every field but the time stamp
        except (TypeError, ValueError) as e:
            self.dropped += 1
            log.warning("inference log: request %s not encodable (%s), dropped", request_id, e)
            return False
        self._buffer.append((ts, model_version, rest))
        return True

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
        """Write the buffered records now, in chunks of CHUNK records (the GIL is released at each write), then
        enforce the limits if it is time to."""
        with self._flush_lock:
            pending: list[Row] = []
            second, prefix = None, ""
            for i in range(len(self._buffer)):
                ts, version, rest = self._buffer.popleft()
                if int(ts) != second:  # a flush holds about a second's records: format its date and time once
                    second = int(ts)
                    prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
                stamp = f"{prefix}.{int(ts % 1 * 1_000_000):06d}+00:00"
                pending.append((stamp, version, f'{{"{LOG_FIELDS[0]}":"{stamp}",{rest[1:]}'))  # the stamp first
                if i % CHUNK == CHUNK - 1:
                    self.dropped += self.sink.write(pending)
                    pending = []
            if pending:
                self.dropped += self.sink.write(pending)
            if time.monotonic() - self._housekept_at >= MINUTE:
                self._housekept_at = time.monotonic()
                try:
                    self.sink.enforce_limits()
                except Exception as e:  # noqa: BLE001 - e.g. another user's file, the database away: next minute
                    log.warning("inference log: limits not enforced in %s: %s", self.sink, e)
