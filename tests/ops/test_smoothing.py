"""Gaussian smoothing: the convention and padding of the official Attend-and-Excite kernel."""

import math

import pytest
import torch

from storm_ops.attention.smoothing import gaussian_kernel_1d, gaussian_kernel_2d, gaussian_smooth
from storm_ops.errors import StormError


def test_attend_excite_kernel_matches_the_official_weights():
    g = gaussian_kernel_1d(3, 0.5, "attend_excite")
    assert torch.allclose(g, torch.tensor([0.21194, 0.57612, 0.21194]), atol=1e-5)
    k = gaussian_kernel_2d(3, 0.5, "attend_excite")
    assert k[1, 1].item() == pytest.approx(0.331911, abs=1e-6)
    assert k.sum().item() == pytest.approx(1.0, abs=1e-6)


def test_attend_excite_convention_is_a_standard_gaussian_of_sqrt2_sigma():
    for size, sigma in [(3, 0.5), (5, 1.0), (7, 0.8)]:
        a = gaussian_kernel_2d(size, sigma, "attend_excite")
        b = gaussian_kernel_2d(size, sigma * math.sqrt(2), "standard")
        assert torch.allclose(a, b, atol=1e-7)
        assert not torch.allclose(a, gaussian_kernel_2d(size, sigma, "standard"), atol=1e-3)


def test_default_padding_keeps_the_size_and_official_pad_shrinks_larger_kernels():
    maps = torch.rand(2, 3, 16, 16)
    assert gaussian_smooth(maps, 3, 0.5).shape == (2, 3, 16, 16)
    assert gaussian_smooth(maps, 5, 1.0).shape == (2, 3, 16, 16)
    assert gaussian_smooth(maps, 5, 1.0, pad=1).shape == (2, 3, 14, 14)  # the official quirk


def test_smoothing_preserves_mass_of_a_centred_impulse_and_does_not_modify_input():
    maps = torch.zeros(1, 9, 9)
    maps[0, 4, 4] = 1.0
    before = maps.clone()
    out = gaussian_smooth(maps, 3, 0.5, "attend_excite")
    assert torch.equal(maps, before)
    assert out[0, 4, 4].item() == pytest.approx(0.331911, abs=1e-6)
    assert out.sum().item() == pytest.approx(1.0, abs=1e-6)


def test_non_square_and_tiny_maps():
    assert gaussian_smooth(torch.rand(3, 5, 9)).shape == (3, 5, 9)
    assert gaussian_smooth(torch.rand(1, 1, 1)).shape == (1, 1, 1)  # replicate padding fallback


def test_bad_kernel_arguments():
    with pytest.raises(StormError):
        gaussian_kernel_1d(3, 0.0)
    with pytest.raises(StormError):
        gaussian_kernel_1d(3, 0.5, "gauss")
