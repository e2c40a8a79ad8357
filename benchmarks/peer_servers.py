"""The model servers a user would pick instead of ours, for the `peers` part of the benchmark: how to install, start,
ask and stop each, in the settings its own documentation gives for production (access log off, its fast paths on,
2 worker processes, bound to 127.0.0.1).

Each peer but `mlflow models serve` (the product venv) gets its own venv from a fully pinned file under
benchmarks/peers/ (they conflict with the product lock), with the lock's scikit-learn, numpy and joblib, so every peer
loads the same joblib file and answers as scikit-learn does.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import free_port

ROOT = Path(__file__).resolve().parent.parent
PEERS_DIR = ROOT / "benchmarks" / "peers"
# No usage reports from the peers (MLflow's, BentoML's and the DO_NOT_TRACK convention).
QUIET = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "BENTOML_DO_NOT_TRACK": "true"}
# How a venv is made: part of its cache key. Bytecode is compiled at install, so no first start pays for it.
SYNC = ["pip", "sync", "--quiet", "--compile-bytecode", "--no-python-downloads"]

Rows = list[list[float]]
Command = Callable[[Path, Path, int, Path], tuple[list[str], dict[str, str]]]


@dataclass(frozen=True)
class Peer:
    """One peer server: what the tables show, where its settings come from, and its protocol."""

    name: str  # short key
    label: str  # for tables, with versions
    requirements: str | None  # file under benchmarks/peers/; None = the product venv
    docs: str  # the production-settings page followed
    settings: str  # one line: what was set and why
    path: str  # the prediction request's path
    stop_signal: int
    argv: Command  # (python, model_dir, port, workdir) -> argv, extra env
    encode: Callable[[Rows], Any]  # rows -> the JSON request
    decode: Callable[[Any], list[Any]]  # the JSON answer -> one prediction per row

    def command(self, python: Path, model_dir: Path, port: int, workdir: Path) -> tuple[list[str], dict[str, str]]:
        """argv and extra env vars to start it on 127.0.0.1:port (may write files into workdir)."""
        return self.argv(python, model_dir, port, workdir)

    def body(self, rows: Rows) -> bytes:
        """The request for these rows, in the server's own JSON protocol."""
        return json.dumps(self.encode(rows)).encode()

    def predictions(self, answer: bytes) -> list[int]:
        """One int class per row from the server's answer."""
        return [int(value) for value in self.decode(json.loads(answer))]


def _mlflow(python: Path, model_dir: Path, port: int, workdir: Path) -> tuple[list[str], dict[str, str]]:
    # MLflow execs `uvicorn` found on PATH: the product venv's. UVICORN_* env vars configure uvicorn's CLI.
    argv = [str(python), "-m", "mlflow", "models", "serve", "-m", str(model_dir / "mlflow-model")]
    argv += ["--env-manager", "local", "-w", "2", "-h", "127.0.0.1", "-p", str(port)]
    path = f"{python.parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return argv, {**QUIET, "PATH": path, "UVICORN_ACCESS_LOG": "false"}


def _mlserver(python: Path, model_dir: Path, port: int, workdir: Path) -> tuple[list[str], dict[str, str]]:
    # An empty model repository: MLServer then loads its "default" model from the MLSERVER_MODEL_* env vars.
    # gRPC and metrics always listen on ports of their own; .metrics and .envs would land in the cwd otherwise.
    repo = workdir / "mlserver-models"
    repo.mkdir(parents=True, exist_ok=True)
    env = {
        "MLSERVER_HOST": "127.0.0.1",
        "MLSERVER_HTTP_PORT": str(port),
        "MLSERVER_GRPC_PORT": str(free_port()),
        "MLSERVER_METRICS_PORT": str(free_port()),
        "MLSERVER_METRICS_DIR": str(workdir / "mlserver-metrics"),
        "MLSERVER_ENVIRONMENTS_DIR": str(workdir / "mlserver-envs"),
        "MLSERVER_PARALLEL_WORKERS": "2",
        "MLSERVER_DEBUG": "false",
        "MLSERVER_MODEL_NAME": "iris",
        "MLSERVER_MODEL_IMPLEMENTATION": "mlserver_sklearn.SKLearnModel",
        "MLSERVER_MODEL_URI": str(model_dir / "model.joblib"),
    }
    return [str(python.parent / "mlserver"), "start", str(repo)], {**QUIET, **env}


def _bentoml(python: Path, model_dir: Path, port: int, workdir: Path) -> tuple[list[str], dict[str, str]]:
    # Its process manager (circus) starts each worker in a session of its own: the workers are NOT in the server's
    # process group. SIGTERM to the main process ends them; to check for leftovers, take the process tree.
    argv = [str(python), "-m", "bentoml", "serve", "bentoml_service:IrisClassifier", "--working-dir", str(PEERS_DIR)]
    argv += ["--host", "127.0.0.1", "--port", str(port)]
    env = {"PEER_MODEL": str(model_dir / "model.joblib"), "BENTOML_HOME": str(workdir / "bentoml-home")}
    return argv, {**QUIET, **env}


