"""Step windows, step sizes, thresholds and the combination of terms."""

import math

import pytest
import torch

from storm_ops.errors import StormError
from storm_ops.guidance.terms import (
    Guidance,
    GuidanceContext,
    GuidanceTerm,
    StepSize,
    StepWindow,
    TermResult,
    format_thresholds,
    parse_thresholds,
)
from storm_ops.losses import astar, transport_core
from storm_ops.losses.attend_excite import DEFAULT_THRESHOLDS, DEFAULT_WINDOW


def test_attend_excite_step_sizes_match_the_official_schedule():
    size = StepSize(20.0, 0.5)
    official = [20 * math.sqrt(v) for v in torch.linspace(1.0, 0.5, 50).tolist()]
    assert [round(size.at(i, 50), 5) for i in range(50)] == [round(v, 5) for v in official]
    assert size.at(0, 50) == pytest.approx(20.0)
    assert size.at(10, 50) == pytest.approx(18.95, abs=0.005)
    assert size.at(20, 50) == pytest.approx(17.84, abs=0.005)
    assert size.at(24, 50) == pytest.approx(17.38, abs=0.005)
    assert StepSize(20.0, 1.0).at(37, 50) == 20.0  # SynGen: constant


def test_default_window_and_thresholds_are_the_papers_steps():
    assert list(DEFAULT_WINDOW.steps(50)) == list(range(25))
    term = _ConstantTerm(thresholds=DEFAULT_THRESHOLDS)
    assert {i: term.threshold_at(i, 50) for i in range(50) if term.threshold_at(i, 50) is not None} == \
        {0: 0.05, 10: 0.5, 20: 0.8}
    assert list(DEFAULT_WINDOW.steps(20)) == list(range(10))


def test_a_step_is_guided_when_its_fraction_lies_in_the_window():
    """Step i of n sits at fraction i/n and is guided when start <= i/n < end (no rounding away)."""
    assert list(StepWindow(0.0, 0.5).steps(50)) == list(range(25))  # A&E: steps 0..24 of 50
    assert list(StepWindow(0.02, 0.5).steps(50)) == list(range(1, 25))  # STORM release: 1..24 of 50
    assert list(StepWindow(0.0, 0.5).steps(5)) == [0, 1, 2]  # 0, 0.2, 0.4 < 0.5 (round() gave 0, 1)
    assert list(StepWindow(0.0, 0.5).steps(1)) == [0]  # round() gave no step at all
    assert list(StepWindow(0.0, 0.5).steps(3)) == [0, 1]
    assert list(StepWindow(0.5, 1.0).steps(5)) == [3, 4]
    assert list(StepWindow(0.0, 1.0).steps(7)) == list(range(7))
    # decimal fractions that are not exact in binary still hit their step: 0.07 * 100 = 7.000000000000001
    assert list(StepWindow(0.07, 0.29).steps(100)) == list(range(7, 29))
    assert list(StepWindow(0.3, 0.6).steps(10)) == [3, 4, 5]  # 0.3 * 10 = 3.0000000000000004
    for n in (1, 2, 3, 7, 10, 49, 50, 51, 1000):
        for start, end in ((0.0, 0.5), (0.02, 0.5), (0.1, 0.9), (0.25, 0.75)):
            expected = [i for i in range(n) if start - 1e-12 <= i / n < end - 1e-12]
            assert list(StepWindow(start, end).steps(n)) == expected, (n, start, end)


def test_thresholds_apply_at_the_first_step_at_or_after_their_position():
    term = _ConstantTerm(thresholds=((0.0, 0.05), (0.2, 0.5), (0.4, 0.8)))
    at = lambda n: {i: term.threshold_at(i, n) for i in range(n) if term.threshold_at(i, n) is not None}  # noqa: E731
    assert at(50) == {0: 0.05, 10: 0.5, 20: 0.8}
    assert at(5) == {0: 0.05, 1: 0.5, 2: 0.8}
    assert at(7) == {0: 0.05, 2: 0.5, 3: 0.8}  # fractions 2/7 = 0.29 and 3/7 = 0.43: as a window [0.2, ...) starts
    # the same convention as the window: a threshold at the window's start fires on its first guided step
    for n in (3, 7, 9, 11, 50):
        for start in (0.02, 0.1, 0.2, 0.3):
            window = StepWindow(start, 1.0).steps(n)
            t = _ConstantTerm(window=StepWindow(start, 1.0), thresholds=((start, 0.5),))
            assert [i for i in range(n) if t.threshold_at(i, n) is not None] == [window[0]], (n, start)
    storm = _ConstantTerm(thresholds=((0.0, 0.9), (0.1, 0.95), (0.2, 0.99), (0.3, 0.995), (0.4, 0.999)))
    assert [i for i in range(50) if storm.threshold_at(i, 50) is not None] == [0, 5, 10, 15, 20]


