"""Which cross-attention layers a model has, and which ones to record.

DiT models (SD3's MMDiT, Flux) have no cross-attention: every block runs one *joint* attention over
the text rows followed by the image patches (Esser et al. 2024, eq. 6 and Fig. 2a; Flux.1 the same in
its double- and single-stream blocks). Its image-to-text part plays the cross-attention's role; each
joint block is described as a :class:`CrossAttentionLayer` keyed ``("joint", i)`` at the level of the
patch size (patch 2 = one halving of the latent), and every block is recorded.

Layers are chosen by UNet *level* (number of downsamplings), read off the model's own modules,
never by absolute map size, so any resolution and aspect ratio works. Attend-and-Excite's
"16x16 at 512 px" layers of SD1.5 (input 7, 8; output 3, 4, 5) are level 2 = 1/32 of the pixel
resolution; SDXL's comparable layers (input 7, 8; output 0, 1, 2 at 32x32 for 1024 px) are level
2 as well.
"""

from __future__ import annotations

from dataclasses import dataclass

import comfy.supported_models as supported

from ..storm_ops.errors import StormError


@dataclass(frozen=True)
class CrossAttentionLayer:
    """One SpatialTransformer with cross-attention.

    ``key`` is the attn2 replace-patch key ``(block, index)`` (it covers every depth);
    ``depth`` the number of transformer blocks in it.
    """

    key: tuple[str, int]
    level: int
    depth: int
    heads: int
    context_dim: int

    @property
    def label(self) -> str:
        return f"{self.key[0]} {self.key[1]}"


#: User-facing layer selections -> (UNet level = number of downsamplings, include the middle block)
LAYER_SELECTIONS = {
    "1/32 res: down+up (A&E)": (2, False),
    "1/32 res: down+mid+up": (2, True),
    "1/16 res: down+up": (1, False),
}
DEFAULT_LAYER_SELECTION = "1/32 res: down+up (A&E)"

#: image pixels per latent pixel along each side, unless the model's latent format says otherwise (Flux.2: 16)
PIXELS_PER_LATENT = 8

#: text encoders by the width of their conditioning (= the UNet's cross-attention context width)
TEXT_ENCODERS = {768: "SD1.x's CLIP-L", 1024: "SD2.x's OpenCLIP-H", 1280: "the SDXL refiner's CLIP-G",
                 2048: "SDXL's CLIP-L + CLIP-G"}


#: host model classes built on a supported family's class that are another architecture (other text encoder,
#: latent and blocks): refused by name, never taken for their parent (ComfyUI 0.33's Flux2 subclasses Flux)
_OTHER_ARCHITECTURES = ("ChromaRadiance", "ZImagePixelSpace")
#: what users call the families of the host's model classes (``comfy/supported_models.py``), for messages
FAMILY_NAMES = {
    "SD15": "SD1.x", "SD20": "SD2.x", "SDXL": "SDXL", "SDXLRefiner": "the SDXL refiner", "SD3": "SD3.x",
    "Flux": "Flux.1", "FluxSchnell": "Flux.1 schnell", "FluxInpaint": "Flux.1 Fill", "Flux2": "Flux.2",
    "Chroma": "Chroma", "ChromaRadiance": "Chroma Radiance", "QwenImage": "Qwen-Image", "ZImage": "Z-Image",
    "ZImagePixelSpace": "Z-Image (pixel space)", "Lumina2": "Lumina 2", "HiDream": "HiDream", "HiDreamO1": "HiDream-O1",
    "AuraFlow": "AuraFlow", "PixArtAlpha": "PixArt-Alpha", "PixArtSigma": "PixArt-Sigma", "HunyuanDiT": "Hunyuan-DiT",
    "HunyuanDiT1": "Hunyuan-DiT 1.x", "HunyuanImage21": "HunyuanImage 2.1", "Stable_Cascade_C": "Stable Cascade",
    "Stable_Cascade_B": "Stable Cascade (stage B)", "CosmosT2IPredict2": "Cosmos Predict2", "Omnigen2": "OmniGen2",
    "Kandinsky5Image": "Kandinsky 5 Image", "LongCatImage": "LongCat-Image", "ErnieImage": "ERNIE-Image",
    "Krea2": "Krea 2", "Ideogram4": "Ideogram 4", "MageFlow": "MageFlow", "JoyImage": "JoyImage",
}
#: the families attention recording and guidance support (UNets with cross-attention: any SD1.x/SD2.x/SDXL
#: derivative; DiTs: :data:`DIT_FAMILIES`)
SUPPORTED_FAMILIES = "SD1.x, SD2.x, SDXL, SD3.x, Flux.1, Flux.2, Chroma, Qwen-Image, Z-Image and Krea 2"

