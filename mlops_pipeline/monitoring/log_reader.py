"""The model-server's inference log read back as a table (one row per scored input row), from its files or from
the scale variant's PostgreSQL table, for the drift monitor. The input rows are checked by the training data's row
schema (data.problems): a row the model could not have been given (a non-finite feature) is not drift.

A damaged log never fails the monitor: whatever cannot be read is skipped with a warning naming the file and line
(a worker killed mid-write leaves a torn last line), a few per file, then one line with the count.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd

from mlops_pipeline import data
from mlops_pipeline.schema import FEEDBACK_FIELDS, LOG_FIELDS, SHADOW, partition_date
from mlops_pipeline.settings import LogSettings

log = logging.getLogger(__name__)
KEYS = set(LOG_FIELDS)
NOT_SERVED = ({*LOG_FIELDS, SHADOW}, set(FEEDBACK_FIELDS))  # a challenger's shadow predictions, true labels
META = LOG_FIELDS[:-2]  # ts, request_id, model_name, model_version, run_id: then inputs and predictions
MAX_WARNINGS_PER_FILE = 5  # then one line with the count: a damaged file must not flood the task log


def utc(moment: datetime) -> datetime:
    """Aware and in UTC, as the log's timestamps are, so the two compare; a naive time is taken as UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


@dataclass
class Reading:
    """What the monitor asked for (records in [since, until), of one model version or of all) and what was read:
    the rows, where each came from (file, line), the feature count (the first row sets it) and the problems."""

    since: datetime
    until: datetime | None
    model_version: str | None
    width: int | None = None
    rows: list[list] = field(default_factory=list)
    origins: list[tuple[str, int]] = field(default_factory=list)
    problems: Counter = field(default_factory=Counter)
    records: list[dict] | None = None  # set: every kind of record in the window is kept here as decoded, no rows
    keep: Callable[[dict], bool] | None = None  # with records: only the records it accepts are kept
    marker: str | None = None  # with records: a line without this text is not even decoded (a cheap first filter)

    def overlaps(self, start: datetime, end: datetime) -> bool:
        return end > self.since and (self.until is None or start < self.until)

    def holds(self, record: dict) -> bool:
        ts = record["ts"]
        if ts < self.since or (self.until is not None and ts >= self.until):
            return False
        return self.model_version is None or str(record["model_version"]) == str(self.model_version)

    def skip(self, source: str, line: int, problem: str) -> None:
        self.problems[source] += 1
        if self.problems[source] <= MAX_WARNINGS_PER_FILE:
            log.warning("inference log %s, line %d: %s, skipped", source, line, problem)

    def summary(self) -> None:
        for source, count in self.problems.items():
            if count > MAX_WARNINGS_PER_FILE:
                log.warning("inference log %s: %d problems in all, each skipped", source, count)


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
    reading = Reading(utc(since), None if until is None else utc(until), model_version)
    reading.width = None if feature_names is None else len(feature_names)
    if settings.inference_log_db:
        read_table(settings, reading)
    else:
        read_files(settings.inference_log_dir, reading)
    frame = as_frame(reading, feature_names)
    reading.summary()
    return frame


def read_records(
    settings: LogSettings,
    since: datetime,
    until: datetime | None = None,
    keep: Callable[[dict], bool] | None = None,
    marker: str | None = None,
) -> list[dict]:
    """The records with ts in [since, until) as decoded (ts a datetime): served and shadow predictions and feedback,
    in the order read, for the live comparison (monitoring/live.py). `keep` and `marker` bound what is held: a log
    of millions of requests must not be held whole (`keep`: only the records it accepts; `marker`: lines without
    this text are skipped undecoded)."""
    reading = Reading(utc(since), None if until is None else utc(until), None, records=[], keep=keep, marker=marker)
    if settings.inference_log_db:
        read_table(settings, reading)
    else:
        read_files(settings.inference_log_dir, reading)
    reading.summary()
    return reading.records or []


