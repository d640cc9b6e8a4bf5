"""A-STAR segregation and retention (Agarwal et al., ICCV 2023) on hand-checkable inputs."""

from dataclasses import replace

import pytest
import torch
from test_token_layout import CAT_DOG, layout_of

from storm_ops.attention.maps import MapSettings, word_maps
from storm_ops.errors import ShapeError, StormError
from storm_ops.guidance.terms import Guidance, GuidanceContext
from storm_ops.losses.astar import (
    AStarConfig,
    AStarTerm,
    binary_layout_mask,
    high_activation_mask,
    overlap_ratio,
    pair_indices,
    retention,
    segregation,
)
from storm_ops.tokens.layout import Subject

CAT, DOG = Subject("cat", (2,)), Subject("dog", (5,))
RAW = AStarConfig(MapSettings(smooth=False, end_token_convention="words"))


def _maps(length, h=6, w=5, batch=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(batch, length, h, w, generator=g) * 3, 1)


def test_overlap_identical_disjoint_and_hand_values():
    a = torch.rand(3, 4, 5)
    assert torch.allclose(overlap_ratio(a, a), torch.full((3,), 0.5))
    left = torch.zeros(4, 4)
    left[:, :2] = 0.7
    right = torch.zeros(4, 4)
    right[:, 2:] = 0.3
    assert overlap_ratio(left, right).item() == 0.0
    x = torch.tensor([[1.0, 0.5]])
    y = torch.tensor([[0.5, 0.5]])
    assert overlap_ratio(x, y).item() == pytest.approx((0.5 + 0.5) / 2.5)  # sum min / sum (a + b)
    zero = torch.zeros(2, 2, requires_grad=True)
    value = overlap_ratio(zero, torch.zeros(2, 2))
    value.backward()
    assert value.item() == 0.0 and torch.isfinite(zero.grad).all()


def test_segregation_pairs():
    assert pair_indices(3) == ([0, 0, 1], [1, 2, 2])
    a = torch.rand(2, 1, 4, 4)
    maps = torch.cat([a, a, torch.zeros_like(a)], 1)
    maps[:, 2, 0, 0] = 1.0
    maps[:, :2, 0, 0] = 0.0  # concept 2 is disjoint from 0 and 1
    seg = segregation(maps)
    assert seg.shape == (2, 3)
    assert torch.allclose(seg[:, 0], torch.full((2,), 0.5))  # identical maps
    assert torch.all(seg[:, 1:] == 0)  # disjoint maps
    assert segregation(a).shape == (2, 0)  # one concept: no pairs


def test_retention_is_at_least_one_half_and_one_half_on_its_own_mask():
    g = torch.Generator().manual_seed(1)
    maps = torch.rand(3, 4, 6, 5, generator=g)
    masks = (torch.rand(3, 4, 6, 5, generator=g) > 0.5).float()
    ret = retention(maps, masks)
    assert ret.shape == (3, 4)
    assert bool((ret >= 0.5).all()) and bool((ret <= 1.0).all())
    assert torch.allclose(retention(masks, masks), torch.full((3, 4), 0.5))
    a = torch.tensor([[[[0.2, 0.8], [0.0, 0.0]]]])
    b = torch.tensor([[[[0.0, 1.0], [1.0, 0.0]]]])
    assert retention(a, b).item() == pytest.approx(1 - 0.8 / 3.0)  # 1 - sum min / sum (a + b)


def test_high_activation_mask_is_half_the_maximum():
    m = torch.tensor([[[0.1, 0.5], [0.26, 0.24]]], requires_grad=True)
    mask = high_activation_mask(m)
    assert torch.equal(mask, torch.tensor([[[0.0, 1.0], [1.0, 0.0]]]))
    assert not mask.requires_grad
    assert torch.equal(high_activation_mask(torch.zeros(2, 3)), torch.ones(2, 3))  # never empty


def test_resize_mask_any_resolution_and_aspect():
    big = torch.zeros(64, 48)
    big[:, :24] = 1
    small = binary_layout_mask(big, (16, 12))
    assert small.shape == (16, 12) and torch.equal(small[:, :6], torch.ones(16, 6)) and small[:, 6:].sum() == 0
    tiny = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    up = binary_layout_mask(tiny, (4, 4))
    assert torch.equal(up[:2, :2], torch.ones(2, 2)) and up.sum() == 4
    assert torch.equal(binary_layout_mask(tiny.bool(), (2, 2)), tiny)


