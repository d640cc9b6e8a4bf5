"""AID / PAID on the host: the attention interpolation patches (the frame loop is :mod:`.aid_sampling`).

One sampling call denoises a batch ``[A, frame_1 .. frame_k, B]``: the endpoints with their own
prompts and noises, the frames with their own condition (AID: the lerp of the endpoint
conditions; PAID: the guide prompt) and the slerp of the endpoint noises. During the warm-up
steps, in the conditional pass only, every attention layer gives each frame the interpolated
attention over the endpoints' keys/values (``storm_ops.aid.interpolation``); endpoint rows and the
unconditional pass keep plain attention, so the endpoints are the plain generations of A and B.
Afterwards every frame denoises on its own (the frame loop: :mod:`.aid_sampling`).

UNets (SD1.x, SD2.x, SDXL): ``attn1`` (self) and ``attn2`` (cross) replace patches, as AID does
(He et al., NeurIPS 2024: the inner/outer interpolated attention in every self- and
cross-attention layer).

DiTs (SD3's MMDiT, Flux.1, Flux.2, Chroma, Qwen-Image, Z-Image, Krea 2) have no separate self- and cross-attention: each
block runs one joint attention over ``[text rows; image rows]`` (Esser et al. 2024, eq. 6), which
is both at once. The pack applies AID's interpolation to that joint attention with the *full*
joint key/value sets of the endpoints, ``K_A = [K_A^text; K_A^image]`` (likewise ``V_A``, ``K_B``,
``V_B``), for every query row of the frame (its text rows and its image rows):

* outer: ``O_t = (1 - t) Attn(Q_t, K_A, V_A) + t Attn(Q_t, K_B, V_B)``;
* inner: ``O_t = Attn(Q_t, (1 - t) K_A + t K_B, (1 - t) V_A + t V_B)`` (text row i of A mixes with
  text row i of B, image patch j with image patch j);
* fused (AID's "fusion with self-attention", the default): the frame's own joint keys/values
  ``[K_t^text; K_t^image]`` are prepended in every branch, ``Attn(Q_t, [K_t; K_A], [V_t; V_A])``.

So the frame's image queries see A's and B's image patches (AID's interpolated self-attention)
and A's and B's prompt rows (its interpolated cross-attention) in one softmax, as the joint
attention itself weighs text against image; its text queries are interpolated the same way, so
the frame's text stream follows the same path. The hook is the host's
``optimized_attention_override`` (the joint attention's kernel call), told each model call's text
rows and latent size by a model function wrapper, as the DiT recorder (``dit_capture``) is; a
call whose key length is neither ``text + image`` rows nor ``image`` rows (SD3.5's image-only
self-attention is the latter, and is interpolated like a UNet's ``attn1``) passes through.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange

from ..storm_ops.aid.interpolation import interpolated_attention
from ..storm_ops.errors import StormError
from .architecture import ModelInfo
from .compat import host_attention
from .dit_capture import image_rows, install_call_wrapper

AID_MODES = {"fused outer": ("outer", True), "fused inner": ("inner", True), "outer": ("outer", False),
             "inner": ("inner", False)}


@dataclass
class ChunkPlan:
    """What the patches of one sampling call need: the frames' coefficients and the warm-up."""

    t: torch.Tensor            # (k,) coefficients of the middle rows
    mode: str                  # "outer" | "inner"
    fused: bool
    warmup_sigma: float        # interpolation runs while sigma > this (inf: never)

    def active(self, extra_options: dict) -> bool:
        sigmas = extra_options.get("sigmas")
        sigma = float(sigmas.flatten()[0]) if isinstance(sigmas, torch.Tensor) else float("inf")
        return sigma > self.warmup_sigma


def make_interpolation_patch(plan: ChunkPlan, previous=None):
    """An attn1/attn2 replace patch giving the frame rows of the conditional chunk interpolated attention."""

    def storm_aid_attention(q, k, v, extra_options):
        heads = extra_options["n_heads"]
        out = previous(q, k, v, extra_options) if previous is not None else host_attention(q, k, v, heads, extra_options)
        cond_or_uncond = list(extra_options.get("cond_or_uncond", [0]))
        if 0 not in cond_or_uncond or plan.t.shape[0] == 0 or not plan.active(extra_options):
            return out
        rows = q.shape[0] // len(cond_or_uncond)
        frames = plan.t.shape[0]
        if rows != frames + 2:
            raise StormError(f"attention interpolation expected {frames + 2} rows per chunk, got {rows}")
        out = out.clone()
        for chunk, kind in enumerate(cond_or_uncond):
            if kind != 0:
                continue
            lo = chunk * rows
            qc, kc, vc = q[lo:lo + rows], k[lo:lo + rows], v[lo:lo + rows]
            own = {"k_self": kc[1:-1], "v_self": vc[1:-1]} if plan.fused else {}
            out[lo + 1:lo + rows - 1] = interpolated_attention(
                qc[1:-1], kc[:1], vc[:1], kc[-1:], vc[-1:], plan.t.to(q.device), heads, mode=plan.mode,
                attn_fn=lambda q_, k_, v_, h_: host_attention(q_, k_, v_, h_, extra_options), **own)
        return out

    return storm_aid_attention