_FAMILIES = (  # order matters: subclasses first
    ("sdxl_refiner", "SDXLRefiner"),
    ("sdxl", "SDXL"),
    ("sd2", "SD20"),
    ("sd1", "SD15"),
    ("sd3", "SD3"),
    ("flux2", "Flux2"),  # a subclass of Flux in the host: 128-channel latent of 16 px, Qwen3/Mistral rows
    ("flux", "Flux"),
    ("chroma", "Chroma"),  # Flux's blocks (not a subclass of Flux); T5 rows alone
    ("qwen_image", "QwenImage"),  # dual-stream blocks only; Qwen2.5-VL rows (the chat template's tail kept)
    ("z_image", "ZImage"),  # single-stream blocks over [text, image], each padded to a multiple of 32 rows
    ("krea2", "Krea2"),  # single-stream blocks over [text, image]; Qwen3-VL rows (12 layers fused), template tail kept
)
#: DiT families with joint text-image attention
DIT_FAMILIES = ("sd3", "flux", "flux2", "chroma", "qwen_image", "z_image", "krea2")
#: the patch key of a DiT block's joint attention
JOINT = "joint"


@dataclass(frozen=True)
class ModelInfo:
    """A diffusion model as the pack sees it: its family, its name and its text-attention layers (a UNet's
    cross-attention layers, a DiT's joint-attention blocks)."""

    family: str
    model_name: str
    layers: tuple[CrossAttentionLayer, ...]
    #: image pixels per latent pixel (the latent format's down-sampling)
    pixels_per_latent: int = PIXELS_PER_LATENT
    #: a DiT's joint attention pads its text rows and its image rows each to a multiple of this (Z-Image: 32)
    pad_rows_to: int = 1

    @property
    def is_dit(self) -> bool:
        return self.family in DIT_FAMILIES

    def select(self, selection: str = DEFAULT_LAYER_SELECTION, node: str = "STORM") -> tuple[CrossAttentionLayer, ...]:
        if selection not in LAYER_SELECTIONS:
            raise StormError(f"{node}: unknown attention layer selection {selection!r}; "
                             f"choose one of {list(LAYER_SELECTIONS)}", input_name="attention_layers")
        if self.is_dit:  # the selections name UNet levels; a DiT's maps are recorded from every joint block
            return self.layers
        level, with_middle = LAYER_SELECTIONS[selection]
        levels = sorted({layer.level for layer in self.layers})
        if level not in levels:  # shallow UNets: use the deepest level that has cross-attention
            level = max(lv for lv in levels if lv <= level) if min(levels) <= level else min(levels)
        chosen = tuple(layer for layer in self.layers if layer.level == level
                       and (with_middle or layer.key[0] != "middle"))
        if not chosen:
            raise StormError(f"{node}: {self.model_name} has no cross-attention layers at the selected level",
                             input_name="attention_layers")
        return chosen


def _class_names(module) -> set[str]:
    return {type(m).__name__ for m in module.children()}


def _spatial_transformer(block):
    for m in block.children():
        if type(m).__name__ == "SpatialTransformer":
            return m
    return None


