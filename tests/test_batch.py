"""mlops_pipeline/batch.py: a file scored in chunks by one model version, as scikit-learn scores it; refused rows
named with their row number and the training data's wording; one output per input and version; clear refusals.
Run in process, stage by stage as the batch_predict DAG runs them, against the tests' tracking server."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_iris

from mlops_pipeline import batch
from mlops_pipeline.schema import BATCH_EXPERIMENT, CLASS_NAMES, FEATURE_NAMES, DataError
from mlops_pipeline.settings import BatchSettings, from_env

FEATURES = list(FEATURE_NAMES)


def rows(n: int, seed: int = 0) -> pd.DataFrame:
    """The 150 Iris rows, then random rows in the same ranges; an ID column that must come back as it was."""
    x = load_iris().data
    rng = np.random.default_rng(seed)
    extra = rng.uniform(x.min(axis=0), x.max(axis=0), (max(n - len(x), 0), x.shape[1])).round(2)
    frame = pd.DataFrame(np.concatenate([x, extra])[:n], columns=FEATURES)
    return frame.assign(id=[f"{i:05d}" for i in range(n)])[["id", *FEATURES]]


def run(settings: BatchSettings, name: str) -> dict:
    """plan -> score every chunk -> combine, as the DAG's tasks do."""
    planned = batch.plan(settings, name)
    results = [batch.score(settings, planned["job"], chunk) for chunk in planned["chunks"]]
    return batch.combine(settings, planned["job"], results)


@pytest.fixture
def settings(tmp_path: Path, champion: tuple[str, str, str]) -> BatchSettings:
    return from_env(BatchSettings, batch_root=str(tmp_path), batch_chunk_rows=300)


def put(settings: BatchSettings, name: str, text: str) -> Path:
    path = batch.input_path(batch.root(settings), name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_every_row_scored_by_the_champion_as_scikit_learn_scores_it(
    settings: BatchSettings, champion: tuple[str, str, str]
) -> None:
    name, version, run_id = champion
    frame = rows(1000)
    put(settings, "rows.csv", frame.to_csv(index=False))
    result = run(settings, "rows.csv")
    assert (result["rows"], result["scored"], result["rejected"], result["version"]) == (1000, 1000, 0, version)
    assert result["output"] == f"output/rows/v{version}/predictions.csv" and result["rejects"] is None
    out = pd.read_csv(batch.root(settings) / result["output"], dtype={"id": str})
    expected = mlflow.sklearn.load_model(f"runs:/{run_id}/model").predict(frame[FEATURES].to_numpy())
    assert out["id"].tolist() == frame["id"].tolist()  # every row, in order, its ID as it was ("00007")
    assert out["prediction"].tolist() == expected.tolist()
    assert out["class_name"].tolist() == [CLASS_NAMES[p] for p in expected]
    assert set(out["model_version"].astype(str)) == {version}
    assert not list((batch.root(settings) / "work").rglob("*.csv"))  # the parts are gone
    assert set(result["peak_mib"]) == {"plan", "score", "combine"} and min(result["peak_mib"].values()) > 10
    logged = mlflow.get_run(result["run"])
    assert logged.data.metrics["scored"] == 1000 and logged.data.params["model_version"] == version
    assert mlflow.get_experiment(logged.info.experiment_id).name == BATCH_EXPERIMENT
    assert [d.dataset.name for d in logged.inputs.dataset_inputs] == ["rows.csv"]


def test_refused_rows_are_named_and_the_rest_scored(settings: BatchSettings) -> None:
    frame = rows(100).astype(str)
    frame.loc[4, "sepal width (cm)"] = "abc"
    frame.loc[49, "petal length (cm)"] = ""
    frame.loc[98, "sepal length (cm)"] = "inf"
    put(settings, "bad.csv", frame.to_csv(index=False))
    result = run(settings, "bad.csv")
    assert (result["scored"], result["rejected"]) == (97, 3)
    rejected = pd.read_csv(batch.root(settings) / result["rejects"], dtype=str, keep_default_na=False)
    assert rejected["row"].tolist() == ["5", "50", "99"]
    assert rejected["reason"].tolist() == [
        "sepal width (cm) is 'abc', not a finite number",
        "petal length (cm) is '', not a finite number",
        "sepal length (cm) is 'inf', not a finite number",
    ]
    assert rejected["id"].tolist() == ["00004", "00049", "00098"]
    out = pd.read_csv(batch.root(settings) / result["output"], dtype={"id": str})
    assert len(out) == 97 and "00004" not in set(out["id"])


def test_a_second_run_replaces_the_output_and_its_stale_rejects(settings: BatchSettings) -> None:
    frame = rows(120).astype(str)
    frame.loc[0, "petal width (cm)"] = "x"
    put(settings, "again.csv", frame.to_csv(index=False))
    first = run(settings, "again.csv")
    before = (batch.root(settings) / first["output"]).read_text()
    put(settings, "again.csv", rows(120).to_csv(index=False))
    second = run(settings, "again.csv")
    output = batch.root(settings) / second["output"]
    assert second["output"] == first["output"] and len(pd.read_csv(output)) == 120
    assert output.read_text().count("\n") == before.count("\n") + 1  # the row refused before, now scored once
    assert second["rejects"] is None and not (batch.root(settings) / first["rejects"]).exists()
    assert [p.name for p in output.parent.iterdir()] == ["predictions.csv"]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (None, "no such file"),
        ("", "the file is empty"),
        (",".join(FEATURES) + "\n", "a header and no rows"),
        ("a,b\n1,2\n", "no column ['sepal length (cm)'"),
        (",".join([*FEATURES, "prediction"]) + "\n1,2,3,4,5\n", "columns ['prediction'] would be overwritten"),
    ],
)
def test_a_bad_file_fails_naming_it_and_leaves_no_output(
    settings: BatchSettings, text: str | None, problem: str
) -> None:
    if text is not None:
        put(settings, "in.csv", text)
    with pytest.raises(DataError) as refused:
        batch.plan(settings, "in.csv")
    assert problem in str(refused.value) and "in.csv" in str(refused.value)
    assert not (batch.root(settings) / "output").exists()


