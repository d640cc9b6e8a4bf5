"""STORM loss (Han et al., CVPR 2025): paper mode and the released code's reference mode."""

import math
from dataclasses import replace
from itertools import pairwise

import pytest
import torch
from test_token_layout import layout_of

from storm_ops.attention.maps import MapSettings, word_maps
from storm_ops.attention.smoothing import gaussian_smooth
from storm_ops.errors import StormError
from storm_ops.guidance.terms import GuidanceContext, TermResult
from storm_ops.losses.ot import centroids, pixel_coordinates
from storm_ops.losses.transport import TRANSPORT_MODES, TRANSPORT_TERMS, transport_term
from storm_ops.losses.transport_core import TransportConfig, time_weight
from storm_ops.losses.transport_paper import TransportPaperTerm, target_distribution, transport_paper_loss
from storm_ops.losses.transport_reference import (
    TransportReferenceTerm,
    circular_target_reference,
    normalize_reference,
    reference_adjective_cost,
    reference_cost_vector,
    reference_time_weight,
    transport_reference_loss,
)
from storm_ops.prompt.parsed import BindingSet, SpatialRelation
from storm_ops.tokens.layout import Subject

# "a white car to the left of an elephant": car = 3, elephant = 9, white = 2 (CLIP token positions)
PROMPT = ["a</w>", "white</w>", "car</w>", "to</w>", "the</w>", "left</w>", "of</w>", "an</w>", "elephant</w>"]
WHITE, CAR, ELEPHANT = Subject("white", (2,)), Subject("car", (3,)), Subject("elephant", (9,))


def blob(h, w, cx, cy, s=0.1):
    """A Gaussian bump (1, h, w) centred at normalised (x, y)."""
    pts = pixel_coordinates(h, w).reshape(h, w, 2)
    return torch.exp(-((pts - torch.tensor([cx, cy])) ** 2).sum(-1) / (2 * s * s))[None]


def smooth_maps(h=12, w=12, seed=0, batch=1):
    """Random positive smoothed maps (B, h, w), as the released code sees them."""
    g = torch.Generator().manual_seed(seed)
    x = torch.softmax(torch.randn(batch, h * w, generator=g) * 2, -1).reshape(batch, h, w)
    return gaussian_smooth(x, 3, 0.5, "attend_excite", pad=1)


def attention(layout, h=12, w=16, blobs=None, seed=0, batch=1):
    """Aggregated attention probabilities (B, T, h, w) with word columns peaking at given places."""
    g = torch.Generator().manual_seed(seed)
    maps = torch.rand(batch, layout.length, h, w, generator=g) * 0.02
    for col, (cx, cy) in (blobs or {}).items():
        maps[:, col] += 0.4 * blob(h, w, cx, cy, 0.12)
    return maps / maps.sum(1, keepdim=True)


def term(relations, mode="paper", **kwargs):
    cfg = TransportConfig(MapSettings(end_token_convention="sd1"))
    return transport_term(mode, layout_of(PROMPT), relations, cfg, **kwargs)


LEFT = SpatialRelation(CAR, "left", ELEPHANT)


pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------- time weights
def test_time_weights_match_the_released_values():
    # the released code's time weight, values computed with it
    expected = {0: 1.0, 1: 33.6, 3: 70.2, 5: 86.6, 10: 98.2, 20: 99.97}
    for step, value in expected.items():
        digits = 2 if step == 20 else 1
        assert round(float(reference_time_weight(step)), digits) == value
        assert round(time_weight(step), digits) == value
    assert reference_time_weight(3).dtype == torch.float32


# ------------------------------------------------------------------- reference quirks
@pytest.mark.parametrize("relation", ["left", "above", "near"])
def test_reference_loss_does_not_depend_on_the_target(relation):
    # the released loss: rank-1 costs make the target inert
    sub, obj = smooth_maps(seed=1), smooth_maps(seed=2)
    base, info = transport_reference_loss(sub, obj, relation, 10)
    n = 12 * 12
    uniform = torch.full((1, n), 1.0 / n)
    a_sub, a_obj = normalize_reference(sub).flatten(1), normalize_reference(obj).flatten(1)
    for targets in ((uniform, uniform), (a_obj, a_sub), (a_sub, a_obj), info["targets"][::-1]):
        other, _ = transport_reference_loss(sub, obj, relation, 10, targets=targets)
        assert other.item() == pytest.approx(base.item(), rel=1e-6, abs=1e-7)


