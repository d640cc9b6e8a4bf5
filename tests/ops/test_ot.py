"""Optimal transport solvers and grid helpers (storm_ops/losses/ot.py)."""

import warnings
from itertools import pairwise

import numpy as np
import pytest
import torch
from scipy.optimize import linprog
from scipy.sparse import coo_matrix, vstack

from storm_ops.errors import ConvergenceWarning, ShapeError, StormError
from storm_ops.losses.ot import (
    _plan,
    _prepare_sinkhorn,
    _sinkhorn_potentials,
    _warn_not_converged,
    centroids,
    entropic_ot,
    pixel_coordinates,
    sinkhorn_reference,
    squared_distance_cost,
)


def _weights(batch, n, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, n, generator=g, dtype=torch.float64) + 0.05
    return (x / x.sum(-1, keepdim=True)).to(dtype)


def _problem(batch=3, n=12, m=9, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed + 100)
    cost = torch.rand(batch, n, m, generator=g, dtype=torch.float64).to(dtype)
    return _weights(batch, n, seed, dtype), _weights(batch, m, seed + 1, dtype), cost


# ------------------------------------------------------------------ test-only solvers
def sinkhorn_log(a, b, cost, reg, *, max_iter=1000, tol=1e-5, check_every=10, warn=True):
    """The plan of the log-domain Sinkhorn that :func:`entropic_ot` runs, differentiable by unrolling.

    Same arguments, validation, iterations and dtype rules as :func:`entropic_ot`, but the
    iterations are recorded by autograd (memory grows with their count) and the result is the
    plan ``P`` (B, n, m) or (n, m), in the dtype of ``a``, with ``info`` holding ``iterations``,
    ``marginal_error``, ``converged``, ``f``, ``g`` and ``transport_cost``.
    """
    a2, b2, c2, unbatched = _prepare_sinkhorn(a, b, cost, reg, max_iter)
    f, g, iters, err, converged = _sinkhorn_potentials(a2, b2, c2, reg, max_iter, tol, max(1, check_every))
    if not converged and warn:
        _warn_not_converged("sinkhorn_log", max_iter, err, tol, reg)
    plan = _plan(a2, b2, c2, f, g, reg)
    info = {"iterations": iters, "marginal_error": err.detach(), "converged": converged,
            "f": f, "g": g, "transport_cost": (plan * c2).sum((-2, -1))}
    plan = plan.to(a.dtype)
    return (plan[0] if unbatched else plan), info


