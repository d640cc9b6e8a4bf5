"""Per-block recomputation: a block's forward kept out of memory until backward computes it again.

Gradient checkpointing (Chen et al. 2016, "Training Deep Nets with Sublinear Memory Cost"): a network of ``n``
identical blocks keeps, for the backward of a gradient pass, every block's internal activations (its attention's
projections, its MLP's hidden layer: several times the width of the stream it passes on). Running each block without
keeping them and computing the block again in backward keeps only what enters each block, for about one more forward
pass of compute.

:func:`recompute_in_backward` runs one block call so. The block may hand out *side tensors* during its forward (an
attention recorder's queries and keys, which a loss reads besides the block's outputs): they are outputs of the
recomputed region too, and the gradients that reach them flow back into the block. Side tensors are collected
through ``capture(replay)``, a context manager that yields the list the block appends them to; ``replay`` is True when
the block runs again in backward (the collector must then append the same tensors again, and nothing else happen).

The block runs on copies of the tensors it is given (blocks add residuals in place into their inputs, e.g. into a text
stream that needs no gradient yet), so the inputs kept for backward, and the constants it runs on again, are the
values the block started from. The autograd engine runs a backward without the
torch function modes that were active in the forward (saved-tensor hooks it keeps): the replay runs under the same
mode objects again, so it computes what the forward computed. Pure torch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch.overrides import TorchFunctionMode, _get_current_function_mode_stack

Capture = Callable[[bool], contextlib.AbstractContextManager]


def _owned(t: torch.Tensor) -> torch.Tensor:
    """A custom Function's outputs must not be views of tensors made inside it (callers change them in place)."""
    return t if t._base is None else t.clone()


def _flat(out) -> list:
    return list(out) if isinstance(out, (tuple, list)) else [out]


@contextlib.contextmanager
def _modes(modes: list[TorchFunctionMode]):
    """``modes`` (a forward's function-mode stack, outermost first) active again, without entering them anew (their
    own ``__enter__`` may start per-pass state)."""
    pushed = 0
    try:
        for mode in modes:
            TorchFunctionMode.__enter__(mode)
            pushed += 1
        yield
    finally:
        for mode in reversed(modes[:pushed]):
            TorchFunctionMode.__exit__(mode, None, None, None)


class _Recompute(torch.autograd.Function):
    @staticmethod
    def forward(ctx, call, modes, *inputs):
        ctx.call, ctx.modes = call, modes
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(*inputs)
        outputs, side = call([t.clone() for t in inputs], replay=False)
        return tuple(_owned(t) for t in (*outputs, *side))

    @staticmethod
    def backward(ctx, *grads):
        leaves = [t.detach().requires_grad_(True) for t in ctx.saved_tensors]
        with torch.enable_grad(), _modes(ctx.modes):
            outputs, side = ctx.call([t.clone() for t in leaves], replay=True)
        produced = [*outputs, *side]
        if len(produced) != len(grads):
            raise RuntimeError(f"a recomputed block gave {len(produced)} tensors, its forward {len(grads)}")
        # every output that needs a gradient gets one (zeros for those the pass did not use): autograd frees the saved
        # tensors of the nodes it runs, and a part of the replay left unrun would keep them
        pairs = [(o, torch.zeros_like(o) if g is None else g) for o, g in zip(produced, grads, strict=True)
                 if o.requires_grad]
        if not pairs:
            return (None, None, *[None] * len(leaves))
        with _modes(ctx.modes):
            got = torch.autograd.grad([o for o, _ in pairs], leaves, [g for _, g in pairs], allow_unused=True)
        return (None, None, *got)


def recompute_in_backward(block: Callable, args: tuple, kwargs: dict, capture: Capture) -> tuple[Any, list]:
    """``block(*args, **kwargs)`` without keeping its internal activations for backward (see the module docstring):
    ``(its output, the side tensors it handed to capture(False))``, both differentiable.

    Only positional and keyword arguments that are tensors needing a gradient are differentiated (the streams a block
    passes on); every other argument (embeddings, masks, options) is a constant of the block. The output must be a
    tensor or a tuple/list of tensors. Without gradients needed, the block just runs.
    """
    positions = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.requires_grad]
    names = [k for k, v in kwargs.items() if isinstance(v, torch.Tensor) and v.requires_grad]
    if not torch.is_grad_enabled() or not (positions or names):
        with capture(False) as side:
            out = block(*args, **kwargs)
        return out, list(side)
    structure: dict = {}

    # the other tensors the block is given (a stream that does not depend on the latent yet, embeddings): the block
    # gets copies too (it may add into them in place), and they must be unchanged when it runs again in backward
    constants = [(a, a._version) for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor) and not a.requires_grad]

    def call(inputs: list[torch.Tensor], replay: bool):
        if replay and any(t._version != version for t, version in constants):
            raise RuntimeError("a tensor given to a recomputed block was changed in place before its backward")
        a = [t.clone() if isinstance(t, torch.Tensor) else t for t in args]
        kw = {k: t.clone() if isinstance(t, torch.Tensor) else t for k, t in kwargs.items()}
        for i, t in zip(positions, inputs, strict=False):
            a[i] = t
        for k, t in zip(names, inputs[len(positions):], strict=True):
            kw[k] = t
        with capture(replay) as side:
            out = block(*a, **kw)
        outputs = _flat(out)
        structure.setdefault("kind", type(out) if isinstance(out, (tuple, list)) else None)
        structure.setdefault("outputs", len(outputs))
        if not all(isinstance(t, torch.Tensor) for t in outputs):
            raise TypeError(f"a recomputed block must return tensors, got {[type(t).__name__ for t in outputs]}")
        return outputs, list(side)

    modes = list(_get_current_function_mode_stack())
    tensors = _Recompute.apply(call, modes, *[args[i] for i in positions], *[kwargs[k] for k in names])
    kind, n = structure["kind"], structure["outputs"]
    return (tensors[0] if kind is None else kind(tensors[:n])), list(tensors[n:])
