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

from .errors import ShapeError


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
