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
* ``group_norm`` / ``layer_norm`` / ``rms_norm``: the normalisation runs through stock autograd without its affine
  part, and ``y = n * w + b`` is applied by a function whose backward is ``dn = dy * w``;
* ``x * c`` with a constant tensor ``c`` (a weight's scale): ``dx = dy * c``, summed over broadcast dimensions.

Hosts also *derive* the weights a layer computes with on every call: fp8 or bf16 weights cast to
fp16/fp32 ("manual cast"), weights offloaded to the CPU and moved to the GPU layer by layer (low-VRAM
mode), quantized weights dequantized and multiplied by their scale. Autograd would keep every such copy
alive until backward, which puts a full copy of the network back in memory. Inside the mode every tensor
computed from constants alone (inference tensors, and tensors so computed) is a constant too, remembered
by its *recipe*: the operation and its constant arguments (a cast: ``Tensor.to``, or ``copy_`` into a new
tensor, as the host casts). A layer that receives such a weight keeps the recipe and computes the weight
again in backward (:attr:`FrozenWeights.recast` counts these layers): the copy is freed as soon as the
forward is done with it. A derived tensor changed in place (a LoRA added to a cast, say) is no longer
what its recipe gives, and is kept as it is.

Any other operation that mixes an inference tensor with a tensor that requires grad gets normal
copies of its inference tensors (so it cannot fail); :attr:`FrozenWeights.copied` and
:attr:`FrozenWeights.copied_bytes` count them, so a caller can tell that the fast path covered
its network. Outside the mode nothing changes; weights are never written to.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from .saved_tensors import writes_in_place


def _is_frozen(t) -> bool:
    """An inference tensor: a constant here (its ``requires_grad`` flag is ignored: hosts leave it on)."""
    return isinstance(t, torch.Tensor) and t.is_inference()


class _Recipe:
    """How to compute a constant again: ``func(*args, **kwargs)`` under ``no_grad``, where every tensor
    argument is an inference tensor (held by reference: the host's weights) or the recipe of a constant."""

    __slots__ = ("func", "args", "kwargs")

    def __init__(self, func, args, kwargs):
        self.func, self.args, self.kwargs = func, args, kwargs

    def get(self) -> torch.Tensor:
        args = [_computed(a) for a in self.args]
        kwargs = {k: _computed(v) for k, v in self.kwargs.items()}
        with torch.no_grad():
            return self.func(*args, **kwargs)


def _computed(value):
    if isinstance(value, _Recipe):
        return value.get()
    if isinstance(value, (list, tuple)):
        return type(value)(_computed(v) for v in value)
    return value


def _cast_like(source: torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The host's other cast, ``empty_like(weight, ...).copy_(weight)``, computed again."""
    return source.to(device=device, dtype=dtype)


class _Held:
    """A weight a layer holds as the recipe of a constant (and the broadcast view the layer applies, if any)."""

    __slots__ = ("recipe", "shape")

    def __init__(self, recipe: _Recipe, shape=None):
        self.recipe, self.shape = recipe, shape

    def get(self) -> torch.Tensor:
        weight = self.recipe.get()
        return weight if self.shape is None else weight.view(self.shape)


def _get(held):
    """The weight a layer holds: a tensor (by reference), a :class:`_Held` (computed again now), or None."""
    return held.get() if isinstance(held, _Held) else held


def _owned(out: torch.Tensor) -> torch.Tensor:
    """A custom Function's output must not be a view (the host modifies outputs in place)."""
    return out if out._base is None else out.clone()


class _FrozenLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, held):
        ctx.weight = held  # by reference: an inference tensor cannot go through save_for_backward
        # matmul, not F.linear: F.linear returns a view for 3-d inputs, and the host's blocks add to the
        # output in place, which autograd forbids on views made inside a custom Function
        out = torch.matmul(x, weight.t())
        return _owned(out.add_(bias) if bias is not None else out)

    @staticmethod
    def backward(ctx, grad):
        return grad.matmul(_get(ctx.weight).to(grad.dtype)), None, None, None


class _FrozenConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, held, stride, padding, dilation, groups):
        ctx.weight, ctx.input_shape = held, x.shape
        ctx.conv = (stride, padding, dilation, groups)
        fn = (F.conv1d, F.conv2d, F.conv3d)[x.dim() - 3]
        return _owned(fn(x, weight, bias, stride, padding, dilation, groups))

    @staticmethod
    def backward(ctx, grad):
        stride, padding, dilation, groups = ctx.conv
        weight = _get(ctx.weight).to(grad.dtype)
        placeholder = grad.new_empty(1).expand(ctx.input_shape)  # only its shape is read
        dx = torch.ops.aten.convolution_backward(
            grad, placeholder, weight, None, stride, padding, dilation, False, [0] * len(stride), groups,
            [True, False, False])[0]
        return dx, None, None, None, None, None, None, None


