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
it run whole time slices while a request waited: one worker on one core at 2 connections (wrk) had a p99 of 3.9 ms,
0.7 ms without the log. Encoded on the request path (~3.5 µs a request, ~5 µs less for the thread), the flush is
the time stamps and the write, and that p99 is 2.0 ms.

The scale-out variant writes the same records to a PostgreSQL table instead (``INFERENCE_LOG_DB``, a libpq URL,
and ``INFERENCE_LOG_DB_PASSWORD``): a Celery worker on another host can read a table, not this host's volume. One
row per request, ``(ts, model_version, record)``, the record being the JSON line as ``jsonb``; each flush is one
transaction; retention deletes rows older than ``retention_days`` (the size limit is the files' only).

Fork-safe with ``gunicorn --preload``: nothing starts at import or construction; each worker calls ``start()``.
"""

from __future__ import annotations

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

log = logging.getLogger("model-server")

# The keys of every line, in order; the monitor's reader (airflow/models/inference_data.py) checks them.
FIELDS = ("ts", "request_id", "model_name", "model_version", "run_id", "inputs", "predictions")
DEFAULT_DIR = "/mlflow/inference-log"
MINUTE = 60  # how often the limits are checked and a drop is warned about
MIB = 1024 * 1024
# Records encoded between two hand-overs of the GIL: a request arriving during a flush waits for that many at most,
# not for the interpreter's switch interval.
CHUNK = 64  # records per write (see flush)


class ConfigError(ValueError):
    """An INFERENCE_LOG_* setting is unusable; the message names the variable."""


def plain(value: Any) -> Any:
    """Arrays and frames as lists, so JSON can encode what the request path handed over."""
    if hasattr(value, "to_numpy"):
        value = value.to_numpy()
    return value.tolist() if hasattr(value, "tolist") else value


def encodable(value: Any) -> Any:
    """json's fallback: numpy scalars and arrays inside lists; anything else is refused."""
    converted = plain(value)
    if converted is value:
        raise TypeError(f"{type(value).__name__} is not JSON serializable")
    return converted


ENCODER = json.JSONEncoder(separators=(",", ":"), default=encodable)


def partition_date(path: Path) -> date | None:
    """The day of a ``date=YYYY-MM-DD`` directory; None for anything else, which is left alone."""
    try:
        return date.fromisoformat(path.name.removeprefix("date=")) if path.name.startswith("date=") else None
    except ValueError:
        return None


class InferenceLog:
    """One process's log writer. ``dropped`` counts records that never reached a file (full buffer, failed
    write, unencodable value), for /metrics."""

    def __init__(
        self,
        directory: str | Path,
        flush_seconds: float = 1.0,
        retention_days: int = 7,
        max_bytes: int = 512 * MIB,
        max_buffered: int = 100_000,
        database: str | None = None,
        database_password: str | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.database, self.database_password = database, database_password
        self._connection: Any = None  # the flusher's own (psycopg2), opened at its first flush
        self.flush_seconds = flush_seconds
        self.retention_days = retention_days
        self.max_bytes = max_bytes
        self.max_buffered = max_buffered
        self.dropped = 0
        self._buffer: deque[tuple] = deque()  # append and popleft are thread-safe without a lock
        self._flush_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned_at = -float("inf")
        self._housekept_at = -float("inf")

    @classmethod
    def from_env(cls, env: dict[str, str] | os._Environ[str] | None = None) -> InferenceLog | None:
        """The writer the environment asks for, or None when INFERENCE_LOG is false."""
        env = os.environ if env is None else env

        def number(name: str, default: str, kind: type, minimum: float) -> Any:
            raw = env.get(name) or default
            try:
                value = kind(raw)
            except ValueError:
                value = None
            if value is None or not (minimum <= value < float("inf")):
                what = "a whole number" if kind is int else "a number"
                raise ConfigError(f"{name} must be {what} of at least {minimum}, got {raw!r}")
            return value

        switch = (env.get("INFERENCE_LOG") or "true").strip().lower()
        if switch not in {"true", "false"}:
            raise ConfigError(f"INFERENCE_LOG must be true or false, got {env.get('INFERENCE_LOG')!r}")
        if switch == "false":
            return None
        return cls(
            env.get("INFERENCE_LOG_DIR") or DEFAULT_DIR,
            flush_seconds=number("INFERENCE_LOG_FLUSH_SECONDS", "1", float, 0.01),
            retention_days=number("INFERENCE_LOG_RETENTION_DAYS", "7", int, 1),
            max_bytes=number("INFERENCE_LOG_MAX_MB", "512", int, 1) * MIB,
            database=env.get("INFERENCE_LOG_DB") or None,
            database_password=env.get("INFERENCE_LOG_DB_PASSWORD") or None,
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
        values = (request_id, model_name, model_version, run_id, plain(inputs), plain(predictions))
        try:
            rest = ENCODER.encode(dict(zip(FIELDS[1:], values, strict=True)))  # every field but the time stamp
        except (TypeError, ValueError) as e:
            self.dropped += 1
            log.warning("inference log: request %s not encodable (%s), dropped", request_id, e)
            return False
        self._buffer.append((ts, model_version, rest))
        return True

    def start(self) -> None:
        """Create the directory or check the database URL (either fails here, loudly) and start this process's
        flusher thread."""
        if self.database is None:
            self.directory.mkdir(parents=True, exist_ok=True)
        else:
            import psycopg2.extensions

            try:
                psycopg2.extensions.parse_dsn(self.database)
            except psycopg2.ProgrammingError as e:
                raise ConfigError(f"INFERENCE_LOG_DB is not a PostgreSQL URL: {e}") from None
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
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _run(self) -> None:
        while not self._stop.wait(self.flush_seconds):
            try:
                self.flush()
            except Exception:  # noqa: BLE001 - the flusher must outlive any one bad flush
                log.exception("inference log: flush failed")

    def flush(self) -> None:
        """Write the buffered records now, then enforce the limits if it is time to. Lines go out in chunks of
        CHUNK records, each one unbuffered write: the GIL is released at each write, so a request waiting for
        it never waits for a whole flush."""
        with self._flush_lock:
            pending: dict[str, list[tuple[str, str, str]]] = {}  # date -> (timestamp, model version, line)
            second, prefix = None, ""
            for i in range(len(self._buffer)):
                ts, version, rest = self._buffer.popleft()
                if int(ts) != second:  # a flush holds about a second's records: format its date and time once
                    second = int(ts)
                    prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
                stamp = f"{prefix}.{int(ts % 1 * 1_000_000):06d}+00:00"
                line = f'{{"{FIELDS[0]}":"{stamp}",{rest[1:]}'  # rest is a JSON object: the stamp goes first
                pending.setdefault(stamp[:10], []).append((stamp, version, line))
                if i % CHUNK == CHUNK - 1:
                    self._write(pending)
                    pending = {}
            self._write(pending)
            if time.monotonic() - self._housekept_at >= MINUTE:
                self._housekept_at = time.monotonic()
                try:
                    self.enforce_limits()
                except Exception as e:  # noqa: BLE001 - e.g. another user's file, the database away: next minute
                    log.warning("inference log: limits not enforced in %s: %s", self.where(), e)

    def where(self) -> str:
        return str(self.directory) if self.database is None else "the database"

    def _write(self, pending: dict[str, list[tuple[str, str, str]]]) -> None:
        if not pending:
            return
        if self.database is not None:
            self._insert([row for rows in pending.values() for row in rows])
            return
        file = f"{socket.gethostname()}-{os.getpid()}.jsonl"  # at flush time: a forked worker has its own
        for day, rows in pending.items():
            self._append(self.directory / f"date={day}" / file, [line for *_, line in rows])

    def _database(self) -> Any:  # noqa: ANN401 - psycopg2's connection
        import psycopg2

        if self._connection is None or self._connection.closed:
            self._connection = psycopg2.connect(self.database, password=self.database_password, connect_timeout=5)
        return self._connection

    def _insert(self, rows: list[tuple[str, str, str]]) -> None:
        """One transaction (psycopg2 releases the GIL while it waits for the server). A failure drops and counts
        the rows, as a failed file write does, and the next flush reconnects."""
        import psycopg2
        from psycopg2.extras import execute_values

        try:
            connection = self._database()
            with connection, connection.cursor() as cursor:
                sql = "INSERT INTO inference_log (ts, model_version, record) VALUES %s"
                execute_values(cursor, sql, rows, template="(%s, %s, %s::jsonb)", page_size=CHUNK)
        except psycopg2.Error as e:
            self.dropped += len(rows)
            log.warning("inference log: %d records not written to the database: %s", len(rows), str(e).strip())
            if self._connection is not None:
                self._connection.close()

    def _append(self, path: Path, lines: list[str]) -> None:
        data = ("\n".join(lines) + "\n").encode()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a+b", buffering=0) as f:
                if f.seek(0, os.SEEK_END) and (f.seek(-1, os.SEEK_END), f.read(1))[1] != b"\n":
                    data = b"\n" + data  # a torn line from a killed process stays one bad line, not two
                f.write(data)
        except OSError as e:
            self.dropped += len(lines)
            log.warning("inference log: %d records not written to %s: %s", len(lines), path, e)

    def enforce_limits(self) -> None:
        """Delete partitions older than retention_days, then the oldest files until under max_bytes. Workers
        may race on the same files; whatever another already deleted is skipped. In the database: the rows
        older than retention_days."""
        if self.database is not None:
            connection = self._database()
            with connection, connection.cursor() as cursor:
                cursor.execute(
                    "DELETE FROM inference_log WHERE ts < now() - make_interval(days => %s)", (self.retention_days,)
                )
            return
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
                try:
                    part.rmdir()
                except OSError:
                    pass  # not empty (a file that is not ours) or already gone
        total = sum(size for *_, size in files)
        for _day, _mtime, file, size in sorted(files):
            if total <= self.max_bytes:
                break
            file.unlink(missing_ok=True)
            total -= size
