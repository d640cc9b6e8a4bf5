"""Dynamic selection of AID / PAID interpolation coefficients under a Beta prior.

From He et al., "AID: Attention Interpolation of Text-to-Image Diffusion" (PAID), NeurIPS 2024,
arXiv 2403.17924: "applying beta distribution to selection to increase smoothness" (the frames sit
at the quantiles of a Beta prior, :func:`storm_ops.aid.schedule.beta_schedule`) and the release's
later "dynamic selection" (``BetaPriorPipeline.generate_interpolation``; the project's
``docs/methods.md`` section 5.3 describes it), which adapts the prior to the generated frames:

1. **Exploration** (:func:`explore`): generate the frames at ``t = 0``, ``1`` and the prior's split
   of ``(0, 1)`` (its median; ``0.5`` for the default Beta(3, 3)). Then, until ``exploration_size``
   coefficients exist, split the neighbouring pair ``(t_a, t_b)`` whose frames are farthest apart at
   ``t = F^-1((F(t_a) + F(t_b)) / 2)`` (:func:`split_point`, ``F`` the current prior's CDF), generate
   that frame and refit the prior (:func:`beta_refit`): a least-squares fit of the Beta CDF to the
   cumulative normalised adjacent distances, started at ``(1, 1)``.
2. **Selection** (:func:`min_spread_path`): from the pairwise distances of all explored frames choose
   ``interpolation_size`` of them, both ends included, whose adjacent distances are as even as
   possible (the smallest spread ``max - min``), by a binary search on the spread with a
   dynamic-programming feasibility test.
3. **Metrics**: :func:`smoothness` ``= 1 - Gini`` of the adjacent distances and :func:`consistency`
   ``=`` their mean (the release computes both on adjacent LPIPS distances).

The release measures frame distance as ``1 - cos`` of CLIP ViT-B/32 image embeddings
(:func:`cosine_distance`); here sampling and distance are callables, so the host layer plugs in
its own sampler and embedding. Everything here is pure numpy/scipy/torch.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import ShapeError, StormError

#: Defaults of the release's ``generate_interpolation``: 16 explored coefficients, Beta(3, 3) as the
#: initial prior, 7 frames kept. Its notebooks use 5 frames and explore 1.5-2x as many.
EXPLORATION_SIZE = 16
INIT_ALPHA = 3.0
INIT_BETA = 3.0
INTERPOLATION_SIZE = 7
#: Width of the spread interval at which :func:`min_spread_path`'s binary search stops.
PRECISION = 1e-6
#: Start of the least-squares refit (the uniform prior) and the box it searches. The lower bound
#: keeps alpha, beta > 0; the upper bound stops a fit to distances concentrated on one pair (a step
#: CDF, which no finite Beta reaches) from running off to infinity.
FIT_INIT = (1.0, 1.0)
FIT_BOUNDS = (1e-3, 1e3)

Prior = tuple[float, float]


# --------------------------------------------------------------------------------------------
# the Beta prior


def _check_prior(alpha: float, beta: float) -> None:
    for name, value in (("alpha", alpha), ("beta", beta)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise StormError(f"the Beta prior's {name} must be a positive number, got {value!r}", input_name=name)


def beta_cdf(t, alpha: float, beta: float):
    """The Beta(alpha, beta) CDF ``F(t)`` (regularised incomplete beta function)."""
    from scipy.special import betainc

    return betainc(float(alpha), float(beta), t)


def beta_ppf(q, alpha: float, beta: float):
    """The Beta(alpha, beta) quantile function ``F^-1(q)``."""
    from scipy.special import betaincinv

    return betaincinv(float(alpha), float(beta), q)


def split_point(t_a: float, t_b: float, alpha: float, beta: float) -> float:
    """Where AID splits the pair ``(t_a, t_b)``: ``F^-1((F(t_a) + F(t_b)) / 2)`` under Beta(alpha, beta).

    The point halves the prior's probability mass between ``t_a`` and ``t_b``; under Beta(1, 1) it
    is the midpoint. When the prior puts (numerically) no mass between them, or the quantile lands
    on an end, the arithmetic midpoint is returned instead, so a split always yields a new point
    strictly inside the pair.

    Raises
    ------
    StormError
        ``0 <= t_a < t_b <= 1`` does not hold, the prior is not positive, or the pair is too
        narrow for any float strictly between them.
    """
    _check_prior(alpha, beta)
    t_a, t_b = float(t_a), float(t_b)
    if not 0.0 <= t_a < t_b <= 1.0:
        raise StormError(f"a split needs 0 <= t_a < t_b <= 1, got ({t_a!r}, {t_b!r})", input_name="t")
    t = float(beta_ppf((beta_cdf(t_a, alpha, beta) + beta_cdf(t_b, alpha, beta)) / 2.0, alpha, beta))
    if not (math.isfinite(t) and t_a < t < t_b):
        t = (t_a + t_b) / 2.0
    if not t_a < t < t_b:
        raise StormError(f"the pair ({t_a!r}, {t_b!r}) is too narrow to split", input_name="exploration_size")
    return t


def _fit_beta_cdf(ts: Sequence[float], distances: Sequence[float], init: Prior) -> tuple[Prior | None, str]:
    """Least-squares Beta-CDF fit; ``(None, reason)`` where it cannot be made."""
    t = np.asarray(ts, dtype=np.float64)
    d = np.asarray(distances, dtype=np.float64)
    if t.ndim != 1 or d.ndim != 1 or d.size != t.size - 1:
        raise ShapeError(f"beta_refit needs n coefficients and n - 1 adjacent distances, got {t.shape} and "
                         f"{d.shape}", input_name="distances")
    if t.size < 2 or t[0] != 0.0 or t[-1] != 1.0 or not np.all(np.diff(t) > 0):
        raise StormError("beta_refit needs strictly increasing coefficients from exactly 0 to exactly 1",
                         input_name="ts")
    if not np.all(np.isfinite(d)) or np.any(d < 0):
        raise StormError("adjacent distances must be finite and non-negative", input_name="distances")
    if t.size < 4:
        return None, f"{t.size - 2} interior point(s) cannot determine two parameters"
    total = d.sum()
    if total <= 0:
        return None, "all distances are zero"
    cumulative = np.cumsum(d)[:-1] / total  # at t_1 .. t_{n-2}; F(0) = 0 and F(1) = 1 hold for every prior
    x = t[1:-1]
    from scipy.optimize import curve_fit

    def model(xs, a, b):
        return beta_cdf(xs, a, b)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # OptimizeWarning: covariance not estimable (unused)
            params, _ = curve_fit(model, x, cumulative, p0=tuple(float(v) for v in init), bounds=FIT_BOUNDS)
    except (RuntimeError, ValueError) as exc:
        return None, f"curve_fit failed: {exc}"
    a, b = (float(v) for v in params)
    if not (math.isfinite(a) and math.isfinite(b) and a > 0 and b > 0):
        return None, f"curve_fit returned ({a}, {b})"
    return (a, b), "ok"


def beta_refit(ts: Sequence[float], distances: Sequence[float], *, init: Prior = FIT_INIT,
               fallback: Prior | None = None) -> Prior:
    """Fit a Beta prior to how the frames' distance accumulates along ``t`` (AID's refit).

    With sorted coefficients ``0 = t_0 < t_1 < ... < t_m = 1`` and adjacent distances
    ``d_i = dist(t_{i-1}, t_i)``, the cumulative normalised distance ``c_j = sum_{i<=j} d_i / sum_i d_i``
    is fitted by least squares with the Beta CDF: ``min_{alpha, beta} sum_j (F(t_j; alpha, beta) - c_j)^2``
    (``scipy.optimize.curve_fit`` from ``init = (1, 1)``, bounded to :data:`FIT_BOUNDS`, which keeps
    both parameters positive). The ends ``c_0 = 0``, ``c_m = 1`` match every prior, so only the
    interior points ``j = 1 .. m-1`` enter the fit. Distances even along ``t`` give Beta(1, 1).

    A fit is not made when there are fewer than two interior points (``m + 1 < 4`` coefficients:
    two parameters are underdetermined), when every distance is zero (nothing to normalise), or
    when ``curve_fit`` fails or returns non-finite values. Then ``fallback`` is returned (the
    exploration loop passes its current prior, i.e. keeps it), or, without one, :class:`StormError`
    is raised.

    Parameters
    ----------
    ts : sequence of float, length m + 1
        Strictly increasing coefficients starting at exactly 0 and ending at exactly 1.
    distances : sequence of float, length m
        Non-negative distances between neighbouring frames.

    Returns
    -------
    (alpha, beta) : tuple of float
    """
    params, reason = _fit_beta_cdf(ts, distances, init)
    if params is not None:
        return params
    if fallback is None:
        raise StormError(f"cannot refit the Beta prior: {reason}", input_name="distances")
    return (float(fallback[0]), float(fallback[1]))


# --------------------------------------------------------------------------------------------
# exploration


@dataclass(frozen=True)
class Split:
    """One step of the exploration loop (see :func:`explore`)."""

    step: int  #: 1 for the first split of a neighbouring pair, after the initial three frames
    pair: tuple[float, float]  #: the neighbouring pair that was split
    pair_distance: float  #: its distance, the largest of all neighbouring pairs at that time
    prior: Prior  #: the prior that placed the new point
    t: float  #: the new coefficient
    refit: Prior  #: the prior after the refit (equal to ``prior`` where the refit was not made)
    refit_ok: bool  #: whether :func:`beta_refit` produced a fit (else the prior was kept)
    refit_note: str  #: ``"ok"`` or why there was no fit


@dataclass
class Exploration:
    """Record of :func:`explore`: every generated frame and how the prior evolved."""

    ts: list[float]  #: explored coefficients, sorted ascending
    items: list[Any]  #: ``generate(t)`` for each entry of ``ts``
    adjacent: list[float]  #: ``distance`` between sorted neighbours, ``len(ts) - 1`` values
    order: list[float]  #: coefficients in the order they were generated
    splits: list[Split]  #: the split steps in order
    init_prior: Prior  #: the prior before any refit
    prior: Prior  #: the prior after the last refit
    known: dict[tuple[int, int], float] = field(default_factory=dict, repr=False)
    """Distances already computed, keyed by sorted-index pairs ``(i, j)``, ``i < j`` (final indices)."""

    def distance_matrix(self, distance: Callable[[Any, Any], float]) -> np.ndarray:
        """Symmetric ``(n, n)`` matrix of ``distance`` between all explored frames, zero diagonal.

        Pairs measured during the exploration are reused; only the rest are computed, each once
        (``distance(items[i], items[j])`` with ``i < j``).
        """
        n = len(self.ts)
        out = np.zeros((n, n), dtype=np.float64)
        for i in range(n):
            for j in range(i + 1, n):
                value = self.known.get((i, j))
                if value is None:
                    value = _as_distance(distance(self.items[i], self.items[j]))
                    self.known[(i, j)] = value
                out[i, j] = out[j, i] = value
        return out


def _as_distance(value) -> float:
    value = float(value.item() if isinstance(value, torch.Tensor) else value)
    if not math.isfinite(value) or value < 0:
        raise StormError(f"the distance callable returned {value!r}; distances must be finite and non-negative",
                         input_name="distance")
    return value


def explore(generate: Callable[[float], Any], distance: Callable[[Any, Any], float], *,
            exploration_size: int = EXPLORATION_SIZE, init_alpha: float = INIT_ALPHA,
            init_beta: float = INIT_BETA, refit: bool = True) -> Exploration:
    """AID's exploration: place ``exploration_size`` coefficients where the frames change most.

    1. Generate ``t = 0``, then ``t = 1``, then the initial prior's split of ``(0, 1)`` (its median,
       ``0.5`` for a symmetric prior). Three points cannot determine two parameters, so no refit
       happens here.
    2. While fewer than ``exploration_size`` coefficients exist: among the neighbouring pairs of the
       sorted coefficients take the one with the largest ``distance`` (ties: the leftmost pair, the
       one with the smallest ``t_a``), generate the frame at :func:`split_point` of that pair under the
       current prior, measure its distance to both new neighbours, and (``refit=True``) refit the prior
       with :func:`beta_refit` on all current coefficients, keeping the current prior where no fit
       can be made.

    ``generate(t)`` is called exactly once per coefficient and ``distance(x, y)`` once per
    neighbouring pair that ever exists (``x`` the item at the smaller ``t``); the returned
    :class:`Exploration` lists the generation order and every split and refit.

    Parameters
    ----------
    generate : callable ``t -> item``
        Produces the frame (image, embedding, ...) at coefficient ``t``.
    distance : callable ``(item, item) -> float``
        Non-negative distance between two frames (the release: ``1 - cos`` of CLIP image embeddings).
    exploration_size : int
        Number of coefficients to explore, at least 3.
    init_alpha, init_beta : float
        The initial prior.
    refit : bool
        Refit the prior after every split (the method); ``False`` keeps the initial prior.
    """
    if isinstance(exploration_size, bool) or not isinstance(exploration_size, int) or exploration_size < 3:
        raise StormError(f"exploration_size must be an integer of at least 3 (both ends and a middle), got "
                         f"{exploration_size!r}", input_name="exploration_size")
    _check_prior(init_alpha, init_beta)
    prior: Prior = (float(init_alpha), float(init_beta))
    mid = split_point(0.0, 1.0, *prior)
    order: list[float] = []

    def make(t: float):
        order.append(t)
        return generate(t)

    item0, item1 = make(0.0), make(1.0)
    item_mid = make(mid)
    ts = [0.0, mid, 1.0]
    items = [item0, item_mid, item1]
    adjacent = [_as_distance(distance(item0, item_mid)), _as_distance(distance(item_mid, item1))]
    measured = {(0.0, mid): adjacent[0], (mid, 1.0): adjacent[1]}
    splits: list[Split] = []
    while len(ts) < exploration_size:
        k = int(np.argmax(adjacent))  # first maximum: ties go to the leftmost pair
        t_a, t_b = ts[k], ts[k + 1]
        t_new = split_point(t_a, t_b, *prior)
        item = make(t_new)
        d_left = _as_distance(distance(items[k], item))
        d_right = _as_distance(distance(item, items[k + 1]))
        measured[(t_a, t_new)], measured[(t_new, t_b)] = d_left, d_right
        ts.insert(k + 1, t_new)
        items.insert(k + 1, item)
        pair_distance = adjacent[k]
        adjacent[k:k + 1] = [d_left, d_right]
        if refit:
            fitted, note = _fit_beta_cdf(ts, adjacent, FIT_INIT)
        else:
            fitted, note = None, "refit disabled"
        new_prior = fitted if fitted is not None else prior
        splits.append(Split(step=len(splits) + 1, pair=(t_a, t_b), pair_distance=pair_distance, prior=prior,
                            t=t_new, refit=new_prior, refit_ok=fitted is not None, refit_note=note))
        prior = new_prior
    index = {t: i for i, t in enumerate(ts)}
    known = {(index[a], index[b]): d for (a, b), d in measured.items()}
    return Exploration(ts=ts, items=items, adjacent=list(adjacent), order=order, splits=splits,
                       init_prior=(float(init_alpha), float(init_beta)), prior=prior, known=known)


# --------------------------------------------------------------------------------------------
# selection


def _path_reach(allowed: np.ndarray, k: int) -> np.ndarray:
    """``ok[w, c, j]``: node ``j`` reaches the last node in exactly ``c`` more edges within window ``w``.

    ``allowed`` is ``(W, n, n)`` boolean, only ``i < j`` entries may be true. Shape ``(W, k, n)``.
    """
    w, n, _ = allowed.shape
    ok = np.zeros((w, k, n), dtype=bool)
    ok[:, 0, n - 1] = True
    for c in range(1, k):
        # j reaches the end in c edges iff some allowed successor reaches it in c - 1
        ok[:, c] = np.einsum("wij,wj->wi", allowed, ok[:, c - 1].astype(np.int64)) > 0
    return ok


def _windows_feasible(upper_tri: np.ndarray, edges: np.ndarray, lows: np.ndarray, spread: float,
                      k: int) -> np.ndarray:
    """For each lower bound ``L`` in ``lows``: does a ``k``-node path with every edge in ``[L, L + spread]`` exist?"""
    allowed = upper_tri[None] & (edges[None] >= lows[:, None, None]) & (edges[None] <= lows[:, None, None] + spread)
    return _path_reach(allowed, k)[:, k - 1, 0]


def min_spread_path(D, k: int, *, precision: float = PRECISION) -> list[int]:
    """Choose ``k`` frames, first and last included, whose adjacent distances are as even as possible.

    Nodes are the rows of ``D``, sorted by their coefficient ``t``. A *path* is an index sequence
    ``0 = p_0 < p_1 < ... < p_{k-1} = n - 1``; its adjacent distances are ``D[p_i, p_{i+1}]`` (only
    entries above the diagonal are read) and its *spread* is ``max - min`` of those ``k - 1`` values.
    The result minimises the spread (AID's final selection).

    *Feasible* (spread ``s``): there are a lower bound ``L`` and ``U = L + s`` such that some path of
    exactly ``k`` nodes has every adjacent distance in ``[L, U]``. It suffices to try ``L`` among the
    distances above the diagonal (an optimal path's smallest edge is one), and each ``(L, U)`` is
    tested by dynamic programming: ``reach_c(j)`` = "node ``j`` reaches node ``n - 1`` in exactly ``c``
    edges inside the window", ``reach_c(j) = OR_{l > j, D[j,l] in [L,U]} reach_{c-1}(l)``; the window is
    feasible iff ``reach_{k-1}(0)``. Feasibility is monotone in ``s``, so a binary search on
    ``s in [0, max D - min D]`` stops once the interval is at most ``precision`` wide; its upper end
    ``s*`` is feasible and within ``precision`` of the smallest spread.

    Ties (several paths feasible at ``s*``): the window with the smallest ``L``, and within it the
    lexicographically smallest index sequence (each next frame as early as possible). So paths whose
    spreads differ by less than ``precision`` count as equal.

    ``k = 2`` gives ``[0, n - 1]`` and ``k = n`` every node.

    Parameters
    ----------
    D : array-like, shape (n, n)
        Pairwise distances with finite entries above the diagonal.
    k : int
        Number of frames to keep, ``2 <= k <= n``.
    precision : float
        Stopping width of the binary search on the spread.

    Returns
    -------
    list of int, ``k`` increasing indices into ``D``.
    """
    d = np.asarray(D.detach().cpu() if isinstance(D, torch.Tensor) else D, dtype=np.float64)
    if d.ndim != 2 or d.shape[0] != d.shape[1] or d.shape[0] < 2:
        raise ShapeError(f"the distance matrix must be square with at least 2 rows, got {d.shape}", input_name="D")
    n = d.shape[0]
    if isinstance(k, bool) or not isinstance(k, int) or not 2 <= k <= n:
        raise StormError(f"can keep between 2 and {n} frames (both ends included), got {k!r}",
                         input_name="interpolation_size")
    if not (isinstance(precision, (int, float)) and precision > 0):
        raise StormError(f"precision must be positive, got {precision!r}", input_name="precision")
    upper_tri = np.triu(np.ones((n, n), dtype=bool), 1)
    if not np.all(np.isfinite(d[upper_tri])):
        raise StormError("the distance matrix has non-finite entries above the diagonal", input_name="D")
    if k == 2:
        return [0, n - 1]
    lows = np.unique(d[upper_tri])  # ascending candidate lower bounds
    lo, hi = 0.0, float(lows[-1] - lows[0])
    if not _windows_feasible(upper_tri, d, lows, lo, k).any():
        while hi - lo > precision:
            mid = (lo + hi) / 2.0
            if _windows_feasible(upper_tri, d, lows, mid, k).any():
                hi = mid
            else:
                lo = mid
    else:
        hi = lo
    feasible = _windows_feasible(upper_tri, d, lows, hi, k)
    low = lows[int(np.argmax(feasible))]  # the smallest feasible lower bound
    allowed = upper_tri & (d >= low) & (d <= low + hi)
    reach = _path_reach(allowed[None], k)[0]
    path = [0]
    for remaining in range(k - 2, -1, -1):  # edges still to go after the next step
        j = path[-1]
        path.append(next(m for m in range(j + 1, n) if allowed[j, m] and reach[remaining, m]))
    return path


# --------------------------------------------------------------------------------------------
# metrics


def _adjacent_array(adjacent) -> np.ndarray:
    x = np.asarray(adjacent.detach().cpu() if isinstance(adjacent, torch.Tensor) else adjacent, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ShapeError(f"need a non-empty 1-D sequence of adjacent distances, got shape {x.shape}",
                         input_name="adjacent")
    if not np.all(np.isfinite(x)) or np.any(x < 0):
        raise StormError("adjacent distances must be finite and non-negative", input_name="adjacent")
    return x


def gini(adjacent) -> float:
    """Gini coefficient ``G = sum_i sum_j |x_i - x_j| / (2 n^2 mean(x))`` (mean absolute difference over
    all ordered pairs, self-pairs included, divided by twice the mean).

    Equals the sorted-rank form ``sum_i (2i - n - 1) x_(i) / (n sum x)`` (``x_(1) <= ... <= x_(n)``).
    0 for equal values, ``(n - 1) / n`` when one value holds everything. All zeros (or one value):
    0, every distance is equal.
    """
    x = np.sort(_adjacent_array(adjacent))
    n = x.size
    total = x.sum()
    if total <= 0:
        return 0.0
    ranks = np.arange(1, n + 1, dtype=np.float64)
    return float(np.sum((2.0 * ranks - n - 1.0) * x) / (n * total))


def smoothness(adjacent) -> float:
    """AID's smoothness ``1 - Gini(adjacent distances)`` (:func:`gini`): 1 for evenly spaced frames,
    1 for all-zero distances, ``1/n`` when one of ``n`` steps carries all the change."""
    return 1.0 - gini(adjacent)


def consistency(adjacent) -> float:
    """AID's consistency: the mean adjacent distance (lower = neighbouring frames closer)."""
    return float(_adjacent_array(adjacent).mean())


def cosine_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """``1 - cos(a, b)`` of two flattened embeddings (the release: CLIP ViT-B/32 image embeddings),
    in ``[0, 2]``; a zero vector counts as orthogonal (distance 1)."""
    a64 = torch.as_tensor(a).detach().flatten().double()
    b64 = torch.as_tensor(b).detach().flatten().double()
    if a64.shape != b64.shape:
        raise ShapeError(f"embeddings differ in size: {a64.numel()} vs {b64.numel()}", input_name="distance")
    denom = a64.norm() * b64.norm()
    cos = float((a64 @ b64) / denom) if denom > 0 else 0.0
    return float(min(2.0, max(0.0, 1.0 - cos)))


# --------------------------------------------------------------------------------------------
# the whole method


@dataclass
class Selection:
    """Result of :func:`dynamic_selection`."""

    exploration: Exploration
    matrix: np.ndarray  #: pairwise distances of all explored frames, ``(n, n)``
    indices: list[int]  #: chosen indices into ``exploration.ts``
    ts: list[float]  #: chosen coefficients, 0 first and 1 last
    items: list[Any]  #: the chosen frames
    adjacent: list[float]  #: distances between consecutive chosen frames
    spread: float  #: ``max(adjacent) - min(adjacent)``
    smoothness: float
    consistency: float


def dynamic_selection(generate: Callable[[float], Any], distance: Callable[[Any, Any], float], *,
                      exploration_size: int = EXPLORATION_SIZE, interpolation_size: int = INTERPOLATION_SIZE,
                      init_alpha: float = INIT_ALPHA, init_beta: float = INIT_BETA,
                      precision: float = PRECISION) -> Selection:
    """AID's dynamic selection: :func:`explore`, the pairwise distance matrix, :func:`min_spread_path`.

    ``interpolation_size`` (both ends included) must not exceed ``exploration_size``.
    """
    if (isinstance(interpolation_size, bool) or not isinstance(interpolation_size, int)
            or not 2 <= interpolation_size <= max(exploration_size, 2)):
        raise StormError(f"interpolation_size must be an integer from 2 to exploration_size ({exploration_size}), "
                         f"got {interpolation_size!r}", input_name="interpolation_size")
    run = explore(generate, distance, exploration_size=exploration_size, init_alpha=init_alpha, init_beta=init_beta)
    matrix = run.distance_matrix(distance)
    path = min_spread_path(matrix, interpolation_size, precision=precision)
    adjacent = [float(matrix[i, j]) for i, j in zip(path[:-1], path[1:], strict=True)]
    return Selection(exploration=run, matrix=matrix, indices=path, ts=[run.ts[i] for i in path],
                     items=[run.items[i] for i in path], adjacent=adjacent,
                     spread=max(adjacent) - min(adjacent), smoothness=smoothness(adjacent),
                     consistency=consistency(adjacent))
