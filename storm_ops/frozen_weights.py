"""Gradients with respect to activations through layers whose weights autograd may not save.

Guidance differentiates an attention loss with respect to the *latent* only (Chefer et al. 2023,
Eq. 5: ``z_t' = z_t - alpha_t * grad_z L``); the network's weights are constants. Hosts that load
weights inside ``torch.inference_mode()`` make them *inference tensors*, which autograd refuses to
save for backward ("Inference tensors cannot be saved for backward"). Copying every weight into a
normal tensor works but costs a second copy of the model per gradient pass (about 1.7 GB for an
fp16 SD1.5 UNet, 5 GB for SDXL) that the host's memory manager does not know about.

:class:`FrozenWeights` is a ``TorchFunctionMode`` that needs no copy. While it is active, the layers
that hold most of a network's weights run through autograd functions that keep the weight by
reference and compute only the input's gradient (inference tensors are constants here, whatever
their ``requires_grad`` flag says):

* ``linear``: ``y = x W^T + b``, ``dx = dy W``;
* ``conv1d/2d/3d``: ``dx`` is the transposed convolution of ``dy`` with ``W``;
* ``group_norm`` / ``layer_norm``: the normalisation runs through stock autograd without its affine
  part, and ``y = n * w + b`` is applied by a function whose backward is ``dn = dy * w``.

Any other operation that mixes an inference tensor with a tensor that requires grad gets normal
copies of its inference tensors (so it cannot fail); :attr:`FrozenWeights.copied` and
:attr:`FrozenWeights.copied_bytes` count them, so a caller can tell that the fast path covered
its network. Outside the mode nothing changes; weights are never written to.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode


def _is_frozen(t) -> bool:
    """An inference tensor: a constant here (its ``requires_grad`` flag is ignored: hosts leave it on)."""
    return isinstance(t, torch.Tensor) and t.is_inference()


def _owned(out: torch.Tensor) -> torch.Tensor:
    """A custom Function's output must not be a view (the host modifies outputs in place)."""
    return out if out._base is None else out.clone()


class _FrozenLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.weight = weight  # by reference: an inference tensor cannot go through save_for_backward
        # matmul, not F.linear: F.linear returns a view for 3-d inputs, and the host's blocks add to the
        # output in place, which autograd forbids on views made inside a custom Function
        out = torch.matmul(x, weight.t())
        return _owned(out.add_(bias) if bias is not None else out)

    @staticmethod
    def backward(ctx, grad):
        return grad.matmul(ctx.weight.to(grad.dtype)), None, None


class _FrozenConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups):
        ctx.weight, ctx.input_shape = weight, x.shape
        ctx.conv = (stride, padding, dilation, groups)
        fn = (F.conv1d, F.conv2d, F.conv3d)[x.dim() - 3]
        return _owned(fn(x, weight, bias, stride, padding, dilation, groups))

    @staticmethod
    def backward(ctx, grad):
        stride, padding, dilation, groups = ctx.conv
        weight = ctx.weight.to(grad.dtype)
        placeholder = grad.new_empty(1).expand(ctx.input_shape)  # only its shape is read
        dx = torch.ops.aten.convolution_backward(
            grad, placeholder, weight, None, stride, padding, dilation, False, [0] * len(stride), groups,
            [True, False, False])[0]
        return dx, None, None, None, None, None, None


class _FrozenAffine(torch.autograd.Function):
    """``n * weight + bias`` with constant ``weight`` / ``bias`` (broadcast against ``n``)."""

    @staticmethod
    def forward(ctx, n, weight, bias):
        ctx.weight = weight
        if weight is None:
            return n + bias
        return torch.addcmul(bias, n, weight) if bias is not None else n * weight

    @staticmethod
    def backward(ctx, grad):
        return (grad * ctx.weight if ctx.weight is not None else grad), None, None


def _conv_params(value, n: int) -> list[int]:
    return list(value) if isinstance(value, (tuple, list)) else [int(value)] * n


def _bind(names: tuple[str, ...], args, kwargs, defaults: dict) -> dict:
    """The call's arguments by name (positional ones first, as the functional signature orders them)."""
    return {**defaults, **dict(zip(names, args, strict=False)), **kwargs}


def _covered(x, weight, bias, frozen: tuple) -> bool:
    """Whether a layer call takes the copy-free path: ``x`` needs a gradient, one of ``frozen`` is an
    inference tensor, and neither ``weight`` nor ``bias`` needs a gradient of its own."""
    return (isinstance(x, torch.Tensor) and x.requires_grad and any(_is_frozen(t) for t in frozen)
            and all(t is None or _is_frozen(t) or not t.requires_grad for t in (weight, bias)))


