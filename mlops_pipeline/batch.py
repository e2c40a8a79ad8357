"""Score a whole file with the champion, in chunks: the batch_predict DAG's stages (docs/batch-predictions.md).

plan() checks the input and resolves the champion's version once, so every chunk is scored by that one version
(a champion that moves mid-run does not mix versions in one output), and splits the file into chunks of
BATCH_CHUNK_ROWS rows by byte offset in one pass. score() reads one chunk, sets aside the rows that fail the
training data's row schema (data.problems: the same checks, the same words) and writes its part. combine() joins
the parts in order into one output per input and model version, written so that no reader sees half of it, and
records the run in MLflow. No task holds the whole file in memory.

The files live under BATCH_ROOT: a folder (the default stack's volume) or object storage (the scale variant's
bucket, through Airflow's ObjectStoragePath): input/<name>, output/<stem>/v<version>/{predictions,rejected}.csv and,
while a run lasts, work/<id>/.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import resource
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from mlops_pipeline import data, registry, train
from mlops_pipeline.schema import BATCH_EXPERIMENT, CLASS_NAMES, FEATURE_NAMES, DataError
from mlops_pipeline.settings import BatchSettings, from_env

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)
ADDED = ("prediction", "class_name", "model_version")  # the columns the output adds to the input's
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")  # an input's file name: no folders, nothing hidden
BLOCK = 1 << 20
PUT_TRIES = 4


def peak_mib() -> float:
    """This process's peak resident memory (the pages it shares with the process it was forked from included):
    what make bench reports for the largest task."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def root(settings: BatchSettings) -> Any:  # noqa: ANN401 - a Path, or Airflow's ObjectStoragePath
    """Where the batch files live: BATCH_ROOT as a folder, or a URL (s3://...) through Airflow's object storage."""
    if "://" not in settings.batch_root:
        return Path(settings.batch_root or settings.airflow_home / "batch").expanduser()
    from airflow.sdk import ObjectStoragePath

    return ObjectStoragePath(settings.batch_root, conn_id=settings.batch_conn_id or None)


def input_path(base: Any, name: str) -> Any:  # noqa: ANN401
    if not NAME.fullmatch(name):
        raise DataError(f"{name!r} is not a file name (letters, digits, '.', '_' or '-'; no folders)")
    return base / "input" / name


def outputs(name: str, version: str) -> tuple[str, str]:
    """The run's output files, relative to BATCH_ROOT: one pair per input and model version."""
    folder = f"output/{Path(name).stem}/v{version}"
    return f"{folder}/predictions.csv", f"{folder}/rejected.csv"


def publish(path: Any, write: Any) -> None:  # noqa: ANN401
    """A file written whole or not at all: atomically renamed in a folder; in object storage an object is visible
    only once its upload is complete."""
    if isinstance(path, Path):
        data.atomic_write(path, write)
    else:
        with path.open("wb") as f:
            write(f)


def columns_of(path: Any, header: bytes) -> list[str]:
    """The header's column names, or a DataError naming the file and the problem."""
    import pandas as pd

    if not header.strip():
        raise DataError(f"{path}: the file is empty")
    try:
        columns = [str(c) for c in pd.read_csv(io.BytesIO(header), nrows=0).columns]
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a CSV file: {str(exc).strip()}") from None
    missing = [c for c in FEATURE_NAMES if c not in columns]
    if missing:
        raise DataError(f"{path}: no column {missing}; the rows need the training data's {list(FEATURE_NAMES)}")
    taken = [c for c in ADDED if c in columns]
    if taken:
        raise DataError(f"{path}: columns {taken} would be overwritten by the output's {list(ADDED)}")
    return columns


