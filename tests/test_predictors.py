"""serving/predictors.py: a compiled copy is served only when it answers as scikit-learn does; the rows it is checked
on reach every split threshold and its float32/float64 neighbours."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import onnxruntime
import pytest
from skl2onnx import to_onnx
from sklearn.datasets import load_iris
from sklearn.ensemble import (
    ExtraTreesClassifier,
    GradientBoostingClassifier,
    GradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.linear_model import LogisticRegression
from sklearn.tree import DecisionTreeClassifier

from mlops_pipeline.serving import predictors

X, Y = load_iris(return_X_y=True)
ORIGINAL = RandomForestClassifier(n_estimators=100, max_depth=3, random_state=42).fit(X, Y)  # the tutorial's model


def shifted_roots(model: Any, dtype: type = np.float64) -> onnxruntime.InferenceSession:
    """A converted copy of `model` whose every root threshold is one float32 step higher than the converter made
    it: inputs exactly at the new threshold go left in the copy and right in scikit-learn, nowhere else."""
    options = {id(model): {"zipmap": False}}
    onx = to_onnx(
        model, np.zeros((1, model.n_features_in_), dtype=dtype), options=options, target_opset=predictors.OPSETS
    )
    node = next(n for n in onx.graph.node if n.op_type == "TreeEnsembleClassifier")
    attrs = {a.name: a for a in node.attribute}
    values = np.array(attrs["nodes_values"].floats, dtype=np.float32)
    roots = np.array(attrs["nodes_nodeids"].ints) == 0
    values[roots] = np.nextafter(values[roots], np.float32(np.inf))
    del attrs["nodes_values"].floats[:]
    attrs["nodes_values"].floats.extend(values.tolist())
    return onnxruntime.InferenceSession(onx.SerializeToString(), providers=["CPUExecutionProvider"])


def test_the_tutorials_forest_is_compiled_and_answers_as_scikit_learn() -> None:
    compiled = predictors.compile_model(ORIGINAL, X[:3])
    assert compiled is not None
    rows = np.random.default_rng(1).uniform(-5, 15, (20_000, 4))
    assert np.array_equal(compiled.predict(rows), ORIGINAL.predict(rows))
    assert compiled.predict(X[:1]).dtype == ORIGINAL.predict(X[:1]).dtype  # same JSON: 0, not 0.0


@pytest.mark.parametrize(
    "model",
    [
        ExtraTreesClassifier(n_estimators=30, random_state=0),
        GradientBoostingClassifier(n_estimators=20, random_state=0),
        DecisionTreeClassifier(random_state=0),
    ],
    ids=lambda m: type(m).__name__,
)
def test_other_tree_classifiers_are_compiled(model: Any) -> None:
    model.fit(X, Y)
    compiled = predictors.compile_model(model)
    assert compiled is not None
    rows = predictors.check_rows(model, random_rows=5_000, seed=7)
    assert np.array_equal(compiled.predict(rows), model.predict(rows))


@pytest.mark.parametrize("model", [RandomForestRegressor(n_estimators=10), GradientBoostingRegressor(n_estimators=10)])
def test_a_copy_that_rounds_differently_is_not_served(model: Any, caplog: pytest.LogCaptureFixture) -> None:
    """ONNX Runtime's tree regressors answer in float32 here: every answer differs in its last digits, so these
    models stay on scikit-learn, and the log says so with the rows."""
    caplog.set_level(logging.INFO, logger="model-server")
    model.fit(X, X[:, 0] * Y)
    assert predictors.compile_model(model) is None
    assert "differs from scikit-learn on" in caplog.text and "row [" in caplog.text
    assert f"serving {type(model).__name__} with scikit-learn" in caplog.text


def test_a_threshold_one_float32_step_off_is_caught(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A copy that differs only exactly at the thresholds: random rows alone would almost never see it."""
    caplog.set_level(logging.WARNING, logger="model-server")
    model = DecisionTreeClassifier(max_depth=3, random_state=0).fit(X, Y)
    root = model.tree_.threshold[0]
    below = np.float32(root) if np.float32(root) <= root else np.nextafter(np.float32(root), np.float32(-np.inf))
    at = float(np.nextafter(below, np.float32(np.inf)))  # the first float32 above the root threshold: the copy's
    monkeypatch.setattr(predictors, "convert", shifted_roots)
    assert predictors.compile_model(model) is None
    assert "differs from scikit-learn on" in caplog.text
    assert f"{at!r}" in caplog.text.split("differs from scikit-learn on")[1]  # the differing rows are shown

    random_only = predictors.check_rows(model, random_rows=100_000)[:100_000]
    copy = predictors.Compiled(shifted_roots(model, np.float32), 4, np.dtype(np.int64), ())
    assert np.array_equal(copy.predict(random_only), model.predict(random_only)), "random rows do not see it"


def test_check_rows_cover_example_range_and_every_threshold() -> None:
    example = X[:5]
    rows = predictors.check_rows(ORIGINAL, example)
    assert np.array_equal(rows[:5], example)
    features = np.concatenate([t.tree_.feature for t in ORIGINAL.estimators_])
    thresholds = np.concatenate([t.tree_.threshold for t in ORIGINAL.estimators_])[features >= 0]
    features = features[features >= 0]
    assert len(rows) >= 5 + predictors.RANDOM_ROWS + 6 * len(thresholds)
    for f in range(4):
        on_f = thresholds[features == f]
        low, high = on_f.min(), on_f.max()
        span = max(high - low, 1.0)
        column = rows[5 : 5 + predictors.RANDOM_ROWS, f]
        assert column.min() < low - 0.45 * span and column.max() > high + 0.45 * span  # twice the range
        for t in on_f:
            t32 = np.float32(t)
            wanted = [t, np.nextafter(t, -np.inf), np.nextafter(t, np.inf), float(t32)]
            wanted += [float(np.nextafter(t32, np.float32(-np.inf))), float(np.nextafter(t32, np.float32(np.inf)))]
            assert np.isin(wanted, rows[:, f]).all(), (f, t)


def test_only_tree_models_and_only_finite_rows_of_the_right_width() -> None:
    assert predictors.compile_model(LogisticRegression(max_iter=500).fit(X, Y)) is None
    compiled = predictors.compile_model(ORIGINAL)
    assert compiled is not None
    assert compiled.predict(np.array([[5.1, 3.5, 1.4, 0.2]])).tolist() == [0]
    not_finite = ([[np.nan, 3.5, 1.4, 0.2]], [[np.inf, 3.5, 1.4, 0.2]], [[1e308, 3.5, 1.4, 0.2]])
    for bad in (*not_finite, [[1.0, 2.0, 3.0]], [1.0, 2.0, 3.0, 4.0]):
        assert compiled.predict(np.array(bad)) is None, bad  # left to scikit-learn
    assert compiled.predict(np.array([[1, 2, 3, 4]])) is None  # integers: MLflow's schema decides, not the copy