class _FrozenAffine(torch.autograd.Function):
    """``n * weight + bias`` with constant ``weight`` / ``bias`` (broadcast against ``n``)."""

    @staticmethod
    def forward(ctx, n, weight, bias, held):
        ctx.weight = held
        if weight is None:
            return n + bias
        return torch.addcmul(bias, n, weight) if bias is not None else n * weight

    @staticmethod
    def backward(ctx, grad):
        return (grad * _get(ctx.weight) if ctx.weight is not None else grad), None, None, None


class _FrozenScale(torch.autograd.Function):
    """``x * c`` with a constant tensor ``c`` (broadcast either way): ``dx = sum-to-x's-shape(dy * c)``."""

    @staticmethod
    def forward(ctx, x, c, held):
        ctx.held, ctx.shape, ctx.dtype = held, x.shape, x.dtype
        return x * c

    @staticmethod
    def backward(ctx, grad):
        return (grad * _get(ctx.held)).sum_to_size(ctx.shape).to(ctx.dtype), None, None


def _conv_params(value, n: int) -> list[int]:
    return list(value) if isinstance(value, (tuple, list)) else [int(value)] * n


def _bind(names: tuple[str, ...], args, kwargs, defaults: dict) -> dict:
    """The call's arguments by name (positional ones first, as the functional signature orders them)."""
    return {**defaults, **dict(zip(names, args, strict=False)), **kwargs}


def _covered(mode, x, weight, bias, frozen: tuple) -> bool:
    """Whether a layer call takes the copy-free path: ``x`` needs a gradient, one of ``frozen`` is an
    inference tensor (or the host's cast of one), and neither ``weight`` nor ``bias`` needs a gradient."""
    return (isinstance(x, torch.Tensor) and x.requires_grad and any(mode.constant(t) for t in frozen)
            and all(t is None or mode.constant(t) or not t.requires_grad for t in (weight, bias)))


def _linear(mode, args, kwargs):
    bound = _bind(("input", "weight", "bias"), args, kwargs, {"bias": None})
    x, weight, bias = bound["input"], bound["weight"], bound["bias"]
    if not _covered(mode, x, weight, bias, frozen=(weight,)):
        return NotImplemented
    return _FrozenLinear.apply(x, weight, bias, mode.hold(weight))


_CONV_ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_CONV_DEFAULTS = {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1}


def _conv(mode, args, kwargs):
    bound = _bind(_CONV_ARGS, args, kwargs, _CONV_DEFAULTS)
    x, weight, bias = bound["input"], bound["weight"], bound["bias"]
    if not _covered(mode, x, weight, bias, frozen=(weight,)) or isinstance(bound["padding"], str):
        return NotImplemented
    n = weight.dim() - 2
    if x.dim() != n + 2:  # unbatched input: let stock autograd handle it
        return NotImplemented
    return _FrozenConv.apply(x, weight, bias, mode.hold(weight), _conv_params(bound["stride"], n),
                             _conv_params(bound["padding"], n), _conv_params(bound["dilation"], n),
                             int(bound["groups"]))


