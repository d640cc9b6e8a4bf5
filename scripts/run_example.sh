#!/usr/bin/env bash
# Set up .venv (first run only) and run the Attend-and-Excite example workflow headlessly on a
# built-in tiny model: image, heatmaps and loss log go to the folder given (default storm-demo-output).
#   bash scripts/run_example.sh out/ [--steps 50] [--size 512] [--seed 7] [--workflow FILE]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${STORM_VENV:-.venv}"
bash scripts/setup_env.sh
exec "$VENV/bin/python" -m scripts.run_example "$@"
