#!/usr/bin/env bash
# Set up (first time only), lint, type-check and run every test, the browser tests included.
# Browser tests need Debian's chromium at /usr/bin/chromium (sudo apt-get install chromium).
# Screenshots of the pages land in artifacts/screenshots/. Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
./setup.sh dev
.venv/bin/ruff check .
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