def read_files(directory: Path, reading: Reading) -> None:
    """Only the date partitions that can hold the window's records are opened."""
    for part in sorted(directory.glob("date=*")) if directory.is_dir() else []:
        day = partition_date(part)
        start = None if day is None else datetime(day.year, day.month, day.day, tzinfo=UTC)
        if start is not None and reading.overlaps(start, start + timedelta(days=1)):
            for path in sorted(part.glob("*.jsonl")):
                with open(path, "rb") as f:
                    read_lines(f, str(path), reading)


def read_table(settings: LogSettings, reading: Reading) -> None:
    """Only the window's rows are fetched (the read-only role's password: INFERENCE_LOG_DB_PASSWORD)."""
    import psycopg2

    secret = settings.inference_log_db_password
    password = secret.get_secret_value() if secret else None
    with (
        psycopg2.connect(settings.inference_log_db, password=password, connect_timeout=10) as connection,
        connection.cursor(name="inference_log_window") as cursor,  # server-side: streamed, never held whole
    ):
        cursor.execute(
            "SELECT record::text FROM inference_log WHERE ts >= %s AND (%s::timestamptz IS NULL OR ts < %s)"
            " AND (%s::text IS NULL OR model_version = %s) ORDER BY ts",
            (reading.since, reading.until, reading.until, reading.model_version, reading.model_version),
        )
        read_lines((line for (line,) in cursor), "table inference_log", reading)
    connection.close()


def read_lines(lines: Iterable[bytes | str], source: str, reading: Reading) -> None:
    """Add the rows of the records in the window; the values are checked later, all rows at once (as_frame)."""
    markers = (reading.marker, reading.marker.encode()) if reading.marker is not None else None
    for number, raw in enumerate(lines, start=1):
        if markers is not None and markers[isinstance(raw, bytes)] not in raw:
            continue
        try:
            record = json.loads(raw)
            if type(record) is dict and record.keys() in NOT_SERVED and reading.records is None:
                continue  # not what the served model was given and answered: no drift row, no damage
            if type(record) is not dict or (record.keys() != KEYS and record.keys() not in NOT_SERVED):
                keys = sorted(record) if type(record) is dict else type(record).__name__
                reading.skip(source, number, f"keys {keys} are not {list(LOG_FIELDS)}")
                continue
            record["ts"] = utc(datetime.fromisoformat(record["ts"]))
        except (ValueError, TypeError) as e:  # a torn line, not UTF-8, a bad timestamp
            reading.skip(source, number, f"not a record ({e})")
            continue
        if not reading.holds(record):
            continue
        if reading.records is not None:
            if reading.keep is None or reading.keep(record):
                reading.records.append(record)
            continue
        inputs, predictions = record["inputs"], record["predictions"]
        if type(inputs) is not list or type(predictions) is not list or len(inputs) != len(predictions):
            reading.skip(source, number, "inputs and predictions are not lists of the same length")
            continue
        meta = [record["ts"], *(str(record[key]) for key in META[1:])]
        for row, prediction in zip(inputs, predictions, strict=True):
            if type(row) is not list or not row:
                reading.skip(source, number, f"input row {row!r} is not a list of features")
                continue
            reading.width = len(row) if reading.width is None else reading.width
            if len(row) != reading.width:
                reading.skip(source, number, f"input row has {len(row)} features, expected {reading.width}")
                continue
            reading.rows.append([*meta, *row, prediction])
            reading.origins.append((source, number))


def as_frame(reading: Reading, feature_names: Sequence[str] | None) -> pd.DataFrame:
    """The rows whose features pass the row schema, the features as float64."""
    names = list(feature_names) if feature_names is not None else [f"f{i}" for i in range(reading.width or 0)]
    frame = pd.DataFrame(reading.rows, columns=[*META, *names, "prediction"])
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True).dt.as_unit("us")  # the log's resolution, empty or not
    numbers, bad = data.problems(frame, names, label=False)
    for i, problem in bad:
        reading.skip(*reading.origins[i], problem)
    return frame.assign(**numbers).drop(index=[i for i, _ in bad]).reset_index(drop=True)
