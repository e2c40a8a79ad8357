"""Shared fixtures: a real MLflow tracking server (the same entry script compose runs), free ports, .env files."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent
# The .env keys that hold secrets (make env generates them; they must never leak).
SECRET_KEYS = (
    "FERNET_KEY",
    "AIRFLOW_JWT_SECRET",
    "AIRFLOW_SECRET_KEY",
    "AIRFLOW_ADMIN_PASSWORD",
    "MLFLOW_TRACKING_PASSWORD",
)
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "airflow" / "models"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(url: str, timeout: float = 120, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process serving {url} exited with {proc.returncode}")
        try:
            if requests.get(url, timeout=2).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def stack_env(**extra: str) -> dict[str, str]:
    """The environment for a stack's scripts, without the MLFLOW_* variables other tests (and MLflow's
    set_tracking_uri) leave in this process: the scripts must read the stack's own .env."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}, **extra}


def make_env_file(path: Path, **values: str) -> Path:
    """A .env made exactly as `make env` makes it, with test-specific overrides."""
    sets = [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_env.py"), "--env-file", str(path), *sets],
        check=True,
        capture_output=True,
    )
    return path


@pytest.fixture(scope="session")
def tracking_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """mlflow/tracking-server.sh on a free loopback port with a throwaway store."""
    data = tmp_path_factory.mktemp("mlruns")
    port = free_port()
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "MLFLOW_DATA_DIR": str(data),
        "MLFLOW_HOST": "127.0.0.1",
        "MLFLOW_PORT": str(port),
    }
    log = open(data / "server.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [str(ROOT / "mlflow" / "tracking-server.sh")],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{uri}/health", proc=proc)
        yield uri
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
        log.close()


@pytest.fixture(scope="session")
def trained_run(tracking_server: str) -> str:
    """One real training run (default settings) in the default experiment."""
    import train_model

    return train_model.run(tracking_server, train_model.DEFAULT_EXPERIMENT, train_model.TrainConfig())
