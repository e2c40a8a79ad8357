"""The Iris forest on LitServe, for the `peers` benchmark (benchmarks/peer_servers.py starts it).

`python litserve_server.py --model model.joblib --port N`; stop it with SIGINT (after SIGTERM its workers outlive the
main process). Settings from the LitServer reference (https://lightning.ai/docs/litserve/api-reference/litserver and
the docstrings of LitServer and LitServer.run): CPU, 2 inference worker processes (`workers_per_device=2` on one CPU
device) and as many uvicorn API-server processes (`num_api_servers` defaults to the worker count), `fast_queue=True`
(ZeroMQ between them, "for high-throughput scenarios"), uvicorn's access log off, log level warning, no client.py.
"""

from __future__ import annotations

import argparse
import signal

import joblib
import litserve as ls
import numpy as np


class IrisAPI(ls.LitAPI):
    """POST /predict {"inputs": [[4 floats], ...]} answers {"predictions": [one class per row]}."""

    def __init__(self, model_path: str) -> None:
        super().__init__()
        self.model_path = model_path

    def setup(self, device: str) -> None:
        self.model = joblib.load(self.model_path)

    # No annotations on these two: LitServe makes them the endpoint's FastAPI request and response types (validated
    # by pydantic on every request); unannotated is its default path, the parsed JSON in and a plain JSON answer out.
    def decode_request(self, request):  # noqa: ANN001, ANN201
        return np.asarray(request["inputs"], dtype=np.float64)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.model.predict(x)

    def encode_response(self, output):  # noqa: ANN001, ANN201
        return {"predictions": output.tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="the joblib file of the fitted estimator")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    # LitServe stops on KeyboardInterrupt; a shell's background job inherits SIGINT ignored, which would make it deaf.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    server = ls.LitServer(IrisAPI(args.model), accelerator="cpu", devices=1, workers_per_device=2, fast_queue=True)
    server.run(host="127.0.0.1", port=args.port, log_level="warning", generate_client_file=False, access_log=False)


if __name__ == "__main__":
    main()
