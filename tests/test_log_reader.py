"""mlops_pipeline/monitoring/log_reader.py: the inference log read back as a table (what the writer wrote; only the
window's partitions; torn lines, unknown or missing keys, wrong widths and rows the row schema refuses skipped with a
warning naming the file)."""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlops_pipeline.monitoring import log_reader
from mlops_pipeline.schema import LOG_FIELDS as FIELDS
from mlops_pipeline.schema import partition_date
from mlops_pipeline.serving.inference_log import InferenceLog
from mlops_pipeline.settings import LogSettings

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
COLUMNS = ["ts", "request_id", "model_name", "model_version", "run_id", *FEATURES, "prediction"]
DAY = datetime(2026, 3, 10, tzinfo=UTC)


def read_dir(directory: Path, **window: object) -> pd.DataFrame:
    """The log in `directory` read back, as the monitor reads it (LogSettings with that folder)."""
    return log_reader.read(LogSettings(inference_log_dir=directory, inference_log_db=None), **window)


def test_partitions_are_named_by_date(tmp_path: Path) -> None:
    assert partition_date(tmp_path / "date=2026-03-10") == DAY.date()
    for name in ("date=2026-13-01", "day=2026-03-10", "date="):
        assert partition_date(tmp_path / name) is None


def line(request_id: str, ts: datetime, inputs: list, predictions: list, version: str = "3", **extra: object) -> str:
    values = (
        ts.isoformat(timespec="microseconds"),
        request_id,
        "iris-classifier",
        version,
        "run-abc",
        inputs,
        predictions,
    )
    return json.dumps({**dict(zip(FIELDS, values, strict=True)), **extra})


def write(directory: Path, day: datetime, text: str, name: str = "host-1.jsonl") -> Path:
    path = directory / f"date={day.date().isoformat()}" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_reads_what_the_writer_wrote(tmp_path: Path) -> None:
    log = InferenceLog(tmp_path)
    log.record(
        "a", "iris-classifier", "3", "run-abc", np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]), np.array([0, 2])
    )
    log.record("b", "iris-classifier", "3", "run-abc", [[5.9, 3.0, 4.2, 1.5]], [1])
    log.close()
    frame = read_dir(tmp_path, since=datetime.now(UTC) - timedelta(hours=1), feature_names=FEATURES)
    assert list(frame.columns) == COLUMNS
    assert frame["request_id"].tolist() == ["a", "a", "b"] and frame["prediction"].tolist() == [0, 2, 1]
    assert frame[FEATURES].to_numpy().tolist() == [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]
    assert str(frame["ts"].dtype) == "datetime64[us, UTC]" and (frame["model_version"] == "3").all()


def test_default_feature_names_and_the_model_version_filter(tmp_path: Path) -> None:
    write(
        tmp_path,
        DAY,
        "\n".join(
            [
                line("v3", DAY + timedelta(hours=1), [[1, 2, 3]], [0], version="3"),
                line("v4", DAY + timedelta(hours=2), [[4, 5, 6]], [1], version="4"),
            ]
        )
        + "\n",
    )
    frame = read_dir(tmp_path, since=DAY, model_version="4")
    assert list(frame.columns) == [*COLUMNS[:5], "f0", "f1", "f2", "prediction"]
    assert frame["request_id"].tolist() == ["v4"] and frame[["f0", "f1", "f2"]].to_numpy().tolist() == [[4, 5, 6]]
    assert frame["f0"].dtype == "float64"


def test_only_the_window_is_read_and_only_its_partitions_opened(tmp_path: Path, caplog) -> None:
    write(tmp_path, DAY - timedelta(days=1), "torn outside the window")
    write(tmp_path, DAY + timedelta(days=2), "torn outside the window")
    write(
        tmp_path,
        DAY,
        "\n".join(
            [
                line("before", DAY + timedelta(hours=5, microseconds=-1), [[1.0] * 4], [0]),
                line("first", DAY + timedelta(hours=5), [[1.0] * 4], [0]),
                line("last", DAY + timedelta(days=1, microseconds=-1), [[1.0] * 4], [0]),
            ]
        )
        + "\n",
    )
    write(
        tmp_path,
        DAY + timedelta(days=1),
        "\n".join(
            [
                line("inside", DAY + timedelta(days=1, hours=4), [[2.0] * 4], [1]),
                line("at-until", DAY + timedelta(days=1, hours=5), [[2.0] * 4], [1]),
            ]
        )
        + "\n",
    )
    with caplog.at_level(logging.WARNING):
        frame = read_dir(
            tmp_path, since=DAY + timedelta(hours=5), until=DAY + timedelta(days=1, hours=5), feature_names=FEATURES
        )
    assert frame["request_id"].tolist() == ["first", "last", "inside"]
    assert warnings_of(caplog) == []  # the torn files of other days were never opened


def test_naive_times_are_utc_whatever_the_local_zone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, DAY, line("r", DAY + timedelta(hours=1), [[1.0] * 4], [0]) + "\n")
    naive = datetime(2026, 3, 10, 1, 0, 0, 1)
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        assert read_dir(tmp_path, since=naive, feature_names=FEATURES).empty
        assert len(read_dir(tmp_path, since=naive - timedelta(microseconds=1), feature_names=FEATURES)) == 1
    finally:
        monkeypatch.undo()
        time.tzset()


