"""mlops_pipeline.serving (app, model, watcher): MLflow's protocol, following the champion without a failed request.

In process (Starlette's TestClient, a real tracking server) for the app; over HTTP (mlflow/model-server.sh
under uvicorn, marked slow) for what only a real server shows: workers, keep-alive, the worker-count check.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import mlflow
import pytest
import requests
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import scoring_server
from starlette.testclient import TestClient

from conftest import (
    ROOT,
    free_port,
    keep_alive_ms,
    metric_value,
    pinned_server_env,
    service,
    train_run,
    venv_env,
    wait_for,
)
from mlops_pipeline import registry
from mlops_pipeline.monitoring import log_reader
from mlops_pipeline.schema import CHAMPION
from mlops_pipeline.serving import app as serve
from mlops_pipeline.serving import predictors, watcher
from mlops_pipeline.serving.inference_log import InferenceLog
from mlops_pipeline.serving.model import Loaded, load
from mlops_pipeline.settings import LogSettings, TrainSettings, from_env
from test_predictors import shifted_roots

SEED = {"inputs": [[5.1, 3.5, 1.4, 0.2]]}
MODEL_SERVER = ROOT / "mlflow" / "model-server.sh"
MLFLOW_VERSION = importlib.metadata.version("mlflow")


@pytest.fixture
def tracking(tracking_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The in-process app finds the registry the way the real server does: MLFLOW_TRACKING_URI."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_server)
    mlflow.set_tracking_uri(tracking_server)
    return tracking_server


@contextmanager
def app_client(name: str = "", fixed_uri: str = "", max_body: int = 0, compiled: bool = True) -> Iterator[TestClient]:
    """The app with its lifespan (the first load attempt happens before the first request, as under uvicorn)."""
    given = {"model_server_max_body_bytes": max_body} if max_body else {}
    given |= {"registered_model_name": name} if name else {}
    app = serve.create_app(model_uri=fixed_uri, model_poll_seconds=0.2, model_server_compiled=compiled, **given)
    with TestClient(app) as client:
        yield client


def metric(client: TestClient, name: str, **labels: str) -> float:
    return metric_value(client.get("/metrics").text, name, **labels)


def promote(tracking_server: str, name: str, **settings: object) -> str:
    run_id = train_run(tracking_server, "serve-test", **{"rf_n_estimators": 10, **settings})  # a small forest
    result = registry.register_and_promote(run_id, from_env(TrainSettings, registered_model_name=name, min_accuracy=0))
    assert result["promoted"], result
    return result["version"]


def wait_for_version(client: TestClient | requests.Session, base: str, version: str) -> None:
    wait_for(f"version {version}", lambda: client.get(f"{base}/model").json().get("model_version") == version, 60)


def test_unhealthy_and_says_what_to_do_until_a_champion_exists(tracking: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="model-server")
    name = f"iris-none-{uuid.uuid4().hex[:8]}"
    with app_client(name) as client:
        assert client.get("/ping").status_code == 503
        assert client.get("/health").status_code == 503
        answer = client.post("/invocations", json=SEED)
        assert answer.status_code == 503 and answer.json()["error_code"] == "MODEL_NOT_LOADED"
        assert client.get("/model").status_code == 503 and client.get("/model").json() == {"model_uri": None}
    assert f"no model '{name}@champion' in the registry yet" in caplog.text
    assert "Trigger the DAG 'mlops_pipeline'" in caplog.text


def test_serves_the_champion_with_mlflow_protocol(tracking: str) -> None:
    name = f"iris-serve-{uuid.uuid4().hex[:8]}"
    version = promote(tracking, name)
    with app_client(name) as client:
        answer = client.post("/invocations", json=SEED)
        assert answer.status_code == 200 and answer.json() == {"predictions": [0]}
        assert answer.headers["content-type"] == "application/json"
        assert answer.headers["X-Model-Version"] == version
        assert answer.headers["X-Model-Uri"] == f"models:/{name}/{version}"
        assert len(answer.headers["X-Model-Run-Id"]) == 32
        assert client.get("/model").json() == {
            "model_uri": f"models:/{name}/{version}",
            "model_version": version,
            "run_id": answer.headers["X-Model-Run-Id"],
            "runtime": "onnxruntime",
        }
        for path in ("/ping", "/health"):
            ping = client.get(path)
            assert (ping.status_code, ping.text, ping.headers["X-Model-Version"]) == (200, "\n", version)
        assert client.get("/version").text == MLFLOW_VERSION
        # MLflow's other input formats (a virginica row; a frame, whose columns a tensor signature ignores).
        assert client.post("/invocations", json={"instances": [[6.7, 3.0, 5.2, 2.3]]}).json() == {"predictions": [2]}
        split = {"dataframe_split": {"columns": ["a", "b", "c", "d"], "data": [[5.1, 3.5, 1.4, 0.2]]}}
        assert client.post("/invocations", json=split).json() == {"predictions": [0]}
        wrong_width = client.post("/invocations", json={"inputs": [[1, 2, 3]]})
        assert wrong_width.status_code == 400 and wrong_width.json()["error_code"] == "INVALID_PARAMETER_VALUE"
        bad = client.post("/invocations", content="{not json", headers={"Content-Type": "application/json"})
        assert bad.status_code == 400 and bad.json()["error_code"] == "BAD_REQUEST"
        assert "valid JSON" in bad.json()["message"] and bad.headers["X-Model-Version"] == version


def test_errors_are_json_with_the_model_headers(tracking: str, trained_run: str) -> None:
    with app_client(fixed_uri=f"runs:/{trained_run}/model", max_body=8192) as client:
        wrong_method = client.get("/invocations")
        assert wrong_method.status_code == 405 and wrong_method.json() == {
            "error_code": "METHOD_NOT_ALLOWED",
            "message": "/invocations takes POST",
        }
        assert wrong_method.headers["X-Model-Run-Id"] == trained_run
        missing = client.get("/nowhere")
        assert missing.status_code == 404 and missing.json()["message"] == "No such endpoint: /nowhere"
        no_type = client.post("/invocations", content=json.dumps(SEED))
        assert no_type.status_code == 415 and no_type.json()["error_code"] == "UNSUPPORTED_MEDIA_TYPE"
        text = client.post("/invocations", content=b"1,2,3,4", headers={"Content-Type": "text/plain"})
        assert text.status_code == 415 and text.headers["content-type"] == "application/json"
        big = b'{"inputs": [[' + b"1, " * 3000 + b"1]]}"
        for body in (big, iter([big[:6000], big[6000:]])):  # declared length, then chunked (no Content-Length)
            too_large = client.post("/invocations", content=body, headers={"Content-Type": "application/json"})
            assert too_large.status_code == 413 and too_large.json()["error_code"] == "REQUEST_TOO_LARGE"
        json_type = {"Content-Type": "application/json"}
        deep = client.post("/invocations", content=b"[" * 8000, headers=json_type)
        assert deep.status_code == 400 and "RecursionError" in deep.json()["message"]
        huge = client.post("/invocations", content=b'{"inputs": [[' + b"9" * 5000 + b", 1, 1, 1]]}", headers=json_type)
        assert huge.status_code == 400 and "digits" in huge.json()["message"]


def test_a_request_during_the_first_load_waits_for_it(tracking: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each worker polls on its own: one still loading the first champion must not answer 503 while another
    already serves (make demo's curl met exactly that). The load is held at a gate so the request surely arrives
    during it."""
    name = f"iris-first-{uuid.uuid4().hex[:8]}"
    gate, loading = threading.Event(), threading.Event()
    real_load = watcher.load

    def gated_load(*args: object, **kwargs: object) -> Loaded:
        loading.set()
        assert gate.wait(60)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(watcher, "load", gated_load)
    with app_client(name) as client:
        assert client.post("/invocations", json=SEED).status_code == 503  # nothing to load yet: at once
        promote(tracking, name)
        assert loading.wait(30), "the watcher did not start loading the new champion"
        answers: list = []
        request = threading.Thread(target=lambda: answers.append(client.post("/invocations", json=SEED)))
        request.start()
        request.join(timeout=1.0)
        assert request.is_alive() and not answers, f"answered during the load: {answers}"
        gate.set()
        request.join(timeout=60)
    assert answers[0].status_code == 200 and answers[0].json() == {"predictions": [0]}


