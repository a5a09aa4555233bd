#!/usr/bin/env bash
# Create .venv and install charlm with its test tools. Picks the right PyTorch build:
# - a torch >= 2.10 already in the venv is kept;
# - with an NVIDIA GPU, PyPI's default (CUDA) build;
# - without one, a CPU build: first a wheel that pip's configured local wheel folders already
#   hold (offline mirrors), then PyTorch's CPU index; never the multi-GB CUDA build unasked.
# CHARLM_VENV picks another folder; PYTHON another interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${CHARLM_VENV:-.venv}
if [ ! -x "$venv/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$venv"
fi
# shellcheck disable=SC1091
. "$venv/bin/activate"
pip_q() { python -m pip install --quiet --disable-pip-version-check "$@"; }

has_torch() {
  python - <<'PY' 2>/dev/null
import sys, torch
major, minor = (int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
sys.exit(0 if (major, minor) >= (2, 10) else 1)
PY
}

if has_torch; then
  :
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "setup: NVIDIA GPU found: installing PyTorch with CUDA" >&2
  pip_q "torch>=2.10,<3"
elif pip_q --no-index --no-deps "torch>=2.10,<3" 2>/dev/null; then
  # A local CPU wheel; now fetch what it depends on (torch itself is already satisfied).
  pip_q "torch==$(python -c 'import importlib.metadata as m; print(m.version("torch"))')"
  echo "setup: installed PyTorch from a local wheel ($(python -c 'import torch; print(torch.__version__)' 2>/dev/null))" >&2
elif pip_q --retries 1 --timeout 30 --index-url https://download.pytorch.org/whl/cpu \
      --extra-index-url https://pypi.org/simple "torch>=2.10,<3"; then
  echo "setup: installed the CPU build of PyTorch" >&2
else
  echo "setup: warning: PyTorch's CPU index is out of reach; installing torch from PyPI (may be a large CUDA build)" >&2
  pip_q "torch>=2.10,<3"
fi
pip_q -e ".[dev]"
echo "setup: ready ($venv, torch $(python -c 'import torch; print(torch.__version__)'))" >&2
