"""Test-only ComfyUI custom-node pack: a checkpoint loader that returns tiny random models.

Example workflows use the core ``CheckpointLoaderSimple``; ``harness.workflows.substitute_checkpoints``
swaps it for ``STORMTest_TinyCheckpointLoader`` (same ``ckpt_name`` input, same outputs) so the
workflows run on CPU in seconds. The architecture comes from the checkpoint name:
contains ``"sd3"`` / ``"flux"`` -> a tiny SD3 / Flux DiT (current ComfyUI only), ``"xl"`` -> SDXL,
contains ``"sd2"`` / ``"v2"`` -> SD2.x, anything else -> SD1.5. The name of
the shipped shape model (``storm_shapes_sd15.safetensors``) loads that trained model instead. Families shipped as
separate files (Qwen-Image, Z-Image, Flux.2) get ``STORMTest_TinyUNETLoader`` / ``TinyCLIPLoader`` /
``TinyVAELoader`` for the core ``UNETLoader`` / ``CLIPLoader`` / ``VAELoader``: the family from the model file's
name and the CLIP loader's ``type``.

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

import functools  # noqa: E402

from harness.tiny_dit import DIT_ARCHS, build_tiny_dit  # noqa: E402
from harness.tiny_models import (  # noqa: E402
    CLIP_LOADER_TYPES,
    SHAPE_MODEL,
    arch_from_checkpoint_name,
    arch_from_model_file,
    build_tiny,
    build_vae,
    load_trained,
)


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


@functools.lru_cache(maxsize=4)
def _tiny_dit(arch: str):
    """One tiny DiT per family per process: the model and text-encoder loaders of a workflow must give the
    model and the text encoder of the same tiny model (their widths must match)."""
    return build_tiny_dit(arch, seed=0)


class STORMTest_TinyUNETLoader:
    """Drop-in replacement for ``UNETLoader`` (families shipped as separate files: Qwen-Image, Z-Image, Flux.2)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"unet_name": ("STRING", {"default": "z_image_turbo_bf16.safetensors", "tooltip":
                                                     "Model file name; only used to pick the family (qwen_image, "
                                                     "z_image, flux2)."})}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "load_unet"
    CATEGORY = "testing/storm"
    DESCRIPTION = "Test-only: the tiny random-weight diffusion model of the family the file name names."

    def load_unet(self, unet_name):
        arch = arch_from_model_file(unet_name)
        if arch is None:
            raise ValueError(f"no tiny model for {unet_name!r}: the name must contain qwen_image, z_image or flux2")
        return (_tiny_dit(arch).model,)


class STORMTest_TinyCLIPLoader:
    """Drop-in replacement for ``CLIPLoader``: the tiny text encoder of the family its ``type`` names."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"clip_name": ("STRING", {"default": "qwen_3_4b.safetensors"}),
                             "type": ("STRING", {"default": "lumina2", "tooltip": "CLIPLoader's type: "
                                                 + ", ".join(CLIP_LOADER_TYPES)})}}

    RETURN_TYPES = ("CLIP",)
    FUNCTION = "load_clip"
    CATEGORY = "testing/storm"
    DESCRIPTION = "Test-only: the tiny text encoder (the host's tokenizer) of the family CLIPLoader's type names."

    def load_clip(self, clip_name, type):
        if type not in CLIP_LOADER_TYPES:
            raise ValueError(f"no tiny text encoder for CLIPLoader type {type!r}; known: {list(CLIP_LOADER_TYPES)}")
        return (_tiny_dit(CLIP_LOADER_TYPES[type]).clip,)


class STORMTest_TinyVAELoader:
    """Drop-in replacement for ``VAELoader``: a tiny 16-channel VAE (8x down-sampling)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"vae_name": ("STRING", {"default": "ae.safetensors"})}}

    RETURN_TYPES = ("VAE",)
    FUNCTION = "load_vae"
    CATEGORY = "testing/storm"
    DESCRIPTION = "Test-only: a tiny random-weight 16-channel VAE."

    def load_vae(self, vae_name):
        return (build_vae(0, channels=16),)


NODE_CLASS_MAPPINGS = {"STORMTest_TinyCheckpointLoader": STORMTest_TinyCheckpointLoader,
                       "STORMTest_TinyUNETLoader": STORMTest_TinyUNETLoader,
                       "STORMTest_TinyCLIPLoader": STORMTest_TinyCLIPLoader,
                       "STORMTest_TinyVAELoader": STORMTest_TinyVAELoader}
NODE_DISPLAY_NAME_MAPPINGS = {"STORMTest_TinyCheckpointLoader": "Tiny Checkpoint Loader (STORM tests)",
                              "STORMTest_TinyUNETLoader": "Tiny Diffusion Model Loader (STORM tests)",
                              "STORMTest_TinyCLIPLoader": "Tiny CLIP Loader (STORM tests)",
                              "STORMTest_TinyVAELoader": "Tiny VAE Loader (STORM tests)"}
