#!/usr/bin/env bash
# Install every runtime dependency at exactly the floor that pyproject.toml declares (`>=X`
# becomes `==X`) in a fresh venv, the test tools at their constraints.txt pins, and run the
# suite there: the floors are claims, and this is their test. Whatever else those packages need
# resolves freely. torch stays at its constraints.txt pin unless CHARLM_FLOORS_TORCH=1 (its
# floor's CPU build comes only from PyTorch's CPU index). Extra arguments go to pytest.
#   bash scripts/check_floors.sh -x -q          (Python 3.11 or later: it reads pyproject.toml with tomllib)
# CHARLM_FLOORS_VENV picks the venv folder (default: a temporary one, removed afterwards);
# CHARLM_FLOORS_EXTRA adds constraints ("click==8.1.8") to try a lower version of anything.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${CHARLM_FLOORS_VENV:-}
if [ -z "$venv" ]; then
  venv=$(mktemp -d "${TMPDIR:-/tmp}/charlm-floors.XXXXXX")
  trap 'rm -rf "$venv"' EXIT
fi
rm -rf "$venv"
"${PYTHON:-python3}" -m venv "$venv"
floors="$venv/floors.txt"
"$venv/bin/python" - "${CHARLM_FLOORS_TORCH:-0}" "${CHARLM_FLOORS_EXTRA:-}" >"$floors" <<'PY'
import re, sys, tomllib

project = tomllib.load(open("pyproject.toml", "rb"))["project"]
with_torch, extra = sys.argv[1] == "1", sys.argv[2].split()
name_of = lambda req: re.match(r"[A-Za-z0-9_.-]+", req).group(0).lower()
pins = {}
for req in project["dependencies"]:
    floor = re.search(r">=\s*([^,;\s]+)", req)
    if floor and (name_of(req) != "torch" or with_torch):
        pins[name_of(req)] = f"{name_of(req)}=={floor.group(1)}"
locked = [l.strip() for l in open("constraints.txt") if "==" in l and not l.startswith("#")]
tools = {name_of(r) for r in project["optional-dependencies"]["dev"]} | {"torch"}
for line in locked:
    if name_of(line) in tools:
        pins.setdefault(name_of(line), line)
for line in extra:
    pins[name_of(line)] = line
print("\n".join(pins.values()))
PY
echo "floors: installing" $(cat "$floors") >&2
CHARLM_VENV="$venv" CHARLM_CONSTRAINTS="$floors" bash scripts/setup.sh
# shellcheck disable=SC1091
. "$venv/bin/activate"
python -m pip list --disable-pip-version-check 2>/dev/null | grep -i -E "$(cut -d= -f1 "$floors" | paste -sd'|')" >&2
python -m pytest -p no:cacheprovider "$@"