def test_no_champion_says_to_train_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tracking_server: str) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_server)
    mlflow.set_tracking_uri(tracking_server)
    cfg = from_env(BatchSettings, batch_root=str(tmp_path), registered_model_name="never-trained")
    put(cfg, "rows.csv", rows(10).to_csv(index=False))
    with pytest.raises(LookupError, match="never-trained has no champion yet: train first"):
        batch.plan(cfg, "rows.csv")


@pytest.mark.parametrize("trailing_newline", [True, False])
def test_chunks_cover_every_line_once(tmp_path: Path, trailing_newline: bool) -> None:
    text = "a,b\n" + "".join(f"{i},x\n" for i in range(1, 11)) + "\n11,y"
    path = tmp_path / "f.csv"
    path.write_text(text + ("\n" if trailing_newline else ""))
    header, chunks, count, digest = batch.scan(path, 4)
    assert header == b"a,b\n" and count == 12  # the blank line counts: row numbers are lines after the header
    assert [c[0] for c in chunks] == [1, 5, 9]
    body = path.read_bytes()[len(header) :]
    assert b"".join(body[o - len(header) : o - len(header) + n] for _, o, n in chunks) == body
    assert len(digest) == 64


@pytest.mark.parametrize("name", ["../x.csv", "a/b.csv", ".hidden.csv", ""])
def test_an_input_name_is_a_plain_file_name(tmp_path: Path, name: str) -> None:
    with pytest.raises(DataError, match="is not a file name"):
        batch.input_path(tmp_path, name)


def test_put_and_get_move_files_through_a_pipe(tmp_path: Path) -> None:
    env = {"BATCH_ROOT": str(tmp_path), "PATH": str(Path(sys.executable).parent)}
    cmd = [sys.executable, "-m", "mlops_pipeline.batch"]
    put_done = subprocess.run([*cmd, "put", "p.csv"], input=b"a,b\n1,2\n", env=env, capture_output=True)
    assert put_done.returncode == 0, put_done.stderr
    printing = [sys.executable, "-c", "import runpy, sys; print('a library speaks'); runpy.run_module("
                "'mlops_pipeline.batch', run_name='__main__')", "get", "input/p.csv"]  # fmt: skip
    got = subprocess.run(printing, env=env, capture_output=True)
    assert got.returncode == 0 and got.stdout == b"a,b\n1,2\n", got  # stdout is the file only
    outside = subprocess.run([*cmd, "get", "../etc/passwd"], env=env, capture_output=True, text=True)
    assert outside.returncode == 1 and "not a path under BATCH_ROOT" in outside.stderr
    assert pd.read_csv(io.BytesIO(got.stdout)).shape == (1, 2)


def test_put_tries_again_when_the_store_refuses_an_upload(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An object store's transient error (SeaweedFS's InternalError reached s3fs as an OSError) costs a retry, not
    the batch: the whole input is sent again and lands once, complete."""
    calls: list[int] = []
    real = batch.publish

    def flaky(path: Path, write: object) -> None:
        calls.append(1)
        if len(calls) < 3:
            with open(os.devnull, "wb") as sink:
                write(sink)  # type: ignore[operator] - the failed try consumed the input
            raise OSError(121, "We encountered an internal error, please try again.")
        real(path, write)  # type: ignore[arg-type]

    monkeypatch.setattr(batch, "publish", flaky)
    monkeypatch.setattr(batch.time, "sleep", lambda s: None)
    batch.put(tmp_path / "in.csv", io.BytesIO(b"a,b\n1,2\n"))
    assert len(calls) == 3 and (tmp_path / "in.csv").read_bytes() == b"a,b\n1,2\n"
    with pytest.raises(OSError, match="internal error"):
        calls.clear()
        batch.put(tmp_path / "other.csv", io.BytesIO(b"x\n"), tries=2)
    assert not (tmp_path / "other.csv").exists()
