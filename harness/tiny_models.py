"""Tiny random-weight SD1.5 / SD2.x / SDXL models built from the host's own classes.

Every object is the host's real type, only thinner: the UNet is ``comfy.model_base.BaseModel`` /
``SDXL`` built by ``comfy.supported_models.SD15 / SD20 / SDXL`` from a scaled-down copy of the real
``unet_config`` (same blocks, same transformer depths, same attention keys), wrapped in a
``comfy.model_patcher.ModelPatcher``; the text encoder is a real ``comfy.sd.CLIP`` whose tokenizer is
the host's tokenizer class with the real CLIP vocabulary and whose encoders are the host's
``SDClipModel`` built from the host's own JSON config with thin sizes; the VAE is a real
``comfy.sd.VAE`` around a thin ``AutoencoderKL`` (8x down-sampling, 4 latent channels).

ComfyUI builds layers with ``comfy.ops.disable_weight_init`` / ``manual_cast`` whose
``reset_parameters`` does nothing, so fresh weights are uninitialised memory (often NaN).
:func:`initialise_weights` fills every parameter deterministically from ``seed`` (PyTorch's default
schemes, one generator per parameter name), so results do not depend on construction order,
device or global RNG state.

Sizes (channels are multiples of 32 because every GroupNorm has 32 groups):

======  ==============  ============================  ==========================  =================
arch    channels/level  attention heads (dim_head)    text encoders (hidden)      context / pooled
======  ==============  ============================  ==========================  =================
sd15    32, 64, 128,    8 everywhere (4, 8, 16, 16)   CLIP-L 32, 2 layers, last   32 / -
        128             (``num_heads: 8`` is forced
                        by ``SD15.unet_extra_config``)
sd2     32, 64, 128,    dim_head 16: 2, 4, 8, 8       OpenCLIP-H 64, 3 layers,    64 / -
        128                                           penultimate, pads with 0
sdxl    32, 64, 128     dim_head 16: -, 4, 8          CLIP-L 32 + CLIP-G 64,      96 / 64
                                                      penultimate; G pads with 0  (adm 64+1536)
======  ==============  ============================  ==========================  =================

Cross-attention (attn2) layers and their map sizes for a 32x32 latent (256x256 px); a map at
UNet level ``l`` has ``ceil(H / 2**l) x ceil(W / 2**l)`` query positions
(see :func:`attn2_layout` and :func:`attn2_map_size`):

* sd15 / sd2 (16 layers, depth 1): input 1, 2 and output 9, 10, 11 -> 32x32; input 4, 5 and
  output 6, 7, 8 -> 16x16; **input 7, 8 and output 3, 4, 5 -> 8x8** (the "16x16 at 512 px" level);
  middle 0 -> 4x4.
* sdxl (70 layers): input 4, 5 (depth 2) and output 3, 4, 5 (depth 2) -> 16x16; **input 7, 8,
  middle 0 and output 0, 1, 2 (depth 10) -> 8x8** (the "32x32 at 1024 px" level); no attention at
  level 0.

Use a 64x64 latent (512 px) to get 16x16 maps at the sd15 level that Attend-and-Excite uses.
Building works inside ``torch.inference_mode()`` (as ComfyUI's executor runs loader nodes); the
weights are then inference tensors, exactly as in the real host.

Behaviour of the random weights (what tests may and may not rely on):

* the cross-attention query/key projections are scaled by :data:`ATTN2_QK_GAIN` so maps have
  contrast (normalised entropy about 0.4-0.6, logits std about 3-4.5) instead of being uniform;
* the UNet predicts noise uncorrelated with its input, so sampling does not denoise: a 4-step run
  returns a finite latent of standard deviation about 15 (model space; about 80 after
  ``process_latent_out``), and the VAE output is clamped noise around 0.47. Outputs are
  deterministic for a given seed, host and device;
* the text encoders keep the host's default dtype (float16 on CPU), the UNet uses ``dtype``, the
  VAE the host's VAE dtype. A 4-step 256 px sample takes about 0.5-2 s on 2 CPU cores.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import logging
import math
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .host import ensure_host

logger = logging.getLogger(__name__)

ARCHS = ("sd15", "sd2", "sdxl")

#: Width of the SDXL size/crop embedding appended to the pooled text embedding
#: (6 values x ``Timestep(256)``), see ``comfy.model_base.SDXL.encode_adm``.
SDXL_SIZE_EMBED_DIM = 6 * 256

_MODEL_CHANNELS = 32
#: Gain applied to the attn2 query and key projections, see :func:`_sharpen_cross_attention`.
ATTN2_QK_GAIN = 3.0
_HEAD_CHANNELS = 16  # dim_head of the "num_head_channels: 64" architectures (SD2, SDXL), scaled down
_VAE_DDCONFIG = {
    "double_z": True,
    "z_channels": 4,
    "resolution": 256,
    "in_channels": 3,
    "out_ch": 3,
    "ch": 32,
    "ch_mult": [1, 1, 1, 1],
    "num_res_blocks": 1,
    "attn_resolutions": [],
    "dropout": 0.0,
}


@dataclasses.dataclass(frozen=True)
class TextEncoderSpec:
    """A thin text encoder: the host's ``SDClipModel`` with the host's JSON config, resized.

    Attributes:
        key: name inside the CLIP wrapper (``"l"``, ``"g"``, ``"h"``).
        base_config: the host's JSON config file to start from (relative to its module).
        hidden: ``hidden_size``; this is the encoder's share of the UNet context width.
        layers / heads: ``num_hidden_layers`` / ``num_attention_heads``.
        penultimate: use the second-to-last hidden layer (SD2, SDXL) instead of the last (SD1).
        pad_with_zero: the OpenCLIP encoders (SD2's H, SDXL's G) pad with token 0, not EOS.
        layer_norm_hidden_state: apply the final LayerNorm to the intermediate output.
        projected_pooled: return the projected pooled output (SDXL's G feeds the UNet's ``y``).
    """

    key: str
    base_config: str
    hidden: int
    layers: int
    heads: int
    penultimate: bool
    pad_with_zero: bool
    layer_norm_hidden_state: bool
    projected_pooled: bool

    def config(self, host_dir: Path) -> dict[str, Any]:
        """The host's JSON config for this encoder with thin sizes."""
        with open(host_dir / self.base_config, encoding="utf-8") as f:
            config = json.load(f)
        config.update(
            hidden_size=self.hidden,
            intermediate_size=4 * self.hidden,
            num_attention_heads=self.heads,
            num_hidden_layers=self.layers,
            projection_dim=self.hidden,
        )
        return config


