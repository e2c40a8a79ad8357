"""Shared fixtures: the entry scripts compose runs, as test services (a real MLflow tracking server among them),
free ports, .env files."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import hypothesis
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from mlops_pipeline import AIRFLOW_SHIM_WARNING
from scripts.stackclient import Airflow
from scripts.stackenv import read_env_file, urls, wait_for

ROOT = Path(__file__).resolve().parent.parent
# Model-servers the tests start (in process or as processes) record nothing unless a test turns the inference log
# on with a directory of its own: its default directory is the image's.
os.environ["INFERENCE_LOG"] = "false"


# Hypothesis profiles: make test (and CI) runs "thorough"; make test-fast, the edit loop, "quick"
# (--hypothesis-profile=quick): the same properties on fewer generated cases.
hypothesis.settings.register_profile("thorough", max_examples=1100)
hypothesis.settings.register_profile("quick", max_examples=300)
hypothesis.settings.load_profile("thorough")


def pytest_configure(config: pytest.Config) -> None:
    """The project's one filter for skops' probe of Airflow's deprecated shims, as a pytest filter (pytest resets
    Python's filters around each test)."""
    config.addinivalue_line("filterwarnings", f"ignore:{AIRFLOW_SHIM_WARNING}")


def samples(text: str, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
    """The samples called `name` whose labels include `labels`."""
    found = []
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                found.append((s.labels, s.value))
    return found


def metric_value(text: str, name: str, **labels: str) -> float:
    """The sum of the matching samples (0 when there is none, as for a counter never incremented)."""
    return sum(v for _, v in samples(text, name, **labels))


def training_runs(runs: list[dict]) -> list[dict]:
    """MLflow REST runs without the nested ones: one training run per DAG run (the gate evaluates the champion in a
    run nested in the candidate's)."""
    return [r for r in runs if "mlflow.parentRunId" not in {t["key"] for t in r["data"].get("tags", [])}]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(url: str, timeout: float = 120, proc: subprocess.Popen | None = None) -> None:
    """Until `url` answers 2xx; a RuntimeError at once if `proc` exits meanwhile."""

    def up() -> bool:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process serving {url} exited with {proc.returncode}")
        return requests.get(url, timeout=2).ok

    wait_for(url, up, timeout)


def compose_v2_available() -> bool:
    """The Compose v2 binary answers (no engine needed: `docker compose config` works without one)."""
    return shutil.which("docker") is not None and (
        subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0
    )


def _skip_or_fail(missing: str) -> None:
    """Skip without `missing`; with REQUIRE_DOCKER=1 (CI) fail instead: there the compose tests must run."""
    if os.environ.get("REQUIRE_DOCKER") == "1":
        pytest.fail(f"REQUIRE_DOCKER=1 but {missing} (run tests/engine.sh up)")
    pytest.skip(f"{missing}; REQUIRE_DOCKER=1 makes this a failure", allow_module_level=True)


def require_compose() -> None:
    """In a test, fixture or module: skip (or fail, REQUIRE_DOCKER=1) unless the Compose v2 binary answers."""
    if not compose_v2_available():
        _skip_or_fail("Compose v2 is not installed")


def require_docker_engine() -> None:
    """Skip the calling module or test unless a Docker engine with Compose v2 answers (REQUIRE_DOCKER=1: fail)."""
    if not compose_v2_available() or subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        _skip_or_fail("no Docker engine with Compose v2 answers")


@pytest.fixture
def compose_v2() -> None:
    """For tests that run `docker compose config`: `@pytest.mark.usefixtures("compose_v2")`."""
    require_compose()


@pytest.fixture(scope="session", autouse=True)
def training_data(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every test that trains reads a throwaway data file (seeded with Iris on first use), never a user's
    $AIRFLOW_HOME/data/iris.csv. Tests that change the data set TRAINING_DATA_PATH to a file of their own."""
    path = tmp_path_factory.mktemp("training-data") / "iris.csv"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("TRAINING_DATA_PATH", str(path))
        yield path


def stack_env(**extra: str) -> dict[str, str]:
    """The environment for a stack's scripts, without the MLFLOW_* variables other tests (and MLflow's
    set_tracking_uri) leave in this process and the tests' TRAINING_DATA_PATH and INFERENCE_LOG: the scripts and
    compose must read the stack's own .env."""
    mine = ("TRAINING_DATA_PATH", "INFERENCE_LOG")
    own = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_") and k not in mine}
    return {**own, **extra}


def make_env_file(path: Path, **values: str) -> Path:
    """A .env made exactly as `make env` makes it, with test-specific overrides."""
    sets = [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]
    subprocess.run(
        [sys.executable, "-m", "scripts.make_env", "--env-file", str(path), *sets],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    return path


class ComposeProject:
    """A compose project of the compose suites: its own project name, images, .env (fresh secrets, `make env`'s
    way) and free host ports, so a user's stack is never touched. Suites subclass it with their own checks."""

    def __init__(
        self, workdir: Path, project: str, compose_files: tuple[str, ...] = ("docker-compose.yml",), **settings: str
    ) -> None:
        """`settings`: more .env values (KEY="value")."""
        names = ("AIRFLOW_PORT", "MLFLOW_PORT", "MODEL_SERVER_PORT", "PROMETHEUS_PORT", "GRAFANA_PORT")
        self.ports = {name: free_port() for name in names}
        self.env_file = make_env_file(workdir / ".env", **{k: str(v) for k, v in self.ports.items()}, **settings)
        self.cfg = read_env_file(self.env_file)
        self.env = stack_env(
            COMPOSE_PROJECT_NAME=project,
            COMPOSE_FILE=os.pathsep.join(str(ROOT / name) for name in compose_files),
            COMPOSE_ENV_FILES=str(self.env_file),
            ENV_FILE=str(self.env_file),
            AIRFLOW_IMAGE=f"{project}-airflow:latest",  # the scale file builds "<these>-scale"
            MLFLOW_IMAGE=f"{project}-mlflow:latest",
            COMPOSE_BAKE="false",
        )
        if subprocess.run(["docker", "buildx", "version"], capture_output=True).returncode != 0:
            self.env["DOCKER_BUILDKIT"] = "0"  # no buildx plugin: the classic builder still works
        self.airflow_url, self.mlflow_url, self.model_url = urls(self.cfg).values()
        self.prometheus_url = f"http://127.0.0.1:{self.ports['PROMETHEUS_PORT']}"
        self.results: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} cores"}

    def run(self, *args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(args), cwd=ROOT, env=self.env, check=check, capture_output=True, text=True, timeout=timeout
        )

    def compose(self, *args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        try:
            return self.run("docker", "compose", *args, check=check, timeout=timeout)
        except subprocess.CalledProcessError as exc:
            raise AssertionError(
                f"docker compose {' '.join(args)} failed:\n{exc.stdout}\n{exc.stderr}{self.failed_logs()}"
            ) from None

    def failed_logs(self) -> str:
        """The last log lines of every container that exited non-zero: what a failed `up` alone does not say."""
        ps = self.run("docker", "compose", "ps", "-a", "--format", "{{.Service}} {{.State}} {{.ExitCode}}", check=False)
        failed = sorted({f[0] for f in map(str.split, ps.stdout.splitlines()) if len(f) == 3 and f[2] != "0"})
        if not failed:
            return ""
        logs = self.run("docker", "compose", "logs", "--no-color", "--tail", "60", *failed, check=False)
        return f"\nlogs of {failed}:\n{logs.stdout}{logs.stderr}"

    @contextmanager
    def lifetime(self, results: Path, stop_timeout: int) -> Iterator[None]:
        """A module's use of the project: no leftovers of an interrupted earlier run before; the results file and
        `down --volumes` after (`stop_timeout`: seconds a container gets to stop on SIGTERM)."""
        down = ("--profile", "monitoring", "down", "--volumes", "--remove-orphans", "--timeout", str(stop_timeout))
        self.compose(*down, check=False)
        yield
        results.parent.mkdir(parents=True, exist_ok=True)
        results.write_text(json.dumps(self.results, indent=2) + "\n")
        self.compose(*down, check=False)

    def containers(self) -> list[dict]:
        """`docker compose ps -a` as rows (compose prints one JSON line per container, older versions one list)."""
        out = self.compose("ps", "-a", "--format", "json").stdout
        rows = [json.loads(line) for line in out.splitlines() if line.strip()]
        return rows[0] if len(rows) == 1 and isinstance(rows[0], list) else rows

    def wait_healthy(self, services: list[str], timeout: float = 240) -> float:
        """Until every container of these services is healthy (each replica counts); returns the seconds it took.
        On timeout an AssertionError with the services' last log lines."""
        started = time.monotonic()

        def healthy() -> bool:
            rows = [row for row in self.containers() if row["Service"] in services]
            return {row["Service"] for row in rows} == set(services) and all(r["Health"] == "healthy" for r in rows)

        try:
            wait_for(f"{services} to be healthy", healthy, timeout, interval=2)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n{self.compose('logs', '--tail', '40').stdout}") from None
        return time.monotonic() - started

    def promql(self, expr: str) -> list[dict]:
        """The series an instant PromQL query returns from the monitoring profile's Prometheus (HTTP API v1)."""
        answer = requests.get(f"{self.prometheus_url}/api/v1/query", params={"query": expr}, timeout=10).json()
        assert answer["status"] == "success", (expr, answer)
        return answer["data"]["result"]

    def promql_value(self, expr: str) -> float | None:
        """The value of the first series `expr` returns (None when it returns none)."""
        series = self.promql(expr)
        return float(series[0]["value"][1]) if series else None

    def airflow(self) -> Airflow:
        """The project's Airflow client, logged in as this stack's admin."""
        return Airflow.login(self.cfg)


def wait_until_serving(script: Path, proc: subprocess.Popen, health_url: str, log: Path, timeout: float) -> None:
    """Until `health_url` answers; a failed start raises with the log's tail: the script and the server say why
    only there."""
    try:
        wait_until_up(health_url, timeout=timeout, proc=proc)
    except (RuntimeError, TimeoutError) as exc:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        raise RuntimeError(f"{script.name}: {exc}; the last lines of {log}:\n{tail}") from exc


def venv_env(**values: str) -> dict[str, str]:
    """This environment with the given values, the venv's bin dir first on PATH (the entry scripts call its tools)."""
    env = {**os.environ, **values}
    return {**env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"}


@contextmanager
def service(
    script: Path, log: Path, env: Mapping[str, str], health_url: str | None, timeout: float = 120
) -> Iterator[subprocess.Popen]:
    """Run an entry script (mlflow/*.sh) as its own process group, the venv's bin dir first on PATH, output to
    `log`; wait until `health_url` answers (None: do not wait). The group because the script execs a server that
    forks workers: stopping the group stops them all."""
    path = venv_env(**env)["PATH"]
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [str(script)], env={**env, "PATH": path}, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            if health_url is not None:
                wait_until_serving(script, proc, health_url, log, timeout)
            yield proc
        finally:
            with contextlib.suppress(ProcessLookupError):  # the group may be gone already
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


# The session's tracking server starts with the session, so that its start-up (~10 s) overlaps the collection and
# the tests that run first; the fixture waits for it. Stopped at once when collection shows no test needs it.
BACKGROUND = contextlib.ExitStack()
TRACKING: dict[str, object] = {}


def pytest_sessionstart() -> None:
    data = Path(tempfile.mkdtemp(prefix="pytest-mlruns-"))
    BACKGROUND.callback(shutil.rmtree, data, ignore_errors=True)
    port = free_port()
    env = {**os.environ, "MLFLOW_DATA_DIR": str(data), "MLFLOW_HOST": "127.0.0.1", "MLFLOW_PORT": str(port)}
    proc = BACKGROUND.enter_context(service(ROOT / "mlflow" / "tracking-server.sh", data / "server.log", env, None))
    TRACKING.update(uri=f"http://127.0.0.1:{port}", proc=proc, log=data / "server.log")


@pytest.hookimpl(trylast=True)  # after -m and -k have deselected what will not run
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if not any("tracking_server" in getattr(item, "fixturenames", ()) for item in items):
        BACKGROUND.close()
        TRACKING.clear()


def pytest_sessionfinish() -> None:
    BACKGROUND.close()


@pytest.fixture(scope="session")
def tracking_server() -> str:
    """mlflow/tracking-server.sh on a free loopback port with a throwaway store (started at collection)."""
    uri = str(TRACKING["uri"])
    wait_until_serving(ROOT / "mlflow" / "tracking-server.sh", TRACKING["proc"], f"{uri}/health", TRACKING["log"], 120)
    return uri


@pytest.fixture(scope="session")
def trained_run(tracking_server: str) -> str:
    """One real training run (default settings) in the default experiment."""
    return train_run(tracking_server)


@pytest.fixture
def champion(tracking_server: str, trained_run: str, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str, str]:
    """A registered model of its own (name, version, run ID) whose champion is the session's trained run; the
    environment names it (REGISTERED_MODEL_NAME) and pushes nothing."""
    import mlflow

    from mlops_pipeline import registry
    from mlops_pipeline.settings import TrainSettings, from_env

    name = f"model-{datetime.now(UTC):%H%M%S%f}"
    monkeypatch.setenv("REGISTERED_MODEL_NAME", name)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_server)
    monkeypatch.setenv("PUSHGATEWAY_URL", "")
    mlflow.set_tracking_uri(tracking_server)
    result = registry.register_and_promote(trained_run, from_env(TrainSettings, min_accuracy=0))
    assert result["promoted"]
    return name, str(result["version"]), trained_run


def train_run(tracking_server: str, experiment: str = "mlops_pipeline", **settings: object) -> str:
    """check -> train -> evaluate in one process, as the DAG does it, with these settings over the environment's."""
    from mlops_pipeline import pipeline
    from mlops_pipeline.settings import TrainSettings, from_env

    given = {"mlflow_tracking_uri": tracking_server, "mlflow_experiment_name": experiment, **settings}
    return pipeline.run(from_env(TrainSettings, **given))


def pinned_server_env(tracking_uri: str, run_id: str, port: int, workers: str) -> dict[str, str]:
    """The environment of mlflow/model-server.sh serving one fixed run on 127.0.0.1:port (the original's flow);
    MODEL_SERVER_* settings of this process are left out, so only the given ones apply."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("MODEL_SERVER_")},
        "MLFLOW_TRACKING_URI": tracking_uri,
        "MODEL_SERVER_HOST": "127.0.0.1",
        "MODEL_SERVER_PORT": str(port),
        "LATEST_MODEL_RUN_ID": run_id,
        "MODEL_SERVER_WORKERS": workers,
    }


SEED_BODY = b'{"inputs": [[5.1, 3.5, 1.4, 0.2]]}'
SEED_REQUEST = (  # raw HTTP/1.1, as wrk sends it
    f"POST /invocations HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    f"Content-Length: {len(SEED_BODY)}\r\n\r\n"
).encode() + SEED_BODY


def read_seed_answer(sock: socket.socket) -> None:
    """Read from a kept-alive connection until the seed request's answer is complete."""
    answer = b""
    while b'{"predictions": [0]}' not in answer:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {answer!r}"
        answer += chunk


def keep_alive_ms(port: int, requests_: int = 40) -> float:
    """Median milliseconds per seed request on ONE kept-alive connection."""
    times = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        for _ in range(requests_):
            start = time.perf_counter()
            sock.sendall(SEED_REQUEST)
            read_seed_answer(sock)
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] * 1000
