#!/usr/bin/env bash
# Refresh constraints.txt: resolve the newest releases that pyproject.toml allows in a fresh
# venv (torch picked as scripts/setup.sh picks it) and pin every installed package there.
# Commit the result after the suite passes on it:
#   bash scripts/lock.sh && bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
venv=$(mktemp -d "${TMPDIR:-/tmp}/charlm-lock.XXXXXX")
trap 'rm -rf "$venv"' EXIT
CHARLM_VENV="$venv" CHARLM_CONSTRAINTS="" bash scripts/setup.sh
{
  echo "# Exact versions CI installs (scripts/setup.sh -> pip --constraint); refresh with"
  echo "# bash scripts/lock.sh. Generated $(date -u +%Y-%m-%d) on Python $("$venv/bin/python" -c 'import platform; print(platform.python_version())')."
  echo "# torch's build (CPU, CUDA) is chosen by scripts/setup.sh; the pin is its version only."
  # --all keeps setuptools (the tests build a wheel with it); pip and charlm itself are not pins.
  "$venv/bin/python" -m pip freeze --all --disable-pip-version-check \
    | grep -v -i -E '^(pip|charlm-rnn)==|^-e |^#|^charlm-rnn @ ' \
    | sed -E 's/^([A-Za-z0-9_.-]+==[^+]+)\+.*$/\1/' \
    | LC_ALL=C sort -f
} >constraints.txt.new
mv constraints.txt.new constraints.txt
echo "lock: wrote constraints.txt ($(grep -c '==' constraints.txt) pins)" >&2
