"""mlflow/serve.py via mlflow/model-server.sh: MLflow's protocol, following the champion without a failed request."""

from __future__ import annotations

import os
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from mlflow import MlflowClient

import train_model
from conftest import ROOT, free_port, service

SEED = {"inputs": [[5.1, 3.5, 1.4, 0.2]]}
MODEL_SERVER = ROOT / "mlflow" / "model-server.sh"


def server_env(tracking_server: str, port: int, **env: str) -> dict[str, str]:
    return {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking_server,
        "MODEL_SERVER_HOST": "127.0.0.1",
        "MODEL_SERVER_PORT": str(port),
        "MODEL_POLL_SECONDS": "1",
        "LATEST_MODEL_RUN_ID": "",
        # One process, so the swap is seen in one order (each worker of several swaps on its own poll).
        "MODEL_SERVER_WORKERS": "1",
        **env,
    }


def wait_for_version(url: str, version: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/model", timeout=5).json().get("model_version") == version:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} did not switch to version {version} within {timeout} s")


@pytest.fixture(scope="module")
def champion_server(tracking_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Path]]:
    name = f"iris-serve-{uuid.uuid4().hex[:8]}"
    log = tmp_path_factory.mktemp("model-server") / "server.log"
    port = free_port()
    # No health check: without a champion /ping answers 503, which test_1 checks.
    with service(MODEL_SERVER, log, server_env(tracking_server, port, REGISTERED_MODEL_NAME=name), None):
        yield name, f"http://127.0.0.1:{port}", log


def promote(tracking_server: str, name: str, **cfg: int) -> str:
    run_id = train_model.run(tracking_server, "serve-test", train_model.TrainConfig(**cfg))
    result = train_model.register_and_promote(run_id, name, min_accuracy=0.0)
    assert result["promoted"], result
    return result["version"]


def test_1_waits_unhealthy_until_a_champion_exists(champion_server: tuple[str, str, Path]) -> None:
    _, url, log = champion_server
    deadline = time.monotonic() + 60
    while True:
        try:
            ping = requests.get(f"{url}/ping", timeout=5)
            break
        except requests.ConnectionError:
            assert time.monotonic() < deadline
            time.sleep(0.5)
    assert ping.status_code == 503
    answer = requests.post(f"{url}/invocations", json=SEED, timeout=5)
    assert answer.status_code == 503 and answer.json()["error_code"] == "MODEL_NOT_LOADED"
    deadline = time.monotonic() + 60
    while "Trigger the DAG 'mlops_pipeline'" not in log.read_text():
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.5)


def test_2_serves_the_champion_with_mlflow_protocol(tracking_server: str, champion_server) -> None:  # noqa: ANN001
    name, url, _ = champion_server
    version = promote(tracking_server, name)
    wait_for_version(url, version)
    answer = requests.post(f"{url}/invocations", json=SEED, timeout=10)
    assert answer.json() == {"predictions": [0]}
    assert answer.headers["X-Model-Version"] == version
    assert answer.headers["X-Model-Uri"] == f"models:/{name}/{version}"
    assert requests.get(f"{url}/ping", timeout=5).status_code == 200
    assert requests.get(f"{url}/health", timeout=5).status_code == 200
    assert requests.get(f"{url}/version", timeout=5).text.strip() == train_model.version("mlflow")
    # MLflow's own input formats and error answers.
    split = {"dataframe_split": {"columns": ["a", "b", "c", "d"], "data": [[5.1, 3.5, 1.4, 0.2]]}}
    assert requests.post(f"{url}/invocations", json={"instances": [[6.7, 3.0, 5.2, 2.3]]}, timeout=10).ok
    assert requests.post(f"{url}/invocations", json=split, timeout=10).status_code in (200, 400)
    bad = requests.post(f"{url}/invocations", data="{not json", headers={"Content-Type": "application/json"})
    assert bad.status_code == 400 and "error_code" in bad.json()
    assert requests.get(f"{url}/invocations", timeout=5).status_code == 405
    big = requests.post(
        f"{url}/invocations", data=b"[" * (11 * 1024 * 1024), headers={"Content-Type": "application/json"}
    )
    assert big.status_code == 413 and big.json()["error_code"] == "REQUEST_TOO_LARGE"


