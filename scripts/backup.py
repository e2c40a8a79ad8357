"""`make backup` and `make restore`: every piece of the stack's state in one archive, and the way back to it
(docs/backup.md). The compose service `backup` (mlops_pipeline/backup) reads and writes the volumes; this script
runs it, keeps the archive, and stops and starts the stack around a restore.

Usage: python -m scripts.backup [--compose-file FILE ...] backup [--out FILE] [--with-secrets]
       python -m scripts.backup [--compose-file FILE ...] restore FILE [--force]
(`make scale-backup` and `make scale-restore` name docker-compose.yml and docker-compose.scale.yml.)
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

from scripts.demo import services_to_wait_for
from scripts.stackenv import ROOT

BACKUPS = ROOT / "backups"
ENGINES = ["postgres", "seaweedfs"]  # the scale variant's: a restore writes into them, so they keep running
# MLflow's migrations, on the store the tracking server uses (the scale file sets MLFLOW_BACKEND_STORE_URI; else
# mlflow/tracking_server.py's default in compose).
MLFLOW_UPGRADE = 'exec mlflow db upgrade "${MLFLOW_BACKEND_STORE_URI:-sqlite:////mlflow/mlruns/mlflow.db}"'


class Compose:
    """The compose commands for the stack of the given files (none: docker-compose.yml)."""

    def __init__(self, files: list[str] | None = None) -> None:
        self.files = files or []
        self.base = ["docker", "compose", *(arg for name in self.files for arg in ("-f", name))]
        self.stack = [*self.base, "--profile", "monitoring", "--profile", "flower"]  # everything that may be running
        self.backup = [*self.base, "--profile", "backup", "run", "--rm", "--no-deps", "-T"]  # then options, `backup`
        services = step([*self.stack, "config", "--services"]).split()
        self.engines = [name for name in ENGINES if name in services]
        self.writers = [name for name in services if name not in self.engines]


def step(cmd: list[str], failed: str = "", stdin: IO[bytes] | None = None, stdout: IO[bytes] | None = None) -> str:
    """Run a command from the checkout: its stderr goes to the user; its output goes to `stdout`, or is returned."""
    result = subprocess.run(cmd, cwd=ROOT, stdin=stdin, stdout=stdout or subprocess.PIPE)
    if result.returncode != 0:
        raise SystemExit(failed or f"{' '.join(cmd[:4])} ... failed (exit code {result.returncode})")
    return result.stdout.decode() if stdout is None else ""


def backup(out: Path | None = None, with_secrets: bool = False, compose: Compose | None = None) -> Path:
    """Archive the running (or stopped) stack's state to `out`, which appears only once it is complete and
    checked; readable by its owner only."""
    compose = compose or Compose()
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
            step([*compose.backup, *options, "backup", *args], "backup: failed; no archive was written", stdout=f)
        with partial.open("rb") as f:
            step([*compose.backup, "backup", "verify"], "backup: the archive written does not check out", stdin=f)
        partial.rename(out)
    finally:
        partial.unlink(missing_ok=True)
    size = out.stat().st_size / 2**20
    print(f"backup: {out} ({size:.1f} MiB, {time.monotonic() - started:.0f} s)", file=sys.stderr)
    print(out)
    return out


def restore(archive: Path, force: bool = False, compose: Compose | None = None) -> None:
    """Check the archive, then (the stack stopped, the scale variant's engines running) replace the state with it
    and start the stack."""
    if not archive.is_file():
        raise SystemExit(f"restore: {archive} is not a file")
    compose = compose or Compose()
    refused = "restore: refused; nothing was changed"
    step([*compose.base, "build", "--quiet"], "restore: the images could not be built")  # gone after ./clean_disk.sh
    with archive.open("rb") as f:
        step([*compose.backup, "backup", "verify"], refused, stdin=f)
    if compose.engines:  # the state to check and to write is in them (on an empty machine: made empty now)
        step([*compose.base, "up", "-d", "--wait", *compose.engines], "restore: PostgreSQL or SeaweedFS did not start")
    held = json.loads(step([*compose.backup, "backup", "state"], refused))
    if held and not force:
        raise SystemExit(
            f"restore: the stack already has state ({', '.join(held)}); nothing was changed.\n"
            f"restore: FORCE=1 saves that state to {BACKUPS.name}/pre-restore-<time>.tar.gz first, then replaces it."
        )
    if held:
        backup(BACKUPS / f"pre-restore-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.tar.gz", compose=compose)
    running = step([*compose.stack, "ps", "-q", "--status", "running", *compose.writers]).split()
    step([*compose.stack, "stop", *compose.writers], "restore: the stack could not be stopped; nothing was changed")
    try:
        with archive.open("rb") as f:
            step([*compose.backup, "backup", "restore", *(["--force"] if held else [])], refused, stdin=f)
    except SystemExit:
        if running:
            subprocess.run([*compose.stack, "start"], cwd=ROOT)  # as it was: the restore left the state untouched
        raise
    # The databases' migrations (nothing to do for an archive of this version): MLflow's here, Airflow's in
    # airflow-init, which runs on every start.
    step([*compose.base, "run", "--rm", "--no-deps", "--entrypoint", "sh", "mlflow-server", "-c", MLFLOW_UPGRADE])
    wait = services_to_wait_for(compose.base, compose.files)
    step([*compose.base, "up", "-d", "--wait", *wait], "restore: restored, but the stack did not start")
    step([*compose.base, "up", "-d", "--no-build", "model-server"])
    print(f"restore: {archive.name} restored and the stack started", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--compose-file", action="append", default=[], metavar="FILE", help="a compose file, repeatable, in order"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("backup", help="archive the stack's state")
    make.add_argument("--out", type=Path, help="the archive's path (default: backups/mlops-<UTC time>.tar.gz)")
    make.add_argument("--with-secrets", action="store_true", help="include .env and MLflow's login files")
    back = commands.add_parser("restore", help="replace the stack's state with an archive's and start it")
    back.add_argument("file", type=Path)
    back.add_argument("--force", action="store_true", help="replace existing state (saved to backups/ first)")
    args = parser.parse_args(argv)
    compose = Compose(args.compose_file)
    if args.command == "backup":
        backup(args.out, args.with_secrets, compose)
    else:
        restore(args.file, args.force, compose)
    return 0


if __name__ == "__main__":
    sys.exit(main())
