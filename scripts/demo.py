"""The original tutorial's whole flow in one command, on Docker Compose or in local mode.

Usage: python scripts/demo.py compose|local [--seed-flow] [--compose-file FILE ...]

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
import base64
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stackenv import ROOT, SettingsError, settings, wait_for  # noqa: E402

DAG_ID = "mlops_pipeline"
SEED_PAYLOAD = {"inputs": [[5.1, 3.5, 1.4, 0.2]]}
# Every long-running service except model-server, which stays unhealthy until a run ID exists.
COMPOSE_CORE = ["mlflow-server", "airflow-webserver", "airflow-scheduler", "airflow-dag-processor"]


def http(method: str, url: str, body: object = None, headers: dict[str, str] | None = None) -> tuple[int, object]:
    """One JSON request; returns (status, decoded body). Raises OSError when nothing answers."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - our own http:// URLs
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw) if raw else {}
    except ValueError:
        return status, raw.decode(errors="replace")


class Airflow:
    """The few calls of Airflow 3's REST API (/api/v2) the flow needs, authenticated with a JWT."""

    def __init__(self, base_url: str, username: str, password: str) -> None:
        self.base = base_url.rstrip("/")
        status, body = http("POST", f"{self.base}/auth/token", {"username": username, "password": password})
        if status in (401, 403):
            raise SystemExit(f"demo: Airflow refused the login of '{username}' (HTTP {status})")
        if status >= 300 or not isinstance(body, dict):
            raise SystemExit(f"demo: Airflow's /auth/token answered HTTP {status}: {body}")
        self.headers = {"Authorization": f"Bearer {body['access_token']}"}

    def call(self, method: str, path: str, body: object = None, ok: tuple[int, ...] = (200, 201)) -> dict:
        status, answer = http(method, f"{self.base}/api/v2{path}", body, self.headers)
        if status not in ok:
            raise SystemExit(f"demo: {method} /api/v2{path} answered HTTP {status}: {answer}")
        return answer if isinstance(answer, dict) else {}

    def wait_for_dag(self, dag_id: str, timeout: float = 180) -> None:
        """The dag-processor parses new files within seconds of starting; wait until the DAG is known."""

        def known() -> bool:
            return http("GET", f"{self.base}/api/v2/dags/{dag_id}", headers=self.headers)[0] == 200

        wait_for(f"Airflow to know the DAG {dag_id}", known, timeout, interval=2)

    def trigger(self, dag_id: str, conf: dict | None = None) -> str:
        self.call("PATCH", f"/dags/{dag_id}", {"is_paused": False})
        run = self.call("POST", f"/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf or {}})
        return run["dag_run_id"]

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 900, progress: bool = True) -> str:
        """The run's final state, "success" or "failed"; prints each state change."""
        started, seen = time.monotonic(), []

        def finished() -> str | None:
            state = self.call("GET", f"/dags/{dag_id}/dagRuns/{urllib.request.quote(run_id)}")["state"]
            if progress and (not seen or seen[-1] != state):
                print(f"  [{time.monotonic() - started:5.0f} s] {dag_id} is {state}", flush=True)
            seen.append(state)
            return state if state in ("success", "failed") else None

        return wait_for(f"{dag_id} run {run_id} to finish", finished, timeout, interval=2)


def wait_http(url: str, what: str, timeout: float = 180) -> None:
    started = time.monotonic()
    wait_for(f"{what} to answer {url}", lambda: http("GET", url)[0] == 200, timeout, interval=1)
    print(f"  {what} answers ({time.monotonic() - started:.0f} s)", flush=True)


def run(cmd: list[str], **kwargs: object) -> None:
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT, **kwargs)