def install_interpolation(model_options: dict, plan: ChunkPlan, layers, names=("attn1", "attn2")) -> None:
    """Register the interpolation patch on every attn1 and attn2 (or only the ``names`` given) of ``layers`` (all
    transformer depths)."""
    replace = model_options.setdefault("transformer_options", {}).setdefault("patches_replace", {})
    for name in names:
        patches = dict(replace.get(name, {}))
        for layer in layers:
            for depth in range(layer.depth):
                key = (layer.key[0], layer.key[1], depth)
                patches[key] = make_interpolation_patch(plan, patches.get(key, patches.get(layer.key)))
        replace[name] = patches


class JointInterpolation:
    """The ``optimized_attention_override`` of a DiT chunk: each frame row of a conditional chunk gets the
    interpolated joint attention over the endpoints' full joint keys/values (module docstring).

    ``clone()`` deep-copies ``model_options`` on some hosts; :meth:`__deepcopy__` keeps this one object, whose
    per-call state (text rows, latent shape) the model function wrapper sets through :meth:`begin_call`.
    """

    def __init__(self, plan: ChunkPlan, patch_size: int, previous=None, pad_rows_to: int = 1):
        self.plan, self.patch_size, self.previous, self.pad_rows_to = plan, patch_size, previous, pad_rows_to
        self._text_rows: int | None = None
        self._latent_shape: tuple[int, ...] | None = None

    def __deepcopy__(self, memo):
        return self

    def begin_call(self, text_rows: int | None, latent_shape) -> None:
        self._text_rows = None if text_rows is None else int(text_rows)
        self._latent_shape = tuple(latent_shape)

    def __call__(self, func, *args, **kwargs):
        out = self.previous(func, *args, **kwargs) if self.previous is not None else func(*args, **kwargs)
        options = kwargs.get("transformer_options") or {}
        cond_or_uncond = list(options.get("cond_or_uncond", [0]))
        if (self._text_rows is None or len(args) < 3 or 0 not in cond_or_uncond or self.plan.t.shape[0] == 0
                or not self.plan.active(options)):
            return out
        q, k, v = args[:3]
        heads = args[3] if len(args) > 3 else kwargs.get("heads")
        heads_first = bool(kwargs.get("skip_reshape"))  # Flux, Chroma, Qwen-Image: (B, H, L, d); MMDiT: (B, L, H * d)
        # Z-Image pads its text rows and its image rows each to a multiple of ``pad_rows_to``
        pad = self.pad_rows_to
        image = -(-image_rows(self._latent_shape, self.patch_size) // pad) * pad
        text = -(-self._text_rows // pad) * pad
        if heads is None or (k.shape[-2] if heads_first else k.shape[1]) not in (text + image, image):
            return out
        if (args[4] if len(args) > 4 else kwargs.get("mask")) is not None:
            raise StormError("attention interpolation cannot interpolate a masked joint attention (a conditioning "
                             "with an attention mask)", input_name="positive_a")
        return self._interpolate(func, out, q, k, v, int(heads), heads_first, cond_or_uncond, kwargs)

    def _interpolate(self, func, out, q, k, v, heads, heads_first, cond_or_uncond, kwargs):
        rows = q.shape[0] // len(cond_or_uncond)
        frames = self.plan.t.shape[0]
        if rows != frames + 2:
            raise StormError(f"attention interpolation expected {frames + 2} rows per chunk, got {rows}")
        # interpolated_attention's layout: (B, L, H * d) (MMDiT hands v over as (B, L, H, d))
        q, k, v = (rearrange(x, "b h n d -> b n (h d)") if heads_first else x.flatten(2) for x in (q, k, v))
        plain = {key: value for key, value in kwargs.items()
                 if key not in ("heads", "mask", "skip_reshape", "skip_output_reshape")}

        def kernel(q_, k_, v_, h_):  # the host's kernel the call came with (inside its override wrapper)
            return func(q_, k_, v_, h_, **plain)

        out = out.clone()
        for chunk, kind in enumerate(cond_or_uncond):
            if kind != 0:
                continue
            lo, hi = chunk * rows, (chunk + 1) * rows
            own = {"k_self": k[lo + 1:hi - 1], "v_self": v[lo + 1:hi - 1]} if self.plan.fused else {}
            mixed = interpolated_attention(q[lo + 1:hi - 1], k[lo:lo + 1], v[lo:lo + 1], k[hi - 1:hi], v[hi - 1:hi],
                                           self.plan.t, heads, mode=self.plan.mode, attn_fn=kernel, **own)
            if kwargs.get("skip_output_reshape"):
                mixed = rearrange(mixed, "b n (h d) -> b h n d", h=heads)
            out[lo + 1:hi - 1] = mixed.to(out.dtype)
        return out


def install_joint_interpolation(model_options: dict, plan: ChunkPlan, patch_size: int,
                                pad_rows_to: int = 1) -> JointInterpolation:
    """Register a :class:`JointInterpolation` (chained to the override that was there) and the model function
    wrapper that tells it each call's text rows and latent size."""
    transformer_options = model_options.setdefault("transformer_options", {})
    override = JointInterpolation(plan, patch_size, transformer_options.get("optimized_attention_override"),
                                  pad_rows_to)
    transformer_options["optimized_attention_override"] = override
    install_call_wrapper(model_options, override.begin_call)
    return override


def install_chunk_interpolation(model_options: dict, plan: ChunkPlan, arch: ModelInfo) -> None:
    """The interpolation of one chunk: ``attn1``/``attn2`` patches on a UNet, the joint-attention override on a DiT."""
    if arch.is_dit:
        install_joint_interpolation(model_options, plan, 2 ** arch.layers[0].level, arch.pad_rows_to)
    else:
        install_interpolation(model_options, plan, arch.layers)
