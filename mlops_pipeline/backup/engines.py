"""The scale variant's state outside the volumes: PostgreSQL's databases (pg_dump and pg_restore, which the scale
image carries) and the S3 buckets (boto3). The backup container reaches both as their superuser and S3 admin
(docker-compose.scale.yml): libpq reads PGHOST, PGUSER and PGPASSWORD, boto3 the AWS_* keys.

Both are found, not listed: every database but PostgreSQL's own and every bucket, so a database or bucket added
to the stack is in the next archive without a change here.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import IO, Any

from mlops_pipeline.backup.archive import BackupError, Member

try:  # the scale image's (boto3's); in the default variant no S3 call is made
    from botocore.exceptions import BotoCoreError, ClientError

    S3_ERRORS: tuple[type[Exception], ...] = (BotoCoreError, ClientError)
except ImportError:
    S3_ERRORS = ()
ASIDE = "_before_restore"  # a database renamed aside while its archived copy is restored
NAME = re.compile(r"[a-z_][a-z0-9_]{0,40}")


def run(cmd: list[str], into: IO[bytes] | None = None) -> str:
    """A PostgreSQL client program; its error output becomes the BackupError's message."""
    result = subprocess.run(cmd, stdout=into or subprocess.PIPE, stderr=subprocess.PIPE, check=False)
    if result.returncode != 0:
        raise BackupError(f"{cmd[0]} failed: {result.stderr.decode(errors='replace').strip()[-600:]}")
    return "" if into is not None else result.stdout.decode()


def sql(statement: str, database: str = "postgres") -> list[str]:
    """One statement through psql, as the superuser; each output row as one string."""
    out = run(["psql", "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-d", database, "-c", statement])
    return out.splitlines()


def ident(name: str) -> str:
    if not NAME.fullmatch(name):
        raise BackupError(f"{name!r} is not a database name this stack uses: not a backup made by make backup")
    return f'"{name}"'


def databases() -> list[str]:
    """Every database but PostgreSQL's own (and the templates)."""
    return sql("SELECT datname FROM pg_database WHERE NOT datistemplate AND datname <> 'postgres' ORDER BY 1")


def holds_rows(database: str) -> bool:
    """A database with a row in any table: a fresh stack's (created empty by postgres/init-databases.sh) has none.
    (query_to_xml runs a query built per table, server-side.)"""
    found = sql(
        "SELECT coalesce(bool_or((xpath('/row/e/text()', query_to_xml(format("
        "'SELECT EXISTS (SELECT 1 FROM %I.%I) AS e', table_schema, table_name), false, true, '')))[1]::text::boolean"
        "), false) FROM information_schema.tables "
        "WHERE table_type = 'BASE TABLE' AND table_schema NOT IN ('pg_catalog', 'information_schema')",
        database,
    )
    return found == ["t"]


def database_members() -> Iterator[Member]:
    """Each database as `pg_dump --format=custom --create`: one consistent snapshot per database, with its owner
    and grants, taken while the stack writes to it."""
    for name in databases():
        ident(name)
        yield f"postgres/{name}.dump", partial(dump_database, name)


def dump_database(name: str, into: IO[bytes]) -> None:
    run(["pg_dump", "--format=custom", "--create", f"--dbname={name}"], into)


def s3_client() -> Any:
    """boto3 finds the endpoint (AWS_ENDPOINT_URL_S3) and the keys in the environment."""
    import boto3  # the scale image's; the default variant never imports it

    return boto3.client("s3")


def object_keys(s3: Any, bucket: str) -> Iterator[str]:
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            if not item["Key"].endswith("/"):  # a folder marker holds nothing
                yield item["Key"]


def bucket_members(s3: Any) -> Iterator[Member]:
    """Every object of every bucket, as bucket/<bucket>/<key>. Listed after the databases are dumped, so every
    artifact a dumped run names is here."""
    for bucket in sorted(b["Name"] for b in s3.list_buckets().get("Buckets", [])):
        for key in object_keys(s3, bucket):
            if key.startswith("/") or "//" in key or ".." in key.split("/"):
                raise BackupError(f"bucket {bucket} holds an object named {key!r}, which cannot be a file name")
            yield f"bucket/{bucket}/{key}", partial(s3.download_fileobj, bucket, key)


def present(s3: Any) -> list[str]:
    """The databases with rows and the buckets with objects (s3 None: no object store): a restore over them
    needs --force."""
    held = [f"postgres/{name}" for name in databases() if holds_rows(name)]
    for bucket in sorted(b["Name"] for b in s3.list_buckets().get("Buckets", [])) if s3 is not None else []:
        if next(object_keys(s3, bucket), None) is not None:
            held.append(f"bucket/{bucket}")
    return held


def upload(s3: Any, staged: Path) -> dict[str, set[str]]:
    """Put every staged object into its bucket (made if missing); returns the keys put, per bucket. Adds or
    overwrites only (an artifact's key names its run or model, so it holds the same bytes): nothing the stack
    had is gone until prune()."""
    put: dict[str, set[str]] = {}
    for folder in sorted(p for p in staged.iterdir() if p.is_dir()) if s3 is not None and staged.is_dir() else []:
        bucket, put[folder.name] = folder.name, set()
        if folder.name not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
            s3.create_bucket(Bucket=bucket)
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            key = path.relative_to(folder).as_posix()
            s3.upload_file(str(path), bucket, key)
            put[bucket].add(key)
    return put


def prune(s3: Any, kept: dict[str, set[str]]) -> None:
    """Delete the objects of the archive's buckets that the archive does not hold (saved first under FORCE)."""
    for bucket, keys in kept.items():
        for key in [k for k in object_keys(s3, bucket) if k not in keys]:
            s3.delete_object(Bucket=bucket, Key=key)


def swap_databases(dumps: dict[str, Path]) -> Callable[[], None]:
    """Rename each archived database's current one aside, then recreate it from its dump (owner, grants and
    all). A failure drops what was created and renames the old ones back. Returns the undo, for a failure
    after this step; drop_aside() once nothing can fail any more."""
    names = {name: ident(name) for name in dumps}
    existing = set(databases())
    left = sorted(n for n in existing if n.endswith(ASIDE))
    if left:
        raise BackupError(
            f"the database {left[0]} is left from an interrupted restore: it holds the state from before it. "
            f"Rename it back (or drop it if {left[0].removesuffix(ASIDE)} is complete), then restore again"
        )
    aside: list[str] = []
    created: list[str] = []

    def undo() -> None:
        for name in reversed(created):
            sql(f"DROP DATABASE IF EXISTS {names[name]}")
        for name in reversed(aside):
            sql(f"ALTER DATABASE {ident(name + ASIDE)} RENAME TO {names[name]}")

    try:
        for name, path in dumps.items():
            if name in existing:
                sql(f"ALTER DATABASE {names[name]} RENAME TO {ident(name + ASIDE)}")
                aside.append(name)
            created.append(name)
            run(["pg_restore", "--create", "--exit-on-error", "--dbname=postgres", str(path)])
    except BaseException:
        undo()
        raise
    return undo


def drop_aside(names: list[str]) -> None:
    for name in names:
        sql(f"DROP DATABASE IF EXISTS {ident(name + ASIDE)}")