_NORM_DEFAULTS = {"weight": None, "bias": None, "eps": 1e-5}


def _affine(mode, n, weight, bias, shape=None):
    """``n * weight + bias`` through :class:`_FrozenAffine`, weight and bias viewed to ``shape`` if given."""
    def view(t):
        return t if t is None or shape is None else t.view(shape)

    return _FrozenAffine.apply(n, view(weight), view(bias), mode.hold(weight, shape))


def _norm(norm, second: str, *, bias: bool = True, per_channel: bool = False):
    """The handler of ``norm(input, <second>, weight[, bias], eps)`` (``F.group_norm``, ``F.layer_norm``,
    ``F.rms_norm``): the normalisation through stock autograd without its affine, then the frozen affine
    (weight and bias viewed per channel, ``(1, C, 1, ...)``, where ``per_channel``)."""
    names = ("input", second, "weight", "bias", "eps") if bias else ("input", second, "weight", "eps")
    defaults = _NORM_DEFAULTS if bias else {"weight": None, "eps": None}
    no_affine = (None, None) if bias else (None,)

    def handler(mode, args, kwargs):
        bound = _bind(names, args, kwargs, defaults)
        x, weight, b = bound["input"], bound["weight"], bound.get("bias")
        if not _covered(mode, x, weight, b, frozen=(weight, b)):
            return NotImplemented
        n = norm(x, bound[second], *no_affine, bound["eps"])
        return _affine(mode, n, weight, b, (1, -1) + (1,) * (x.dim() - 2) if per_channel else None)

    return handler


def _scale(mode, args, kwargs):
    if len(args) != 2 or kwargs:
        return NotImplemented
    x, c = args
    if not isinstance(c, torch.Tensor) or not mode.constant(c):
        x, c = c, x  # c * x
    if not (isinstance(x, torch.Tensor) and isinstance(c, torch.Tensor) and x.requires_grad and mode.constant(c)
            and not x.is_complex() and not c.is_complex()):
        return NotImplemented
    return _FrozenScale.apply(x, c, mode.hold(c))


_HANDLERS = {
    torch.mul: _scale,  # a constant scale (the scaled-fp8 layers' `input * scale_weight`)
    torch.Tensor.mul: _scale,
    torch.Tensor.__mul__: _scale,
    torch.Tensor.__rmul__: _scale,
    F.linear: _linear,
    F.conv1d: _conv,
    F.conv2d: _conv,
    F.conv3d: _conv,
    F.group_norm: _norm(F.group_norm, "num_groups", per_channel=True),
    F.layer_norm: _norm(F.layer_norm, "normalized_shape"),
    F.rms_norm: _norm(F.rms_norm, "normalized_shape", bias=False),  # the DiTs' q/k norms (Flux, SD3.5)
}


def _tensors(values):
    for v in values:
        if isinstance(v, torch.Tensor):
            yield v
        elif isinstance(v, (list, tuple)):
            yield from (t for t in v if isinstance(t, torch.Tensor))


def _unview(out):
    if isinstance(out, torch.Tensor):
        return out.detach() if out._is_view() else out
    if isinstance(out, (tuple, list)) and any(isinstance(v, torch.Tensor) and v._is_view() for v in out):
        return type(out)(_unview(v) for v in out)
    return out


