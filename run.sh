#!/usr/bin/env bash
# Set up (first time only) and start CNN Explorer on the shipped weights: http://localhost:8501
set -euo pipefail
cd "$(dirname "$0")"
./setup.sh
exec .venv/bin/streamlit run app.py "$@"
