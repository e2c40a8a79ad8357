"""Train, evaluate, log and promote an Iris RandomForest with MLflow.

Plain functions (check -> train -> evaluate -> register/promote) so the same code runs from the Airflow DAG,
from the tests and by hand (``python train_model.py``), with no orchestrator in the way.

The training data is a CSV file (TRAINING_DATA_PATH; the DAG's Airflow asset), seeded with scikit-learn's Iris when
missing and only ever appended to. Every run logs the rows it trained on (its reference, for drift monitoring).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import tempfile
import warnings
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

from shim_warnings import ignore_airflow_shim_warnings

if TYPE_CHECKING:  # heavy imports stay out of module import: the DAG file imports this one while parsing
    import numpy as np
    import pandas as pd
    from mlflow.data.pandas_dataset import PandasDataset
    from sklearn.ensemble import RandomForestClassifier

log = logging.getLogger(__name__)
ignore_airflow_shim_warnings()  # inside an Airflow task skops would log a warning per shim it probes

DEFAULT_EXPERIMENT = "mlops_pipeline"
DEFAULT_MODEL_NAME = "iris-classifier"
CHAMPION = "champion"  # the registry alias the model-server follows
NEVER_PROMOTE = 1.5  # the highest MIN_ACCURACY accepted: above 1 no model passes
MODEL_ARTIFACT = "model"  # the original tutorial serves runs:/<run_id>/model
# The training data's columns, for every module that reads or writes those rows: scikit-learn's
# load_iris().feature_names and an integer label, the index into CLASS_NAMES.
FEATURE_NAMES = ("sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)")
LABEL_COLUMN = "target"
CLASS_NAMES = ("setosa", "versicolor", "virginica")
TRAINING_DATA_NAME = "iris_training_data"  # the Airflow asset's name and the MLflow dataset's
REFERENCE_ARTIFACT = "reference/train.csv"  # a run's training rows, for a monitor to compare served inputs with
IRIS_ROWS = 150  # the seeded rows: split() splits them as it did before the data was a file
# skops refuses to load anything it does not know; a forest is made of these trees (MLflow 3 default
# format). Naming the type keeps skops' safety instead of falling back to pickle.
SKOPS_TRUSTED_TYPES = ["sklearn.tree._tree.Tree"]


class ConfigError(ValueError):
    """A setting from the environment or the command line is unusable; the message names it."""


class DataError(ValueError):
    """The training data is not what the model expects; the message says what is wrong."""


class MissingReferenceError(LookupError):
    """The run logged no training rows (it predates REFERENCE_ARTIFACT); the message names the run."""


@dataclass(frozen=True)
class TrainConfig:
    # The original tutorial's model: RandomForestClassifier(n_estimators=100, max_depth=3).
    n_estimators: int = 100
    max_depth: int | None = 3
    test_size: float = 0.2
    random_state: int = 42


def int_setting(name: str, raw: str, *, allow_none: bool = False) -> int | None:
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
    n_estimators = int_setting("RF_N_ESTIMATORS", env.get("RF_N_ESTIMATORS") or str(defaults.n_estimators))
    max_depth = int_setting("RF_MAX_DEPTH", env.get("RF_MAX_DEPTH", str(defaults.max_depth)), allow_none=True)
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


def training_data_path(env: os._Environ[str] | dict[str, str] | None = None) -> Path:
    """TRAINING_DATA_PATH, else data/iris.csv in AIRFLOW_HOME: the image's /opt/airflow/data/iris.csv and local
    mode's state folder with no setting. The DAG names its asset after it while parsing: no imports, no I/O."""
    env = os.environ if env is None else env
    raw = env.get("TRAINING_DATA_PATH") or os.path.join(env.get("AIRFLOW_HOME") or "~/airflow", "data", "iris.csv")
    return Path(raw).expanduser().absolute()