def test_a_window_with_no_step_of_the_schedule_is_an_error():
    g = Guidance().with_term(_ConstantTerm(window=StepWindow(0.5, 0.6)), source="STORM Attend-and-Excite")
    g.check_windows(50)  # steps 25..29
    with pytest.raises(StormError) as err:
        g.check_windows(5)  # steps at 0, 0.2, 0.4, 0.6, 0.8: none in [0.5, 0.6)
    message = str(err.value)
    assert err.value.input_name in ("start_at", "end_at")
    assert message.startswith("STORM Attend-and-Excite:")
    assert "0.5" in message and "0.6" in message and "5 steps" in message
    assert "steps" in message and ("end_at" in message or "start_at" in message)
    with pytest.raises(StormError) as err:
        Guidance().with_term(_ConstantTerm(window=StepWindow(0.3, 0.3))).check_windows(50)
    assert err.value.input_name == "end_at" and err.value.args[0].startswith("const:")
    with pytest.raises(StormError, match="start_at"):
        Guidance().with_term(_ConstantTerm(window=StepWindow(0.9, 1.0))).check_windows(5)  # last step: 0.8
    # steps=1 guides step 0 of [0, 0.5): no error; a disabled term (step size or weight 0) is never an error
    Guidance().with_term(_ConstantTerm()).check_windows(1)
    Guidance().with_term(_ConstantTerm(window=StepWindow(0.5, 0.6), step_size=StepSize(0.0))).check_windows(5)
    Guidance().with_term(_ConstantTerm(window=StepWindow(0.5, 0.6), weight=0.0)).check_windows(5)
    Guidance().check_windows(5)


def test_the_source_node_is_kept_and_inputs_are_not_mutated():
    term = _ConstantTerm()
    g = Guidance().with_term(term, source="STORM SynGen")
    assert term.source is None and g.terms[0].source == "STORM SynGen"


def test_parse_thresholds():
    assert parse_thresholds("0:0.05, 0.2:0.5; 0.4:0.8") == ((0.0, 0.05), (0.2, 0.5), (0.4, 0.8))
    assert parse_thresholds("") == ()
    for bad in ("0.2", "a:b", "2:0.5", "0.1:1.5"):
        with pytest.raises(StormError) as err:
            parse_thresholds(bad)
        assert err.value.input_name == "thresholds"


def test_format_thresholds_is_read_back_by_parse_thresholds():
    """The loss nodes' threshold widgets show the loss defaults as this text."""
    assert format_thresholds(DEFAULT_THRESHOLDS) == "0:0.05, 0.2:0.5, 0.4:0.8"
    assert format_thresholds(transport_core.DEFAULT_THRESHOLDS) == "0:0.9, 0.1:0.95, 0.2:0.99, 0.3:0.995, 0.4:0.999"
    assert format_thresholds(astar.DEFAULT_THRESHOLDS) == ""
    for pairs in (DEFAULT_THRESHOLDS, transport_core.DEFAULT_THRESHOLDS, ((0.1 + 0.2, 1e-5), (1.0, 1.0))):
        assert parse_thresholds(format_thresholds(pairs)) == pairs


def test_window_validation():
    with pytest.raises(StormError):
        StepWindow(0.6, 0.5)
    with pytest.raises(StormError):
        StepSize(-1.0)


class _ConstantTerm(GuidanceTerm):
    name = "const"

    def __init__(self, value=0.5, **kw):
        kw.setdefault("window", StepWindow(0.0, 0.5))
        kw.setdefault("step_size", StepSize(10.0, 1.0))
        super().__init__(**kw)
        self.value = value

    def token_columns(self):
        return (1,)

    def compute(self, ctx: GuidanceContext) -> TermResult:
        ctx.state["calls"] = ctx.state.get("calls", 0) + 1
        return TermResult(ctx.maps.sum((1, 2, 3)) * 0 + self.value, {"v": torch.tensor([self.value])})


def test_combine_weights_terms_by_their_step_sizes_and_keeps_state_per_term():
    g = Guidance().with_term(_ConstantTerm(0.5)).with_term(_ConstantTerm(0.25, weight=2.0,
                                                                         window=StepWindow(0.0, 0.2)))
    maps = torch.rand(2, 4, 3, 3, requires_grad=True)
    states = {}
    out = g.combine(maps, 0, 10, states)
    assert torch.allclose(out.objective, torch.full((2,), 10 * 0.5 + 2 * 10 * 0.25))
    assert set(out.term_losses) == {"const", "const#2"}
    assert states["const"]["calls"] == 1 and states["const#2"]["calls"] == 1
    late = g.combine(maps, 3, 10, states)  # second term's window has ended
    assert set(late.term_losses) == {"const"}
    assert bool(out.satisfied.all()) and out.max_refine_iters == 0


def test_guidance_is_immutable_and_checks_prompt_lengths():
    from storm_ops.tokens.layout import Piece, TokenLayout
    short = TokenLayout(tuple(Piece("x") for _ in range(77)))
    long = TokenLayout(tuple(Piece("x") for _ in range(154)))
    g1 = Guidance().with_term(_ConstantTerm(), short)
    g2 = g1.with_term(_ConstantTerm(), short)
    assert len(g1.terms) == 1 and len(g2.terms) == 2
    with pytest.raises(StormError, match="same prompt"):
        g1.with_term(_ConstantTerm(), long)


def test_gradient_bound_of_clipped_terms_scales_with_their_step_size():
    clipped = _ConstantTerm(0.5, step_size=StepSize(20.0, 1.0))
    clipped.grad_clip_norm = 1.0
    g = Guidance().with_term(_ConstantTerm(0.5)).with_term(clipped)
    out = g.combine(torch.rand(1, 4, 3, 3), 0, 10, {})
    assert out.grad_norm_bound == pytest.approx(20.0)  # alpha * clip: z <- z - alpha * clip_1(grad L)
    assert Guidance().with_term(_ConstantTerm(0.5)).combine(torch.rand(1, 4, 3, 3), 0, 10, {}).grad_norm_bound is None
