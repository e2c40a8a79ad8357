"""The one client of the stack's HTTP APIs: Airflow 3's REST API, MLflow's registry and the model-server.

`make demo` (scripts/demo.py), the tests (the browser flow, the compose suites) and the benchmarks all talk to
the stack through this module. Standard library only, so `make demo` needs nothing beyond the `scripts` group.
"""

from __future__ import annotations

import base64
import json
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import NoReturn
from urllib.parse import quote

from mlops_pipeline.schema import CHAMPION, MODEL_NAME
from scripts.stackenv import SettingsError, urls, wait_for


class AirflowError(RuntimeError):
    """Airflow refused a call or answered something unexpected; the message says which call and what it said."""


def http(
    method: str, url: str, body: object = None, headers: Mapping[str, str] | None = None, timeout: float = 30
) -> tuple[int, object]:
    """One JSON request; returns (status, decoded body). Raises OSError when nothing answers."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - our own http:// URLs
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw) if raw else {}
    except ValueError:
        return status, raw.decode(errors="replace")


class Airflow:
    """The calls of Airflow 3's REST API (/api/v2) this project makes, authenticated with a JWT from /auth/token."""

    def __init__(self, base_url: str, username: str, password: str) -> None:
        self.base = base_url.rstrip("/")
        status, body = http("POST", f"{self.base}/auth/token", {"username": username, "password": password})
        if status in (401, 403):
            raise AirflowError(f"Airflow refused the login of '{username}' (HTTP {status})")
        if status >= 300 or not isinstance(body, dict):
            raise AirflowError(f"Airflow's /auth/token answered HTTP {status}: {body}")
        self.headers = {"Authorization": f"Bearer {body['access_token']}"}

    @classmethod
    def login(cls, cfg: Mapping[str, str]) -> Airflow:
        """The client of the stack that `cfg` (its .env) describes, logged in as its admin."""
        return cls(urls(cfg)["airflow"], cfg.get("AIRFLOW_ADMIN_USERNAME") or "admin", cfg["AIRFLOW_ADMIN_PASSWORD"])

    def status(self, path: str) -> int:
        """The HTTP status of GET /api/v2{path}, for "does it exist yet"."""
        return http("GET", f"{self.base}/api/v2{path}", headers=self.headers)[0]

    def call(
        self, method: str, path: str, body: object = None, ok: tuple[int, ...] = (200, 201), tries: int = 1
    ) -> dict:
        """One call of /api/v2; AirflowError unless the status is in `ok`. `tries` > 1 (for idempotent calls only):
        an HTTP 500 is tried again (SQLite's lock, see trigger)."""
        for attempt in range(1, tries + 1):
            status, answer = http(method, f"{self.base}/api/v2{path}", body, self.headers)
            if status != 500 or attempt == tries:
                break
            time.sleep(attempt)
        if status not in ok:
            raise AirflowError(f"{method} /api/v2{path} answered HTTP {status}: {answer}")
        return answer if isinstance(answer, dict) else {}

    def wait_for_dag(self, dag_id: str, timeout: float = 180) -> None:
        """The dag-processor parses new files soon after it starts; wait until the DAG is known."""
        wait_for(f"Airflow to know the DAG {dag_id}", lambda: self.status(f"/dags/{dag_id}") == 200, timeout, 2)

    def set_paused(self, dag_id: str, paused: bool) -> None:
        answer = self.call("PATCH", f"/dags/{dag_id}", {"is_paused": paused}, tries=5)
        if answer.get("is_paused") is not paused:
            raise AirflowError(f"{dag_id}: is_paused is {answer.get('is_paused')} after setting it to {paused}")

    def trigger(self, dag_id: str, conf: dict | None = None, tries: int = 5) -> str:
        """Unpause the DAG and start a run of it now; returns the DAG run's ID. On SQLite (the default stack, local
        mode) the api-server may refuse the insert with HTTP 500 "Database error" while the scheduler holds the
        database's lock: it is tried again with the same run ID, so a 409 then means an earlier try went through."""
        self.set_paused(dag_id, False)
        run_id = f"manual__{datetime.now(UTC).isoformat()}_{uuid.uuid4().hex[:6]}"
        body = {"dag_run_id": run_id, "logical_date": None, "conf": conf or {}}
        for attempt in range(1, tries + 1):
            status, answer = http("POST", f"{self.base}/api/v2/dags/{dag_id}/dagRuns", body, self.headers)
            if status in (200, 201) or (status == 409 and attempt > 1):
                return run_id
            if status != 500 or attempt == tries:
                raise AirflowError(f"POST /api/v2/dags/{dag_id}/dagRuns answered HTTP {status}: {answer}")
            time.sleep(attempt)
        raise AssertionError("unreachable")

    @staticmethod
    def run_path(dag_id: str, dag_run_id: str) -> str:
        return f"/dags/{dag_id}/dagRuns/{quote(dag_run_id, safe='')}"

    def dag_run(self, dag_id: str, dag_run_id: str) -> dict:
        return self.call("GET", self.run_path(dag_id, dag_run_id))

    def task_states(self, dag_id: str, dag_run_id: str) -> dict[str, str | None]:
        answer = self.call("GET", f"{self.run_path(dag_id, dag_run_id)}/taskInstances")
        return {ti["task_id"]: ti["state"] for ti in answer["task_instances"]}

    def xcom(self, dag_id: str, dag_run_id: str, task_id: str) -> object:
        """The task's return value (its `return_value` XCom), decoded when Airflow hands it over as JSON text."""
        path = f"{self.run_path(dag_id, dag_run_id)}/taskInstances/{task_id}/xcomEntries/return_value"
        value = self.call("GET", path).get("value")
        if isinstance(value, str) and value[:1] in ('"', "{", "["):
            return json.loads(value)
        return value

    def hitl_details(self, dag_id: str, dag_run_id: str) -> list[dict]:
        """The run's questions to a person (Airflow's human-in-the-loop tasks: subject, body, options, and the
        task_instance with its state), answered or not."""
        return self.call("GET", f"{self.run_path(dag_id, dag_run_id)}/hitlDetails").get("hitl_details", [])

    def answer(self, dag_id: str, dag_run_id: str, task_id: str, option: str) -> dict:
        """Answer a waiting human-in-the-loop task as the logged-in user (what Required actions' buttons do)."""
        path = f"{self.run_path(dag_id, dag_run_id)}/taskInstances/{task_id}/-1/hitlDetails"
        return self.call("PATCH", path, {"chosen_options": [option], "params_input": {}})

    def runs(self, dag_id: str) -> list[dict]:
        """The DAG's runs, newest first (each with dag_run_id, run_type, state)."""
        answer = self.call("GET", f"/dags/{dag_id}/dagRuns?order_by=-run_after&limit=100")
        return answer.get("dag_runs", [])

    def failed(self, dag_id: str, dag_run_id: str) -> list[dict]:
        """The run's failed task instances (task_id, map_index, try_number), in the order they ran."""
        answer = self.call("GET", f"{self.run_path(dag_id, dag_run_id)}/taskInstances?state=failed&order_by=start_date")
        return answer["task_instances"]

    def task_log_lines(
        self, dag_id: str, dag_run_id: str, task_id: str, try_number: int = 1, map_index: int = -1
    ) -> list:
        """A task try's log: text lines, and structured lines as dicts (Airflow answers JSON only when asked)."""
        path = f"{self.run_path(dag_id, dag_run_id)}/taskInstances/{task_id}/logs/{try_number}?map_index={map_index}"
        headers = {**self.headers, "Accept": "application/json"}
        status, answer = http("GET", f"{self.base}/api/v2{path}", headers=headers)
        if status != 200 or not isinstance(answer, dict):
            raise AirflowError(f"GET /api/v2{path} answered HTTP {status}: {answer}")
        content = answer.get("content", "")
        return content if isinstance(content, list) else str(content).splitlines()

    def task_error(
        self, dag_id: str, dag_run_id: str, task_id: str, try_number: int = 1, map_index: int = -1
    ) -> dict | None:
        """The exception a failed task try ended with, as its structured log records it ({"exc_type": ...,
        "exc_value": ...}), or None."""
        lines = self.task_log_lines(dag_id, dag_run_id, task_id, try_number, map_index)
        errors = [e for line in lines if isinstance(line, dict) for e in line.get("error_detail") or []]
        return errors[-1] if errors else None

    def why_failed(self, dag_id: str, dag_run_id: str) -> str:
        """The first failed task's own words (its exception), for an error message."""
        for ti in self.failed(dag_id, dag_run_id):
            error = self.task_error(dag_id, dag_run_id, ti["task_id"], ti["try_number"], ti["map_index"])
            if error:
                return f"{ti['task_id']}: {error['exc_type']}: {error['exc_value']}"
        return f"see the task logs of {dag_id} in the Airflow UI"

    def wait_for_run(self, dag_id: str, dag_run_id: str, timeout: float = 900, progress: bool = True) -> str:
        """The run's final state, "success" or "failed"; with `progress`, prints each state change."""
        started, seen = time.monotonic(), []

        def finished() -> str | None:
            state = self.dag_run(dag_id, dag_run_id)["state"]
            if progress and (not seen or seen[-1] != state):
                print(f"  [{time.monotonic() - started:5.0f} s] {dag_id} is {state}", flush=True)
            seen.append(state)
            return state if state in ("success", "failed") else None

        return wait_for(f"{dag_id} run {dag_run_id} to finish", finished, timeout, interval=2)


