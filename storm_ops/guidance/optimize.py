"""Latent updates and A&E's iterative refinement, driven by callables.

The host supplies ``evaluate(z) -> Evaluation`` (a conditional UNet pass with gradients, the
combined loss and its gradient w.r.t. ``z``); everything here is plain tensor logic, so it is
tested with synthetic objectives.

One guided step (Attend-and-Excite's iterative refinement as in the official code, without its
unused extra UNet passes):

1. evaluate at ``z``;
2. refinement: while some sample has not reached its threshold and fewer than the cap of
   iterations ran, update the unsatisfied samples and evaluate again;
3. the regular update ``z <- z - m * grad`` with the gradient of the last evaluation.

A sample whose loss or gradient is not finite is never updated; the step report says so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass
class Evaluation:
    """Result of one loss evaluation at a latent.

    Attributes
    ----------
    objective : Tensor, shape (B,)
        Value of the minimised objective per sample (detached).
    grad : Tensor or None, shape like ``z``
        Gradient of ``objective.sum()`` w.r.t. ``z`` (``None``: nothing to update).
    satisfied : BoolTensor, shape (B,)
        Samples that need no (further) refinement.
    max_refine_iters : int
        Refinement cap at this step (0 disables refinement).
    term_losses, metrics : dict
        Detached per-term losses and metrics for the log.
    """

    objective: torch.Tensor
    grad: torch.Tensor | None
    satisfied: torch.Tensor
    max_refine_iters: int = 0
    term_losses: dict[str, torch.Tensor] = field(default_factory=dict)
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class StepReport:
    """What happened during one guided step (for the loss log)."""

    first: Evaluation
    last: Evaluation
    refine_iters: int = 0
    updates: int = 0
    skipped: list[str] = field(default_factory=list)
    #: refinement updates each sample received (``(B,)`` int); ``refine_iters`` is the batch's maximum
    sample_refine_iters: torch.Tensor | None = None
    #: the refinement cap this step ran under (0: no refinement was allowed); where it is > 0,
    #: ``last.satisfied`` says which samples reached their threshold
    refine_cap: int = 0


def clip_grad_norm(grad: torch.Tensor, max_norm: float | torch.Tensor) -> torch.Tensor:
    """Scale each sample's gradient ``(B, ...)`` down to L2 norm ``max_norm`` (never up).

    ``max_norm`` is a float or a ``(B,)`` tensor. Non-finite gradients are returned unchanged (the
    update logic skips them). Not in place.
    """
    norms = grad.flatten(1).norm(dim=1)
    limit = torch.as_tensor(max_norm, dtype=norms.dtype, device=norms.device)
    scale = torch.where(norms > limit, limit / norms.clamp_min(1e-30), torch.ones_like(norms))
    scale = torch.where(torch.isfinite(norms), scale, torch.ones_like(norms))
    return grad * scale.reshape(-1, *([1] * (grad.dim() - 1))).to(grad.dtype)


def finite_samples(ev: Evaluation) -> torch.Tensor:
    """``(B,)`` bool: samples whose objective and gradient are finite."""
    ok = torch.isfinite(ev.objective)
    if ev.grad is not None:
        ok = ok & torch.isfinite(ev.grad).flatten(1).all(1)
    return ok


def apply_update(z: torch.Tensor, ev: Evaluation, multiplier: float | torch.Tensor,
                 only: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``z - multiplier * grad`` for the finite samples (and those in ``only``).

    Parameters
    ----------
    z : Tensor, shape (B, ...)
        Current latent. Not modified.
    ev : Evaluation
        Evaluation at ``z``.
    multiplier : float or Tensor of shape (B,)
        Step multiplier (the term step sizes are already inside the objective; the sampler
        passes the z-to-x space factor ``1 / s^2`` of the model's input scale ``z = s x``).
    only : BoolTensor, shape (B,), optional
        Restrict the update to these samples.

    Returns
    -------
    (Tensor, BoolTensor)
        The new latent and the ``(B,)`` mask of samples that were updated.
    """
    batch = z.shape[0]
    if ev.grad is None:
        return z, torch.zeros(batch, dtype=torch.bool, device=z.device)
    apply = finite_samples(ev).to(z.device)
    if only is not None:
        apply = apply & only.to(z.device)
    if not bool(apply.any()):
        return z, apply
    m = torch.as_tensor(multiplier, dtype=z.dtype, device=z.device)
    if m.dim() == 1:
        m = m.reshape(batch, *([1] * (z.dim() - 1)))
    grad = torch.where(apply.reshape(batch, *([1] * (z.dim() - 1))), ev.grad.to(z.dtype), torch.zeros((), dtype=z.dtype, device=z.device))
    return z - m * grad, apply


def _skip_reason(ev: Evaluation, mask: torch.Tensor) -> str | None:
    bad = ~finite_samples(ev)
    if mask is not None:
        bad = bad & mask.to(bad.device)
    if not bool(bad.any()):
        return None
    idx = [int(i) for i in torch.nonzero(bad).flatten()]
    what = "loss" if not bool(torch.isfinite(ev.objective[bad]).all()) else "gradient"
    return f"non-finite {what} for sample(s) {idx}: update skipped"


def guidance_step(z: torch.Tensor, evaluate: Callable[[torch.Tensor], Evaluation], *,
                  multiplier: float | torch.Tensor) -> tuple[torch.Tensor, StepReport]:
    """Run one guided step (evaluate, refine to the thresholds, update).

    Parameters
    ----------
    z : Tensor, shape (B, ...)
        Latent before the step. Not modified.
    evaluate : callable
        ``evaluate(z) -> Evaluation``; may raise to abort (e.g. on a user interrupt).
    multiplier : float or Tensor (B,)
        See :func:`apply_update`.

    Returns
    -------
    (Tensor, StepReport)
    """
    ev = evaluate(z)
    report = StepReport(first=ev, last=ev,
                        sample_refine_iters=torch.zeros(z.shape[0], dtype=torch.long, device=z.device))
    cap = report.refine_cap = ev.max_refine_iters  # refinement happens where it is > 0 and a sample is unsatisfied
    while report.refine_iters < cap and not bool(ev.satisfied.all()):
        todo = ~ev.satisfied
        z, applied = apply_update(z, ev, multiplier, only=todo)
        reason = _skip_reason(ev, todo)
        if reason:
            report.skipped.append(f"refinement {report.refine_iters + 1}: {reason}")
        if not bool(applied.any()):
            break  # nothing could move: re-evaluating the same latent would not help
        report.refine_iters += 1
        report.sample_refine_iters += applied.to(report.sample_refine_iters.device, torch.long)
        report.updates += 1
        ev = evaluate(z)
    z, applied = apply_update(z, ev, multiplier)
    reason = _skip_reason(ev, None)
    if reason:
        report.skipped.append(reason)
    report.updates += int(bool(applied.any()))
    report.last = ev
    return z, report
