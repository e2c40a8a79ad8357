"""Train, evaluate, log and promote an Iris RandomForest with MLflow.

Plain functions (check -> train -> evaluate -> register/promote) so the same code runs from the Airflow DAG,
from the tests and by hand (``python train_model.py``), with no orchestrator in the way.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from dataclasses import asdict, dataclass
from importlib.metadata import version
from typing import TYPE_CHECKING

from shim_warnings import ignore_airflow_shim_warnings

if TYPE_CHECKING:  # heavy imports stay out of module import: the DAG file imports this lazily
    import numpy as np
    from sklearn.ensemble import RandomForestClassifier

log = logging.getLogger(__name__)
ignore_airflow_shim_warnings()  # inside an Airflow task skops would log a warning per shim it probes

DEFAULT_EXPERIMENT = "mlops_pipeline"
DEFAULT_MODEL_NAME = "iris-classifier"
CHAMPION = "champion"  # the registry alias the model-server follows
NEVER_PROMOTE = 1.5  # the highest MIN_ACCURACY accepted: above 1 no model passes
MODEL_ARTIFACT = "model"  # the original tutorial serves runs:/<run_id>/model
CLASS_NAMES = ("setosa", "versicolor", "virginica")
# skops refuses to load anything it does not know; a forest is made of these trees (MLflow 3 default
# format). Naming the type keeps skops' safety instead of falling back to pickle.
SKOPS_TRUSTED_TYPES = ["sklearn.tree._tree.Tree"]


class ConfigError(ValueError):
    """A setting from the environment or the command line is unusable; the message names it."""


class DataError(ValueError):
    """The training data is not what the model expects; the message says what is wrong."""


@dataclass(frozen=True)
class TrainConfig:
    # The original tutorial's model: RandomForestClassifier(n_estimators=100, max_depth=3).
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


def min_accuracy_from_env(env: os._Environ[str] | dict[str, str] | None = None) -> float:
    """MIN_ACCURACY: the quality gate's floor, an accuracy from 0 to 1; up to NEVER_PROMOTE, a value above 1
    refuses every model (docs/registry-and-serving.md). Anything else is a typo, refused by name."""
    raw = (os.environ if env is None else env).get("MIN_ACCURACY") or "0.9"
    problem = f"MIN_ACCURACY must be a number from 0 to 1 (or up to {NEVER_PROMOTE}: promote nothing), got {raw!r}"
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(problem) from None
    if not 0 <= value <= NEVER_PROMOTE:  # NaN fails every comparison
        raise ConfigError(problem)
    return value


def load_data() -> tuple[np.ndarray, np.ndarray]:
    """Iris ships inside scikit-learn, so nothing is downloaded."""
    from sklearn.datasets import load_iris

    data = load_iris()
    return data.data, data.target


def check_data(x: np.ndarray, y: np.ndarray) -> dict[str, int]:
    """Refuse to train on data of the wrong shape, with gaps, or missing a class."""
    import numpy as np

    if x.ndim != 2 or x.shape[1] != 4 or len(x) != len(y):
        raise DataError(f"expected 4 feature columns and one label per row, got X{x.shape} and y{y.shape}")
    if len(x) < 30:
        raise DataError(f"only {len(x)} rows: too few to train and hold out a test split")
    if np.isnan(x).any():
        raise DataError(f"{int(np.isnan(x).sum())} missing feature values")
    missing = sorted(set(range(len(CLASS_NAMES))) - {int(c) for c in np.unique(y)})
    if missing:
        raise DataError(f"classes missing from the labels: {[CLASS_NAMES[c] for c in missing]}")
    return {"rows": int(len(x)), "features": int(x.shape[1]), "classes": int(len(np.unique(y)))}


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
    """Accuracy, macro F1 and per-class precision/recall/F1 on the held-out split."""
    from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

    predicted = model.predict(x_test)
    metrics = {
        "accuracy": float(accuracy_score(y_test, predicted)),
        "f1_macro": float(f1_score(y_test, predicted, average="macro")),
    }
    precision, recall, f1, _ = precision_recall_fscore_support(
        y_test, predicted, labels=list(range(len(CLASS_NAMES))), zero_division=0
    )
    for i, name in enumerate(CLASS_NAMES):
        metrics[f"precision_{name}"] = float(precision[i])
        metrics[f"recall_{name}"] = float(recall[i])
        metrics[f"f1_{name}"] = float(f1[i])
    return metrics


def log_evaluation(run_id: str, model: RandomForestClassifier, x_test: np.ndarray, y_test: np.ndarray) -> dict:
    """Log metrics, a confusion matrix and a feature-importance plot to the run, for people to look at."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow
    from sklearn.datasets import load_iris
    from sklearn.metrics import ConfusionMatrixDisplay

    metrics = evaluate(model, x_test, y_test)
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics(metrics)
        display = ConfusionMatrixDisplay.from_estimator(model, x_test, y_test, display_labels=list(CLASS_NAMES))
        display.ax_.set_title(f"Confusion matrix (held-out, accuracy {metrics['accuracy']:.3f})")
        mlflow.log_figure(display.figure_, "confusion_matrix.png")
        plt.close(display.figure_)
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.barh(load_iris().feature_names, model.feature_importances_)
        ax.set_xlabel("importance (mean decrease in impurity)")
        ax.set_title("Feature importance")
        fig.tight_layout()
        mlflow.log_figure(fig, "feature_importance.png")
        plt.close(fig)
    return metrics


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
    """Explicit requirements: letting MLflow infer them starts a slow environment probe on every run
    (benchmarks/results.md). The Airflow image has only
    mlflow-skinny (the client); the model needs MLflow itself to be served, at the same version."""
    import mlflow

    return [f"mlflow=={mlflow.__version__}"] + [f"{pkg}=={version(pkg)}" for pkg in ("scikit-learn", "skops", "numpy")]