@dataclasses.dataclass(frozen=True)
class ArchSpec:
    """How to build one tiny architecture.

    Attributes:
        name: ``"sd15"``, ``"sd2"`` or ``"sdxl"``.
        model_config: class name in ``comfy.supported_models``.
        unet_config: the real ``model_detection`` config with thin channels/context.
        head_channels: overrides ``num_head_channels`` after the host applied ``unet_extra_config``
            (None keeps the host's value, e.g. SD1.5's forced ``num_heads: 8``).
        encoders: text encoders in wrapper order.
    """

    name: str
    model_config: str
    unet_config: dict[str, Any]
    head_channels: int | None
    encoders: tuple[TextEncoderSpec, ...]

    @property
    def context_dim(self) -> int:
        return sum(e.hidden for e in self.encoders)

    @property
    def pooled_dim(self) -> int | None:
        pooled = [e.hidden for e in self.encoders if e.projected_pooled]
        return pooled[-1] if pooled else None


def _sd1_unet(context_dim: int, linear: bool) -> dict[str, Any]:
    """SD1.x / SD2.x UNet layout (``model_detection`` SD15 / SD21) with thin channels."""
    return {
        "use_checkpoint": False,
        "image_size": 32,
        "out_channels": 4,
        "use_spatial_transformer": True,
        "legacy": False,
        "adm_in_channels": None,
        "in_channels": 4,
        "model_channels": _MODEL_CHANNELS,
        "num_res_blocks": [2, 2, 2, 2],
        "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
        "channel_mult": [1, 2, 4, 4],
        "transformer_depth_middle": 1,
        "use_linear_in_transformer": linear,
        "context_dim": context_dim,
        "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
        "use_temporal_attention": False,
        "use_temporal_resblock": False,
    }


