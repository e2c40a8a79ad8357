#!/usr/bin/env bash
# The builder stage of both images (airflow/Dockerfile, mlflow/Dockerfile): install exactly what uv.lock pins
# for the image's dependency groups (hashes checked, nothing resolved) into /opt/venv.
#
# Usage: image-venv.sh GROUP [GROUP ...]     pyproject.toml and uv.lock beside this script
set -euo pipefail

if [ "$#" -eq 0 ]; then
  echo "usage: image-venv.sh GROUP [GROUP ...]" >&2
  exit 2
fi

cd "$(dirname "$0")"
pip install --no-cache-dir "uv==${UV_VERSION:-0.13.9}"
export UV_PROJECT_ENVIRONMENT=/opt/venv UV_PYTHON_DOWNLOADS=never UV_NO_CACHE=1 UV_COMPILE_BYTECODE=1 \
  UV_LINK_MODE=copy
groups=()
for group in "$@"; do groups+=(--group "$group"); done
uv sync --frozen --no-default-groups "${groups[@]}" --no-install-project
# Never used at run time: the test suites of numpy, pandas, scipy, scikit-learn and matplotlib, ONNX's backend
# test data, ONNX Runtime's offline tools (model optimisation and quantisation).
sp=/opt/venv/lib/python3.11/site-packages
for package in numpy pandas scipy sklearn matplotlib; do
  if [ -d "$sp/$package" ]; then
    find "$sp/$package" -depth -type d -name tests -exec rm -rf {} +
  fi
done
rm -rf "$sp/onnx/backend/test" "$sp/onnxruntime/transformers" "$sp/onnxruntime/quantization" "$sp/onnxruntime/tools"
# Nor, in the Airflow image (Evidently and plotly; ~100 MB, which keeps it under the 900 MB of benchmarks/): the
# Jupyter extensions of plotly and Evidently and Evidently's data-file copies of them (no Jupyter here), the front end
# of the `evidently ui` web service (the drift check writes HTML reports, which embed evidently/nbextension's bundle),
# and the test suites of a few more packages.
rm -rf /opt/venv/share/jupyter /opt/venv/evidently "$sp/jupyterlab_plotly" \
  "$sp/evidently/ui/service/assets" "$sp/evidently/legacy/ui/assets"
for package in joblib libcst dill greenlet croniter jsonschema regex skops mpl_toolkits; do
  if [ -d "$sp/$package" ]; then
    find "$sp/$package" -depth -type d \( -name tests -o -name test \) -exec rm -rf {} +
  fi
done
# Bytecode only for what the stack imports at start: plotly's 15,000 generated modules are imported lazily (~380 of
# them by a drift report, compiled in memory: ~0.4 s of CPU per check), databricks-sdk (MLflow's Databricks backend)
# and grpc (OpenTelemetry's gRPC exporter) not at all here.
for package in plotly databricks grpc; do
  if [ -d "$sp/$package" ]; then
    find "$sp/$package" -depth -type d -name __pycache__ -exec rm -rf {} +
  fi
done
