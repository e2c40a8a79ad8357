"""Where the inference log's lines go (inference_log.py writes them): JSON Lines files in date partitions, or the
scale variant's PostgreSQL table. Each write takes a flush's rows, (timestamp, model version, JSON line), and
returns how many it could not write; the writer counts those as dropped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from mlops_pipeline.schema import ConfigError, partition_date

log = logging.getLogger("model-server")
CHUNK = 64  # rows per INSERT statement in the table
Row = tuple[str, str, str]  # (timestamp, model version, JSON line)


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
        if len({stamp[:10] for stamp, _, _ in rows}) == 1:  # the usual flush: one day, one write
            days[rows[0][0][:10]] = [line for _, _, line in rows]
        else:
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