def test_paper_loss_depends_on_the_target():
    sub, obj = smooth_maps(seed=1), smooth_maps(seed=2)
    base, info = transport_paper_loss(sub, obj, "left")
    moved = torch.roll(info["targets"][:, 0], 5, dims=-1)
    other, _ = transport_paper_loss(sub, obj, "left", sub_target=moved)
    assert abs(other.item() - base.item()) > 1e-2


def test_reference_mode_treats_right_as_left_and_below_as_above():
    # the released code's direction handling (values computed with it): identical losses, the subject is always pushed left / up
    sub, obj = smooth_maps(seed=3), smooth_maps(seed=4)
    for a, b in (("left", "right"), ("above", "below")):
        la, _ = transport_reference_loss(sub, obj, a, 10)
        lb, _ = transport_reference_loss(sub, obj, b, 10)
        assert torch.equal(la, lb)
    left_layout, _ = transport_reference_loss(blob(16, 16, 0.2, 0.5), blob(16, 16, 0.8, 0.5), "right", 10)
    right_layout, _ = transport_reference_loss(blob(16, 16, 0.8, 0.5), blob(16, 16, 0.2, 0.5), "right", 10)
    assert left_layout.item() < right_layout.item()  # "right of" prefers the subject on the left


def test_reference_vertical_cost_is_applied_along_columns():
    # the released cost: the (H,1) factor is transposed, so f(r, c) = f_row(c; y_bar)
    h = w = 8
    maps = normalize_reference(smooth_maps(h, w, seed=5))
    weight = reference_time_weight(10)
    cost = reference_cost_vector(maps, "above", weight).reshape(h, w)
    total = maps.sum() + 1e-8
    y_bar = (maps[0].sum(-1) * torch.arange(h).float()).sum() / total
    col = torch.arange(w).float()
    factor = torch.where(col < y_bar, 1 / (weight * (y_bar - col + 1e-8)), weight * (col - y_bar + 1e-8))
    assert torch.allclose(cost, maps[0] * factor[None, :], rtol=1e-6)
    # consequence: on uniform maps the vertical cost varies along columns and is constant along rows
    flat = normalize_reference(torch.ones(1, h, w))
    cost = reference_cost_vector(flat, "above", weight).reshape(h, w)
    assert torch.allclose(cost, cost[:1].expand(h, w)) and not torch.allclose(cost, cost[:, :1].expand(h, w))
    # it still ranks centred top/bottom layouts in order, but also tells left from right:
    obj = blob(16, 16, 0.5, 0.5)
    top, _ = transport_reference_loss(blob(16, 16, 0.5, 0.2), obj, "above", 10)
    bottom, _ = transport_reference_loss(blob(16, 16, 0.5, 0.8), obj, "above", 10)
    assert top.item() < bottom.item()
    beside_left, _ = transport_reference_loss(blob(16, 16, 0.2, 0.5), obj, "above", 10)
    beside_right, _ = transport_reference_loss(blob(16, 16, 0.8, 0.5), obj, "above", 10)
    assert beside_right.item() > 2 * beside_left.item()  # neither is "above", yet right costs more
    paper_left, _ = transport_paper_loss(blob(12, 12, 0.2, 0.5), blob(12, 12, 0.5, 0.5), "above")
    paper_right, _ = transport_paper_loss(blob(12, 12, 0.8, 0.5), blob(12, 12, 0.5, 0.5), "above")
    assert paper_right.item() == pytest.approx(paper_left.item(), rel=1e-4)  # paper mode: symmetric


def test_reference_circular_targets_use_the_ij_axis_convention():
    # the released targets: meshgrid(x, y, indexing='ij'): the first centre coordinate indexes rows
    target = circular_target_reference(16, 16, torch.tensor([[2.0, 8.0]]))[0]
    assert divmod(int(target.argmax()), 16) == (2, 8)
    assert target.max().item() == 1.0 and target[2, 13].item() == 0.0  # radius 4
    assert target[2, 11].item() == pytest.approx(math.exp(-9 / 18))  # sigma 3
    # so the horizontal subject target (x_O / 2, 8) lands at the top of the map, not on the left
    obj = blob(16, 16, 0.75, 0.5)
    _, info = transport_reference_loss(blob(16, 16, 0.25, 0.5), obj, "left", 10)
    row, col = divmod(int(info["targets"][0].argmax()), 16)
    assert col == 8 and row < 8


