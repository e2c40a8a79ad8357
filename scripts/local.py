"""Local mode: the compose stack's services as local processes, managed by supervisord (no Docker needed).

Usage: python -m scripts.local up | down | status | restart SERVICE | exec SERVICE

Each service runs with the command and environment of its docker-compose.yml service (read from that file),
with container paths and host names mapped to this checkout. State (databases, artifacts, logs, pids) lives
in one folder, .local/ by default (LOCAL_STATE_DIR). Settings come from .env (ENV_FILE).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from scripts.stackenv import COMPOSE_CORE, ROOT, SettingsError, compose_services, ports, settings, wait_for

ENV_FILE = Path(os.environ.get("ENV_FILE", ROOT / ".env")).resolve()
STATE = Path(os.environ.get("LOCAL_STATE_DIR", ROOT / ".local")).resolve()
VENV_BIN = Path(sys.executable).parent
LONG_RUNNING = [*COMPOSE_CORE, "model-server"]
EXECUTION_API = "AIRFLOW__CORE__EXECUTION_API_SERVER_URL"  # healthcheck.py asks the api-server behind it
AIRFLOW_SERVICES = {"airflow-init", "airflow-webserver", "airflow-scheduler", "airflow-dag-processor"}
# Where the images keep the scripts, and where they are in this checkout.
PATH_MAP = {"/opt/airflow/bin/": ROOT / "airflow", "/opt/mlflow/bin/": ROOT / "mlflow"}


def local_overrides(service: str, cfg: dict[str, str]) -> dict[str, str]:
    """Container paths and service host names -> this machine. Everything else is the compose file's."""
    p = ports(cfg)
    mlflow_uri = f"http://127.0.0.1:{p['mlflow']}"
    if service in AIRFLOW_SERVICES:
        return {
            "AIRFLOW_HOME": str(STATE / "airflow"),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "airflow" / "dags"),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{STATE}/airflow/airflow.db",
            EXECUTION_API: f"http://127.0.0.1:{p['airflow']}/execution/",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(p["airflow"]),
            "MLFLOW_TRACKING_URI": mlflow_uri,
            "INFERENCE_LOG_DIR": str(STATE / "inference-log"),  # the model-server's, read by monitor_model
        }
    if service == "mlflow-server":
        return {"MLFLOW_DATA_DIR": str(STATE / "mlruns"), "MLFLOW_HOST": "127.0.0.1", "MLFLOW_PORT": str(p["mlflow"])}
    if service == "model-server":
        return {
            "MLFLOW_TRACKING_URI": mlflow_uri,
            "MODEL_SERVER_HOST": "127.0.0.1",
            "MODEL_SERVER_PORT": str(p["model"]),
            "INFERENCE_LOG_DIR": str(STATE / "inference-log"),
        }
    return {}


def command_and_env(service: str) -> tuple[list[str], dict[str, str]]:
    cfg = settings(ENV_FILE)
    spec = compose_services(cfg)[service]
    command = [str(c) for c in spec["command"]]
    for prefix, local_dir in PATH_MAP.items():
        command = [str(local_dir / c[len(prefix) :]) if c.startswith(prefix) else c for c in command]
    if service in AIRFLOW_SERVICES:  # the Airflow image's ENTRYPOINT
        command = [str(ROOT / "airflow" / "entrypoint.sh"), *command]
    env = {**os.environ, **{k: str(v) for k, v in (spec.get("environment") or {}).items()}}
    env.update(local_overrides(service, cfg))
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"  # the scripts exec the venv's servers by name
    env.setdefault("PYTHONUNBUFFERED", "1")
    return command, env


def supervisor_conf() -> Path:
    conf = STATE / "supervisord.conf"
    programs = []
    for name in LONG_RUNNING:
        programs.append(
            f"[program:{name}]\n"
            f"command={shlex.quote(sys.executable)} -m scripts.local exec {name}\n"
            f"directory={ROOT}\n"
            "autostart=false\nautorestart=true\nstartsecs=3\nstopwaitsecs=20\n"
            "stopasgroup=true\nkillasgroup=true\nredirect_stderr=true\n"
            f"stdout_logfile={STATE}/logs/{name}.log\nstdout_logfile_maxbytes=10MB\nstdout_logfile_backups=1\n"
        )
    conf.write_text(
        "[unix_http_server]\n"
        f"file={STATE}/supervisor.sock\nchmod=0700\n\n"
        "[supervisord]\n"
        f"logfile={STATE}/logs/supervisord.log\npidfile={STATE}/supervisord.pid\n"
        f"childlogdir={STATE}/logs\n"
        f"environment=ENV_FILE={shlex.quote(str(ENV_FILE))},LOCAL_STATE_DIR={shlex.quote(str(STATE))}\n\n"
        "[rpcinterface:supervisor]\n"
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\n"
        "[supervisorctl]\n"
        f"serverurl=unix://{STATE}/supervisor.sock\n\n" + "\n".join(programs)
    )
    return conf


