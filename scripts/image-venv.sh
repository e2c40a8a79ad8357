#!/usr/bin/env bash
# The builder stage of both images (airflow/Dockerfile, mlflow/Dockerfile): install exactly what uv.lock pins
# for the image's dependency groups (hashes checked, nothing resolved) into /opt/venv; then, in a later layer (so
# a code change does not reinstall the dependencies), the project's package itself.
#
# Usage: image-venv.sh GROUP [GROUP ...]     pyproject.toml and uv.lock beside this script
#        image-venv.sh --package             the mlops_pipeline package beside it, built and installed as a wheel
set -euo pipefail

if [ "$#" -eq 0 ]; then
  echo "usage: image-venv.sh GROUP [GROUP ...] | --package" >&2
  exit 2
fi

cd "$(dirname "$0")"
export UV_PROJECT_ENVIRONMENT=/opt/venv UV_PYTHON_DOWNLOADS=never UV_NO_CACHE=1 UV_COMPILE_BYTECODE=1 \
  UV_LINK_MODE=copy
if [ "$1" = "--package" ]; then
  exec uv pip install --python /opt/venv/bin/python --no-deps .
fi
pip install --no-cache-dir "uv==${UV_VERSION:-0.13.9}"
groups=()
for group in "$@"; do groups+=(--group "$group"); done
uv sync --frozen --no-default-groups "${groups[@]}" --no-install-project
sp=/opt/venv/lib/python3.11/site-packages

# remove_dirs NAME PACKAGE...: every directory called NAME inside the installed PACKAGEs (absent ones are skipped)
remove_dirs() {
  local name="$1" package
  shift
  for package in "$@"; do
    if [ -d "$sp/$package" ]; then
      find "$sp/$package" -depth -type d -name "$name" -exec rm -rf {} +
    fi
  done
}

# Never used at run time: test suites, ONNX's backend test data, ONNX Runtime's offline tools (model optimisation
# and quantisation); in the Airflow image (~100 MB, which keeps it under the 900 MB of benchmarks/) the Jupyter
# extensions of plotly and Evidently and Evidently's data-file copies of them (no Jupyter here), and the front end of
# the `evidently ui` web service (the drift check writes HTML reports, which embed evidently/nbextension's bundle).
remove_dirs tests numpy pandas scipy sklearn matplotlib libcst dill greenlet croniter jsonschema regex skops mpl_toolkits
remove_dirs test joblib
rm -rf "$sp/onnx/backend/test" "$sp/onnxruntime/transformers" "$sp/onnxruntime/quantization" "$sp/onnxruntime/tools"
rm -rf /opt/venv/share/jupyter /opt/venv/evidently "$sp/jupyterlab_plotly" \
  "$sp/evidently/ui/service/assets" "$sp/evidently/legacy/ui/assets"
# Bytecode only for what the stack imports: plotly's 15,000 generated modules are imported lazily (~380 of them by a
# drift report, compiled in memory: ~0.4 s of CPU per check); databricks-sdk (MLflow's Databricks backend) and grpc
# (OpenTelemetry's gRPC exporter) are not imported in either image.
remove_dirs __pycache__ plotly databricks grpc
