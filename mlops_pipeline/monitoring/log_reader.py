"""The model-server's inference log read back as a table (one row per scored input row), from its files or from
the scale variant's PostgreSQL table, for the drift monitor.

A damaged log never fails the monitor: whatever cannot be read is skipped with a warning naming the file (a worker
killed mid-write leaves a torn last line).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd

from mlops_pipeline.schema import LOG_FIELDS, partition_date
from mlops_pipeline.settings import LogSettings

log = logging.getLogger(__name__)
KEYS = set(LOG_FIELDS)
META = LOG_FIELDS[:-2]  # ts, request_id, model_name, model_version, run_id: then inputs and predictions
MAX_WARNINGS_PER_FILE = 5  # then one line with the count: a damaged file must not flood the task log


class Problems:
    """A file's (or the table's) skipped lines and rows, warned about one by one up to a limit, then counted."""

    def __init__(self, path: Path | str) -> None:
        self.path, self.count = path, 0

    def __call__(self, line: int, problem: str) -> None:
        self.count += 1
        if self.count <= MAX_WARNINGS_PER_FILE:
            log.warning("inference log %s, line %d: %s, skipped", self.path, line, problem)

    def summary(self) -> None:
        if self.count > MAX_WARNINGS_PER_FILE:
            log.warning("inference log %s: %d problems in all, each skipped", self.path, self.count)


def utc(moment: datetime) -> datetime:
    """Aware and in UTC, as the log's timestamps are, so the two compare; a naive time is taken as UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def read(
    settings: LogSettings,
    since: datetime,
    until: datetime | None = None,
    model_version: str | None = None,
    feature_names: Sequence[str] | None = None,
) -> pd.DataFrame:
    """One row per scored input row with ts in [since, until) (naive times are UTC), from the log's files or, in the
    scale variant, its PostgreSQL table (INFERENCE_LOG_DB): the same records, read with the same checks. Without
    feature_names the features are f0..fn-1, n taken from the first row read."""
    window = Window(utc(since), None if until is None else utc(until), model_version)
    width = None if feature_names is None else len(feature_names)
    rows: list[list] = []
    if settings.inference_log_db:
        width = read_table(settings, window, width, rows)
    else:
        width = read_files(settings.inference_log_dir, window, width, rows)
    return as_frame(rows, width, feature_names)


def read_files(directory: Path, window: Window, width: int | None, rows: list[list]) -> int | None:
    """Only the date partitions that can hold the window's records are opened."""
    for part in sorted(directory.glob("date=*")) if directory.is_dir() else []:
        day = partition_date(part)
        start = None if day is None else datetime(day.year, day.month, day.day, tzinfo=UTC)
        if start is not None and window.overlaps(start, start + timedelta(days=1)):
            for path in sorted(part.glob("*.jsonl")):
                with open(path, "rb") as f:
                    width = read_lines(f, str(path), window, width, rows)
    return width


def read_table(settings: LogSettings, window: Window, width: int | None, rows: list[list]) -> int | None:
    """Only the window's rows are fetched (the read-only role's password: INFERENCE_LOG_DB_PASSWORD)."""
    import psycopg2

    secret = settings.inference_log_db_password
    password = secret.get_secret_value() if secret else None
    with (
        psycopg2.connect(settings.inference_log_db, password=password, connect_timeout=10) as connection,
        connection.cursor() as cursor,
    ):
        cursor.execute(
            "SELECT record::text FROM inference_log WHERE ts >= %s AND (%s::timestamptz IS NULL OR ts < %s)"
            " AND (%s::text IS NULL OR model_version = %s) ORDER BY ts",
            (window.since, window.until, window.until, window.model_version, window.model_version),
        )
        width = read_lines((line for (line,) in cursor), "table inference_log", window, width, rows)
    connection.close()
    return width


def as_frame(rows: list[list], width: int | None, feature_names: Sequence[str] | None) -> pd.DataFrame:
    names = list(feature_names) if feature_names is not None else [f"f{i}" for i in range(width or 0)]
    frame = pd.DataFrame(rows, columns=[*META, *names, "prediction"])
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True).dt.as_unit("us")  # the log's resolution, empty or not
    return frame.astype(dict.fromkeys(names, "float64"))


@dataclass(frozen=True)
class Window:
    """What the monitor asked for: records in [since, until), of one model version or of all."""

    since: datetime
    until: datetime | None
    model_version: str | None

    def overlaps(self, start: datetime, end: datetime) -> bool:
        return end > self.since and (self.until is None or start < self.until)

    def holds(self, record: dict) -> bool:
        ts = record["ts"]
        if ts < self.since or (self.until is not None and ts >= self.until):
            return False
        return self.model_version is None or str(record["model_version"]) == str(self.model_version)


def read_lines(
    lines: Iterable[bytes | str], source: str, window: Window, width: int | None, rows: list[list]
) -> int | None:
    """Append the rows of the records in the window to rows; returns the feature count (the first row sets it)."""
    problems = Problems(source)
    for number, raw in enumerate(lines, start=1):
        try:
            record = json.loads(raw)
            if type(record) is not dict or record.keys() != KEYS:
                keys = sorted(record) if type(record) is dict else type(record).__name__
                problems(number, f"keys {keys} are not {list(LOG_FIELDS)}")
                continue
            record["ts"] = utc(datetime.fromisoformat(record["ts"]))
        except (ValueError, TypeError) as e:  # a torn line, not UTF-8, a bad timestamp
            problems(number, f"not a record ({e})")
            continue
        if not window.holds(record):
            continue
        inputs, predictions = record["inputs"], record["predictions"]
        if type(inputs) is not list or type(predictions) is not list or len(inputs) != len(predictions):
            problems(number, "inputs and predictions are not lists of the same length")
            continue
        meta = [record["ts"], *(str(record[key]) for key in META[1:])]
        for row, prediction in zip(inputs, predictions, strict=True):
            if type(row) is not list or not row or not all(type(v) in (int, float) for v in row):
                problems(number, f"input row {row!r} is not a list of numbers")
                continue
            width = len(row) if width is None else width
            if len(row) != width:
                problems(number, f"input row has {len(row)} features, expected {width}")
                continue
            rows.append([*meta, *row, prediction])
    problems.summary()
    return width
