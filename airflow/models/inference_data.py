"""The monitor's and the retrain script's data: the model-server's inference log as a table, and labeled rows checked
before they join the training data.

Plain functions, no Airflow: the DAG and the script call them. A damaged log never fails the monitor: whatever
cannot be read is skipped with a warning naming the file (a worker killed mid-write leaves a torn last line). A
labeled row that is wrong in any way refuses the whole batch, naming the row, and the training file stays as it was.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pandas as pd

log = logging.getLogger(__name__)

# The log's format, as the model-server writes it (mlflow/inference_log.py, in the other image): the keys of
# every line, and the folders by date. tests/test_inference_data.py checks that both sides agree.
FIELDS = ("ts", "request_id", "model_name", "model_version", "run_id", "inputs", "predictions")


def partition_date(path: Path) -> date | None:
    """The day of a ``date=YYYY-MM-DD`` folder; None for anything else."""
    try:
        return date.fromisoformat(path.name.removeprefix("date=")) if path.name.startswith("date=") else None
    except ValueError:
        return None


KEYS = set(FIELDS)
META = FIELDS[:-2]  # ts, request_id, model_name, model_version, run_id: then inputs and predictions
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


def read_inference_log(
    directory: str | Path,
    since: datetime,
    until: datetime | None = None,
    model_version: str | None = None,
    feature_names: Sequence[str] | None = None,
) -> pd.DataFrame:
    """One row per scored input row with ts in [since, until) (naive times are UTC). Without feature_names the
    features are f0..fn-1, n taken from the first row read. Only the date partitions that can hold such records
    are opened."""
    window = Window(utc(since), None if until is None else utc(until), model_version)
    width = None if feature_names is None else len(feature_names)
    rows: list[list] = []
    parts = sorted(Path(directory).glob("date=*")) if Path(directory).is_dir() else []
    for part in parts:
        day = partition_date(part)
        start = None if day is None else datetime(day.year, day.month, day.day, tzinfo=UTC)
        if start is not None and window.overlaps(start, start + timedelta(days=1)):
            for path in sorted(part.glob("*.jsonl")):
                width = read_file(path, window, width, rows)
    return as_frame(rows, width, feature_names)


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


def read_file(path: Path, window: Window, width: int | None, rows: list[list]) -> int | None:
    """Append the file's rows in the window to rows; returns the feature count (the first row read sets it)."""
    with open(path, "rb") as f:
        return read_lines(f, str(path), window, width, rows)


def read_inference_table(
    url: str,
    password: str | None,
    since: datetime,
    until: datetime | None = None,
    model_version: str | None = None,
    feature_names: Sequence[str] | None = None,
) -> pd.DataFrame:
    """read_inference_log's table, from the scale variant's PostgreSQL (INFERENCE_LOG_DB): the same records, read
    with the same checks, only the window's rows fetched."""
    import psycopg2

    window = Window(utc(since), None if until is None else utc(until), model_version)
    width = None if feature_names is None else len(feature_names)
    rows: list[list] = []
    with psycopg2.connect(url, password=password, connect_timeout=10) as connection, connection.cursor() as cursor:
        cursor.execute(
            "SELECT record::text FROM inference_log WHERE ts >= %s AND (%s::timestamptz IS NULL OR ts < %s)"
            " AND (%s::text IS NULL OR model_version = %s) ORDER BY ts",
            (window.since, window.until, window.until, model_version, model_version),
        )
        width = read_lines((line for (line,) in cursor), "table inference_log", window, width, rows)
    connection.close()
    return as_frame(rows, width, feature_names)


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
                problems(number, f"keys {keys} are not {list(FIELDS)}")
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


def validate_labeled_rows(
    frame_or_csv_path: pd.DataFrame | str | Path,
    feature_names: Sequence[str],
    label_column: str,
    allowed_labels: Iterable[object],
) -> pd.DataFrame:
    """The rows as the training data holds them (features as floats, labels as allowed_labels spells them), or a
    ValueError naming the first bad row (row 1 is the first data row; a CSV's line numbers count the header)."""
    path = None if isinstance(frame_or_csv_path, pd.DataFrame) else Path(frame_or_csv_path)
    frame = pd.read_csv(path, dtype=str, keep_default_na=False) if path else frame_or_csv_path
    expected = [*feature_names, label_column]
    missing = [c for c in expected if c not in frame.columns]
    extra = [c for c in frame.columns if c not in expected]
    if missing or extra:
        raise ValueError(f"header: missing columns {missing}, unexpected columns {extra}; expected {expected}")
    if frame.empty:
        raise ValueError("no rows to add")
    labels = {str(label): label for label in allowed_labels}
    out: list[list] = []
    for i, row in enumerate(frame[expected].itertuples(index=False, name=None)):
        where = f"row {i + 1}" + (f" (line {i + 2} of {path})" if path else "")
        features = []
        for name, value in zip(feature_names, row[:-1], strict=True):
            try:
                number = float(value) if type(value) is not bool else math.nan
            except (TypeError, ValueError):
                number = math.nan
            if not math.isfinite(number):
                raise ValueError(f"{where}: {name} is {value!r}, not a finite number")
            features.append(number)
        label = str(row[-1]).strip()
        if label not in labels:
            raise ValueError(f"{where}: {label_column} is {row[-1]!r}, not one of {list(labels)}")
        out.append([*features, labels[label]])
    return pd.DataFrame(out, columns=expected)


def append_rows_atomically(csv_path: str | Path, rows: pd.DataFrame) -> None:
    """Replace the CSV by itself plus rows in one rename, so a reader (or an interrupted append) sees the old file
    or the new one, never half of one. Refuses rows whose columns differ from the file's header."""
    path = Path(csv_path)
    original = path.read_bytes()
    header = original.split(b"\n", 1)[0].decode().strip()
    if header.split(",") != [str(c) for c in rows.columns]:
        raise ValueError(f"{path}: header {header!r} does not match the rows' columns {list(rows.columns)}")
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(original if original.endswith(b"\n") else original + b"\n")
            f.write(rows.to_csv(header=False, index=False, lineterminator="\n").encode())
            f.flush()
            os.fsync(f.fileno())  # the new content is on disk before the rename makes it the file
        os.chmod(temp, path.stat().st_mode & 0o7777)  # mkstemp's 0600 would lock out the other services' readers
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
