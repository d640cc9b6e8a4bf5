"""Cross-attention maps: aggregation, and the one pipeline from recorded maps to one map per word.

Recorded probabilities arrive per layer as ``(B, Hd, N, T)``. They are averaged over heads
and layers into ``(B, T, h, w)`` maps: for every pixel the ``T`` values still sum to 1.

:func:`word_maps` turns such maps into one map per word the way Attend-and-Excite does (Chefer et al.,
SIGGRAPH 2023, Sec. 3.2): a softmax over the prompt's token rows at a temperature, the rows of a word
summed, then a Gaussian smoothing. A&E's loss, STORM's and A-STAR's maps, the heatmap's "attend-and-excite"
view and Select Frame all take this path, with their settings in one :class:`MapSettings`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange

from ..errors import ShapeError, StormError
from ..tokens.layout import AUTO, END_TOKEN_CONVENTIONS, TokenLayout
from .shapes import check_ndim
from .smoothing import KERNEL_CONVENTIONS, gaussian_smooth

#: A&E's softmax temperature (the official code multiplies the maps by 100, Sec. 3.2)
SOFTMAX_TEMPERATURE = 100.0


@dataclass(frozen=True)
class MapSettings:
    """How recorded maps become one map per word (:func:`word_maps`); the defaults are A&E's (Sec. 3.2).

    Attributes
    ----------
    temperature : float
        Of the softmax over token rows (A&E: 100).
    smooth : bool
        Gaussian-smooth each word's map (A&E: on).
    kernel_size, sigma, kernel_convention : int, float, str
        The smoothing kernel (A&E: 3 x 3, sigma 0.5 in its convention ``exp(-(x / (2 sigma))^2)``).
    end_token_convention : str
        Which rows share the softmax (:meth:`TokenLayout.softmax_mask`); ``"auto"``: the layout's own.
    pad : int or None
        Reflect padding of the smoothing: None keeps the map's size; 1 pads as A&E's and STORM's released
        code does (a larger kernel then shrinks the maps).
    """

    temperature: float = SOFTMAX_TEMPERATURE
    smooth: bool = True
    kernel_size: int = 3
    sigma: float = 0.5
    kernel_convention: str = "attend_excite"
    end_token_convention: str = AUTO
    pad: int | None = None

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise StormError(f"softmax temperature must be positive, got {self.temperature}")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise StormError(f"smoothing kernel size must be a positive odd number, got {self.kernel_size}",
                             input_name="kernel_size")
        if self.sigma <= 0:
            raise StormError(f"smoothing sigma must be positive, got {self.sigma}", input_name="sigma")
        if self.kernel_convention not in KERNEL_CONVENTIONS:
            raise StormError(f"unknown kernel convention {self.kernel_convention!r}")
        if self.end_token_convention not in END_TOKEN_CONVENTIONS + (AUTO,):
            raise StormError(f"unknown end-token convention {self.end_token_convention!r}; "
                             f"use 'auto' or one of {END_TOKEN_CONVENTIONS}", input_name="end_tokens")


def word_maps(maps: torch.Tensor, layout: TokenLayout, groups, settings: MapSettings = MapSettings()) -> torch.Tensor:
    """One map per word: the token softmax of ``maps``, each group's rows summed, smoothed if asked.

    Parameters
    ----------
    maps : Tensor, shape (B, T, h, w)
        Aggregated cross-attention probabilities (``T = layout.length``). Not modified.
    layout : TokenLayout
    groups : sequence of K tuples of rows
        A word's rows (a multi-piece word is the sum of its pieces' maps, the probability that a pixel
        attends to the word).
    settings : MapSettings

    Returns
    -------
    Tensor, shape (B, K, h', w'), float32
        ``h' = h`` unless a larger kernel with ``pad=1`` shrinks the maps.
    """
    if maps.shape[1] != layout.length:
        raise StormError(f"the attention maps have {maps.shape[1]} token columns but the prompt has {layout.length}")
    probs = token_softmax(maps.float(), layout.softmax_mask(settings.end_token_convention), settings.temperature)
    out = select_token_maps(probs, list(groups))
    if settings.smooth:
        out = gaussian_smooth(out, settings.kernel_size, settings.sigma, settings.kernel_convention, settings.pad)
    return out


def fold_token_tiling(probs: torch.Tensor, n_tokens: int) -> torch.Tensor:
    """Undo ComfyUI's tiling of a conditioning to a longer context.

    When cond and uncond have different lengths (77 vs 154, say) both are repeated up to their
    least common multiple, so a cond column appears ``r`` times and each copy carries ``1/r`` of
    its attention. Summing the copies recovers the map of the untiled prompt.

    Parameters
    ----------
    probs : Tensor, shape (..., r * n_tokens)
    n_tokens : int

    Returns
    -------
    Tensor, shape (..., n_tokens)
    """
    total = probs.shape[-1]
    if total == n_tokens:
        return probs
    if total % n_tokens:
        raise ShapeError(
            f"attention has {total} text columns, which is not a multiple of the prompt's "
            f"{n_tokens} columns"
        )
    return probs.reshape(*probs.shape[:-1], total // n_tokens, n_tokens).sum(-2)


class AttentionAccumulator:
    """Running mean of per-layer attention maps of one UNet pass.

    Every layer contributes equally (the mean over heads is taken per layer; with equal head
    counts this equals A&E's plain mean over all (layer, head) maps). Gradients flow through
    the accumulated maps.
    """

    def __init__(self) -> None:
        self._sum: torch.Tensor | None = None
        self._count = 0
        self._hw: tuple[int, int] | None = None

    def __len__(self) -> int:
        return self._count

    def add(self, probs: torch.Tensor, hw: tuple[int, int]) -> None:
        """Add one layer's probabilities.

        Parameters
        ----------
        probs : Tensor, shape (B, Hd, N, T)
            Softmax probabilities of the layer (any dtype; accumulated in float32).
        hw : (int, int)
            Map size with ``h * w == N``.
        """
        check_ndim("attention probabilities", probs, 4, "(B, Hd, N, T)")
        h, w = hw
        if h * w != probs.shape[2]:
            raise ShapeError(f"map size {h}x{w} does not match {probs.shape[2]} query tokens")
        if self._hw is not None and self._hw != (h, w):
            raise ShapeError(
                f"cannot average maps of size {h}x{w} with maps of size {self._hw[0]}x{self._hw[1]}: "
                "select layers of one UNet level"
            )
        layer = probs.float().mean(1)  # shape: (B, N, T)
        self._sum = layer if self._sum is None else self._sum + layer
        self._count += 1
        self._hw = (h, w)

    def mean(self) -> torch.Tensor:
        """The average map, shape ``(B, T, h, w)``."""
        if self._sum is None or self._hw is None:
            raise StormError("no attention maps were recorded")
        h, w = self._hw
        avg = self._sum / self._count  # shape: (B, N, T)
        return rearrange(avg, "b (h w) t -> b t h w", h=h, w=w)


def token_softmax(maps: torch.Tensor, keep: torch.Tensor, temperature: float = 100.0) -> torch.Tensor:
    """A&E's temperature softmax over the kept token columns, per pixel.

    Parameters
    ----------
    maps : Tensor, shape (B, T, h, w)
        Aggregated attention probabilities. Not modified (the official code scales in place).
    keep : BoolTensor, shape (T,)
        Columns taking part (see :meth:`TokenLayout.softmax_mask`).
    temperature : float
        Multiplier of the probabilities before the softmax (100 in A&E).

    Returns
    -------
    Tensor, shape (B, T, h, w)
        Zero on dropped columns; the kept columns sum to 1 at every pixel.
    """
    check_ndim("attention maps", maps, 4, "(B, T, h, w)")
    if keep.shape != (maps.shape[1],):
        raise ShapeError(f"token mask has shape {tuple(keep.shape)}, expected ({maps.shape[1]},)")
    if not bool(keep.any()):
        raise StormError("the token softmax keeps no columns: the prompt has no word tokens")
    keep = keep.to(maps.device)[None, :, None, None]
    logits = (maps * temperature).masked_fill(~keep, float("-inf"))
    return torch.softmax(logits, dim=1)


def select_token_maps(maps: torch.Tensor, groups: list[tuple[int, ...]] | tuple[tuple[int, ...], ...]) -> torch.Tensor:
    """Sum the maps of each group of columns (the pieces of a word).

    Parameters
    ----------
    maps : Tensor, shape (B, T, h, w)
    groups : sequence of K tuples of column indices

    Returns
    -------
    Tensor, shape (B, K, h, w)
        For probabilities this is the probability that a pixel attends to any piece of the word.
    """
    check_ndim("attention maps", maps, 4, "(B, T, h, w)")
    out = []
    for cols in groups:
        if not cols:
            raise StormError("a subject has no token columns")
        if max(cols) >= maps.shape[1] or min(cols) < 0:
            raise ShapeError(f"token columns {list(cols)} are outside the {maps.shape[1]} columns of the maps")
        out.append(maps[:, list(cols)].sum(1))
    return torch.stack(out, 1)


def normalize_maps(maps: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Scale each map ``(..., h, w)`` to ``[0, 1]`` by its own min and max (for display)."""
    flat = maps.flatten(-2)
    lo = flat.min(-1, keepdim=True).values
    hi = flat.max(-1, keepdim=True).values
    return ((flat - lo) / (hi - lo).clamp_min(eps)).reshape(maps.shape)
