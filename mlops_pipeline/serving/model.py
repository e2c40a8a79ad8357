"""One loaded model and how it answers /invocations: MLflow's scoring (``scoring_server.invocations``: its parsing,
schema enforcement, predict and answer format), with a short path for the original tutorial's payload.

For ``{"inputs": [[...], ...]}`` to a scikit-learn model whose signature is one unnamed tensor, the short path uses
MLflow's public functions instead (``convert_data_type`` with that tensor spec, then predict: the checked compiled
copy of predictors.py when there is one, else pyfunc's), which skips a second JSON decoding and a deep copy of every
row. Whatever the short path does not cover, or fails on, goes the full way, so answers and error messages stay
MLflow's (tests/test_model_server.py checks both byte for byte). The request JSON is decoded here (standard
library) before MLflow sees it, so nesting deeper than the recursion limit or an integer of more than 4,300 digits
is a 400 (MLflow 3.17 answers both with a 500).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from functools import cached_property
from http import HTTPStatus
from typing import Any

import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import scoring_server
from mlflow.utils.proto_json_utils import MlflowInvalidInputException, convert_data_type
from starlette.responses import JSONResponse, Response

from mlops_pipeline.serving import metrics
from mlops_pipeline.serving.inference_log import InferenceLog
from mlops_pipeline.serving.predictors import RUNTIME, SKLEARN, Compiled, compile_model

log = logging.getLogger("model-server")


def is_utf8_json(content_type: str) -> bool:
    """The content types MLflow decodes as JSON: application/json, with at most a charset=utf-8 parameter."""
    mime, *parameters = (part.strip() for part in content_type.split(";"))
    return mime == "application/json" and all(
        key == "charset" and value.lower() == "utf-8" for key, _, value in (p.partition("=") for p in parameters)
    )


def error(status: int, message: str, headers: dict[str, str] | None = None, code: str | None = None) -> JSONResponse:
    return JSONResponse({"error_code": code or HTTPStatus(status).name, "message": message}, status, headers)


@dataclass(frozen=True)
class Loaded:
    """One loaded model and what identifies it. Immutable: a request holds on to the one it started with."""

    model: Any  # mlflow.pyfunc.PyFuncModel
    uri: str
    version: str = ""
    run_id: str = ""
    compiled: Compiled | None = None  # the short path's predict when set (predictors.py), else scikit-learn's
    counted: bool = False  # count rows and classes predicted (metrics.py)
    recorder: InferenceLog | None = None  # where scored requests are recorded (inference_log.py)
    name: str = ""  # the registered model's name, for the inference log ("" for a pinned run)

    def info(self) -> dict[str, str]:
        runtime = RUNTIME if self.compiled else SKLEARN
        return {"model_uri": self.uri, "model_version": self.version, "run_id": self.run_id, "runtime": runtime}

    def metric_labels(self, model_name: str) -> dict[str, str]:
        info = self.info()
        return {"model_name": model_name, **{k: info[k] for k in ("model_version", "run_id", "model_uri", "runtime")}}

    @cached_property
    def headers(self) -> dict[str, str]:
        return {"X-Model-Uri": self.uri, "X-Model-Version": self.version, "X-Model-Run-Id": self.run_id}

    @cached_property
    def input_schema(self) -> Any:
        return self.model.metadata.get_input_schema()

    @cached_property
    def tensor_spec(self) -> Any:
        """The signature's one unnamed tensor, for the short path; None: always MLflow's full path. Only
        scikit-learn models: a custom pyfunc model's signature may come from type hints, which MLflow parses
        differently."""
        flavor = self.model.metadata.flavors.get("python_function", {})
        schema = self.input_schema
        if flavor.get("loader_module") != "mlflow.sklearn" or schema is None or not schema.is_tensor_spec():
            return None
        if len(schema.inputs) != 1 or schema.has_input_names():
            return None
        return schema.inputs[0]

    def score(
        self, body: bytes, content_type: str, request_id: str = "", shadow: bool = False, checked: bool = False
    ) -> Response:
        """Answer one /invocations request as MLflow's scoring server does. `shadow`: a challenger's answer that no
        client sees (logged as such, not counted as served). `checked`: a challenger's answer, which must have one
        prediction per input row (else WrongAnswer: the champion's answer stands)."""
        headers = {**self.headers, "X-Request-Id": request_id} if request_id else self.headers
        payload = None
        try:
            if is_utf8_json(content_type):
                payload = decode_json(body)
                short = self.short_path(payload, request_id, shadow, checked)
                if short is not None:
                    return Response(short, headers=headers, media_type="application/json")
            result = scoring_server.invocations(body, content_type, self.model, self.input_schema)
        except MlflowException as exc:
            return Response(exc.serialize_as_json(), exc.get_http_status_code(), headers, "application/json")
        if result.mimetype == "application/json":
            if result.status == 200 and (self.counted or self.recorder or checked):
                predictions = json.loads(result.response).get("predictions")
                if checked:
                    check_rows(input_rows(payload), predictions)
                if self.counted and not shadow:
                    metrics.predicted_json(predictions)
                self.record(request_id, input_rows(payload), predictions, shadow)
            return Response(result.response, result.status, headers, "application/json")
        return error(result.status, result.response, headers)  # MLflow's plain-text 415s, as JSON

    def record(self, request_id: str, rows: Any, predictions: Any, shadow: bool = False) -> None:
        if self.recorder is not None:
            self.recorder.record(request_id, self.name, self.version, self.run_id, rows, predictions, shadow)

    def short_path(
        self, request: object, request_id: str = "", shadow: bool = False, checked: bool = False
    ) -> bytes | None:
        """The answer to a decoded plain {"inputs": [[...], ...]}, or None for anything else and for any error
        (MLflow's full path then answers, and words the error)."""
        if self.tensor_spec is None:
            return None
        rows = plain_inputs(request)
        if rows is None:
            return None
        try:
            x = convert_data_type(rows, self.tensor_spec)
            predictions = self.predict(x)
        except Exception:  # noqa: BLE001 - MLflow's path decides what the error is and how it is worded
            return None
        if not isinstance(predictions, np.ndarray) or (checked and predictions.shape[:1] != (len(x),)):
            return None  # MLflow's encoder handles the other output types; its path checks a challenger's count
        if self.counted and not shadow:
            metrics.predicted(predictions)
        self.record(request_id, x, predictions, shadow)
        return json.dumps({"predictions": predictions.tolist()}).encode()

    def predict(self, x: np.ndarray) -> Any:
        """The checked compiled copy's predictions where it covers x, else the model's own (pyfunc's)."""
        predictions = self.compiled.predict(x) if self.compiled is not None and fits(self.tensor_spec, x) else None
        return self.model.predict(x) if predictions is None else predictions


class WrongAnswer(ValueError):
    """A challenger's answer that cannot stand for the champion's: not one prediction per input row."""


def check_rows(rows: object, predictions: object) -> None:
    """WrongAnswer unless there is one prediction per row (rows it cannot count, such as CSV's, pass)."""
    if isinstance(rows, list) and not (isinstance(predictions, list) and len(predictions) == len(rows)):
        count = len(predictions) if isinstance(predictions, list) else type(predictions).__name__
        raise WrongAnswer(f"{count} predictions for {len(rows)} rows")


def plain_inputs(request: object) -> list | None:
    """The rows of a plain {"inputs": [[...], ...]} request (the short path's form), else None."""
    if type(request) is not dict or request.keys() != {"inputs"}:
        return None
    rows = request["inputs"]
    if type(rows) is not list or not rows or any(type(row) is dict for row in rows):
        return None
    return rows


def input_rows(payload: object) -> Any:
    """The rows of a JSON payload MLflow's full path scored, for the inference log: the tensor forms' lists and
    dataframe_split's data as they came; dataframe_records' values by position; None for a CSV body."""
    if not isinstance(payload, dict) or len(payload) != 1:
        return None
    key, value = next(iter(payload.items()))
    if key == "dataframe_split" and isinstance(value, dict):
        return value.get("data")
    if key == "dataframe_records" and isinstance(value, list):
        return [list(row.values()) if isinstance(row, dict) else row for row in value]
    return value if key in ("inputs", "instances") else None


def fits(spec: Any, x: np.ndarray) -> bool:
    """x passes MLflow's schema enforcement of the tensor spec unchanged (what pyfunc predict would check first)."""
    shape = spec.shape
    return (
        x.dtype == spec.type and x.ndim == len(shape) and all(s in (-1, n) for s, n in zip(shape, x.shape, strict=True))
    )


def decode_json(body: bytes) -> object:
    """json.loads, with every failure an MLflow input error (a 400): MLflow maps only JSONDecodeError and
    UnicodeDecodeError, so RecursionError and the ValueError of a too-long integer reached it as 500s."""
    try:
        return json.loads(body)
    except (RecursionError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise MlflowInvalidInputException(
            f"Ensure that input is a valid JSON formatted string. Error: {exc!r}"
        ) from None


def load(
    uri: str,
    version: str = "",
    run_id: str = "",
    compiled: bool = True,
    counted: bool = False,
    recorder: InferenceLog | None = None,
    name: str = "",
) -> Loaded:
    """Load a model completely (nothing is swapped yet), the way MLflow's scoring server loads it, and, for a
    scikit-learn tree ensemble served by the short path, its checked compiled copy (unless `compiled` is off)."""
    model = scoring_server.load_model_with_mlflow_config(uri)
    run_id = run_id or (model.metadata.run_id or "")
    loaded = Loaded(model, uri, version, run_id, counted=counted, recorder=recorder, name=name)
    if compiled and loaded.tensor_spec is not None:
        loaded = replace(loaded, compiled=compile_model(model.get_raw_model(), model.input_example))
    log.info("model-server: %s predicts with %s", uri, loaded.info()["runtime"])
    return loaded
