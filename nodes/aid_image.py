"""Image morphing and image-control generation: AID's outer interpolation of two image-prompted models.

PAID (He et al., "AID: Attention Interpolation of Text-to-Image Diffusion", NeurIPS 2024, arXiv 2403.17924)
applies attention interpolation to image prompts: *image morphing* puts image A's and image B's
IP-Adapter embeddings at the two ends of the sequence; *image-control generation* leaves one end
text-only and gives the other the image prompt too, so the coefficient ``t`` acts as the adapter's
scale (the release's image-control processor adds the image-prompt attention multiplied by ``t``).

In ComfyUI an image prompt of a UNet is a model patch: IP-Adapter-style packs replace each ``attn2``
(``transformer_options["patches_replace"]["attn2"]``, keyed ``(block, index)`` or ``(block, index,
depth)``, called ``patch(q, k, v, extra_options)`` with the projected text keys/values, returning the
output before ``to_out``; the adapter adds its own attention to image keys/values). So the endpoints
are two MODELs, ``model_a`` and ``model_b``: the same base, each patched for its image. This module
interpolates *between the two models' cross-attention*, whatever the adapter computes inside it:

* every ``attn2`` of every transformer depth gets one replace patch (:class:`EndpointCrossAttention`)
  that computes the layer's output as ``model_a`` computes it (its patch for that layer, with the host's
  own fallback from the ``(block, index, depth)`` key to ``(block, index)``; the host's attention when it has
  none) and as ``model_b`` computes it, each on the whole batch with the call's own ``extra_options`` (an
  adapter reads ``cond_or_uncond`` and the batch size to lay out its image keys);
* the rows of endpoint A get A's output, endpoint B's rows B's output, exactly, and a frame at ``t``
  gets ``(1 - t) O_A + t O_B``: AID's outer interpolated attention (§3 of the paper, ``(1 - t) Attn(Q_t,
  K_A, V_A) + t Attn(Q_t, K_B, V_B)``) with each endpoint's "attention" the adapter-extended cross-attention
  (text keys plus image keys), evaluated with the frame's own queries. Both endpoints share the prompt,
  so the text part is the same in both branches and only the image part is interpolated;
* this mixing is the frame's condition (as AID's lerp of the prompt embeddings is), so it acts at every step and
  in both the conditional and the unconditional pass (an adapter's unconditional branch, e.g. IP-Adapter's
  zero-image embedding, is part of each model's own computation and of its plain generation);
* self-attention (``attn1``) is AID-interpolated over the endpoints' hidden states during the warm-up, in the
  conditional pass only, with ``mode`` (default fused outer), exactly as STORM Attention Interpolation does
  (``aid_attention.make_interpolation_patch``): the paper's morphs install AID's processors in every attention
  layer. ``warmup_ratio`` 0 turns it off, and then a frame differs from the endpoints by its cross-attention only.

Endpoints: endpoint A's rows see exactly what ``model_a`` computes in every layer and pass, B's exactly what
``model_b`` computes, so the first and last frames equal the plain generations of the two models with the same
seed, prompt and sampler. Image-control: connect the unpatched base as ``model_a`` and the image-prompted model
as ``model_b``; at ``t`` a frame's cross-attention is ``(1 - t) O_plain + t O_adapted``, which for an additive
adapter (``O_adapted = O_plain + s Attn(Q, K_img, V_img)``) is the adapter at scale ``t s``; ``t = 0`` is the
plain model.

What may differ between the two models is only their ``attn2`` replace patches: both run in one batch of one
network, so weight patches (LoRAs), object patches and every other model option must be the same
(:func:`check_endpoint_models` says which one is not). Costs: every ``attn2`` is computed twice (once per model).
"""

from __future__ import annotations

import torch

from ..storm_ops.errors import StormError
from .aid_attention import ChunkPlan, install_interpolation
from .architecture import describe_model
from .compat import host_attention, require_model

#: ModelPatcher attributes that must be the same in both endpoint models (those a host version lacks are skipped)
SHARED_PATCHER_STATE = ("patches", "object_patches", "weight_wrapper_patches", "hook_patches", "wrappers",
                        "callbacks", "additional_models", "injections")


def attn2_patches(model_options: dict) -> dict:
    """The ``attn2`` replace patches of a model's options (empty when it has none)."""
    return dict(((model_options.get("transformer_options") or {}).get("patches_replace") or {}).get("attn2") or {})


def layer_patch(patches: dict, key: tuple[str, int], depth: int):
    """The patch the host calls for depth ``depth`` of the transformer ``key``: ``(block, index, depth)`` first,
    then ``(block, index)`` (``BasicTransformerBlock.forward``); None when the layer is not patched."""
    return patches.get((key[0], key[1], depth), patches.get(key))