def test_reference_adjective_cost_uses_flattened_indices():
    a = normalize_reference(smooth_maps(4, 4, seed=6)).flatten(1)
    b = normalize_reference(smooth_maps(4, 4, seed=7)).flatten(1)
    cost = reference_adjective_cost(a, b)[0]
    raw = 0.5 * (torch.arange(16.0)[:, None] - torch.arange(16.0)[None, :]).abs() + 0.5 * (a[0][:, None] - b[0][None, :]).abs()
    assert torch.allclose(cost, raw / raw.max())
    assert cost.max().item() == pytest.approx(1.0)
    # pixels (0, 3) and (1, 0) are neighbours on the map diagonal but 1 apart in the flat index,
    # pixels (0, 0) and (3, 0) are 3 rows apart but 12 apart in the flat index
    assert cost[3, 4] < cost[0, 12]


def test_reference_term_matches_the_released_pipeline():
    lay = layout_of(PROMPT)
    maps = attention(lay, 12, 12, {3: (0.7, 0.5), 9: (0.3, 0.5), 2: (0.7, 0.4)})
    t = term((LEFT,), "reference", bindings=(BindingSet(CAR, (WHITE,)),))
    for step in (3, 10):
        result = t.compute(GuidanceContext(maps, step, 50))
        probs = torch.softmax(maps[:, 1:-1] * 100, 1)  # released slicing 1:-1, indices shifted by 1
        car = gaussian_smooth(probs[:, 2], 3, 0.5, "attend_excite", pad=1)
        elephant = gaussian_smooth(probs[:, 8], 3, 0.5, "attend_excite", pad=1)
        expected, _ = transport_reference_loss(car, elephant, "left", step)
        if step >= 7:  # adjective term from step 7, unsmoothed adjective map
            from storm_ops.losses.transport_reference import reference_adjective_loss
            expected = expected + reference_adjective_loss(car, probs[:, 1])
            assert result.metrics["attribute"].item() > 0
        else:
            assert result.metrics["attribute"].item() == 0
        assert result.loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_reference_batch_equals_per_item():
    sub, obj = smooth_maps(seed=8, batch=3), smooth_maps(seed=9, batch=3)
    batched, _ = transport_reference_loss(sub, obj, "above", 5)
    single = torch.cat([transport_reference_loss(sub[i:i + 1], obj[i:i + 1], "above", 5)[0] for i in range(3)])
    assert torch.allclose(batched, single, rtol=1e-5)


# ------------------------------------------------------------------------ paper mode
@pytest.mark.parametrize("relation,flip_dim,mirror", [("left", -1, "right"), ("above", -2, "below")])
def test_paper_mode_mirrors_on_mirrored_maps(relation, flip_dim, mirror):
    sub, obj = smooth_maps(8, 12, seed=10), smooth_maps(8, 12, seed=11)
    loss, info = transport_paper_loss(sub, obj, relation)
    mirrored, minfo = transport_paper_loss(sub.flip(flip_dim), obj.flip(flip_dim), mirror)
    assert mirrored.item() == pytest.approx(loss.item(), rel=1e-4)
    assert torch.allclose(minfo["targets"], info["targets"].flip(flip_dim), atol=1e-6)
    assert minfo["score"].item() == pytest.approx(info["score"].item(), abs=1e-5)
    other, _ = transport_paper_loss(sub, obj, mirror)
    assert abs(other.item() - loss.item()) > 1e-3  # unlike reference mode, the direction matters


@pytest.mark.parametrize("relation", ["left", "right", "above", "below"])
def test_sliding_the_subject_towards_the_requested_side_lowers_the_loss(relation):
    h, w = 12, 12
    obj = blob(h, w, 0.5, 0.5)
    axis_start = {"left": 0.95, "right": 0.05, "above": 0.95, "below": 0.05}[relation]
    axis_end = {"left": 0.25, "right": 0.75, "above": 0.25, "below": 0.75}[relation]  # the target centre
    losses, scores = [], []
    for k in range(12):
        pos = axis_start + (axis_end - axis_start) * k / 11
        centre = (pos, 0.5) if relation in ("left", "right") else (0.5, pos)
        loss, info = transport_paper_loss(blob(h, w, *centre), obj, relation)
        losses.append(loss.item())
        scores.append(info["score"].item())
    assert all(b < a for a, b in pairwise(losses)), losses
    assert scores[0] < 0.01 and scores[-1] > 0.95