def _sdxl_unet(context_dim: int, pooled_dim: int) -> dict[str, Any]:
    """SDXL UNet layout (``model_detection`` SDXL) with thin channels."""
    return {
        "use_checkpoint": False,
        "image_size": 32,
        "out_channels": 4,
        "use_spatial_transformer": True,
        "legacy": False,
        "num_classes": "sequential",
        "adm_in_channels": pooled_dim + SDXL_SIZE_EMBED_DIM,
        "in_channels": 4,
        "model_channels": _MODEL_CHANNELS,
        "num_res_blocks": [2, 2, 2],
        "transformer_depth": [0, 0, 2, 2, 10, 10],
        "channel_mult": [1, 2, 4],
        "transformer_depth_middle": 10,
        "use_linear_in_transformer": True,
        "context_dim": context_dim,
        "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
        "use_temporal_attention": False,
        "use_temporal_resblock": False,
    }


_CLIP_L = dict(key="l", base_config="sd1_clip_config.json", pad_with_zero=False)
_SD15_L = TextEncoderSpec(**_CLIP_L, hidden=32, layers=2, heads=2, penultimate=False,
                          layer_norm_hidden_state=True, projected_pooled=False)
_SDXL_L = TextEncoderSpec(**_CLIP_L, hidden=32, layers=3, heads=2, penultimate=True,
                          layer_norm_hidden_state=False, projected_pooled=False)
_SDXL_G = TextEncoderSpec(key="g", base_config="clip_config_bigg.json", hidden=64, layers=3, heads=4,
                          penultimate=True, pad_with_zero=True, layer_norm_hidden_state=False,
                          projected_pooled=True)
_SD2_H = TextEncoderSpec(key="h", base_config="sd2_clip_config.json", hidden=64, layers=3, heads=4,
                         penultimate=True, pad_with_zero=True, layer_norm_hidden_state=True,
                         projected_pooled=True)

ARCH_SPECS: dict[str, ArchSpec] = {
    "sd15": ArchSpec("sd15", "SD15", _sd1_unet(_SD15_L.hidden, linear=False), None, (_SD15_L,)),
    "sd2": ArchSpec("sd2", "SD20", _sd1_unet(_SD2_H.hidden, linear=True), _HEAD_CHANNELS, (_SD2_H,)),
    "sdxl": ArchSpec("sdxl", "SDXL", _sdxl_unet(_SDXL_L.hidden + _SDXL_G.hidden, _SDXL_G.hidden),
                     _HEAD_CHANNELS, (_SDXL_L, _SDXL_G)),
}


@dataclasses.dataclass(frozen=True)
class TinyModel:
    """What ``CheckpointLoaderSimple`` returns, tiny.

    Attributes:
        arch: ``"sd15"``, ``"sd2"`` or ``"sdxl"``.
        model: ``comfy.model_patcher.ModelPatcher`` around the ``BaseModel``/``SDXL``.
        clip: ``comfy.sd.CLIP``; conditioning is ``(B, 77*k, context_dim)``.
        vae: ``comfy.sd.VAE``; ``decode`` maps ``(B, 4, h, w)`` to ``(B, 8h, 8w, 3)``.
        context_dim: width of the cross-attention context (sum of the encoders' hidden sizes).
        pooled_dim: width of ``pooled_output`` fed to the UNet (SDXL), else None.
        channels: latent channels (4; :class:`harness.tiny_dit.TinyDiT` has 16).
    """

    arch: str
    model: Any
    clip: Any
    vae: Any
    context_dim: int
    pooled_dim: int | None
    channels: int = 4


