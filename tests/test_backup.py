"""mlops_pipeline.backup on real files and SQLite databases in a temporary directory: the archive's contents, a
snapshot taken while a database is written, and every refusal leaving the state exactly as it was. The compose
round trip (make backup, clean_disk.sh, make restore) is tests/compose/test_stack.py's steps 7d-9 (backup_steps.py)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import sqlite3
import tarfile
import threading
import tracemalloc
from contextlib import closing
from pathlib import Path

import pytest

from mlops_pipeline.backup import archive
from mlops_pipeline.backup import restore as restore_module
from mlops_pipeline.backup.__main__ import main
from mlops_pipeline.backup.archive import DOTENV, MANIFEST, VARIANTS, BackupError, dump, fingerprint, versions
from mlops_pipeline.backup.restore import check, present, read, restore

KEY = "k" * 43 + "="


def database(path: Path, rows: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(path)) as db, db:  # closed here: a later close would checkpoint the WAL
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE IF NOT EXISTS runs (id INTEGER PRIMARY KEY, name TEXT)")
        db.executemany("INSERT INTO runs (name) VALUES (?)", [(f"run-{i}",) for i in range(rows)])


def rows_in(path: Path) -> int:
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        return db.execute("SELECT count(*) FROM runs").fetchone()[0]


def state(root: Path) -> Path:
    """A stack's volumes as the containers leave them, one file of each kind."""
    database(root / "airflow_db" / "airflow.db", 5)
    database(root / "mlruns" / "mlflow.db", 3)
    (root / "mlruns" / "artifacts" / "1" / "models").mkdir(parents=True)
    (root / "mlruns" / "artifacts" / "1" / "models" / "model.skops").write_bytes(bytes(range(256)) * 40)
    (root / "mlruns" / "flask_secret_key").write_text("signing key")
    (root / "training_data").mkdir()
    (root / "training_data" / "iris.csv").write_text("sepal_length,label\n5.1,0\n")
    log = root / "inference_log" / "date=2026-12-07"
    log.mkdir(parents=True)
    (log / "host-7.jsonl").write_bytes(b'{"request_id":"a"}\n{"request_id":"b"}\n{"request_id":"c"')  # c: mid-write
    (root / "airflow_logs" / "dag_id=ml_pipeline").mkdir(parents=True)
    (root / "airflow_logs" / "dag_id=ml_pipeline" / "attempt=1.log").write_text("task ran\n")
    (root / "batch").mkdir()
    return root


def checksums(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(root.rglob("*"))
    }


def archive_of(root: Path, **kwargs: object) -> bytes:
    out = io.BytesIO()
    dump(out, root, KEY, "default", **kwargs)  # type: ignore[arg-type]
    return out.getvalue()


