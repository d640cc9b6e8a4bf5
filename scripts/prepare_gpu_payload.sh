#!/usr/bin/env bash
# Put into .gpu-payload/ (ignored by git) what `python -m scripts.gpu_evidence` needs on a lent GPU machine, whose
# image has Python 3.12 and torch but no ComfyUI and can download nothing:
#   .gpu-payload/ComfyUI-0.33.0.tar.gz   the host tree from ../shared/hosts, without what the run never reads
#                                        (tests, blueprints, API nodes, other models' tokenizer files)
#   .gpu-payload/wheels/*.whl            scripts/gpu_payload_wheels.txt for CPython 3.12 / manylinux x86_64;
#                                        comfy-kitchen without its compiled CUDA/ROCm extensions (56 MiB of 57)
# then prints the sizes and checks that the working tree that travels (tracked and untracked files that git does
# not ignore, plus the carried .gpu-payload) stays under the device's 64 MiB.
#
#   bash scripts/prepare_gpu_payload.sh            # needs PyPI (pip download) and ../shared/hosts
#   bash scripts/prepare_gpu_payload.sh --check    # then also the dry run against exactly this payload on the CPU:
#                                                  # the stripped tree, the wheels' files, every other package the
#                                                  # image lacks blocked (STORM_PYTHON: a Python with the pack's and
#                                                  # ComfyUI's requirements, default .venv-0.33.0/bin/python)
# On the device: bash scripts/gpu_run.sh (README: "Evidence from a lent GPU").
set -euo pipefail
cd "$(dirname "$0")/.."
PAYLOAD=.gpu-payload
VERSION=0.33.0
TARBALL=${STORM_COMFYUI_TARBALL:-../shared/hosts/ComfyUI-$VERSION.tar.gz}
PY=${PYTHON:-python3}
LIMIT_MIB=64
[ -f "$TARBALL" ] || { echo "no ComfyUI tarball at $TARBALL (set STORM_COMFYUI_TARBALL)" >&2; exit 2; }

rm -rf "$PAYLOAD"
mkdir -p "$PAYLOAD/wheels"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "[payload] ComfyUI $VERSION from $TARBALL"
tar -xzf "$TARBALL" -C "$tmp"
tree="$tmp/ComfyUI-$VERSION"
# what the run never reads: tests, workflow blueprints, API nodes, the frontend-less server's assets, and the
# tokenizer data of text encoders the run never builds (it builds CLIP-L/G and T5-XXL only)
(cd "$tree" && rm -rf tests tests-unit blueprints comfy_api_nodes script_examples alembic_db .github .ci \
  comfy/text_encoders/qwen25_tokenizer comfy/text_encoders/qwen35_tokenizer comfy/text_encoders/hydit_clip_tokenizer \
  comfy/text_encoders/ace_lyrics_tokenizer comfy/text_encoders/t5_pile_tokenizer comfy/text_encoders/byt5_tokenizer \
  comfy/text_encoders/llama_tokenizer)
tar -czf "$PAYLOAD/ComfyUI-$VERSION.tar.gz" -C "$tmp" "ComfyUI-$VERSION"

echo "[payload] wheels"
mapfile -t wheels < <(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' scripts/gpu_payload_wheels.txt)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d "$tmp/wheels" "${wheels[@]}"
"$PY" - "$tmp/wheels" "$PAYLOAD/wheels" <<'PYEOF'
"""Copy the wheels; comfy-kitchen without its compiled extensions (and their RECORD lines), renamed with build tag
1slim so that nobody mistakes it for the published file."""
import shutil
import sys
import zipfile
from pathlib import Path

src, dst = Path(sys.argv[1]), Path(sys.argv[2])
for wheel in sorted(src.glob("*.whl")):
    if not wheel.name.startswith("comfy_kitchen-"):
        shutil.copy(wheel, dst / wheel.name)
        continue
    name, version, *tags = wheel.stem.split("-")
    out = dst / f"{name}-{version}-1slim-{'-'.join(tags[-3:])}.whl"

    def dropped(path):
        return "/backends/cuda/_C" in path or "/backends/hip/_C" in path

    with zipfile.ZipFile(wheel) as zin, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            if dropped(info.filename):
                continue
            data = zin.read(info.filename)
            if info.filename.endswith(".dist-info/RECORD"):
                data = b"".join(line for line in data.splitlines(keepends=True)
                                if not dropped(line.split(b",")[0].decode()))
            zout.writestr(info, data)
    print(f"  {wheel.name}: {wheel.stat().st_size / 2**20:.1f} MiB -> {out.name}: {out.stat().st_size / 2**20:.2f} MiB")
PYEOF

echo "[payload] sizes"
du -b "$PAYLOAD/ComfyUI-$VERSION.tar.gz" "$PAYLOAD"/wheels/*.whl | awk '{printf "  %8.2f MiB  %s\n", $1 / 1048576, $2}'
payload=$(du -sb "$PAYLOAD" | cut -f1)
tree_bytes=$( (git ls-files -z --cached --others --exclude-standard | xargs -0 -r stat -c %s 2>/dev/null || true) \
  | awk '{s += $1} END {print s + 0}')
if [ -d shared ]; then tree_bytes=$((tree_bytes + $(du -sb shared | cut -f1))); fi
total=$((payload + tree_bytes))
awk -v p="$payload" -v t="$tree_bytes" -v s="$total" -v l="$LIMIT_MIB" -v d="$PAYLOAD" 'BEGIN {
  printf "[payload] %s: %.1f MiB; the working tree that travels: %.1f MiB; together %.1f MiB of %d MiB\n",
         d, p / 1048576, t / 1048576, s / 1048576, l }'
if [ "$total" -ge $((LIMIT_MIB * 1048576)) ]; then
  echo "[payload] over the device's limit of $LIMIT_MIB MiB" >&2
  exit 1
fi

if [ "${1:-}" = "--check" ]; then
  # the dry run against exactly this payload: the stripped tree, the wheels' files on PYTHONPATH (their Python
  # code and comfy-aimdo's ctypes library load on any CPython 3), every other package the image lacks blocked
  STORM_PYTHON=${STORM_PYTHON:-.venv-0.33.0/bin/python}
  check="$tmp/check"
  mkdir -p "$check/site"
  tar -xzf "$PAYLOAD/ComfyUI-$VERSION.tar.gz" -C "$check"
  for w in "$PAYLOAD"/wheels/*.whl; do "$PY" -m zipfile -e "$w" "$check/site"; done
  echo "[payload] --check: dry run against the payload with $STORM_PYTHON"
  PYTHONPATH="$check/site" COMFYUI_PATH="$check/ComfyUI-$VERSION" "$STORM_PYTHON" -m scripts.gpu_evidence \
    --dry-run --device-image-check --out "$check/out" --work "$check/work"
  "$STORM_PYTHON" - "$check/out" <<'PYEOF'
import json, sys
evidence = json.load(open(f"{sys.argv[1]}/evidence.json"))
stages = {k: v["status"] for k, v in evidence["stages"].items()}
print(f"[payload] --check: stages {stages}; packages: {evidence['environment'].get('packages')}")
sys.exit(0 if all(s == "done" for s in stages.values()) else 1)
PYEOF
fi