def build_tiny(arch: str, *, seed: int = 0, dtype: torch.dtype = torch.float32) -> TinyModel:
    """Build a tiny model, text encoder and VAE of ``arch`` with deterministic weights.

    Args:
        arch: ``"sd15"``, ``"sd2"`` or ``"sdxl"``.
        seed: weight seed; the same seed gives bit-identical weights on every call.
        dtype: UNet weight dtype (the host picks manual casting if the device needs it). The text
            encoder and VAE use the host's default dtypes, as a checkpoint loader would.

    Returns:
        A :class:`TinyModel`. Works with and without ``torch.inference_mode()``.
    """
    if arch not in ARCH_SPECS:
        raise ValueError(f"unknown tiny architecture {arch!r}; expected one of {ARCHS}")
    return _build(ARCH_SPECS[arch], seed, dtype)


def _build(spec: ArchSpec, seed: int, dtype: torch.dtype) -> TinyModel:
    ensure_host()
    # no_grad: the initialisation writes into leaf parameters. It does not change inference mode:
    # inside torch.inference_mode() the weights still become inference tensors.
    with torch.no_grad():
        model = _build_unet(spec, seed, dtype)
        clip = _build_clip(spec, seed)
        vae = build_vae(seed)
    logger.debug("built %s (seed %d, unet %s, inference tensors: %s)", spec.name, seed, dtype,
                 torch.is_inference_mode_enabled())
    return TinyModel(spec.name, model, clip, vae, spec.context_dim, spec.pooled_dim)


#: real channel and context widths for :func:`build_real_size` (``comfy.model_detection``'s SD15 / SDXL
#: configs: 320 model channels; CLIP-L 768, SDXL's L 768 + G 1280 = 2048 context and 1280 pooled)
_REAL_SIZE = {
    "sd15": ArchSpec("sd15", "SD15", {**_sd1_unet(768, linear=False), "model_channels": 320}, None,
                     (dataclasses.replace(_SD15_L, hidden=768, heads=12),)),
    "sdxl": ArchSpec("sdxl", "SDXL", {**_sdxl_unet(2048, 1280), "model_channels": 320}, None,
                     (dataclasses.replace(_SDXL_L, hidden=768, heads=12),
                      dataclasses.replace(_SDXL_G, hidden=1280, heads=20))),
}


def build_real_size(arch: str, *, seed: int = 0, dtype: torch.dtype = torch.float32) -> TinyModel:
    """A random-weight model of the *real* UNet size of ``arch`` (``"sd15"``: 860M parameters, ``"sdxl"``:
    2.6B), for benchmarks: the real channel widths, depths and head sizes (the host's own
    ``unet_extra_config``), with shallow text encoders of the real hidden sizes so the conditioning has
    the real width, and the tiny VAE. ``dtype`` as in :func:`build_tiny` (SD1.5 in fp32 takes 3.4 GB)."""
    if arch not in _REAL_SIZE:
        raise ValueError(f"no real-size configuration for {arch!r}; expected one of {tuple(_REAL_SIZE)}")
    return _build(_REAL_SIZE[arch], seed, dtype)


def build_tiny_unet(arch: str, *, unet_overrides: dict[str, Any] | None = None, seed: int = 0,
                    dtype: torch.dtype = torch.float32) -> Any:
    """Only the ModelPatcher of ``arch``, optionally with ``unet_config`` entries replaced.

    For models the real topology tables do not cover, e.g. a UNet without cross-attention:
    ``build_tiny_unet("sd15", unet_overrides={"transformer_depth": [0] * 8,
    "transformer_depth_output": [0] * 12, "transformer_depth_middle": -1})``.
    """
    if arch not in ARCH_SPECS:
        raise ValueError(f"unknown tiny architecture {arch!r}; expected one of {ARCHS}")
    ensure_host()
    spec = ARCH_SPECS[arch]
    if unet_overrides:
        spec = dataclasses.replace(spec, unet_config={**spec.unet_config, **unet_overrides})
    with torch.no_grad():
        return _build_unet(spec, seed, dtype)


#: where the shape-world model goes (``python -m scripts.train_shape_model --export``): an SD1.5-topology
#: tiny model that has learned flat coloured shapes at 128 px (see ``models/README.md``)
SHAPE_MODEL = Path(__file__).resolve().parents[1] / "models" / "storm_shapes_sd15.safetensors"
#: the image side the shape model was trained at (it draws shapes at this size only)
SHAPE_MODEL_SIZE = 128