class FrozenWeights(TorchFunctionMode):
    """Run a forward pass whose backward needs gradients of the input only, through inference-tensor
    weights, without copying them (see the module docstring). Use outside ``torch.inference_mode()``::

        with torch.inference_mode(False), torch.enable_grad(), FrozenWeights() as mode:
            loss = f(model(x.requires_grad_()))
            grad, = torch.autograd.grad(loss, x)
        assert mode.copied == 0

    Attributes:
        fast: calls that went through the copy-free functions.
        recast: of those, calls whose weight was computed from constants (the host's cast, its dequantization:
            computed again in backward instead of kept).
        copied / copied_bytes: inference tensors copied by the fallback (operations not covered).
    """

    def __init__(self):
        super().__init__()
        self.fast = 0
        self.recast = 0
        self.copied = 0
        self.copied_bytes = 0
        #: id of a constant computed in this mode -> (weak reference to it, its recipe, its version)
        self._derived: dict[int, tuple[weakref.ref, _Recipe, int]] = {}

    def _recipe(self, t) -> _Recipe | None:
        """The recipe of ``t`` when ``t`` is an unchanged constant computed in this mode (one the host then
        changed in place, a LoRA added to a cast say, is not what its recipe gives any more, and one made to
        require a gradient is a variable)."""
        entry = self._derived.get(id(t)) if isinstance(t, torch.Tensor) else None
        if entry is None or entry[0]() is not t or t._version != entry[2] or t.requires_grad:
            return None  # (a copy of the latent made with `.requires_grad_()` is the variable, no constant)
        return entry[1]

    def constant(self, t) -> bool:
        """An inference tensor or a constant computed from such in this mode."""
        return _is_frozen(t) or self._recipe(t) is not None

    def hold(self, weight, shape=None):
        """What a layer keeps for backward: the weight itself (viewed to ``shape`` if given), or its recipe
        (and view) when it is a computed constant."""
        recipe = self._recipe(weight)
        if recipe is None:
            return weight if weight is None or shape is None else weight.view(shape)
        self.recast += 1
        return _Held(recipe, shape)

    def _as_recipe_args(self, value):
        """``value`` with every computed constant replaced by its recipe (inference tensors stay)."""
        if isinstance(value, torch.Tensor):
            return self._recipe(value) or value
        if isinstance(value, (list, tuple)):
            return type(value)(self._as_recipe_args(v) for v in value)
        return value

    def _remember(self, out, func, args, kwargs):
        """Remember ``out`` (a tensor computed from constants alone) by its recipe; returns it."""
        if not isinstance(out, torch.Tensor) or _is_frozen(out):  # a no-op cast returns its source: a constant
            return out
        recipe = _Recipe(func, self._as_recipe_args(args), {k: self._as_recipe_args(v) for k, v in kwargs.items()})
        key = id(out)
        self._derived[key] = (weakref.ref(out, lambda _ref, key=key: self._derived.pop(key, None)), recipe,
                              out._version)
        return out

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not torch.is_grad_enabled():
            return func(*args, **kwargs)
        if func is torch.Tensor.copy_ and len(args) >= 2 and self.constant(args[1]) and not _is_frozen(args[0]) \
                and not args[0].requires_grad and args[0].shape == args[1].shape:
            with torch.no_grad():  # the host's other cast: empty_like(weight, ...).copy_(weight)
                out = func(*args, **kwargs)
            return self._remember(out, _cast_like, (args[1],), {"dtype": out.dtype, "device": out.device})
        handler = _HANDLERS.get(func)
        if handler is not None:
            out = handler(self, args, kwargs)
            if out is not NotImplemented:
                self.fast += 1
                return out
        tensors = list(_tensors(args)) + list(_tensors(kwargs.values()))
        if tensors and all(self.constant(t) for t in tensors):
            # constants only (a cast of a weight, its dequantization, keys from the prompt): nothing to
            # differentiate, and the result is a constant again
            with torch.no_grad():
                out = _unview(func(*args, **kwargs))
            # a view made under no_grad may not be changed in place under grad (Flux adds its image-dependent
            # attention into the text stream with `txt +=` on the chunks of a constant modulation); a detached
            # tensor shares the storage without being such a view. In-place operations are not recipes: the
            # version check already tells that their target changed.
            return out if writes_in_place(func, kwargs) else self._remember(out, func, args, kwargs)
        if not any(t.is_inference() for t in tensors):
            return func(*args, **kwargs)
        if not any(t.requires_grad and not t.is_inference() for t in tensors):
            with torch.no_grad():  # constants and tensors that need no gradient: nothing to differentiate
                return _unview(func(*args, **kwargs))
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
