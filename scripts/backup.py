"""`make backup` and `make restore`: every piece of the stack's state in one archive, and the way back to it
(docs/backup.md). The compose service `backup` (mlops_pipeline/backup) reads and writes the volumes; this script
runs it, keeps the archive, and stops and starts the stack around a restore.

Usage: python -m scripts.backup backup [--out FILE] [--with-secrets]
       python -m scripts.backup restore FILE [--force]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from scripts.stackenv import COMPOSE_CORE, ROOT

BACKUPS = ROOT / "backups"
COMPOSE = ["docker", "compose"]
STACK = [*COMPOSE, "--profile", "monitoring"]  # every service that may be running, and so writing
BACKUP = [*COMPOSE, "--profile", "backup", "run", "--rm", "--no-deps", "-T"]  # then options, then `backup ARGS`
MLFLOW_DB = "sqlite:////mlflow/mlruns/mlflow.db"  # mlflow/tracking_server.py's default in compose


def step(cmd: list[str], failed: str = "", stdin: IO[bytes] | None = None, stdout: IO[bytes] | None = None) -> str:
    """Run a command from the checkout: its stderr goes to the user; its output goes to `stdout`, or is returned."""
    result = subprocess.run(cmd, cwd=ROOT, stdin=stdin, stdout=stdout or subprocess.PIPE)
    if result.returncode != 0:
        raise SystemExit(failed or f"{' '.join(cmd[:4])} ... failed (exit code {result.returncode})")
    return result.stdout.decode() if stdout is None else ""


def backup(out: Path | None = None, with_secrets: bool = False) -> Path:
    """Archive the running (or stopped) stack's state to `out`, which appears only once it is complete and
    checked; readable by its owner only."""
    out = (out or BACKUPS / f"mlops-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.tar.gz").resolve()
    if out.exists():
        raise SystemExit(f"backup: {out} exists; choose another OUT")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    options, args = [], ["dump"]
    if with_secrets:
        env_file = Path(os.environ.get("ENV_FILE", ROOT / ".env")).resolve()
        options, args = ["-v", f"{env_file}:/run/dotenv:ro"], ["dump", "--dotenv", "/run/dotenv"]
        print("backup: WITH_SECRETS=1: the archive holds .env, every password and key of this stack", file=sys.stderr)
    started = time.monotonic()
    try:
        with partial.open("xb") as f:
            os.fchmod(f.fileno(), 0o600)
            step([*BACKUP, *options, "backup", *args], "backup: failed; no archive was written", stdout=f)
        with partial.open("rb") as f:
            step([*BACKUP, "backup", "verify"], "backup: the archive written does not check out", stdin=f)
        partial.rename(out)
    finally:
        partial.unlink(missing_ok=True)
    size = out.stat().st_size / 2**20
    print(f"backup: {out} ({size:.1f} MiB, {time.monotonic() - started:.0f} s)", file=sys.stderr)
    print(out)
    return out


def restore(archive: Path, force: bool = False) -> None:
    """Check the archive, then (the stack stopped) replace the state with it and start the stack."""
    if not archive.is_file():
        raise SystemExit(f"restore: {archive} is not a file")
    refused = "restore: refused; nothing was changed"
    step([*COMPOSE, "build", "--quiet"], "restore: the images could not be built")  # gone after ./clean_disk.sh
    with archive.open("rb") as f:
        step([*BACKUP, "backup", "verify"], refused, stdin=f)
    held = json.loads(step([*BACKUP, "backup", "state"], refused))
    if held and not force:
        raise SystemExit(
            f"restore: the stack already has state ({', '.join(held)}); nothing was changed.\n"
            f"restore: FORCE=1 saves that state to {BACKUPS.name}/pre-restore-<time>.tar.gz first, then replaces it."
        )
    if held:
        backup(BACKUPS / f"pre-restore-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.tar.gz")
    running = step([*STACK, "ps", "-q", "--status", "running"]).split()
    step([*STACK, "stop"], "restore: the stack could not be stopped; nothing was changed")
    try:
        with archive.open("rb") as f:
            step([*BACKUP, "backup", "restore", *(["--force"] if held else [])], refused, stdin=f)
    except SystemExit:
        if running:
            subprocess.run([*STACK, "start"], cwd=ROOT)  # as it was: the restore left the volumes untouched
        raise
    # The databases' migrations (nothing to do for an archive of this version): MLflow's here, Airflow's in
    # airflow-init, which runs on every start.
    step([*COMPOSE, "run", "--rm", "--no-deps", "--entrypoint", "mlflow", "mlflow-server", "db", "upgrade", MLFLOW_DB])
    step([*COMPOSE, "up", "-d", "--wait", *COMPOSE_CORE], "restore: restored, but the stack did not start")
    step([*COMPOSE, "up", "-d", "--no-build", "model-server"])
    print(f"restore: {archive.name} restored and the stack started", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("backup", help="archive the stack's state")
    make.add_argument("--out", type=Path, help="the archive's path (default: backups/mlops-<UTC time>.tar.gz)")
    make.add_argument("--with-secrets", action="store_true", help="include .env and MLflow's login files")
    back = commands.add_parser("restore", help="replace the stack's state with an archive's and start it")
    back.add_argument("file", type=Path)
    back.add_argument("--force", action="store_true", help="replace existing state (saved to backups/ first)")
    args = parser.parse_args(argv)
    if args.command == "backup":
        backup(args.out, args.with_secrets)
    else:
        restore(args.file, args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
