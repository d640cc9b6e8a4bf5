"""Everything that differs between the ComfyUI versions we support, in one place.

Supported hosts: the 2024 pip fork (``comfyui==0.0.1``) through current upstream. Each helper
here has one job and says which host needs it.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import logging

import comfy.ldm.modules.attention as comfy_attention
import comfy.model_management
import comfy.utils
import torch

from ..storm_ops.frozen_weights import FrozenWeights

log = logging.getLogger("comfyui-storm")

# Upstream (>= 0.3.59) wraps kernels with ``wrap_attn`` and accepts ``transformer_options``;
# the fork's kernels take ``(q, k, v, heads, mask=None, attn_precision=None)`` only.
_KERNELS_TAKE_OPTIONS = hasattr(comfy_attention, "wrap_attn")
#: DiT joint attention can be observed only where the kernels call
#: ``transformer_options["optimized_attention_override"]`` (upstream >= 0.3.59; the fork's MMDiT does
#: not even pass the options to its kernel, and the fork has no Flux)
JOINT_ATTENTION_OVERRIDE = _KERNELS_TAKE_OPTIONS


def host_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
                   extra_options: dict) -> torch.Tensor:
    """The host's own attention kernel, called exactly as the unpatched layer calls it.

    ``q, k, v``: ``(B, N, Hd * d)`` projected tensors; returns ``(B, N, Hd * d)`` before
    ``to_out``. The module attribute is read at call time (never monkeypatched).
    """
    kwargs = {"attn_precision": extra_options.get("attn_precision")}
    if _KERNELS_TAKE_OPTIONS:
        kwargs["transformer_options"] = extra_options
    return comfy_attention.optimized_attention(q, k, v, heads, **kwargs)


def copy_nested(value):
    """Copy nested dicts and lists, sharing the leaves.

    The fork passes the patcher's own ``model_options`` to samplers (upstream passes a copy),
    so a sampler must copy before adding patches or they leak into later runs.
    """
    if isinstance(value, dict):
        return {k: copy_nested(v) for k, v in value.items()}
    if isinstance(value, list):
        return [copy_nested(v) for v in value]
    return value


#: what running out of accelerator memory raises (``torch.cuda.OutOfMemoryError`` is an alias of it)
OUT_OF_MEMORY = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


@contextlib.contextmanager
def gradient_pass(offload: bool = False):
    """Context for a forward/backward pass through the host's UNet from inside a node; yields the
    :class:`FrozenWeights` mode, whose counters say whether any weight had to be copied.

    * ``inference_mode(False)`` + ``enable_grad()``: the executor runs nodes in inference mode;
    * :class:`FrozenWeights`: the host creates weights inside ``inference_mode()``, and autograd refuses
      to save such tensors for backward; the mode differentiates through them without copying them;
    * ``allow_mutation_on_saved_tensors()``: the fork's transformer blocks add residuals in
      place (``x += n``), which autograd otherwise rejects (upstream changed this in 0.3.40).
    * ``offload``: every activation saved for backward is copied to CPU memory and back during
      backward, for a pass that ran out of GPU memory. These hooks are innermost, so they take over
      from ``allow_mutation_on_saved_tensors``'; a copy is a snapshot that later in-place changes
      cannot reach (``save_on_cpu`` does not copy tensors already on the CPU, so it is not used).
    """
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.inference_mode(False))
        stack.enter_context(torch.enable_grad())
        stack.enter_context(torch.autograd.graph.allow_mutation_on_saved_tensors())
        if offload:
            stack.enter_context(torch.autograd.graph.saved_tensors_hooks(_to_cpu_memory, _from_cpu_memory))
        yield stack.enter_context(FrozenWeights())


def _to_cpu_memory(tensor: torch.Tensor):
    pinned = tensor.device.type == "cuda"
    try:  # the same strides, so backward computes exactly what it would have (bit for bit)
        copy = torch.empty_strided(tensor.size(), tensor.stride(), dtype=tensor.dtype, pin_memory=pinned)
        copy.copy_(tensor, non_blocking=pinned)
    except RuntimeError:  # overlapping strides (an expanded tensor): a dense copy
        copy = torch.empty(tensor.size(), dtype=tensor.dtype, pin_memory=pinned)
        copy.copy_(tensor, non_blocking=pinned)
    return tensor.device, copy


def _from_cpu_memory(packed) -> torch.Tensor:
    device, copy = packed
    return copy.to(device, non_blocking=copy.is_pinned())


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
    types = []
    exc = getattr(comfy.model_management, "InterruptProcessingException", None)
    if exc is not None:
        types.append(exc)
    with contextlib.suppress(ImportError):
        types.append(importlib.import_module("comfy.interruption").InterruptProcessingException)
    return tuple(types)


def inpaint_blend(model_k, x: torch.Tensor, sigma: torch.Tensor, denoise_mask, model_options: dict) -> torch.Tensor:
    """Reproduce ``KSamplerX0Inpaint``'s input blending for our own conditional pass.

    With a denoise mask the host feeds ``x * mask + noised_latent * (1 - mask)`` to the model;
    the gradient pass must see the same input. Upstream uses ``scale_latent_inpaint``, the fork
    ``model_sampling.noise_scaling``.
    """
    if denoise_mask is None:
        return x
    if "denoise_mask_function" in model_options:
        denoise_mask = model_options["denoise_mask_function"](
            sigma, denoise_mask, extra_options={"model": model_k.inner_model, "sigmas": model_k.sigmas})
    # the host made the mask in inference mode; ``x * mask`` saves it for backward, which autograd
    # refuses for inference tensors, so the gradient pass uses an ordinary copy
    denoise_mask = denoise_mask.clone() if denoise_mask.is_inference() else denoise_mask
    base = model_k.inner_model.inner_model
    if hasattr(base, "scale_latent_inpaint"):
        known = base.scale_latent_inpaint(x=x, sigma=sigma, noise=model_k.noise, latent_image=model_k.latent_image)
    else:
        s = sigma.reshape([sigma.shape[0]] + [1] * (model_k.noise.dim() - 1))
        known = base.model_sampling.noise_scaling(s, model_k.noise, model_k.latent_image)
    return x * denoise_mask + known * (1.0 - denoise_mask)


def encode_prompt(clip, text: str):
    """Encode like the host's CLIPTextEncode: returns (tokens dict, CONDITIONING)."""
    tokens = clip.tokenize(text)
    if hasattr(clip, "encode_from_tokens_scheduled"):
        return tokens, clip.encode_from_tokens_scheduled(tokens)
    cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
    return tokens, [[cond, {"pooled_output": pooled}]]