#: the tiny DiT architectures (:mod:`harness.tiny_dit` builds them), as checkpoint names name them
DIT_ARCHS = ("sd3", "flux", "chroma")


def arch_from_checkpoint_name(ckpt_name: str) -> str:
    """``"sd3"`` / ``"flux"`` / ``"chroma"`` if the name contains it (tiny DiTs, :mod:`harness.tiny_dit`), ``"sdxl"`` if it
    contains "xl", ``"sd2"`` if it contains "sd2"/"v2", else ``"sd15"``."""
    name = ckpt_name.lower()
    for dit in DIT_ARCHS:
        if dit in name:
            return dit
    if "xl" in name:
        return "sdxl"
    if "sd2" in name or "v2" in name:
        return "sd2"
    return "sd15"


#: tiny DiTs loaded from separate model, text-encoder and VAE files (UNETLoader, CLIPLoader, VAELoader), as the
#: file names name them
SEPARATE_FILE_ARCHS = ("qwen_image", "z_image", "flux2", "krea2")
#: ``CLIPLoader``'s ``type`` of each of these families' text encoders
CLIP_LOADER_TYPES = {"qwen_image": "qwen_image", "lumina2": "z_image", "flux2": "flux2", "krea2": "krea2"}


def arch_from_model_file(name: str) -> str | None:
    """The tiny DiT a diffusion-model file name (``UNETLoader``'s ``unet_name``) names, or None."""
    name = name.lower().replace("-", "_")
    return next((arch for arch in SEPARATE_FILE_ARCHS if arch in name), None)


#: checkpoint prefixes of the three modules (the layout of an SD1.5 checkpoint file)
CHECKPOINT_PREFIXES = {"unet": "model.diffusion_model.", "text": "cond_stage_model.", "vae": "first_stage_model."}


def tiny_modules(tiny: TinyModel) -> dict[str, torch.nn.Module]:
    """The UNet, text encoder and VAE modules of a tiny model, keyed as in :data:`CHECKPOINT_PREFIXES`."""
    return {"unet": tiny.model.model.diffusion_model, "text": tiny.clip.cond_stage_model,
            "vae": tiny.vae.first_stage_model}


def load_trained(path: str | Path, *, arch: str = "sd15") -> TinyModel:
    """A tiny model of ``arch`` with the trained weights of ``path`` (written by
    ``python -m scripts.train_shape_model --export``: fp16 safetensors, SD1.5 checkpoint key layout).

    Every module must match the file exactly (no missing or unexpected keys); values are cast to the
    dtype the host chose for each module. Works with and without ``torch.inference_mode()``.
    """
    from safetensors.torch import load_file

    tiny = build_tiny(arch, seed=0)
    state = load_file(str(path))
    with torch.no_grad():
        for name, module in tiny_modules(tiny).items():
            prefix = CHECKPOINT_PREFIXES[name]
            part = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            module.load_state_dict(part, strict=True)
    return tiny


def tiny_conditioning(clip: Any, text: str) -> list:
    """Encode ``text`` exactly as the host's ``CLIPTextEncode`` node does
    (``clip.encode_from_tokens_scheduled(clip.tokenize(text))``).

    Returns:
        CONDITIONING ``[[cond, {"pooled_output": pooled, ...}]]`` with ``cond`` of shape
        ``(1, 77*k, context_dim)`` (``k`` = number of 75-token chunks) and ``pooled`` of shape
        ``(1, hidden of the last encoder)`` (what SDXL feeds into ``y``).
    """
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))


# --------------------------------------------------------------------------------------------
# topology


@dataclasses.dataclass(frozen=True)
class Attn2Layer:
    """One cross-attention layer as seen by an attn2 replace patch.

    Attributes:
        key: ``(block_name, block_id, block_index)`` - ``extra_options["block"] + (block_index,)``.
        level: UNet resolution level (0 = full latent resolution).
        heads: ``extra_options["n_heads"]``.
        dim_head: ``extra_options["dim_head"]``.
    """

    key: tuple[str, int, int]
    level: int
    heads: int
    dim_head: int


