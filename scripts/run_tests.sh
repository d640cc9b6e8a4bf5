#!/usr/bin/env bash
# Run the whole test suite (lint, ops, host and workflow tiers) in .venv, creating it if needed.
# Extra arguments go to pytest (e.g. -k attend or tests/ops). COMFYUI_PATH selects the host.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${STORM_VENV:-.venv}"
bash scripts/setup_env.sh
# the tokenizer version test also runs the newest transformers from its own environment
export STORM_TRANSFORMERS_PYTHONS="${STORM_TRANSFORMERS_PYTHONS:-${STORM_TF_VENV:-$VENV-transformers-latest}/bin/python}"
echo "[tests] ruff"
"$VENV/bin/python" -m ruff check .
echo "[tests] pytest"
exec "$VENV/bin/python" -m pytest "$@"
