#!/usr/bin/env bash
# Set up (first time only) and start CNN Explorer on the shipped weights: http://localhost:8501
# Options go to `streamlit run`, e.g. ./run.sh --server.port 8502
set -euo pipefail
cd "$(dirname "$0")"
./setup.sh
exec .venv/bin/python -m cnn_core.cli "$@"
