"""AID / PAID dynamic selection (He et al., NeurIPS 2024): Beta refit, exploration, min-spread path, metrics.

Expected numbers are derived by hand in the comments (closed-form Beta CDFs for integer shapes,
explicit enumeration of paths) or by brute force, never read back from the implementation.
"""

import itertools
import math

import numpy as np
import pytest
import torch

from storm_ops.aid import selection as sel
from storm_ops.aid.selection import (
    beta_cdf,
    beta_ppf,
    beta_refit,
    consistency,
    cosine_distance,
    dynamic_selection,
    explore,
    gini,
    min_spread_path,
    smoothness,
    split_point,
)
from storm_ops.errors import ShapeError, StormError

# Closed-form Beta CDFs for integer shapes: I_x(a, b) = sum_{j=a}^{a+b-1} C(a+b-1, j) x^j (1-x)^(a+b-1-j).


def F33(x):
    # a = b = 3: 10x^3(1-x)^2 + 5x^4(1-x) + x^5 = 10x^3 - 15x^4 + 6x^5
    return 10 * x**3 - 15 * x**4 + 6 * x**5


def F23(x):
    # a = 2, b = 3: 6x^2(1-x)^2 + 4x^3(1-x) + x^4
    return 6 * x**2 * (1 - x) ** 2 + 4 * x**3 * (1 - x) + x**4


def F21(x):
    # a = 2, b = 1: x^2
    return x**2


FIXTURE_33_7 = [0, 0.3027, 0.4091, 0.5, 0.5909, 0.6973, 1]  # Beta(3, 3), n = 7 (methods.md 5.3)


def test_defaults_are_the_releases():
    assert sel.EXPLORATION_SIZE == 16
    assert sel.INIT_ALPHA == sel.INIT_BETA == 3.0
    assert sel.INTERPOLATION_SIZE == 7
    assert sel.PRECISION == 1e-6
    assert sel.FIT_INIT == (1.0, 1.0)
    assert sel.FIT_BOUNDS[0] > 0


# --------------------------------------------------------------------------------------------
# the prior


def test_beta_cdf_and_quantiles_match_the_schedule_fixture():
    # F33(0.3027) = 10*0.027736 - 15*0.0083957 + 6*0.0025414 = 0.27736 - 0.12594 + 0.01525 = 0.16667 ~ 1/6
    # F33(0.4091) = 10*0.068468 - 15*0.028010 + 6*0.011459 = 0.68468 - 0.42015 + 0.06875 = 0.33328 ~ 2/6
    for i, t in enumerate(FIXTURE_33_7):
        assert F33(t) == pytest.approx(i / 6, abs=2e-4)
        assert beta_cdf(t, 3, 3) == pytest.approx(F33(t), abs=1e-12)
        assert beta_ppf(i / 6, 3, 3) == pytest.approx(t, abs=1e-4)


def test_split_point_halves_the_prior_mass():
    # (0, 1) under Beta(3, 3): F^-1((0 + 1) / 2) = the median of a symmetric prior = 0.5
    assert split_point(0.0, 1.0, 3, 3) == pytest.approx(0.5, abs=1e-12)
    # (0, 0.25) under Beta(1, 1): F(t) = t, F^-1((0 + 0.25) / 2) = 0.125
    assert split_point(0.0, 0.25, 1, 1) == pytest.approx(0.125, abs=1e-12)
    # (0.3027, 0.5) under Beta(3, 3): F = 1/6 and 1/2 (fixture), mean 1/3 -> the fixture's t_2 = 0.4091
    assert split_point(0.3027, 0.5, 3, 3) == pytest.approx(0.4091, abs=2e-4)
    # Beta(2, 1): F(t) = t^2, F^-1(q) = sqrt(q). (0, 1) -> sqrt(1/2) = 0.70711; (0.5, 1): F = 0.25, 1,
    # mean 0.625 -> sqrt(0.625) = 0.79057
    assert split_point(0.0, 1.0, 2, 1) == pytest.approx(math.sqrt(0.5), abs=1e-12)
    assert split_point(0.5, 1.0, 2, 1) == pytest.approx(math.sqrt(0.625), abs=1e-12)


def test_split_point_rejects_bad_pairs_and_priors():
    for pair in [(0.5, 0.5), (0.6, 0.4), (-0.1, 0.5), (0.5, 1.1)]:
        with pytest.raises(StormError):
            split_point(*pair, 1, 1)
    for prior in [(0, 1), (1, -2), (float("nan"), 1), (True, 1)]:
        with pytest.raises(StormError):
            split_point(0.0, 1.0, *prior)


