#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv with everything the tests and the
# headless example need: torch, a real ComfyUI host, the pack's requirements and the test tools.
#
#   bash scripts/setup_env.sh            # host = pip fork comfyui==0.0.1
#   COMFYUI_PATH=/path/to/ComfyUI bash scripts/setup_env.sh   # host = that upstream checkout
#
# Environment: PYTHON (default python3), STORM_VENV (default .venv), STORM_TF_VENV (default
# "$STORM_VENV-transformers-latest": newest transformers for the tokenizer version test), TORCH_SPEC (default
# "torch==2.14.1 torchvision==0.29.1"; both ComfyUI executors import torchvision).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${STORM_VENV:-.venv}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)

if ! "$VENV/bin/python" -c "import torch, torchvision" 2>/dev/null; then
  echo "[setup] installing $TORCH_SPEC"
  # shellcheck disable=SC2086
  "${PIP[@]}" $TORCH_SPEC
fi

if [ -n "${COMFYUI_PATH:-}" ]; then
  echo "[setup] host: upstream ComfyUI at $COMFYUI_PATH"
  [ -f "$COMFYUI_PATH/comfy/samplers.py" ] || { echo "COMFYUI_PATH=$COMFYUI_PATH is not a ComfyUI checkout" >&2; exit 2; }
  if "$VENV/bin/python" -c "import importlib.util,sys; sys.exit(0 if importlib.util.find_spec('comfy') and importlib.util.find_spec('comfy').origin else 1)" 2>/dev/null; then
    echo "[setup] the pip fork is installed in $VENV and would shadow the checkout; use another STORM_VENV" >&2
    exit 2
  fi
  "${PIP[@]}" -r tests/requirements-host-upstream.txt
else
  echo "[setup] host: pip fork comfyui==0.0.1"
  "${PIP[@]}" --no-deps comfyui==0.0.1
  "${PIP[@]}" -r tests/requirements-host-fork.txt
fi
"${PIP[@]}" -r requirements.txt -r tests/requirements-test.txt

# A second, tokenizer-only environment with the newest transformers (what a fresh ComfyUI install
# takes), for tests/host/test_tokenizer_versions.py: the pip fork cannot import transformers 5.
TF_VENV="${STORM_TF_VENV:-$VENV-transformers-latest}"
if [ ! -x "$TF_VENV/bin/python" ]; then
  echo "[setup] creating $TF_VENV (newest transformers, tokenizers only)"
  "$PYTHON" -m venv "$TF_VENV"
fi
"$TF_VENV/bin/python" -m pip install --disable-pip-version-check -q --upgrade "transformers>=5"
echo "[setup] done: $("$VENV/bin/python" -c 'import torch, sys, transformers; print("python", sys.version.split()[0], "torch", torch.__version__, "transformers", transformers.__version__)')"
echo "[setup] tokenizer check environment: transformers $("$TF_VENV/bin/python" -c 'import transformers; print(transformers.__version__)' 2>/dev/null)"