def test_a_torn_last_line_is_skipped_naming_file_and_line(tmp_path: Path, caplog) -> None:
    good = [line(f"r{i}", DAY + timedelta(minutes=i), [[1.0] * 4], [0]) for i in range(3)]
    path = write(tmp_path, DAY, "\n".join(good) + "\n" + good[0][:25])
    with caplog.at_level(logging.WARNING):
        frame = read_dir(tmp_path, since=DAY, feature_names=FEATURES)
    assert frame["request_id"].tolist() == ["r0", "r1", "r2"]
    [warning] = warnings_of(caplog)
    assert f"{path}, line 4: not a record" in warning


def test_undecodable_bytes_and_non_records_are_skipped(tmp_path: Path, caplog) -> None:
    path = write(tmp_path, DAY, "")
    path.write_bytes(b"\xff\xfe garbage\n[1, 2]\n\n" + line("ok", DAY, [[1.0] * 4], [0]).encode() + b"\n")
    with caplog.at_level(logging.WARNING):
        frame = read_dir(tmp_path, since=DAY, feature_names=FEATURES)
    assert frame["request_id"].tolist() == ["ok"]
    assert [w.split(": ")[0] for w in warnings_of(caplog)] == [f"inference log {path}, line {n}" for n in (1, 2, 3)]


def test_a_record_with_an_unknown_or_a_missing_key_is_skipped(tmp_path: Path, caplog) -> None:
    missing = json.loads(line("missing", DAY, [[1.0] * 4], [0]))
    del missing["run_id"]
    path = write(
        tmp_path,
        DAY,
        "\n".join(
            [
                line("unknown", DAY, [[1.0] * 4], [0], label="x"),
                json.dumps(missing),
                line("ok", DAY, [[1.0] * 4], [0]),
            ]
        )
        + "\n",
    )
    with caplog.at_level(logging.WARNING):
        frame = read_dir(tmp_path, since=DAY, feature_names=FEATURES)
    assert frame["request_id"].tolist() == ["ok"]
    warnings = warnings_of(caplog)
    assert len(warnings) == 2 and all(str(path) in w for w in warnings)
    assert "'label'" in warnings[0] and "line 1" in warnings[0] and "line 2" in warnings[1]


def test_a_row_of_the_wrong_width_is_skipped_and_its_neighbours_kept(tmp_path: Path, caplog) -> None:
    path = write(
        tmp_path,
        DAY,
        "\n".join(
            [
                line("mixed", DAY, [[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0], [5.0, 6.0, 7.0, 8.0]], [0, 1, 2]),
                line("words", DAY, [["a", "b", "c", "d"]], [0]),
                line("uneven", DAY, [[1.0] * 4], [0, 1]),
            ]
        )
        + "\n",
    )
    with caplog.at_level(logging.WARNING):
        frame = read_dir(tmp_path, since=DAY, feature_names=FEATURES)
    assert frame["prediction"].tolist() == [0, 2] and frame["sepal_length"].tolist() == [1.0, 5.0]
    warnings = warnings_of(caplog)
    assert len(warnings) == 3 and all(str(path) in w for w in warnings)
    assert "3 features, expected 4" in warnings[0]


def test_rows_the_row_schema_refuses_are_skipped_naming_the_value(tmp_path: Path, caplog) -> None:
    """The training data's schema (data.problems): a feature that is missing, not a number or not finite."""
    rows = [[1.0, None, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0], [float("inf"), 2.0, 3.0, 4.0], [1.0, 2.0, "x", 4.0]]
    path = write(tmp_path, DAY, line("r", DAY, rows, [0, 1, 2, 0]) + "\n")
    with caplog.at_level(logging.WARNING):
        frame = read_dir(tmp_path, since=DAY, feature_names=FEATURES)
    assert frame["prediction"].tolist() == [1] and frame[FEATURES].to_numpy().tolist() == [[1.0, 2.0, 3.0, 4.0]]
    assert warnings_of(caplog) == [
        f"inference log {path}, line 1: sepal_width is nan, not a finite number, skipped",
        f"inference log {path}, line 1: sepal_length is inf, not a finite number, skipped",
        f"inference log {path}, line 1: petal_length is 'x', not a finite number, skipped",
    ]


def test_a_damaged_file_warns_a_few_times_then_counts(tmp_path: Path, caplog) -> None:
    path = write(tmp_path, DAY, "torn\n" * 50)
    with caplog.at_level(logging.WARNING):
        assert read_dir(tmp_path, since=DAY).empty
    warnings = warnings_of(caplog)
    assert len(warnings) == 6 and warnings[-1] == f"inference log {path}: 50 problems in all, each skipped"


@pytest.mark.parametrize("exists", [True, False])
def test_an_empty_or_missing_directory_is_an_empty_frame_with_the_columns(tmp_path: Path, exists: bool) -> None:
    directory = tmp_path / "log"
    if exists:
        directory.mkdir()
    frame = read_dir(directory, since=DAY, feature_names=FEATURES)
    assert frame.empty and list(frame.columns) == COLUMNS
    assert str(frame["ts"].dtype) == "datetime64[us, UTC]" and (frame[FEATURES].dtypes == "float64").all()
