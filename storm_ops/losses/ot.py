"""Entropic optimal transport on attention-map grids (STORM, Han et al., CVPR 2025).

Solvers
-------
entropic_ot         the entropic OT value by batched log-domain Sinkhorn (after POT's
                    ``sinkhorn_log``), stopped on the marginal error, with envelope-theorem
                    gradients (iterations run without autograd, so memory does not grow with the
                    iteration count).
sinkhorn_reference  the released STORM code's plain Sinkhorn (u = v = 1, a fixed number of
                    iterations, ``+ 1e-8`` in the denominators), for the STORM loss's reference mode.

Grid helpers
------------
pixel_coordinates, centroids, squared_distance_cost. Points are ``(x, y)`` with ``x`` the
column and ``y`` the row (row 0 at the top of the image); maps are never assumed square.

All functions are pure: inputs are never modified, nothing is cached between calls.

Notation: a source ``a`` of ``n`` points, a target ``b`` of ``m`` points, a cost ``C`` (n, m)
and a regularisation ``eps``. The entropic problem is

    OT_eps(a, b) = min_{P 1 = a, P^T 1 = b}  <P, C> + eps * KL(P | a b^T),

with dual potentials ``f`` (n,) and ``g`` (m,) and plan
``P_ij = a_i b_j exp((f_i + g_j - C_ij) / eps)`` (Cuturi, NeurIPS 2013; Peyre & Cuturi,
"Computational Optimal Transport", 2019, Sec. 4.4).
"""

from __future__ import annotations

import math
import warnings

import torch

from ..errors import ConvergenceWarning, ShapeError, StormError

__all__ = [
    "centroids",
    "entropic_ot",
    "pixel_coordinates",
    "sinkhorn_reference",
    "squared_distance_cost",
]


