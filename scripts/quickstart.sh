#!/usr/bin/env bash
# Set up, train a small character GRU on the built-in corpus (a couple of CPU minutes), sample it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. "${CHARLM_VENV:-.venv}/bin/activate"
out=${1:-runs/quickstart}
if [ -d "$out/checkpoints" ]; then
  echo "quickstart: $out already holds a run; sampling it (delete it to train again)" >&2
else
  charlm train --config configs/quickstart.yaml --out "$out"
fi
charlm sample "$out" --prime "The " --length 600 --temperature 0.8 --seed 1