def latent_preview_callback(model, steps: int):
    """The host's progress/preview callback for a sampling run of ``steps`` steps."""
    try:
        module = importlib.import_module("latent_preview")
    except ImportError:
        module = importlib.import_module("comfy.cmd.latent_preview")
    return module.prepare_callback(model, steps)


def folder_paths():
    """The host's ``folder_paths`` module (top level upstream, ``comfy.cmd`` in the fork)."""
    try:
        return importlib.import_module("folder_paths")
    except ImportError:
        return importlib.import_module("comfy.cmd.folder_paths")


def accepts_kwarg(fn, name: str) -> bool:
    """Whether ``fn`` takes a keyword argument ``name``."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def wrap_sampling_calls(model, key: str, before_call) -> bool:
    """Call ``before_call()`` at the start of every sampling call of ``model`` (a clone).

    Uses the host's ``OUTER_SAMPLE`` patcher wrapper (ComfyUI 0.3.10 and later); returns False on
    hosts without patcher wrappers (the pip fork), where the caller needs its own fallback.
    """
    try:
        from comfy.patcher_extension import WrappersMP
    except ImportError:
        return False
    if not hasattr(model, "add_wrapper_with_key"):
        return False

    def storm_outer_sample(executor, *args, **kwargs):
        before_call()
        return executor(*args, **kwargs)

    model.add_wrapper_with_key(WrappersMP.OUTER_SAMPLE, key, storm_outer_sample)
    return True
