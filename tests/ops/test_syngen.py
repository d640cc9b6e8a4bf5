"""SynGen loss (Rassin et al., NeurIPS 2023) and its entropy variant on hand-checkable inputs."""

import math

import pytest
import torch
from test_token_layout import layout_of

from storm_ops.errors import StormError
from storm_ops.guidance.terms import GuidanceContext
from storm_ops.losses.syngen import (
    SynGenConfig,
    SynGenTerm,
    entropy,
    pixel_distribution,
    symmetric_kl,
    syngen_loss,
    syngen_sets,
    unrelated_columns,
)
from storm_ops.prompt.parsed import BindingSet
from storm_ops.tokens.layout import Subject

# "a red crown and a golden strawberry": columns 1..7, start 0, end 8, padding 9..76
RED_CROWN = ["a</w>", "red</w>", "crown</w>", "and</w>", "a</w>", "golden</w>", "strawberry</w>"]
RED, CROWN, GOLDEN, STRAWBERRY = (Subject("red", (2,)), Subject("crown", (3,)), Subject("golden", (6,)),
                                  Subject("strawberry", (7,)))
BINDINGS = (BindingSet(CROWN, (RED,)), BindingSet(STRAWBERRY, (GOLDEN,)))


def _maps(length, h=4, w=3, batch=1, seed=0, sharp=2.0):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(batch, length, h, w, generator=g, dtype=torch.float64) * sharp, 1)


def _d(maps, a, b):
    return symmetric_kl(maps[:, a], maps[:, b])


def test_symmetric_kl_matches_a_hand_computation_and_normalises():
    p = torch.tensor([[1.0, 3.0]], dtype=torch.float64)  # -> (0.25, 0.75)
    q = torch.tensor([[2.0, 2.0]], dtype=torch.float64)  # -> (0.5, 0.5)
    kl_pq = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    kl_qp = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert symmetric_kl(p, q).item() == pytest.approx(0.5 * (kl_pq + kl_qp), abs=1e-12)
    assert symmetric_kl(p * 100, q).item() == pytest.approx(0.5 * (kl_pq + kl_qp), abs=1e-12)  # x100: no effect


def test_symmetric_kl_is_symmetric_nonnegative_zero_on_identical_and_matches_categorical():
    maps = _maps(6, h=5, w=4, seed=1)[0]
    d = symmetric_kl(maps[:, None], maps[None, :])  # shape (6, 6)
    assert torch.allclose(d, d.T, atol=1e-12)
    assert bool((d >= 0).all())
    assert torch.all(d.diagonal() == 0)
    # the official definition: torch.distributions.Categorical(probs=map) and kl_divergence
    cat = [torch.distributions.Categorical(probs=maps[i].reshape(-1)) for i in range(6)]
    kl = torch.distributions.kl_divergence
    ref = torch.tensor([[0.5 * (kl(cat[i], cat[j]) + kl(cat[j], cat[i])) for j in range(6)] for i in range(6)],
                       dtype=torch.float64)
    assert torch.allclose(d, ref, atol=1e-10)


def test_symmetric_kl_stays_finite_on_zero_maps():
    p = torch.tensor([[0.0, 1.0], [0.0, 0.0]], dtype=torch.float32, requires_grad=True)
    q = torch.tensor([[1.0, 0.0], [0.5, 0.5]], dtype=torch.float32)
    d = symmetric_kl(p, q)
    d.sum().backward()
    assert torch.isfinite(d).all() and torch.isfinite(p.grad).all()
    assert torch.equal(pixel_distribution(torch.zeros(1, 2, 2)), torch.zeros(1, 4))


def test_entropy_of_uniform_and_one_hot_maps():
    h, w = 6, 5
    assert entropy(torch.ones(h, w)).item() == pytest.approx(math.log(h * w), abs=1e-6)
    one_hot = torch.zeros(h, w)
    one_hot[2, 3] = 7.0
    assert entropy(one_hot).item() == pytest.approx(0.0, abs=1e-6)
    maps = _maps(5, seed=3)
    assert bool((entropy(maps) <= math.log(12) + 1e-12).all())