def test_3_switches_to_a_new_champion_without_a_failed_request(tracking_server: str, champion_server) -> None:  # noqa: ANN001
    name, url, _ = champion_server
    old = requests.get(f"{url}/model", timeout=5).json()["model_version"]
    failures: list[str] = []
    versions: list[str] = []
    stop = threading.Event()

    def client() -> None:
        with requests.Session() as session:
            while not stop.is_set():
                try:
                    r = session.post(f"{url}/invocations", json=SEED, timeout=10)
                    if r.status_code != 200 or r.json() != {"predictions": [0]}:
                        failures.append(f"{r.status_code} {r.text[:100]}")
                    versions.append(r.headers.get("X-Model-Version", ""))
                except requests.RequestException as exc:
                    failures.append(repr(exc))

    threads = [threading.Thread(target=client) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        new = promote(tracking_server, name)  # same accuracy as the champion: "not worse" promotes it
        wait_for_version(url, new)
        time.sleep(1)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert failures == []
    assert old in versions and new in versions
    assert versions.index(new) > versions.index(old) and old not in versions[versions.index(new) :]


def test_4_keeps_serving_when_the_new_champion_cannot_load(tracking_server: str, champion_server) -> None:  # noqa: ANN001
    name, url, log = champion_server
    serving = requests.get(f"{url}/model", timeout=5).json()["model_version"]
    client = MlflowClient(tracking_server)
    empty_run = client.create_run(client.get_experiment_by_name("serve-test").experiment_id).info
    client.set_terminated(empty_run.run_id)
    broken = client.create_model_version(name, source=f"{empty_run.artifact_uri}/model", run_id=empty_run.run_id)
    client.set_registered_model_alias(name, train_model.CHAMPION, broken.version)
    deadline = time.monotonic() + 30
    while "could not load the new model" not in log.read_text():
        assert time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.5)
    answer = requests.post(f"{url}/invocations", json=SEED, timeout=10)
    assert answer.json() == {"predictions": [0]} and answer.headers["X-Model-Version"] == serving
    assert requests.get(f"{url}/ping", timeout=5).status_code == 200


def test_fixed_run_id_serves_exactly_that_run(tracking_server: str, trained_run: str, tmp_path: Path) -> None:
    """The seed's flow: LATEST_MODEL_RUN_ID pins the model, whatever the registry says. With the default
    worker count (one per core, at most 4), every worker has the model before it takes a connection."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = server_env(tracking_server, port, LATEST_MODEL_RUN_ID=trained_run, MODEL_SERVER_WORKERS="")
    log = tmp_path / "fixed.log"
    with service(MODEL_SERVER, log, env, f"{url}/ping", timeout=90):
        for _ in range(20):  # a new connection each: any worker may answer
            answer = requests.post(f"{url}/invocations", json=SEED, timeout=10)
            assert answer.status_code == 200 and answer.json() == {"predictions": [0]}, answer.text
            assert answer.headers["X-Model-Run-Id"] == trained_run
            assert answer.headers["X-Model-Uri"] == f"runs:/{trained_run}/model"
    workers = min(len(os.sched_getaffinity(0)), 4)
    assert f"model-server: {workers} uvicorn worker(s)" in log.read_text()


def test_worker_count_must_be_a_whole_number(tmp_path: Path) -> None:
    env = {**os.environ, "MODEL_SERVER_WORKERS": "two", "LATEST_MODEL_RUN_ID": ""}
    done = subprocess.run([str(MODEL_SERVER)], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "MODEL_SERVER_WORKERS='two' must be a positive whole number" in done.stderr


# Requests the short path takes and requests it must leave to MLflow's parser (other keys, other formats, errors).
SHORT_PATH_CASES = [
    SEED,
    {"inputs": [[5, 3, 1, 0], [6.7, 3.0, 5.2, 2.3]]},
    {"inputs": [["5.1", 3.5, 1.4, 0.2]]},
    {"inputs": [[10**30, 1, 2, 3]]},
    {"inputs": [[float(i % 8), 3.0, 1.5, 0.25] for i in range(1000)]},
]
MLFLOW_PATH_CASES = [
    {"instances": [[6.7, 3.0, 5.2, 2.3]]},
    {"inputs": [[1, 2, 3]]},
    {"inputs": []},
    {"inputs": [[1, 2, 3, 4], [1, 2]]},
    {"inputs": [{"a": 1}]},
    {"inputs": [[1, 2, 3, 4]], "params": {"x": 1}},
    {"dataframe_split": {"columns": ["a", "b", "c", "d"], "data": [[5.1, 3.5, 1.4, 0.2]]}},
    ["inputs"],
]


def test_short_path_answers_byte_for_byte_as_mlflow(
    tracking_server: str, trained_run: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """serve.py's short path for {"inputs": ...} must be invisible: same status, same bytes as MLflow's own
    scoring_server.invocations, and requests it does not cover must reach MLflow's parser."""
    import json

    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc import scoring_server

    monkeypatch.syspath_prepend(str(ROOT / "mlflow"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_server)
    import serve

    loaded = serve.load(f"runs:/{trained_run}/model")
    assert loaded.tensor_spec is not None, "the trained model's signature should be one tensor"

    def mlflow_answer(body: bytes) -> tuple[int, bytes]:
        try:
            result = scoring_server.invocations(body, "application/json", loaded.model, loaded.input_schema)
        except MlflowException as exc:
            return exc.get_http_status_code(), exc.serialize_as_json().encode()
        return result.status, result.response.encode()

    for case, short in [(c, True) for c in SHORT_PATH_CASES] + [(c, False) for c in MLFLOW_PATH_CASES]:
        body = json.dumps(case).encode()
        assert (loaded._short_path(body, "application/json") is not None) is short, case
        ours = loaded.score(body, "application/json")
        assert (ours.status, ours.body) == mlflow_answer(body), case
