"""Attend-and-Excite (Chefer et al., SIGGRAPH 2023, arXiv 2301.13826).

For every subject token ``s`` the aggregated cross-attention maps are turned into a
distribution over the prompt's tokens at every pixel (temperature softmax without the start
token, A&E Sec. 3.2), optionally smoothed by a 3x3 Gaussian (:func:`~storm_ops.attention.maps.word_maps`
with :class:`~storm_ops.attention.maps.MapSettings`, whose defaults are A&E's), and reduced to their maximum
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

import torch

from ..attention.maps import MapSettings, word_maps
from ..errors import StormError
from ..guidance.terms import GuidanceContext, GuidanceTerm, StepSize, StepWindow, TermResult
from ..tokens.layout import Subject, TokenLayout

#: A&E defaults (official config.py): refinement at steps 0, 10, 20 of 50, window steps 0..24.
DEFAULT_THRESHOLDS = ((0.0, 0.05), (0.2, 0.5), (0.4, 0.8))
DEFAULT_WINDOW = StepWindow(0.0, 0.5)
DEFAULT_STEP_SIZE = StepSize(20.0, 0.5)
DEFAULT_MAX_REFINE_ITERS = 20


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
    default_window = DEFAULT_WINDOW
    default_step_size = DEFAULT_STEP_SIZE
    default_thresholds = DEFAULT_THRESHOLDS
    default_max_refine_iters = DEFAULT_MAX_REFINE_ITERS

    def __init__(self, layout: TokenLayout, subjects: tuple[Subject, ...], config: MapSettings = MapSettings(),
                 **schedule):
        super().__init__(**schedule)
        if not subjects:
            raise StormError("Attend-and-Excite needs at least one subject token", input_name="tokens")
        self.layout = layout
        self.subjects = tuple(subjects)
        self.config = config

    def token_columns(self) -> tuple[int, ...]:
        return tuple(p for s in self.subjects for p in s.positions)

    def compute(self, ctx: GuidanceContext) -> TermResult:
        maxima = max_attention(word_maps(ctx.maps, self.layout, [s.positions for s in self.subjects], self.config))
        return TermResult(attend_excite_loss(maxima), {"max_attention": maxima.detach()})

    def describe(self) -> str:
        names = ", ".join(s.name for s in self.subjects)
        return f"{super().describe()}; subjects {names}; end tokens {self.layout.convention(self.config.end_token_convention)}"