def test_red_crown_set_structure():
    lay = layout_of(RED_CROWN)
    assert lay.word_positions == (1, 2, 3, 4, 5, 6, 7)
    sets = syngen_sets(lay, BINDINGS)
    assert [(s.noun, s.modifiers) for s in sets] == [((3,), ((2,),)), ((7,), ((6,),))]
    # U(S) = every word piece outside the set; start (0), end (8) and padding never appear
    assert sets[0].unrelated == (1, 4, 5, 6, 7)
    assert sets[1].unrelated == (1, 2, 3, 4, 5)
    assert unrelated_columns(lay, (2, 3)) == sets[0].unrelated
    assert sets[0].name == "red crown"


def test_loss_equals_the_code_form_by_hand():
    lay = layout_of(RED_CROWN)
    maps = _maps(lay.length, seed=4)
    parts = syngen_loss(maps, syngen_sets(lay, BINDINGS))
    expected = 0.0
    for (m, n), unrelated in (((2, 3), (1, 4, 5, 6, 7)), ((6, 7), (1, 2, 3, 4, 5))):
        pos = _d(maps, m, n)
        neg = 0.5 * (-sum(_d(maps, n, u) for u in unrelated) / len(unrelated)
                     - sum(_d(maps, m, u) for u in unrelated) / len(unrelated))
        expected = expected + pos + neg
    assert torch.allclose(parts.loss, expected, atol=1e-12)
    assert parts.positive.shape == parts.negative.shape == parts.kl.shape == (1, 2)
    assert torch.allclose(parts.positive[:, 0], _d(maps, 2, 3))


def test_loss_equals_the_paper_form():
    # L = sum_i sum_(m,n) dist(A_m, A_n) - sum_i 1/|U(S_i)| sum_(m,n) sum_u 1/2 (dist(A_m, A_u) + dist(A_u, A_n))
    lay = layout_of(["a</w>", "big</w>", "red</w>", "crown</w>", "on</w>", "a</w>", "blue</w>", "table</w>"])
    big, red, crown, blue, table = (Subject(n, (c,)) for n, c in
                                    (("big", 2), ("red", 3), ("crown", 4), ("blue", 7), ("table", 8)))
    bindings = (BindingSet(crown, (big, red)), BindingSet(table, (blue,)))
    maps = _maps(lay.length, batch=2, seed=5)
    loss = syngen_loss(maps, syngen_sets(lay, bindings)).loss
    paper = 0.0
    for b in bindings:
        n = b.noun.positions[0]
        unrelated = [c for c in lay.word_positions if c not in b.columns]
        for m in (s.positions[0] for s in b.modifiers):
            paper = paper + _d(maps, m, n)
            paper = paper - sum(0.5 * (_d(maps, m, u) + _d(maps, u, n)) for u in unrelated) / len(unrelated)
    assert torch.allclose(loss, paper, atol=1e-12)


def test_sign_conventions_positive_minimised_on_coincident_maps_negative_nonpositive():
    lay = layout_of(RED_CROWN)
    maps = _maps(lay.length, batch=3, seed=6)
    sets = syngen_sets(lay, BINDINGS)
    parts = syngen_loss(maps, sets)
    assert bool((parts.positive > 0).all()) and bool((parts.negative <= 0).all())
    same = maps.clone()
    same[:, 2] = same[:, 3]  # red's map == crown's map
    coincident = syngen_loss(same, sets)
    assert torch.all(coincident.positive[:, 0] == 0)
    for scale in (0.5, 2.0):  # moving red away from crown raises the positive term
        moved = same.clone()
        moved[:, 2] = same[:, 3] ** scale
        assert bool((syngen_loss(moved, sets).positive[:, 0] > 0).all())


def test_multi_piece_members_take_the_max_over_pieces():
    # "a red tira misu": tiramisu = columns 3, 4 ; unrelated = {1}
    lay = layout_of(["a</w>", "red</w>", "tira", "misu</w>", "on</w>", "a</w>", "plate</w>"])
    noun = Subject("tiramisu", (3, 4))
    sets = syngen_sets(lay, (BindingSet(noun, (Subject("red", (2,)),)),))
    assert sets[0].unrelated == (1, 5, 6, 7)
    maps = _maps(lay.length, batch=2, seed=7)
    parts = syngen_loss(maps, sets)
    pos = torch.maximum(_d(maps, 2, 3), _d(maps, 2, 4))
    assert torch.allclose(parts.positive[:, 0], pos)
    noun_out = sum(torch.maximum(_d(maps, 3, u), _d(maps, 4, u)) for u in (1, 5, 6, 7)) / 4
    mod_out = sum(_d(maps, 2, u) for u in (1, 5, 6, 7)) / 4
    assert torch.allclose(parts.negative[:, 0], 0.5 * (-noun_out - mod_out))
    # the diagnostic kl uses the word's summed map
    word = maps[:, 3] + maps[:, 4]
    assert torch.allclose(parts.kl[:, 0], symmetric_kl(maps[:, 2], word))