def attn2_layout(arch: str) -> list[Attn2Layer]:
    """Every attn2 layer of the tiny ``arch`` UNet in forward order (computed from its config)."""
    spec = ARCH_SPECS[arch]
    cfg = spec.unet_config
    levels = len(cfg["channel_mult"])
    n_res = cfg["num_res_blocks"][0]
    depth_in = cfg["transformer_depth"]
    depth_out = cfg["transformer_depth_output"]

    def heads_at(level: int) -> tuple[int, int]:
        channels = _MODEL_CHANNELS * cfg["channel_mult"][level]
        if spec.head_channels is None:  # SD1.x: num_heads forced to 8
            return 8, channels // 8
        return channels // spec.head_channels, spec.head_channels

    layers: list[Attn2Layer] = []

    def add(block: str, block_id: int, level: int, depth: int) -> None:
        heads, dim_head = heads_at(level)
        layers.extend(Attn2Layer((block, block_id, j), level, heads, dim_head) for j in range(depth))

    for level in range(levels):
        for j in range(n_res):
            add("input", 1 + level * (n_res + 1) + j, level, depth_in[level * n_res + j])
    add("middle", 0, levels - 1, cfg["transformer_depth_middle"])
    for out_id in range(levels * (n_res + 1)):
        add("output", out_id, levels - 1 - out_id // (n_res + 1), depth_out[-(out_id + 1)])
    return layers


def attn2_map_size(level: int, latent_hw: tuple[int, int]) -> tuple[int, int]:
    """Spatial size ``(h, w)`` of the attention maps at UNet ``level`` for a latent of ``latent_hw``."""
    h, w = latent_hw
    for _ in range(level):
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    return h, w


# --------------------------------------------------------------------------------------------
# weight initialisation


def initialise_weights(module: torch.nn.Module, seed: int, *, keep: tuple[str, ...] = ()) -> None:
    """Fill every parameter of ``module`` in place with PyTorch's default initialisation.

    Linear/Conv: weight and bias ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` (= ``kaiming_uniform_(a=sqrt(5))``);
    GroupNorm/LayerNorm: weight 1, bias 0; RMS norms: scale 1; Embedding: ``N(0, 1)``. Each parameter gets its own
    CPU generator seeded from ``(seed, qualified name)``.

    Args:
        module: the module to initialise (its parameters may be inference tensors).
        seed: base seed.
        keep: parameter-name suffixes that already hold meaningful values and are left alone
            (e.g. ``"logit_scale"``).

    Raises:
        ValueError: a parameter belongs to a module type without an initialisation rule.
    """
    unhandled: list[str] = []
    with torch.no_grad():
        for module_name, sub in module.named_modules():
            for param_name, param in sub.named_parameters(recurse=False):
                qualified = f"{module_name}.{param_name}" if module_name else param_name
                if keep and qualified.endswith(keep):
                    continue
                values = _initial_values(sub, param_name, tuple(param.shape), _generator(seed, qualified))
                if values is None:
                    unhandled.append(f"{qualified} ({type(sub).__name__})")
                    continue
                param.copy_(values.to(device=param.device, dtype=param.dtype))
    if unhandled:
        raise ValueError(f"no initialisation rule for: {', '.join(unhandled)}")


def _sharpen_cross_attention(unet: torch.nn.Module, gain: float) -> None:
    """Scale the query/key projections of every attn2 layer by ``gain`` (in place).

    With default initialisation the cross-attention logits have a standard deviation of about
    0.3 and every map is nearly uniform over the 77 tokens (normalised entropy 0.99). Scaling
    ``to_q`` and ``to_k`` by ``gain`` multiplies the logits by ``gain**2``, giving maps with real
    contrast between tokens and positions, as in trained models.
    """
    with torch.no_grad():
        for name, sub in unet.named_modules():
            if name.endswith(".attn2"):
                sub.to_q.weight.mul_(gain)
                sub.to_k.weight.mul_(gain)


def _generator(seed: int, name: str) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % 2**63)