# ---------------------------------------------------------------------------------- grids
def pixel_coordinates(h: int, w: int, *, normalized: bool = True, device=None,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Coordinates of the pixels of an ``h x w`` map in row-major (flatten) order.

    Parameters
    ----------
    h, w : int
        Map height (rows) and width (columns).
    normalized : bool
        ``True``: pixel centres ``((j + 0.5) / s, (i + 0.5) / s)`` with ``s = max(h, w)``, so
        pixels stay square, the longer side spans ``[0, 1]`` and distances do not depend on the
        map resolution. ``False``: integer indices ``(j, i)`` (the released STORM code's units).

    Returns
    -------
    Tensor, shape (h * w, 2)
        ``[:, 0]`` is x (column), ``[:, 1]`` is y (row).
    """
    if h < 1 or w < 1:
        raise ShapeError(f"a map needs at least one pixel, got {h}x{w}")
    ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float64),
                            torch.arange(w, device=device, dtype=torch.float64), indexing="ij")
    pts = torch.stack([xs.reshape(-1), ys.reshape(-1)], -1)
    if normalized:
        pts = (pts + 0.5) / max(h, w)
    return pts.to(dtype)


def centroids(maps: torch.Tensor, *, normalized: bool = True) -> torch.Tensor:
    """Centres of mass of maps (``x = sum_ij j M_ij / sum M``, ``y`` likewise, as in STORM's released code).

    Parameters
    ----------
    maps : Tensor, shape (..., h, w)
        Non-negative maps with a positive sum (need not be normalised).
    normalized : bool
        Units of the result, as in :func:`pixel_coordinates`.

    Returns
    -------
    Tensor, shape (..., 2)
        ``(x, y)`` per map; differentiable w.r.t. ``maps``.
    """
    if maps.dim() < 2:
        raise ShapeError(f"centroids need maps of shape (..., h, w), got {tuple(maps.shape)}")
    h, w = maps.shape[-2:]
    pts = pixel_coordinates(h, w, normalized=normalized, device=maps.device, dtype=maps.dtype)
    flat = maps.flatten(-2)  # shape: (..., N)
    return (flat @ pts) / flat.sum(-1, keepdim=True)


def squared_distance_cost(h: int, w: int, *, normalized: bool = True, device=None,
                          dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Squared Euclidean distances between all pixel pairs of an ``h x w`` grid.

    Returns
    -------
    Tensor, shape (h * w, h * w)
        ``C[n, m] = |p_n - p_m|^2`` with the coordinates of :func:`pixel_coordinates`.
    """
    pts = pixel_coordinates(h, w, normalized=normalized, device=device, dtype=torch.float64)
    return torch.cdist(pts, pts, compute_mode="donot_use_mm_for_euclid_dist").square().to(dtype)


# ------------------------------------------------------------------------- input checks
def _as_batched(a: torch.Tensor, b: torch.Tensor, cost: torch.Tensor):
    """Validate shapes; returns (a, b, cost, unbatched) with a (B, n), b (B, m), cost (B|1, n, m)."""
    unbatched = a.dim() == 1 and b.dim() == 1
    if unbatched:
        a, b = a[None], b[None]
    if a.dim() != 2 or b.dim() != 2:
        raise ShapeError(f"expected a (B, n) and b (B, m), got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[0] != b.shape[0]:
        raise ShapeError(f"a and b have different batch sizes: {a.shape[0]} and {b.shape[0]}")
    if cost.dim() == 2:
        cost = cost[None]
    if cost.dim() != 3 or cost.shape[-2:] != (a.shape[1], b.shape[1]) or cost.shape[0] not in (1, a.shape[0]):
        raise ShapeError(
            f"cost must have shape (n, m) or (B, n, m) = ({a.shape[1]}, {b.shape[1]}) or "
            f"({a.shape[0]}, {a.shape[1]}, {b.shape[1]}), got {tuple(cost.shape)}"
        )
    return a, b, cost, unbatched


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _safe_log(x: torch.Tensor) -> torch.Tensor:
    """``log x`` with ``log 0 = -inf`` and a zero (not NaN) gradient at 0."""
    positive = x > 0
    return torch.where(positive, torch.log(torch.where(positive, x, torch.ones_like(x))), float("-inf"))


def _check_reg(reg: float) -> None:
    if not (isinstance(reg, (int, float)) and math.isfinite(reg) and reg > 0):
        raise StormError(f"the entropic regularisation must be a positive number, got {reg!r}")


# ------------------------------------------------------------------------ log-domain Sinkhorn

def _prepare_sinkhorn(a, b, cost, reg, max_iter):
    """Validate the arguments of the log-domain solvers; returns batched ``(a, b, cost, unbatched)``
    in the compute dtype (float64 if any input is float64, else float32)."""
    _check_reg(reg)
    if max_iter < 1:
        raise StormError(f"max_iter must be at least 1, got {max_iter}")
    a2, b2, c2, unbatched = _as_batched(a, b, cost)
    dtype = _compute_dtype(a2, b2, c2)
    return a2.to(dtype), b2.to(dtype), c2.to(dtype), unbatched


def _sinkhorn_potentials(a, b, cost, reg, max_iter, tol, check_every):
    """Alternate the dual updates until the row-marginal error is below ``tol``.

    Returns f (B, n), g (B, m), the number of iterations, the L1 row-marginal error (B,) of
    the returned pair, and whether it converged. After the g update the column marginals are
    exact, and the row marginals of ``(f, g)`` are ``a * exp((f - f_next) / eps)``, so the error
    costs no extra pass over the cost matrix.
    """
    log_a, log_b = _safe_log(a), _safe_log(b)
    f = torch.zeros_like(a)
    # shape: (B, n, m) temporaries in both updates
    g = -reg * torch.logsumexp(log_a[:, :, None] + (f[:, :, None] - cost) / reg, dim=1)
    err = torch.full((a.shape[0],), float("inf"), dtype=a.dtype, device=a.device)
    converged = False
    it = 0
    for it in range(1, max_iter + 1):
        f_next = -reg * torch.logsumexp(log_b[:, None, :] + (g[:, None, :] - cost) / reg, dim=2)
        if it % check_every == 0 or it == max_iter:
            err = (a * torch.expm1((f - f_next) / reg)).abs().sum(-1)
            if bool((err <= tol).all()):
                converged = True
                break
        f = f_next
        g = -reg * torch.logsumexp(log_a[:, :, None] + (f[:, :, None] - cost) / reg, dim=1)
    return f, g, it, err, converged


def _plan(a, b, cost, f, g, reg):
    # shape: (B, n, m)
    return torch.exp(_safe_log(a)[:, :, None] + _safe_log(b)[:, None, :] + (f[:, :, None] + g[:, None, :] - cost) / reg)


def _warn_not_converged(name: str, max_iter: int, err: torch.Tensor, tol: float, reg: float) -> None:
    warnings.warn(
        f"{name} did not converge in {max_iter} iterations (marginal error {float(err.max()):.3g} > "
        f"tol {tol:g} at reg {reg:g}); increase max_iter or reg, or loosen tol",
        ConvergenceWarning,
        stacklevel=3,
    )


def entropic_ot(a: torch.Tensor, b: torch.Tensor, cost: torch.Tensor, reg: float, *,
                max_iter: int = 1000, tol: float = 1e-5, check_every: int = 10,
                warn: bool = True) -> tuple[torch.Tensor, dict]:
    """The entropic OT value ``OT_reg(a, b)`` with envelope-theorem gradients (batched).

    The potentials are found without autograd by Sinkhorn iterations in the log domain, which
    alternate the dual updates ``f = -reg * LSE_j(log b_j + (g_j - C_ij) / reg)`` and
    ``g = -reg * LSE_i(log a_i + (f_i - C_ij) / reg)`` (Peyre & Cuturi 2019, Sec. 4.4; the
    scheme of POT's ``sinkhorn_log``). Working with potentials instead of ``exp(-C/reg)`` never
    underflows, unlike the released STORM solver (:func:`sinkhorn_reference`). The value is then
    the dual objective at those (fixed) potentials,

        OT = <f, a> + <g, b> - reg * (sum_ij a_i b_j exp((f_i + g_j - C_ij) / reg) - 1),

    whose gradients are exactly those of the optimum at convergence (envelope theorem):
    ``dOT/da = f``, ``dOT/db = g``, ``dOT/dC = P``. Memory is one ``(B, n, m)`` tensor, whatever
    the number of iterations.

    Parameters
    ----------
    a : Tensor, shape (B, n) or (n,)
        Source weights, non-negative, each row summing to 1 (zeros allowed).
    b : Tensor, shape (B, m) or (m,)
        Target weights with the same total mass as ``a``.
    cost : Tensor, shape (B, n, m) or (n, m)
        Ground cost; a 2-d cost is shared by the whole batch (not copied).
    reg : float
        Entropic regularisation ``eps`` in units of the cost (> 0).
    max_iter : int
        Maximum number of (f, g) update pairs.
    tol : float
        Stop when the L1 error of the row marginals, ``sum_i |(P 1)_i - a_i|``, is at most
        ``tol`` for every problem of the batch (the column marginals are exact).
    check_every : int
        Test convergence every this many iterations (each test synchronises with the device).
    warn : bool
        Emit a :class:`ConvergenceWarning` (with a remedy) when ``max_iter`` is reached.

    Returns
    -------
    value : Tensor, shape (B,) or ()
        ``OT_reg(a, b) = <P, C> + reg * KL(P | a b^T)`` (float32 or float64 math, in the dtype
        of ``a``), differentiable w.r.t. ``a``, ``b`` and ``cost``.
    info : dict
        ``iterations`` (int), ``marginal_error`` (Tensor (B,)), ``converged`` (bool),
        ``f``, ``g`` (dual potentials, shapes (B, n) and (B, m)), ``plan`` (detached, shape
        (B, n, m)) and ``transport_cost`` (``<P, C>``, Tensor (B,)).

    Notes
    -----
    The math runs in float64 when any input is float64, else in float32 (half-precision inputs
    are promoted; the value is cast back).
    """
    a2, b2, c2, unbatched = _prepare_sinkhorn(a, b, cost, reg, max_iter)
    with torch.no_grad():
        f, g, iters, err, converged = _sinkhorn_potentials(a2.detach(), b2.detach(), c2.detach(), reg,
                                                           max_iter, tol, max(1, check_every))
    if not converged and warn:
        _warn_not_converged("entropic_ot", max_iter, err, tol, reg)
    plan = _plan(a2, b2, c2, f, g, reg)  # differentiable in a, b and cost; f, g are constants
    value = (f * a2).sum(-1) + (g * b2).sum(-1) - reg * (plan.sum((-2, -1)) - 1.0)
    plan = plan.detach()
    info = {"iterations": iters, "marginal_error": err, "converged": converged, "f": f, "g": g,
            "plan": plan, "transport_cost": (plan * c2.detach()).sum((-2, -1))}
    value = value.to(a.dtype)
    return (value[0] if unbatched else value), info


# ------------------------------------------------------------------- released STORM solver
def sinkhorn_reference(a: torch.Tensor, b: torch.Tensor, cost: torch.Tensor, reg: float = 0.1,
                       num_iter: int = 100) -> tuple[torch.Tensor, dict]:
    """The released STORM code's Sinkhorn, kept numerically (reference mode only).

    ``K = exp(-C / (reg + 1e-8))``, ``u = v = 1``, then ``num_iter`` times
    ``u = a / (K v + 1e-8)``, ``v = b / (K^T u + 1e-8)``; plan ``P = diag(u) K diag(v)`` (formed
    by broadcasting). No stabilisation and no convergence test: the kernel underflows in float32
    for ``C > ~10.4`` and the ``1e-8`` terms then act as a soft gate.

    Parameters
    ----------
    a : Tensor, shape (B, n) or (n,)
    b : Tensor, shape (B, m) or (m,)
    cost : Tensor, shape (B, n, m) or (n, m)
    reg : float
        0.1 in the released code.
    num_iter : int
        100 in the released code.

    Returns
    -------
    plan : Tensor, shape (B, n, m) or (n, m)
        Differentiable (autograd through the iterations), dtype and device of ``a``.
    info : dict
        ``iterations`` and ``marginal_error`` (L1 error of the row marginals, Tensor (B,)).
    """
    a2, b2, c2, unbatched = _as_batched(a, b, cost)
    kernel = torch.exp(-c2 / (reg + 1e-8))  # shape: (B|1, n, m)
    u, v = torch.ones_like(a2), torch.ones_like(b2)
    for _ in range(num_iter):
        u = a2 / ((kernel @ v[:, :, None])[:, :, 0] + 1e-8)
        v = b2 / ((kernel.transpose(1, 2) @ u[:, :, None])[:, :, 0] + 1e-8)
    plan = u[:, :, None] * kernel * v[:, None, :]
    err = (plan.sum(-1) - a2).abs().sum(-1).detach()
    info = {"iterations": num_iter, "marginal_error": err}
    return (plan[0] if unbatched else plan), info