def ensure_training_data(path: Path | None = None) -> Path:
    """Seed a missing file with scikit-learn's bundled Iris (nothing is downloaded), so a fresh volume trains the
    model the seed always trained. Renamed into place, so a reader sees no file or a whole one."""
    path = path or training_data_path()
    if path.exists():
        return path
    from sklearn.datasets import load_iris

    frame = as_frame(*load_iris(return_X_y=True))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            frame.to_csv(f, index=False, lineterminator="\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temp, 0o644)  # mkstemp's 0600 would hide it from the other services' users
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    log.info("seeded %s with scikit-learn's Iris (%d rows)", path, len(frame))
    return path


def read_training_data(path: Path) -> pd.DataFrame:
    """The file's rows (features float, label int), or a DataError naming the file, the row and the problem: a bad
    value must stop training, not turn into a NaN or a fourth class. Blank lines are skipped."""
    import numpy as np
    import pandas as pd

    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=False)
    except (OSError, ValueError) as exc:  # missing, not UTF-8, a row with too many fields, empty
        raise DataError(f"{path}: not a readable CSV file: {str(exc).strip()}") from None
    expected = [*FEATURE_NAMES, LABEL_COLUMN]
    missing = [c for c in expected if c not in frame.columns]
    extra = [c for c in frame.columns if c not in expected]
    if missing or extra:
        raise DataError(f"{path}: header: missing columns {missing}, unexpected columns {extra}; expected {expected}")
    frame = frame.loc[(frame != "").any(axis=1), expected]  # the index stays the row's position: line = index + 2

    def where(i: int) -> str:
        return f"{path}: row {i + 1} (line {i + 2})"

    rows = {}
    for name in FEATURE_NAMES:
        values = pd.to_numeric(frame[name], errors="coerce")  # anything but a number becomes NaN
        bad = ~np.isfinite(values)
        if bad.any():
            i = int(bad.idxmax())
            raise DataError(f"{where(i)}: {name} is {frame.at[i, name]!r}, not a finite number")
        rows[name] = values.astype("float64")
    classes = [str(c) for c in range(len(CLASS_NAMES))]
    labels = frame[LABEL_COLUMN].str.strip()
    bad = ~labels.isin(classes)
    if bad.any():
        i = int(bad.idxmax())
        raise DataError(
            f"{where(i)}: {LABEL_COLUMN} is {frame.at[i, LABEL_COLUMN]!r}, not one of {', '.join(classes)} "
            f"({', '.join(CLASS_NAMES)})"
        )
    rows[LABEL_COLUMN] = labels.astype("int64")
    return pd.DataFrame(rows).reset_index(drop=True)


def load_data(path: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The training data file as (features, labels), seeded with Iris first if it is missing."""
    frame = read_training_data(ensure_training_data(path))
    return frame[list(FEATURE_NAMES)].to_numpy(), frame[LABEL_COLUMN].to_numpy()


def as_frame(x: np.ndarray, y: np.ndarray) -> pd.DataFrame:
    """Rows in the training file's columns."""
    import pandas as pd

    return pd.DataFrame(x, columns=list(FEATURE_NAMES)).assign(**{LABEL_COLUMN: y})


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
    """(x_train, x_test, y_train, y_test). Appending rows never moves a row to the other side, so no later model
    trains on an earlier run's held-out rows, and the gate compares two models on rows neither trained on. The
    first IRIS_ROWS rows split seeded and stratified, as Iris always did; each later row by its own seeded draw."""
    import numpy as np
    from sklearn.model_selection import train_test_split

    head = min(len(x), IRIS_ROWS)
    x_train, x_test, y_train, y_test = train_test_split(
        x[:head], y[:head], test_size=cfg.test_size, random_state=cfg.random_state, stratify=y[:head]
    )
    if len(x) == head:
        return x_train, x_test, y_train, y_test
    # RandomState's stream is frozen across NumPy versions, and row i's draw does not depend on how many follow.
    held = np.random.RandomState(cfg.random_state).random_sample(len(x))[head:] < cfg.test_size
    x_tail, y_tail = x[head:], y[head:]
    return (
        np.concatenate([x_train, x_tail[~held]]),
        np.concatenate([x_test, x_tail[held]]),
        np.concatenate([y_train, y_tail[~held]]),
        np.concatenate([y_test, y_tail[held]]),
    )


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
    from sklearn.metrics import ConfusionMatrixDisplay

    metrics = evaluate(model, x_test, y_test)
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics(metrics)
        display = ConfusionMatrixDisplay.from_estimator(model, x_test, y_test, display_labels=list(CLASS_NAMES))
        display.ax_.set_title(f"Confusion matrix (held-out, accuracy {metrics['accuracy']:.3f})")
        mlflow.log_figure(display.figure_, "confusion_matrix.png")
        plt.close(display.figure_)
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.barh(FEATURE_NAMES, model.feature_importances_)
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
    model: RandomForestClassifier,
    cfg: TrainConfig,
    x_example: np.ndarray,
    metrics: dict[str, float] | None = None,
    reference: PandasDataset | None = None,
    params: dict[str, str | int] | None = None,
) -> str:
    """Log params (and metrics, if given) and the model in the active experiment; return the run ID. A reference
    (the training rows) is logged as the run's input and as REFERENCE_ARTIFACT; params are logged beside cfg."""
    import mlflow
    from mlflow.models import infer_signature

    # A numpy example gives a tensor signature, so the original tutorial's {"inputs": [[...]]} payload is accepted.
    example = x_example[:5]
    signature = infer_signature(example, model.predict(example))
    with mlflow.start_run() as run:
        mlflow.log_params(asdict(cfg) | (params or {}))
        if metrics:
            mlflow.log_metrics(metrics)
        if reference is not None:
            mlflow.log_input(reference, context="training")
            mlflow.log_text(reference.df.to_csv(index=False, lineterminator="\n"), REFERENCE_ARTIFACT)
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
    """Train on the training split and log params, the training rows and the model (the DAG's `train` task);
    return the run ID."""
    import mlflow
    from mlflow.data.sources import LocalArtifactDatasetSource

    cfg = cfg or config_from_env()
    path = training_data_path()
    x, y = load_data(path)
    x_train, _, y_train, _ = split(x, y, cfg)
    split_rows = {"data_rows": len(x), "data_sha256": _rows_digest(x, y)}  # what held_out() finds the rows by
    with warnings.catch_warnings():
        # MLflow's notes on its own code, not on these rows: its digest calls pandas in a way pandas 4 will refuse,
        # and its schema hint says integer columns cannot hold missing values (the labels never do).
        warnings.filterwarnings("ignore", message="Starting with pandas version 4.0", module="mlflow")
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer", module="mlflow")
        reference = mlflow.data.from_pandas(
            as_frame(x_train, y_train),
            source=LocalArtifactDatasetSource(path.as_uri()),  # a source object: a path string makes MLflow warn
            name=TRAINING_DATA_NAME,
            targets=LABEL_COLUMN,
        )
        return log_run(train(x_train, y_train, cfg), cfg, x_train, reference=reference, params=split_rows)


