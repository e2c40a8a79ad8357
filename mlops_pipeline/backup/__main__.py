"""The backup container's commands (scripts/backup.py runs them): dump, verify, state, restore."""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from pathlib import Path
from typing import Any

from mlops_pipeline.backup import engines as engine
from mlops_pipeline.backup.archive import STATE_ROOT, VARIANTS, BackupError, dump
from mlops_pipeline.backup.restore import check, present, read, restore
from mlops_pipeline.schema import ConfigError
from mlops_pipeline.settings import BackupSettings, from_env


def summary(manifest: dict[str, Any]) -> str:
    lines = [f"backup: made {manifest['created']}, {manifest['variant']} variant, versions {manifest['versions']}"]
    for part, about in manifest["parts"].items():
        lines.append(
            f"backup:   {part}: {about['entries']} entries, {about['bytes'] / 2**20:.1f} MiB ({about['description']})"
        )
    if not any(about["entries"] for about in manifest["parts"].values()):
        lines.append("backup: WARNING: every volume is empty: is this the stack's project (COMPOSE_PROJECT_NAME)?")
    if manifest.get("with_secrets"):
        lines.append("backup: WITH SECRETS: this archive holds .env and MLflow's login files; keep it like a password")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlops_pipeline.backup", description=__doc__)
    parser.add_argument("command", choices=["dump", "verify", "state", "restore"])
    parser.add_argument("--dotenv", type=Path, help="dump: include this .env (and MLflow's login files)")
    parser.add_argument("--force", action="store_true", help="restore: replace state that exists")
    args = parser.parse_args(argv)
    try:
        settings = from_env(BackupSettings)
    except ConfigError as exc:
        print(f"backup: {exc}", file=sys.stderr)
        return 2
    key, variant = settings.fernet_key.get_secret_value(), settings.backup_variant
    try:
        scale = "postgres" in VARIANTS[variant]
        s3 = engine.s3_client() if scale and args.command != "verify" else None
        if args.command == "dump":
            sources = {"postgres": engine.database_members, "bucket": partial(engine.bucket_members, s3)}
            manifest = dump(sys.stdout.buffer, STATE_ROOT, key, variant, args.dotenv, sources if scale else None)
        elif args.command == "verify":
            manifest = read(sys.stdin.buffer)
            check(manifest, variant, key)
        elif args.command == "state":
            print(json.dumps(present(STATE_ROOT, variant) + (engine.present(s3) if scale else [])))
            return 0
        else:
            manifest = restore(sys.stdin.buffer, STATE_ROOT, variant, key, args.force, s3)
    except (BackupError, *engine.S3_ERRORS) as exc:
        print(f"backup: {exc}", file=sys.stderr)
        return 1
    print(summary(manifest), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
