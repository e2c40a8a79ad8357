"""The README's UI walkthrough in a headless Chromium, against a local-mode stack of its own.

Brings up `scripts/local.py up` with a throwaway .env (free ports) and state folder, runs ui_flow.run_ui_flow
(login, unpause with the toggle, Trigger, watch the run go green; MLflow from its home page: the Model training
switch, the run's parameters and metrics, both plots, the registered model with its champion alias), publishes the
named screens as `make screenshots` does, and always brings the stack down again. Screenshots:
tests/artifacts/browser/local/.
Skipped without /usr/bin/chromium (apt-get install chromium); REQUIRE_BROWSER=1 makes that a failure.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import ROOT, free_port, make_env_file, stack_env
from scripts.browser import require_chromium
from scripts.screenshots import SCREENS, publish
from scripts.stackclient import registry_champion
from scripts.stackenv import read_env_file
from scripts.ui_flow import run_ui_flow

pytestmark = [pytest.mark.local, pytest.mark.browser]

SHOTS = ROOT / "tests" / "artifacts" / "browser" / "local"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def pids_mentioning(text: str) -> dict[int, str]:
    """Processes whose command line or environment names `text` (this stack's private state folder)."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environ = (proc / "environ").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if text in cmdline or text in environ:
            found[int(proc.name)] = cmdline[:160]
    return found


def local(action: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scripts.local", action],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A local-mode stack on free ports with its own .env and state; always stopped afterwards."""
    require_chromium()  # before spending minutes on a stack nobody can look at
    tmp = tmp_path_factory.mktemp("ui-local")
    ports = {"AIRFLOW_PORT": free_port(), "MLFLOW_PORT": free_port(), "MODEL_SERVER_PORT": free_port()}
    env_file = make_env_file(tmp / ".env", **{k: str(v) for k, v in ports.items()})
    values = read_env_file(env_file)
    state = tmp / "state"
    env = stack_env(ENV_FILE=str(env_file), LOCAL_STATE_DIR=str(state))
    try:
        up = local("up", env, timeout=900)
        if up.returncode != 0:
            logs = "".join(
                f"\n--- {log.name} (tail)\n{log.read_text(errors='replace')[-2000:]}"
                for log in sorted((state / "logs").glob("*.log"))
            )
            pytest.fail(f"local.py up failed ({up.returncode}):\n{up.stdout[-3000:]}\n{up.stderr[-3000:]}{logs}")
        yield {
            "airflow_url": f"http://127.0.0.1:{ports['AIRFLOW_PORT']}",
            "mlflow_url": f"http://127.0.0.1:{ports['MLFLOW_PORT']}",
            "username": values.get("AIRFLOW_ADMIN_USERNAME") or "admin",
            "password": values["AIRFLOW_ADMIN_PASSWORD"],
            "state": str(state),
        }
    finally:
        down = local("down", env, timeout=180)
        leftovers = pids_mentioning(str(state))
        for pid in leftovers:  # only processes of this stack: they name its private state folder
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        assert down.returncode == 0, f"local.py down failed: {down.stdout}\n{down.stderr}"
        assert not leftovers, f"local.py down left processes behind (killed now): {leftovers}"


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk comes first
    return width, height


def test_readme_ui_flow_in_a_browser(local_stack: dict[str, str], tmp_path: Path) -> None:
    result = run_ui_flow(
        local_stack["airflow_url"],
        local_stack["mlflow_url"],
        local_stack["username"],
        local_stack["password"],
        SHOTS,
        pause_first=True,  # so the UI's pause toggle is exercised too (this stack creates DAGs unpaused)
    )
    (SHOTS / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["timings_s"]))

    assert result["dag_run_state"] == "success", result
    assert result["triggered_by"] == "ui", f"the run was not triggered from the UI: {result['triggered_by']}"
    assert result["was_paused"] is True, "the DAG was paused for the test, but the flow did not click its toggle"
    assert len(result["mlflow_run_id"]) == 32, result["mlflow_run_id"]
    # The run's Overview showed the seed's hyper-parameters (ui_flow checked the page against MLflow's REST answer).
    assert result["run_params"] == {"n_estimators": "100", "max_depth": "3"}, result["run_params"]
    for plot in ("confusion_matrix.png", "feature_importance.png"):
        size = result["artifact_images"][plot]
        assert size["width"] > 100 and size["height"] > 100, (plot, size)
    status, champion = registry_champion(local_stack["mlflow_url"], "iris-classifier", {})
    assert status == 200 and result["champion_shown"] == champion, (result["champion_shown"], status, champion)
    # Nothing in either UI asked a host other than the stack's two (MLflow's UI telemetry is off on the server).
    stack_hosts = {local_stack[u].split("//", 1)[1].rstrip("/") for u in ("airflow_url", "mlflow_url")}
    assert set(result["hosts"]) <= stack_hosts, f"the UIs called out: {set(result['hosts']) - stack_hosts}"

    shots = [Path(p) for p in result["screenshots"]]
    names = [p.stem.split("-", 1)[1] for p in shots]
    for step in (
        "airflow-login",
        "airflow-dag",
        "airflow-dag-unpaused",
        "airflow-trigger-dialog",
        "airflow-run-success",
        "mlflow-home",
        "mlflow-model-training",
        "mlflow-experiment-runs",
        "mlflow-run",
        "mlflow-artifact-confusion-matrix",
        "mlflow-artifact-feature-importance",
        "mlflow-model-registry",
        "mlflow-registered-model",
    ):
        assert step in names, f"no screenshot of step {step}: {names}"
    published = publish(result["screens"], tmp_path)
    assert [p.name for p in published] == [f"{name}.png" for name in SCREENS]
    for path in published:
        assert png_size(path) == png_size(Path(result["screens"][path.stem])), path  # smaller file, same picture
    for shot in shots:
        assert shot.parent == SHOTS and shot.is_file(), shot
        assert shot.stat().st_size > 1000, f"{shot} is (nearly) empty"
        width, height = png_size(shot)
        assert width > 100 and height > 100, f"{shot} is {width}x{height}"