def rewritten(archive: bytes, change: object) -> bytes:
    """The same archive with its manifest changed by `change(manifest)`: every checksum still holds."""
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as src, tarfile.open(fileobj=out, mode="w:gz") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read() if member.isfile() else None  # type: ignore[union-attr]
            if member.name == MANIFEST:
                manifest = json.loads(data)  # type: ignore[arg-type]
                change(manifest)  # type: ignore[operator]
                data = json.dumps(manifest).encode()
                member.size = len(data)
            dst.addfile(member, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def test_an_archive_holds_every_volume_and_restores_them_byte_for_byte(tmp_path: Path) -> None:
    source = state(tmp_path / "source")
    archive = archive_of(source)
    manifest = read(io.BytesIO(archive))
    assert manifest["variant"] == "default" and manifest["versions"] == versions()
    assert manifest["fernet_key_fingerprint"] == fingerprint(KEY) and KEY not in json.dumps(manifest)
    assert set(manifest["parts"]) == set(VARIANTS["default"]) and manifest["parts"]["mlruns"]["bytes"] > 10_000
    assert "mlruns/flask_secret_key" not in manifest["files"] and not manifest["with_secrets"]

    target = tmp_path / "target"
    restore(io.BytesIO(archive), target, "default", KEY)
    assert rows_in(target / "airflow_db" / "airflow.db") == 5 and rows_in(target / "mlruns" / "mlflow.db") == 3
    model = "mlruns/artifacts/1/models/model.skops"
    assert (target / model).read_bytes() == (source / model).read_bytes()
    assert (target / "training_data" / "iris.csv").read_text() == "sepal_length,label\n5.1,0\n"
    log = target / "inference_log" / "date=2026-12-07" / "host-7.jsonl"
    assert log.read_bytes() == b'{"request_id":"a"}\n{"request_id":"b"}\n'  # complete lines only
    assert (target / "batch").is_dir() and not (target / "mlruns" / "flask_secret_key").exists()
    assert not list(target.rglob(".restore-*"))
    (source / "batch").chmod(0o750)
    restore(io.BytesIO(archive_of(source)), target, "default", KEY, force=True)
    assert (target / "batch").stat().st_mode & 0o777 == 0o750  # a volume's own directory keeps its mode
    assert present(target, "default") == [p for p in VARIANTS["default"] if p != "batch"]


@pytest.mark.parametrize("suffix", [".jsonl", ".bin"])
def test_a_large_file_is_copied_in_chunks_a_log_to_its_last_complete_line(tmp_path: Path, suffix: str) -> None:
    """An inference log of a busy day is hundreds of MiB: copied whole into memory, it got the backup container
    killed. 40 MiB with a torn last line: the copy holds at most a few CHUNKs at once."""
    line = b'{"request_id":"%07d","predictions":[1]}\n'
    path = tmp_path / f"big{suffix}"
    with path.open("wb") as f:
        for block in range(40):
            f.write(b"".join(line % (block * 26_000 + i) for i in range(26_000)))
        f.write(b'{"request_id":"torn"')
    copy = tmp_path / "copy"
    with copy.open("wb", buffering=0) as into:
        tracemalloc.start()
        try:
            archive.copy_of(path, into)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    content = path.read_bytes()
    want = content[: content.rfind(b"\n") + 1] if suffix == ".jsonl" else content
    assert len(content) > 40 * 2**20 and copy.read_bytes() == want
    assert peak < 4 * archive.CHUNK, peak


def test_with_secrets_the_archive_holds_dotenv_and_mlflows_login_files(tmp_path: Path) -> None:
    source = state(tmp_path / "source")
    (tmp_path / ".env").write_text(f"FERNET_KEY={KEY}\n")
    manifest = read(io.BytesIO(archive_of(source, dotenv=tmp_path / ".env")))
    assert manifest["with_secrets"] and {DOTENV, "mlruns/flask_secret_key"} <= set(manifest["files"])


def test_a_database_written_during_the_backup_is_copied_consistently(tmp_path: Path) -> None:
    source = state(tmp_path / "source")
    db = source / "mlruns" / "mlflow.db"
    stop = threading.Event()

    def write() -> None:
        with closing(sqlite3.connect(db, timeout=30)) as conn:
            while not stop.is_set():
                conn.execute("INSERT INTO runs (name) VALUES ('more')")
                conn.commit()

    writer = threading.Thread(target=write)
    writer.start()
    try:
        archives = [archive_of(source) for _ in range(3)]
    finally:
        stop.set()
        writer.join()
    counts = []
    for i, made in enumerate(archives):
        restore(io.BytesIO(made), tmp_path / f"t{i}", "default", KEY)
        counts.append(rows_in(tmp_path / f"t{i}" / "mlruns" / "mlflow.db"))
    assert counts == sorted(counts) and 3 <= counts[0] and counts[-1] <= rows_in(db)


@pytest.mark.parametrize("where", [0.02, 0.5, 0.98])
def test_a_flipped_byte_is_refused_and_nothing_changes(tmp_path: Path, where: float) -> None:
    archive = bytearray(archive_of(state(tmp_path / "source")))
    archive[int(len(archive) * where)] ^= 0x40
    target = state(tmp_path / "target")
    (target / "training_data" / "iris.csv").write_text("the target's own data\n")
    before = checksums(target)
    with pytest.raises(BackupError, match="corrupted|truncated|not a backup|no manifest|unsafe"):
        restore(io.BytesIO(bytes(archive)), target, "default", KEY, force=True)
    assert checksums(target) == before


@pytest.mark.parametrize("keep", [0.1, 0.6, 0.999])
def test_a_truncated_archive_is_refused(tmp_path: Path, keep: float) -> None:
    archive = archive_of(state(tmp_path / "source"))
    with pytest.raises(BackupError, match="truncated|no manifest"):
        read(io.BytesIO(archive[: int(len(archive) * keep)]))


def test_another_variant_a_newer_version_and_another_fernet_key_are_refused(tmp_path: Path) -> None:
    archive = archive_of(state(tmp_path / "source"))
    target = state(tmp_path / "target")
    before = checksums(target)
    scale = rewritten(archive, lambda m: m.update(variant="scale"))
    with pytest.raises(BackupError, match="scale variant .* into a stack of the scale variant"):
        restore(io.BytesIO(scale), target, "default", KEY, force=True)
    newer = rewritten(archive, lambda m: m["versions"].update(mlflow="99.0.0"))
    with pytest.raises(BackupError, match=r"newer mlflow \(99.0.0\)"):
        restore(io.BytesIO(newer), target, "default", KEY, force=True)
    with pytest.raises(BackupError, match="another FERNET_KEY"):
        restore(io.BytesIO(archive), target, "default", "another" + KEY, force=True)
    assert checksums(target) == before
    older = rewritten(archive, lambda m: m["versions"].update(mlflow="3.0.0"))
    check(read(io.BytesIO(older)), "default", KEY)  # an older stack's archive is fine: migrations run on start


@pytest.mark.parametrize(
    "change",
    [lambda m: m.update(parts=[]), lambda m: m["parts"]["batch"].update(owner="root"), lambda m: m.update(files=None)],
)
def test_a_manifest_of_another_shape_is_refused_before_anything_is_touched(tmp_path: Path, change: object) -> None:
    target = state(tmp_path / "target")
    before = checksums(target)
    with pytest.raises(BackupError, match="manifest is not one make backup writes"):
        restore(io.BytesIO(rewritten(archive_of(state(tmp_path / "source")), change)), target, "default", KEY, True)
    assert checksums(target) == before


def test_a_stack_with_state_is_replaced_only_when_forced(tmp_path: Path) -> None:
    archive = archive_of(state(tmp_path / "source"))
    target = tmp_path / "target"
    (target / "training_data").mkdir(parents=True)
    (target / "training_data" / "iris.csv").write_text("newer rows\n")
    before = checksums(target)
    with pytest.raises(BackupError, match=r"already has state \(training_data\)"):
        restore(io.BytesIO(archive), target, "default", KEY)
    assert checksums(target) == before
    restore(io.BytesIO(archive), target, "default", KEY, force=True)
    assert (target / "training_data" / "iris.csv").read_text() == "sepal_length,label\n5.1,0\n"


def test_a_swap_that_fails_half_way_puts_everything_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = archive_of(state(tmp_path / "source"))
    target = state(tmp_path / "target")
    (target / "mlruns" / "mlflow.db").unlink()
    database(target / "mlruns" / "mlflow.db", 9)
    before = checksums(target)
    renames, real = [], Path.rename

    def failing(self: Path, to: Path) -> Path:
        renames.append(self)
        if len(renames) == 12:  # in the third part, after two parts were swapped
            raise OSError("disk full")
        return real(self, to)

    monkeypatch.setattr(restore_module.Path, "rename", failing)
    with pytest.raises(OSError, match="disk full"):
        restore(io.BytesIO(archive), target, "default", KEY, force=True)
    monkeypatch.undo()
    assert checksums(target) == before
    assert rows_in(target / "mlruns" / "mlflow.db") == 9


@pytest.mark.parametrize("name", ["../escape", "/etc/passwd", "mlruns/../../escape", "elsewhere/file", "mlruns"])
def test_a_member_outside_the_volumes_is_refused(tmp_path: Path, name: str) -> None:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        info = tarfile.TarInfo(name)
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(BackupError, match="unsafe path|not part of a backup"):
        restore(io.BytesIO(out.getvalue()), tmp_path / "target", "default", KEY)
    assert not (tmp_path / "escape").exists()


def test_a_link_in_an_archive_is_refused(tmp_path: Path) -> None:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        info = tarfile.TarInfo("mlruns/link")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(BackupError, match="not a file or a directory"):
        read(io.BytesIO(out.getvalue()))


def test_the_command_line_reports_a_refusal_with_its_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FERNET_KEY", KEY)
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"not an archive")))
    assert main(["verify"]) == 1
    assert "backup: the archive is truncated or corrupted" in capsys.readouterr().err
    monkeypatch.setenv("BACKUP_VARIANT", "other")
    assert main(["verify"]) == 2
    assert "BACKUP_VARIANT must be" in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() != 0, reason="the backup service runs as root; so must this check")
