"""mlflow/inference_log.py: every recorded request becomes exactly one line in its process's file, in the background
and on close(); another process writes its own file; a full buffer drops and counts; retention and the size cap
delete the oldest data; the INFERENCE_LOG_* settings and their errors."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from mlops_pipeline.schema import LOG_FIELDS as FIELDS
from mlops_pipeline.serving.inference_log import InferenceLog
from mlops_pipeline.settings import MIB, ServerSettings, from_env


def lines_of(directory: Path) -> dict[Path, list[dict]]:
    return {
        path: [json.loads(line) for line in path.read_text().splitlines()]
        for path in sorted(directory.glob("date=*/*.jsonl"))
    }


def own_file(directory: Path, pid: int | None = None) -> Path:
    day = datetime.now(UTC).date().isoformat()
    return directory / f"date={day}" / f"{socket.gethostname()}-{pid or os.getpid()}.jsonl"


def record_many(log: InferenceLog, count: int, prefix: str = "req") -> list[str]:
    ids = [f"{prefix}-{i}" for i in range(count)]
    for i, request_id in enumerate(ids):
        assert log.record(request_id, "iris-classifier", "3", "run-abc", [[5.1, 3.5, 1.4, float(i)]], [i % 3])
    return ids


def test_every_record_is_one_line_after_close(tmp_path: Path) -> None:
    log = InferenceLog(tmp_path, flush_seconds=3600)
    log.start()
    ids = record_many(log, 1000)
    log.close()
    files = lines_of(tmp_path)
    assert list(files) == [own_file(tmp_path)]
    records = files[own_file(tmp_path)]
    assert [r["request_id"] for r in records] == ids
    assert all(tuple(r) == FIELDS for r in records)
    assert records[7]["inputs"] == [[5.1, 3.5, 1.4, 7.0]] and records[7]["predictions"] == [1]
    assert {r["model_name"] for r in records} == {"iris-classifier"} and {r["run_id"] for r in records} == {"run-abc"}
    assert log.dropped == 0


def test_timestamps_are_utc_iso_with_microseconds_and_pick_the_partition(tmp_path: Path) -> None:
    log = InferenceLog(tmp_path)
    before = datetime.now(UTC)
    log.record("one", "m", "1", "r", [[1.0]], [0])
    after = datetime.now(UTC)
    log.flush()
    (path, [record]), *_ = lines_of(tmp_path).items()
    stamp = datetime.fromisoformat(record["ts"])
    assert record["ts"].endswith("+00:00") and len(record["ts"]) == len("2026-01-01T00:00:00.000000+00:00")
    assert before - timedelta(microseconds=1) <= stamp <= after
    assert path.parent.name == f"date={stamp.date().isoformat()}"


def test_the_background_thread_flushes_without_close(tmp_path: Path) -> None:
    log = InferenceLog(tmp_path, flush_seconds=0.05)
    assert not [t for t in threading.enumerate() if t.name == "inference-log"]  # nothing runs before start()
    log.start()
    try:
        ids = record_many(log, 20)
        deadline = time.monotonic() + 10
        while len(lines_of(tmp_path).get(own_file(tmp_path), [])) < 20 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [r["request_id"] for r in lines_of(tmp_path)[own_file(tmp_path)]] == ids
    finally:
        log.close()
    assert not [t for t in threading.enumerate() if t.name == "inference-log"]


def test_numpy_arrays_and_scalars_become_lists(tmp_path: Path) -> None:
    log = InferenceLog(tmp_path)
    inputs = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)
    log.record("np", "m", "1", "r", inputs, np.array([0, 2], dtype=np.int64))
    log.record("scalars", "m", "1", "r", [[np.float64(1.5), 2.0]], [np.int64(1)])
    log.close()
    first, second = lines_of(tmp_path)[own_file(tmp_path)]
    assert first["inputs"] == inputs.tolist() and first["predictions"] == [0, 2]
    assert second["inputs"] == [[1.5, 2.0]] and second["predictions"] == [1]


def test_an_unencodable_record_is_dropped_alone(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    log = InferenceLog(tmp_path)
    with caplog.at_level(logging.WARNING, logger="model-server"):
        rows = {"good-1": 1.0, "bad": object(), "good-2": 2.0}
        queued = [log.record(request_id, "m", "1", "r", [[x]], [0]) for request_id, x in rows.items()]
        log.encode_pending()  # where the value is found out (on the event loop, in the model-server)
    assert queued == [True, True, True] and log.dropped == 1
    log.close()
    assert [r["request_id"] for r in lines_of(tmp_path)[own_file(tmp_path)]] == ["good-1", "good-2"]
    assert log.dropped == 1 and "request bad not encodable" in caplog.text


def test_a_torn_last_line_stays_one_bad_line(tmp_path: Path) -> None:
    """A killed process with the same pid left half a line: the next flush starts on a line of its own."""
    path = own_file(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text('{"ts": "2026-')
    log = InferenceLog(tmp_path)
    log.record("after", "m", "1", "r", [[1.0]], [0])
    log.close()
    torn, line = path.read_text().splitlines()
    assert torn == '{"ts": "2026-' and json.loads(line)["request_id"] == "after"


def test_a_failed_write_counts_as_dropped_and_the_flusher_goes_on(tmp_path: Path) -> None:
    log = InferenceLog(tmp_path)
    log.record("lost", "m", "1", "r", [[1.0]], [0])
    for day in {datetime.now(UTC).date(), datetime.now(UTC).date() - timedelta(days=1)}:
        (tmp_path / f"date={day.isoformat()}").write_text("a file where the partition directory goes")
    log.flush()
    assert log.dropped == 1


def test_a_forked_worker_writes_its_own_file(tmp_path: Path) -> None:
    """As under gunicorn --preload: the writer is built before the fork and started in the worker."""
    log = InferenceLog(tmp_path, flush_seconds=3600)

    def worker() -> None:
        log.start()
        record_many(log, 30, prefix="child")
        log.close()

    child = multiprocessing.get_context("fork").Process(target=worker)
    child.start()
    log.start()
    ids = record_many(log, 50, prefix="parent")
    child.join(timeout=60)
    log.close()
    assert child.exitcode == 0
    files = lines_of(tmp_path)
    assert sorted(files) == sorted([own_file(tmp_path), own_file(tmp_path, child.pid)])
    assert [r["request_id"] for r in files[own_file(tmp_path)]] == ids
    assert [r["request_id"] for r in files[own_file(tmp_path, child.pid)]] == [f"child-{i}" for i in range(30)]


def test_a_separate_process_writes_its_own_file_in_the_same_directory(tmp_path: Path) -> None:
    code = (
        "import sys\nfrom mlops_pipeline.serving.inference_log import InferenceLog\n"
        "log = InferenceLog(sys.argv[1])\nlog.start()\n"
        "for i in range(40):\n    log.record(f'child-{i}', 'iris-classifier', '3', 'run-abc', [[1.0, 2.0]], [0])\n"
        "log.close()\n"
    )
    log = InferenceLog(tmp_path)
    log.start()
    ids = record_many(log, 25)
    child = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True)
    log.close()
    assert child.returncode == 0, child.stderr
    files = lines_of(tmp_path)
    assert len(files) == 2 and [r["request_id"] for r in files.pop(own_file(tmp_path))] == ids
    [(other, records)] = files.items()
    assert other.parent == own_file(tmp_path).parent and [r["request_id"] for r in records] == [
        f"child-{i}" for i in range(40)
    ]


def test_a_full_buffer_drops_and_counts_and_warns_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    log = InferenceLog(tmp_path, max_buffered=5)
    with caplog.at_level(logging.WARNING, logger="model-server"):
        kept = [log.record(f"r{i}", "m", "1", "r", [[1.0]], [0]) for i in range(8)]
    assert kept == [True] * 5 + [False] * 3 and log.dropped == 3
    assert [r.getMessage() for r in caplog.records].count(
        "inference log: buffer full (5 records), 1 dropped so far"
    ) == 1
    assert len(caplog.records) == 1
    log.close()
    assert [r["request_id"] for r in lines_of(tmp_path)[own_file(tmp_path)]] == [f"r{i}" for i in range(5)]
    assert log.record("room-again", "m", "1", "r", [[1.0]], [0])  # a flush makes room


def partition(directory: Path, days_ago: int, name: str, size: int, mtime: float | None = None) -> Path:
    day = datetime.now(UTC).date() - timedelta(days=days_ago)
    path = directory / f"date={day.isoformat()}" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * (size - 1) + b"\n")
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def test_retention_deletes_partitions_older_than_its_days(tmp_path: Path) -> None:
    old = [partition(tmp_path, 10, "a-1.jsonl", 10), partition(tmp_path, 8, "a-1.jsonl", 10)]
    kept = [partition(tmp_path, 7, "a-1.jsonl", 10), partition(tmp_path, 0, "a-1.jsonl", 10)]
    stranger = tmp_path / "date=not-a-date" / "a-1.jsonl"
    stranger.parent.mkdir()
    stranger.write_text("not ours\n")
    InferenceLog(tmp_path, retention_days=7).sink.enforce_limits()
    assert [p.exists() for p in old] == [False, False] and not any(p.parent.exists() for p in old)
    assert all(p.exists() for p in kept) and stranger.exists()


def test_the_first_flush_enforces_retention(tmp_path: Path) -> None:
    old = partition(tmp_path, 30, "a-1.jsonl", 10)
    log = InferenceLog(tmp_path, retention_days=7)
    log.record("new", "m", "1", "r", [[1.0]], [0])
    log.close()
    assert not old.exists() and list(lines_of(tmp_path)) == [own_file(tmp_path)]


def test_the_size_cap_deletes_the_oldest_files_first(tmp_path: Path) -> None:
    now = time.time()
    oldest = partition(tmp_path, 2, "a-1.jsonl", 400, mtime=now)  # an older day beats a newer mtime
    older = partition(tmp_path, 1, "a-1.jsonl", 400, mtime=now - 20)
    newer = partition(tmp_path, 1, "b-2.jsonl", 400, mtime=now - 10)
    newest = partition(tmp_path, 0, "a-1.jsonl", 400, mtime=now - 30)
    log = InferenceLog(tmp_path, max_bytes=1000)
    log.sink.enforce_limits()
    assert [p.exists() for p in (oldest, older, newer, newest)] == [False, False, True, True]
    log.sink.max_bytes = 800
    log.sink.enforce_limits()
    assert newer.exists() and newest.exists()


def test_from_settings_defaults_and_every_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("INFERENCE_LOG", "INFERENCE_LOG_DIR", "INFERENCE_LOG_FLUSH_SECONDS", "INFERENCE_LOG_MAX_MB"):
        monkeypatch.delenv(key, raising=False)
    log = InferenceLog.from_settings(from_env(ServerSettings))
    assert log is not None and not [t for t in threading.enumerate() if t.name == "inference-log"]
    assert (log.sink.directory, log.flush_seconds, log.sink.retention_days, log.sink.max_bytes) == (
        Path("/mlflow/inference-log"),
        1.0,
        7,
        512 * MIB,
    )
    given = {"inference_log_dir": tmp_path, "inference_log_flush_seconds": "0.5", "inference_log_max_mb": "64"}
    log = InferenceLog.from_settings(from_env(ServerSettings, inference_log_retention_days="3", **given))
    assert log is not None
    assert (log.sink.directory, log.flush_seconds, log.sink.retention_days, log.sink.max_bytes) == (
        tmp_path,
        0.5,
        3,
        64 * MIB,
    )
    assert InferenceLog.from_settings(from_env(ServerSettings, inference_log="false")) is None
