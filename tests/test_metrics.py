"""The model-server's /metrics (serving/metrics.py): what it counts in one process (the app in-process), and that
the counts of several gunicorn workers add up exactly, survive a killed worker and stay consistent under a burst
of 413s (a real mlflow/model-server.sh with 2 workers, marked slow)."""

from __future__ import annotations

import http.client
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest
from starlette.testclient import TestClient

from conftest import ROOT, free_port, metric_value, pinned_server_env, samples, service
from mlops_pipeline.serving import app as serve
from mlops_pipeline.serving import metrics

SEED = b'{"inputs": [[5.1, 3.5, 1.4, 0.2]]}'
JSON = {"Content-Type": "application/json"}
LIMIT = 4096  # the 2-worker server's body limit
PREDICTIONS = "model_server_predictions_total"


def requests_total(text: str, endpoint: str, code: int) -> float:
    return metric_value(text, "model_server_requests_total", endpoint=endpoint, code=str(code))


@pytest.fixture
def client(trained_run: str, tracking_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_server)
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    app = serve.create_app(
        model_uri=f"runs:/{trained_run}/model", model_server_max_body_bytes=1000, model_server_metrics=True
    )
    with TestClient(app) as c:
        yield c


def test_counts_each_answer_by_endpoint_and_status_code(client: TestClient, trained_run: str) -> None:
    before = client.get("/metrics").text
    assert client.post("/invocations", content=SEED, headers=JSON).json() == {"predictions": [0]}
    two_rows = b'{"inputs": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}'
    assert client.post("/invocations", content=two_rows, headers=JSON).json() == {"predictions": [0, 2]}
    assert client.post("/invocations", content=b"{not json", headers=JSON).status_code == 400
    assert client.post("/invocations", content=SEED, headers={"Content-Type": "text/plain"}).status_code == 415
    assert client.post("/invocations", content=b"x" * 2000, headers=JSON).status_code == 413
    assert client.get("/invocations").status_code == 405
    assert client.get("/no/such/path").status_code == 404
    assert client.get("/ping").status_code == 200
    after = client.get("/metrics")
    assert after.status_code == 200 and after.headers["content-type"].startswith("text/plain")

    def delta(endpoint: str, code: int) -> float:
        return requests_total(after.text, endpoint, code) - requests_total(before, endpoint, code)

    expected = {("/invocations", 200): 2, ("/invocations", 400): 1, ("/invocations", 415): 1}
    expected |= {("/invocations", 413): 1, ("/invocations", 405): 1, ("unmatched", 404): 1, ("/ping", 200): 1}
    assert {key: delta(*key) for key in expected} == expected
    assert (
        metric_value(after.text, "model_server_predicted_rows_total")
        - metric_value(before, "model_server_predicted_rows_total")
        == 3
    )
    by_class = {
        c: metric_value(after.text, "model_server_predictions_total", prediction=c)
        - metric_value(before, "model_server_predictions_total", prediction=c)
        for c in "012"
    }
    assert by_class == {"0": 2, "1": 0, "2": 1}
    observed = metric_value(
        after.text, "model_server_request_duration_seconds_count", endpoint="/invocations"
    ) - metric_value(before, "model_server_request_duration_seconds_count", endpoint="/invocations")
    assert observed == 6  # every /invocations answer but the router's 405 is timed
    # The info metric names what /model reports, with the value 1.
    info = client.get("/model").json()
    # (Other tests' apps in this process may have served the same run with the other runtime: its series stays.)
    served = [labels for labels, v in samples(after.text, "model_server_model_info", run_id=trained_run) if v == 1]
    assert any(s["runtime"] == info["runtime"] and s["model_uri"] == info["model_uri"] for s in served), served
    assert metric_value(after.text, "model_server_model_loads_total", result="success") >= 1


def test_counts_what_mlflows_full_path_answers(client: TestClient) -> None:
    """A payload the short path does not take (a split-orient DataFrame) is counted from MLflow's answer."""
    before = client.get("/metrics").text
    body = json.dumps({"dataframe_split": {"data": [[6.7, 3.0, 5.2, 2.3]]}}).encode()
    assert client.post("/invocations", content=body, headers=JSON).json() == {"predictions": [2]}
    after = client.get("/metrics").text
    assert (
        metric_value(after, "model_server_predictions_total", prediction="2")
        - metric_value(before, "model_server_predictions_total", prediction="2")
        == 1
    )


