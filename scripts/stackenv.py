"""Read the stack's settings the way docker compose does, so local mode uses the compose file's own values.

`.env` parsing and `${VAR:-default}` interpolation follow the Compose spec for the subset this project uses.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"

_ASSIGN = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=(.*)$")
_VAR = re.compile(r"\$(?:\$|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))")


class SettingsError(ValueError):
    """A required setting is missing; the message says which one and what to do."""


def read_env_file(path: Path) -> dict[str, str]:
    """Parse KEY=value lines: comments, blank lines, `export`, quotes, CRLF and inline ` #` comments."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        match = _ASSIGN.match(line)
        if not match:
            continue
        key, raw = match.group(1), match.group(2).strip()
        if raw[:1] in {"'", '"'} and raw.count(raw[0]) >= 2:
            raw = raw[1 : raw.index(raw[0], 1)]
        else:
            raw = re.split(r"\s+#", raw, maxsplit=1)[0].strip()
        values[key] = raw
    return values


def interpolate(text: str, env: Mapping[str, str]) -> str:
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

    return _VAR.sub(substitute, text)


def _interpolate_tree(node: Any, env: Mapping[str, str]) -> Any:  # noqa: ANN401 - YAML is untyped
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [_interpolate_tree(item, env) for item in node]
    if isinstance(node, dict):
        return {key: _interpolate_tree(value, env) for key, value in node.items()}
    return node


def compose_services(env: Mapping[str, str], compose_file: Path = COMPOSE_FILE) -> dict[str, dict[str, Any]]:
    """The compose file's services with anchors merged and variables filled in from `env`."""
    import yaml

    document = yaml.safe_load(compose_file.read_text())
    return _interpolate_tree(document["services"], env)


def settings(env_file: Path) -> dict[str, str]:
    """What compose would see: the process environment wins over .env (Compose's precedence)."""
    if not env_file.is_file():
        raise SettingsError(f"{env_file} does not exist: run 'make env' first")
    return {**read_env_file(env_file), **os.environ}