def log_run(
    model: RandomForestClassifier, cfg: TrainConfig, x_example: np.ndarray, metrics: dict[str, float] | None = None
) -> str:
    """Log params (and metrics, if given) and the model in the active experiment; return the run ID."""
    import mlflow
    from mlflow.models import infer_signature

    # A numpy example gives a tensor signature, so the original tutorial's {"inputs": [[...]]} payload is accepted.
    example = x_example[:5]
    signature = infer_signature(example, model.predict(example))
    with mlflow.start_run() as run:
        mlflow.log_params(asdict(cfg))
        if metrics:
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


def connect(tracking_uri: str | None = None, experiment: str | None = None) -> str:
    """Point MLflow at the tracking server and experiment from the environment; fail fast, naming the setting."""
    tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "http://localhost:5000")
    experiment = experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
    check_tracking_server(tracking_uri)
    import mlflow
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(tracking_uri)
    try:
        mlflow.set_experiment(experiment)
    except MlflowException as exc:
        raise ConfigError(f"MLFLOW_EXPERIMENT_NAME={experiment!r} cannot be used: {exc.message}") from None
    return experiment


def model_name_from_env() -> str:
    name = os.environ.get("REGISTERED_MODEL_NAME") or DEFAULT_MODEL_NAME
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", name):
        raise ConfigError(f"REGISTERED_MODEL_NAME must be letters, digits, '_', '.' or '-', got {name!r}")
    return name


def train_and_log(cfg: TrainConfig | None = None) -> str:
    """Train on the training split and log params + model (the DAG's `train` task); return the run ID."""
    cfg = cfg or config_from_env()
    x, y = load_data()
    x_train, _, y_train, _ = split(x, y, cfg)
    return log_run(train(x_train, y_train, cfg), cfg, x_train)


def _held_out(run_id: str) -> tuple[np.ndarray, np.ndarray]:
    """The test split the run was trained without (same seed and size as logged in its params)."""
    import mlflow

    params = mlflow.get_run(run_id).data.params
    cfg = TrainConfig(test_size=float(params["test_size"]), random_state=int(params["random_state"]))
    x, y = load_data()
    _, x_test, _, y_test = split(x, y, cfg)
    return x_test, y_test


def evaluate_run(run_id: str) -> dict[str, float]:
    """Load the run's model and score it on its held-out split (the DAG's `evaluate` task)."""
    import mlflow

    model = mlflow.sklearn.load_model(f"runs:/{run_id}/{MODEL_ARTIFACT}")
    return log_evaluation(run_id, model, *_held_out(run_id))


