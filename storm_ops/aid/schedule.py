"""Coefficients, warm-up and noise/condition interpolation of AID / PAID.

From He et al., "AID: Attention Interpolation of Text-to-Image Diffusion" (PAID), NeurIPS 2024,
arXiv 2403.17924. The attention math itself is in :mod:`storm_ops.aid`.

* :func:`beta_schedule` places the frames at the quantiles of a Beta(alpha, beta) prior.
* :func:`interpolation_active` is the warm-up window: interpolated attention for the first
  ``int(num_steps * warmup_ratio)`` steps, then every frame denoises on its own.
* :func:`slerp` interpolates the endpoint noises, :func:`lerp` the endpoint conditions.

Tensors here carry a leading frame axis: endpoints are ``(1, ...)`` (or one row per frame) and a
coefficient vector ``t`` of shape ``(n,)`` yields ``n`` frames.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..errors import ShapeError, StormError
from .interpolation import MAX_TOKEN_REPEAT, as_coefficients, match_token_lengths

SLERP_MODES = ("frame", "row")

#: Defaults of the official AID pipeline for SD1.x/2.x: 28 steps at classifier-free guidance 7.5, a
#: Beta(3, 3) frame spacing and interpolated attention on the first half of the steps (SDXL: cfg 5,
#: warm-up 1.0).
DEFAULT_STEPS = 28
DEFAULT_CFG = 7.5
DEFAULT_ALPHA = 3.0
DEFAULT_BETA = 3.0
DEFAULT_WARMUP_RATIO = 0.5

_OFFICIAL_LERP_THRESHOLD = 0.9995  # |cos| above which the official per-row slerp falls back to lerp


def beta_schedule(n_frames: int, alpha: float, beta: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Interpolation coefficients ``t_i = F^-1_Beta(alpha, beta)(i / (n - 1))`` (AID's Beta prior).

    The first and last values are exactly 0 and 1. Beta(1, 1) gives evenly spaced frames;
    Beta(3, 3) with 7 frames gives 0, 0.3027, 0.4091, 0.5, 0.5909, 0.6973, 1, as in the official
    implementation.

    Parameters
    ----------
    n_frames : int
        Number of frames including both endpoints, at least 2.
    alpha, beta : float
        Positive shape parameters of the Beta prior.
    dtype : torch.dtype
        Dtype of the result.

    Returns
    -------
    Tensor, shape (n_frames,), non-decreasing from 0 to 1.
    """
    if isinstance(n_frames, bool) or not isinstance(n_frames, int) or n_frames < 2:
        raise StormError(f"an interpolation needs at least 2 frames (both endpoints), got {n_frames!r}",
                         input_name="frames")
    for name, value in (("alpha", alpha), ("beta", beta)):
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise StormError(f"the Beta prior's {name} must be a positive number, got {value!r}", input_name=name)
    from scipy.special import betaincinv  # the Beta quantile function, = scipy.stats.beta.ppf

    quantiles = [i / (n_frames - 1) for i in range(n_frames)]
    t = torch.tensor(betaincinv(float(alpha), float(beta), quantiles), dtype=torch.float64)
    t[0], t[-1] = 0.0, 1.0
    return t.to(dtype)


def warmup_steps(num_steps: int, warmup_ratio: float) -> int:
    """Number of leading steps with interpolated attention: ``int(num_steps * warmup_ratio)``.

    ``int`` truncates as the official code does (``int(50 * 0.122) == 6``).
    """
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise StormError(f"the number of steps must be a positive integer, got {num_steps!r}", input_name="steps")
    if not isinstance(warmup_ratio, (int, float)) or not 0.0 <= warmup_ratio <= 1.0:
        raise StormError(f"warmup_ratio must lie in [0, 1], got {warmup_ratio!r}", input_name="warmup_ratio")
    return int(num_steps * warmup_ratio)