def env_digest() -> str:
    return hashlib.sha256(ENV_FILE.read_bytes()).hexdigest()


def supervisorctl(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VENV_BIN / "supervisorctl"), "-c", str(STATE / "supervisord.conf"), *args],
        check=check,
        text=True,
        capture_output=True,
    )


def supervisord_pid() -> int | None:
    try:
        pid = int((STATE / "supervisord.pid").read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def wait_http(name: str, url: str, timeout: float = 180.0) -> None:
    started = time.monotonic()
    try:
        wait_for(f"{name} to answer {url}", lambda: requests.get(url, timeout=3).ok, timeout, interval=1)
    except TimeoutError as exc:
        raise SystemExit(f"local: {exc}; see {STATE}/logs/{name}.log") from None
    print(f"  {name} is up ({time.monotonic() - started:.0f} s)", flush=True)


def up() -> None:
    cfg = settings(ENV_FILE)
    p = ports(cfg)
    for sub in ("logs", "airflow", "mlruns"):
        (STATE / sub).mkdir(parents=True, exist_ok=True)
    if supervisord_pid() is None:
        subprocess.run([str(VENV_BIN / "supervisord"), "-c", str(supervisor_conf())], check=True)
        # supervisorctl status exits 3 while programs are stopped: the daemon answers, which is all we need.
        wait_for("supervisord to answer", lambda: supervisorctl("status", check=False).returncode in (0, 3), 10, 0.2)
    else:
        # Services read .env when they start: restart them if it changed since (e.g. a new RF_MAX_DEPTH).
        if (STATE / "env.sha256").is_file() and (STATE / "env.sha256").read_text() != env_digest():
            print("local: .env changed since the services started; restarting them", flush=True)
            supervisorctl("stop", "all", check=False)
    (STATE / "env.sha256").write_text(env_digest())
    print(f"local: starting the stack (state in {STATE}, logs in {STATE}/logs)", flush=True)
    supervisorctl("start", "mlflow-server", check=False)
    init_cmd, init_env = command_and_env("airflow-init")
    with open(STATE / "logs" / "airflow-init.log", "w") as log:
        if subprocess.run(init_cmd, env=init_env, stdout=log, stderr=subprocess.STDOUT).returncode != 0:
            raise SystemExit(f"local: airflow-init failed; see {STATE}/logs/airflow-init.log")
    print("  airflow-init done (database migrated, admin user present)", flush=True)
    supervisorctl("start", *LONG_RUNNING[1:], check=False)
    wait_http("mlflow-server", f"http://127.0.0.1:{p['mlflow']}/health")
    wait_http("airflow-webserver", f"http://127.0.0.1:{p['airflow']}/api/v2/monitor/health")
    _, env = command_and_env("airflow-scheduler")
    try:  # the compose healthcheck's own script, which asks the api-server about the scheduler's heartbeat
        wait_for(
            "airflow-scheduler to be healthy",
            lambda: (
                subprocess.run(
                    [sys.executable, str(ROOT / "airflow" / "healthcheck.py"), "scheduler", env[EXECUTION_API]],
                    env=env,
                    capture_output=True,
                ).returncode
                == 0
            ),
            180,
            interval=1,
        )
    except TimeoutError as exc:
        raise SystemExit(f"local: {exc}; see {STATE}/logs/airflow-scheduler.log") from None
    print("  airflow-scheduler is healthy", flush=True)


def down() -> None:
    pid = supervisord_pid()
    if pid is None:
        print("local: not running")
        return
    supervisorctl("shutdown", check=False)  # stops every program (whole process groups), then itself
    try:
        wait_for("supervisord to stop", lambda: supervisord_pid() is None, 60)
    except TimeoutError:
        os.kill(pid, signal.SIGKILL)
    print("local: stopped")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("up", help="start every service and wait until it answers")
    sub.add_parser("down", help="stop every process this folder's supervisord started")
    sub.add_parser("status", help="show each service's state")
    sub.add_parser("restart", help="restart one service").add_argument("service", choices=LONG_RUNNING)
    sub.add_parser("exec", help="(used by supervisord) run one service in the foreground").add_argument(
        "service", choices=[*LONG_RUNNING, "airflow-init"]
    )
    args = parser.parse_args(argv)
    try:
        if args.action == "exec":
            command, env = command_and_env(args.service)
            os.execvpe(command[0], command, env)
        elif args.action == "up":
            up()
        elif args.action == "down":
            down()
        elif args.action == "status":
            if supervisord_pid() is None:
                print("local: not running")
                return 3
            print(supervisorctl("status", check=False).stdout, end="")
        elif args.action == "restart":
            print(supervisorctl("restart", args.service, check=False).stdout, end="")
    except SettingsError as exc:
        print(f"local: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
