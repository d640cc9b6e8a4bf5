"""A test-only image prompt that behaves like an IP-Adapter: an ``attn2`` replace patch adding attention to image
keys/values.

``out = Attn(q, K_text, V_text) + scale * Attn(q, K_img, V_img)``: the layer's own cross-attention to the prompt
plus attention to a few image tokens, as the IP-Adapter's decoupled cross-attention does. The image tokens come
from the image (2x2 average-pooled colours and a position code, projected per layer width by fixed random
matrices) for the conditional rows, and from a black image for the unconditional rows (an IP-Adapter's
unconditional branch uses a zero-image embedding). Like the IP-Adapter pack for SD1.5, it is installed at
``(block, index)`` keys (every depth), so the host's key fallback is exercised.

:class:`CaptionImageAdapter` is the same form for the shipped shape model (the example workflows' IPAdapter
stand-in): its image keys/values are the layer's own projections of the text encoder's states of the picture's
caption, so a picture of a red circle steers the shape model towards a red circle.

Written for these tests from the paper's description of the adapter; no adapter code is copied.
"""

from __future__ import annotations

from typing import Any

import torch

#: the pictures the example workflows load (``LoadImage``'s file) -> the shape scene the tests draw for each
TEST_IMAGES = {"cat.png": "a red circle", "dog.png": "a blue square"}
#: image tokens per image: 2x2 pooled colours
TOKENS = 4
FEATURES = 3 + TOKENS  # RGB + a one-hot position


def image_features(image: torch.Tensor | None) -> torch.Tensor:
    """``(TOKENS, FEATURES)`` tokens of a ComfyUI IMAGE ``(B, H, W, 3)`` in [0, 1] (its first item); None: black."""
    if image is None:
        colours = torch.zeros(TOKENS, 3)
    else:
        pixels = image[:1].float().movedim(-1, 1)  # (1, 3, H, W)
        colours = torch.nn.functional.adaptive_avg_pool2d(pixels, 2).flatten(2)[0].T  # (4, 3)
    return torch.cat([colours.cpu(), torch.eye(TOKENS)], 1)


class TinyImageAdapter:
    """The ``attn2`` replace patch (see the module docstring). ``features``: ``(TOKENS, FEATURES)`` image tokens."""

    def __init__(self, features: torch.Tensor, scale: float = 1.0, seed: int = 0):
        self.features, self.scale, self.seed = features.float(), float(scale), int(seed)
        self.blank = image_features(None)

    @classmethod
    def from_image(cls, image: torch.Tensor, scale: float = 1.0) -> TinyImageAdapter:
        return cls(image_features(image), scale)

    @classmethod
    def from_seed(cls, seed: int, scale: float = 1.0) -> TinyImageAdapter:
        """An "image" given by random tokens (seeded)."""
        g = torch.Generator().manual_seed(seed)
        return cls(torch.cat([torch.rand(TOKENS, 3, generator=g), torch.eye(TOKENS)], 1), scale)

    def _projection(self, width: int, which: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 100003 + width * 2 + which)
        return torch.randn(FEATURES, width, generator=g) * 2.0

    def image_kv(self, features: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        return features @ self._projection(width, 0), features @ self._projection(width, 1)

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict[str, Any]):
        import comfy.ldm.modules.attention as attention

        heads = extra_options["n_heads"]
        out = attention.optimized_attention(q, k, v, heads)
        kinds = list(extra_options.get("cond_or_uncond", [0]))
        rows = q.shape[0] // len(kinds)
        width = q.shape[-1]
        keys, values = [], []
        for kind in kinds:  # 0: conditional rows (the image), 1: unconditional rows (a black image)
            k_img, v_img = self.image_kv(self.features if kind == 0 else self.blank, width)
            keys.append(k_img.expand(rows, -1, -1))
            values.append(v_img.expand(rows, -1, -1))
        k_img = torch.cat(keys).to(q.device, q.dtype)
        v_img = torch.cat(values).to(q.device, q.dtype)
        return out + self.scale * attention.optimized_attention(q, k_img, v_img, heads)


