"""The training data: a CSV file (TRAINING_DATA_PATH; the training DAG's Airflow asset), seeded with scikit-learn's
Iris when missing and only ever appended to, checked by one row schema wherever rows come from (the file, labeled
rows being appended, rows read back from the inference log).

Every write goes through atomic_write: a reader, or an interrupted write, sees the old file or the new one, never
half of one.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING

from mlops_pipeline.schema import (
    CLASS_NAMES,
    FEATURE_NAMES,
    IRIS_ROWS,
    LABEL_COLUMN,
    REFERENCE_ARTIFACT,
    TRAINING_DATA_NAME,
    DataError,
)
from mlops_pipeline.settings import DataSettings, from_env

if TYPE_CHECKING:  # imported where used: the DAG files import this module while they are parsed
    import numpy as np
    import pandas as pd
    from airflow.sdk import Asset

log = logging.getLogger(__name__)
COLUMNS = [*FEATURE_NAMES, LABEL_COLUMN]
FINITE = "not a finite number"
A_CLASS = f"not one of {', '.join(map(str, range(len(CLASS_NAMES))))} ({', '.join(CLASS_NAMES)})"


def atomic_write(path: Path, write: Callable[[IO[bytes]], None], mode: int = 0o644) -> None:
    """Write a file through a temporary file beside it, synced, then renamed over it: readers see the old content
    or the new, and a failure leaves the old file as it was (and no temporary file behind)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())  # the new content is on disk before the rename makes it the file
        os.chmod(temp, mode)  # mkstemp's 0600 would lock out the other services' users
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def asset() -> Asset:
    """The training data as one Airflow asset: the appending DAG's outlet, the training DAG's schedule. Named while
    the DAG files are parsed: no I/O, nothing heavy."""
    from airflow.sdk import Asset

    return Asset(name=TRAINING_DATA_NAME, uri=from_env(DataSettings).data_path.as_uri())


def as_frame(x: np.ndarray, y: np.ndarray) -> pd.DataFrame:
    """Rows in the training file's columns."""
    import pandas as pd

    return pd.DataFrame(x, columns=list(FEATURE_NAMES)).assign(**{LABEL_COLUMN: y})


def seed(path: Path) -> Path:
    """Seed a missing file with scikit-learn's bundled Iris (nothing is downloaded), so a fresh volume trains the
    model the original always trained."""
    if not path.exists():
        from sklearn.datasets import load_iris

        frame = as_frame(*load_iris(return_X_y=True))
        atomic_write(path, lambda f: frame.to_csv(f, index=False, lineterminator="\n"))
        log.info("seeded %s with scikit-learn's Iris (%d rows)", path, len(frame))
    return path


def row_schema(features: Sequence[str] = FEATURE_NAMES, label: bool = True) -> object:
    """The one row schema (pandera): finite features, a label that is a class. Built on first use: pandera's import
    stays out of the DAG files' parsing. `features`: other names for the same checks (a log read without them)."""
    import numpy as np
    import pandera.pandas as pa

    finite = pa.Check(lambda s: np.isfinite(s), error=FINITE, ignore_na=False)
    columns = {name: pa.Column(float, finite, nullable=True) for name in features}
    if label:
        is_class = pa.Check.isin(range(len(CLASS_NAMES)), error=A_CLASS, ignore_na=False)
        columns[LABEL_COLUMN] = pa.Column(float, is_class, nullable=True)
    return pa.DataFrameSchema(columns, strict=True)


def problems(
    raw: pd.DataFrame, features: Sequence[str] = FEATURE_NAMES, label: bool = True
) -> tuple[pd.DataFrame, list[tuple[int, str]]]:
    """The rows as numbers, and each bad row's first problem by the row schema, in row order: (its index label,
    "<column> is <value>, <what it is not>")."""
    import pandas as pd
    from pandera.errors import SchemaErrors

    columns = [*features, LABEL_COLUMN] if label else list(features)
    numbers = raw[columns].apply(lambda column: pd.to_numeric(column, errors="coerce")).astype(float)
    try:
        row_schema(features, label).validate(numbers, lazy=True)
    except SchemaErrors as exc:
        cases = exc.failure_cases.dropna(subset=["index"])
        cases = cases.assign(order=cases["column"].map(columns.index)).sort_values(["index", "order"])
        found = []
        for i, column, check in cases.drop_duplicates("index")[["index", "column", "check"]].itertuples(index=False):
            value = raw.at[int(i), column]
            value = value.item() if hasattr(value, "item") else value  # a numpy scalar as the number it is
            found.append((int(i), f"{column} is {value!r}, {check}"))
        return numbers, found
    return numbers, []