def _initial_values(
    module: torch.nn.Module, param_name: str, shape: tuple[int, ...], gen: torch.Generator
) -> torch.Tensor | None:
    if isinstance(module, (torch.nn.Linear, torch.nn.modules.conv._ConvNd)):
        weight_shape = tuple(module.weight.shape)
        fan_in = math.prod(weight_shape[1:]) if len(weight_shape) > 1 else weight_shape[0]
        bound = 1.0 / math.sqrt(fan_in)
        return (torch.rand(shape, generator=gen) * 2.0 - 1.0) * bound
    if isinstance(module, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
        return torch.ones(shape) if param_name == "weight" else torch.zeros(shape)
    if isinstance(module, torch.nn.Embedding):
        return torch.randn(shape, generator=gen)
    if type(module).__name__ == "RMSNorm" and type(module).__module__.endswith(".krea2.model"):
        return torch.zeros(shape)  # Krea 2's RMS norms scale by 1 + scale (stored zero-centred)
    if type(module).__name__ in ("DoubleSharedModulation", "SimpleModulation") and param_name == "lin":
        return 0.02 * torch.randn(shape, generator=gen)  # Krea 2's learned modulation offsets, added to the timestep's
    if type(module).__name__ in ("RMSNorm", "T5LayerNorm") and param_name in ("weight", "scale"):
        return torch.ones(shape)  # the DiTs' RMS norms (MMDiT's weight, Flux's scale) and T5's
    if param_name == "class_embedding":  # a CLIP vision tower's learned class row: N(0, 1) like its embeddings
        return torch.randn(shape, generator=gen)
    if param_name in ("x_pad_token", "cap_pad_token"):  # Z-Image's learned pad rows (image, caption): N(0, 0.02)
        return 0.02 * torch.randn(shape, generator=gen)
    return None


# --------------------------------------------------------------------------------------------
# builders


def _build_unet(spec: ArchSpec, seed: int, dtype: torch.dtype) -> Any:
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models

    load_device = mm.get_torch_device()
    offload_device = mm.unet_offload_device()
    model_config = getattr(comfy.supported_models, spec.model_config)(spec.unet_config)
    if spec.head_channels is not None:  # the host forced num_head_channels=64 (real SD2/SDXL)
        model_config.unet_config["num_head_channels"] = spec.head_channels
    manual_cast = mm.unet_manual_cast(dtype, load_device, model_config.supported_inference_dtypes)
    model_config.set_inference_dtype(dtype, manual_cast)
    model = model_config.get_model({}, "", device=offload_device)
    initialise_weights(model.diffusion_model, seed)
    _sharpen_cross_attention(model.diffusion_model, ATTN2_QK_GAIN)
    return comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=offload_device)


def _build_clip(spec: ArchSpec, seed: int) -> Any:
    import comfy.sd
    import comfy.supported_models_base

    modules = _clip_modules()
    factories = {e.key: _encoder_factory(e, modules) for e in spec.encoders}
    if spec.name == "sd15":
        tokenizer = modules["sd1"].SD1Tokenizer
        wrapper = functools.partial(modules["sd1"].SD1ClipModel, clip_name="l", clip_model=factories["l"])
    elif spec.name == "sd2":
        tokenizer = modules["sd2"].SD2Tokenizer
        wrapper = functools.partial(modules["sd1"].SD1ClipModel, clip_name="h", clip_model=factories["h"])
    else:
        tokenizer = modules["sdxl"].SDXLTokenizer
        wrapper = functools.partial(_tiny_sdxl_clip_class(), l_factory=factories["l"], g_factory=factories["g"])
    target = comfy.supported_models_base.ClipTarget(tokenizer, wrapper)
    clip = comfy.sd.CLIP(target=target)
    initialise_weights(clip.cond_stage_model, seed + 1, keep=("logit_scale",))
    return clip


def _clip_modules() -> dict[str, Any]:
    """The host's text-encoder modules."""
    return {"sd1": importlib.import_module("comfy.sd1_clip"), "sd2": importlib.import_module("comfy.text_encoders.sd2_clip"),
            "sdxl": importlib.import_module("comfy.sdxl_clip")}


