#!/usr/bin/env bash
# Set up (first time only) and run every test, the browser tests included.
# Browser tests need Debian's chromium at /usr/bin/chromium (sudo apt-get install chromium).
# Screenshots of the pages land in artifacts/screenshots/.
set -euo pipefail
cd "$(dirname "$0")"
./setup.sh dev
exec .venv/bin/python -m pytest "$@"
