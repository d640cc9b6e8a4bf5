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

from harness.image_adapter import TEST_IMAGES  # noqa: E402
from harness.tiny_dit import DIT_ARCHS, build_tiny_dit  # noqa: E402
from harness.tiny_models import (  # noqa: E402
    CLIP_LOADER_TYPES,
    SEPARATE_FILE_ARCHS,
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
            _remember_text_encoder(tiny.model, tiny.clip)
            return (tiny.model, tiny.clip, tiny.vae)
        arch = arch_from_checkpoint_name(ckpt_name)
        if arch in DIT_ARCHS:
            tiny = build_tiny_dit(arch, seed=0)
        else:
            tiny = build_tiny(arch, seed=0)
        _remember_text_encoder(tiny.model, tiny.clip)
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
                                                     "Model file name; only used to pick the family (" +
                                                     ", ".join(SEPARATE_FILE_ARCHS) + ")."})}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "load_unet"
    CATEGORY = "testing/storm"
    DESCRIPTION = "Test-only: the tiny random-weight diffusion model of the family the file name names."

    def load_unet(self, unet_name):
        arch = arch_from_model_file(unet_name)
        if arch is None:
            raise ValueError(f"no tiny model for {unet_name!r}: the name must contain one of {list(SEPARATE_FILE_ARCHS)}")
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


TEST_IMAGE_SIZE = 128
#: every tiny model's base model (id) -> (it, its text encoder): the IPAdapter stand-in's "image encoder" needs it
_TEXT_ENCODERS: dict[int, tuple] = {}


def _remember_text_encoder(model, clip) -> None:
    _TEXT_ENCODERS[id(model.model)] = (model.model, clip)


class STORMTest_LoadImage:
    """Drop-in replacement for the core ``LoadImage``: draws the shape scene :data:`TEST_IMAGES` names for the file
    (the tests have no input folder of the user's pictures)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("STRING", {"default": "cat.png", "tooltip": "One of: " + ", ".join(TEST_IMAGES)})}}

    RETURN_TYPES = ("IMAGE", "MASK")
    FUNCTION = "load_image"
    CATEGORY = "testing/storm"
    DESCRIPTION = "Test-only: the shape picture (128 px) named by the example workflow's image file."

    def load_image(self, image):
        import numpy as np
        import torch

        from harness.shape_world import parse_caption, render, scene_from_spec

        if image not in TEST_IMAGES:
            raise ValueError(f"no test picture for {image!r}; known: {list(TEST_IMAGES)}")
        scene = scene_from_spec(parse_caption(TEST_IMAGES[image]), np.random.default_rng(0), size=TEST_IMAGE_SIZE)
        pixels = torch.from_numpy(render(scene)).float().div(255.0)[None]
        return (pixels, torch.zeros(1, TEST_IMAGE_SIZE, TEST_IMAGE_SIZE))


#: the inputs of the IP-Adapter pack's (ComfyUI_IPAdapter_plus) IPAdapterUnifiedLoader and IPAdapter nodes, in the
#: pack's order (the example workflow's widgets_values are positional): only the interface, read from the pack
IPADAPTER_PRESETS = ["LIGHT - SD1.5 only (low strength)", "STANDARD (medium strength)", "VIT-G (medium strength)",
                     "PLUS (high strength)", "PLUS FACE (portraits)", "FULL FACE - SD1.5 only (portraits stronger)"]
IPADAPTER_WEIGHT_TYPES = ["standard", "prompt is more important", "style transfer"]


class STORMTest_IPAdapterUnifiedLoader:
    """Stand-in for the IP-Adapter pack's ``IPAdapterUnifiedLoader`` (same inputs and outputs): loads nothing; its
    IPADAPTER is a marker that ``STORMTest_IPAdapter`` reads."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "preset": (IPADAPTER_PRESETS,)},
                "optional": {"ipadapter": ("IPADAPTER",)}}

    RETURN_TYPES = ("MODEL", "IPADAPTER")
    RETURN_NAMES = ("model", "ipadapter")
    FUNCTION = "load_models"
    CATEGORY = "testing/storm"
    DESCRIPTION = "Test-only stand-in for IPAdapterUnifiedLoader: the model unchanged and a marker adapter."

    def load_models(self, model, preset, ipadapter=None):
        return (model, {"storm_test_adapter": preset})


class STORMTest_IPAdapter:
    """Stand-in for the IP-Adapter pack's ``IPAdapter`` node (same inputs and outputs): patches every ``attn2`` of the
    model with the test adapter ``harness.image_adapter.CaptionImageAdapter`` (attention to the picture's keys/values
    added to the layer's output, scaled by ``weight``), as the pack patches it with the trained adapter. Its "image
    encoder" is the shape evaluator's caption of the picture, encoded by the tiny model's own text encoder."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "ipadapter": ("IPADAPTER",), "image": ("IMAGE",),
                             "weight": ("FLOAT", {"default": 1.0, "min": -1, "max": 3, "step": 0.05}),
                             "start_at": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001}),
                             "end_at": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.001}),
                             "weight_type": (IPADAPTER_WEIGHT_TYPES,)},
                "optional": {"attn_mask": ("MASK",)}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "apply_ipadapter"
    CATEGORY = "testing/storm"
    DESCRIPTION = "Test-only stand-in for IPAdapter: the test image adapter on every cross-attention."

    def apply_ipadapter(self, model, ipadapter, image, weight, start_at, end_at, weight_type, attn_mask=None):
        from harness.image_adapter import apply_caption_adapter

        if "storm_test_adapter" not in ipadapter:
            raise ValueError("connect STORMTest_IPAdapterUnifiedLoader's ipadapter")
        if (start_at, end_at, weight_type, attn_mask) != (0.0, 1.0, "standard", None):
            raise ValueError("the test adapter applies at every step, with weight_type 'standard' and no mask")
        base, clip = _TEXT_ENCODERS.get(id(model.model), (None, None))
        if base is not model.model:
            raise ValueError("the IPAdapter stand-in needs a model from STORMTest_TinyCheckpointLoader")
        return (apply_caption_adapter(model, clip, image, weight),)


NODE_CLASS_MAPPINGS = {"STORMTest_TinyCheckpointLoader": STORMTest_TinyCheckpointLoader,
                       "STORMTest_TinyUNETLoader": STORMTest_TinyUNETLoader,
                       "STORMTest_TinyCLIPLoader": STORMTest_TinyCLIPLoader,
                       "STORMTest_TinyVAELoader": STORMTest_TinyVAELoader,
                       "STORMTest_LoadImage": STORMTest_LoadImage,
                       "STORMTest_IPAdapterUnifiedLoader": STORMTest_IPAdapterUnifiedLoader,
                       "STORMTest_IPAdapter": STORMTest_IPAdapter}
NODE_DISPLAY_NAME_MAPPINGS = {"STORMTest_TinyCheckpointLoader": "Tiny Checkpoint Loader (STORM tests)",
                              "STORMTest_TinyUNETLoader": "Tiny Diffusion Model Loader (STORM tests)",
                              "STORMTest_TinyCLIPLoader": "Tiny CLIP Loader (STORM tests)",
                              "STORMTest_TinyVAELoader": "Tiny VAE Loader (STORM tests)",
                              "STORMTest_LoadImage": "Shape Picture Loader (STORM tests)",
                              "STORMTest_IPAdapterUnifiedLoader": "IPAdapter Unified Loader stand-in (STORM tests)",
                              "STORMTest_IPAdapter": "IPAdapter stand-in (STORM tests)"}