def mlflow_login(cfg: Mapping[str, str]) -> dict[str, str]:
    """Basic-auth header for MLflow when MLFLOW_AUTH is on (MLflow's standard client variables)."""
    if cfg.get("MLFLOW_AUTH", "false").lower() not in ("true", "1", "yes"):
        return {}
    token = f"{cfg.get('MLFLOW_TRACKING_USERNAME') or 'admin'}:{cfg.get('MLFLOW_TRACKING_PASSWORD', '')}"
    return {"Authorization": "Basic " + base64.b64encode(token.encode()).decode()}


def registry_champion_version(mlflow_url: str, name: str | None, headers: Mapping[str, str]) -> tuple[int, dict]:
    """The registry's current champion (MLflow REST: its version, run_id, ...), whatever the last gate decided."""
    status, body = http(
        "GET",
        f"{mlflow_url}/api/2.0/mlflow/registered-models/alias?name={quote(name or MODEL_NAME)}&alias={CHAMPION}",
        headers=headers,
    )
    return status, body.get("model_version", {}) if isinstance(body, dict) else {}


def registry_champion(mlflow_url: str, name: str | None, headers: Mapping[str, str]) -> tuple[int, str]:
    """The registry's current champion version number ("" when there is none)."""
    status, version = registry_champion_version(mlflow_url, name, headers)
    return status, version.get("version", "")


def wait_for_model(model_url: str, version: str, timeout: float = 180) -> dict:
    """Wait until the model-server reports serving `version` ("" for any) and return its /model answer. Each of
    its workers polls the registry on its own, so the answer must hold on 10 connections in a row."""
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


def run_script(name: str, main: Callable[[], int]) -> NoReturn:
    """A host script's exit: main's status, or one line naming the script and what the stack said."""
    try:
        sys.exit(main())
    except (AirflowError, SettingsError, TimeoutError) as exc:
        sys.exit(f"{name}: {exc}")