def test_switches_to_a_new_champion_without_a_failed_request(tracking: str) -> None:
    name = f"iris-swap-{uuid.uuid4().hex[:8]}"
    old = promote(tracking, name)
    failures: list[str] = []
    # One list per client thread: a request already in flight when the model switches finishes on the old model,
    # so across threads an old answer may land after a new one; within one thread's sequence it may not.
    seen: list[list[str]] = [[], []]
    stop = threading.Event()
    with app_client(name) as client:
        assert client.get("/model").json()["model_version"] == old

        def hammer(versions: list[str]) -> None:
            while not stop.is_set():
                r = client.post("/invocations", json=SEED)
                if r.status_code != 200 or r.json() != {"predictions": [0]}:
                    failures.append(f"{r.status_code} {r.text[:100]}")
                versions.append(r.headers.get("X-Model-Version", ""))

        totals: list[float] = []

        def scrape() -> None:  # /metrics during the switch: the request total never goes down
            while not stop.is_set():
                totals.append(metric(client, "model_server_requests_total", endpoint="/invocations", code="200"))

        threads = [threading.Thread(target=hammer, args=(versions,)) for versions in seen]
        threads.append(threading.Thread(target=scrape))
        for t in threads:
            t.start()
        try:
            new = promote(tracking, name)  # same accuracy as the champion: "not worse" promotes it
            wait_for_version(client, "", new)
            time.sleep(0.5)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=30)
        info = {v: metric(client, "model_server_model_info", model_name=name, model_version=v) for v in (old, new)}
    assert failures == []
    assert all(old in versions and new in versions for versions in seen), [sorted(set(v)) for v in seen]
    for versions in seen:
        assert versions.index(new) > versions.index(old) and old not in versions[versions.index(new) :]
    assert len(totals) > 1 and totals == sorted(totals)
    assert info == {old: 0.0, new: 1.0}  # the info metric followed the switch


