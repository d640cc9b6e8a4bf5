"""Attend-and-Excite (Chefer et al., SIGGRAPH 2023, arXiv 2301.13826).

For every subject token ``s`` the aggregated cross-attention maps are turned into a
distribution over the prompt's tokens at every pixel (temperature softmax without the start
token, A&E Sec. 3.2), optionally smoothed by a 3x3 Gaussian, and reduced to their maximum
``m_s``. The loss ``L = max_s (1 - m_s)`` pushes the latent so that the most neglected subject
dominates some patch of the image (A&E Eq. 1-2).

Deliberate differences from the official code, all documented in the README:

* a subject given as a multi-piece word uses the sum of its pieces' maps (the probability that a
  pixel attends to the word) instead of asking the user to pick one piece;
* batches: the loss is computed per image (as in the diffusers port);
* the smoothing pad defaults to "same size" (identical to the official pad of 1 for the
  default 3x3 kernel; pass ``pad=1`` to reproduce the official shrinking for larger kernels).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..attention.maps import select_token_maps, token_softmax
from ..attention.smoothing import KERNEL_CONVENTIONS, gaussian_smooth
from ..errors import StormError
from ..guidance.terms import DEFAULT_WEIGHT, GuidanceContext, GuidanceTerm, StepSize, StepWindow, TermResult
from ..tokens.layout import AUTO, END_TOKEN_CONVENTIONS, Subject, TokenLayout

#: A&E's softmax temperature (the official code multiplies the maps by 100, Sec. 3.2).
SOFTMAX_TEMPERATURE = 100.0
#: A&E defaults (official config.py): refinement at steps 0, 10, 20 of 50, window steps 0..24.
DEFAULT_THRESHOLDS = ((0.0, 0.05), (0.2, 0.5), (0.4, 0.8))
DEFAULT_WINDOW = StepWindow(0.0, 0.5)
DEFAULT_STEP_SIZE = StepSize(20.0, 0.5)
DEFAULT_MAX_REFINE_ITERS = 20


def check_map_settings(config) -> None:
    """Validate the A&E-style map settings shared by several configs (``temperature``,
    ``kernel_size``, ``sigma``, ``kernel_convention``, ``end_token_convention``)."""
    if config.temperature <= 0:
        raise StormError(f"softmax temperature must be positive, got {config.temperature}")
    if config.kernel_size < 1 or config.kernel_size % 2 == 0:
        raise StormError(f"smoothing kernel size must be a positive odd number, got {config.kernel_size}",
                         input_name="kernel_size")
    if config.sigma <= 0:
        raise StormError(f"smoothing sigma must be positive, got {config.sigma}", input_name="sigma")
    if config.kernel_convention not in KERNEL_CONVENTIONS:
        raise StormError(f"unknown kernel convention {config.kernel_convention!r}")
    if config.end_token_convention not in END_TOKEN_CONVENTIONS + (AUTO,):
        raise StormError(f"unknown end-token convention {config.end_token_convention!r}; "
                         f"use 'auto' or one of {END_TOKEN_CONVENTIONS}", input_name="end_tokens")


@dataclass(frozen=True)
class AttendExciteConfig:
    """Map processing of A&E (paper defaults)."""

    temperature: float = SOFTMAX_TEMPERATURE
    smooth: bool = True
    kernel_size: int = 3
    sigma: float = 0.5
    kernel_convention: str = "attend_excite"
    end_token_convention: str = AUTO
    pad: int | None = None

    def __post_init__(self) -> None:
        check_map_settings(self)


def subject_maps(maps: torch.Tensor, layout: TokenLayout, subjects: tuple[Subject, ...],
                 config: AttendExciteConfig = AttendExciteConfig()) -> torch.Tensor:
    """A&E's processed subject maps.

    Parameters
    ----------
    maps : Tensor, shape (B, T, h, w)
        Aggregated cross-attention probabilities (``T = layout.length``). Not modified.
    layout : TokenLayout
    subjects : tuple of Subject, length K
    config : AttendExciteConfig

    Returns
    -------
    Tensor, shape (B, K, h', w')
        Softmaxed (and smoothed) subject maps; ``h' = h`` unless a larger kernel shrinks them.
    """
    if maps.shape[1] != layout.length:
        raise StormError(
            f"the attention maps have {maps.shape[1]} token columns but the prompt has {layout.length}"
        )
    probs = token_softmax(maps, layout.softmax_mask(config.end_token_convention), config.temperature)
    sub = select_token_maps(probs, [s.positions for s in subjects])
    if config.smooth:
        sub = gaussian_smooth(sub, config.kernel_size, config.sigma, config.kernel_convention, config.pad)
    return sub


def max_attention(sub_maps: torch.Tensor) -> torch.Tensor:
    """Maximum of each map, ``(B, K, h, w) -> (B, K)``."""
    return sub_maps.flatten(2).amax(-1)


def attend_excite_loss(maxima: torch.Tensor) -> torch.Tensor:
    """``L = max_k max(0, 1 - m_k)`` per sample, ``(B, K) -> (B,)`` (A&E Eq. 2)."""
    if maxima.dim() != 2 or maxima.shape[1] == 0:
        raise StormError(f"expected maxima of shape (B, K) with K >= 1, got {tuple(maxima.shape)}")
    return (1.0 - maxima).clamp_min(0.0).amax(1)


class AttendExciteTerm(GuidanceTerm):
    """The A&E loss as a guidance term."""

    name = "attend_excite"

    def __init__(self, layout: TokenLayout, subjects: tuple[Subject, ...],
                 config: AttendExciteConfig = AttendExciteConfig(), *,
                 window: StepWindow = DEFAULT_WINDOW, step_size: StepSize = DEFAULT_STEP_SIZE,
                 weight: float = DEFAULT_WEIGHT, thresholds: tuple[tuple[float, float], ...] = DEFAULT_THRESHOLDS,
                 max_refine_iters: int = DEFAULT_MAX_REFINE_ITERS):
        super().__init__(window=window, step_size=step_size, weight=weight, thresholds=thresholds,
                         max_refine_iters=max_refine_iters)
        if not subjects:
            raise StormError("Attend-and-Excite needs at least one subject token", input_name="tokens")
        self.layout = layout
        self.subjects = tuple(subjects)
        self.config = config

    def token_columns(self) -> tuple[int, ...]:
        return tuple(p for s in self.subjects for p in s.positions)

    def compute(self, ctx: GuidanceContext) -> TermResult:
        maxima = max_attention(subject_maps(ctx.maps, self.layout, self.subjects, self.config))
        return TermResult(attend_excite_loss(maxima), {"max_attention": maxima.detach()})

    def describe(self) -> str:
        names = ", ".join(s.name for s in self.subjects)
        return f"{super().describe()}; subjects {names}; end tokens {self.layout.convention(self.config.end_token_convention)}"
