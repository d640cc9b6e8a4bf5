"""The host calls the pack makes, and every difference between the ComfyUI versions it supports.

Supported hosts: ComfyUI with ``optimized_attention_override`` (0.3.59, autumn 2025) up to the newest
(tested: 0.3.64 and 0.33.0; read: 0.38.1). Each helper has one job; where the versions differ, it says which.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import logging
import os

import comfy.ldm.modules.attention as comfy_attention
import comfy.model_management
import comfy.model_patcher
import comfy.utils
import torch

try:  # comfy-kitchen: the host's fused kernels (ComfyUI 0.33 and later; 0.3.64 has none)
    from comfy_kitchen.registry import registry as _kitchen_registry
except ImportError:
    _kitchen_registry = None

from ..storm_ops.errors import StormError

log = logging.getLogger("comfyui-storm")

#: the oldest host with what the pack builds on (``wrap_attn`` and ``optimized_attention_override``)
MIN_HOST = "0.3.59"


def host_supported() -> str | None:
    """None on a supported host, else why not (checked when the pack loads)."""
    if not hasattr(comfy_attention, "wrap_attn"):
        return (f"ComfyUI-STORM needs ComfyUI {MIN_HOST} or newer (attention kernels that take "
                "transformer_options); update ComfyUI")
    return None


#: the environment variable naming the custom-node SDK's isolating overlay (ComfyUI 0.38 and later)
ISOLATION_OVERLAY = "COMFY_OVERLAY_MODULE"


def isolation_notice() -> str | None:
    """Why the pack may not work here, when ComfyUI was started with a custom-node isolation overlay."""
    overlay = os.environ.get(ISOLATION_OVERLAY, "").strip()
    if not overlay:
        return None
    return (f"ComfyUI runs with the custom-node isolation overlay {overlay!r}. ComfyUI-STORM needs the model "
            "object and torch's autograd in ComfyUI's own process (it records attention and takes gradients "
            "inside the sampler), which isolated custom nodes do not get; run ComfyUI without the overlay to use it.")


def require_model(model, node: str):
    """``model`` (a MODEL input) must be ComfyUI's own ``ModelPatcher`` in this process; returns it."""
    if not isinstance(model, comfy.model_patcher.ModelPatcher):
        raise StormError(
            f"{node}: the model input is a {type(model).__name__}, not ComfyUI's ModelPatcher. ComfyUI-STORM records "
            "attention and takes gradients through the model in ComfyUI's own process, which process-isolated or "
            "sandboxed custom nodes do not allow: run ComfyUI without custom-node isolation to use this pack.",
            input_name="model")
    return model


def host_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
                   extra_options: dict) -> torch.Tensor:
    """The host's own attention kernel, called exactly as the unpatched layer calls it.

    ``q, k, v``: ``(B, N, Hd * d)`` projected tensors; returns ``(B, N, Hd * d)`` before
    ``to_out``. The module attribute is read at call time (never monkeypatched).
    """
    return comfy_attention.optimized_attention(q, k, v, heads, attn_precision=extra_options.get("attn_precision"),
                                               transformer_options=extra_options)


#: what running out of accelerator memory raises (``torch.cuda.OutOfMemoryError`` is an alias of it)
OUT_OF_MEMORY = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


def free_accelerator_memory() -> None:
    """Hand cached accelerator memory back after an out-of-memory error (the host's own call)."""
    comfy.model_management.soft_empty_cache()


def throw_if_interrupted() -> None:
    """Raise the host's interrupt exception when the user pressed Cancel."""
    comfy.model_management.throw_exception_if_processing_interrupted()


def report_progress(value: int, total: int) -> None:
    """Show ``value`` of ``total`` on the running node's progress bar (e.g. refinement iterations)."""
    comfy.utils.ProgressBar(total).update_absolute(value, total)


def interrupt_exception_types() -> tuple[type[BaseException], ...]:
    """The exception class(es) the host raises on interrupt."""
    return (comfy.model_management.InterruptProcessingException,)