@pytest.mark.parametrize("relation", ["left", "below"])
def test_minimising_the_paper_loss_swaps_misplaced_objects(relation):
    # gradient descent on attention logits stands in for the latent update
    lay = layout_of(PROMPT)
    wrong = {"left": {3: (0.7, 0.5), 9: (0.3, 0.5)}, "below": {3: (0.5, 0.3), 9: (0.5, 0.7)}}[relation]
    logits = attention(lay, 8, 10, wrong).log().requires_grad_(True)
    t = term((SpatialRelation(CAR, relation, ELEPHANT),))
    opt = torch.optim.Adam([logits], lr=0.05)
    for _ in range(40):
        loss = t.compute(GuidanceContext(torch.softmax(logits, 1), 10, 50)).loss.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        c = centroids(word_maps(torch.softmax(logits, 1), lay, [(3,), (9,)], t.config.maps))[0]
    axis = 0 if relation == "left" else 1
    car, elephant = c[0, axis].item(), c[1, axis].item()
    assert car < elephant if relation == "left" else car > elephant


def test_near_pushes_entities_apart_but_keeps_them_close():
    obj = blob(12, 12, 0.5, 0.5)
    on_top, _ = transport_paper_loss(blob(12, 12, 0.52, 0.5), obj, "near")
    beside, _ = transport_paper_loss(blob(12, 12, 0.85, 0.5), obj, "near")
    far, _ = transport_paper_loss(blob(12, 12, 1.0, 1.0), obj, "near")
    assert beside.item() < on_top.item() and beside.item() < far.item()


def test_target_masks_move_the_minimum_to_the_painted_region():
    h, w = 9, 12
    obj = blob(h, w, 0.5, 0.4)
    painted = torch.zeros(72, 96)
    painted[45:68, 72:93] = 1.0  # bottom right, at another resolution
    target = target_distribution(painted, h, w, 1)
    assert target.shape == (1, h, w) and target.sum().item() == pytest.approx(1.0)
    candidates = [(x, y) for x in (0.15, 0.3, 0.5, 0.7, 0.85) for y in (0.15, 0.375, 0.6)]

    def best(**kwargs):
        losses = [transport_paper_loss(blob(h, w, x, y), obj, "left", **kwargs)[0].item() for x, y in candidates]
        return candidates[min(range(len(losses)), key=losses.__getitem__)]

    assert best()[0] < 0.5  # without a mask: left of the object
    assert best(sub_target=target) == (0.85, 0.6)  # with the mask: the painted region


def test_paper_term_is_differentiable_with_metrics_and_masks():
    lay = layout_of(PROMPT)
    maps = attention(lay, 9, 12, {3: (0.7, 0.5), 9: (0.3, 0.5), 2: (0.65, 0.5)}, batch=2).requires_grad_(True)
    before = maps.detach().clone()
    t = term((LEFT,), bindings=(BindingSet(CAR, (WHITE,)),))
    result = t.compute(GuidanceContext(maps, 10, 50))
    assert result.loss.shape == (2,) and torch.isfinite(result.loss).all()
    result.loss.sum().backward()
    assert maps.grad is not None and torch.isfinite(maps.grad).all() and maps.grad[:, 3].abs().sum() > 0
    assert torch.equal(maps.detach(), before)  # inputs untouched
    for key in ("positional", "overlap", "attribute", "relation_score", "time_weight"):
        assert result.metrics[key].shape == (2,)
    assert result.metrics["time_weight"][0].item() == pytest.approx(time_weight(10))
    assert result.metrics["attribute"].abs().sum() > 0
    masked = term((LEFT,), target_masks={"car": torch.ones(4, 4).tril()})
    assert "target masks for car" in masked.describe()
    other = masked.compute(GuidanceContext(maps.detach(), 10, 50))
    assert not torch.allclose(other.loss, t.compute(GuidanceContext(maps.detach(), 10, 50)).loss)


def test_time_weight_and_attribute_start_follow_the_schedule_fraction():
    lay = layout_of(PROMPT)
    maps = attention(lay, 8, 8, {3: (0.7, 0.5), 9: (0.3, 0.5), 2: (0.6, 0.5)})
    t = term((LEFT,), bindings=(BindingSet(CAR, (WHITE,)),))
    r50 = t.compute(GuidanceContext(maps, 10, 50))
    r25 = t.compute(GuidanceContext(maps, 5, 25))  # the same point of a shorter schedule
    assert torch.allclose(r50.loss, r25.loss)
    assert t.compute(GuidanceContext(maps, 3, 25)).metrics["attribute"].item() == 0  # 3/25 < 7/50
    assert t.compute(GuidanceContext(maps, 4, 25)).metrics["attribute"].item() > 0


