"""Attend-and-Excite maps and loss (Chefer et al., SIGGRAPH 2023)."""

from dataclasses import replace

import pytest
import torch
from test_token_layout import CAT_DOG, layout_of

from storm_ops.attention.maps import MapSettings, word_maps
from storm_ops.attention.smoothing import gaussian_smooth
from storm_ops.errors import StormError
from storm_ops.guidance.terms import GuidanceContext
from storm_ops.losses.attend_excite import AttendExciteTerm, attend_excite_loss, max_attention
from storm_ops.tokens.layout import Subject, TokenLayout


def test_loss_is_max_over_subjects_of_one_minus_max():
    # maxima (0.273655, 0.018227) -> L = 0.981773: values computed with the official code (its SD-1.x path)
    loss = attend_excite_loss(torch.tensor([[0.273655, 0.018227]]))
    assert loss.item() == pytest.approx(0.981773, abs=1e-6)
    batch = attend_excite_loss(torch.tensor([[0.9, 0.2], [0.6, 0.7], [1.2, 1.0]]))
    assert torch.allclose(batch, torch.tensor([0.8, 0.4, 0.0]))  # clamped at 0


def _maps(layout: TokenLayout, h=6, w=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(1, layout.length, h, w, generator=g) * 3, 1)


def test_word_maps_follow_softmax_then_smoothing():
    lay = layout_of(CAT_DOG)
    maps = _maps(lay)
    subjects = (Subject("cat", (2,)), Subject("dog", (5,)))
    out = word_maps(maps, lay, [s.positions for s in subjects], MapSettings(end_token_convention="sd1"))
    probs = torch.softmax(maps[:, 1:76] * 100, 1)  # official: positions 1..75
    expected = gaussian_smooth(probs[:, [1, 4]], 3, 0.5, "attend_excite")
    assert torch.allclose(out, expected, atol=1e-6)
    raw = word_maps(maps, lay, [s.positions for s in subjects], MapSettings(smooth=False, end_token_convention="sd1"))
    assert torch.allclose(raw, probs[:, [1, 4]], atol=1e-6)
    assert out.shape == (1, 2, 6, 5)


def test_words_convention_drops_eot_and_padding():
    lay = layout_of(CAT_DOG, pad_id=0)
    maps = _maps(lay)
    maps[:, 6:] += 0.5  # strong end/padding attention, as on SD2, where keeping it caps the maxima (0.27 vs 0.87)
    maps = maps / maps.sum(1, keepdim=True)
    subjects = (Subject("cat", (2,)),)
    sd1 = max_attention(word_maps(maps, lay, [s.positions for s in subjects], MapSettings(end_token_convention="sd1")))
    words = max_attention(word_maps(maps, lay, [s.positions for s in subjects], MapSettings(end_token_convention="words")))
    assert words.item() > sd1.item()
    probs = torch.softmax(maps[:, 1:6] * 100, 1)
    expected = gaussian_smooth(probs[:, 1:2], 3, 0.5, "attend_excite").amax()
    assert words.item() == pytest.approx(expected.item(), abs=1e-6)


def test_multi_piece_subject_uses_the_sum_of_its_pieces():
    lay = layout_of(["a</w>", "tira", "misu</w>"])
    maps = _maps(lay)
    cfg = MapSettings(smooth=False, end_token_convention="words")
    word = word_maps(maps, lay, [Subject("tiramisu", (2, 3)).positions], cfg)
    pieces = word_maps(maps, lay, [Subject("a", (2,)).positions, Subject("b", (3,)).positions], cfg)
    assert torch.allclose(word[:, 0], pieces.sum(1), atol=1e-6)


def test_term_is_differentiable_and_reports_maxima():
    lay = layout_of(CAT_DOG)
    term = AttendExciteTerm(lay, (Subject("cat", (2,)), Subject("dog", (5,))),
                            MapSettings(end_token_convention="sd1"))
    maps = _maps(lay).requires_grad_(True)
    result = term.compute(GuidanceContext(maps, 0, 50))
    result.loss.sum().backward()
    assert maps.grad is not None and maps.grad.abs().sum() > 0
    assert result.metrics["max_attention"].shape == (1, 2)
    assert result.loss.item() == pytest.approx(1 - result.metrics["max_attention"].min().item(), abs=1e-6)
    assert term.token_columns() == (2, 5)


def test_auto_end_tokens_follow_the_layouts_tokenizer():
    """"auto" is the convention of the tokenizer that made the layout (SD-1 pads with its end token:
    sd1; OpenCLIP in SD-2/SDXL pads with 0: words), decided once where the layout is built."""
    maps = _maps(layout_of(CAT_DOG))
    for convention in ("sd1", "words"):
        lay = replace(layout_of(CAT_DOG), end_tokens=convention)
        auto = AttendExciteTerm(lay, (Subject("cat", (2,)),), MapSettings(end_token_convention="auto"))
        fixed = AttendExciteTerm(lay, (Subject("cat", (2,)),), MapSettings(end_token_convention=convention))
        a, f = (t.compute(GuidanceContext(maps, 0, 50)) for t in (auto, fixed))
        assert torch.equal(a.loss, f.loss), convention
        assert f"end tokens {convention}" in auto.describe()
    sd1 = AttendExciteTerm(layout_of(CAT_DOG), (Subject("cat", (2,)),)).compute(GuidanceContext(maps, 0, 50))
    words = AttendExciteTerm(replace(layout_of(CAT_DOG), end_tokens="words"), (Subject("cat", (2,)),))
    assert not torch.equal(sd1.loss, words.compute(GuidanceContext(maps, 0, 50)).loss)


def test_bad_configuration():
    with pytest.raises(StormError):
        MapSettings(kernel_size=4)
    with pytest.raises(StormError):
        MapSettings(end_token_convention="sd3")
    with pytest.raises(StormError):
        AttendExciteTerm(layout_of(CAT_DOG), ())