def test_empty_unrelated_set_gives_a_zero_negative_term():
    lay = layout_of(["red</w>", "crown</w>"])
    maps = _maps(lay.length, seed=8)
    parts = syngen_loss(maps, syngen_sets(lay, (BindingSet(Subject("crown", (2,)), (Subject("red", (1,)),)),)))
    assert torch.all(parts.negative == 0)
    assert torch.allclose(parts.loss, _d(maps, 1, 2))


def test_entity_singletons_add_only_the_negative_term_and_merge_into_bindings():
    lay = layout_of(RED_CROWN)
    maps = _maps(lay.length, seed=9)
    entities = (CROWN, STRAWBERRY, Subject("a", (1,)))  # crown/strawberry already sit in a binding
    sets = syngen_sets(lay, BINDINGS[:1], entities)
    assert [(s.noun, s.modifiers) for s in sets] == [((3,), ((2,),)), ((7,), ()), ((1,), ())]
    parts = syngen_loss(maps, sets)
    plain = syngen_loss(maps, sets[:1]).loss
    ent = [-sum(_d(maps, n, u) for u in unrelated) / len(unrelated)
           for n, unrelated in ((7, (1, 2, 3, 4, 5, 6)), (1, (2, 3, 4, 5, 6, 7)))]
    assert parts.entity.shape == (1, 2)
    assert torch.allclose(parts.entity, torch.stack(ent, 1))
    assert torch.allclose(parts.loss, plain + ent[0] + ent[1])


def test_entropy_variant_reduces_to_syngen_and_adds_the_hand_terms():
    lay = layout_of(RED_CROWN)
    maps = _maps(lay.length, batch=2, seed=10)
    sets = syngen_sets(lay, BINDINGS)
    plain = syngen_loss(maps, sets)
    zero = syngen_loss(maps, sets, SynGenConfig(0.0, 0.0, "literal"))
    assert torch.equal(plain.loss, zero.loss) and torch.all(zero.entropy == 0)
    lam, gam = 0.01, 0.02
    h = entropy(maps)  # (B, T)
    hand = {}
    for mode, sign in (("literal", 1.0), ("diffuse", -1.0)):
        extra = sum(lam * (h[:, m] + h[:, n]) + sign * gam / 2 * h[:, list(unrelated)].mean(1)
                    for m, n, unrelated in ((2, 3, (1, 4, 5, 6, 7)), (6, 7, (1, 2, 3, 4, 5))))
        hand[mode] = plain.loss + extra
        got = syngen_loss(maps, sets, SynGenConfig(lam, gam, mode)).loss
        assert torch.allclose(got, hand[mode], atol=1e-12)


def test_unrelated_entropy_option_sets_the_direction_of_dloss_dH():
    # Only gamma: L(gamma) - L(0) = s * gamma/2 * sum_pairs mean_u H(A_u), i.e. dL/dH(A_u) = s * gamma / (2 |U|)
    lay = layout_of(RED_CROWN)
    maps = _maps(lay.length, seed=11)
    sets = syngen_sets(lay, BINDINGS[:1])  # U = (1, 4, 5, 6, 7)
    base = syngen_loss(maps, sets).loss
    h_u = entropy(maps)[:, [1, 4, 5, 6, 7]]
    for mode, sign in (("literal", 1.0), ("diffuse", -1.0)):
        delta = syngen_loss(maps, sets, SynGenConfig(0.0, 0.4, mode)).loss - base
        assert torch.allclose(delta, sign * 0.2 * h_u.mean(1), atol=1e-12)
        assert math.copysign(1.0, delta.item()) == sign


def _unrelated_entropy_after_descent(mode, steps=30):
    lay = layout_of(RED_CROWN)
    sets = syngen_sets(lay, BINDINGS[:1])
    g = torch.Generator().manual_seed(12)
    logits = (torch.randn(1, lay.length, 6, 6, generator=g) * 2).requires_grad_(True)
    opt = torch.optim.Adam([logits], lr=0.05)
    cfg = SynGenConfig(0.0, 5.0, mode)  # entropy-dominated on purpose

    def h_u():
        return entropy(torch.softmax(logits, 1)[:, [1, 4, 5, 6, 7]]).mean().item()

    start = h_u()
    for _ in range(steps):
        opt.zero_grad()
        syngen_loss(torch.softmax(logits, 1), sets, cfg).loss.sum().backward()
        opt.step()
    return start, h_u()