def _term(**kw):
    return AStarTerm(layout_of(CAT_DOG), (CAT, DOG), kw.pop("config", RAW), **kw)


def test_term_defaults_follow_the_methods_proposal():
    term = AStarTerm(layout_of(CAT_DOG), (CAT, DOG))
    assert list(term.window.steps(50)) == list(range(25))
    assert term.step_size.at(0, 50) == 20.0 and term.step_size.at(24, 50) == pytest.approx(17.38, abs=0.005)
    assert term.thresholds == ()
    assert term.config.mask_threshold == 0.5 and term.config.preprocess == MapSettings()
    assert term.token_columns() == (2, 5)


def test_first_step_has_no_retention_then_uses_the_previous_steps_mask():
    lay = layout_of(CAT_DOG)
    term = _term()
    state = {}
    m0, m1, m1b, m2 = (_maps(lay.length, seed=s) for s in range(4))
    r0 = term.compute(GuidanceContext(m0, 0, 50, state))
    sub0 = word_maps(m0, lay, [CAT.positions, DOG.positions], RAW.preprocess)
    assert torch.all(r0.metrics["retention"] == 0)
    assert torch.allclose(r0.loss, segregation(sub0).sum(1))
    # step 1: retention against the mask of step 0; a second (refinement) evaluation keeps it
    r1 = term.compute(GuidanceContext(m1, 1, 50, state))
    sub1 = word_maps(m1, lay, [CAT.positions, DOG.positions], RAW.preprocess)
    expected = retention(sub1, high_activation_mask(sub0))
    assert torch.allclose(r1.metrics["retention"], expected)
    assert torch.allclose(r1.loss, segregation(sub1).sum(1) + expected.sum(1))
    term.compute(GuidanceContext(m1b, 1, 50, state))
    # step 2 uses the mask of the *first* evaluation of step 1 (before its update)
    r2 = term.compute(GuidanceContext(m2, 2, 50, state))
    sub2 = word_maps(m2, lay, [CAT.positions, DOG.positions], RAW.preprocess)
    assert torch.allclose(r2.metrics["retention"], retention(sub2, high_activation_mask(sub1)))
    assert bool((r2.metrics["retention"] >= 0.5).all())
    # a fresh run starts without a mask; a reused state is refused
    assert torch.all(term.compute(GuidanceContext(m2, 0, 50, {})).metrics["retention"] == 0)
    with pytest.raises(StormError, match="fresh"):
        term.compute(GuidanceContext(m0, 0, 50, state))


def test_state_is_per_run_through_guidance_combine():
    lay = layout_of(CAT_DOG)
    guidance = Guidance((_term(),), lay)
    maps = [_maps(lay.length, seed=s) for s in range(3)]
    run1 = {}
    for step, m in enumerate(maps):
        last = guidance.combine(m, step, 50, run1)
    assert bool((last.metrics["astar.retention"] > 0).all())
    run2 = {}
    first = guidance.combine(maps[2], 0, 50, run2)
    assert torch.all(first.metrics["astar.retention"] == 0)
    assert run2["astar"]["next_step"] == 0 and run1["astar"]["mask_step"] == 1


def test_batch_change_within_a_run_is_an_error():
    lay = layout_of(CAT_DOG)
    term, state = _term(), {}
    term.compute(GuidanceContext(_maps(lay.length, batch=2), 0, 50, state))
    with pytest.raises(ShapeError):
        term.compute(GuidanceContext(_maps(lay.length, batch=1), 1, 50, state))


def test_user_layout_masks_are_retained_from_the_first_step():
    lay = layout_of(CAT_DOG)
    left = torch.zeros(64, 64)
    left[:, :32] = 1.0
    before = left.clone()
    term = _term(masks=(left, None))
    maps = _maps(lay.length, h=8, w=8, batch=2)
    r0 = term.compute(GuidanceContext(maps, 0, 50, {}))
    sub = word_maps(maps, lay, [CAT.positions, DOG.positions], RAW.preprocess)
    mask = torch.zeros(8, 8)
    mask[:, :4] = 1
    assert torch.allclose(r0.metrics["retention"][:, 0], retention(sub[:, :1], mask[None]).squeeze(1))
    assert torch.all(r0.metrics["retention"][:, 1] == 0)
    assert torch.equal(left, before)
    assert "cat (mask)" in term.describe()


