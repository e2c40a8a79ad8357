"""Reading an archive (every checksum first) and restoring it: staged in full, then swapped, or rolled back."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import IO, Any

from packaging.version import InvalidVersion, Version

from mlops_pipeline.backup import engines as engine
from mlops_pipeline.backup.archive import (
    DOTENV,
    ENGINES,
    FORMAT,
    MANIFEST,
    PARTS,
    PREVIOUS,
    STAGING,
    VARIANTS,
    BackupError,
    fingerprint,
    versions,
    volumes,
)


def member_name(name: str) -> str:
    """A member's name, refused unless it is a plain relative path inside one of the archive's parts."""
    path = PurePosixPath(name)
    parts = path.parts
    if path.is_absolute() or not parts or ".." in parts or STAGING in parts or PREVIOUS in parts:
        raise BackupError(f"the archive holds an unsafe path {name!r}: not a backup made by make backup")
    if name not in (MANIFEST, DOTENV) and (parts[0] not in PARTS or len(parts) < 2):
        raise BackupError(f"the archive holds {name!r}, which is not part of a backup of this stack")
    return name


def read(stream: IO[bytes], stage: Callable[[str], Path] | None = None) -> dict[str, Any]:
    """Read a whole archive and check every file against the manifest; returns the manifest. With `stage`, each
    part's entries are also written to the directory stage(part) (with their owner when run as root)."""
    seen: dict[str, str] = {}
    manifest: dict[str, Any] | None = None
    try:
        gz = gzip.GzipFile(fileobj=stream, mode="rb")  # checks the CRC and length of every byte at the end
        with tarfile.open(fileobj=gz, mode="r|") as tar:
            for member in tar:
                name = member_name(member.name)
                if manifest is not None:
                    raise BackupError("the archive goes on after its manifest: not a backup made by make backup")
                if not (member.isfile() or member.isdir()):
                    raise BackupError(f"{name} is not a file or a directory: not a backup made by make backup")
                source = tar.extractfile(member) if member.isfile() else None
                if name == MANIFEST and source is not None:
                    manifest = json.loads(source.read())
                    continue
                target = None
                if stage is not None and name != DOTENV:
                    part, *rest = PurePosixPath(name).parts
                    target = stage(part) / Path(*rest)
                    target.parent.mkdir(parents=True, exist_ok=True)
                if source is None:
                    if target is not None:
                        target.mkdir(exist_ok=True)
                        keep_owner(target, member)
                    continue
                digest = hashlib.sha256()
                with target.open("wb") if target is not None else open(os.devnull, "wb") as f:
                    while chunk := source.read(2**20):
                        digest.update(chunk)
                        f.write(chunk)
                if target is not None:
                    keep_owner(target, member)
                seen[name] = digest.hexdigest()
        while gz.read(2**20):  # to the end of the gzip stream, where a cut or changed byte shows
            pass
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise BackupError(f"the archive is truncated or corrupted ({exc}); nothing was restored") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BackupError(f"the archive's manifest is not JSON ({exc}): the archive is corrupted") from None
    if manifest is None:
        raise BackupError("the archive has no manifest: it is truncated, or it was not made by make backup")
    if not well_formed(manifest):
        raise BackupError("the archive's manifest is not one make backup writes: the archive is corrupted")
    if manifest.get("format") != FORMAT:
        raise BackupError(f"unknown archive format {manifest.get('format')!r} (this stack reads format {FORMAT})")
    expected = manifest.get("files") or {}
    for name in sorted(set(expected) | set(seen)):
        if expected.get(name) != seen.get(name):
            what = "is missing" if name not in seen else "is not in the manifest" if name not in expected else None
            raise BackupError(f"{name} {what or 'does not match its checksum'}: the archive is corrupted")
    return manifest


def well_formed(manifest: object) -> bool:
    """The manifest's shape, checked before any of it is used: an archive may come from anywhere."""
    if not isinstance(manifest, dict):
        return False
    files, parts, versions_ = manifest.get("files"), manifest.get("parts"), manifest.get("versions")
    return (
        isinstance(files, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in files.items())
        and isinstance(versions_, dict)
        and all(isinstance(v, str) for v in versions_.values())
        and isinstance(parts, dict)
        and all(
            isinstance(about, dict)
            and (
                "owner" not in about
                or (
                    isinstance(about["owner"], list)
                    and len(about["owner"]) == 3
                    and all(type(n) is int and 0 <= n < 2**32 for n in about["owner"])
                )
            )
            for about in parts.values()
        )
    )


def keep_owner(path: Path, member: tarfile.TarInfo) -> None:
    if os.geteuid() == 0:
        os.chown(path, member.uid, member.gid)
    os.chmod(path, member.mode & 0o7777)
    os.utime(path, (member.mtime, member.mtime))


def newer(made: str, here: str) -> bool:
    try:
        return Version(made) > Version(here)
    except InvalidVersion:
        return made != here