def test_diffuse_raises_and_literal_lowers_the_unrelated_entropy():
    start, diffuse = _unrelated_entropy_after_descent("diffuse")
    start2, literal = _unrelated_entropy_after_descent("literal")
    assert start == start2
    assert diffuse > start > literal


def test_config_validation():
    with pytest.raises(StormError):
        SynGenConfig(lambda_entropy=-1.0)
    with pytest.raises(StormError):
        SynGenConfig(gamma_entropy=float("nan"))
    with pytest.raises(StormError) as err:
        SynGenConfig(unrelated_entropy="sharp")
    assert err.value.input_name == "unrelated_entropy"


def test_term_defaults_are_the_papers():
    term = SynGenTerm(layout_of(RED_CROWN), BINDINGS)
    assert list(term.window.steps(50)) == list(range(25))
    assert [term.step_size.at(i, 50) for i in (0, 24, 49)] == [20.0, 20.0, 20.0]
    assert term.thresholds == () and term.threshold_at(0, 50) is None
    assert term.token_columns() == (2, 3, 6, 7)
    assert "red crown; golden strawberry" in term.describe()


def test_term_is_per_image_differentiable_and_does_not_modify_maps():
    lay = layout_of(RED_CROWN)
    term = SynGenTerm(lay, BINDINGS, (Subject("a", (1,)),))
    maps = _maps(lay.length, batch=2, seed=13).float().requires_grad_(True)
    before = maps.detach().clone()
    result = term.compute(GuidanceContext(maps, 0, 50))
    assert result.loss.shape == (2,)
    result.loss.sum().backward()
    assert torch.isfinite(maps.grad).all() and maps.grad.abs().sum() > 0
    assert torch.equal(maps.detach(), before)
    assert set(result.metrics) == {"positive", "negative", "kl", "entity"}
    assert result.metrics["positive"].shape == (2, 2) and result.metrics["entity"].shape == (2, 1)
    for i in range(2):  # image i alone gives the same loss
        alone = term.compute(GuidanceContext(maps[i:i + 1].detach(), 0, 50)).loss
        assert alone.item() == pytest.approx(result.loss[i].item(), abs=1e-6)
    half = term.compute(GuidanceContext(maps.detach().half(), 0, 50))
    assert half.loss.dtype == torch.float32 and torch.allclose(half.loss, result.loss.detach(), atol=1e-2)
    ent = SynGenTerm(lay, BINDINGS, config=SynGenConfig(0.01, 0.01)).compute(GuidanceContext(maps.detach(), 0, 50))
    assert ent.metrics["entropy"].shape == (2, 2)


def test_term_errors_name_the_input():
    lay = layout_of(RED_CROWN)
    with pytest.raises(StormError) as err:
        SynGenTerm(lay, ())
    assert err.value.input_name == "bindings"
    with pytest.raises(StormError, match="end token"):
        SynGenTerm(lay, (BindingSet(Subject("crown", (8,)), (RED,)),))
    with pytest.raises(StormError, match="twice"):
        SynGenTerm(lay, (BindingSet(CROWN, (CROWN,)),))
    term = SynGenTerm(lay, BINDINGS)
    with pytest.raises(StormError, match="token columns"):
        term.compute(GuidanceContext(torch.rand(1, 154, 4, 4), 0, 50))


def test_guidance_lowers_the_modifier_noun_kl():
    # a synthetic optimisation: gradient descent on the logits of per-pixel token distributions
    lay = layout_of(RED_CROWN)
    term = SynGenTerm(lay, BINDINGS)
    g = torch.Generator().manual_seed(14)
    logits = (torch.randn(2, lay.length, 8, 8, generator=g) * 2).requires_grad_(True)
    opt = torch.optim.SGD([logits], lr=1.0)
    first = None
    for _ in range(15):
        opt.zero_grad()
        result = term.compute(GuidanceContext(torch.softmax(logits, 1), 0, 50))
        first = result if first is None else first
        result.loss.sum().backward()
        opt.step()
    last = term.compute(GuidanceContext(torch.softmax(logits, 1), 0, 50))
    assert bool((last.metrics["kl"] < 0.7 * first.metrics["kl"]).all())
    assert bool((last.loss < first.loss).all())