def _linear(args, kwargs):
    bound = _bind(("input", "weight", "bias"), args, kwargs, {"bias": None})
    x, weight, bias = bound["input"], bound["weight"], bound["bias"]
    if not _covered(x, weight, bias, frozen=(weight,)):
        return NotImplemented
    return _FrozenLinear.apply(x, weight, bias)


_CONV_ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_CONV_DEFAULTS = {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1}


def _conv(args, kwargs):
    bound = _bind(_CONV_ARGS, args, kwargs, _CONV_DEFAULTS)
    x, weight, bias = bound["input"], bound["weight"], bound["bias"]
    if not _covered(x, weight, bias, frozen=(weight,)) or isinstance(bound["padding"], str):
        return NotImplemented
    n = weight.dim() - 2
    if x.dim() != n + 2:  # unbatched input: let stock autograd handle it
        return NotImplemented
    return _FrozenConv.apply(x, weight, bias, _conv_params(bound["stride"], n), _conv_params(bound["padding"], n),
                             _conv_params(bound["dilation"], n), int(bound["groups"]))


_NORM_DEFAULTS = {"weight": None, "bias": None, "eps": 1e-5}


def _group_norm(args, kwargs):
    bound = _bind(("input", "num_groups", "weight", "bias", "eps"), args, kwargs, _NORM_DEFAULTS)
    x, weight, bias = bound["input"], bound["weight"], bound["bias"]
    if not _covered(x, weight, bias, frozen=(weight, bias)):
        return NotImplemented
    n = F.group_norm(x, bound["num_groups"], None, None, bound["eps"])
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return _FrozenAffine.apply(n, None if weight is None else weight.view(shape),
                               None if bias is None else bias.view(shape))


def _layer_norm(args, kwargs):
    bound = _bind(("input", "normalized_shape", "weight", "bias", "eps"), args, kwargs, _NORM_DEFAULTS)
    x, weight, bias = bound["input"], bound["weight"], bound["bias"]
    if not _covered(x, weight, bias, frozen=(weight, bias)):
        return NotImplemented
    n = F.layer_norm(x, bound["normalized_shape"], None, None, bound["eps"])
    return _FrozenAffine.apply(n, weight, bias)


_HANDLERS = {
    F.linear: _linear,
    F.conv1d: _conv,
    F.conv2d: _conv,
    F.conv3d: _conv,
    F.group_norm: _group_norm,
    F.layer_norm: _layer_norm,
}


def _tensors(values):
    for v in values:
        if isinstance(v, torch.Tensor):
            yield v
        elif isinstance(v, (list, tuple)):
            yield from (t for t in v if isinstance(t, torch.Tensor))


class FrozenWeights(TorchFunctionMode):
    """Run a forward pass whose backward needs gradients of the input only, through inference-tensor
    weights, without copying them (see the module docstring). Use outside ``torch.inference_mode()``::

        with torch.inference_mode(False), torch.enable_grad(), FrozenWeights() as mode:
            loss = f(model(x.requires_grad_()))
            grad, = torch.autograd.grad(loss, x)
        assert mode.copied == 0

    Attributes:
        fast: calls that went through the copy-free functions.
        copied / copied_bytes: inference tensors copied by the fallback (operations not covered).
    """

    def __init__(self):
        super().__init__()
        self.fast = 0
        self.copied = 0
        self.copied_bytes = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not torch.is_grad_enabled():
            return func(*args, **kwargs)
        handler = _HANDLERS.get(func)
        if handler is not None:
            out = handler(args, kwargs)
            if out is not NotImplemented:
                self.fast += 1
                return out
        tensors = list(_tensors(args)) + list(_tensors(kwargs.values()))
        if not any(t.is_inference() for t in tensors):
            return func(*args, **kwargs)
        if not any(t.requires_grad and not t.is_inference() for t in tensors):
            with torch.no_grad():  # constants only (e.g. keys from the prompt): nothing to differentiate
                return func(*args, **kwargs)
        args, kwargs = self._copy(args), {k: self._copy([v])[0] for k, v in kwargs.items()}
        return func(*args, **kwargs)

    def _copy(self, values):
        out = []
        for v in values:
            if isinstance(v, torch.Tensor) and v.is_inference():
                self.copied += 1
                self.copied_bytes += v.numel() * v.element_size()
                v = v.detach().clone()
            elif isinstance(v, (list, tuple)) and any(isinstance(t, torch.Tensor) and t.is_inference() for t in v):
                v = type(v)(self._copy(v))
            out.append(v)
        return out