def _layer(block_name: str, index: int, level: int, st) -> CrossAttentionLayer | None:
    blocks = [b for b in st.transformer_blocks if getattr(b, "attn2", None) is not None]
    if not blocks:
        return None
    attn2 = blocks[0].attn2
    return CrossAttentionLayer((block_name, index), level, len(st.transformer_blocks), attn2.heads,
                               attn2.to_k.in_features)


def family_name(model_config) -> str:
    """What users call the family of ``model_config`` ("Qwen-Image" for ``QwenImage``); its class name otherwise."""
    name = type(model_config).__name__
    return FAMILY_NAMES.get(name, name)


def model_family(model_config) -> str:
    """The pack's family key of a host model config: ``sd1``, ``sd2``, ``sdxl``, ``sdxl_refiner``, ``sd3``,
    ``flux`` (Flux.1), ``other`` for a class built on one of these that is another architecture, else ``unet``
    (whatever it is, :func:`describe_unet` decides whether it has a UNet's cross-attention)."""
    for cls_name in _OTHER_ARCHITECTURES:
        cls = getattr(supported, cls_name, None)
        if cls is not None and isinstance(model_config, cls):
            return "other"
    for family, cls_name in _FAMILIES:
        cls = getattr(supported, cls_name, None)
        if cls is not None and isinstance(model_config, cls):
            return family
    return "unet"


def _joint_blocks(net, family: str) -> tuple[int, int, int] | None:
    """``(blocks, heads, context width)`` of a DiT's joint attention, None when it is not one we know."""
    if family == "sd3" and hasattr(net, "joint_blocks") and hasattr(net, "context_embedder"):
        return len(net.joint_blocks), net.joint_blocks[0].x_block.attn.num_heads, net.context_embedder.in_features
    if family in ("flux", "flux2", "chroma") and hasattr(net, "double_blocks") and hasattr(net, "txt_in"):
        return len(net.double_blocks) + len(net.single_blocks), net.num_heads, net.txt_in.in_features
    if family == "qwen_image" and hasattr(net, "transformer_blocks") and hasattr(net, "txt_in"):
        return len(net.transformer_blocks), net.transformer_blocks[0].attn.heads, net.txt_in.in_features
    if family == "z_image" and hasattr(net, "layers") and hasattr(net, "cap_embedder"):
        return len(net.layers), net.layers[0].attention.n_local_heads, net.cap_embedder[-1].in_features
    if family == "krea2" and hasattr(net, "blocks") and hasattr(net, "txtfusion"):  # the conditioning: 12 layers' rows
        return len(net.blocks), net.heads, net.txtlayers * net.txtdim
    return None


def describe_model(base_model, node: str = "STORM") -> ModelInfo:
    """The attention layers of a UNet (:func:`describe_unet`) or the joint blocks of a DiT of :data:`DIT_FAMILIES`.

    Raises :class:`StormError` naming ``node`` for other architectures, and for DiTs on a ComfyUI that
    does not let the pack observe their attention.
    """
    config = getattr(base_model, "model_config", None)
    family = model_family(config)
    if family not in DIT_FAMILIES:
        if family == "other" or not _is_unet(base_model):
            raise unsupported_family(node, config)
        return describe_unet(base_model, node)
    model_name = type(config).__name__
    found = _joint_blocks(base_model.diffusion_model, family)
    if found is None:
        raise StormError(f"{node}: the {model_name} model has no joint attention blocks the pack knows",
                         input_name="model")
    blocks, heads, width = found
    net = base_model.diffusion_model
    patch = getattr(net, "patch_size", getattr(net, "patch", 2))  # Krea 2 names it `patch`
    patch = patch[-1] if isinstance(patch, (tuple, list)) else patch
    level = max(int(patch).bit_length() - 1, 0)  # patch 2**n = n halvings of the latent
    layers = tuple(CrossAttentionLayer((JOINT, i), level, 1, heads, width) for i in range(blocks))
    pad = getattr(base_model.diffusion_model, "pad_tokens_multiple", None) if family == "z_image" else None
    return ModelInfo(family, model_name, layers, _pixels_per_latent(config), int(pad or 1))


