"""The original tutorial's whole flow in one command, on Docker Compose or in local mode.

Usage: python -m scripts.demo compose|local [--seed-flow] [--compose-file FILE ...]

`make demo` runs it in a small venv of the lock's `scripts` group (python-dotenv, tenacity): nothing else on
the host but Docker and python3.

Start the stack, trigger mlops_pipeline through Airflow's REST API and wait for it (printing the quality gate's
decision), wait until the model-server serves the registry's champion (or, with --seed-flow or a pinned
LATEST_MODEL_RUN_ID, run ./update_run_id.sh and recreate it), and print its answer to the original tutorial's payload.
The stack keeps running. `--compose-file` picks the compose files (`make scale-demo`: docker-compose.yml, then
docker-compose.scale.yml); without it, docker compose's default (docker-compose.yml).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from scripts.stackclient import Airflow, http, mlflow_login, registry_champion, run_script, wait_for_model
from scripts.stackenv import COMPOSE_CORE, ROOT, settings, urls, wait_for

DAG_ID = "mlops_pipeline"
SEED_PAYLOAD = {"inputs": [[5.1, 3.5, 1.4, 0.2]]}


def wait_http(url: str, what: str, timeout: float = 180) -> None:
    started = time.monotonic()
    wait_for(f"{what} to answer {url}", lambda: http("GET", url)[0] == 200, timeout, interval=1)
    print(f"  {what} answers ({time.monotonic() - started:.0f} s)", flush=True)


def run(cmd: list[str], **kwargs: object) -> None:
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT, **kwargs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["compose", "local"])
    parser.add_argument(
        "--seed-flow",
        action="store_true",
        help="serve the newest run via ./update_run_id.sh and a model-server restart (the original walkthrough) "
        "instead of the registry's champion",
    )
    parser.add_argument(
        "--compose-file",
        action="append",
        default=[],
        metavar="FILE",
        help="compose mode: a compose file, repeatable, in order (docker compose -f); e.g. docker-compose.yml and "
        "docker-compose.scale.yml for the scale-out variant",
    )
    args = parser.parse_args(argv)
    env_file = Path(os.environ.get("ENV_FILE", ROOT / ".env")).resolve()
    compose = ["docker", "compose", *(arg for name in args.compose_file for arg in ("-f", name))]
    python = sys.executable

    cfg = settings(env_file)
    airflow_url, mlflow_url, model_url = urls(cfg).values()
    pinned = bool(cfg.get("LATEST_MODEL_RUN_ID"))

    print(f"== 1/4 start the stack ({args.mode})", flush=True)
    if args.mode == "compose":
        run([*compose, "up", "-d", "--build", "--wait", *services_to_wait_for(compose, args.compose_file)])
        run([*compose, "up", "-d", "--no-build", "model-server"])
    else:
        try:
            run([python, "-m", "scripts.local", "up"])
        except subprocess.CalledProcessError as exc:
            raise SystemExit(exc.returncode) from None

    print(f"== 2/4 trigger {DAG_ID} through Airflow's REST API and wait", flush=True)
    given = [f"{key}={cfg[key]}" for key in ("RF_N_ESTIMATORS", "RF_MAX_DEPTH", "MIN_ACCURACY") if cfg.get(key)]
    print(f"  from {env_file.name}: {', '.join(given) or 'no training settings'} (the rest: defaults)", flush=True)
    airflow = Airflow.login(cfg)
    airflow.wait_for_dag(DAG_ID)
    dag_run = airflow.trigger(DAG_ID)
    if airflow.wait_for_run(DAG_ID, dag_run) != "success":
        raise SystemExit(f"demo: {DAG_ID} failed; open {airflow_url} and read the task logs")
    gate = airflow.xcom(DAG_ID, dag_run, "register")
    gate = gate if isinstance(gate, dict) else {}
    verdict = (
        f"PROMOTED to {gate.get('alias') or 'champion'}"
        if gate.get("promoted")
        else "NOT promoted (the champion stays)"
    )
    print(f"  quality gate: {gate.get('model')} version {gate.get('version')} {verdict}: {gate.get('reason')}")

    if args.seed_flow or pinned:
        print("== 3/4 point the model-server at the new run (./update_run_id.sh) and recreate it", flush=True)
        run(["./update_run_id.sh", "--env-file", str(env_file)])
        if args.mode == "compose":
            run([*compose, "up", "-d", "--no-build", "--wait", "model-server"])
        else:
            run([python, "-m", "scripts.local", "restart", "model-server"])
        wait_http(f"{model_url}/ping", "model-server")
    else:
        print("== 3/4 the model-server follows the registry's champion by itself", flush=True)
        status, champion = registry_champion(mlflow_url, gate.get("model"), mlflow_login(cfg))
        wait_for_model(model_url, champion if status == 200 else "")

    print("== 4/4 the original tutorial's prediction call", flush=True)
    print(f"$ curl -X POST {model_url}/invocations -H 'Content-Type: application/json' -d '{json.dumps(SEED_PAYLOAD)}'")
    status, answer = http("POST", f"{model_url}/invocations", SEED_PAYLOAD)
    print(json.dumps(answer), flush=True)
    if status != 200:
        raise SystemExit(f"demo: the model-server answered HTTP {status}")

    user = cfg.get("AIRFLOW_ADMIN_USERNAME") or "admin"
    stop = "make local-down" if args.mode == "local" else "make down"
    if args.mode == "compose" and args.compose_file:
        stop = " ".join([*compose, "down"])
    print(f"\nThe stack keeps running ({stop} stops it):")
    print(f"  Airflow UI    {airflow_url}   (login: {user}, password: AIRFLOW_ADMIN_PASSWORD in {env_file.name})")
    print(f"  MLflow UI     {mlflow_url}")
    print(f"  Model server  {model_url}/invocations   (what it serves: {model_url}/model)")
    return 0


def services_to_wait_for(compose: list[str], compose_files: list[str]) -> list[str]:
    """What `up --wait` starts: COMPOSE_CORE for the default file; with other files, every service they define
    (the scale variant adds its engines and airflow-worker), except model-server (unhealthy until a model exists)."""
    if not compose_files:
        return COMPOSE_CORE
    listed = subprocess.run([*compose, "config", "--services"], check=True, cwd=ROOT, capture_output=True, text=True)
    return [name for name in listed.stdout.split() if name != "model-server"]


if __name__ == "__main__":
    run_script("demo", main)