def test_keeps_serving_when_the_new_champion_cannot_load(tracking: str, caplog: pytest.LogCaptureFixture) -> None:
    name = f"iris-broken-{uuid.uuid4().hex[:8]}"
    serving = promote(tracking, name)
    client = MlflowClient(tracking)
    with app_client(name) as app:
        failed_before = metric(app, "model_server_model_loads_total", result="failure")
        empty_run = client.create_run(client.get_experiment_by_name("serve-test").experiment_id).info
        client.set_terminated(empty_run.run_id)
        broken = client.create_model_version(name, source=f"{empty_run.artifact_uri}/model", run_id=empty_run.run_id)
        client.set_registered_model_alias(name, CHAMPION, broken.version)
        wait_for("the failed load in the log", lambda: "could not load the new model" in caplog.text, 30)
        answer = app.post("/invocations", json=SEED)
        assert answer.json() == {"predictions": [0]} and answer.headers["X-Model-Version"] == serving
        assert app.get("/ping").status_code == 200
        assert metric(app, "model_server_model_loads_total", result="failure") > failed_before
    assert f"still serving models:/{name}/{serving}" in caplog.text


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


@pytest.mark.parametrize("compiled", [True, False], ids=["onnxruntime", "scikit-learn"])
def test_short_path_answers_byte_for_byte_as_mlflow(
    tracking: str, trained_run: str, compiled: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The short path for {"inputs": ...} must be invisible: same status, same bytes as MLflow's own
    scoring_server.invocations, and requests it does not cover must reach MLflow's parser. With either runtime."""
    calls = []
    compiled_predict = predictors.Compiled.predict
    monkeypatch.setattr(
        predictors.Compiled, "predict", lambda self, x: calls.append(len(x)) or compiled_predict(self, x)
    )
    loaded = load(f"runs:/{trained_run}/model", compiled=compiled)
    calls.clear()  # the check's own call
    assert loaded.tensor_spec is not None, "the trained model's signature should be one tensor"
    assert (loaded.compiled is not None) is compiled and loaded.info()["runtime"] == (
        "onnxruntime" if compiled else "scikit-learn"
    )

    def mlflow_answer(body: bytes) -> tuple[int, bytes]:
        try:
            result = scoring_server.invocations(body, "application/json", loaded.model, loaded.input_schema)
        except MlflowException as exc:
            return exc.get_http_status_code(), exc.serialize_as_json().encode()
        return result.status, result.response.encode()

    for case, short in [(c, True) for c in SHORT_PATH_CASES] + [(c, False) for c in MLFLOW_PATH_CASES]:
        body = json.dumps(case).encode()
        assert (loaded.short_path(json.loads(body)) is not None) is short, case
        ours = loaded.score(body, "application/json")
        assert (ours.status_code, ours.body) == mlflow_answer(body), case
    # every short-path case compiled, twice (short_path, then score)
    assert len(calls) == (2 * len(SHORT_PATH_CASES) if compiled else 0), calls


def test_a_compiled_copy_that_differs_is_not_served(
    tracking: str, trained_run: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A converter that got one threshold per tree wrong (simulated): the check sees it, scikit-learn serves."""
    caplog.set_level(logging.INFO, logger="model-server")
    monkeypatch.setattr(predictors, "convert", shifted_roots)
    with app_client(fixed_uri=f"runs:/{trained_run}/model") as client:
        assert client.get("/model").json()["runtime"] == "scikit-learn"
        assert client.post("/invocations", json=SEED).json() == {"predictions": [0]}
    assert "copy of RandomForestClassifier differs from scikit-learn on" in caplog.text
    assert "serving RandomForestClassifier with scikit-learn" in caplog.text


def test_the_compiled_path_is_switched_by_the_environment(
    tracking: str, trained_run: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = f"runs:/{trained_run}/model"
    for switch, runtime in (("false", "scikit-learn"), ("true", "onnxruntime"), ("", "onnxruntime")):
        monkeypatch.setenv("MODEL_SERVER_COMPILED", switch)
        with TestClient(serve.create_app(model_uri=uri)) as client:
            assert client.get("/model").json()["runtime"] == runtime, switch
    monkeypatch.setenv("MODEL_SERVER_COMPILED", "maybe")
    with pytest.raises(SystemExit, match="MODEL_SERVER_COMPILED must be true or false, got 'maybe'"):
        serve.create_app(model_uri=uri)


def test_every_scored_request_is_recorded_under_the_id_its_answer_carries(
    tracking: str, trained_run: str, tmp_path: Path
) -> None:
    """Both scoring paths record what they answered; refused requests record nothing; a clean stop (the lifespan's
    end, as on SIGTERM) writes everything. A client's plain X-Request-Id is kept, anything else replaced."""

    recorder = InferenceLog(tmp_path, flush_seconds=3600)  # nothing is written before the stop
    app = serve.create_app(model_uri=f"runs:/{trained_run}/model", recorder=recorder)
    split = {"dataframe_split": {"data": [[6.7, 3.0, 5.2, 2.3]]}}
    with TestClient(app) as client:
        answers = [client.post("/invocations", json=SEED) for _ in range(5)]
        answers.append(client.post("/invocations", json=split))  # MLflow's full path
        answers.append(client.post("/invocations", json=SEED, headers={"X-Request-Id": "client-id-1"}))
        answers.append(client.post("/invocations", json=SEED, headers={"X-Request-Id": "bad id\twith tab"}))
        refused = client.post("/invocations", json={"inputs": [[1.0, 2.0]]})
        assert not list(tmp_path.rglob("*.jsonl")), "written before the stop: the flush interval was not honoured"
    assert [a.status_code for a in answers] == [200] * 8 and refused.status_code == 400
    ids = [a.headers["X-Request-Id"] for a in answers]
    assert ids[6] == "client-id-1" and ids[7] != "bad id\twith tab" and len(set(ids)) == 8
    frame = log_reader.read(LogSettings(inference_log_dir=tmp_path), since=datetime(2000, 1, 1, tzinfo=UTC))
    assert sorted(frame["request_id"]) == sorted(ids)
    assert set(frame["run_id"]) == {trained_run}
    by_id = frame.set_index("request_id")
    assert by_id.loc[ids[0], "prediction"] == 0 and by_id.loc[ids[5], "prediction"] == 2
    assert by_id.loc[ids[5], ["f0", "f1", "f2", "f3"]].tolist() == [6.7, 3.0, 5.2, 2.3]


def test_worker_count_must_be_a_whole_number() -> None:
    env = venv_env(MODEL_SERVER_WORKERS="two", LATEST_MODEL_RUN_ID="")
    done = subprocess.run([str(MODEL_SERVER)], env=env, capture_output=True, text=True, timeout=30)
    assert (
        done.returncode == 2
        and "MODEL_SERVER_WORKERS must be a positive integer (or empty: one per core), got 'two'" in done.stderr
    )


@pytest.mark.slow
def test_real_server_serves_a_pinned_run_on_every_worker_at_full_speed(
    tracking_server: str, trained_run: str, tmp_path: Path
) -> None:
    """The original tutorial's flow over HTTP: LATEST_MODEL_RUN_ID pins the model, whatever the registry says.
    With the default worker count (one per core, at most 4) every worker has the model before it takes a
    connection, and a kept-alive connection answers as fast as fresh ones (no ~40 ms delayed-ACK stall)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = pinned_server_env(tracking_server, trained_run, port, workers="")
    log = tmp_path / "fixed.log"
    with service(MODEL_SERVER, log, env, f"{url}/ping", timeout=90):
        fresh = []
        for _ in range(20):  # a new connection each: any worker may answer
            start = time.perf_counter()
            answer = requests.post(f"{url}/invocations", json=SEED, timeout=10)
            fresh.append((time.perf_counter() - start) * 1000)
            assert answer.status_code == 200 and answer.json() == {"predictions": [0]}, answer.text
            assert answer.headers["X-Model-Run-Id"] == trained_run
            assert answer.headers["X-Model-Uri"] == f"runs:/{trained_run}/model"
        kept = keep_alive_ms(port)
        fresh_ms = sorted(fresh)[len(fresh) // 2]
        assert kept < fresh_ms + 10, f"kept-alive {kept:.1f} ms per request vs fresh connections {fresh_ms:.1f} ms"
    workers = min(len(os.sched_getaffinity(0)), 4)
    assert f"model-server: {workers} uvicorn worker(s)" in log.read_text()
