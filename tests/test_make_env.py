"""`make env` (scripts/make_env.py): fresh secrets, every documented key, never overwrites."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT, make_env_file
from scripts.make_env import SECRET_KEYS
from scripts.stackenv import read_env_file


def test_creates_env_with_fresh_secrets_and_every_key(tmp_path) -> None:  # noqa: ANN001
    a = read_env_file(make_env_file(tmp_path / "a.env"))
    b = read_env_file(make_env_file(tmp_path / "b.env"))
    example = read_env_file(ROOT / ".env.example")
    assert set(a) == set(example)
    for key in SECRET_KEYS:
        assert a[key] not in ("", "changeme") and a[key] != b[key]
    assert a["AIRFLOW_ADMIN_USERNAME"] == "admin"
    from cryptography.fernet import Fernet

    Fernet(a["FERNET_KEY"])  # a valid key, or this raises
    assert (tmp_path / "a.env").stat().st_mode & 0o777 == 0o600


def test_prints_the_password_once_and_never_overwrites(tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / ".env"
    first = subprocess.run(
        [sys.executable, "-m", "scripts.make_env", "--env-file", str(path)], cwd=ROOT, capture_output=True, text=True
    )
    password = read_env_file(path)["AIRFLOW_ADMIN_PASSWORD"]
    assert password in first.stdout
    before = path.read_bytes()
    second = subprocess.run(
        [sys.executable, "-m", "scripts.make_env", "--env-file", str(path)], cwd=ROOT, capture_output=True, text=True
    )
    assert second.returncode == 0 and "left untouched" in second.stdout and password not in second.stdout
    assert path.read_bytes() == before


def test_example_holds_only_placeholders() -> None:
    example = read_env_file(ROOT / ".env.example")
    for key in SECRET_KEYS:
        assert example[key] == "changeme"


def test_add_missing_appends_only_the_absent_secrets_and_keeps_every_line(tmp_path) -> None:  # noqa: ANN001
    """`make scale-env`: an .env made before the scale-out variant gains its secrets; nothing else changes."""
    path = tmp_path / ".env"
    old = "# mine\r\nFERNET_KEY=kept\nAIRFLOW_ADMIN_PASSWORD=also-kept\nRF_N_ESTIMATORS=7"  # CRLF, no final newline
    path.write_text(old, newline="")
    path.chmod(0o640)
    cmd = [sys.executable, "-m", "scripts.make_env", "--env-file", str(path), "--add-missing"]
    first = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    text = path.read_bytes().decode()
    assert text.startswith(old + "\n")
    values = read_env_file(path)
    assert values["FERNET_KEY"] == "kept" and values["AIRFLOW_ADMIN_PASSWORD"] == "also-kept"
    for key in (
        "POSTGRES_PASSWORD",
        "AIRFLOW_DB_PASSWORD",
        "MLFLOW_DB_PASSWORD",
        "REDIS_PASSWORD",
        "S3_SECRET_ACCESS_KEY",
    ):
        assert len(values[key]) >= 32 and values[key] != "changeme", key
        assert values[key] not in first.stdout, f"{key} printed"
    assert len(values["S3_ACCESS_KEY_ID"]) == 20
    assert path.stat().st_mode & 0o777 == 0o640
    before = path.read_bytes()
    second = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert second.returncode == 0 and "left untouched" in second.stdout and path.read_bytes() == before