def _pixels_per_latent(config) -> int:
    return int(getattr(getattr(config, "latent_format", None), "spacial_downscale_ratio", PIXELS_PER_LATENT))


def _is_unet(base_model) -> bool:
    net = getattr(base_model, "diffusion_model", None)
    return net is not None and hasattr(net, "input_blocks") and hasattr(net, "output_blocks")


def unsupported_family(node: str, config, supported_list: str = SUPPORTED_FAMILIES) -> StormError:
    """The refusal of a model family ``node`` does not support, naming the family."""
    host_class = type(config).__name__ if config is not None else "unknown"
    return StormError(
        f"{node}: {family_name(config)} models (ComfyUI's {host_class}) are not supported yet; this node supports "
        f"{supported_list} checkpoints. See 'Model families' in the ComfyUI-STORM README.", input_name="model")


def describe_unet(base_model, node: str = "STORM") -> ModelInfo:
    """Introspect ``base_model`` (a ComfyUI ``BaseModel``) for its cross-attention layers.

    Raises :class:`StormError` naming ``node`` and the model for architectures without a
    UNet (DiT models such as SD3 or Flux: :func:`describe_model` describes those) or without
    cross-attention.
    """
    config = getattr(base_model, "model_config", None)
    model_name = type(config).__name__ if config is not None else type(base_model).__name__
    unet = getattr(base_model, "diffusion_model", None)
    family = model_family(config)
    if family == "other" or not _is_unet(base_model):
        error = unsupported_family(node, config, "SD1.x, SD2.x and SDXL")
        if family in DIT_FAMILIES:
            error = StormError(f"{error} ({family_name(config)} is a DiT: the pack describes it by its joint-attention "
                               "blocks, not by UNet layers)", input_name="model")
        raise error
    layers: list[CrossAttentionLayer] = []
    level = 0
    for i, block in enumerate(unet.input_blocks):
        if "Downsample" in _class_names(block):
            level += 1
        st = _spatial_transformer(block)
        if st is not None and (layer := _layer("input", i, level, st)):
            layers.append(layer)
    middle = getattr(unet, "middle_block", None)
    if middle is not None:
        st = _spatial_transformer(middle)
        if st is not None and (layer := _layer("middle", 0, level, st)):
            layers.append(layer)
    for i, block in enumerate(unet.output_blocks):
        st = _spatial_transformer(block)
        if st is not None and (layer := _layer("output", i, level, st)):
            layers.append(layer)
        if "Upsample" in _class_names(block):
            level -= 1
    if not layers:
        raise StormError(
            f"{node}: the model {model_name} has no cross-attention layers, so there are no text "
            "attention maps to guide; use a text-conditioned SD1.x, SD2.x or SDXL checkpoint",
            input_name="model")
    return ModelInfo(family, model_name, tuple(layers))


def check_conditioning_family(node: str, arch: ModelInfo, conditionings: dict[str, list]) -> None:
    """Every conditioning must come from the model family's own text encoder (its width is the
    UNet's cross-attention context width); ``conditionings`` maps an input name to its tensors."""
    width = arch.layers[0].context_dim
    for name, tensors in conditionings.items():
        for cross_attn in tensors:
            got = None if cross_attn is None else int(cross_attn.shape[-1])
            if got is not None and got != width:
                source = f", like {TEXT_ENCODERS[got]}" if got in TEXT_ENCODERS else ""
                takes = f" ({TEXT_ENCODERS[width]})" if width in TEXT_ENCODERS else ""
                raise StormError(
                    f"{node}: the {name} conditioning has {got} features per token{source}, but the model "
                    f"{arch.model_name} takes {width}{takes}: it was encoded by another model family's text encoder. "
                    f"Encode the {name} prompt with the CLIP of the same checkpoint as the model", input_name=name)