def validate(frame: pd.DataFrame, source: str = "") -> pd.DataFrame:
    """The rows as the training data holds them (features float, label int), or a DataError naming the first bad
    row and its problem: a bad value must stop training, not become a NaN or a fourth class. `source`: the file the
    rows came from (its line numbers count the header)."""
    prefix = f"{source}: " if source else ""
    missing = [c for c in COLUMNS if c not in frame.columns]
    extra = [str(c) for c in frame.columns if c not in COLUMNS]
    if missing or extra:
        raise DataError(f"{prefix}header: missing columns {missing}, unexpected columns {extra}; expected {COLUMNS}")
    if frame.empty:
        raise DataError(f"{prefix}no rows")
    numbers, bad = problems(frame)  # the index is the row's position: a file's blank lines are gone, the numbers stay
    if bad:
        i, problem = bad[0]
        raise DataError(f"{prefix}row {i + 1}" + (f" (line {i + 2})" if source else "") + f": {problem}")
    return numbers.astype({LABEL_COLUMN: "int64"}).reset_index(drop=True)


def read(path: Path) -> pd.DataFrame:
    """The file's rows, checked (blank lines skipped); a DataError names the file, the row and the problem."""
    import pandas as pd

    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=False)
    except (OSError, ValueError) as exc:  # missing, not UTF-8, a row with too many fields, empty
        raise DataError(f"{path}: not a readable CSV file: {str(exc).strip()}") from None
    return validate(frame.loc[(frame != "").any(axis=1)], str(path))


def load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The training data as (features, labels), seeded with Iris first if it is missing."""
    frame = read(seed(path))
    return frame[list(FEATURE_NAMES)].to_numpy(), frame[LABEL_COLUMN].to_numpy()


def check(x: np.ndarray, y: np.ndarray) -> dict[str, int]:
    """Refuse to train on too few rows or a class missing (each row is already checked by the schema)."""
    import numpy as np

    if len(x) < 30:
        raise DataError(f"only {len(x)} rows: too few to train and hold out a test split")
    missing = sorted(set(range(len(CLASS_NAMES))) - {int(c) for c in np.unique(y)})
    if missing:
        raise DataError(f"classes missing from the labels: {[CLASS_NAMES[c] for c in missing]}")
    return {"rows": int(len(x)), "features": int(x.shape[1]), "classes": int(len(np.unique(y)))}


def split(
    x: np.ndarray, y: np.ndarray, test_size: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, x_test, y_train, y_test). Appending rows never moves a row to the other side, so no later model
    trains on an earlier run's held-out rows. The first IRIS_ROWS rows split seeded and stratified, as Iris always
    did; each later row by its own seeded draw."""
    import numpy as np
    from sklearn.model_selection import train_test_split

    head = min(len(x), IRIS_ROWS)
    x_train, x_test, y_train, y_test = train_test_split(
        x[:head], y[:head], test_size=test_size, random_state=seed, stratify=y[:head]
    )
    # RandomState's stream is frozen across NumPy versions, and row i's draw does not depend on how many follow.
    held = np.random.RandomState(seed).random_sample(len(x))[head:] < test_size
    x_tail, y_tail = x[head:], y[head:]
    return (
        np.concatenate([x_train, x_tail[~held]]),
        np.concatenate([x_test, x_tail[held]]),
        np.concatenate([y_train, y_tail[~held]]),
        np.concatenate([y_test, y_tail[held]]),
    )


def append(path: Path, rows: pd.DataFrame) -> int:
    """Check the rows, then add them to the file in one atomic rewrite: all or none. Returns how many."""
    rows = validate(rows)
    original = seed(path).read_bytes()
    header = original.split(b"\n", 1)[0].decode().strip()
    if header.split(",") != COLUMNS:
        raise DataError(f"{path}: header {header!r} is not the training data's {COLUMNS}")

    def write(f: IO[bytes]) -> None:
        f.write(original if original.endswith(b"\n") else original + b"\n")
        f.write(rows.to_csv(header=False, index=False, lineterminator="\n").encode())

    atomic_write(path, write, path.stat().st_mode & 0o7777)
    return len(rows)


class MissingReferenceError(LookupError):
    """The run logged no rows of that kind (it predates them); the message names the run."""


def logged_rows(run_id: str, artifact: str = REFERENCE_ARTIFACT) -> pd.DataFrame:
    """Rows a training run logged (train.log_rows; its training rows by default): what a monitor compares that
    model's inputs with, and what the gate judges a model on."""
    import io

    import mlflow
    import pandas as pd
    from mlflow import MlflowClient

    folder = artifact.rsplit("/", 1)[0]
    if artifact not in {a.path for a in MlflowClient().list_artifacts(run_id, folder)}:
        raise MissingReferenceError(f"run {run_id} has no {artifact}: it was trained before runs logged those rows")
    return pd.read_csv(io.StringIO(mlflow.artifacts.load_text(f"runs:/{run_id}/{artifact}")))
