"""The reference server of the serving benchmark: the same model, loaded with mlflow.pyfunc, in the smallest
FastAPI app that speaks the same protocol for tensor input ({"inputs": [[...]]} -> {"predictions": [...]}).

What the model-server spends beyond this app is its own overhead (MLflow's scoring app, middleware, the
registry wrapper). Run like the model-server: uvicorn ref_server:create_app --factory, MODEL_URI from the env.
"""

from __future__ import annotations

import json
import os

import mlflow.pyfunc
import numpy as np
from fastapi import FastAPI, Request, Response


def create_app() -> FastAPI:
    """Load the model once, then predict inline on the event loop (one request at a time per worker)."""
    model = mlflow.pyfunc.load_model(os.environ["MODEL_URI"])
    app = FastAPI()

    @app.get("/ping")
    async def ping() -> Response:
        return Response("\n", media_type="application/json")

    @app.post("/invocations")
    async def invocations(request: Request) -> Response:
        try:
            rows = np.asarray(json.loads(await request.body())["inputs"], dtype=np.float64)
        except (ValueError, KeyError, TypeError) as exc:
            return Response(json.dumps({"error_code": "BAD_REQUEST", "message": str(exc)}), 400)
        predictions = model.predict(rows)
        return Response(json.dumps({"predictions": predictions.tolist()}), media_type="application/json")

    return app
