"""mlops_pipeline/data.py: the training data seeded with exactly Iris, one row schema that names the row and the
problem wherever rows come from, a split that never moves a row, and writes that are all or nothing."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_iris
from sklearn.model_selection import train_test_split

from mlops_pipeline import data
from mlops_pipeline.schema import FEATURE_NAMES, LABEL_COLUMN, DataError

IRIS = load_iris()
IRIS_SPLIT = train_test_split(IRIS.data, IRIS.target, test_size=0.2, random_state=42, stratify=IRIS.target)
COLUMNS = [*IRIS.feature_names, "target"]


def csv_lines(x: np.ndarray, y: np.ndarray) -> list[str]:
    """Rows as the data file holds them, written here without the package."""
    return [",".join([*(repr(float(v)) for v in row), str(label)]) for row, label in zip(x, y, strict=True)]


def iris_csv_lines() -> list[str]:
    return [",".join(COLUMNS), *csv_lines(IRIS.data, IRIS.target)]


def appended_rows(count: int) -> tuple[np.ndarray, np.ndarray]:
    """Labeled rows as a retraining would append them: Iris rows, slightly moved."""
    rng = np.random.default_rng(7)
    picked = rng.integers(0, len(IRIS.data), count)
    return np.round(IRIS.data[picked] + rng.normal(0, 0.2, (count, 4)), 2), IRIS.target[picked]


def test_a_missing_data_file_is_seeded_with_exactly_iris(tmp_path: Path) -> None:
    path = tmp_path / "volume" / "iris.csv"
    x, y = data.load(path)
    assert x.dtype == np.float64 and np.array_equal(x, IRIS.data)  # the same values in the same order
    assert np.array_equal(y, IRIS.target)
    assert list(FEATURE_NAMES) == IRIS.feature_names and LABEL_COLUMN == "target"
    assert path.read_text().splitlines()[0] == ",".join(COLUMNS)
    assert os.listdir(path.parent) == ["iris.csv"]  # no temporary file left beside it
    # An existing file is read as it is, never seeded again.
    with path.open("a") as f:
        f.write("5.0,3.4,1.5,0.2,0\n")
    assert len(data.load(path)[0]) == len(IRIS.data) + 1


def test_appended_rows_never_move_a_row_to_the_other_side() -> None:
    # The seeded rows split exactly as Iris always did: the first run trains the model it always trained.
    for got, expected in zip(data.split(IRIS.data, IRIS.target, 0.2, 42), IRIS_SPLIT, strict=True):
        assert np.array_equal(got, expected)
    extra_x, extra_y = appended_rows(100)
    x, y = np.concatenate([IRIS.data, extra_x]), np.concatenate([IRIS.target, extra_y])
    x_train, x_test, y_train, y_test = data.split(x, y, 0.2, 42)
    assert len(x_test) > len(IRIS_SPLIT[1]) and len(x_train) > len(IRIS_SPLIT[0])  # new rows on both sides
    for rows in (150, 151, 200):
        before = data.split(x[:rows], y[:rows], 0.2, 42)
        for earlier, later in zip(before, (x_train, x_test, y_train, y_test), strict=True):
            assert np.array_equal(later[: len(earlier)], earlier), rows


def test_check_accepts_iris_and_refuses_too_few_rows_or_a_missing_class() -> None:
    assert data.check(IRIS.data, IRIS.target) == {"rows": 150, "features": 4, "classes": 3}
    with pytest.raises(DataError, match="virginica"):
        data.check(IRIS.data[IRIS.target != 2], IRIS.target[IRIS.target != 2])
    with pytest.raises(DataError, match="only 20 rows"):
        data.check(IRIS.data[::5][:20], IRIS.target[::5][:20])


def column_dropped(lines: list[str]) -> list[str]:
    return [",".join(line.split(",")[:3] + line.split(",")[4:]) for line in lines]


def column_added(lines: list[str]) -> list[str]:
    return [f"{lines[0]},colour"] + [f"{line},red" for line in lines[1:]]


def row_replaced(row: int, text: str) -> Callable[[list[str]], list[str]]:
    return lambda lines: [*lines[:row], text, *lines[row + 1 :]]


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (column_dropped, r"header: missing columns \['petal width \(cm\)'\], unexpected columns \[\]"),
        (column_added, r"header: missing columns \[\], unexpected columns \['colour'\]"),
        (row_replaced(4, "5.0,abc,1.4,0.2,0"), r"row 4 \(line 5\): sepal width \(cm\) is 'abc', not a finite number"),
        (row_replaced(9, "5.0,3.1,,0.2,1"), r"row 9 \(line 10\): petal length \(cm\) is '', not a finite number"),
        (row_replaced(5, "5.0,inf,1.4,0.2,0"), r"row 5 \(line 6\): sepal width \(cm\) is 'inf', not a finite number"),
        (row_replaced(7, "5.0,3.1,1.4,0.2,3"), r"row 7 \(line 8\): target is '3', not one of 0, 1, 2"),
        (row_replaced(150, "6.1,2.8,4.7,1.2,1.5"), r"row 150 \(line 151\): target is '1.5', not one of 0, 1, 2"),
        (row_replaced(3, "6.1,2.8,4.7,1.2,setosa"), r"row 3 \(line 4\): target is 'setosa', not one of 0, 1, 2"),
        (lambda lines: [*lines[:5], "", *row_replaced(9, "5.0,3.1,1.4,x,1")(lines)[5:]], r"row 10 \(line 11\): petal"),
    ],
)
def test_a_malformed_data_file_is_refused_naming_row_and_problem(
    tmp_path: Path, edit: Callable[[list[str]], list[str]], problem: str
) -> None:
    path = tmp_path / "iris.csv"
    path.write_text("\n".join(edit(iris_csv_lines())) + "\n")
    before = path.read_bytes()
    with pytest.raises(DataError) as refused:
        data.load(path)
    assert str(refused.value).startswith(f"{path}: ")
    assert re.search(problem, str(refused.value)), str(refused.value)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["iris.csv"]


def test_labeled_rows_are_checked_by_the_same_schema() -> None:
    frame = pd.DataFrame([[5.1, 3.5, 1.4, 0.2, 0], [6.7, np.nan, 5.2, 2.3, 2]], columns=COLUMNS)
    with pytest.raises(DataError, match=r"^row 2: sepal width \(cm\) is nan, not a finite number$"):
        data.validate(frame)
    assert data.validate(frame.iloc[:1])["target"].tolist() == [0]
    with pytest.raises(DataError, match="no rows"):
        data.validate(frame.iloc[:0])


def training_csv(tmp_path: Path) -> tuple[Path, bytes]:
    path = tmp_path / "iris.csv"
    content = "\n".join(iris_csv_lines()[:3]).encode() + b"\n"
    path.write_bytes(content)
    path.chmod(0o644)
    return path, content


def test_append_adds_the_rows_and_keeps_the_file_mode(tmp_path: Path) -> None:
    path, content = training_csv(tmp_path)
    assert data.append(path, pd.DataFrame([["5.9", "3.0", "4.2", "1.5", "1"]], columns=COLUMNS)) == 1
    assert path.read_bytes() == content + b"5.9,3.0,4.2,1.5,1\n"
    assert path.stat().st_mode & 0o777 == 0o644
    assert os.listdir(tmp_path) == ["iris.csv"]


def test_append_to_a_file_without_a_final_newline(tmp_path: Path) -> None:
    path, content = training_csv(tmp_path)
    path.write_bytes(content.rstrip(b"\n"))
    data.append(path, pd.DataFrame([[5.9, 3.0, 4.2, 1.5, 1]], columns=COLUMNS))
    assert pd.read_csv(path)["target"].tolist() == [0, 0, 1]


@pytest.mark.parametrize(
    "rows",
    [
        pd.DataFrame([[5.9, 3.0, 4.2, 1.5, 1]], columns=[*COLUMNS[:3], "petal wdth", "target"]),
        pd.DataFrame([[5.9, 3.0, 4.2, 1.5, 1], [5.9, 3.0, 4.2, 1.5, 7]], columns=COLUMNS),
    ],
)
def test_bad_rows_leave_the_file_untouched(tmp_path: Path, rows: pd.DataFrame) -> None:
    path, content = training_csv(tmp_path)
    with pytest.raises(DataError):
        data.append(path, rows)
    assert path.read_bytes() == content and os.listdir(tmp_path) == ["iris.csv"]


def test_a_failure_before_the_rename_leaves_the_file_untouched(tmp_path: Path, monkeypatch) -> None:
    path, content = training_csv(tmp_path)

    def no_space(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError, match="No space left"):
        data.append(path, pd.DataFrame([[5.9, 3.0, 4.2, 1.5, 1]], columns=COLUMNS))
    assert path.read_bytes() == content
    assert os.listdir(tmp_path) == ["iris.csv"]  # no temp file left
