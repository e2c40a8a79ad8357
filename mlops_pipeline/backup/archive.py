"""Writing an archive: what it holds (PARTS), its manifest, and the copies made while the stack runs."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sqlite3
import tarfile
import tempfile
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import IO, Any

Member = tuple[str, Callable[[IO[bytes]], Any]]  # an archive member's name, and what writes its content

FORMAT = 1
MANIFEST = "manifest.json"
STATE_ROOT = Path("/state")
# What an archive may hold: the volumes (docker-compose.yml's names) and, in the scale variant, the engines'
# state (mlops_pipeline/backup/engines.py).
PARTS = {
    "postgres": "PostgreSQL's databases: Airflow's, MLflow's and the inference log, by pg_dump",
    "bucket": "the S3 buckets: MLflow's artifacts (models, plots) and batch_predict's files",
    "airflow_db": "Airflow's metadata database: DAG runs, task history, users, connections, variables",
    "mlruns": "MLflow's database (runs, metrics, the registry) and its artifacts (models, plots)",
    "training_data": "the training data the DAG reads and appends to",
    "inference_log": "what the model-server predicted, for the drift monitor",
    "airflow_logs": "Airflow's task logs",
    "batch": "batch_predict's input files and outputs",
}
ENGINES = ("postgres", "bucket")  # not volumes: dump() gets their members from its caller
# Each variant's parts, in the order they are copied: the databases come before the files they point to, so
# every artifact a copied run names is in the archive too. The scale variant keeps its databases, the inference
# log and batch_predict's files in PostgreSQL and the buckets (mlruns holds only MLflow's login there).
VARIANTS = {
    "default": ("airflow_db", "mlruns", "training_data", "inference_log", "airflow_logs", "batch"),
    "scale": ("postgres", "bucket", "mlruns", "training_data", "airflow_logs"),
}
# Credentials kept in the volumes (MLflow's login: its users' password hashes and its signing key): in an archive
# only with --with-secrets, like .env (stored as DOTENV).
SECRETS = {"mlruns/basic_auth.db", "mlruns/basic_auth.ini", "mlruns/flask_secret_key"}
DOTENV = "secrets/.env"
STAGING, PREVIOUS = ".restore-staging", ".restore-previous"
SQLITE_HEADER = b"SQLite format 3\x00"
SKIPPED_SUFFIXES = ("-wal", "-shm", "-journal", ".tmp")  # SQLite's side files (the snapshot has it all), temp files
CHUNK = 2**20  # a file is copied this much at a time: an inference log of millions of requests is never held whole
VERSIONED = {"project": "mlops-pipeline", "airflow": "apache-airflow", "mlflow": "mlflow-skinny"}


class BackupError(Exception):
    """An archive that cannot be used, or a refused restore; the message says why and what to do."""


def fingerprint(fernet_key: str) -> str:
    """Identifies a Fernet key without revealing it: a restore compares it with the key in .env."""
    return hashlib.sha256(fernet_key.strip().encode()).hexdigest()[:16]


def versions() -> dict[str, str]:
    return {name: metadata.version(package) for name, package in VERSIONED.items()}


def files_of(base: Path) -> list[Path]:
    """The directories and regular files under `base`, parents first; no staging leftovers or side files."""
    found = []
    for directory, dirs, files in os.walk(base):
        dirs[:] = sorted(d for d in dirs if d not in (STAGING, PREVIOUS))
        here = Path(directory)
        found += [here / d for d in dirs]
        found += [here / f for f in sorted(files) if not f.endswith(SKIPPED_SUFFIXES)]
    return found


def copy_of(path: Path, into: IO[bytes]) -> None:
    """The file's content as of now: a SQLite database through the online backup API (checked), a JSON Lines
    file up to its last complete line, anything else up to the size it had when the copy began; in CHUNKs."""
    with path.open("rb") as f:
        if f.read(len(SQLITE_HEADER)) == SQLITE_HEADER:
            snapshot(path, into)
            return
        end = os.fstat(f.fileno()).st_size
        if path.suffix == ".jsonl":
            end = last_line_end(f, end)
        f.seek(0)
        while end > 0 and (chunk := f.read(min(CHUNK, end))):
            into.write(chunk)
            end -= len(chunk)


def last_line_end(f: IO[bytes], size: int) -> int:
    """The offset just after the last newline before `size` (0 if none): a writer may be mid-line at the end."""
    position = size
    while position > 0:
        start = max(0, position - CHUNK)
        f.seek(start)
        found = f.read(position - start).rfind(b"\n")
        if found >= 0:
            return start + found + 1
        position = start
    return 0


def snapshot(path: Path, into: IO[bytes]) -> None:
    """A consistent copy of a live SQLite database. Run as root, SQLite gives any -wal or -shm file it creates
    the database's owner (tests/test_backup.py checks it), so the service that owns it can still open them."""
    with tempfile.TemporaryDirectory() as tmp:
        source, copy = sqlite3.connect(path, timeout=60), sqlite3.connect(Path(tmp) / "copy.db")
        try:
            source.backup(copy)
            (verdict,) = copy.execute("PRAGMA integrity_check").fetchone()
        finally:
            source.close()
            copy.close()
        if verdict != "ok":
            raise BackupError(f"{path}: SQLite's integrity check of the copy failed: {verdict}")
        with (Path(tmp) / "copy.db").open("rb") as f:
            shutil.copyfileobj(f, into)