def test_user_mask_validation():
    for masks, err in (((torch.ones(4, 4),), "2 subjects"), ((torch.zeros(4, 4), None), "empty"),
                       ((torch.full((4, 4), 2.0), None), r"\[0, 1\]"), ((torch.ones(1, 4, 4), None), "2-d")):
        with pytest.raises(StormError, match=err) as info:
            _term(masks=masks)
        assert info.value.input_name == "masks"
    speck = torch.zeros(64, 64)
    speck[0, 0] = 1.0
    term = _term(masks=(speck, None))
    with pytest.raises(StormError, match="covers no pixel"):
        term.compute(GuidanceContext(_maps(77, h=8, w=8), 0, 50, {}))


def test_gradients_are_finite_per_image_and_inputs_untouched():
    lay = layout_of(CAT_DOG)
    term = AStarTerm(lay, (CAT, DOG), AStarConfig(MapSettings(end_token_convention="sd1")))
    state = {}
    term.compute(GuidanceContext(_maps(lay.length, batch=2, seed=5), 0, 50, state))
    maps = _maps(lay.length, batch=2, seed=6).requires_grad_(True)
    before = maps.detach().clone()
    result = term.compute(GuidanceContext(maps, 1, 50, state))
    assert result.loss.shape == (2,)
    result.loss.sum().backward()
    assert torch.isfinite(maps.grad).all() and maps.grad.abs().sum() > 0
    assert torch.equal(maps.detach(), before)
    assert result.metrics["segregation"].shape == (2, 1) and result.metrics["max_attention"].shape == (2, 2)


def test_weights_reproduce_the_ablations_and_config_is_validated():
    lay = layout_of(CAT_DOG)
    maps = [_maps(lay.length, seed=s) for s in (7, 8)]

    def loss(cfg):
        term, state = AStarTerm(lay, (CAT, DOG), cfg), {}
        term.compute(GuidanceContext(maps[0], 0, 50, state))
        return term.compute(GuidanceContext(maps[1], 1, 50, state))

    both = loss(RAW)
    seg_only = loss(AStarConfig(RAW.preprocess, retention_weight=0.0))
    ret_only = loss(AStarConfig(RAW.preprocess, segregation_weight=0.0))
    assert torch.allclose(seg_only.loss, both.metrics["segregation"].sum(1))
    assert torch.allclose(ret_only.loss, both.metrics["retention"].sum(1))
    assert torch.allclose(both.loss, seg_only.loss + ret_only.loss)
    for bad in ({"mask_threshold": 0.0}, {"mask_threshold": 1.5}, {"retention_weight": -1.0}):
        with pytest.raises(StormError):
            AStarConfig(**bad)
    with pytest.raises(StormError):
        AStarTerm(lay, ())


def test_auto_end_tokens_and_refinement_semantics():
    lay = replace(layout_of(CAT_DOG), end_tokens="words")
    maps = _maps(lay.length, batch=2)
    auto = AStarTerm(lay, (CAT, DOG), AStarConfig(MapSettings(end_token_convention="auto")),
                     thresholds=((0.0, 0.5),))
    words = AStarTerm(lay, (CAT, DOG), AStarConfig(MapSettings(end_token_convention="words")),
                      thresholds=((0.0, 0.5),))
    result = auto.compute(GuidanceContext(maps, 0, 50, {}))
    assert torch.equal(result.loss, words.compute(GuidanceContext(maps, 0, 50, {})).loss)
    maxima = result.metrics["max_attention"]
    assert torch.equal(auto.satisfied(result, 0.5), maxima.amin(1) >= 0.5)


def test_guidance_lowers_segregation():
    # a synthetic optimisation: gradient descent on the logits of per-pixel token distributions
    lay = layout_of(CAT_DOG)
    term = AStarTerm(lay, (CAT, DOG), AStarConfig(MapSettings(end_token_convention="words")))
    g = torch.Generator().manual_seed(9)
    logits = torch.randn(2, lay.length, 8, 8, generator=g)
    logits[:, 5] = logits[:, 2] + 0.5 * torch.randn(2, 8, 8, generator=g)  # dog starts where the cat is
    logits.requires_grad_(True)
    opt = torch.optim.SGD([logits], lr=10.0)
    state, first = {}, None
    for step in range(10):
        opt.zero_grad()
        result = term.compute(GuidanceContext(torch.softmax(logits, 1), step, 50, state))
        first = result if first is None else first
        assert torch.isfinite(result.loss).all()
        result.loss.sum().backward()
        assert torch.isfinite(logits.grad).all()
        opt.step()
    last = term.compute(GuidanceContext(torch.softmax(logits, 1), 10, 50, state))
    assert bool((last.metrics["segregation"] < 0.7 * first.metrics["segregation"]).all())
