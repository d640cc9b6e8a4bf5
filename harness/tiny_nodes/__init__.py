"""Test-only ComfyUI custom-node pack: a checkpoint loader that returns tiny random models.

Example workflows use the core ``CheckpointLoaderSimple``; ``harness.workflows.substitute_checkpoints``
swaps it for ``STORMTest_TinyCheckpointLoader`` (same ``ckpt_name`` input, same outputs) so the
workflows run on CPU in seconds. The architecture comes from the checkpoint name:
contains ``"sd3"`` / ``"flux"`` -> a tiny SD3 / Flux DiT (current ComfyUI only), ``"xl"`` -> SDXL,
contains ``"sd2"`` / ``"v2"`` -> SD2.x, anything else -> SD1.5. The name of
the shipped shape model (``storm_shapes_sd15.safetensors``) loads that trained model instead.

ComfyUI imports this folder as a top-level custom-node module, so the harness is imported by
absolute name; the repository root (the folder that holds ``harness``) is appended to ``sys.path`` when it
is not there already (e.g. when a real ComfyUI server loads this pack).
"""

from __future__ import annotations

import sys
from pathlib import Path

_REPO_ROOT = str(Path(__file__).resolve().parents[2])
if _REPO_ROOT not in sys.path:
    sys.path.append(_REPO_ROOT)

from harness.tiny_dit import DIT_ARCHS, build_tiny_dit  # noqa: E402
from harness.tiny_models import SHAPE_MODEL, arch_from_checkpoint_name, build_tiny, load_trained  # noqa: E402


class STORMTest_TinyCheckpointLoader:
    """Drop-in replacement for ``CheckpointLoaderSimple`` that builds tiny random-weight models."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "ckpt_name": ("STRING", {
                    "default": "tiny_sd15.safetensors",
                    "tooltip": "Checkpoint name; only used to pick the architecture "
                               "(\"sd3\"/\"flux\" -> SD3/Flux DiT, \"xl\" -> SDXL, \"sd2\"/\"v2\" -> SD2.x, else SD1.5), except "
                               f"{SHAPE_MODEL.name}, which loads the trained shape model.",
                }),
            }
        }

    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    RETURN_NAMES = ("MODEL", "CLIP", "VAE")
    OUTPUT_TOOLTIPS = ("Tiny UNet with the real block topology.", "Tiny text encoder with the real tokenizer.",
                       "Tiny VAE (8x down-sampling, 4 latent channels).")
    FUNCTION = "load_checkpoint"
    CATEGORY = "testing/storm"
    DESCRIPTION = ("Test-only: tiny random-weight SD1.5/SD2.x/SDXL model, text encoder and VAE, or the trained "
                   "shape model.")

    def load_checkpoint(self, ckpt_name):
        if Path(ckpt_name).name == SHAPE_MODEL.name:
            if not SHAPE_MODEL.is_file():
                raise FileNotFoundError(f"the shape model {SHAPE_MODEL} is missing (git lfs? a partial clone?)")
            tiny = load_trained(SHAPE_MODEL)
            return (tiny.model, tiny.clip, tiny.vae)
        arch = arch_from_checkpoint_name(ckpt_name)
        if arch in DIT_ARCHS:
            tiny = build_tiny_dit(arch, seed=0)
        else:
            tiny = build_tiny(arch, seed=0)
        return (tiny.model, tiny.clip, tiny.vae)


NODE_CLASS_MAPPINGS = {"STORMTest_TinyCheckpointLoader": STORMTest_TinyCheckpointLoader}
NODE_DISPLAY_NAME_MAPPINGS = {"STORMTest_TinyCheckpointLoader": "Tiny Checkpoint Loader (STORM tests)"}
