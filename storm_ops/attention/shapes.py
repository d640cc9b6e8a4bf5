"""Shape vocabulary and checks shared by all ``storm_ops`` modules.

Symbols used in docstrings and ``# shape:`` comments:

* ``B``  batch (images sampled together)
* ``Hd`` attention heads of one layer
* ``N``  query tokens of one attention layer, ``N = h * w``
* ``T``  text tokens (columns of the conditioning, ``77 * k`` for ``k`` CLIP chunks)
* ``h, w`` spatial size of an attention map (never assumed square)
* ``K``  selected subject tokens / words
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import ShapeError


def check_ndim(name: str, tensor: torch.Tensor, ndim: int, layout: str) -> None:
    """Raise :class:`ShapeError` unless ``tensor`` has ``ndim`` dimensions (``layout`` names them)."""
    if tensor.dim() != ndim:
        raise ShapeError(f"{name}: expected a {ndim}-d tensor {layout}, got shape {tuple(tensor.shape)}")


def downsampled_size(size: int, times: int) -> int:
    """Spatial size after ``times`` stride-2 convolutions with padding 1 (``ceil`` division).

    This is how the UNet's ``Downsample`` layers shrink odd sizes: 9 -> 5 -> 3 -> 2.
    """
    for _ in range(times):
        size = (size + 1) // 2
    return size


def infer_hw(n_query: int, height: int, width: int) -> tuple[int, int]:
    """Map size ``(h, w)`` of a layer with ``n_query`` tokens for a ``height x width`` latent.

    Tries each downsampling level; falls back to the aspect-ratio estimate used by ComfyUI's SAG
    (``f = round(sqrt(H*W/N))``). Raises :class:`ShapeError` if nothing fits.
    """
    for level in range(8):
        h, w = downsampled_size(height, level), downsampled_size(width, level)
        if h * w == n_query:
            return h, w
        if h * w < n_query:
            break
    f = max(1, round(math.sqrt(height * width / n_query)))
    h, w = math.ceil(height / f), math.ceil(width / f)
    if h * w != n_query:
        raise ShapeError(
            f"cannot infer the attention map size of a layer with {n_query} query tokens "
            f"for a {height}x{width} latent"
        )
    return h, w


def resample_masks(masks: torch.Tensor, size: tuple[int, int], antialias: bool | None = None) -> torch.Tensor:
    """User masks at any resolution resampled to the attention-map size ``(h, w)``.

    Bilinear, antialiased when shrinking (so a map pixel takes the mean of the area it covers);
    returned unchanged in value when the size already matches. ``antialias=True`` also runs the
    antialiased kernel when enlarging: equal up to rounding (~1e-7), which still moves values that
    lie exactly on a threshold (a binary mask's 0.5 midpoints).

    Parameters
    ----------
    masks : Tensor, shape (N, h', w')
        Any real dtype (bool accepted). Not modified.

    Returns
    -------
    Tensor, shape (N, h, w), float32, detached
    """
    m = masks.detach().float()
    if tuple(m.shape[-2:]) == tuple(size):
        return m
    if antialias is None:
        antialias = m.shape[-2] > size[0] or m.shape[-1] > size[1]
    return F.interpolate(m[:, None], size=tuple(size), mode="bilinear", align_corners=False,
                         antialias=antialias)[:, 0]