class EndpointCrossAttention:
    """The ``attn2`` replace patch of one morph chunk: rows ``[A, frames..., B]`` per cond/uncond chunk of the batch
    get model A's output, ``(1 - t) O_A + t O_B`` and model B's output (module docstring)."""

    def __init__(self, plan: ChunkPlan, patch_a=None, patch_b=None):
        self.plan, self.patch_a, self.patch_b = plan, patch_a, patch_b

    def _output(self, patch, q, k, v, extra_options):
        if patch is None:
            return host_attention(q, k, v, extra_options["n_heads"], extra_options)
        return patch(q, k, v, extra_options)

    def __call__(self, q, k, v, extra_options):
        out_a = self._output(self.patch_a, q, k, v, extra_options)
        out_b = out_a if self.patch_b is self.patch_a else self._output(self.patch_b, q, k, v, extra_options)
        chunks = len(list(extra_options.get("cond_or_uncond", [0])))
        rows, frames = q.shape[0] // chunks, self.plan.t.shape[0]
        if rows != frames + 2:
            raise StormError(f"image morphing expected {frames + 2} rows per chunk, got {rows}")
        out = out_a.clone()
        out_b = out_b.to(out.dtype)
        t = self.plan.t.to(out.device, torch.float32).view(-1, *([1] * (out.dim() - 1)))
        for chunk in range(chunks):
            lo, hi = chunk * rows, (chunk + 1) * rows
            middle = slice(lo + 1, hi - 1)
            # AID's outer interpolation of the two models' cross-attention (He et al. 2024, §3)
            out[middle] = ((1 - t) * out_a[middle].float() + t * out_b[middle].float()).to(out.dtype)
            out[hi - 1] = out_b[hi - 1]  # endpoint B: exactly what model_b computes
        return out

    # the host moves, loads and cleans up the patches it finds in ``patches_replace`` (``ModelPatcher.model_patches_to``,
    # ``model_patches_models``, ``model_patches_call_function``): pass that on to both endpoints' patches
    def to(self, device):
        def move(patch):
            return patch.to(device) if hasattr(patch, "to") else patch

        return EndpointCrossAttention(self.plan, move(self.patch_a), move(self.patch_b))

    def models(self) -> list:
        return [m for p in (self.patch_a, self.patch_b) if hasattr(p, "models") for m in p.models()]

    def cleanup(self) -> None:
        for patch in {id(p): p for p in (self.patch_a, self.patch_b) if hasattr(p, "cleanup")}.values():
            patch.cleanup()


def _first_difference(a, b, path: str) -> str | None:
    """Where two model states first differ (a readable path), None when they are the same."""
    if a is b:
        return None
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(a.keys() | b.keys(), key=repr):
            if key not in a or key not in b:
                return f"{path}[{key!r}]"
            found = _first_difference(a[key], b[key], f"{path}[{key!r}]")
            if found:
                return found
        return None
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if type(a) is not type(b) or len(a) != len(b):
            return path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            found = _first_difference(x, y, f"{path}[{i}]")
            if found:
                return found
        return None
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        same = a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b)
        return None if same else path
    try:
        return None if type(a) is type(b) and bool(a == b) else path
    except Exception:  # an object without a usable ==, and not the same object
        return path


def _without_attn2(model_options: dict) -> dict:
    options = dict(model_options)
    transformer = dict(options.get("transformer_options") or {})
    replace = dict(transformer.get("patches_replace") or {})
    replace.pop("attn2", None)
    transformer["patches_replace"] = {name: patches for name, patches in replace.items() if patches}
    options["transformer_options"] = transformer
    return options


def check_endpoint_models(model_a, model_b, node: str):
    """Both MODELs are the same base network, differing at most in their ``attn2`` replace patches; returns
    ``(ModelInfo, A's attn2 patches, B's attn2 patches)``. Raises StormError naming the input otherwise."""
    require_model(model_a, node)
    try:
        require_model(model_b, node)
    except StormError as error:
        raise StormError(str(error), input_name="model_b") from None
    arch = describe_model(model_a.model, node)
    if arch.is_dit:
        raise StormError(f"{node} needs a UNet (SD1.x, SD2.x, SDXL), whose image prompts (IP-Adapter) are "
                         f"cross-attention patches; {arch.model_name} is a DiT", input_name="model_a")
    if model_b.model is not model_a.model:
        raise StormError("model_b is not the same base model as model_a: load one checkpoint and apply each image "
                         "prompt (e.g. IP-Adapter) to it, one for model_a and one for model_b (image-control: "
                         "connect the checkpoint itself to model_a)", input_name="model_b")
    for name in SHARED_PATCHER_STATE:
        where = _first_difference(getattr(model_a, name, None), getattr(model_b, name, None), name)
        if where:
            raise StormError(f"model_b differs from model_a in {where} (e.g. another LoRA or model patch): both "
                             "endpoints run in one batch of one network, so only their image prompts (attn2 "
                             "patches) may differ; apply the same LoRAs and patches before the image prompts",
                             input_name="model_b")
    where = _first_difference(_without_attn2(model_a.model_options), _without_attn2(model_b.model_options),
                              "model_options")
    if where:
        raise StormError(f"model_b differs from model_a in {where}: only cross-attention replace patches (an image "
                         "prompt such as IP-Adapter) can be interpolated; give both models the same other patches",
                         input_name="model_b")
    return arch, attn2_patches(model_a.model_options), attn2_patches(model_b.model_options)


def install_image_morph(model_options: dict, plan: ChunkPlan, layers, patches_a: dict, patches_b: dict) -> None:
    """One chunk's patches: AID on ``attn1`` (warm-up, conditional pass) and :class:`EndpointCrossAttention` on
    every ``attn2`` of ``layers`` (all depths), in place of model A's own ``attn2`` patches."""
    install_interpolation(model_options, plan, layers, names=("attn1",))
    replace = model_options.setdefault("transformer_options", {}).setdefault("patches_replace", {})
    mixed = {}
    for layer in layers:
        for depth in range(layer.depth):
            mixed[(layer.key[0], layer.key[1], depth)] = EndpointCrossAttention(
                plan, layer_patch(patches_a, layer.key, depth), layer_patch(patches_b, layer.key, depth))
    replace["attn2"] = mixed
