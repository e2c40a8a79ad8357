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