def test_refit_recovers_a_known_beta():
    # Distances that are differences of a Beta CDF (any scale) accumulate to that CDF exactly.
    ts = [0, 0.2, 0.45, 0.7, 0.9, 1]
    d = [3.0 * (F23(b) - F23(a)) for a, b in zip(ts[:-1], ts[1:], strict=True)]
    alpha, beta = beta_refit(ts, d)
    assert alpha == pytest.approx(2.0, abs=1e-6) and beta == pytest.approx(3.0, abs=1e-6)
    # Beta(2, 1), F = t^2 at 0, 0.2, 0.5, 0.8, 1: distances 0.04, 0.21, 0.39, 0.36 (sum 1)
    alpha, beta = beta_refit([0, 0.2, 0.5, 0.8, 1], [0.04, 0.21, 0.39, 0.36])
    assert alpha == pytest.approx(2.0, abs=1e-6) and beta == pytest.approx(1.0, abs=1e-6)


def test_refit_on_uniform_distances_gives_the_uniform_prior():
    # even steps, equal distances: cumulative 0.25, 0.5, 0.75 at t = 0.25, 0.5, 0.75 -> F(t) = t -> Beta(1, 1)
    assert beta_refit([0, 0.25, 0.5, 0.75, 1], [1, 1, 1, 1]) == pytest.approx((1.0, 1.0), abs=1e-6)
    # uneven steps, distances proportional to the steps: cumulative = t again
    ts = [0, 0.1, 0.4, 0.5, 1]
    d = [0.2, 0.6, 0.2, 1.0]  # 2 * step
    assert beta_refit(ts, d) == pytest.approx((1.0, 1.0), abs=1e-6)


def test_refit_falls_back_or_raises_when_no_fit_can_be_made():
    # three coefficients: one interior point for two parameters
    assert beta_refit([0, 0.5, 1], [1, 2], fallback=(3, 3)) == (3.0, 3.0)
    with pytest.raises(StormError, match="interior"):
        beta_refit([0, 0.5, 1], [1, 2])
    # all distances zero: nothing to normalise
    assert beta_refit([0, 0.3, 0.6, 1], [0, 0, 0], fallback=(2, 5)) == (2.0, 5.0)
    with pytest.raises(StormError, match="zero"):
        beta_refit([0, 0.3, 0.6, 1], [0, 0, 0])


def test_refit_rejects_bad_input():
    with pytest.raises(StormError):
        beta_refit([0.1, 0.5, 0.7, 1], [1, 1, 1])  # does not start at 0
    with pytest.raises(StormError):
        beta_refit([0, 0.5, 0.3, 1], [1, 1, 1])  # not increasing
    with pytest.raises(StormError):
        beta_refit([0, 0.3, 0.6, 1], [1, -1, 1])
    with pytest.raises(ShapeError):
        beta_refit([0, 0.3, 0.6, 1], [1, 1])


# --------------------------------------------------------------------------------------------
# exploration


class Counting:
    """Wraps g(t) and |g(a) - g(b)|, counting calls."""

    def __init__(self, g):
        self.g = g
        self.generated = []
        self.pairs = []

    def generate(self, t):
        self.generated.append(t)
        return self.g(t)

    def distance(self, x, y):
        self.pairs.append((x, y))
        return abs(x - y)