def volumes(variant: str) -> list[str]:
    return [part for part in VARIANTS[variant] if part not in ENGINES]


def dump(
    out: IO[bytes],
    root: Path,
    fernet_key: str,
    variant: str,
    dotenv: Path | None = None,
    engines: dict[str, Callable[[], Iterable[Member]]] | None = None,
) -> dict[str, Any]:
    """Write an archive of the variant's volumes under `root` (and of `engines`' members) to `out`; returns its
    manifest. `dotenv`: include that file (the stack's secrets) and MLflow's login files."""
    checksums: dict[str, str] = {}
    parts: dict[str, dict[str, Any]] = {}
    with tarfile.open(fileobj=out, mode="w|gz") as tar:
        for part in VARIANTS[variant]:
            names, size = [], 0
            if part in ENGINES:
                for name, write in (engines or {})[part]():
                    info = tarfile.TarInfo(name)
                    info.mtime, info.mode = int(datetime.now(UTC).timestamp()), 0o600
                    size += add_content(tar, info, write, checksums)
                    names.append(name)
            else:
                for path in files_of(root / part):
                    name = f"{part}/{path.relative_to(root / part).as_posix()}"
                    if name in SECRETS and dotenv is None:
                        continue
                    try:
                        size += add(tar, name, path, checksums)
                    except FileNotFoundError:  # removed since the walk (log retention, a temporary file): not state
                        continue
                    names.append(name)
            part_sum = hashlib.sha256("".join(f"{n}\0{checksums.get(n, '')}\n" for n in names).encode()).hexdigest()
            parts[part] = {"description": PARTS[part], "entries": len(names), "bytes": size, "sha256": part_sum}
            if (root / part).is_dir():  # a volume's own directory: a new volume's would belong to root
                top = (root / part).stat()
                parts[part]["owner"] = [top.st_uid, top.st_gid, top.st_mode & 0o7777]
        if dotenv is not None:
            add(tar, DOTENV, dotenv, checksums)
        manifest = {
            "format": FORMAT,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "variant": variant,
            "versions": versions(),
            "fernet_key_fingerprint": fingerprint(fernet_key),
            "with_secrets": dotenv is not None,
            "parts": parts,
            "files": checksums,
        }
        text = json.dumps(manifest, indent=1, sort_keys=True).encode()
        info = tarfile.TarInfo(MANIFEST)
        info.size, info.mtime, info.mode = len(text), int(datetime.now(UTC).timestamp()), 0o644
        tar.addfile(info, io.BytesIO(text))
    return manifest


def add(tar: tarfile.TarFile, name: str, path: Path, checksums: dict[str, str]) -> int:
    """One directory or file, with its owner, mode and time; a file's checksum goes to `checksums`."""
    stat = path.lstat()
    info = tarfile.TarInfo(name)
    info.mode, info.uid, info.gid, info.mtime = stat.st_mode & 0o7777, stat.st_uid, stat.st_gid, int(stat.st_mtime)
    if path.is_dir() and not path.is_symlink():
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
        return 0
    if not path.is_file() or path.is_symlink():
        return 0  # nothing in these volumes is a link or a device; never follow one out of the volume
    return add_content(tar, info, partial(copy_of, path), checksums)


def add_content(
    tar: tarfile.TarFile, info: tarfile.TarInfo, write: Callable[[IO[bytes]], Any], checksums: dict[str, str]
) -> int:
    """A file whose content `write` produces (spooled: a tar header needs the size first)."""
    with tempfile.SpooledTemporaryFile(max_size=16 * 2**20) as copy:
        write(copy)
        info.size = copy.seek(0, io.SEEK_END)  # not tell(): pg_dump seeks back to fill in its table of contents
        copy.seek(0)
        checksums[info.name] = hashlib.file_digest(copy, "sha256").hexdigest()
        copy.seek(0)
        tar.addfile(info, copy)
    return info.size