def _rows_digest(x: np.ndarray, y: np.ndarray) -> str:
    """A fingerprint of rows, so a later evaluation can tell that the data file still begins with a run's rows."""
    import hashlib

    import numpy as np

    return hashlib.sha256(np.asarray(x, "float64").tobytes() + np.asarray(y, "int64").tobytes()).hexdigest()


def load_reference(run_id: str) -> pd.DataFrame:
    """The rows the run trained on, as it logged them: what a monitor compares that model's inputs with."""
    import io

    import mlflow
    import pandas as pd
    from mlflow import MlflowClient

    folder = os.path.dirname(REFERENCE_ARTIFACT)
    if REFERENCE_ARTIFACT not in {a.path for a in MlflowClient().list_artifacts(run_id, folder)}:
        raise MissingReferenceError(
            f"run {run_id} has no {REFERENCE_ARTIFACT}: it was trained before runs logged their training rows"
        )
    return pd.read_csv(io.StringIO(mlflow.artifacts.load_text(f"runs:/{run_id}/{REFERENCE_ARTIFACT}")))


def held_out(run_id: str) -> tuple[np.ndarray, np.ndarray]:
    """The rows the run was trained without, however many rows were appended since: the first data_rows rows of
    the data file (checked against data_sha256), split as the run split them (checked against its reference).
    Runs from before the data file (no data_rows) trained on scikit-learn's Iris."""
    import mlflow
    import numpy as np

    params = mlflow.get_run(run_id).data.params
    cfg = TrainConfig(test_size=float(params["test_size"]), random_state=int(params["random_state"]))
    if "data_rows" not in params:
        from sklearn.datasets import load_iris

        _, x_test, _, y_test = split(*load_iris(return_X_y=True), cfg)
        return x_test, y_test
    rows, path = int(params["data_rows"]), training_data_path()
    x, y = load_data(path)
    if len(x) < rows or _rows_digest(x[:rows], y[:rows]) != params["data_sha256"]:
        raise DataError(
            f"{path} no longer begins with the {rows} rows run {run_id} split: rows were changed or removed, "
            "not appended"
        )
    x_train, x_test, y_train, y_test = split(x[:rows], y[:rows], cfg)
    reference = load_reference(run_id)
    if not (
        np.array_equal(reference[list(FEATURE_NAMES)].to_numpy(), x_train)
        and np.array_equal(reference[LABEL_COLUMN].to_numpy(), y_train)
    ):
        raise DataError(f"split() no longer splits run {run_id}'s rows as it did: its held-out rows are unknown")
    return x_test, y_test


def evaluate_run(run_id: str) -> dict[str, float]:
    """Load the run's model and score it on its held-out split (the DAG's `evaluate` task)."""
    import mlflow

    model = mlflow.sklearn.load_model(f"runs:/{run_id}/{MODEL_ARTIFACT}")
    return log_evaluation(run_id, model, *held_out(run_id))


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
        x_test, y_test = held_out(run_id)
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
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Training data: $TRAINING_DATA_PATH or $AIRFLOW_HOME/data/iris.csv (AIRFLOW_HOME: ~/airflow); "
        "seeded with scikit-learn's Iris when missing.",
    )
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
