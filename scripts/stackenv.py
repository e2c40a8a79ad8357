"""The stack's settings and the one way this project waits for something.

- `settings(env_file)`: what docker compose sees, `.env` read by python-dotenv with the process environment
  winning (Compose's precedence). Every Python script, test and benchmark reads `.env` through this.
- `compose_services(env)`: the compose file's services with anchors merged and `${VAR:-default}` filled in,
  so local mode runs each service with its compose command and environment.
- `wait_for(what, check, timeout)`: poll until `check()` returns something truthy (tenacity does the polling).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from dotenv import dotenv_values
from tenacity import RetryError, Retrying, retry_if_exception_type, retry_if_result, stop_after_delay, wait_fixed

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
# The default stack's long-running services except model-server, which stays unhealthy until a model exists:
# what `up --wait` waits for.
COMPOSE_CORE = ["mlflow-server", "airflow-webserver", "airflow-scheduler", "airflow-dag-processor"]
T = TypeVar("T")

# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}, $NAME and $$ (a literal $).
VARIABLE = re.compile(r"\$(?:\$|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))")


# The host ports .env publishes the services on (docker-compose.yml's defaults where .env says nothing).
PORTS = {"airflow": ("AIRFLOW_PORT", 8080), "mlflow": ("MLFLOW_PORT", 5000), "model": ("MODEL_SERVER_PORT", 5001)}


def ports(cfg: Mapping[str, str]) -> dict[str, int]:
    return {service: int(cfg.get(key) or default) for service, (key, default) in PORTS.items()}


def urls(cfg: Mapping[str, str]) -> dict[str, str]:
    """Where this machine reaches each service ("airflow", "mlflow", "model")."""
    return {service: f"http://127.0.0.1:{port}" for service, port in ports(cfg).items()}


class SettingsError(ValueError):
    """A required setting is missing; the message says which one and what to do."""


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=value pairs of a .env file (python-dotenv; a key without `=` counts as empty)."""
    return {key: value or "" for key, value in dotenv_values(path, interpolate=False).items()}


def settings(env_file: Path) -> dict[str, str]:
    """What compose would see: the process environment wins over .env (Compose's precedence)."""
    if not env_file.is_file():
        raise SettingsError(f"{env_file} does not exist: run 'make env' first")
    return {**read_env_file(env_file), **os.environ}


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's variable syntax, for the forms this project's compose file uses."""

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(4)
        op, arg = match.group(2), match.group(3) or ""
        value = env.get(name)
        unset = value is None or (op is not None and op.startswith(":") and value == "")
        if op in {"-", ":-"} and unset:
            return arg
        if op in {"?", ":?"} and unset:
            raise SettingsError(f"{name}: {arg or 'required but not set'}")
        return value or ""

    return VARIABLE.sub(substitute, text)


def interpolate_tree(node: Any, env: Mapping[str, str]) -> Any:  # noqa: ANN401 - YAML is untyped
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [interpolate_tree(item, env) for item in node]
    if isinstance(node, dict):
        return {key: interpolate_tree(value, env) for key, value in node.items()}
    return node


def compose_services(env: Mapping[str, str], compose_file: Path = COMPOSE_FILE) -> dict[str, dict[str, Any]]:
    """The compose file's services with anchors merged and variables filled in from `env`."""
    import yaml

    document = yaml.safe_load(compose_file.read_text())
    return interpolate_tree(document["services"], env)


def wait_for(what: str, check: Callable[[], T], timeout: float, interval: float = 0.5) -> T:
    """Call `check` every `interval` s until it returns something truthy, and return that. An OSError (a refused
    connection, a requests error) counts as "not yet". After `timeout` s: TimeoutError naming `what`."""
    retrying = Retrying(
        stop=stop_after_delay(timeout),
        wait=wait_fixed(interval),
        retry=retry_if_result(lambda result: not result) | retry_if_exception_type(OSError),
    )
    try:
        return retrying(check)
    except RetryError as exc:
        last = exc.last_attempt
        detail = repr(last.exception()) if last.failed else repr(last.result())
        raise TimeoutError(f"waited {timeout:.0f} s for {what} (last: {detail})") from None
