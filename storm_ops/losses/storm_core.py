"""STORM pieces both modes share: configuration, released defaults, time weight, token maps.

Han et al., "Spatial Transport Optimization by Repositioning Attention Map for Training-Free
Text-to-Image Synthesis", CVPR 2025, arXiv 2503.22168. Paper mode (:mod:`.storm_paper`) and the
released code's reference mode (:mod:`.storm_reference`) build their terms on this module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..attention import select_token_maps, token_softmax
from ..errors import StormError
from ..guidance import StepSize, StepWindow
from ..smoothing import gaussian_smooth
from ..tokens import TokenLayout
from .attend_excite import check_map_settings

MODES = ("paper", "reference")
#: Released defaults (methods.md 4.9): update at steps 1..24 of 50, refinement at steps
#: 0, 5, 10, 15, 20 (step 0 lies outside the window, so it never fires on 50 steps), <= 30 iterations.
DEFAULT_WINDOW = StepWindow(0.02, 0.5)
DEFAULT_THRESHOLDS = ((0.0, 0.9), (0.1, 0.95), (0.2, 0.99), (0.3, 0.995), (0.4, 0.999))
DEFAULT_STEP_SIZE = StepSize(20.0, 0.5)
DEFAULT_MAX_REFINE_ITERS = 30


@dataclass(frozen=True)
class StormConfig:
    """Settings of the STORM loss. Fields marked (paper) are ignored in reference mode.

    Attributes
    ----------
    mode : str
        ``"paper"`` or ``"reference"``.
    temperature, kernel_size, sigma, kernel_convention, end_token_convention
        Map processing (methods.md 4.3 / 1.1): x100 softmax, 3x3 A&E Gaussian with sigma 0.5;
        ``end_token_convention`` as in A&E (``"sd1"`` = released default, ``"words"`` = its
        ``sd_2_1`` flag, ``"auto"`` = per model, see :meth:`StormTerm.resolve`).
    time_weight_k, time_weight_max : float
        ``k = 0.4``, ``W_max = 100`` (methods.md 4.5).
    schedule_steps : int
        (paper) Step indices are rescaled to a schedule of this length before the time weight and
        the attribute start are applied (50, the released schedule). Reference mode uses raw indices.
    sinkhorn_reg, sinkhorn_max_iter, sinkhorn_tol
        (paper) Entropic regularisation in units of the normalised squared distance (0.01: a blur
        of about 0.1 of the image side), iteration cap and marginal tolerance. Reference mode
        always uses the released reg 0.1 and 100 plain iterations.
    overlap_weight : float
        (paper) ``lambda`` of the non-overlap penalty. 0.1 keeps the loss decreasing when a subject
        is pushed across its partner towards the requested side (tested).
    target_sigma, target_radius : float
        (paper) Target blob width and truncation radius as fractions of the longer map side.
    near_distance : float
        (paper) Distance of a "near" target from the partner's centroid (longer side = 1).
    attribute_weight : float
        Weight of the attribute (adjective) term; 0 disables it.
    attribute_start : float
        (paper) First step (of a ``schedule_steps`` schedule) of the attribute term (7 as released;
        reference mode uses raw step 7).
    attribute_position_weight, attribute_value_weight : float
        (paper) The released 0.5 / 0.5 split of the attribute cost.
    smooth_modifiers : bool
        (paper) Smooth the modifier maps too (the released code does not).
    """

    mode: str = "paper"
    temperature: float = 100.0
    kernel_size: int = 3
    sigma: float = 0.5
    kernel_convention: str = "attend_excite"
    end_token_convention: str = "sd1"
    time_weight_k: float = 0.4
    time_weight_max: float = 100.0
    schedule_steps: int = 50
    sinkhorn_reg: float = 0.01
    sinkhorn_max_iter: int = 1000
    sinkhorn_tol: float = 1e-4
    overlap_weight: float = 0.1
    target_sigma: float = 3.0 / 16.0
    target_radius: float = 4.0 / 16.0
    near_distance: float = 0.35
    attribute_weight: float = 1.0
    attribute_start: float = 7.0
    attribute_position_weight: float = 0.5
    attribute_value_weight: float = 0.5
    smooth_modifiers: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise StormError(f"unknown STORM mode {self.mode!r}; use one of {MODES}", input_name="mode")
        check_map_settings(self)
        positive = {"time_weight_max": self.time_weight_max, "schedule_steps": self.schedule_steps,
                    "sinkhorn_reg": self.sinkhorn_reg, "sinkhorn_max_iter": self.sinkhorn_max_iter,
                    "sinkhorn_tol": self.sinkhorn_tol, "target_sigma": self.target_sigma,
                    "target_radius": self.target_radius, "near_distance": self.near_distance}
        for name, value in positive.items():
            if not (math.isfinite(value) and value > 0):
                raise StormError(f"{name} must be a positive number, got {value!r}", input_name=name)
        non_negative = {"time_weight_k": self.time_weight_k, "overlap_weight": self.overlap_weight,
                        "attribute_weight": self.attribute_weight, "attribute_start": self.attribute_start,
                        "attribute_position_weight": self.attribute_position_weight,
                        "attribute_value_weight": self.attribute_value_weight}
        for name, value in non_negative.items():
            if not (math.isfinite(value) and value >= 0):
                raise StormError(f"{name} must be a number >= 0, got {value!r}", input_name=name)


def time_weight(step: float, k: float = 0.4, w_max: float = 100.0) -> float:
    """``w(i) = 1 + (W_max - 1)(1 - exp(-k i))`` (methods.md 4.5): 1 at i=0, 33.6 at 1, 98.2 at 10."""
    return 1.0 + (w_max - 1.0) * (1.0 - math.exp(-k * step))


# ------------------------------------------------------------------------------- maps
def token_maps(maps: torch.Tensor, layout: TokenLayout, groups, config: StormConfig, *,
               smooth: bool) -> torch.Tensor:
    """Softmaxed (and optionally smoothed) maps of groups of token columns, in float32.

    Parameters
    ----------
    maps : Tensor, shape (B, T, h, w)
        Aggregated cross-attention probabilities. Not modified.
    groups : sequence of K tuples of columns
        A multi-piece word is the sum of its pieces' maps.

    Returns
    -------
    Tensor, shape (B, K, h, w)
        Not normalised (see :func:`as_distribution`). Smoothing pads like the released code
        (reflect by 1) in reference mode and keeps the size in paper mode.
    """
    if config.end_token_convention == "auto":
        raise StormError("the end-token convention 'auto' must be resolved for the model first (StormTerm.resolve)")
    if maps.shape[1] != layout.length:
        raise StormError(f"the attention maps have {maps.shape[1]} token columns but the prompt has {layout.length}")
    probs = token_softmax(maps.float(), layout.softmax_mask(config.end_token_convention), config.temperature)
    out = select_token_maps(probs, list(groups))
    if smooth:
        pad = 1 if config.mode == "reference" else None
        out = gaussian_smooth(out, config.kernel_size, config.sigma, config.kernel_convention, pad)
    return out
