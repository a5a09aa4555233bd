#!/usr/bin/env bash
# Set up (scripts/setup.sh), then run what CI runs: lint, format check, the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. "${CHARLM_VENV:-.venv}/bin/activate"
ruff check charlm tests scripts
ruff format --check charlm tests scripts
# Two workers (pytest-xdist): the suite is mostly one-thread work and subprocesses, so this
# nearly halves it on 2 cores. CHARLM_TEST_WORKERS=0 runs it in one process.
python -m pytest -q -n "${CHARLM_TEST_WORKERS:-2}" "$@"