def _encoder_factory(enc: TextEncoderSpec, modules: dict[str, Any]) -> Callable[..., torch.nn.Module]:
    """A constructor ``(device, dtype, **host_kwargs) -> SDClipModel`` for a thin encoder.

    The host wrappers call it with ``model_options``; only that is forwarded (the config is ours).
    """
    sd1 = modules["sd1"]
    config_dir = {"l": sd1, "g": modules["sdxl"], "h": modules["sd2"]}[enc.key]
    config = enc.config(Path(config_dir.__file__).resolve().parent)
    special = {"start": 49406, "end": 49407, "pad": 0 if enc.pad_with_zero else 49407}

    def make(device: Any = "cpu", dtype: Any = None, **host_kwargs: Any) -> torch.nn.Module:
        extra = {"model_options": host_kwargs["model_options"]} if "model_options" in host_kwargs else {}
        return sd1.SDClipModel(
            device=device,
            dtype=dtype,
            textmodel_json_config=dict(config),
            layer="hidden" if enc.penultimate else "last",
            layer_idx=-2 if enc.penultimate else None,
            special_tokens=special,
            layer_norm_hidden_state=enc.layer_norm_hidden_state,
            return_projected_pooled=enc.projected_pooled,
            **extra,
        )

    return make


@functools.cache
def _tiny_sdxl_clip_class() -> type:
    """Subclass of the host's ``SDXLClipModel`` whose CLIP-L/CLIP-G are thin encoders.

    The host class hard-codes the full-size configs, so only ``__init__`` is replaced; encoding
    (concatenation of L and G, pooled output of G) is the host's own code.
    """
    sdxl_clip = importlib.import_module("comfy.sdxl_clip")

    class TinySDXLClipModel(sdxl_clip.SDXLClipModel):
        def __init__(self, l_factory, g_factory, device="cpu", dtype=None, **host_kwargs):
            torch.nn.Module.__init__(self)
            self.clip_l = l_factory(device=device, dtype=dtype, **host_kwargs)
            self.clip_g = g_factory(device=device, dtype=dtype, **host_kwargs)
            self.dtypes = {dtype}

    return TinySDXLClipModel


#: a CLIP vision tower at tiny width: the ViT-L/14 config of the host (``comfy/clip_vision_config_vitl.json``) with
#: these entries replaced
TINY_CLIP_VISION = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 2,
                    "image_size": 32, "patch_size": 8, "projection_dim": 16}


def build_tiny_clip_vision(seed: int = 0, **overrides: Any) -> Any:
    """The host's ``comfy.clip_vision.ClipVisionModel`` (what *Load CLIP Vision* returns) at tiny width
    (:data:`TINY_CLIP_VISION`, then ``overrides``, e.g. ``projection_dim``), with :func:`initialise_weights` (the host
    class reads its config from a JSON file on older hosts)."""
    import tempfile

    ensure_host()
    import comfy.clip_vision

    host_config = Path(comfy.clip_vision.__file__).with_name("clip_vision_config_vitl.json")
    config = {**json.loads(host_config.read_text()), **TINY_CLIP_VISION, **overrides}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "clip_vision_config_tiny.json"
        path.write_text(json.dumps(config))
        model = comfy.clip_vision.ClipVisionModel(str(path))
    initialise_weights(model.model, seed)
    return model


def build_vae(seed: int, channels: int = 4) -> Any:
    """The tiny ``AutoencoderKL`` with ``channels`` latent channels (SD1.x/SDXL 4, SD3/Flux 16)."""
    import comfy.ldm.models.autoencoder
    import comfy.sd

    params = {"ddconfig": {**_VAE_DDCONFIG, "z_channels": channels}, "embed_dim": channels}
    template = comfy.ldm.models.autoencoder.AutoencoderKL(**params)
    initialise_weights(template, seed + 2)
    state_dict = {k: v.detach().clone() for k, v in template.state_dict().items()}
    vae = comfy.sd.VAE(sd=state_dict, config={"params": params})
    vae.latent_channels = channels  # what the host reads to check a latent (it sets it from the config only for 4)
    return vae
