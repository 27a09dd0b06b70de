#!/usr/bin/env bash
# Create the virtual environment in .venv and install what the project needs.
#   ./setup.sh        app requirements only
#   ./setup.sh dev    plus test and benchmark tools
set -euo pipefail
cd "$(dirname "$0")"
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
if [ "${1:-}" = "dev" ]; then
  .venv/bin/python -m pip install --disable-pip-version-check -q -r requirements-dev.txt
else
  .venv/bin/python -m pip install --disable-pip-version-check -q -r requirements.txt
fi