def test_exploration_splits_the_largest_gap_first():
    # g(t) = t^2, uniform prior kept (refit off), so every split is at the midpoint:
    #   ts 0, .5, 1          g 0, .25, 1                    d .25, .75            -> split (.5, 1) at .75
    #   ts 0, .5, .75, 1     g ..., .5625, 1                d .25, .3125, .4375   -> (.75, 1) at .875
    #   ts ..., .875, 1      g(.875) = .765625              d .25, .3125, .203125, .234375 -> (.5, .75) at .625
    #   g(.625) = .390625    d .25, .140625, .171875, .203125, .234375                  -> (0, .5) at .25
    c = Counting(lambda t: t * t)
    run = explore(c.generate, c.distance, exploration_size=7, init_alpha=1, init_beta=1, refit=False)
    assert run.order == pytest.approx([0, 1, 0.5, 0.75, 0.875, 0.625, 0.25])
    assert c.generated == run.order  # each coefficient generated once, in this order
    assert [s.pair for s in run.splits] == [pytest.approx(p) for p in [(0.5, 1), (0.75, 1), (0.5, 0.75), (0, 0.5)]]
    assert [s.pair_distance for s in run.splits] == pytest.approx([0.75, 0.4375, 0.3125, 0.25])
    assert [s.step for s in run.splits] == [1, 2, 3, 4]
    assert all(s.prior == (1.0, 1.0) and s.refit == (1.0, 1.0) and not s.refit_ok for s in run.splits)
    assert run.ts == pytest.approx([0, 0.25, 0.5, 0.625, 0.75, 0.875, 1])
    assert run.items == pytest.approx([t * t for t in run.ts])
    # g at the sorted ts: 0, .0625, .25, .390625, .5625, .765625, 1
    assert run.adjacent == pytest.approx([0.0625, 0.1875, 0.140625, 0.171875, 0.203125, 0.234375])
    assert len(c.pairs) == 2 + 2 * 4  # the first two neighbours, then two per split


def test_exploration_ties_go_to_the_leftmost_pair_and_linear_change_keeps_the_uniform_prior():
    # g(t) = t, init Beta(1, 1), refits on:
    #   d .5, .5 (tie) -> leftmost (0, .5) at .25; then ts 0, .25, .5, 1, d .25, .25, .5: cumulative .25, .5
    #   at t = .25, .5 -> F(t) = t -> refit (1, 1); split (.5, 1) at .75; all d = .25 -> (0, .25) at .125
    run = explore(lambda t: t, lambda x, y: abs(x - y), exploration_size=6, init_alpha=1, init_beta=1)
    assert run.order == pytest.approx([0, 1, 0.5, 0.25, 0.75, 0.125])
    for s in run.splits:
        assert s.refit_ok and s.refit == pytest.approx((1.0, 1.0), abs=1e-6)
    assert run.prior == pytest.approx((1.0, 1.0), abs=1e-6)


def test_exploration_refits_the_prior_to_how_the_frames_change():
    # g = F23 (Beta(2, 3) CDF). Init Beta(3, 3): middle 0.5; g(.5) = 6/16*... = .375 + .25 + .0625 = .6875,
    # so d = .6875, .3125 -> split (0, .5) at F33^-1((0 + .5) / 2) = F33^-1(.25). Then 0, t1, .5, 1 with
    # distances = differences of F23: the refit recovers (2, 3), and every later split halves F23 mass
    # in the pair with the largest F23 gap.
    run = explore(F23, lambda x, y: abs(x - y), exploration_size=10)
    assert run.order[:3] == pytest.approx([0, 1, 0.5])
    first = run.splits[0]
    assert first.prior == (3.0, 3.0)
    assert first.pair == pytest.approx((0, 0.5)) and first.pair_distance == pytest.approx(0.6875)
    assert F33(first.t) == pytest.approx(0.25, abs=1e-9)
    assert first.refit_ok and first.refit == pytest.approx((2.0, 3.0), abs=1e-5)
    present = sorted(run.order[:4])
    for s in run.splits[1:]:
        assert s.prior == pytest.approx((2.0, 3.0), abs=1e-5)
        gaps = [F23(b) - F23(a) for a, b in zip(present[:-1], present[1:], strict=True)]
        k = gaps.index(max(gaps))
        assert s.pair == pytest.approx((present[k], present[k + 1]))
        assert F23(s.t) == pytest.approx((F23(present[k]) + F23(present[k + 1])) / 2, abs=1e-7)
        present = sorted([*present, s.t])
    assert run.ts == pytest.approx(present)
    assert len(run.ts) == 10 and len(run.splits) == 7


def test_exploration_middle_is_the_initial_priors_median():
    # Beta(2, 1): F = t^2, median sqrt(1/2); three coefficients, no split and no refit
    run = explore(lambda t: t, lambda x, y: abs(x - y), exploration_size=3, init_alpha=2, init_beta=1)
    assert run.order == pytest.approx([0, 1, math.sqrt(0.5)])
    assert run.splits == [] and run.prior == (2.0, 1.0)


def test_exploration_rejects_bad_arguments():
    ok = (lambda t: t, lambda x, y: abs(x - y))
    for size in (2, 0, 3.0, True):
        with pytest.raises(StormError):
            explore(*ok, exploration_size=size)
    with pytest.raises(StormError):
        explore(*ok, init_alpha=0)
    with pytest.raises(StormError):
        explore(lambda t: t, lambda x, y: x - y)  # negative "distance"


