#!/usr/bin/env bash
# Set up a ComfyUI host and its environment (first run only; see scripts/setup_env.sh) and run the
# Attend-and-Excite example workflow headlessly on a built-in tiny model: image, heatmaps and loss log go
# to the folder given (default storm-demo-output).
#   bash scripts/run_example.sh out/ [--steps 50] [--size 512] [--seed 7] [--workflow FILE]
set -euo pipefail
cd "$(dirname "$0")/.."
setup=$(bash scripts/setup_env.sh)
COMFYUI_PATH=$(sed -n 1p <<<"$setup")
VENV=$(sed -n 2p <<<"$setup")
export COMFYUI_PATH
exec "$VENV/bin/python" -m scripts.run_example "$@"