def inpaint_blend(model_k, x: torch.Tensor, sigma: torch.Tensor, denoise_mask, model_options: dict) -> torch.Tensor:
    """Reproduce ``KSamplerX0Inpaint``'s input blending for our own conditional pass.

    With a denoise mask the host feeds ``x * mask + noised_latent * (1 - mask)`` to the model;
    the gradient pass must see the same input (``scale_latent_inpaint``; 0.33 also passes the mask).
    """
    if denoise_mask is None:
        return x
    if "denoise_mask_function" in model_options:
        denoise_mask = model_options["denoise_mask_function"](
            sigma, denoise_mask, extra_options={"model": model_k.inner_model, "sigmas": model_k.sigmas})
    # the host made the mask in inference mode; ``x * mask`` saves it for backward, which autograd
    # refuses for inference tensors, so the gradient pass uses an ordinary copy
    denoise_mask = denoise_mask.clone() if denoise_mask.is_inference() else denoise_mask
    known = model_k.inner_model.inner_model.scale_latent_inpaint(
        x=x, sigma=sigma, noise=model_k.noise, latent_image=model_k.latent_image, denoise_mask=denoise_mask)
    return x * denoise_mask + known * (1.0 - denoise_mask)


def encode_prompt(clip, text: str):
    """Encode like the host's CLIPTextEncode: returns (tokens dict, CONDITIONING)."""
    tokens = clip.tokenize(text)
    return tokens, clip.encode_from_tokens_scheduled(tokens)


def latent_preview_callback(model, steps: int):
    """The host's progress/preview callback for a sampling run of ``steps`` steps."""
    return importlib.import_module("latent_preview").prepare_callback(model, steps)


class NodeProgress:
    """One progress bar over a node's whole work of ``total`` steps (several sampling runs: AID's chunks, dynamic
    selection's explored frames), with the host's latent previews. The host's per-run callback
    (:func:`latent_preview_callback`) starts a bar of its own run's steps, which would move the node's bar back at each
    run; this one only moves forward."""

    def __init__(self, model, total: int):
        self.total = max(int(total), 1)
        self.bar = comfy.utils.ProgressBar(self.total)
        # the host's previewer (None when previews are off), as its prepare_callback picks it
        self.previewer = importlib.import_module("latent_preview").get_previewer(model.load_device,
                                                                                 model.model.latent_format)

    def update(self, value: int, x0: torch.Tensor | None = None) -> None:
        preview = None
        if self.previewer is not None and x0 is not None:
            if getattr(x0, "is_nested", False):
                x0 = x0.tensors[0]
            preview = self.previewer.decode_latent_to_preview_image("JPEG", x0)
        self.bar.update_absolute(min(int(value), self.total), self.total, preview)


def folder_paths():
    """The host's ``folder_paths`` module."""
    return importlib.import_module("folder_paths")


def accepts_kwarg(fn, name: str) -> bool:
    """Whether ``fn`` takes a keyword argument ``name``."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def wrap_sampling_calls(model, key: str, before_call) -> None:
    """Call ``before_call()`` at the start of every sampling call of ``model`` (a clone), through the host's
    ``OUTER_SAMPLE`` patcher wrapper."""
    from comfy.patcher_extension import WrappersMP

    def storm_outer_sample(executor, *args, **kwargs):
        before_call()
        return executor(*args, **kwargs)

    model.add_wrapper_with_key(WrappersMP.OUTER_SAMPLE, key, storm_outer_sample)


@contextlib.contextmanager
def host_training_switch():
    """``comfy.model_management.in_training = True`` for the block: the host then takes its differentiable
    reference paths instead of comfy-kitchen's forward-only kernels. 0.33 and later have the switch (0.33:
    ``comfy/model_management.py:66``); 0.3.64 has neither the switch nor such kernels."""
    if not hasattr(comfy.model_management, "in_training"):
        yield
        return
    previous = comfy.model_management.in_training
    comfy.model_management.in_training = True
    try:
        yield
    finally:
        comfy.model_management.in_training = previous


def kitchen_eager_reference(name: str):
    """comfy-kitchen's eager (plain, differentiable torch) implementation of its operator ``name``; None where
    it has none or the host has no comfy-kitchen (0.3.64)."""
    if _kitchen_registry is None:
        return None
    try:
        return _kitchen_registry.get_implementation(name, backend="eager")
    except Exception:  # noqa: BLE001 - the library's own "not implemented / not available" errors
        return None
