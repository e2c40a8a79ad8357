"""The Iris forest as a BentoML service, for the `peers` benchmark (benchmarks/peer_servers.py starts it).

`bentoml serve bentoml_service:IrisClassifier --working-dir benchmarks/peers`, with PEER_MODEL naming the joblib file.
Settings from https://docs.bentoml.com/en/latest/reference/bentoml/configurations.html: `workers=2` (two processes,
each with its own HTTP server and its own copy of the model), access log off; metrics stay at their default (on).
"""

from __future__ import annotations

import os

import bentoml
import joblib
import numpy as np


@bentoml.service(workers=2, logging={"access": {"enabled": False}})
class IrisClassifier:
    """POST /predict {"rows": [[4 floats], ...]} answers one class per row (a JSON list)."""

    def __init__(self) -> None:
        self.model = joblib.load(os.environ["PEER_MODEL"])

    @bentoml.api
    def predict(self, rows: list[list[float]]) -> list[int]:
        return self.model.predict(np.asarray(rows, dtype=np.float64)).tolist()
