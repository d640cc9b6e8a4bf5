"""Gaussian smoothing of attention maps.

Two kernel conventions exist and are easy to confuse, since both call their width ``sigma``:

* ``"standard"``: ``g(x) = exp(-x^2 / (2 sigma^2))``.
* ``"attend_excite"``: ``g(x) = exp(-(x / (2 sigma))^2)`` as in the official Attend-and-Excite
  and STORM code, i.e. a standard Gaussian of width ``sqrt(2) * sigma``. For ``k = 3``,
  ``sigma = 0.5`` the 1-D weights are (0.21194, 0.57612, 0.21194) and the 2-D centre weight is
  0.331911 (the official Attend-and-Excite kernel's values).

The convention is always an explicit argument.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import StormError

KERNEL_CONVENTIONS = ("standard", "attend_excite")


def gaussian_kernel_1d(size: int, sigma: float, convention: str = "standard",
                       dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Normalised 1-D Gaussian weights, shape ``(size,)``, centred at ``(size - 1) / 2``."""
    if size < 1:
        raise StormError(f"kernel size must be at least 1, got {size}")
    if sigma <= 0:
        raise StormError(f"kernel sigma must be positive, got {sigma}")
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    if convention == "standard":
        g = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    elif convention == "attend_excite":
        g = torch.exp(-((x / (2 * sigma)) ** 2))
    else:
        raise StormError(f"unknown kernel convention {convention!r}; use one of {KERNEL_CONVENTIONS}")
    return (g / g.sum()).to(dtype)


def gaussian_kernel_2d(size: int, sigma: float, convention: str = "standard",
                       dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Normalised 2-D kernel ``(size, size)``: the outer product of the 1-D weights."""
    g = gaussian_kernel_1d(size, sigma, convention, torch.float64)
    k = torch.outer(g, g)
    return (k / k.sum()).to(dtype)


def gaussian_smooth(maps: torch.Tensor, size: int = 3, sigma: float = 0.5,
                    convention: str = "attend_excite", pad: int | None = None) -> torch.Tensor:
    """Smooth every map with a depthwise Gaussian (reflect padding, then a valid convolution).

    Parameters
    ----------
    maps : Tensor, shape (..., h, w)
        Maps to smooth; any leading dimensions. Not modified.
    size, sigma, convention
        Kernel parameters (see :func:`gaussian_kernel_1d`).
    pad : int, optional
        Reflect padding on each side. ``None`` keeps the size (``(size - 1) // 2``); the
        official A&E code always pads by 1, so ``size=5, pad=1`` shrinks a map by 2. Maps too
        small for reflection (side <= pad) are padded by replication instead.

    Returns
    -------
    Tensor, shape (..., h + 2 pad - size + 1, w + 2 pad - size + 1), dtype of ``maps``.
    """
    if maps.dim() < 2:
        raise StormError(f"gaussian_smooth needs maps of shape (..., h, w), got {tuple(maps.shape)}")
    pad = (size - 1) // 2 if pad is None else pad
    *lead, h, w = maps.shape
    x = maps.reshape(-1, 1, h, w)
    if pad > 0:
        mode = "reflect" if min(h, w) > pad else "replicate"
        x = F.pad(x, (pad, pad, pad, pad), mode=mode)
    if x.shape[-1] < size or x.shape[-2] < size:
        raise StormError(f"a {size}x{size} kernel does not fit a {h}x{w} map padded by {pad}")
    kernel = gaussian_kernel_2d(size, sigma, convention, dtype=x.dtype).to(x.device)
    out = F.conv2d(x, kernel[None, None])
    return out.reshape(*lead, out.shape[-2], out.shape[-1])