def register_and_promote(run_id: str, model_name: str | None = None, min_accuracy: float | None = None) -> dict:
    """Register the run's model; move the `champion` alias to it only if it passes the gate.

    Gate: accuracy >= MIN_ACCURACY and not worse than the current champion on the same held-out rows.
    Safe to repeat: a run is registered at most once, and the alias move is the last step, so a failure
    midway leaves the old champion in place and a retry finishes the job.
    """
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    name = model_name or model_name_from_env()
    floor = min_accuracy_from_env() if min_accuracy is None else min_accuracy
    client = MlflowClient()
    run = client.get_run(run_id)
    accuracy = run.data.metrics.get("accuracy")
    if accuracy is None:
        raise RuntimeError(f"run {run_id} has no accuracy metric: evaluate it before registering")

    existing = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    if existing:
        version = min(existing, key=lambda v: int(v.version)).version
    else:
        # MLflow 3 keeps the model as a LoggedModel linked to the run; register that directly.
        outputs = run.outputs.model_outputs if run.outputs else []
        source = f"models:/{outputs[0].model_id}" if outputs else f"runs:/{run_id}/{MODEL_ARTIFACT}"
        version = mlflow.register_model(source, name).version

    try:
        champion = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        champion = None
    champion_accuracy = None
    if champion is not None and champion.version != version:
        x_test, y_test = _held_out(run_id)
        champion_model = mlflow.sklearn.load_model(f"models:/{name}/{champion.version}")
        champion_accuracy = float((champion_model.predict(x_test) == y_test).mean())

    if accuracy < floor:
        promoted, reason = False, f"accuracy {accuracy:.4f} is below MIN_ACCURACY {floor:.4f}"
    elif champion is not None and champion.version == version:
        promoted, reason = True, f"version {version} is already the champion"
    elif champion_accuracy is not None and accuracy < champion_accuracy:
        promoted, reason = (
            False,
            f"accuracy {accuracy:.4f} is worse than champion v{champion.version}'s {champion_accuracy:.4f} "
            "on the same held-out rows",
        )
    elif champion_accuracy is not None:
        promoted, reason = (
            True,
            f"accuracy {accuracy:.4f} >= MIN_ACCURACY {floor:.4f} and >= champion v{champion.version}'s "
            f"{champion_accuracy:.4f}",
        )
    else:
        promoted, reason = True, f"accuracy {accuracy:.4f} >= MIN_ACCURACY {floor:.4f}; no champion yet"

    if promoted:
        client.set_registered_model_alias(name, CHAMPION, version)
    decision = "promoted" if promoted else "rejected"
    for key, value in {"gate.decision": decision, "gate.reason": reason}.items():
        client.set_model_version_tag(name, version, key, value)
        client.set_tag(run_id, key, value)
    client.set_tag(run_id, "registered_model_version", f"{name}/{version}")
    log.info("%s/%s %s: %s", name, version, decision, reason)
    return {"model": name, "version": version, "promoted": promoted, "reason": reason, "accuracy": accuracy}


def run(tracking_uri: str | None = None, experiment: str | None = None, cfg: TrainConfig | None = None) -> str:
    """The whole pipeline in one process (what the DAG does task by task); return the run ID."""
    cfg = cfg or config_from_env()
    connect(tracking_uri, experiment)
    check_data(*load_data())
    run_id = train_and_log(cfg)
    metrics = evaluate_run(run_id)
    log.info("run %s: %s", run_id, metrics)
    return run_id


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI or http://localhost:5000")
    parser.add_argument("--experiment", help=f"default: $MLFLOW_EXPERIMENT_NAME or {DEFAULT_EXPERIMENT}")
    parser.add_argument("--n-estimators", help="default: $RF_N_ESTIMATORS or 100")
    parser.add_argument("--max-depth", help="default: $RF_MAX_DEPTH or 3 ('none' for unlimited)")
    parser.add_argument("--register", action="store_true", help="also register the model and apply the gate")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    env = dict(os.environ)
    if args.n_estimators is not None:
        env["RF_N_ESTIMATORS"] = args.n_estimators
    if args.max_depth is not None:
        env["RF_MAX_DEPTH"] = args.max_depth
    try:
        run_id = run(args.tracking_uri, args.experiment, config_from_env(env))
        if args.register:
            print(register_and_promote(run_id)["reason"], file=sys.stderr)
    except (ConfigError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(run_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