def apply_image_adapter(model: Any, adapter: Any) -> Any:
    """A clone of ``model`` (a UNet ModelPatcher) with ``adapter`` on every cross-attention, at ``(block, index)``
    keys as the IP-Adapter pack installs its SD1.5 patches."""
    patched = model.clone()
    unet = patched.model.diffusion_model
    for block, blocks in (("input", unet.input_blocks), ("middle", [unet.middle_block]),
                          ("output", unet.output_blocks)):
        for index, modules in enumerate(blocks):
            if any(type(m).__name__ == "SpatialTransformer" for m in modules):
                patched.set_model_attn2_replace(adapter, block, index if block != "middle" else 0)
    return patched


def picture_caption(image: torch.Tensor) -> str:
    """The shape world's caption of a picture (IMAGE ``(B, H, W, 3)``, its first item): the objects the shape
    evaluator finds, at most two, largest first; "" when it finds none."""
    import numpy as np

    from .shape_eval import detect
    from .shape_world import caption_text

    pixels = (image[0].float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    found = detect(np.ascontiguousarray(pixels[..., :3]))[:2]
    return caption_text([(d.colour, d.shape) for d in found]) if found else ""


class CaptionImageAdapter:
    """A test-only image prompt for the shape model, in the IP-Adapter's form (an ``attn2`` replace patch adding
    attention to image keys/values): the picture's "image encoder" is the shape evaluator's caption of it, encoded
    by the model's own text encoder, and each layer projects those states with its own ``to_k`` / ``to_v`` (a trained
    IP-Adapter has its own image projections). ``out = Attn(q, K_text, V_text) + scale * Attn(q, K_img, V_img)``;
    the unconditional rows get the empty caption's states, as an IP-Adapter's get a zero image's."""

    def __init__(self, unet: Any, image_states: torch.Tensor, empty_states: torch.Tensor, scale: float = 1.0):
        self.unet, self.scale = unet, float(scale)
        self.image_states, self.empty_states = image_states, empty_states

    def _attn2(self, block: tuple[str, int], depth: int):
        blocks = {"input": self.unet.input_blocks, "output": self.unet.output_blocks}.get(block[0])
        modules = self.unet.middle_block if blocks is None else blocks[block[1]]
        transformer = next(m for m in modules if type(m).__name__ == "SpatialTransformer")
        return transformer.transformer_blocks[depth].attn2

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict[str, Any]):
        import comfy.ldm.modules.attention as attention

        heads = extra_options["n_heads"]
        out = attention.optimized_attention(q, k, v, heads)
        attn2 = self._attn2(extra_options["block"], extra_options.get("block_index", 0))
        kinds = list(extra_options.get("cond_or_uncond", [0]))
        rows = q.shape[0] // len(kinds)
        keys, values = [], []
        for kind in kinds:  # 0: conditional rows (the picture), 1: unconditional rows (the empty caption)
            states = (self.image_states if kind == 0 else self.empty_states).to(q.device, q.dtype)
            keys.append(attn2.to_k(states).expand(rows, -1, -1))
            values.append(attn2.to_v(states).expand(rows, -1, -1))
        return out + self.scale * attention.optimized_attention(q, torch.cat(keys), torch.cat(values), heads)


def text_states(clip: Any, text: str) -> torch.Tensor:
    """The text encoder's states ``(1, tokens, width)`` of ``text``."""
    return clip.encode_from_tokens(clip.tokenize(text))


def apply_caption_adapter(model: Any, clip: Any, image: torch.Tensor, scale: float = 1.0) -> Any:
    """A clone of ``model`` with :class:`CaptionImageAdapter` of ``image`` on every cross-attention."""
    adapter = CaptionImageAdapter(model.model.diffusion_model, text_states(clip, picture_caption(image)),
                                  text_states(clip, ""), scale)
    return apply_image_adapter(model, adapter)
