#!/usr/bin/env bash
# Run the whole test suite (lint, ops, host and workflow tiers) against a real ComfyUI host, setting up its
# environment first (scripts/setup_env.sh: the newest host of ../shared/hosts, STORM_HOST=VERSION another,
# or COMFYUI_PATH=<your ComfyUI source tree>). Extra arguments go to pytest (e.g. -k attend or tests/ops).
set -euo pipefail
cd "$(dirname "$0")/.."
setup=$(bash scripts/setup_env.sh)
COMFYUI_PATH=$(sed -n 1p <<<"$setup")
VENV=$(sed -n 2p <<<"$setup")
export COMFYUI_PATH
echo "[tests] ComfyUI at $COMFYUI_PATH, environment $VENV"
echo "[tests] ruff"
"$VENV/bin/python" -m ruff check .
echo "[tests] pytest"
exec "$VENV/bin/python" -m pytest "$@"
