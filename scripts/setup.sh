#!/usr/bin/env bash
# Create .venv and install charlm with its test tools and the extras the tests use, at the versions
# pinned in constraints.txt (scripts/lock.sh refreshes it), so that a new release upstream
# cannot change what CI installs.
# Picks the right PyTorch build, at the pinned version:
# - a torch >= 2.10 already in the venv is kept (with a warning when it is not the pinned one);
# - with an NVIDIA GPU, PyPI's default (CUDA) build;
# - without one, a CPU build: first a wheel that pip's configured local wheel folders already
#   hold (offline mirrors), then PyTorch's CPU index; never the multi-GB CUDA build unasked.
# CHARLM_VENV picks another folder; PYTHON another interpreter; CHARLM_CONSTRAINTS another
# constraints file ("" resolves the newest releases that pyproject.toml allows).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${CHARLM_VENV:-.venv}
constraints=${CHARLM_CONSTRAINTS-constraints.txt}
if [ ! -x "$venv/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$venv"
fi
# shellcheck disable=SC1091
. "$venv/bin/activate"
pip_q() { python -m pip install --quiet --disable-pip-version-check "$@"; }
torch_version() { python -c 'import importlib.metadata as m; print(m.version("torch"))'; }

torch_req="torch>=2.10,<3"
cflags=()
if [ -n "$constraints" ]; then
  pinned=$(grep -E '^torch==' "$constraints" || true)
  [ -n "$pinned" ] && torch_req=$pinned
  cflags=(--constraint "$constraints")
fi

has_torch() {
  python - <<'PY' 2>/dev/null
import sys, torch
major, minor = (int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
sys.exit(0 if (major, minor) >= (2, 10) else 1)
PY
}

if has_torch; then
  have=$(torch_version)
  if [ "$torch_req" != "torch>=2.10,<3" ] && [ "torch==${have%%+*}" != "$torch_req" ]; then
    echo "setup: keeping torch $have in $venv ($constraints pins ${torch_req#torch==})" >&2
    grep -v -E '^torch==' "$constraints" >"$venv/constraints-without-torch.txt"
    cflags=(--constraint "$venv/constraints-without-torch.txt")
  fi
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "setup: NVIDIA GPU found: installing PyTorch with CUDA" >&2
  pip_q "${cflags[@]}" "$torch_req"
elif pip_q --no-index --no-deps "$torch_req" 2>/dev/null; then
  # A local CPU wheel; now fetch what it depends on (torch itself is already satisfied).
  pip_q "${cflags[@]}" "torch==$(torch_version)"
  echo "setup: installed PyTorch from a local wheel ($(torch_version))" >&2
elif pip_q --retries 1 --timeout 30 --index-url https://download.pytorch.org/whl/cpu \
      --extra-index-url https://pypi.org/simple "${cflags[@]}" "$torch_req"; then
  echo "setup: installed the CPU build of PyTorch" >&2
else
  echo "setup: warning: PyTorch's CPU index is out of reach; installing torch from PyPI (may be a large CUDA build)" >&2
  pip_q "${cflags[@]}" "$torch_req"
fi
# The extras' tests run, never skip, in CI: onnx (export), tensorboard (train.tensorboard),
# transformers (tokenizer.json loaded by PreTrainedTokenizerFast), wandb (train.wandb, offline).
pip_q "${cflags[@]}" -e ".[dev,onnx,tensorboard,transformers,wandb]"
echo "setup: ready ($venv, torch $(torch_version)${constraints:+, pinned by $constraints})" >&2
