"""The pack's gradient pass through the host's network, and the host kernels it must not meet.

Guidance differentiates an attention loss with respect to the latent (Chefer et al. 2023, Eq. 5:
``z_t' = z_t - alpha_t * grad_z L``) through the host's own network, from inside a node. The host is not
built for that: it runs nodes in inference mode, keeps weights as inference tensors, adds residuals in
place, and routes some operations through fused kernels that have no backward. :func:`gradient_pass`
is the one context in which the pack takes such a gradient; outside it nothing here is active, so the
ordinary sampling passes keep every fast kernel the host chose.

Inside it:

* ``inference_mode(False)`` and ``enable_grad()``;
* :class:`~storm_ops.guidance.frozen_weights.FrozenWeights`: gradients through inference-tensor weights without
  copying them;
* :class:`~storm_ops.guidance.saved_tensors.CopyOnWriteSaves`: transformer blocks add residuals in place into tensors
  autograd saved;
* the host's training switch ``comfy.model_management.in_training`` (present in 0.33, absent in 0.3.64,
  which has no fused kernels): the host then takes its own differentiable reference paths instead of
  comfy-kitchen's forward-only kernels (Flux's RoPE, Lumina's fused RMS-norm + RoPE, int8
  input-activation linears). The host's LoRA trainer sets it the same way; it is restored on exit;
* :class:`KitchenBackward`: a comfy-kitchen operation that still receives an input needing a gradient
  (a model the host does not switch, e.g. Cosmos' fused RMS-norm + RoPE) runs the library's own eager
  reference implementation, plain differentiable torch; one without such a reference stops with
  :class:`KernelWithoutBackward`, naming it;
* the model's quantized layers (fp8 "scaled", nvfp4, mxfp8, int8: weights the host keeps in
  comfy-kitchen layouts) compute with their dequantized weights, as the host itself runs them on a device
  without native support for the format: on one with it, the host's quantized-input path saves the
  inference-mode weight for backward, which autograd refuses. A latent gradient needs no weight gradient,
  so nothing is lost but the quantized matmul's speed, in the gradient pass only;
* optionally, activations saved for backward are kept in CPU memory (after an out-of-memory error).

Attention kernels are chosen per call, so they are handled by an ``optimized_attention_override``
installed only in the gradient pass's options (:func:`gradient_options`): a call whose kernel has no
backward (SageAttention, FlashAttention's custom op, comfy-kitchen's int8 attention, or a kernel another
node put in the model's override) runs the host's PyTorch attention instead.
"""

from __future__ import annotations

import contextlib
import logging

import comfy.ldm.modules.attention as comfy_attention
import torch
from torch.overrides import TorchFunctionMode

from ..storm_ops.errors import StormError
from ..storm_ops.guidance.frozen_weights import FrozenWeights
from ..storm_ops.guidance.saved_tensors import CopyOnWriteSaves
from .attention_capture import GRAD_PASS_FLAG
from .compat import host_training_switch, kitchen_eager_reference

log = logging.getLogger("comfyui-storm")

#: the ``torch.ops`` namespace of comfy-kitchen's custom operators
KITCHEN_NAMESPACE = "comfy_kitchen"


class KernelWithoutBackward(StormError):
    """A host kernel on the gradient path has no backward and no differentiable reference."""


def _op_name(func) -> str | None:
    """``"apply_rope"`` for ``torch.ops.comfy_kitchen.apply_rope`` (packet or overload), else None."""
    name = getattr(func, "_qualified_op_name", None) or getattr(getattr(func, "_overloadpacket", None),
                                                                 "_qualified_op_name", None)
    if not isinstance(name, str) or not name.startswith(KITCHEN_NAMESPACE + "::"):
        return None
    return name.split("::", 1)[1]


def _needs_grad(values) -> bool:
    for v in values:
        if isinstance(v, torch.Tensor) and v.requires_grad:
            return True
        if isinstance(v, (list, tuple)) and _needs_grad(v):
            return True
    return False


class KitchenBackward(TorchFunctionMode):
    """Inside the gradient pass: comfy-kitchen operators reached with an input that needs a gradient run
    the library's eager reference (differentiable torch); :attr:`rerouted` counts them by name."""

    def __init__(self):
        super().__init__()
        self.rerouted: dict[str, int] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = _op_name(func)
        if name is None or not torch.is_grad_enabled() or not (_needs_grad(args) or _needs_grad(kwargs.values())):
            return func(*args, **kwargs)
        reference = kitchen_eager_reference(name)
        if reference is None:
            raise KernelWithoutBackward(
                f"the model runs comfy-kitchen's '{name}' kernel on the guidance's gradient path, and that kernel "
                "has no backward (nor a differentiable reference). Attention guidance cannot differentiate "
                "through it: load the model without the quantized/fused format that selects it, or update "
                "ComfyUI-STORM.")
        self.rerouted[name] = self.rerouted.get(name, 0) + 1
        with self:  # the reference's own torch calls stay inside this mode (nested kernels)
            return reference(*args, **kwargs)


