"""Guidance: loss terms on a schedule, the latent update, and the gradient through the host's network.

* ``terms``: :class:`GuidanceTerm` (the protocol every loss implements), :class:`StepWindow`, :class:`StepSize`,
  refinement thresholds, :class:`Guidance` (the chain of terms);
* ``optimize``: one latent update: gradient, clipping, non-finite samples, the refinement loop;
* ``frozen_weights``: the latent's gradient through inference-tensor weights without copying them;
* ``saved_tensors``: in-place changes to tensors autograd saved (residual adds), copied before they happen;
* ``recompute``: a block's forward computed again in backward instead of kept (per-block gradient checkpointing).
"""