def test_files_sqlite_creates_while_copying_belong_to_the_databases_owner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The files SQLite creates beside a database while copying it (-wal, -shm) belong to the database's owner:
    the service that connects meanwhile must be able to open them."""
    source = state(tmp_path / "source")
    for path in [source / "airflow_db", *(source / "airflow_db").iterdir()]:
        os.chown(path, 50000, 0)  # the Airflow image's user; no connection is open, so no -wal or -shm exists
    seen: dict[str, int] = {}

    class Spy:
        def __init__(self, conn: sqlite3.Connection) -> None:
            self.conn = conn

        def backup(self, target: sqlite3.Connection) -> None:
            self.conn.backup(target)
            seen.update({p.name: p.stat().st_uid for p in (source / "airflow_db").iterdir()})

        def __getattr__(self, name: str) -> object:
            return getattr(self.conn, name)

    real = sqlite3.connect

    def connect(path: Path, **kw: object) -> object:
        return Spy(real(path, **kw)) if Path(path).name == "airflow.db" else real(path, **kw)

    monkeypatch.setattr(archive.sqlite3, "connect", connect)
    archive_of(source)
    assert {"airflow.db-wal", "airflow.db-shm"} <= set(seen) and set(seen.values()) == {50000}, seen


def test_the_summary_warns_when_every_volume_is_empty(tmp_path: Path) -> None:
    from mlops_pipeline.backup.__main__ import summary

    assert "WARNING: every volume is empty" in summary(read(io.BytesIO(archive_of(tmp_path / "nothing"))))
    assert "WARNING" not in summary(read(io.BytesIO(archive_of(state(tmp_path / "source")))))
