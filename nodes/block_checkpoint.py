"""Per-block recomputation of a DiT in the pack's gradient pass (gradient checkpointing, Chen et al. 2016).

A guided step's gradient pass keeps, for its backward, the internal activations of every block it ran. On the large
DiTs (Qwen-Image's 60 dual-stream blocks, Flux.2's 56, Z-Image's 34 at 1024 px) those do not fit a 24 GB card next
to the weights. :func:`checkpointed_blocks` makes each block of the network run under
:func:`~storm_ops.guidance.recompute.recompute_in_backward` for the length of one gradient pass: the pass keeps each
block's input only and computes the block again in backward (about one more forward pass). The recording tap's
queries and keys of a block's joint attention leave the block as side outputs and reach the recorder after it
(:meth:`~.dit_capture.JointAttentionTap.capture`), so the maps stay differentiable through the recomputed block.

The blocks' ``forward`` is replaced on the module objects while the context is open and restored on exit, like the
quantized layers' switch of :func:`~.gradient_pass.dequantized_compute`: the host's ordinary passes never run it.
The guided sampler opens it after a gradient pass ran out of GPU memory (:class:`~.guided_sampler.GuidedRun`), or
always with ``GuidedSamplerSettings(recompute_blocks=True)``.
"""

from __future__ import annotations

import contextlib

import torch

from ..storm_ops.guidance.recompute import recompute_in_backward
from .dit_capture import JointAttentionTap

#: the module lists of each DiT family's blocks (the host's attribute names), in the order the network runs them
_BLOCK_LISTS = {
    "sd3": ("joint_blocks",),
    "flux": ("double_blocks", "single_blocks"),
    "flux2": ("double_blocks", "single_blocks"),
    "chroma": ("double_blocks", "single_blocks"),
    "qwen_image": ("transformer_blocks",),
    "z_image": ("context_refiner", "noise_refiner", "layers"),
    "krea2": ("blocks",),
}


def dit_blocks(net: torch.nn.Module, family: str) -> list[torch.nn.Module]:
    """The blocks of a DiT of ``family`` (each module once, even where a list holds it twice); empty for others."""
    blocks: dict[int, torch.nn.Module] = {}
    for name in _BLOCK_LISTS.get(family, ()):
        for block in getattr(net, name, None) or ():
            blocks.setdefault(id(block), block)
    return list(blocks.values())


def _checkpointed(block: torch.nn.Module, tap: JointAttentionTap | None):
    original = block.forward

    def storm_recomputed_block(*args, **kwargs):
        if not torch.is_grad_enabled():
            return original(*args, **kwargs)
        if tap is None:
            return recompute_in_backward(original, args, kwargs, lambda replay: contextlib.nullcontext([]))[0]
        state = tap.call_state()
        out, side = recompute_in_backward(original, args, kwargs, lambda replay: tap.capture(replay, state))
        tap.flush(side)
        return out

    return storm_recomputed_block


@contextlib.contextmanager
def checkpointed_blocks(net: torch.nn.Module, family: str, tap: JointAttentionTap | None = None):
    """Every block of ``net`` (a DiT of ``family``) recomputed in backward while open (see the module docstring);
    ``tap``: the run's recording tap, whose joint calls the blocks hand on."""
    blocks = dit_blocks(net, family)
    previous = [block.__dict__.get("forward") for block in blocks]  # a forward another patch set on the object
    for block in blocks:
        block.forward = _checkpointed(block, tap)
    try:
        yield len(blocks)
    finally:
        for block, forward in zip(blocks, previous, strict=True):
            del block.forward
            if forward is not None:
                block.forward = forward