def wait_for_model(model_url: str, version: str, timeout: float = 180) -> dict:
    """Wait until the model-server reports serving `version` (it polls the registry by itself). Each of its
    workers polls on its own, so the answer must hold on 10 connections in a row."""
    started, in_a_row = time.monotonic(), []

    def serving() -> dict | None:
        status, info = http("GET", f"{model_url}/model")
        ok = status == 200 and isinstance(info, dict) and (not version or info.get("model_version") == version)
        if ok:
            in_a_row.append(info)
        else:
            in_a_row.clear()
        return info if len(in_a_row) >= 10 else None

    info = wait_for(f"the model-server to serve version {version or 'any'}", serving, timeout, interval=0.1)
    print(f"  model-server serves {info.get('model_uri')} ({time.monotonic() - started:.0f} s)", flush=True)
    return info


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
    host = "127.0.0.1"
    airflow_url = f"http://{host}:{cfg.get('AIRFLOW_PORT') or 8080}"
    mlflow_url = f"http://{host}:{cfg.get('MLFLOW_PORT') or 5000}"
    model_url = f"http://{host}:{cfg.get('MODEL_SERVER_PORT') or 5001}"
    pinned = bool(cfg.get("LATEST_MODEL_RUN_ID"))

    print(f"== 1/4 start the stack ({args.mode})", flush=True)
    if args.mode == "compose":
        run([*compose, "up", "-d", "--build", "--wait", *services_to_wait_for(compose, args.compose_file)])
        run([*compose, "up", "-d", "--no-build", "model-server"])
    else:
        try:
            run([python, "scripts/local.py", "up"])
        except subprocess.CalledProcessError as exc:
            raise SystemExit(exc.returncode) from None

    print(f"== 2/4 trigger {DAG_ID} through Airflow's REST API and wait", flush=True)
    print(
        f"  hyper-parameters from {env_file.name}: RF_N_ESTIMATORS={cfg.get('RF_N_ESTIMATORS', '100')} "
        f"RF_MAX_DEPTH={cfg.get('RF_MAX_DEPTH', '3')}, MIN_ACCURACY={cfg.get('MIN_ACCURACY', '0.9')}",
        flush=True,
    )
    airflow = Airflow(airflow_url, cfg.get("AIRFLOW_ADMIN_USERNAME") or "admin", cfg["AIRFLOW_ADMIN_PASSWORD"])
    airflow.wait_for_dag(DAG_ID)
    dag_run = airflow.trigger(DAG_ID)
    if airflow.wait_for_run(DAG_ID, dag_run) != "success":
        raise SystemExit(f"demo: {DAG_ID} failed; open {airflow_url} and read the task logs")
    gate = airflow.call(
        "GET", f"/dags/{DAG_ID}/dagRuns/{urllib.request.quote(dag_run)}/taskInstances/register/xcomEntries/return_value"
    ).get("value")
    gate = json.loads(gate) if isinstance(gate, str) else gate or {}
    verdict = "PROMOTED to champion" if gate.get("promoted") else "NOT promoted (the champion stays)"
    print(f"  quality gate: {gate.get('model')} version {gate.get('version')} {verdict}: {gate.get('reason')}")

    if args.seed_flow or pinned:
        print("== 3/4 point the model-server at the new run (./update_run_id.sh) and recreate it", flush=True)
        run(["./update_run_id.sh", "--env-file", str(env_file)])
        if args.mode == "compose":
            run([*compose, "up", "-d", "--no-build", "--wait", "model-server"])
        else:
            run([python, "scripts/local.py", "restart", "model-server"])
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


def mlflow_login(cfg: dict[str, str]) -> dict[str, str]:
    """Basic-auth header for MLflow when MLFLOW_AUTH is on (MLflow's standard client variables)."""
    if cfg.get("MLFLOW_AUTH", "false").lower() not in ("true", "1", "yes"):
        return {}
    token = f"{cfg.get('MLFLOW_TRACKING_USERNAME') or 'admin'}:{cfg.get('MLFLOW_TRACKING_PASSWORD', '')}"
    return {"Authorization": "Basic " + base64.b64encode(token.encode()).decode()}


def registry_champion(mlflow_url: str, name: str | None, headers: dict[str, str]) -> tuple[int, str]:
    """The registry's current champion version (MLflow REST), whatever this run's gate decided."""
    status, body = http(
        "GET",
        f"{mlflow_url}/api/2.0/mlflow/registered-models/alias?name={urllib.request.quote(name or 'iris-classifier')}"
        "&alias=champion",
        headers=headers,
    )
    version = body.get("model_version", {}).get("version", "") if isinstance(body, dict) else ""
    return status, version


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (SettingsError, TimeoutError) as exc:
        sys.exit(f"demo: {exc}")
