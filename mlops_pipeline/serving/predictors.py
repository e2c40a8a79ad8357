"""How a served model predicts. scikit-learn's own predict (through MLflow's pyfunc) is always there; for a
tree ensemble the server also builds a compiled copy (skl2onnx converts the loaded model, ONNX Runtime runs it) and
serves with it only once it gave scikit-learn's answers on every row of a wide check. Nothing new is needed in a
model's artifacts, so it works for every registered version and every pinned run, old ones included.

Why ONNX Runtime and not Treelite (both well kept, both exact here): for one row, the request this stack serves
most, ONNX Runtime's predict is several times faster; the figures are in benchmarks/results.md.

Why the inputs are cast to float32: scikit-learn's trees compare float32-cast inputs with float64 thresholds
(scikit-learn #14747), so the compiled copy, which keeps float64 thresholds, must see the same cast values to agree
at a threshold.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import onnxruntime
from skl2onnx import to_onnx
from sklearn.base import is_classifier
from sklearn.tree import BaseDecisionTree

log = logging.getLogger("model-server")
RUNTIME = "onnxruntime"
SKLEARN = "scikit-learn"
# ai.onnx.ml 3: the first opset whose tree ensembles take double thresholds and outputs.
OPSETS = {"": 17, "ai.onnx.ml": 3}
RANDOM_ROWS = 100_000
ROWS_PER_BOUNDARY = 4  # each boundary value is checked in this many rows (other features random)


@dataclass(frozen=True)
class Compiled:
    """A tree ensemble in ONNX Runtime, checked against scikit-learn on the rows of `check_rows`."""

    session: onnxruntime.InferenceSession
    n_features: int
    dtype: np.dtype  # what scikit-learn's predict returns: the answer's JSON must not change (0 vs 0.0)
    tail: tuple[int, ...]  # the shape of one prediction (() for a label)

    @cached_property
    def names(self) -> tuple[str, str, bool]:
        """The input's name, the first output's (the label), and whether the input is float32 (else float64)."""
        inp = self.session.get_inputs()[0]
        return inp.name, self.session.get_outputs()[0].name, inp.type == "tensor(float)"

    def predict(self, x: np.ndarray) -> np.ndarray | None:
        """scikit-learn's answer for what the check covered: rows of the model's width, numbers finite in float32
        (scikit-learn's own cast). None for anything else (NaN, infinities, numbers beyond float32, other shapes):
        scikit-learn then answers or refuses it as it always did."""
        if x.ndim != 2 or x.shape[1] != self.n_features or x.dtype.kind != "f":
            return None
        with np.errstate(over="ignore"):  # 1e308 becomes inf here, and is refused below
            x32 = x.astype(np.float32)
        if not np.isfinite(x32).all():
            return None
        name, label, single = self.names
        out = self.session.run([label], {name: x32 if single else x32.astype(np.float64)})[0]
        return out.reshape((len(x), *self.tail)).astype(self.dtype, copy=False)


def trees(model: Any) -> list[Any]:
    """The decision trees of a tree model (a tree, a forest, boosted trees); [] for any other model."""
    if isinstance(model, BaseDecisionTree):
        return [model]
    found = list(np.ravel(getattr(model, "estimators_", [])))
    return found if found and all(isinstance(t, BaseDecisionTree) for t in found) else []


def check_rows(model: Any, example: Any = None, random_rows: int = RANDOM_ROWS, seed: int = 0) -> np.ndarray:
    """The rows a compiled copy must answer as scikit-learn does: the model's input example, `random_rows` rows
    covering twice the range of the split thresholds, and for every split threshold the threshold itself and its
    neighbours one float32 and one float64 step away (each in rows whose other features are random)."""
    n = model.n_features_in_
    features = np.concatenate([t.tree_.feature[t.tree_.feature >= 0] for t in trees(model)])
    thresholds = np.concatenate([t.tree_.threshold[t.tree_.feature >= 0] for t in trees(model)])
    low, high = np.full(n, -1.0), np.full(n, 1.0)
    for f in range(n):
        on_f = thresholds[features == f]
        if on_f.size:
            span = max(on_f.max() - on_f.min(), 1.0)
            low[f], high[f] = on_f.min() - span / 2, on_f.max() + span / 2
    rng = np.random.default_rng(seed)
    parts = [rng.uniform(low, high, (random_rows, n))]
    t32 = thresholds.astype(np.float32)
    boundary = np.stack(
        [
            thresholds,
            np.nextafter(thresholds, -np.inf),
            np.nextafter(thresholds, np.inf),
            t32.astype(np.float64),
            np.nextafter(t32, np.float32(-np.inf)).astype(np.float64),
            np.nextafter(t32, np.float32(np.inf)).astype(np.float64),
        ],
        axis=1,
    )
    values = np.repeat(boundary.ravel(), ROWS_PER_BOUNDARY)
    columns = np.repeat(np.repeat(features, boundary.shape[1]), ROWS_PER_BOUNDARY)
    rows = rng.uniform(low, high, (values.size, n))
    rows[np.arange(values.size), columns] = values
    parts.append(rows)
    try:
        example_rows = np.asarray(example, dtype=np.float64) if example is not None else None
    except (TypeError, ValueError):
        example_rows = None
    if example_rows is not None and example_rows.ndim == 2 and example_rows.shape[1] == n:
        parts.insert(0, example_rows)
    return np.concatenate(parts)


def convert(model: Any, dtype: type = np.float64) -> onnxruntime.InferenceSession:
    """The ONNX Runtime session of a scikit-learn tree model, one thread (a server worker is one core's worth of
    work; a thread pool would compete with the other workers and with training)."""
    options = {"zipmap": False} if is_classifier(model) else None  # labels as an array, not a list of dicts
    onx = to_onnx(
        model,
        np.zeros((1, model.n_features_in_), dtype=dtype),
        options={id(model): options} if options else None,
        target_opset=OPSETS,
    )
    session_options = onnxruntime.SessionOptions()
    session_options.intra_op_num_threads = 1
    session_options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(onx.SerializeToString(), session_options, providers=["CPUExecutionProvider"])


def differences(expected: np.ndarray, got: np.ndarray) -> np.ndarray:
    """Indices of the rows whose answers differ (same dtype, same values)."""
    if expected.shape != got.shape:
        return np.arange(len(expected))
    return np.flatnonzero((expected != got).reshape(len(expected), -1).any(axis=1))


def compile_model(
    model: Any, example: Any = None, session: onnxruntime.InferenceSession | None = None
) -> Compiled | None:
    """A checked compiled copy of a scikit-learn model, or None: not a tree model, no conversion gave scikit-learn's
    answers (the log says which rows differed), or it failed. A double-precision conversion is tried first (it keeps
    scikit-learn's float64 thresholds), then a single-precision one (ONNX Runtime runs some ensembles only so).
    `session` replaces the conversion (tests: a deliberately wrong copy)."""
    if not trees(model):
        return None
    name = type(model).__name__
    try:
        rows = check_rows(model, example)
        expected = model.predict(rows)
    except Exception:  # noqa: BLE001 - any failure of the optional fast path means: serve with scikit-learn
        log.exception("model-server: could not check a compiled %s; serving with scikit-learn", name)
        return None
    for dtype in (np.float64, np.float32):
        try:
            copy = session or convert(model, dtype)
            compiled = Compiled(copy, model.n_features_in_, expected.dtype, expected.shape[1:])
            got = compiled.predict(rows)
        except Exception as exc:  # noqa: BLE001 - e.g. an opset this ONNX Runtime lacks: try the next, else sklearn
            log.info("model-server: %s cannot run %s at %s: %s", RUNTIME, name, np.dtype(dtype).name, exc)
            continue
        bad = differences(expected, got)
        if not bad.size:
            log.info("model-server: %s serves %s (same answers on %d checked rows)", RUNTIME, name, len(rows))
            return compiled
        shown = "; ".join(f"row {rows[i].tolist()}: scikit-learn {expected[i]}, {RUNTIME} {got[i]}" for i in bad[:10])
        message = "model-server: the %s copy of %s differs from scikit-learn on %d of %d checked rows (%s): %s"
        log.warning(message, RUNTIME, name, bad.size, len(rows), "first 10" if bad.size > 10 else "all", shown)
        if session is not None:
            break
    log.warning("model-server: serving %s with scikit-learn", name)
    return None
