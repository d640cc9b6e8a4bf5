"""Tiny random-weight SD3 (MMDiT), Flux and Chroma diffusion models from the host's own classes.

The first step of DiT support (issue "Beyond the UNet"): the diffusion model side only, built by
``comfy.supported_models.SD3 / Flux`` from thin copies of the real ``unet_config`` and wrapped in a
``ModelPatcher``, as :mod:`harness.tiny_models` does for the UNets, and a real ``comfy.sd.CLIP`` with the
host's tokenizers and text-encoder classes at thin widths (through the host's ``<name>_model_config``
options): SD3 with CLIP-L and CLIP-G (T5 off: the host pads the CLIP features to 4096, so a T5 beside
them must be 4096 wide), Flux with CLIP-L (pooled only) and a thin T5 (its 256 rows are the context).

* ``sd3``: ``MMDiT`` with depth 2 (hidden 128, 2 heads of 64: the host ties both to depth), 4 joint
  blocks, no positional-embedding table (sincos computed per size), context width 4096 (the host
  pads CLIP-L+G to 4096 and appends T5 rows), pooled width 2048. Joint attention order: ``[context, x]``.
* ``flux``: ``Flux`` with hidden 64, 4 heads (``axes_dim`` 4+6+6 = 16 per head), 2 double and 2 single
  blocks, T5 width 32, CLIP-L pooled width 32, guidance embedding on. Joint attention order ``[txt, img]``.
* ``chroma``: ``Chroma`` (Flux's blocks, modulations from one approximator network) with the same widths, the
  host's ``PixArtTokenizer`` and T5 (no padding, no pooled vector). Joint attention order ``[txt, img]``.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any
from unittest import mock

import torch

from .host import ensure_host
from .tiny_models import ATTN2_QK_GAIN, DIT_ARCHS, build_vae, initialise_weights

__all__ = ["DIT_ARCHS", "FLUX2_DEV", "FLUX2_KLEIN_4B", "FLUX2_KLEIN_9B", "FLUX_DEV", "FLUX_TOY", "QWEN_IMAGE", "REAL_DITS",
           "SD35_MEDIUM", "Z_IMAGE", "FluxWidths", "RealDiT", "TinyDiT", "build_flux_blocks", "build_real_dit",
           "build_real_size_dit", "build_tiny_dit", "dit_conditioning", "flux_unet_config", "real_dit_config",
           "real_dit_parameters", "widen_conditioning"]


@dataclasses.dataclass(frozen=True)
class TinyDiT:
    """A tiny DiT ``ModelPatcher`` and the widths its conditioning must have."""

    arch: str
    model: Any
    context_dim: int
    pooled_dim: int
    clip: Any = None
    #: a tiny 16-channel ``AutoencoderKL`` (8x down-sampling), so workflows can decode
    vae: Any = None
    #: latent channels (16; Flux.2: 128)
    channels: int = 16


_SD3_DEPTH = 2
_SD3_CONFIG = {
    "in_channels": 16, "out_channels": 16, "patch_size": 2, "depth": _SD3_DEPTH, "num_blocks": 4,
    "input_size": None, "adm_in_channels": 2048,
    "context_embedder_config": {"target": "torch.nn.Linear",
                                "params": {"in_features": 4096, "out_features": 64 * _SD3_DEPTH}},
    "pos_embed_scaling_factor": None, "num_patches": None, "pos_embed_max_size": None,
    "x_block_self_attn_layers": [], "qk_norm": None,
}
#: SD3.5 Medium's MMDiT-X as the host's ``model_detection`` reads it off the released checkpoint: 24 joint
#: blocks of width 1536 (24 heads of 64), image-only self-attention in blocks 0-12, RMS-normed q/k and a
#: 384 x 384 positional-embedding table (2.5 B parameters); for real-size benchmarks (random weights)
SD35_MEDIUM = {
    "in_channels": 16, "out_channels": 16, "patch_size": 2, "depth": 24, "input_size": None,
    "adm_in_channels": 2048,
    "context_embedder_config": {"target": "torch.nn.Linear", "params": {"in_features": 4096, "out_features": 1536}},
    "num_patches": 384 * 384, "pos_embed_max_size": 384, "pos_embed_scaling_factor": None,
    "x_block_self_attn_layers": list(range(13)), "qk_norm": "rms", "num_blocks": 24,
}
_FLUX_T5_WIDTH = 32
_FLUX_CONFIG = {
    "image_model": "flux", "in_channels": 16, "out_channels": 16, "patch_size": 2,
    "vec_in_dim": 32, "context_in_dim": _FLUX_T5_WIDTH, "hidden_size": 64, "num_heads": 4,
    "axes_dim": [4, 6, 6], "theta": 10000, "mlp_ratio": 4.0, "depth": 2, "depth_single_blocks": 2,
    "qkv_bias": True, "guidance_embed": True,
}
#: Chroma: Flux's double/single blocks without per-block modulation (one approximator network gives them all),
#: latent patches already folded into the input channels (16 x 2 x 2 = 64), T5 rows alone, no pooled vector
_CHROMA_CONFIG = {
    "image_model": "chroma", "in_channels": 64, "out_channels": 64, "context_in_dim": _FLUX_T5_WIDTH,
    "hidden_size": 64, "mlp_ratio": 4.0, "num_heads": 4, "depth": 2, "depth_single_blocks": 2,
    "axes_dim": [4, 6, 6], "theta": 10000, "patch_size": 2, "qkv_bias": True, "in_dim": 64, "out_dim": 64,
    "hidden_dim": 32, "n_layers": 1,
}
#: Qwen-Image: dual-stream blocks only (joint attention over [text, image] rows, no single-stream blocks), the
#: host's Qwen2.5-VL text encoder at a thin width (its template rows dropped by the host), 16-channel latent
_QWEN_TE_WIDTH = 16
_QWEN_CONFIG = {
    "image_model": "qwen_image", "in_channels": 64, "out_channels": 16, "num_layers": 2, "attention_head_dim": 32,
    "num_attention_heads": 2, "joint_attention_dim": _QWEN_TE_WIDTH, "axes_dims_rope": (8, 12, 12), "patch_size": 2,
}
#: Z-Image (the host's ZImage, a Lumina 2 NextDiT): a text-only and an image-only refiner block, then single-stream
#: blocks over [text, image], each padded to a multiple of 32 rows with learned pad rows; the host's Qwen3 4B text
#: encoder at a thin width (the second-to-last layer, the whole chat template kept). The width must be at least 256
#: (Z-Image's modulation takes a 256-wide time embedding); 8 heads of 32 = 8 + 12 + 12 RoPE channels
_ZIMAGE_TE_WIDTH = 16
_ZIMAGE_CONFIG = {
    "image_model": "lumina2", "patch_size": 2, "in_channels": 16, "dim": 256, "cap_feat_dim": _ZIMAGE_TE_WIDTH,
    "n_layers": 2, "n_refiner_layers": 1, "n_heads": 8, "n_kv_heads": 8, "qk_norm": True, "axes_dims": [8, 12, 12],
    "axes_lens": [1536, 512, 512], "rope_theta": 256.0, "ffn_dim_multiplier": 8.0 / 3.0, "z_image_modulation": True,
    "time_scale": 1000.0, "pad_tokens_multiple": 32,
}
#: Flux.2 (klein): Flux's double/single blocks with shared modulation, a 128-channel latent of 16 px per latent pixel
#: in patches of 1, and the host's klein text encoder (Qwen3 4B, three layers stacked: 3 x the width) at a thin width
_KLEIN_TE_WIDTH = 16
_FLUX2_CONFIG = {
    "image_model": "flux2", "in_channels": 128, "out_channels": 128, "vec_in_dim": None,
    "context_in_dim": 3 * _KLEIN_TE_WIDTH, "hidden_size": 64, "mlp_ratio": 3.0, "num_heads": 2, "depth": 2,
    "depth_single_blocks": 2, "axes_dim": [8, 8, 8, 8], "theta": 2000, "patch_size": 1, "qkv_bias": False,
    "guidance_embed": False, "txt_ids_dims": [3], "global_modulation": True, "mlp_silu_act": True, "ops_bias": False,
    "default_ref_method": "index", "ref_index_scale": 10.0,
}
#: Krea 2 (the host's Krea2, a single-stream DiT): a text-fusion adapter (two layer-wise and two refiner blocks) over the
#: 12 layers the host's Qwen3-VL 4B encoder taps (hidden states 2, 5, ..., 35: so at least 36 layers), flattened into
#: one conditioning row of 12 x the width; then single-stream blocks over [text, image] rows; a Wan 2.1 latent (16
#: channels, 8 px). 2 heads of 32 (grouped: 1 key/value head) = 8 + 12 + 12 RoPE channels
_KREA2_TE_WIDTH = 16
_KREA2_CONFIG = {
    "image_model": "krea2", "features": 64, "heads": 2, "kvheads": 1, "layers": 2, "patch": 2, "channels": 16,
    "txtdim": _KREA2_TE_WIDTH, "txtlayers": 12, "txtheads": 2, "txtkvheads": 2, "multiplier": 4,
}
_SPECS = {"sd3": ("SD3", _SD3_CONFIG, 4096, 2048), "flux": ("Flux", _FLUX_CONFIG, _FLUX_T5_WIDTH, 32),
          "chroma": ("Chroma", _CHROMA_CONFIG, _FLUX_T5_WIDTH, 0),
          "qwen_image": ("QwenImage", _QWEN_CONFIG, _QWEN_TE_WIDTH, 0),
          "z_image": ("ZImage", _ZIMAGE_CONFIG, _ZIMAGE_TE_WIDTH, 0),
          "flux2": ("Flux2", _FLUX2_CONFIG, 3 * _KLEIN_TE_WIDTH, 0),
          "krea2": ("Krea2", _KREA2_CONFIG, 12 * _KREA2_TE_WIDTH, 0)}
#: latent channels of the families whose latent is not 16 channels
_CHANNELS = {"flux2": 128}


def _clip_config(hidden: int, heads: int) -> dict[str, Any]:
    return {"hidden_size": hidden, "intermediate_size": 4 * hidden, "num_attention_heads": heads,
            "num_hidden_layers": 3, "projection_dim": hidden}


#: thin text encoders by the host's model names; SD3's pooled width = L 1024 + G 1024 = the UNet's 2048
_TEXT = {
    "sd3": {"clip_l_model_config": _clip_config(1024, 4), "clip_g_model_config": _clip_config(1024, 4)},
    "flux": {"clip_l_model_config": _clip_config(32, 2),
             "t5xxl_model_config": {"d_model": _FLUX_T5_WIDTH, "num_layers": 2, "num_heads": 2, "d_kv": 16,
                                    "d_ff": 64}},
    "chroma": {"t5xxl_model_config": {"d_model": _FLUX_T5_WIDTH, "num_layers": 2, "num_heads": 2, "d_kv": 16,
                                      "d_ff": 64}},
    "qwen_image": {"qwen25_7b_model_config": {"hidden_size": _QWEN_TE_WIDTH, "intermediate_size": 32,
                                              "num_hidden_layers": 2, "num_attention_heads": 2,
                                              "num_key_value_heads": 1}},
    # the host reads the second-to-last layer (so at least 3 layers)
    "z_image": {"qwen3_4b_model_config": {"hidden_size": _ZIMAGE_TE_WIDTH, "intermediate_size": 32,
                                          "num_hidden_layers": 3, "num_attention_heads": 2, "num_key_value_heads": 1}},
    # klein stacks layers 9, 18 and 27 (so at least 28 layers)
    "flux2": {"qwen3_4b_model_config": {"hidden_size": _KLEIN_TE_WIDTH, "intermediate_size": 32,
                                        "num_hidden_layers": 28, "num_attention_heads": 2, "num_key_value_heads": 1}},
    # Krea 2 taps hidden states 2, 5, ..., 35 of Qwen3-VL 4B (so at least 36 layers)
    "krea2": {"qwen3vl_4b_model_config": {"hidden_size": _KREA2_TE_WIDTH, "intermediate_size": 32,
                                          "num_hidden_layers": 36, "num_attention_heads": 2, "num_key_value_heads": 1}},
}


def _build_clip(arch: str, seed: int) -> Any:
    import comfy.sd
    import comfy.supported_models_base
    from comfy.text_encoders import flux, pixart_t5, sd3_clip

    if arch == "sd3":
        target = comfy.supported_models_base.ClipTarget(sd3_clip.SD3Tokenizer, sd3_clip.sd3_clip(t5=False))
    elif arch == "chroma":
        target = comfy.supported_models_base.ClipTarget(pixart_t5.PixArtTokenizer, pixart_t5.pixart_te())
    elif arch == "qwen_image":
        from comfy.text_encoders import qwen_image

        target = comfy.supported_models_base.ClipTarget(qwen_image.QwenImageTokenizer, qwen_image.te())
    elif arch == "krea2":
        from comfy.text_encoders import krea2  # not in ComfyUI 0.3.64

        target = comfy.supported_models_base.ClipTarget(krea2.Krea2Tokenizer, krea2.te())
    elif arch == "z_image":
        from comfy.text_encoders import z_image  # not in ComfyUI 0.3.64

        target = comfy.supported_models_base.ClipTarget(z_image.ZImageTokenizer, z_image.te())
    elif arch == "flux2":
        target = comfy.supported_models_base.ClipTarget(flux.KleinTokenizer, flux.klein_te())
    else:
        target = comfy.supported_models_base.ClipTarget(flux.FluxTokenizer, flux.flux_clip())
    with _thin_vision_tower(arch):
        clip = comfy.sd.CLIP(target=target, model_options=dict(_TEXT[arch]))
    initialise_weights(clip.cond_stage_model, seed + 1, keep=("logit_scale",))
    return clip


@contextlib.contextmanager
def _thin_vision_tower(arch: str):
    """While open, the vision tower the host always builds beside a vision-language text encoder is thin: Qwen-Image's
    Qwen2.5-VL (658 M parameters) and Krea 2's Qwen3-VL 4B (24 blocks of 1024). Image prompts are not used here; for
    the other families nothing changes."""
    with contextlib.ExitStack() as stack:
        if arch == "qwen_image":
            from comfy.text_encoders import qwen_vl

            real = qwen_vl.Qwen2VLVisionTransformer

            def thin_vision(*args, device=None, dtype=None, ops=None, **kwargs):
                return real(hidden_size=16, output_hidden_size=_QWEN_TE_WIDTH, intermediate_size=32, num_heads=2,
                            num_layers=1, device=device, dtype=dtype, ops=ops)

            stack.enter_context(mock.patch.object(qwen_vl, "Qwen2VLVisionTransformer", thin_vision))
        elif arch == "krea2":
            from comfy.text_encoders import qwen3vl

            stack.enter_context(mock.patch.dict(qwen3vl.QWEN3VL_VISION, {"qwen3vl_4b": {
                "hidden_size": 16, "intermediate_size": 32, "depth": 1, "deepstack_visual_indexes": [0]}}))
            stack.enter_context(mock.patch.dict(qwen3vl.QWEN3VL_VISION_COMMON, num_heads=2, num_position_embeddings=64))
        yield


def build_tiny_dit(arch: str, *, seed: int = 0, dtype: torch.dtype = torch.float32,
                   config: dict[str, Any] | None = None) -> TinyDiT:
    """The tiny ``arch`` (``"sd3"`` or ``"flux"``) diffusion model, weights initialised from ``seed``;
    ``config`` overrides entries of its ``unet_config`` (e.g. SD3.5-Medium's ``x_block_self_attn_layers``).

    The joint-attention query/key projections are scaled by :data:`ATTN2_QK_GAIN` (SD3: the first two
    thirds of each ``qkv`` weight; Flux: its q/k RMS-norm scales, since Flux normalises q and k) so the
    image-to-text attention has contrast, as in :mod:`harness.tiny_models`.
    """
    if arch not in _SPECS:
        raise ValueError(f"unknown tiny DiT {arch!r}; expected one of {DIT_ARCHS}")
    ensure_host()
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models

    name, unet_config, context_dim, pooled_dim = _SPECS[arch]
    load_device = mm.get_torch_device()
    offload_device = mm.unet_offload_device()
    with torch.no_grad():
        model_config = getattr(comfy.supported_models, name)({**unet_config, **_host_fields(arch), **(config or {})})
        manual_cast = mm.unet_manual_cast(dtype, load_device, model_config.supported_inference_dtypes)
        model_config.set_inference_dtype(dtype, manual_cast)
        model = model_config.get_model({}, "", device=offload_device)
        initialise_weights(model.diffusion_model, seed)
        _sharpen_joint_attention(model.diffusion_model, arch, ATTN2_QK_GAIN)
        clip = _build_clip(arch, seed)
        channels = _CHANNELS.get(arch, 16)
        vae = build_vae(seed, channels=16) if channels == 16 else None  # no tiny Flux.2 VAE (16 px per latent)
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=offload_device)
    return TinyDiT(arch, patcher, context_dim, pooled_dim, clip, vae, channels)


def build_real_size_dit(*, seed: int = 0, dtype: torch.dtype = torch.float32) -> TinyDiT:
    """A random-weight SD3.5 Medium (:data:`SD35_MEDIUM`) with the tiny SD3's thin text encoders: its
    conditioning has the real widths (context 4096, pooled 2048) and 77 CLIP rows (the real model adds 77 T5
    rows: at 1024 px that is 4,250 instead of 4,173 tokens per joint attention). About 9.4 GB in fp32."""
    return build_tiny_dit("sd3", seed=seed, dtype=dtype, config=SD35_MEDIUM)


@dataclasses.dataclass(frozen=True)
class FluxWidths:
    """The widths of a Flux file that the host's model detection reads: the stream width ``hidden`` (heads of
    ``sum(axes_dim)`` = 128 channels), the T5 context width and the CLIP-L pooled width; and the numbers of
    double- and single-stream blocks of the whole model (a measurement builds fewer)."""

    hidden: int
    context: int
    pooled: int
    double: int
    single: int


#: Flux.1-dev (Black Forest Labs 2024) as ComfyUI reads the released file: hidden 3072 (24 heads of 128), T5-XXL
#: context 4096, CLIP-L pooled 768, guidance embedding, 19 double- and 38 single-stream blocks (11.9 B parameters)
FLUX_DEV = FluxWidths(hidden=3072, context=4096, pooled=768, double=19, single=38)
#: the same layout at thin widths (one head of 128), for dry runs on a CPU
FLUX_TOY = FluxWidths(hidden=128, context=32, pooled=32, double=19, single=38)


def flux_unet_config(widths: FluxWidths, double: int, single: int) -> tuple[dict[str, Any], Any]:
    """``(unet_config, model_config)`` of a Flux file with these widths and ``double`` / ``single`` blocks, as the
    host's own ``comfy.model_detection`` reads them (each ComfyUI version adds the entries its ``Flux`` class
    needs, e.g. 0.33's ``txt_ids_dims``; the widths are then set as given, since 0.3.64 assumes Flux.1's). The file
    is described by meta tensors: only the keys and shapes detection reads, no memory."""
    ensure_host()
    import comfy.model_detection

    def meta(*shape: int) -> torch.Tensor:
        return torch.empty(shape, device="meta")

    h, head = widths.hidden, 128
    sd = {"img_in.weight": meta(h, 64), "txt_in.weight": meta(h, widths.context),
          "vector_in.in_layer.weight": meta(h, widths.pooled), "guidance_in.in_layer.weight": meta(h, 256)}
    for i in range(double):
        sd[f"double_blocks.{i}.img_attn.norm.key_norm.scale"] = meta(head)
        sd[f"double_blocks.{i}.img_attn.qkv.weight"] = meta(3 * h, h)
    for i in range(single):
        sd[f"single_blocks.{i}.linear1.weight"] = meta(7 * h, h)
    unet_config = comfy.model_detection.detect_unet_config(sd, "")
    if unet_config is None or unet_config.get("image_model") != "flux":
        raise RuntimeError(f"this ComfyUI's model detection does not read a Flux file: {unet_config}")
    # older hosts (0.3.64) take the stream and context widths as Flux.1's instead of reading them: say them
    unet_config.update(hidden_size=h, context_in_dim=widths.context, vec_in_dim=widths.pooled, num_heads=h // head)
    model_config = comfy.model_detection.model_config_from_unet_config(unet_config, sd)
    if model_config is None:
        raise RuntimeError(f"this ComfyUI has no model class for {unet_config}")
    return unet_config, model_config


def build_flux_blocks(widths: FluxWidths, double: int, single: int, *, seed: int = 0,
                      dtype: torch.dtype = torch.bfloat16) -> TinyDiT:
    """A random-weight Flux of ``widths`` with only ``double`` double- and ``single`` single-stream blocks, from the
    host's own classes (:func:`flux_unet_config`), and thin text encoders of the real output widths (CLIP-L pooled
    ``widths.pooled``, T5 ``widths.context`` wide, 2 layers), so that a few real-size blocks can be timed and
    measured and the whole model's figures extrapolated per block. Weights are not sharpened (costs only)."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.sd
    import comfy.supported_models_base
    from comfy.text_encoders import flux

    _, model_config = flux_unet_config(widths, double, single)
    load_device = mm.get_torch_device()
    offload_device = mm.unet_offload_device()
    with torch.no_grad():
        manual_cast = mm.unet_manual_cast(dtype, load_device, model_config.supported_inference_dtypes)
        model_config.set_inference_dtype(dtype, manual_cast)
        model = model_config.get_model({}, "", device=offload_device)
        initialise_weights(model.diffusion_model, seed)
        options = {"clip_l_model_config": _clip_config(widths.pooled, max(widths.pooled // 64, 2)),
                   "t5xxl_model_config": {"d_model": widths.context, "num_layers": 2, "num_heads": 2, "d_kv": 16,
                                          "d_ff": 64}}
        clip = comfy.sd.CLIP(target=comfy.supported_models_base.ClipTarget(flux.FluxTokenizer, flux.flux_clip()),
                             model_options=options)
        initialise_weights(clip.cond_stage_model, seed + 1, keep=("logit_scale",))
        vae = build_vae(seed, channels=16)
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=offload_device)
    return TinyDiT("flux", patcher, widths.context, widths.pooled, clip, vae)


def _sharpen_joint_attention(net: torch.nn.Module, arch: str, gain: float) -> None:
    for name, sub in net.named_modules():
        if arch == "sd3" and name.endswith(".attn") and hasattr(sub, "qkv"):
            rows = sub.qkv.weight.shape[0] // 3
            sub.qkv.weight[: 2 * rows].mul_(gain)
        elif arch in ("flux", "flux2", "chroma") and hasattr(sub, "query_norm") and hasattr(sub, "key_norm"):
            _norm_weight(sub.query_norm).mul_(gain)
            _norm_weight(sub.key_norm).mul_(gain)
        elif arch == "z_image" and hasattr(sub, "q_norm") and hasattr(sub, "k_norm"):
            _norm_weight(sub.q_norm).mul_(gain)
            _norm_weight(sub.k_norm).mul_(gain)


def _norm_weight(norm: torch.nn.Module) -> torch.Tensor:
    """An RMS norm's gain: ``scale`` in Flux's own RMSNorm (0.3.64), ``weight`` in the host's shared
    ``operations.RMSNorm`` (0.33 and later)."""
    weight = getattr(norm, "scale", None)
    return norm.weight if weight is None else weight


def _host_fields(arch: str) -> dict[str, Any]:
    """``unet_config`` entries a newer host requires, where its parameter class has them:
    ``txt_ids_dims`` (Flux and Chroma, 0.33 and later; the host's ``model_detection`` sets ``[]`` for both) and
    Chroma's ``vec_in_dim`` (``None``: no pooled vector)."""
    if arch == "flux":
        from comfy.ldm.flux.model import FluxParams as params
    elif arch == "chroma":
        from comfy.ldm.chroma.model import ChromaParams as params
    else:
        return {}
    fields = {f.name for f in dataclasses.fields(params)}
    wanted = (("txt_ids_dims", []),) + ((("vec_in_dim", None),) if arch == "chroma" else ())
    return {k: v for k, v in wanted if k in fields}


def dit_conditioning(tiny: TinyDiT, tokens: int, *, seed: int = 0) -> list:
    """A CONDITIONING of ``tokens`` random context rows of the model's width and a random pooled vector
    (what a text encoder would give; Flux also gets the host's default guidance 3.5)."""
    gen = torch.Generator().manual_seed(seed)
    cond = torch.randn(1, tokens, tiny.context_dim, generator=gen)
    # no pooled vector (Chroma): None, as the host's text encoder gives it
    extra: dict[str, Any] = {"pooled_output": torch.randn(1, tiny.pooled_dim, generator=gen) if tiny.pooled_dim else None}
    if tiny.arch == "flux":
        extra["guidance"] = 3.5
    return [[cond, extra]]


@dataclasses.dataclass(frozen=True)
class RealDiT:
    """A released DiT's size: its family (``arch``, a :data:`DIT_ARCHS` name), stream width, text-encoder width, the
    numbers of blocks of each kind of the whole model (Flux.2: double, single; others: one kind), and where the
    numbers come from. A measurement builds a few blocks of it (:func:`build_real_dit`)."""

    arch: str
    name: str
    hidden: int
    context: int
    blocks: tuple[int, ...]
    source: str


#: Qwen-Image (Qwen 2025): the host's model detection reads only the latent channels and the block count off the file;
#: the widths are the defaults of the host's ``QwenImageTransformer2DModel`` (24 heads of 128, Qwen2.5-VL 7B's 3584)
QWEN_IMAGE = RealDiT("qwen_image", "Qwen-Image", 3072, 3584, (60,),
                     "60 blocks: the released file; widths: the host's QwenImageTransformer2DModel defaults")
#: Z-Image (Tongyi-MAI 2025): the host's model detection reads dim 3840 and the Qwen3 4B width 2560 off
#: ``cap_embedder.1.weight`` and sets 30 heads, 2 + 2 refiner blocks (the NextDiT default) and padding to 32 rows
Z_IMAGE = RealDiT("z_image", "Z-Image", 3840, 2560, (30,),
                  "30 layers: the released file; heads, refiners, padding: the host's model_detection for dim 3840")
#: Flux.2 dev (Black Forest Labs 2025): the host reads the widths off ``img_in`` / ``txt_in`` and counts the blocks;
#: the sizes of the released file are those of the reference implementation's defaults (diffusers'
#: ``Flux2Transformer2DModel``: 8 double, 48 single blocks, 48 heads of 128, Mistral 3 Small's 3 x 5120 = 15360)
FLUX2_DEV = RealDiT("flux2", "Flux.2 dev", 6144, 15360, (8, 48),
                    "diffusers' Flux2Transformer2DModel defaults (the host reads them off the file)")
#: Flux.2 klein 4B and 9B: the text-encoder widths are the host's (Qwen3 4B / 8B, three layers stacked: 3 x 2560,
#: 3 x 4096); the stream widths and block counts are assumed from the released models' configurations (not in the
#: host's code)
FLUX2_KLEIN_4B = RealDiT("flux2", "Flux.2 klein 4B", 3072, 7680, (5, 20),
                         "assumed: 5 double + 20 single blocks, 24 heads (the released klein 4B configuration)")
FLUX2_KLEIN_9B = RealDiT("flux2", "Flux.2 klein 9B", 4096, 12288, (8, 24),
                         "assumed: 8 double + 24 single blocks, 32 heads (the released klein 9B configuration)")
#: Krea 2 (Krea 2026): the host's model detection reads the stream width, the block count and the heads off the file;
#: the sizes are the defaults of the host's ``SingleStreamDiT`` (48 heads and 12 key/value heads of 128, 28 blocks, a
#: text-fusion adapter over 12 layers of Qwen3-VL 4B's 2560: 12 x 2560 = 30720 features per conditioning row)
KREA2 = RealDiT("krea2", "Krea 2", 6144, 12 * 2560, (28,),
                "the host's SingleStreamDiT defaults (the host reads the released file's sizes off it)")
#: by benchmark name
REAL_DITS = {"qwen_image": QWEN_IMAGE, "z_image": Z_IMAGE, "flux2": FLUX2_DEV, "flux2_klein4b": FLUX2_KLEIN_4B,
             "flux2_klein9b": FLUX2_KLEIN_9B, "krea2": KREA2}


def real_dit_config(spec: RealDiT, blocks: tuple[int, ...]) -> Any:
    """The host's ``model_config`` of a file of ``spec``'s widths with ``blocks`` blocks (of each kind), from the
    host's own ``comfy.model_detection`` on meta tensors (the keys and shapes it reads, no memory)."""
    ensure_host()
    import comfy.model_detection

    def meta(*shape: int) -> torch.Tensor:
        return torch.empty(shape, device="meta")

    h = spec.hidden
    if spec.arch == "qwen_image":
        sd = {"txt_norm.weight": meta(spec.context), "img_in.weight": meta(h, 64)}
        sd.update({f"transformer_blocks.{i}.attn.to_q.weight": meta(h, h) for i in range(blocks[0])})
    elif spec.arch == "z_image":
        sd = {"cap_embedder.1.weight": meta(h, spec.context), "noise_refiner.0.attention.k_norm.weight": meta(128),
              "cap_pad_token": meta(1, h), "x_pad_token": meta(1, h)}
        sd.update({f"layers.{i}.ffn_norm1.weight": meta(h) for i in range(blocks[0])})
    elif spec.arch == "flux2":
        sd = {"img_in.weight": meta(h, 128), "txt_in.weight": meta(h, spec.context),
              "double_stream_modulation_img.lin.weight": meta(6 * h, h),
              **({"guidance_in.in_layer.weight": meta(h, 256)} if spec is FLUX2_DEV else {})}
        sd.update({f"double_blocks.{i}.img_attn.norm.key_norm.scale": meta(128) for i in range(blocks[0])})
        sd.update({f"single_blocks.{i}.linear1.weight": meta(h, h) for i in range(blocks[1])})
    elif spec.arch == "krea2":
        layers, width = 12, spec.context // 12
        sd = {"txtfusion.projector.weight": meta(1, layers), "first.weight": meta(h, 64),
              "txtfusion.layerwise_blocks.0.prenorm.scale": meta(width), "blocks.0.attn.wk.weight": meta(12 * 128, h)}
        sd.update({f"blocks.{i}.attn.wq.weight": meta(h, h) for i in range(blocks[0])})
    else:
        raise ValueError(f"no real-size configuration for {spec.arch!r}")
    unet_config = comfy.model_detection.detect_unet_config(sd, "")
    expected = {"qwen_image": "qwen_image", "z_image": "lumina2", "flux2": "flux2", "krea2": "krea2"}[spec.arch]
    if unet_config is None or unet_config.get("image_model") != expected:
        raise RuntimeError(f"this ComfyUI's model detection does not read a {spec.name} file: {unet_config}")
    model_config = comfy.model_detection.model_config_from_unet_config(unet_config, sd)
    if model_config is None:
        raise RuntimeError(f"this ComfyUI has no model class for {unet_config}")
    return model_config


def real_dit_parameters(spec: RealDiT) -> int:
    """Parameters of the whole diffusion model of ``spec`` (built on the meta device: no memory)."""
    model_config = real_dit_config(spec, spec.blocks)
    model_config.set_inference_dtype(torch.bfloat16, None)
    model = model_config.get_model({}, "", device=torch.device("meta"))
    return sum(p.numel() for p in model.diffusion_model.parameters())


#: the module lists of each family's repeated blocks, in :attr:`RealDiT.blocks` order
_REPEATED = {"qwen_image": ("transformer_blocks",), "z_image": ("layers",), "flux2": ("double_blocks", "single_blocks"),
             "krea2": ("blocks",)}


def build_real_dit(spec: RealDiT, blocks: tuple[int, ...], *, seed: int = 0, dtype: torch.dtype = torch.bfloat16,
                   compute_dtype: torch.dtype | None = torch.float32) -> TinyDiT:
    """A random-weight ``spec`` with only ``blocks`` blocks (of each kind), from the host's classes
    (:func:`real_dit_config`), and the family's thin text encoder (its conditioning is widened to the real width by
    :func:`widen_conditioning`). The blocks of one kind share one set of weights (the same module repeated: blocks
    are identical in shape, and activations do not depend on the weights' values), so a few real-size blocks fit a
    CPU's memory; weights are kept in ``dtype`` and computed in ``compute_dtype`` (the host's manual cast, recast in
    backward by the gradient pass). The ``TinyDiT``'s ``context_dim`` is the real text width."""
    import comfy.model_management as mm
    import comfy.model_patcher

    model_config = real_dit_config(spec, blocks)
    load_device = mm.get_torch_device()
    offload_device = mm.unet_offload_device()
    with torch.no_grad():
        model_config.set_inference_dtype(dtype, compute_dtype)
        model = model_config.get_model({}, "", device=offload_device)
        for name in _REPEATED[spec.arch]:
            repeated = getattr(model.diffusion_model, name)
            for i in range(1, len(repeated)):
                repeated[i] = repeated[0]
        initialise_weights(model.diffusion_model, seed)
        clip = _build_clip(spec.arch, seed)
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=offload_device)
    return TinyDiT(spec.arch, patcher, spec.context, 0, clip, None, _CHANNELS.get(spec.arch, 16))


def widen_conditioning(conditioning: list, width: int, *, seed: int = 0) -> list:
    """``conditioning`` of a thin text encoder mapped to ``width`` features per row by a fixed random projection (the
    same rows, a real encoder's width: what a real-size DiT's text stream costs)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for cond, extra in conditioning:
        projection = torch.randn(cond.shape[-1], width, generator=gen) / cond.shape[-1] ** 0.5
        out.append([cond.float() @ projection, dict(extra)])
    return out