def check(manifest: dict[str, Any], variant: str, fernet_key: str) -> None:
    """Refuse an archive this stack cannot use: another variant, a newer version, another Fernet key."""
    theirs = manifest.get("variant")
    if theirs != variant:
        raise BackupError(
            f"the archive is of the {theirs} variant and this stack is the {variant} one: restore it into a "
            f"stack of the {theirs} variant"
        )
    here = versions()
    for name, made in sorted((manifest.get("versions") or {}).items()):
        if name in here and newer(made, here[name]):
            raise BackupError(
                f"the archive was made by a newer {name} ({made}) than this stack's ({here[name]}): "
                "update this checkout first (git pull), then restore"
            )
    made_with, ours = manifest.get("fernet_key_fingerprint"), fingerprint(fernet_key)
    if made_with != ours:
        carried = (
            f"the archive carries it: tar -xzOf ARCHIVE {DOTENV}"
            if manifest.get("with_secrets")
            else ("from the .env the archive's stack used")
        )
        raise BackupError(
            f"the archive was made with another FERNET_KEY (fingerprint {made_with}; this .env's is {ours}): "
            f"Airflow could not decrypt the connections and variables in it. Put that key in .env as FERNET_KEY "
            f"({carried}), then restore again"
        )


def present(root: Path, variant: str) -> list[str]:
    """The volumes that hold anything: a restore over them needs --force."""
    return [part for part in volumes(variant) if (root / part).is_dir() and entries(root / part)]


def entries(base: Path) -> list[Path]:
    return sorted(p for p in base.iterdir() if p.name not in (STAGING, PREVIOUS))


def restore(
    stream: IO[bytes], root: Path, variant: str, fernet_key: str, force: bool = False, s3: Any = None
) -> dict[str, Any]:
    """Replace the state under `root` (and, in the scale variant, in PostgreSQL and the buckets, through `s3`;
    None: no object store) with the archive's: staged and checked in full first, then swapped."""
    held = present(root, variant) + (engine.present(s3) if "postgres" in VARIANTS[variant] else [])
    if held and not force:
        raise BackupError(
            f"the stack already has state ({', '.join(held)}); nothing was changed. FORCE=1 saves it to an "
            "archive under backups/ first, then replaces it"
        )
    parts = volumes(variant)
    for part in parts:
        shutil.rmtree(root / part / STAGING, ignore_errors=True)  # an earlier attempt that was killed
        (root / part / STAGING).mkdir(parents=True)
    with tempfile.TemporaryDirectory() as scratch:

        def stage(part: str) -> Path:
            if part not in VARIANTS[variant]:
                raise BackupError(
                    f"the archive holds {part}, which the {variant} variant's stack does not have: it is an archive "
                    "of the other variant; restore it into a stack of that variant"
                )
            return Path(scratch) / part if part in ENGINES else root / part / STAGING

        try:
            manifest = read(stream, stage)
            check(manifest, variant, fernet_key)
            swap_all(root, parts, Path(scratch), "postgres" in VARIANTS[variant], s3)
            for part, about in manifest["parts"].items():
                if part in parts and "owner" in about:
                    uid, gid, mode = about["owner"]
                    if os.geteuid() == 0:
                        os.chown(root / part, uid, gid)
                    os.chmod(root / part, mode)
        finally:
            for part in parts:
                shutil.rmtree(root / part / STAGING, ignore_errors=True)
    return manifest


def swap_all(root: Path, parts: list[str], scratch: Path, scale: bool, s3: Any) -> None:
    """The scale variant's objects first (added beside the old ones), then its databases (the old ones renamed
    aside), then the volumes; a failure undoes the databases too. Only then is the old state dropped."""
    if not scale:
        swap(root, parts)
        return
    kept = engine.upload(s3, scratch / "bucket")
    dumps = {p.stem: p for p in sorted((scratch / "postgres").glob("*.dump"))}
    undo = engine.swap_databases(dumps)
    try:
        swap(root, parts)
    except BaseException:
        undo()
        raise
    engine.drop_aside(list(dumps))
    engine.prune(s3, kept)


def swap(root: Path, parts: list[str]) -> None:
    """Each part's current entries go aside, the staged ones take their place; a failure undoes every rename
    done so far, last first. The old entries are deleted only once every part is swapped."""
    done: list[tuple[Path, Path]] = []
    try:
        for part in parts:
            base = root / part
            shutil.rmtree(base / PREVIOUS, ignore_errors=True)
            (base / PREVIOUS).mkdir()
            moves = [(entry, base / PREVIOUS / entry.name) for entry in entries(base)]
            for entry, aside in moves:
                done.append((entry, entry.rename(aside)))
            for entry in sorted((base / STAGING).iterdir()):
                done.append((entry, entry.rename(base / entry.name)))
    except BaseException:
        for source, moved in reversed(done):
            moved.rename(source)
        for part in parts:
            if (root / part / PREVIOUS).is_dir():
                (root / part / PREVIOUS).rmdir()  # empty again: a failure here leaves it, and says so
        raise
    for part in parts:
        shutil.rmtree(root / part / PREVIOUS)