def _litserve(python: Path, model_dir: Path, port: int, workdir: Path) -> tuple[list[str], dict[str, str]]:
    argv = [str(python), str(PEERS_DIR / "litserve_server.py"), "--model", str(model_dir / "model.joblib")]
    return [*argv, "--port", str(port)], dict(QUIET)


def _v2_request(rows: Rows) -> dict[str, Any]:
    """V2 (Open Inference Protocol) tensors are flat, row-major, with their shape beside them."""
    tensor = {"name": "input-0", "shape": [len(rows), len(rows[0])], "datatype": "FP64"}
    return {"inputs": [{**tensor, "data": [value for row in rows for value in row]}]}


PEERS: tuple[Peer, ...] = (
    Peer(
        name="mlflow",
        label="mlflow models serve (MLflow 3.17.2)",
        requirements=None,
        docs="https://mlflow.org/docs/latest/ml/deployment/deploy-model-locally/",
        settings="-w 2: uvicorn runs 2 worker processes, each loading the model; --env-manager local (the product"
        " venv); uvicorn's access log off by UVICORN_ACCESS_LOG=false (https://www.uvicorn.org/settings); uvloop and"
        " httptools are installed, so uvicorn's auto loop/http pick them",
        path="/invocations",
        stop_signal=signal.SIGTERM,
        argv=_mlflow,
        encode=lambda rows: {"inputs": rows},
        decode=lambda answer: answer["predictions"],
    ),
    Peer(
        name="mlserver",
        label="MLServer 1.7.1 + mlserver-sklearn 1.7.1",
        requirements="mlserver.txt",
        docs="https://docs.seldon.ai/mlserver/user-guide/parallel-inference",
        settings="MLSERVER_PARALLEL_WORKERS=2: one HTTP (uvicorn) process hands inference to a pool of 2 worker"
        " processes, each with the model; MLSERVER_DEBUG=false turns uvicorn's access log off (the default after 1.7.1:"
        " MLServer PR #2307, production wants no access log); metrics at their default (on); uvloop pinned to 0.21.0",
        path="/v2/models/iris/infer",
        stop_signal=signal.SIGTERM,
        argv=_mlserver,
        encode=_v2_request,
        decode=lambda answer: answer["outputs"][0]["data"],
    ),
    Peer(
        name="bentoml",
        label="BentoML 1.4.40",
        requirements="bentoml.txt",
        docs="https://docs.bentoml.com/en/latest/reference/bentoml/configurations.html",
        settings="@bentoml.service(workers=2): 2 processes, each an HTTP server with its own model;"
        ' logging={"access": {"enabled": False}}; `bentoml serve` runs in production mode by default; metrics at'
        " their default (on)",
        path="/predict",
        stop_signal=signal.SIGTERM,
        argv=_bentoml,
        encode=lambda rows: {"rows": rows},
        decode=lambda answer: answer,
    ),
    Peer(
        name="litserve",
        label="LitServe 0.2.19",
        requirements="litserve.txt",
        docs="https://lightning.ai/docs/litserve/api-reference/litserver",
        settings="workers_per_device=2 on 1 CPU device: 2 inference worker processes, fed by as many uvicorn API"
        " servers (num_api_servers defaults to the worker count); fast_queue=True (ZeroMQ, for >100 req/s);"
        " access_log=False, log_level=warning, generate_client_file=False",
        path="/predict",
        stop_signal=signal.SIGINT,
        argv=_litserve,
        encode=lambda rows: {"inputs": rows},
        decode=lambda answer: answer["predictions"],
    ),
)


def _uv() -> str:
    return shutil.which("uv") or str(ROOT / ".local" / "tools" / "bin" / "uv")


def environment(peer: Peer, cache: Path) -> Path:
    """The python of the peer's venv under `cache`, made once per requirement file (and interpreter) with uv from
    the package registry only (no interpreter download); the product venv's python when the peer has no file."""
    if peer.requirements is None:
        return Path(sys.executable)
    requirements = PEERS_DIR / peer.requirements
    key = hashlib.sha256(requirements.read_bytes() + f"{sys.version} {SYNC}".encode()).hexdigest()[:16]
    venv = cache / f"{peer.name}-{key}"
    python = venv / "bin" / "python"
    done = venv / ".complete"
    if done.exists():
        return python
    shutil.rmtree(venv, ignore_errors=True)
    cache.mkdir(parents=True, exist_ok=True)
    uv = _uv()
    steps = (
        [uv, "venv", "--quiet", "--python", sys.executable, "--no-python-downloads", str(venv)],
        [uv, *SYNC, "--python", str(python), str(requirements)],
    )
    for step in steps:
        out = subprocess.run(step, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(step[:3])} for {peer.name} failed: {out.stderr.strip()[-800:]}")
    done.write_text(f"{requirements.name} {key}\n")
    return python
