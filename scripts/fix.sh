#!/usr/bin/env bash
# Fix what can be fixed automatically: lint autofixes and formatting.
set -euo pipefail
cd "$(dirname "$0")/.."
. "${CHARLM_VENV:-.venv}/bin/activate"
ruff check --fix charlm tests scripts
ruff format charlm tests scripts
