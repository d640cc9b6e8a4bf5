#!/usr/bin/env bash
# Create (or update) a virtual environment with a real ComfyUI host and everything the tests, the
# headless example and the browser check need; print the host's path and the environment's path (two
# lines on stdout; the log goes to stderr).
#
#   bash scripts/setup_env.sh                                 # the newest host of ../shared/hosts (0.33.0)
#   STORM_HOST=0.3.64 bash scripts/setup_env.sh               # another host of ../shared/hosts
#   COMFYUI_PATH=/path/to/ComfyUI bash scripts/setup_env.sh   # your own ComfyUI source tree
#                                                             # (git clone https://github.com/Comfy-Org/ComfyUI)
#
# The host's own requirements.txt is installed as a fresh install resolves it (comfy-kitchen,
# comfy-aimdo, the newest transformers, its frontend), except torch, torchvision and torchaudio:
# TORCH_SPEC (default "torch==2.14.1 torchvision==0.29.1", the CPU-capable releases on this machine) and
# torchaudio 2.11.1 without its pin on torch 2.11 (ComfyUI 0.33 imports torchaudio in comfy.sd).
# Environment: PYTHON (default python3), STORM_VENV (default .venv-<host version>), STORM_HOSTS_DIR (where
# ../shared/hosts trees are unpacked; default ~/.cache/comfyui-hosts).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}"

if [ -z "${COMFYUI_PATH:-}" ]; then
  unpack=../shared/hosts/unpack
  if [ ! -x "$unpack" ]; then
    echo "[setup] set COMFYUI_PATH to a ComfyUI source tree (git clone https://github.com/Comfy-Org/ComfyUI)" >&2
    exit 2
  fi
  COMFYUI_PATH=$("$unpack" "${STORM_HOST:-0.33.0}" "${STORM_HOSTS_DIR:-$HOME/.cache/comfyui-hosts}")
fi
COMFYUI_PATH=$(cd "$COMFYUI_PATH" && pwd)
[ -f "$COMFYUI_PATH/comfy/samplers.py" ] || { echo "COMFYUI_PATH=$COMFYUI_PATH is not a ComfyUI source tree" >&2; exit 2; }
version=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$COMFYUI_PATH/comfyui_version.py")
VENV="${STORM_VENV:-.venv-$version}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV for ComfyUI $version" >&2
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)
if "$VENV/bin/python" -c "import importlib.util,sys; s=importlib.util.find_spec('comfy'); sys.exit(0 if s and s.origin else 1)" 2>/dev/null; then
  echo "[setup] $VENV has a 'comfy' package installed (the 2024 pip package comfyui==0.0.1?) that would shadow" \
       "the ComfyUI source tree; use a new STORM_VENV" >&2
  exit 2
fi
if ! "$VENV/bin/python" -c "import torch, torchvision, torchaudio" 2>/dev/null; then
  echo "[setup] installing $TORCH_SPEC and torchaudio" >&2
  # shellcheck disable=SC2086
  "${PIP[@]}" $TORCH_SPEC
  "${PIP[@]}" --no-deps torchaudio==2.11.1
fi
host_requirements=$(mktemp)
trap 'rm -f "$host_requirements"' EXIT
grep -vE '^\s*(torch|torchvision|torchaudio)\s*$' "$COMFYUI_PATH/requirements.txt" >"$host_requirements"
echo "[setup] ComfyUI $version's requirements, the pack's and the test tools" >&2
"${PIP[@]}" -r "$host_requirements" -r requirements.txt -r tests/requirements-test.txt
echo "[setup] done: $("$VENV/bin/python" -c 'import torch, sys, transformers; print("python", sys.version.split()[0], "torch", torch.__version__, "transformers", transformers.__version__)'), ComfyUI $version" >&2
echo "$COMFYUI_PATH"
echo "$VENV"