def scan(path: Any, chunk_rows: int) -> tuple[bytes, list[tuple[int, int, int]], int, str]:
    """One pass over the file: its header, its chunks as (first row, byte offset, byte length), its row count (blank
    lines included: row numbers count them) and its sha256."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        header = f.readline()
        digest.update(header)
        starts, rows, position, last = [len(header)], 0, len(header), b"\n"
        while block := f.read(BLOCK):
            digest.update(block)
            count = block.count(b"\n")
            if rows + count < len(starts) * chunk_rows:
                rows += count
            else:  # a chunk ends inside this block: find the exact line
                at = 0
                for _ in range(count):
                    at = block.index(b"\n", at) + 1
                    rows += 1
                    if rows == len(starts) * chunk_rows:
                        starts.append(position + at)
            position, last = position + len(block), block[-1:]
    rows += last != b"\n"  # a last line without its newline
    ends = [*starts[1:], position]
    chunks = [(i * chunk_rows + 1, start, end - start) for i, (start, end) in enumerate(zip(starts, ends, strict=True))]
    return header, [c for c in chunks if c[2] > 0], rows, digest.hexdigest()


def plan(settings: BatchSettings, name: str) -> dict[str, Any]:
    """Check the input and the champion; return the job (what every chunk needs) and its chunks."""
    started = time.time()
    base = root(settings)
    path = input_path(base, name)
    if not path.exists():
        raise DataError(f"{path}: no such file (make predict-batch FILE=... puts it there)")
    header, chunks, rows, digest = scan(path, settings.batch_chunk_rows)
    columns_of(path, header)
    if not rows:
        raise DataError(f"{path}: a header and no rows")
    model = settings.registered_model_name
    champion = registry.champion(model)
    if champion is None:
        raise LookupError(f"{model} has no champion yet: train first (make demo, or trigger mlops_pipeline)")
    job = {
        "input": name, "model": model, "version": str(champion.version), "model_run_id": champion.run_id,
        "rows": rows, "sha256": digest, "work": uuid.uuid4().hex, "started": started, "header": header.decode(),
    }  # fmt: skip
    job["peak_mib"] = {"plan": peak_mib()}
    log.info("batch: %s, %d rows in %d chunks, %s version %s", path, rows, len(chunks), model, job["version"])
    return {"job": job, "chunks": [list(c) for c in chunks]}


def read_chunk(path: Any, header: str, offset: int, length: int, first_row: int) -> pd.DataFrame:
    """The chunk's rows as text (row numbers as the index; blank lines dropped), or a DataError for a line CSV
    cannot parse."""
    import pandas as pd

    with path.open("rb") as f:
        f.seek(offset)
        body = f.read(length)
    try:
        frame = pd.read_csv(
            io.BytesIO(header.encode() + body), dtype=str, keep_default_na=False, skip_blank_lines=False
        )
    except (ValueError, UnicodeDecodeError) as exc:
        last = first_row + body.count(b"\n")
        raise DataError(f"{path}, rows {first_row} to {last}: not CSV: {str(exc).strip()}") from None
    frame.index = range(first_row, first_row + len(frame))
    return frame[(frame != "").any(axis=1)]


def score(settings: BatchSettings, job: dict[str, Any], chunk: list[int]) -> dict[str, Any]:
    """Score one chunk with the job's model version; write its predictions and its refused rows as parts."""
    import mlflow
    import numpy as np

    first_row, offset, length = chunk
    base = root(settings)
    frame = read_chunk(input_path(base, job["input"]), job["header"], offset, length, first_row)
    numbers, problems = data.problems(frame, FEATURE_NAMES, label=False)
    refused = [i for i, _ in problems]
    good = frame.drop(index=refused)
    x = numbers.drop(index=refused)[list(FEATURE_NAMES)].to_numpy()
    model = mlflow.pyfunc.load_model(f"models:/{job['model']}/{job['version']}")
    predicted = np.asarray(model.predict(x)).astype(int) if len(x) else np.array([], dtype=int)
    scored = good.assign(
        prediction=predicted, class_name=np.array(CLASS_NAMES)[predicted], model_version=job["version"]
    )
    work = base / "work" / job["work"]
    part, rejects = f"part-{first_row:012d}.csv", f"part-{first_row:012d}.rejected.csv"
    publish(work / part, lambda f: scored.to_csv(f, index=False, lineterminator="\n"))
    if problems:
        reasons = frame.loc[refused].assign(reason=[p for _, p in problems]).rename_axis("row").reset_index()
        reasons = reasons[["row", "reason", *frame.columns]]
        publish(work / rejects, lambda f: reasons.to_csv(f, index=False, lineterminator="\n"))
    counts = {"scored": len(good), "rejected": len(refused), "peak_mib": peak_mib()}
    return {"part": part, "rejects": rejects if problems else None, **counts}


def join(parts: list[Any], f: IO[bytes]) -> None:
    """Parts of one table into one file: the first part's header, then every part's rows."""
    for i, part in enumerate(parts):
        with part.open("rb") as source:
            header = source.readline()
            if i == 0:
                f.write(header)
            shutil.copyfileobj(source, f, BLOCK)