def interpolation_active(step: int, num_steps: int, warmup_ratio: float) -> bool:
    """Whether step index ``step`` (0-based) uses interpolated attention (the official warm-up).

    True for ``step < int(num_steps * warmup_ratio)``; afterwards every frame denoises on its own
    ("late = self"). Only the conditional pass interpolates; that choice belongs to the caller.
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise StormError(f"the step index must be a non-negative integer, got {step!r}", input_name="step")
    return step < warmup_steps(num_steps, warmup_ratio)


def slerp(a: torch.Tensor, b: torch.Tensor, t: float | Sequence[float] | torch.Tensor,
          *, per: str = "frame") -> torch.Tensor:
    """Spherical interpolation of endpoint noises (AID: the frames' initial latents).

    ``per="frame"`` (default) treats each frame's whole tensor as one vector: the direction
    moves along the great circle from ``a`` to ``b`` at constant angular speed and the norm is
    interpolated linearly, so unit vectors stay unit and Gaussian noise keeps its norm (std ~1
    at every ``t``, where a lerp of independent noises shrinks to std 0.71 at ``t = 0.5``).
    Parallel vectors give the (normalised) lerp; antiparallel ones, whose great circle is not
    unique, turn through a deterministic perpendicular direction; a zero vector gives the lerp.

    ``per="row"`` reproduces the official implementation's ``slerp``: each row of the last
    dimension is its own vector, ``sin((1-t) theta)/sin(theta) a + sin(t theta)/sin(theta) b`` on
    the raw rows, and a plain lerp where ``|cos theta| > 0.9995`` (antiparallel rows pass near 0).

    Both modes return ``a`` at ``t = 0`` and ``b`` at ``t = 1`` exactly.

    Parameters
    ----------
    a, b : Tensor, shape (1 or n, ...)
        Endpoint tensors with a leading frame axis and equal trailing shapes.
    t : float, sequence or Tensor, shape () or (n,)
        Coefficients in ``[0, 1]``; a vector gives one output frame per value.
    per : {"frame", "row"}
        Which part of the tensor forms one vector (see above).

    Returns
    -------
    Tensor, shape (n, ...), dtype of ``a``/``b`` promoted, device of ``a``. Computed in float32
    (float64 inputs stay float64).
    """
    if per not in SLERP_MODES:
        raise StormError(f"unknown slerp mode {per!r}; use one of {SLERP_MODES}", input_name="per")
    a32, b32, w, out_dtype = _prepare_pair(a, b, t, "slerp")
    if per == "row":
        out = _slerp_rows(a32, b32, w)
    else:
        shape = a32.shape
        out = _slerp_vectors(a32.flatten(1), b32.flatten(1), w.reshape(-1, 1)).reshape(shape)
    out = torch.where(w == 0, a32, torch.where(w == 1, b32, out))
    return out.to(out_dtype)


def lerp(a: torch.Tensor, b: torch.Tensor, t: float | Sequence[float] | torch.Tensor,
         *, max_token_repeat: int = MAX_TOKEN_REPEAT) -> torch.Tensor:
    """Linear interpolation ``(1 - t) a + t b`` of endpoint conditions (AID's ``init="linear"``).

    Conditions ``(1 or n, T, C)`` whose token counts differ (long prompts) are first tiled to
    the least common multiple of the counts, as ComfyUI does when it batches them, which leaves
    attention to each endpoint unchanged (see :func:`storm_ops.aid.interpolation.match_token_lengths`);
    padding with zeros would not. Pooled outputs ``(1, C)`` and other shapes must match exactly.

    Parameters
    ----------
    a, b : Tensor, shape (1 or n, ...)
        Endpoint tensors with a leading frame axis.
    t : float, sequence or Tensor, shape () or (n,)
        Coefficients in ``[0, 1]``.
    max_token_repeat : int
        Largest accepted tiling factor (see :func:`storm_ops.aid.interpolation.match_token_lengths`).

    Returns
    -------
    Tensor, shape (n, ...), exactly ``a`` at ``t = 0`` and ``b`` at ``t = 1``.
    """
    if a.dim() == 3 and b.dim() == 3 and a.shape[1] != b.shape[1] and a.shape[2] == b.shape[2]:
        a, b = match_token_lengths([a, b], ["a", "b"], max_token_repeat)
    a32, b32, w, out_dtype = _prepare_pair(a, b, t, "lerp")
    return torch.lerp(a32, b32, w.to(a32.dtype)).to(out_dtype)


# --------------------------------------------------------------------------------------------
# internals


def _prepare_pair(a: torch.Tensor, b: torch.Tensor, t, what: str):
    """Check shapes, broadcast both endpoints to ``(n, ...)``; return them in the work dtype."""
    if a.dim() < 2 or a.shape[1:] != b.shape[1:]:
        raise ShapeError(f"{what}: endpoints must have a leading frame axis and equal shapes, got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}", input_name="b")
    out_dtype = torch.promote_types(a.dtype, b.dtype)
    work = torch.float64 if out_dtype == torch.float64 else torch.float32
    n_t = torch.as_tensor(t).numel() if isinstance(t, (torch.Tensor, Sequence)) else 1
    n = max(a.shape[0], b.shape[0]) if n_t == 1 else n_t
    for name, x in (("a", a), ("b", b)):
        if x.shape[0] not in (1, n):
            raise ShapeError(f"{what}: {name} has {x.shape[0]} rows; expected 1 or one per frame ({n})",
                             input_name=name)
    w = as_coefficients(t, n, a.device).to(work)
    w = w.reshape(n, *([1] * (a.dim() - 1)))  # shape: (n, 1, ..., 1)
    full = (n, *a.shape[1:])
    return a.to(work).expand(full), b.to(work).expand(full), w, out_dtype


def _slerp_vectors(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Whole-vector slerp of rows ``(n, D)`` with weights ``(n, 1)``; see :func:`slerp`."""
    norm_a = a.norm(dim=-1, keepdim=True)
    norm_b = b.norm(dim=-1, keepdim=True)
    tiny = torch.finfo(a.dtype).tiny
    u = a / norm_a.clamp_min(tiny)
    v = b / norm_b.clamp_min(tiny)
    cos = (u * v).sum(-1, keepdim=True)
    r = v - cos * u  # component of v orthogonal to u, |r| = sin(theta)
    sin = r.norm(dim=-1, keepdim=True)
    theta = torch.atan2(sin, cos)  # stable for all angles, unlike acos near 0 and pi
    # Direction of rotation: r when it is well defined; otherwise (parallel or antiparallel) a fixed
    # perpendicular to u built from the basis vector where u is smallest. With theta ~ 0 its weight
    # sin(t theta) vanishes, with theta ~ pi it picks one of the equally short great circles.
    eps = 1e-6 if a.dtype != torch.float64 else 1e-12
    basis = torch.zeros_like(u).scatter_(-1, u.abs().argmin(-1, keepdim=True), 1.0)
    p = torch.where(sin > eps, r, basis)
    p = p - (p * u).sum(-1, keepdim=True) * u
    p = p / p.norm(dim=-1, keepdim=True).clamp_min(tiny)
    direction = torch.cos(t * theta) * u + torch.sin(t * theta) * p
    direction = direction / direction.norm(dim=-1, keepdim=True).clamp_min(tiny)
    out = torch.lerp(norm_a, norm_b, t) * direction
    degenerate = (norm_a <= tiny) | (norm_b <= tiny)
    return torch.where(degenerate, torch.lerp(a, b, t), out)


def _slerp_rows(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The official per-row slerp (angle per row of the last dimension, raw rows mixed)."""
    cos = (a / a.norm(dim=-1, keepdim=True) * (b / b.norm(dim=-1, keepdim=True))).sum(-1, keepdim=True)
    use_lerp = cos.isnan() | (cos.abs() > _OFFICIAL_LERP_THRESHOLD)
    theta = torch.acos(torch.where(use_lerp, torch.zeros_like(cos), cos))
    sin = torch.sin(theta)
    mixed = torch.sin((1 - t) * theta) / sin * a + torch.sin(t * theta) / sin * b
    return torch.where(use_lerp, torch.lerp(a, b, t), mixed)
