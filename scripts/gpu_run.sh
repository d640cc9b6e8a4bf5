#!/usr/bin/env bash
# On a lent GPU machine (bare image: Python 3.12 with torch, no ComfyUI, nothing downloadable), from the
# repository root, with .gpu-payload/ carried (bash scripts/prepare_gpu_payload.sh made it here):
# unpack the carried ComfyUI tree, install the carried wheels, run python -m scripts.gpu_evidence into $OUT.
#   run tool: command "bash scripts/gpu_run.sh", carry [".gpu-payload"], timeout_s 600
# Extra arguments go to scripts.gpu_evidence (e.g. --skip real, --resume). Any CUDA machine works the same way
# with OUT set (default: gpu-evidence-out); where ComfyUI and its requirements are installed already, run
# COMFYUI_PATH=/path/to/ComfyUI python -m scripts.gpu_evidence --out DIR instead.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-evidence-out}
PAYLOAD=.gpu-payload
VERSION=0.33.0
HOSTS=${STORM_HOSTS_DIR:-/tmp/storm-hosts}
SITE=${STORM_SITE_DIR:-/tmp/storm-site}
PY=${PYTHON:-python3}
mkdir -p "$OUT" "$HOSTS" "$SITE"
exec > >(tee -a "$OUT/console.log") 2>&1
start=$(date +%s)
echo "[gpu-run] $(date -u +%FT%TZ) on $(hostname); $("$PY" -V 2>&1)"
nvidia-smi -L 2>/dev/null || echo "[gpu-run] no nvidia-smi"
if [ ! -f "$PAYLOAD/ComfyUI-$VERSION.tar.gz" ]; then
  echo "[gpu-run] $PAYLOAD/ComfyUI-$VERSION.tar.gz is missing: run bash scripts/prepare_gpu_payload.sh and carry $PAYLOAD"
  exit 2
fi
tar -xzf "$PAYLOAD/ComfyUI-$VERSION.tar.gz" -C "$HOSTS"
# every wheel at once; if pip refuses the set, each on its own, so that one bad wheel costs only itself
if ! "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    "$PAYLOAD"/wheels/*.whl; then
  for w in "$PAYLOAD"/wheels/*.whl; do
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$w" \
      || echo "[gpu-run] could not install $w; the run goes on without it"
  done
fi
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" COMFYUI_PATH="$HOSTS/ComfyUI-$VERSION" PYTHONUNBUFFERED=1
"$PY" -c "import torch; print('[gpu-run] torch', torch.__version__, 'cuda', torch.cuda.is_available())"
echo "[gpu-run] set up in $(( $(date +%s) - start )) s"
# the command keeps its own budget (540 s); the outer limit stops a hang before the tool's 600 s do
timeout -k 10 575 "$PY" -m scripts.gpu_evidence --out "$OUT" "$@"
rc=$?
echo "[gpu-run] gpu_evidence exited $rc after $(( $(date +%s) - start )) s; files in $OUT:"
ls -la "$OUT"
exit $rc
