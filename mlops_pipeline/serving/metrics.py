"""What the model-server counts, in Prometheus's text format on ``GET /metrics`` (prometheus-client).

gunicorn runs several workers, and a scrape reaches one of them, so the counts live in prometheus-client's
multiprocess mode: every worker writes its own files in ``PROMETHEUS_MULTIPROC_DIR`` (model-server.sh sets it
and empties it when the server starts) and a scrape adds up all of them. A worker that exits leaves its counter
files behind (the totals keep its requests) and gunicorn's ``child_exit`` hook (gunicorn.conf.py) drops its
live gauges, so a replaced worker neither loses nor double-counts. Without that variable (a single process, the
in-process tests) the same metrics live in the process.

A request only adds to this process's plain counts (``observe``, ``predicted``: a few dictionary updates);
``publish()`` moves them into prometheus-client's values in one go, between requests: the app calls it every
PUBLISH_SECONDS, before answering a scrape and when a worker stops. Writing each request through prometheus-client
(five values in shared memory, with cold caches between parsing and predicting) cost several times what the same
writes cost in a batch (benchmarks/results.md, part peers, measures what is left). So a scrape sees another
worker's counts as of its last publish (at most PUBLISH_SECONDS old), a clean stop loses none, and a worker killed
with SIGKILL loses at most that interval's.

Nothing here holds a request body, a header or a credential: labels are endpoint paths, status codes, classes
and the served model's name, version, run ID and runtime.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections import defaultdict
from collections.abc import Iterable
from functools import cache

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

# The low buckets resolve single-row answers of both runtimes (benchmarks/results.md has their latencies); the high
# ones catch large batches and a stalled worker.
LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)
# A classifier's classes are labels; more distinct values than this in one publish (a regressor, a text model) are
# not counted by class, so a model cannot blow up the number of series.
MAX_CLASSES = 50
PUBLISH_SECONDS = 0.05  # how stale another worker's counts may be in a scrape (see the module docstring)

REQUESTS = Counter(
    "model_server_requests_total", "Requests answered, by endpoint and HTTP status code.", ["endpoint", "code"]
)
LATENCY = Histogram(
    "model_server_request_duration_seconds",
    "Time from routing a request to its answer, by endpoint (HTTP parsing and the network are not included).",
    ["endpoint"],
    buckets=LATENCY_BUCKETS,
)
ROWS = Counter("model_server_predicted_rows_total", "Rows predicted by answered /invocations requests.")
PREDICTIONS = Counter("model_server_predictions_total", "Predicted rows by predicted class.", ["prediction"])
MODEL_INFO = Gauge(
    "model_server_model_info",
    "1 for the model the workers serve (0 once every worker left it), with its name, version, run ID and runtime.",
    ["model_name", "model_version", "run_id", "model_uri", "runtime"],
    multiprocess_mode="livemax",
)
ANSWERS = Counter(
    "model_server_answers_total",
    "Answered /invocations requests by the model version that answered and its role (champion or challenger).",
    ["model_version", "role"],
)
CHALLENGER = Counter(
    "model_server_challenger_predictions_total",
    "Requests a challenger scored, by its version, mode (shadow: no client saw it; canary) and result (ok; error:"
    " the champion's answer stood; dropped: a full shadow queue).",
    ["model_version", "mode", "result"],
)
MODEL_LOADS = Counter(
    "model_server_model_loads_total",
    "Model load attempts by result (success or failure), counted per worker: each worker loads its own copy.",
    ["result"],
)


@cache
def requests_child(endpoint: str, code: int) -> Counter:
    return REQUESTS.labels(endpoint, str(code))


@cache
def latency_child(endpoint: str) -> Histogram:
    return LATENCY.labels(endpoint)


@cache
def prediction_child(value: object) -> Counter:
    return PREDICTIONS.labels(str(value))


class Pending:
    """This process's counts since the last publish: what a request adds to."""

    def __init__(self) -> None:
        self.answers: Tally[tuple[str, int]] = Tally()
        self.seconds: defaultdict[str, list[float]] = defaultdict(list)
        self.predictions: list[np.ndarray] = []
        self.by_version: Tally[tuple[str, str]] = Tally()
        self.challenger: Tally[tuple[str, str, str]] = Tally()


pending = Pending()


def observe(endpoint: str, code: int, seconds: float) -> None:
    pending.answers[endpoint, code] += 1
    pending.seconds[endpoint].append(seconds)


def answered(version: str, role: str) -> None:
    pending.by_version[version, role] += 1


def challenger_ran(version: str, mode: str, result: str, requests: int = 1) -> None:
    pending.challenger[version, mode, result] += requests


def predicted(predictions: np.ndarray) -> None:
    """Count the rows of one answer, and by class when the answer is one label per row (at the next publish)."""
    pending.predictions.append(predictions)


def publish() -> None:
    """Move the pending counts into prometheus-client's values (the shared files in multiprocess mode). Called on
    the worker's event loop, like observe and predicted, so nothing is counted twice or lost in between."""
    global pending
    taken, pending = pending, Pending()
    for (endpoint, code), n in taken.answers.items():
        requests_child(endpoint, code).inc(n)
    for endpoint, seconds in taken.seconds.items():
        child = latency_child(endpoint)
        for value in seconds:
            child.observe(value)
    for (version, role), n in taken.by_version.items():
        ANSWERS.labels(version, role).inc(n)
    for (version, mode, result), n in taken.challenger.items():
        CHALLENGER.labels(version, mode, result).inc(n)
    labels: defaultdict[np.dtype, list[np.ndarray]] = defaultdict(list)
    rows = 0
    for answer in taken.predictions:
        rows += len(answer)
        if answer.ndim == 1 and answer.dtype.kind in "iubOU":  # not probabilities or regression values
            labels[answer.dtype].append(answer)
    if rows:
        ROWS.inc(rows)
    for same_type in labels.values():
        try:
            values, counts = np.unique(np.concatenate(same_type), return_counts=True)
        except TypeError:  # labels of mixed types (ints and strings) cannot be sorted: rows only
            continue
        if len(values) <= MAX_CLASSES:
            for value, n in zip(values.tolist(), counts.tolist(), strict=True):
                prediction_child(value).inc(n)


def predicted_json(predictions: Iterable[object] | None) -> None:
    """The same for an answer MLflow's full path encoded (a list of values, or anything else: not counted)."""
    if isinstance(predictions, list) and all(isinstance(p, int | str) for p in predictions):
        predicted(np.array(predictions, dtype=object))


def serving(labels: dict[str, str] | None, previous: dict[str, str] | None) -> None:
    """The info metric follows a model switch: the new model's series 1, the old one's 0."""
    if previous:
        MODEL_INFO.labels(**previous).set(0)
    if labels:
        MODEL_INFO.labels(**labels).set(1)


def loaded(ok: bool) -> None:
    MODEL_LOADS.labels("success" if ok else "failure").inc()


def exposition(multiprocess_dir: object = None) -> tuple[bytes, str]:
    """The body and content type of a scrape: every worker's values added up in multiprocess mode (with
    PROMETHEUS_MULTIPROC_DIR set, which prometheus-client itself reads), else this process's. This process's
    pending counts are published first."""
    publish()
    if multiprocess_dir:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