def test_several_relations_add_up():
    lay = layout_of(PROMPT)
    maps = attention(lay, 8, 8, {3: (0.7, 0.5), 9: (0.3, 0.5), 2: (0.5, 0.2)})
    above = SpatialRelation(WHITE, "above", ELEPHANT)
    ctx = GuidanceContext(maps, 10, 50)
    both = term((LEFT, above)).compute(ctx)
    single = term((LEFT,)).compute(ctx).loss + term((above,)).compute(ctx).loss
    assert torch.allclose(both.loss, single, rtol=1e-5)
    assert both.metrics["relation_score"].item() <= term((LEFT,)).compute(ctx).metrics["relation_score"].item()


def test_satisfied_uses_the_relation_score_in_paper_mode_and_the_released_rule_in_reference_mode():
    t = term((LEFT,))
    result = TermResult(torch.tensor([5.0, 5.0]), {"relation_score": torch.tensor([0.97, 0.5])})
    assert t.satisfied(result, 0.95).tolist() == [True, False]
    ref = term((LEFT,), "reference")
    gate = {"refine_gate": torch.tensor([1.0, 0.0, 1.0])}
    result = TermResult(torch.tensor([0.5, 0.5, 0.05]), gate)
    # L > 1 - T only refines while the subject is already on the left (coordinate > 0, released code)
    assert ref.satisfied(result, 0.9).tolist() == [False, True, True]


def test_the_mode_name_picks_the_term_class():
    assert TRANSPORT_MODES == ("paper", "reference")  # the node's choices, paper (its default) first
    assert TRANSPORT_TERMS == {"paper": TransportPaperTerm, "reference": TransportReferenceTerm}
    for mode, cls in TRANSPORT_TERMS.items():
        t = term((LEFT,), mode)
        assert type(t) is cls and t.mode == mode and f"; {mode} mode; " in t.describe()


def test_defaults_are_the_released_schedule():
    t = term((LEFT,))
    assert t.grad_clip_norm == 1.0
    assert t.window.steps(50) == range(1, 25)
    assert [t.threshold_at(i, 50) for i in (0, 5, 10, 15, 20)] == [0.9, 0.95, 0.99, 0.995, 0.999]
    assert t.max_refine_iters == 30
    assert t.step_size.at(0, 50) == pytest.approx(20.0)
    assert t.token_columns() == (3, 9)
    assert "car left of elephant" in t.describe()


def test_auto_end_tokens_follow_the_layouts_tokenizer():
    maps = attention(layout_of(PROMPT), 4, 4)
    for convention in ("sd1", "words"):
        lay = replace(layout_of(PROMPT), end_tokens=convention)
        auto = word_maps(maps, lay, [(3,)], TransportConfig(MapSettings(end_token_convention="auto")).maps)
        fixed = word_maps(maps, lay, [(3,)], TransportConfig(MapSettings(end_token_convention=convention)).maps)
        assert torch.equal(auto, fixed), convention
    sd1, words = (word_maps(maps, layout_of(PROMPT), [(3,)], TransportConfig(MapSettings(end_token_convention=c)).maps)
                  for c in ("sd1", "words"))
    assert not torch.equal(sd1, words)


def test_bad_inputs_raise_storm_errors():
    with pytest.raises(StormError, match="at least one"):
        term(())
    with pytest.raises(StormError, match="itself"):
        term((SpatialRelation(CAR, "left", Subject("car again", (3,))),))
    with pytest.raises(StormError, match="no relation involves"):
        term((LEFT,), target_masks={"dog": torch.ones(4, 4)})
    with pytest.raises(StormError, match="empty"):
        term((LEFT,), target_masks={"car": torch.zeros(4, 4)})
    with pytest.raises(StormError, match="reference mode"):
        term((LEFT,), "reference", target_masks={"car": torch.ones(4, 4)})
    with pytest.raises(StormError, match="unknown STORM mode") as err:
        term((LEFT,), "fast")
    assert err.value.input_name == "mode"
    with pytest.raises(StormError):
        TransportConfig(sinkhorn_reg=0)
    with pytest.raises(StormError, match="images"):
        target_distribution(torch.ones(3, 4, 4), 4, 4, 2)