def test_distance_matrix_measures_each_pair_once():
    c = Counting(lambda t: t**3)
    run = explore(c.generate, c.distance, exploration_size=6, init_alpha=1, init_beta=1)
    m = run.distance_matrix(c.distance)
    n = len(run.ts)
    assert len(c.pairs) == n * (n - 1) // 2  # 15: exploration's pairs are reused
    g = np.array(run.ts) ** 3
    assert np.allclose(m, np.abs(g[:, None] - g[None, :]), atol=1e-15)


# --------------------------------------------------------------------------------------------
# selection


def _upper(n, entries):
    d = np.full((n, n), np.nan)  # below the diagonal is never read
    np.fill_diagonal(d, 0.0)
    for (i, j), v in entries.items():
        d[i, j] = v
    return d


HAND_6 = _upper(6, {
    (0, 1): .1, (0, 2): .3, (0, 3): .5, (0, 4): .7, (0, 5): 1.0,
    (1, 2): .2, (1, 3): .35, (1, 4): .5, (1, 5): .9,
    (2, 3): .3, (2, 4): .25, (2, 5): .6,
    (3, 4): .2, (3, 5): .32,
    (4, 5): .28,
})


def test_min_spread_path_on_a_hand_made_matrix():
    # k = 4, paths 0-a-b-5, edges (D0a, Dab, Db5), spread = max - min:
    #   (1,2): .1 .2  .6  -> .5     (1,3): .1 .35 .32 -> .25    (1,4): .1 .5  .28 -> .4
    #   (2,3): .3 .3  .32 -> .02    (2,4): .3 .25 .28 -> .05    (3,4): .5 .2  .28 -> .3
    assert min_spread_path(HAND_6, 4) == [0, 2, 3, 5]
    # k = 3, paths 0-m-5: m=1 .1/.9 -> .8, m=2 .3/.6 -> .3, m=3 .5/.32 -> .18, m=4 .7/.28 -> .42
    assert min_spread_path(HAND_6, 3) == [0, 3, 5]
    assert min_spread_path(HAND_6, 2) == [0, 5]
    assert min_spread_path(HAND_6, 6) == [0, 1, 2, 3, 4, 5]
    assert min_spread_path(torch.tensor(np.nan_to_num(HAND_6)), 4) == [0, 2, 3, 5]


def test_min_spread_path_tie_breaks():
    # both paths of k = 3 have spread 0: [0,1,3] in window [.2, .2], [0,2,3] in [.5, .5] -> smallest L
    d = _upper(4, {(0, 1): .2, (1, 3): .2, (0, 2): .5, (2, 3): .5, (0, 3): .9, (1, 2): .9})
    assert min_spread_path(d, 3) == [0, 1, 3]
    # swapped: the window rule beats the lexicographic one
    d = _upper(4, {(0, 1): .5, (1, 3): .5, (0, 2): .2, (2, 3): .2, (0, 3): .9, (1, 2): .9})
    assert min_spread_path(d, 3) == [0, 2, 3]
    # same window: lexicographically smallest
    d = _upper(4, {(0, 1): .2, (1, 3): .2, (0, 2): .2, (2, 3): .2, (0, 3): .9, (1, 2): .9})
    assert min_spread_path(d, 3) == [0, 1, 3]


def _brute_force(d, k):
    n = d.shape[0]
    best = None
    for middle in itertools.combinations(range(1, n - 1), k - 2):
        path = [0, *middle, n - 1]
        edges = [d[a, b] for a, b in zip(path[:-1], path[1:], strict=True)]
        spread = max(edges) - min(edges)
        if best is None or spread < best[0]:
            best = (spread, path)
    return best


def test_min_spread_path_matches_brute_force():
    rng = np.random.default_rng(0)
    for trial in range(6):
        n, k = 7, 3 + trial % 3
        d = np.triu(rng.random((n, n)), 1)
        d = d + d.T
        spread, path = _brute_force(d, k)  # continuous random entries: the optimum is unique
        got = min_spread_path(d, k)
        edges = [d[a, b] for a, b in zip(got[:-1], got[1:], strict=True)]
        assert max(edges) - min(edges) <= spread + 1e-6
        assert got == path


