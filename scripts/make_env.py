"""Create .env from .env.example with fresh secrets; never overwrite an existing .env.

Usage: python scripts/make_env.py [--env-file .env] [--example .env.example] [--set KEY=VALUE ...]
Needs only the standard library (cryptography is used for the Fernet key when it is installed).
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import secrets
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINE = re.compile(r"^(?P<key>[A-Za-z_][A-Za-z0-9_]*)=(?P<value>.*)$")


def fernet_key() -> str:
    try:
        from cryptography.fernet import Fernet
    except ImportError:  # the same thing Fernet.generate_key() does
        return base64.urlsafe_b64encode(os.urandom(32)).decode()
    return Fernet.generate_key().decode()


def generated_secrets() -> dict[str, str]:
    return {
        "FERNET_KEY": fernet_key(),
        "AIRFLOW_JWT_SECRET": secrets.token_urlsafe(48),
        "AIRFLOW_SECRET_KEY": secrets.token_urlsafe(48),
        "AIRFLOW_ADMIN_PASSWORD": secrets.token_urlsafe(18),
        "MLFLOW_TRACKING_PASSWORD": secrets.token_urlsafe(18),
    }


def render(example: str, values: dict[str, str]) -> str:
    """Fill KEY=... lines of the template; keep comments, order and unknown keys as they are."""
    out, seen = [], set()
    for line in example.splitlines(keepends=True):
        match = LINE.match(line.rstrip("\r\n"))
        if match and match["key"] in values:
            key = match["key"]
            out.append(f"{key}={values[key]}\n")
            seen.add(key)
        else:
            out.append(line)
    missing = [k for k in values if k not in seen]
    if missing:
        out.append("\n" + "".join(f"{k}={values[k]}\n" for k in missing))
    return "".join(out)


def write_new(path: Path, text: str) -> bool:
    """Write atomically, only if `path` does not exist (os.link refuses to replace). Mode 0600: secrets."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".env.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env-file", type=Path, default=ROOT / ".env")
    parser.add_argument("--example", type=Path, default=ROOT / ".env.example")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a value")
    args = parser.parse_args(argv)

    if args.env_file.exists():
        print(f"{args.env_file} exists; left untouched.")
        return 0
    values = generated_secrets()
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not LINE.match(item):
            parser.error(f"--set expects KEY=VALUE, got {item!r}")
        values[key] = value
    try:
        example = args.example.read_text()
    except OSError as exc:
        print(f"error: cannot read the template {args.example}: {exc.strerror}", file=sys.stderr)
        return 1
    if not write_new(args.env_file, render(example, values)):
        print(f"{args.env_file} exists; left untouched.")
        return 0
    user = values.get("AIRFLOW_ADMIN_USERNAME", "admin")
    print(f"Created {args.env_file} with fresh secrets.")
    print(f"Airflow login: {user} / {values['AIRFLOW_ADMIN_PASSWORD']}  (shown once; it is also in {args.env_file})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