def exact_ot(a, b, cost, *, max_size: int = 40_000):
    """Unregularised OT ``min_P <P, C>`` with ``P 1 = a``, ``P^T 1 = b``, ``P >= 0`` (scipy HiGHS).

    The reference the entropic solver must approach as ``reg -> 0``, for small problems only
    (``n * m <= max_size``). Returns the plan (float64, CPU) and ``{"cost", "status"}``.
    """
    a_np = torch.as_tensor(a).detach().cpu().double().numpy().reshape(-1)
    b_np = torch.as_tensor(b).detach().cpu().double().numpy().reshape(-1)
    c_np = torch.as_tensor(cost).detach().cpu().double().numpy()
    n, m = a_np.size, b_np.size
    if c_np.shape != (n, m):
        raise ShapeError(f"cost must have shape ({n}, {m}), got {c_np.shape}")
    if n * m > max_size:
        raise StormError(f"exact_ot is meant for small problems: {n}x{m} exceeds {max_size} entries; "
                         "use sinkhorn_log with a small reg instead")
    if (a_np < 0).any() or (b_np < 0).any():
        raise StormError("exact_ot needs non-negative weights")
    if not np.isclose(a_np.sum(), b_np.sum(), rtol=1e-9, atol=1e-12):
        raise StormError(f"the marginals have different masses: {a_np.sum()!r} and {b_np.sum()!r}")
    idx = np.arange(n * m)
    rows = coo_matrix((np.ones(n * m), (idx // m, idx)), shape=(n, n * m))  # sum_j P_ij = a_i
    cols = coo_matrix((np.ones(n * m), (idx % m, idx)), shape=(m, n * m))   # sum_i P_ij = b_j
    res = linprog(c_np.reshape(-1), A_eq=vstack([rows, cols]).tocsr(), b_eq=np.concatenate([a_np, b_np]),
                  bounds=(0, None), method="highs")
    if res.status != 0:
        raise StormError(f"exact_ot failed: {res.message}")
    plan = torch.from_numpy(res.x.reshape(n, m))
    return plan, {"cost": float(res.fun), "status": res.message}


pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------ grids
def test_pixel_coordinates_are_x_column_y_row_in_flatten_order_on_non_square_maps():
    pts = pixel_coordinates(3, 5, normalized=False)
    assert pts.shape == (15, 2)
    n = 1 * 5 + 3  # row 1, column 3
    assert pts[n].tolist() == [3.0, 1.0]
    norm = pixel_coordinates(3, 5)
    # pixel centres; the longer side (5 columns) spans [0, 1], pixels stay square
    assert norm[n].tolist() == pytest.approx([3.5 / 5, 1.5 / 5])
    assert norm[:, 0].max().item() == pytest.approx(0.9) and norm[:, 1].max().item() == pytest.approx(0.5)


def test_centroids_of_non_square_maps():
    maps = torch.zeros(2, 3, 5)
    maps[0, 1, 3] = 2.0  # row 1, column 3 (unnormalised mass is fine)
    maps[1, 0, 0] = maps[1, 2, 4] = 1.0
    c = centroids(maps, normalized=False)
    assert c.tolist() == [[3.0, 1.0], [2.0, 1.0]]
    assert centroids(maps)[0].tolist() == pytest.approx([3.5 / 5, 1.5 / 5])


def test_squared_distance_cost():
    cost = squared_distance_cost(2, 3, normalized=False)
    assert cost.shape == (6, 6)
    assert torch.equal(cost, cost.T) and torch.all(cost.diagonal() == 0)
    assert cost[0, 5].item() == pytest.approx(1 + 4)  # (x, y) = (0, 0) -> (2, 1)
    assert squared_distance_cost(2, 3)[0, 5].item() == pytest.approx(5 / 9)


# ------------------------------------------------------------------------ log Sinkhorn
def test_plan_meets_its_marginals():
    a, b, cost = _problem()
    plan, info = sinkhorn_log(a, b, cost, 0.05, tol=1e-9)
    assert info["converged"] and info["iterations"] < 1000
    assert torch.allclose(plan.sum(-1), a, atol=1e-9)
    assert torch.allclose(plan.sum(-2), b, atol=1e-12)
    assert float(info["marginal_error"].max()) <= 1e-9
    assert torch.allclose(info["transport_cost"], (plan * cost).sum((-2, -1)))


def test_entropic_cost_converges_to_the_exact_solution_as_reg_goes_to_zero():
    h, w = 3, 4
    cost = squared_distance_cost(h, w, dtype=torch.float64)
    a, b = _weights(1, h * w, 3)[0], _weights(1, h * w, 4)[0]
    exact_plan, exact = exact_ot(a, b, cost)
    assert torch.allclose(exact_plan.sum(1), a, atol=1e-9) and torch.allclose(exact_plan.sum(0), b, atol=1e-9)
    gaps = []
    for reg in (0.1, 0.03, 0.01, 0.003, 0.001):
        plan, _ = sinkhorn_log(a, b, cost, reg, tol=1e-10, max_iter=20000)
        gaps.append(float((plan * cost).sum()) - exact["cost"])
    assert all(g >= -1e-9 for g in gaps)  # the LP is optimal
    assert all(g2 < g1 for g1, g2 in pairwise(gaps))
    assert gaps[-1] < 1e-3 * max(exact["cost"], 1e-3)


def test_entropic_plan_converges_to_the_exact_plan_for_a_generic_cost():
    a, b, cost = _problem(batch=1, n=6, m=5, seed=4)  # random costs: the LP optimum is unique
    exact_plan, _ = exact_ot(a[0], b[0], cost[0])
    errors = []
    for reg in (0.1, 0.01, 0.001):
        plan, _ = sinkhorn_log(a[0], b[0], cost[0], reg, tol=1e-11, max_iter=50000)
        errors.append(float((plan - exact_plan).abs().sum()))
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-3


def test_batched_equals_per_item_with_shared_and_batched_costs():
    a, b, cost = _problem()
    plan, _ = sinkhorn_log(a, b, cost, 0.05, tol=1e-10)
    shared, _ = sinkhorn_log(a, b, cost[0], 0.05, tol=1e-10)
    for i in range(3):
        single, _ = sinkhorn_log(a[i], b[i], cost[i], 0.05, tol=1e-10)
        assert single.shape == (12, 9)
        assert torch.allclose(plan[i], single, atol=1e-12)
        alone, _ = sinkhorn_log(a[i], b[i], cost[0], 0.05, tol=1e-10)
        assert torch.allclose(shared[i], alone, atol=1e-12)
    value, _ = entropic_ot(a, b, cost, 0.05, tol=1e-10)
    assert torch.allclose(value, torch.stack([entropic_ot(a[i], b[i], cost[i], 0.05, tol=1e-10)[0]
                                              for i in range(3)]), atol=1e-12)


def test_unrolled_gradients_exist_and_are_finite_with_zero_weights():
    a, b, cost = _problem(dtype=torch.float32)
    a = a.clone()
    a[:, :3] = 0.0  # empty source pixels (a truncated target blob has many)
    a = (a / a.sum(-1, keepdim=True)).requires_grad_(True)
    cost = cost.clone().requires_grad_(True)
    plan, _ = sinkhorn_log(a, b, cost, 0.05)
    (plan * cost).sum().backward()
    assert a.grad is not None and cost.grad is not None
    assert torch.isfinite(a.grad).all() and torch.isfinite(cost.grad).all()
    assert a.grad.abs().sum() > 0


def test_envelope_gradients_match_finite_differences():
    a, b, cost = _problem(batch=1, n=8, m=7, seed=5)
    a = a[0].requires_grad_(True)
    cost = cost[0].requires_grad_(True)
    reg = 0.05
    value, info = entropic_ot(a, b[0], cost, reg, tol=1e-12, max_iter=10000)
    value.backward()
    assert torch.allclose(cost.grad, info["plan"][0], atol=1e-12)  # dOT/dC = P
    g = torch.Generator().manual_seed(9)
    for _ in range(3):
        da = torch.randn(8, generator=g, dtype=torch.float64)
        da = 1e-6 * (da - da.mean())  # stay on the simplex
        dc = 1e-6 * torch.randn(8, 7, generator=g, dtype=torch.float64)
        with torch.no_grad():
            up, _ = entropic_ot(a + da, b[0], cost + dc, reg, tol=1e-13, max_iter=20000)
            down, _ = entropic_ot(a - da, b[0], cost - dc, reg, tol=1e-13, max_iter=20000)
        numeric = float(up - down) / 2
        analytic = float((a.grad * da).sum() + (cost.grad * dc).sum())
        assert numeric == pytest.approx(analytic, rel=1e-4, abs=1e-12)


def test_envelope_and_unrolled_gradients_agree_at_convergence():
    a, b, cost = _problem(batch=2, n=10, m=10, seed=2)
    a1 = a.clone().requires_grad_(True)
    plan, info = sinkhorn_log(a1, b, cost, 0.1, tol=1e-12, max_iter=5000)
    # the primal objective <P, C> + reg KL(P | a b^T) equals the entropic OT value
    kl = (plan * (torch.log(plan) - torch.log(a1[:, :, None] * b[:, None, :]))).sum((-2, -1))
    ((plan * cost).sum((-2, -1)) + 0.1 * kl).sum().backward()
    a2 = a.clone().requires_grad_(True)
    value, _ = entropic_ot(a2, b, cost, 0.1, tol=1e-12, max_iter=5000)
    value.sum().backward()
    centred = lambda g: g - g.mean(-1, keepdim=True)  # noqa: E731 (gradients on the simplex)
    assert torch.allclose(centred(a1.grad), centred(a2.grad), atol=1e-7)


def test_convergence_warning_with_too_few_iterations():
    a, b, cost = _problem()
    with pytest.warns(ConvergenceWarning, match="increase max_iter or reg"):
        _, info = sinkhorn_log(a, b, cost, 0.001, max_iter=3, tol=1e-12)
    assert not info["converged"] and info["iterations"] == 3
    with pytest.warns(ConvergenceWarning):
        entropic_ot(a, b, cost, 0.001, max_iter=3, tol=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sinkhorn_log(a, b, cost, 0.001, max_iter=3, tol=1e-12, warn=False)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_dtype_and_device_are_preserved(dtype):
    a, b, cost = _problem(dtype=dtype)
    plan, info = sinkhorn_log(a, b, cost, 0.1, tol=1e-3)
    assert plan.dtype == dtype and plan.device == a.device
    assert info["f"].dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    value, _ = entropic_ot(a, b, cost, 0.1, tol=1e-3)
    assert value.dtype == dtype and value.shape == (3,)
    ref, _ = sinkhorn_reference(a.float(), b.float(), cost.float())
    assert ref.dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_runs_on_the_inputs_device():
    a, b, cost = (t.cuda() for t in _problem(dtype=torch.float32))
    plan, info = sinkhorn_log(a, b, cost, 0.05)
    assert plan.is_cuda and info["converged"]
    cpu, _ = sinkhorn_log(a.cpu(), b.cpu(), cost.cpu(), 0.05)
    assert torch.allclose(plan.cpu(), cpu, atol=1e-5)


def test_inputs_are_not_modified_and_shapes_are_checked():
    a, b, cost = _problem()
    copies = [t.clone() for t in (a, b, cost)]
    sinkhorn_log(a, b, cost, 0.05)
    entropic_ot(a, b, cost, 0.05)
    sinkhorn_reference(a, b, cost)
    assert all(torch.equal(x, y) for x, y in zip((a, b, cost), copies, strict=True))
    with pytest.raises(ShapeError):
        sinkhorn_log(a, b, cost[:, :, :5], 0.05)
    with pytest.raises(ShapeError):
        sinkhorn_log(a, b[:2], cost, 0.05)
    with pytest.raises(StormError):
        sinkhorn_log(a, b, cost, 0.0)


# ------------------------------------------------------------------- released Sinkhorn
def test_reference_sinkhorn_follows_the_released_iterations():
    a, b, cost = _problem(batch=1, n=6, m=5, seed=7, dtype=torch.float32)
    a, b, cost = a[0], b[0], cost[0] * 3
    kernel = torch.exp(-cost / (0.1 + 1e-8))
    u, v = torch.ones_like(a), torch.ones_like(b)
    for _ in range(100):
        u = a / (kernel @ v + 1e-8)
        v = b / (kernel.t() @ u + 1e-8)
    expected = torch.diag(u) @ kernel @ torch.diag(v)
    plan, info = sinkhorn_reference(a, b, cost)
    assert torch.allclose(plan, expected, rtol=1e-6, atol=1e-12)
    assert info["iterations"] == 100


def test_reference_sinkhorn_value_ignores_the_target_for_rank_one_costs():
    # released STORM code: with C[n, m] = c_n (rank 1) the loss <P, C> does not depend on the target
    a = _weights(1, 16, 1, torch.float32)[0]
    c = torch.rand(16, generator=torch.Generator().manual_seed(3)) * 2
    cost = c[:, None].expand(16, 16)
    values = []
    for seed in (11, 12, 13):
        b = _weights(1, 16, seed, torch.float32)[0]
        plan, _ = sinkhorn_reference(a, b, cost)
        values.append(float((plan * cost).sum()))
    assert max(values) - min(values) < 1e-6


# ---------------------------------------------------------------------------- exact OT
def test_exact_ot_small_cases_and_errors():
    plan, info = exact_ot([0.5, 0.5], [0.5, 0.5], [[1.0, 0.0], [0.0, 1.0]])
    assert torch.allclose(plan, torch.tensor([[0.0, 0.5], [0.5, 0.0]], dtype=torch.float64))
    assert info["cost"] == pytest.approx(0.0)
    with pytest.raises(StormError, match="different masses"):
        exact_ot([0.5, 0.5], [0.5, 0.6], torch.zeros(2, 2))
    with pytest.raises(StormError, match="small problems"):
        exact_ot(torch.ones(300) / 300, torch.ones(300) / 300, torch.zeros(300, 300))