def test_min_spread_path_rejects_bad_input():
    with pytest.raises(ShapeError):
        min_spread_path(np.zeros((3, 4)), 2)
    for k in (1, 7, 2.0):
        with pytest.raises(StormError):
            min_spread_path(HAND_6, k)
    bad = np.nan_to_num(HAND_6)
    bad[1, 2] = np.inf
    with pytest.raises(StormError):
        min_spread_path(bad, 3)


# --------------------------------------------------------------------------------------------
# metrics


def test_gini_smoothness_consistency_by_hand():
    # [1, 1, 1]: every difference 0 -> Gini 0, smoothness 1, mean 1
    assert gini([1, 1, 1]) == pytest.approx(0.0)
    assert smoothness([1, 1, 1]) == pytest.approx(1.0)
    assert consistency([1, 1, 1]) == pytest.approx(1.0)
    # [0, 0, 3]: mean |x_i - x_j| over the 9 ordered pairs = (0+0+3+0+0+3+3+3+0)/9 = 12/9, mean 1
    # -> Gini = (12/9) / 2 = 2/3, smoothness 1/3, consistency 1
    assert gini([0, 0, 3]) == pytest.approx(2 / 3)
    assert smoothness([0, 0, 3]) == pytest.approx(1 / 3)
    assert consistency([0, 0, 3]) == pytest.approx(1.0)
    # [1, 3]: mean abs difference (0+2+2+0)/4 = 1, mean 2 -> Gini 1/4
    assert gini(torch.tensor([1.0, 3.0])) == pytest.approx(0.25)
    # all zeros: no change anywhere counts as perfectly even
    assert smoothness([0, 0, 0]) == 1.0 and consistency([0, 0, 0]) == 0.0
    assert gini([5.0]) == 0.0


def test_gini_equals_the_mean_absolute_difference_form():
    x = np.random.default_rng(1).random(9)
    mad = np.abs(x[:, None] - x[None, :]).mean()
    assert gini(x) == pytest.approx(mad / (2 * x.mean()), abs=1e-12)


def test_metrics_reject_bad_input():
    for bad in ([], [1, -1], [1, float("nan")]):
        with pytest.raises(StormError):
            smoothness(bad)
        with pytest.raises(StormError):
            consistency(bad)


def test_cosine_distance():
    assert cosine_distance(torch.tensor([1.0, 0]), torch.tensor([0, 1.0])) == pytest.approx(1.0)
    assert cosine_distance(torch.tensor([1.0, 0]), torch.tensor([2.0, 0])) == pytest.approx(0.0)
    assert cosine_distance(torch.tensor([1.0, 0]), torch.tensor([-3.0, 0])) == pytest.approx(2.0)
    assert cosine_distance(torch.zeros(2), torch.tensor([1.0, 0])) == pytest.approx(1.0)
    with pytest.raises(ShapeError):
        cosine_distance(torch.zeros(2), torch.zeros(3))


# --------------------------------------------------------------------------------------------
# the whole method


def test_dynamic_selection_end_to_end_on_a_synthetic_change():
    g = lambda t: t**3  # noqa: E731
    out = dynamic_selection(g, lambda x, y: abs(x - y), exploration_size=8, interpolation_size=4)
    ts = out.exploration.ts
    assert len(ts) == 8 and out.ts[0] == 0.0 and out.ts[-1] == 1.0 and len(out.ts) == 4
    # the matrix is |g(t_i) - g(t_j)|; the path is the brute-force min-spread path over it
    gt = np.array(ts) ** 3
    assert np.allclose(out.matrix, np.abs(gt[:, None] - gt[None, :]), atol=1e-15)
    assert out.indices == _brute_force(out.matrix, 4)[1]
    assert out.ts == [ts[i] for i in out.indices] and out.items == pytest.approx([t**3 for t in out.ts])
    adjacent = [out.ts[i + 1] ** 3 - out.ts[i] ** 3 for i in range(3)]
    assert out.adjacent == pytest.approx(adjacent)
    assert out.spread == pytest.approx(max(adjacent) - min(adjacent))
    assert out.consistency == pytest.approx(1 / 3)  # g(1) - g(0) = 1 over 3 steps, whatever the path
    assert out.smoothness == pytest.approx(1 - gini(adjacent))
    with pytest.raises(StormError):
        dynamic_selection(g, lambda x, y: abs(x - y), exploration_size=5, interpolation_size=6)
