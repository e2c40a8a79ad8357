"""Train, evaluate and log an Iris RandomForest to MLflow.

Plain functions (load -> split -> train -> evaluate -> log) so the same code runs from the Airflow DAG,
from the tests and by hand (``python train_model.py``), with no orchestrator in the way.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import asdict, dataclass
from importlib.metadata import version
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # heavy imports stay out of module import: the DAG file imports this lazily
    import numpy as np
    from sklearn.ensemble import RandomForestClassifier

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "mlops_pipeline"
MODEL_ARTIFACT = "model"  # the seed serves runs:/<run_id>/model
# skops refuses to load anything it does not know; a forest is made of these trees (MLflow 3 default
# format). Naming the type keeps skops' safety instead of falling back to pickle.
SKOPS_TRUSTED_TYPES = ["sklearn.tree._tree.Tree"]


class ConfigError(ValueError):
    """A setting from the environment or the command line is unusable; the message names it."""


@dataclass(frozen=True)
class TrainConfig:
    n_estimators: int = 100
    max_depth: int | None = 3
    test_size: float = 0.2
    random_state: int = 42


def _int_setting(name: str, raw: str, *, allow_none: bool = False) -> int | None:
    if allow_none and raw.strip().lower() in {"", "none"}:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a positive integer, got {raw!r}") from None
    if value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {raw!r}")
    return value


def config_from_env(env: os._Environ[str] | dict[str, str] | None = None) -> TrainConfig:
    """Read hyper-parameters from RF_N_ESTIMATORS / RF_MAX_DEPTH so `.env` can change them."""
    env = os.environ if env is None else env
    defaults = TrainConfig()
    n_estimators = _int_setting("RF_N_ESTIMATORS", env.get("RF_N_ESTIMATORS") or str(defaults.n_estimators))
    max_depth = _int_setting("RF_MAX_DEPTH", env.get("RF_MAX_DEPTH", str(defaults.max_depth)), allow_none=True)
    return TrainConfig(n_estimators=n_estimators or defaults.n_estimators, max_depth=max_depth)


def load_data() -> tuple[np.ndarray, np.ndarray]:
    """Iris ships inside scikit-learn, so nothing is downloaded."""
    from sklearn.datasets import load_iris

    data = load_iris()
    return data.data, data.target


def split(x: np.ndarray, y: np.ndarray, cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Seeded and stratified, so every run scores on the same held-out rows."""
    from sklearn.model_selection import train_test_split

    return train_test_split(x, y, test_size=cfg.test_size, random_state=cfg.random_state, stratify=y)


def train(x_train: np.ndarray, y_train: np.ndarray, cfg: TrainConfig) -> RandomForestClassifier:
    from sklearn.ensemble import RandomForestClassifier

    model = RandomForestClassifier(
        n_estimators=cfg.n_estimators, max_depth=cfg.max_depth, random_state=cfg.random_state
    )
    return model.fit(x_train, y_train)


def evaluate(model: RandomForestClassifier, x_test: np.ndarray, y_test: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    predicted = model.predict(x_test)
    return {
        "accuracy": float(accuracy_score(y_test, predicted)),
        "f1_macro": float(f1_score(y_test, predicted, average="macro")),
    }


def check_tracking_server(tracking_uri: str, timeout: float = 5.0) -> None:
    """Fail in seconds with the setting's name instead of after MLflow's minutes of retries."""
    if not tracking_uri.startswith(("http://", "https://")):
        return  # a local path or sqlite URI: nothing to reach
    import requests

    try:
        requests.get(f"{tracking_uri.rstrip('/')}/health", timeout=timeout).raise_for_status()
    except requests.RequestException as exc:
        raise ConfigError(f"MLFLOW_TRACKING_URI={tracking_uri} is not reachable: {exc}") from None


def pip_requirements() -> list[str]:
    """Explicit requirements: letting MLflow infer them costs ~9 s per run."""
    return [f"{pkg}=={version(pkg)}" for pkg in ("mlflow", "scikit-learn", "skops", "numpy")]


def log_run(
    model: RandomForestClassifier,
    cfg: TrainConfig,
    metrics: dict[str, float],
    x_example: np.ndarray,
) -> str:
    """Log params, metrics and the model in the active experiment; return the run ID."""
    import mlflow
    from mlflow.models import infer_signature

    # A numpy example gives a tensor signature, so the seed's {"inputs": [[...]]} payload is accepted.
    example = x_example[:5]
    signature = infer_signature(example, model.predict(example))
    with mlflow.start_run() as run:
        mlflow.log_params({k: v for k, v in asdict(cfg).items()})
        mlflow.log_metrics(metrics)
        mlflow.sklearn.log_model(
            model,
            name=MODEL_ARTIFACT,
            signature=signature,
            input_example=example,
            pip_requirements=pip_requirements(),
            serialization_format="skops",
            skops_trusted_types=SKOPS_TRUSTED_TYPES,
        )
        return run.info.run_id


def run(tracking_uri: str | None = None, experiment: str | None = None, cfg: TrainConfig | None = None) -> str:
    """The whole job: train on Iris, log to MLflow, return the run ID."""
    tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "http://localhost:5000")
    experiment = experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
    cfg = cfg or config_from_env()
    check_tracking_server(tracking_uri)

    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(experiment)
    x, y = load_data()
    x_train, x_test, y_train, y_test = split(x, y, cfg)
    model = train(x_train, y_train, cfg)
    metrics = evaluate(model, x_test, y_test)
    run_id = log_run(model, cfg, metrics, x_train)
    log.info("run %s in experiment %r: %s", run_id, experiment, metrics)
    return run_id


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI or http://localhost:5000")
    parser.add_argument("--experiment", help=f"default: $MLFLOW_EXPERIMENT_NAME or {DEFAULT_EXPERIMENT}")
    parser.add_argument("--n-estimators", help="default: $RF_N_ESTIMATORS or 100")
    parser.add_argument("--max-depth", help="default: $RF_MAX_DEPTH or 3 ('none' for unlimited)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    env = dict(os.environ)
    if args.n_estimators is not None:
        env["RF_N_ESTIMATORS"] = args.n_estimators
    if args.max_depth is not None:
        env["RF_MAX_DEPTH"] = args.max_depth
    try:
        run_id = run(args.tracking_uri, args.experiment, config_from_env(env))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(run_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