def test_reveals_no_request_body_and_no_credential(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "pw-marker-7f3a")
    client.post("/invocations", content=b'{"inputs": [[5.987654321, 3.5, 1.4, 0.2]]}', headers=JSON)
    text = client.get("/metrics").text
    assert "5.987654321" not in text and "pw-marker-7f3a" not in text


def in_process(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def test_counts_are_published_between_requests_and_at_a_clean_stop(
    trained_run: str, tracking_server: str, monkeypatch
) -> None:
    """Without any scrape: the worker's ticker publishes within PUBLISH_SECONDS, and its stop publishes the rest."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_server)
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    before = in_process("model_server_requests_total", endpoint="/invocations", code="200")
    with TestClient(serve.create_app(model_uri=f"runs:/{trained_run}/model")) as c:
        assert c.post("/invocations", content=SEED, headers=JSON).status_code == 200
        deadline = time.monotonic() + 2
        while in_process("model_server_requests_total", endpoint="/invocations", code="200") == before:
            assert time.monotonic() < deadline, "the ticker did not publish"
            time.sleep(metrics.PUBLISH_SECONDS / 2)
        assert c.post("/invocations", content=SEED, headers=JSON).status_code == 200
    assert in_process("model_server_requests_total", endpoint="/invocations", code="200") == before + 2


def test_off_means_no_route_and_no_counting(trained_run: str, tracking_server: str, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_server)
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    before = in_process("model_server_requests_total", endpoint="/invocations", code="200")
    rows = in_process("model_server_predicted_rows_total")
    with TestClient(serve.create_app(model_uri=f"runs:/{trained_run}/model", model_server_metrics=False)) as c:
        assert c.post("/invocations", content=SEED, headers=JSON).status_code == 200
        assert c.get("/metrics").status_code == 404
    assert in_process("model_server_requests_total", endpoint="/invocations", code="200") == before
    assert in_process("model_server_predicted_rows_total") == rows


def test_a_bad_switch_value_stops_the_server_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_SERVER_METRICS", "yes please")
    with pytest.raises(SystemExit, match="MODEL_SERVER_METRICS"):
        serve.create_app(model_uri="runs:/0/model")


def test_classes_are_counted_only_for_one_label_per_row() -> None:
    def by_class() -> dict[str, float]:
        families = metrics.REGISTRY.collect()
        return {s.labels["prediction"]: s.value for f in families for s in f.samples if s.name == PREDICTIONS}

    before, rows = by_class(), in_process("model_server_predicted_rows_total")
    metrics.predicted(np.array([0.25, 0.5]))  # regression values: rows only
    metrics.predicted(np.array([[0.1, 0.9]]))  # probabilities: rows only
    metrics.predicted(np.arange(metrics.MAX_CLASSES + 1))  # too many distinct values to be classes
    assert in_process("model_server_predicted_rows_total") == rows  # counted, not yet published
    metrics.publish()
    assert by_class() == before
    assert in_process("model_server_predicted_rows_total") - rows == 2 + 1 + metrics.MAX_CLASSES + 1
    metrics.predicted(np.array(["setosa", "setosa"], dtype=object))
    metrics.publish()
    assert by_class()["setosa"] - before.get("setosa", 0) == 2


# --- a real server: gunicorn with 2 workers (model-server.sh) --------------------------------------------------
@pytest.fixture(scope="module")
def two_workers(
    tracking_server: str, trained_run: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path, int]]:
    """One server for both tests (either order: one counts only 200s, the other only 413s)."""
    tmp_path = tmp_path_factory.mktemp("two-workers")
    port = free_port()
    env = pinned_server_env(tracking_server, trained_run, port, workers="2")
    env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path / "counts")
    env["MODEL_SERVER_MAX_BODY_BYTES"] = str(LIMIT)
    url = f"http://127.0.0.1:{port}"
    with service(ROOT / "mlflow" / "model-server.sh", tmp_path / "server.log", env, f"{url}/ping") as proc:
        yield url, tmp_path / "counts", proc.pid


def worker_pids(master: int) -> list[int]:
    return sorted(p.pid for p in psutil.Process(master).children() if p.name() != "sh")


def send(url: str, total: int, body: bytes = SEED, connections: int = 4) -> list[int]:
    """`total` POSTs on `connections` threads, each opening a new connection every 25 requests (so the kernel
    spreads them over both workers); the status codes."""
    host, port = url.removeprefix("http://").split(":")
    codes: list[int] = []
    lock = threading.Lock()

    def client(n: int) -> None:
        conn = None
        for i in range(n):
            if i % 25 == 0:
                conn = http.client.HTTPConnection(host, int(port), timeout=30)
            conn.request("POST", "/invocations", body=body, headers=JSON)
            response = conn.getresponse()
            response.read()
            with lock:
                codes.append(response.status)
            if response.will_close:
                conn = http.client.HTTPConnection(host, int(port), timeout=30)

    threads = [threading.Thread(target=client, args=(total // connections,)) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return codes


def scrape(url: str) -> str:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)  # a new connection: any worker may answer
    conn.request("GET", "/metrics")
    return conn.getresponse().read().decode()


def published(url: str, name: str, expected: float, **labels: str) -> float:
    """The scraped value once it reaches `expected` (each worker publishes its counts every PUBLISH_SECONDS), or
    what it was after a second."""
    deadline = time.monotonic() + 1
    while (value := metric_value(scrape(url), name, **labels)) != expected and time.monotonic() < deadline:
        time.sleep(metrics.PUBLISH_SECONDS / 2)
    return value


@pytest.mark.slow
def test_two_workers_add_up_exactly_and_a_killed_worker_loses_nothing(two_workers: tuple[str, Path, int]) -> None:
    url, counts, master = two_workers
    # The kernel may hand every new connection to the same worker (CI saw 1,000 requests on one), so send in
    # batches until each worker has written counts of its own: the sum below must add up two workers' files.
    sent = 0
    while True:
        assert send(url, 500) == [200] * 500
        sent += 500
        files = {p.name for p in counts.glob("counter_*.db")}
        if {f"counter_{pid}.db" for pid in worker_pids(master)} <= files:
            break
        assert sent < 10_000, f"one worker answered all {sent} requests: {files}"
    assert published(url, "model_server_requests_total", sent, endpoint="/invocations", code="200") == sent
    for _ in range(5):  # whichever worker answers the scrape, it reports both
        assert requests_total(scrape(url), "/invocations", 200) == sent
    assert metric_value(scrape(url), "model_server_predicted_rows_total") == sent

    victim = worker_pids(master)[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while victim in worker_pids(master) or len(worker_pids(master)) < 2:
        assert time.monotonic() < deadline, "gunicorn did not replace the killed worker"
        time.sleep(0.2)
    text = scrape(url)
    assert requests_total(text, "/invocations", 200) == sent  # the dead worker's counts stay
    # Its live gauge went with it (child_exit): one series of the info metric, value 1, not one per worker ever.
    served = [v for _, v in samples(text, "model_server_model_info") if v]
    assert served == [1.0], samples(text, "model_server_model_info")
    assert send(url, 100) == [200] * 100
    assert published(url, "model_server_requests_total", sent + 100, endpoint="/invocations", code="200") == sent + 100


@pytest.mark.slow
def test_a_burst_of_413s_is_counted_exactly_while_scraped(two_workers: tuple[str, Path, int]) -> None:
    url, _, _ = two_workers
    big = b'{"inputs": [' + b"[1.0, 2.0, 3.0, 4.0], " * (LIMIT // 20) + b"[1.0, 2.0, 3.0, 4.0]]}"
    assert len(big) > LIMIT
    seen: list[float] = []
    stop = threading.Event()

    def scraper() -> None:
        while not stop.is_set():
            seen.append(requests_total(scrape(url), "/invocations", 413))

    t = threading.Thread(target=scraper)
    t.start()
    try:
        codes = send(url, 200, body=big)
    finally:
        stop.set()
        t.join()
    assert codes == [413] * 200
    assert seen == sorted(seen), "a scrape saw a total go down"
    assert published(url, "model_server_requests_total", 200, endpoint="/invocations", code="413") == 200