def combine(settings: BatchSettings, job: dict[str, Any], results: list[dict[str, Any]]) -> dict[str, Any]:
    """The chunks' parts, in row order, as the run's output (replacing an earlier run's of the same input and
    version); the run recorded in MLflow and pushed to the Pushgateway."""
    import mlflow
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.sources import LocalArtifactDatasetSource

    from mlops_pipeline.monitoring import pipeline_metrics

    base, work = root(settings), root(settings) / "work" / job["work"]
    results = sorted(results, key=lambda r: r["part"])  # the parts' names count rows: row order
    parts = [work / r["part"] for r in results]
    refused = [work / r["rejects"] for r in results if r["rejects"]]
    predictions, rejected = outputs(job["input"], job["version"])
    publish(base / predictions, lambda f: join(parts, f))
    if refused:
        publish(base / rejected, lambda f: join(refused, f))
    elif (base / rejected).exists():
        (base / rejected).unlink()  # an earlier run's rejects do not belong to this output
    for part in parts + refused:
        part.unlink()
    counts = {"rows": job["rows"], **{k: sum(r[k] for r in results) for k in ("scored", "rejected")}}
    duration = time.time() - job["started"]
    train.connect(settings, BATCH_EXPERIMENT)
    source, output = str(input_path(base, job["input"])), str(base / predictions)
    with mlflow.start_run(run_name=f"batch {job['input']} v{job['version']}") as run:
        dataset = MetaDataset(LocalArtifactDatasetSource(source), name=job["input"], digest=job["sha256"][:8])
        mlflow.log_input(dataset, context="batch")
        mlflow.log_params({"model": job["model"], "model_version": job["version"], "input": source})
        mlflow.log_params({"output": output, "chunks": len(results)})
        mlflow.log_metrics({**{k: float(v) for k, v in counts.items()}, "duration_seconds": duration})
    pipeline_metrics.batch_scored(settings.pushgateway_url, job["model"], counts, duration)
    log.info("batch: %s -> %s: %s in %.1f s (MLflow run %s)", source, output, counts, duration, run.info.run_id)
    files = {"output": predictions, "rejects": rejected if refused else None, "run": run.info.run_id}
    peaks = {**job["peak_mib"], "score": max(r["peak_mib"] for r in results), "combine": peak_mib()}
    return {**counts, **files, "version": job["version"], "duration_seconds": duration, "peak_mib": peaks}


def put(path: Any, source: Any, tries: int = PUT_TRIES) -> None:  # noqa: ANN401
    """Copy `source` to `path`, tried again on an OSError: an object store may refuse one upload (SeaweedFS
    answered "InternalError, please try again" once in CI). The input is spooled first, so each try sends it whole;
    an object appears only complete, so a failed try leaves nothing behind."""
    with tempfile.SpooledTemporaryFile(max_size=64 * BLOCK) as spool:
        shutil.copyfileobj(source, spool, BLOCK)
        for attempt in range(1, tries + 1):
            spool.seek(0)
            try:
                publish(path, lambda f: shutil.copyfileobj(spool, f, BLOCK))
                return
            except OSError as exc:
                if attempt == tries:
                    raise
                log.warning("batch: writing %s failed (%s); trying again (%d of %d)", path, exc, attempt + 1, tries)
                time.sleep(attempt)


def main(argv: list[str] | None = None) -> int:
    """`put NAME` (stdin to input/NAME) and `get PATH` (a file under BATCH_ROOT to stdout): how make predict-batch
    moves files in and out of a container, whichever storage the stack uses."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] not in ("put", "get"):
        print("usage: python -m mlops_pipeline.batch put NAME < file | get PATH > file", file=sys.stderr)
        return 2
    # stdout carries the file's bytes only: what libraries print (Airflow's log lines) goes to stderr.
    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    base = root(from_env(BatchSettings))
    try:
        if args[0] == "put":
            put(input_path(base, args[1]), sys.stdin.buffer)
        else:
            relative = Path(args[1])
            if relative.is_absolute() or ".." in relative.parts:
                raise DataError(f"{args[1]!r} is not a path under BATCH_ROOT")
            with (base / args[1]).open("rb") as f, out:
                shutil.copyfileobj(f, out, BLOCK)
    except (DataError, OSError) as exc:
        print(f"batch: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
