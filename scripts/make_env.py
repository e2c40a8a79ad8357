"""Create .env from .env.example with fresh secrets; never overwrite an existing .env.

Usage: python -m scripts.make_env [--env-file .env] [--example .env.example] [--set KEY=VALUE ...] [--add-missing]
       python -m scripts.make_env --list-keys
  --add-missing   when .env exists: append fresh values for the secrets it lacks (an .env made before the
                  scale-out variant gains that variant's secrets; `make scale-env`); every existing line stays
  --list-keys     print the keys it generates (clean_disk.sh gives each a placeholder)
Needs only the standard library (cryptography is used for the Fernet key when it is installed).
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import secrets
import string
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINE = re.compile(r"^(?P<key>[A-Za-z_][A-Za-z0-9_]*)=(?P<value>.*)$")


def fernet_key() -> str:
    try:
        from cryptography.fernet import Fernet
    except ImportError:  # the same thing Fernet.generate_key() does
        return base64.urlsafe_b64encode(os.urandom(32)).decode()
    return Fernet.generate_key().decode()


def access_key_id() -> str:
    """An S3 access key ID looks like AWS's (20 characters); it names the key, the secret is the secret."""
    return "AK" + "".join(secrets.choice(string.ascii_uppercase + string.digits) for _ in range(18))


def hex_secret(size: int) -> Callable[[], str]:
    """Hex: safe in URLs and never starting with "-", which a command line (redis-server --requirepass) could take
    for an option."""
    return lambda: secrets.token_hex(size)


def url_secret(size: int) -> Callable[[], str]:
    return lambda: secrets.token_urlsafe(size)


# Every key `make env` generates, with how. The one list of them: tests, clean_disk.sh (--list-keys) and the
# leak checks read it from here.
GENERATED: dict[str, Callable[[], str]] = {
    "FERNET_KEY": fernet_key,
    "AIRFLOW_JWT_SECRET": url_secret(48),
    "AIRFLOW_SECRET_KEY": url_secret(48),
    "AIRFLOW_ADMIN_PASSWORD": url_secret(18),
    "MLFLOW_TRACKING_PASSWORD": url_secret(18),
    # The scale-out variant's (docker-compose.scale.yml).
    "POSTGRES_PASSWORD": hex_secret(24),
    "AIRFLOW_DB_PASSWORD": hex_secret(24),
    "MLFLOW_DB_PASSWORD": hex_secret(24),
    "INFERENCE_LOG_WRITER_PASSWORD": hex_secret(24),
    "INFERENCE_LOG_READER_PASSWORD": hex_secret(24),
    "REDIS_PASSWORD": hex_secret(24),
    "S3_ACCESS_KEY_ID": access_key_id,
    "S3_SECRET_ACCESS_KEY": hex_secret(20),
    "S3_BATCH_ACCESS_KEY_ID": access_key_id,
    "S3_BATCH_SECRET_ACCESS_KEY": hex_secret(20),
    # The monitoring profile's (Grafana's admin).
    "GRAFANA_ADMIN_PASSWORD": url_secret(18),
}
# The generated keys that are secrets (they must never leak); an access key ID only names its key.
SECRET_KEYS = tuple(key for key in GENERATED if not key.endswith("ACCESS_KEY_ID"))


def generated_secrets() -> dict[str, str]:
    return {key: generate() for key, generate in GENERATED.items()}


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


def add_missing(path: Path, values: dict[str, str]) -> list[str]:
    """Append the keys of `values` that `path` does not set, atomically and keeping the file's mode; every existing
    line stays byte for byte. Returns the keys added."""
    with open(path, newline="") as fh:  # as it is: CRLF stays CRLF
        text = fh.read()
    present = {m["key"] for line in text.splitlines() if (m := LINE.match(line.strip().removeprefix("export ")))}
    missing = [key for key in values if key not in present]
    if not missing:
        return []
    if text and not text.endswith("\n"):
        text += "\n"
    text += "\n# Added by scripts/make_env.py --add-missing (see .env.example for what each key does).\n"
    text += "".join(f"{key}={values[key]}\n" for key in missing)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".env.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env-file", type=Path, default=ROOT / ".env")
    parser.add_argument("--example", type=Path, default=ROOT / ".env.example")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a value")
    parser.add_argument("--add-missing", action="store_true", help="add the secrets an existing .env lacks")
    parser.add_argument("--list-keys", action="store_true", help="print the generated keys; write nothing")
    args = parser.parse_args(argv)
    if args.list_keys:
        print("\n".join(GENERATED))
        return 0

    values = generated_secrets()
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not LINE.match(item):
            parser.error(f"--set expects KEY=VALUE, got {item!r}")
        values[key] = value
    if args.env_file.exists():
        added = add_missing(args.env_file, values) if args.add_missing else []
        if added:
            print(f"{args.env_file}: added fresh {', '.join(added)}; every other line left as it was.")
            if "AIRFLOW_ADMIN_PASSWORD" in added:
                print(f"Airflow admin password: {values['AIRFLOW_ADMIN_PASSWORD']}  (shown once)")
        else:
            print(f"{args.env_file} exists; left untouched.")
        return 0
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
