"""Aggregation of attention probabilities and A&E's softmax over tokens."""

import pytest
import torch

from storm_ops.attention.maps import (
    AttentionAccumulator,
    fold_token_tiling,
    normalize_maps,
    select_token_maps,
    token_softmax,
)
from storm_ops.errors import ShapeError, StormError


def _probs(b, heads, n, t, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(b, heads, n, t, generator=g), -1)


def test_accumulator_is_the_mean_over_layers_and_heads_and_keeps_pixel_sums():
    layers = [_probs(2, 4, 12, 7, seed=s) for s in range(3)]
    acc = AttentionAccumulator()
    for p in layers:
        acc.add(p, (3, 4))
    mean = acc.mean()
    expected = torch.stack(layers).mean((0, 2))  # (B, N, T)
    assert mean.shape == (2, 7, 3, 4)
    assert torch.allclose(mean, expected.transpose(1, 2).reshape(2, 7, 3, 4), atol=1e-6)
    assert torch.allclose(mean.sum(1), torch.ones(2, 3, 4), atol=1e-5)


def test_accumulator_rejects_mixed_sizes_and_wrong_hw():
    acc = AttentionAccumulator()
    acc.add(_probs(1, 2, 16, 5), (4, 4))
    with pytest.raises(ShapeError):
        acc.add(_probs(1, 2, 64, 5), (8, 8))
    with pytest.raises(ShapeError):
        acc.add(_probs(1, 2, 16, 5), (2, 4))
    with pytest.raises(StormError):
        AttentionAccumulator().mean()


def test_fold_token_tiling_recovers_the_untiled_map():
    p = _probs(1, 2, 6, 77)
    tiled = torch.cat([p / 3] * 3, -1)  # how ComfyUI tiles a 77-token cond to 231 columns
    assert torch.allclose(fold_token_tiling(tiled, 77), p, atol=1e-6)
    assert fold_token_tiling(p, 77) is p
    with pytest.raises(ShapeError):
        fold_token_tiling(p, 50)


def test_token_softmax_masks_sums_to_one_and_leaves_input_alone():
    maps = torch.rand(2, 6, 3, 3)
    before = maps.clone()
    keep = torch.tensor([False, True, True, True, False, False])
    out = token_softmax(maps, keep, 100.0)
    assert torch.equal(maps, before)
    assert torch.all(out[:, ~keep] == 0)
    assert torch.allclose(out.sum(1), torch.ones(2, 3, 3), atol=1e-6)
    expected = torch.softmax(maps[:, 1:4] * 100.0, 1)
    assert torch.allclose(out[:, 1:4], expected, atol=1e-6)


def test_token_softmax_errors():
    with pytest.raises(ShapeError):
        token_softmax(torch.rand(1, 4, 2, 2), torch.ones(5, dtype=torch.bool))
    with pytest.raises(StormError):
        token_softmax(torch.rand(1, 4, 2, 2), torch.zeros(4, dtype=torch.bool))


def test_select_token_maps_sums_word_pieces():
    maps = torch.rand(1, 5, 2, 2)
    out = select_token_maps(maps, [(1,), (2, 3)])
    assert torch.allclose(out[0, 0], maps[0, 1])
    assert torch.allclose(out[0, 1], maps[0, 2] + maps[0, 3])
    with pytest.raises(ShapeError):
        select_token_maps(maps, [(9,)])


def test_normalize_maps_range():
    out = normalize_maps(torch.rand(3, 4, 5) * 7 + 2)
    assert torch.allclose(out.flatten(1).amin(1), torch.zeros(3))
    assert torch.allclose(out.flatten(1).amax(1), torch.ones(3))
    assert torch.all(normalize_maps(torch.ones(1, 2, 2)) == 0)  # constant maps stay finite