def quantized_layers(net: torch.nn.Module | None) -> list[torch.nn.Module]:
    """The layers of ``net`` whose weights the host keeps in a quantized layout (``comfy.ops``'
    mixed-precision layers carry a ``layout_type``)."""
    if net is None:
        return []
    return [m for m in net.modules() if getattr(m, "layout_type", None) is not None]


_UNSET = object()


@contextlib.contextmanager
def dequantized_compute(layers: list[torch.nn.Module]):
    """``layers`` compute with dequantized weights for the block (the host's ``comfy_force_cast_weights``
    switch of its mixed-precision layers), then as before."""
    previous = [getattr(m, "comfy_force_cast_weights", _UNSET) for m in layers]
    for m in layers:
        m.comfy_force_cast_weights = True
    try:
        yield
    finally:
        for m, value in zip(layers, previous, strict=True):
            if value is _UNSET:
                del m.comfy_force_cast_weights
            else:
                m.comfy_force_cast_weights = value


@contextlib.contextmanager
def gradient_pass(offload: bool = False, net: torch.nn.Module | None = None):
    """The context of one forward/backward pass through the host's network ``net`` (the diffusion model,
    for its quantized layers) from inside a node (see the module docstring); yields the
    :class:`FrozenWeights` mode, whose counters say whether any weight had to be copied.

    ``offload``: every activation saved for backward is copied to CPU memory and back during backward, for a
    pass that ran out of GPU memory. These hooks are innermost, so they take over from
    :class:`CopyOnWriteSaves`'; a copy is a snapshot that later in-place changes cannot reach
    (``save_on_cpu`` does not copy tensors already on the CPU, so it is not used).
    """
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.inference_mode(False))
        stack.enter_context(torch.enable_grad())
        stack.enter_context(CopyOnWriteSaves())
        if offload:
            stack.enter_context(torch.autograd.graph.saved_tensors_hooks(_to_cpu_memory, _from_cpu_memory))
        stack.enter_context(host_training_switch())
        stack.enter_context(dequantized_compute(quantized_layers(net)))
        stack.enter_context(KitchenBackward())
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


# ------------------------------------------------------------------------------------------------
# attention kernels


def _raw(fn):
    """The kernel under the host's ``wrap_attn`` decorator (what an override receives as ``func``)."""
    return getattr(fn, "__wrapped__", fn)


#: the host's kernels whose output autograd can differentiate (plain torch, SDPA, xformers)
_DIFFERENTIABLE = frozenset(_raw(getattr(comfy_attention, name)) for name in (
    "attention_basic", "attention_sub_quad", "attention_split", "attention_pytorch", "attention_xformers")
    if hasattr(comfy_attention, name))
#: what runs instead of a kernel without a backward: the host's PyTorch (SDPA) attention
FALLBACK_KERNEL = _raw(comfy_attention.attention_pytorch)


def differentiable(kernel) -> bool:
    """Whether the host attention kernel ``kernel`` has a backward."""
    return _raw(kernel) in _DIFFERENTIABLE


class GradientAttention:
    """The gradient pass's ``optimized_attention_override``: every attention call runs a kernel with a
    backward. ``previous`` (the override of the ordinary passes: the pack's recording tap, another node's)
    is still called, with the kernel swapped when the host's own has no backward; if it computes attention
    itself without a backward (its output needs no gradient although its inputs do, or it reaches a
    comfy-kitchen kernel without one), the call is computed again with :data:`FALLBACK_KERNEL`.
    """

    def __init__(self, previous=None):
        self.previous = previous
        #: names of the kernels replaced in this pass (for the log)
        self.replaced: set[str] = set()

    def __deepcopy__(self, memo):
        return self

    def __call__(self, func, *args, **kwargs):
        kernel = func
        if not differentiable(func):
            self.replaced.add(getattr(_raw(func), "__name__", repr(func)))
            kernel = FALLBACK_KERNEL
        if self.previous is None:
            return kernel(*args, **kwargs)
        try:
            out = self.previous(kernel, *args, **kwargs)
        except KernelWithoutBackward:
            out = None
        if out is None or (isinstance(out, torch.Tensor) and not out.requires_grad and _needs_grad(args[:3])):
            self.replaced.add(type(self.previous).__name__)
            return FALLBACK_KERNEL(*args, **kwargs)
        return out


def gradient_options(model_options: dict) -> dict:
    """The model options of a gradient pass: ``model_options`` with the gradient-pass flag (the recording
    patches read it) and :class:`GradientAttention` in front of the override chain. Shares everything else."""
    transformer_options = dict(model_options.get("transformer_options", {}))
    transformer_options[GRAD_PASS_FLAG] = True
    transformer_options["optimized_attention_override"] = GradientAttention(
        transformer_options.get("optimized_attention_override"))
    return {**model_options, "transformer_options": transformer_options}
