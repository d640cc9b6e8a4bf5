"""A-STAR: attention segregation and retention.

Agarwal et al., "A-STAR: Test-time Attention Segregation and Retention for Text-to-image
Synthesis", ICCV 2023, arXiv 2306.14544. No official implementation is public; this follows the
paper text.

For the concept maps ``A^m`` (one per subject word)::

    L_seg = sum_{m > n}  sum_ij min(A^m, A^n)_ij / sum_ij (A^m + A^n)_ij
    L_ret = sum_m [ 1 - sum_ij min(A^m, B^m)_ij / sum_ij (A^m + B^m)_ij ]
    L     = L_seg + L_ret

Segregation keeps two concepts from sharing pixels (identical maps give 0.5 per pair, disjoint
maps 0); retention keeps each concept's current map on the binary mask ``B^m`` of its
high-activation region at the *previous* denoising step, so a concept found early is not lost
(each retention term is >= 0.5 with this normalisation). ``B^m`` may instead be a user layout
mask (paper Fig. 12).

Choices where the paper is silent (ours, chosen to stay comparable with A&E), all overridable:

* maps: Attend-and-Excite's preprocessing (softmax over word tokens at temperature 100, 3x3
  Gaussian smoothing; :func:`~storm_ops.attention.maps.word_maps`), so maps lie in [0, 1];
* mask: ``B = 1[M >= 0.5 * max M]`` per concept, taken from the first evaluation of the
  previous guided step (before its update) and recomputed every step; at the first guided step of
  a run there is no previous mask and the retention term of concepts without a user mask is 0;
* step sizes: A&E's schedule ``20 * sqrt(linspace(1, 0.5, n))``; updates on steps 0..24 of 50
  (the paper applies the loss throughout denoising: widen the window to follow it);
* no iterative refinement by default; if thresholds are given, refinement stops when every
  concept's maximum attention reaches the threshold (A&E semantics on the same maps).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..attention.maps import MapSettings, word_maps
from ..attention.shapes import resample_masks
from ..errors import ShapeError, StormError
from ..guidance.terms import GuidanceContext, GuidanceTerm, StepSize, StepWindow, TermResult
from ..tokens.layout import Subject, TokenLayout
from .attend_excite import max_attention

#: Our defaults (A&E's schedule; the paper gives none).
DEFAULT_WINDOW = StepWindow(0.0, 0.5)
DEFAULT_STEP_SIZE = StepSize(20.0, 0.5)
DEFAULT_MASK_THRESHOLD = 0.5
#: No refinement by default (the paper has none); A&E-style thresholds can be given.
DEFAULT_THRESHOLDS: tuple[tuple[float, float], ...] = ()


def overlap_ratio(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``sum min(a, b) / sum (a + b)`` over the last two dimensions (A-STAR's IoU-like overlap).

    Parameters
    ----------
    a, b : Tensor, shape (..., h, w)
        Non-negative maps, broadcastable. Not modified.

    Returns
    -------
    Tensor, shape (...)
        In [0, 0.5]: 0.5 for identical maps, 0 for disjoint ones; 0 when both maps are zero.
    """
    num = torch.minimum(a, b).sum((-2, -1))
    den = (a + b).sum((-2, -1))
    return torch.where(den > 0, num / den.clamp_min(torch.finfo(den.dtype).tiny), torch.zeros_like(num))


def pair_indices(k: int) -> tuple[list[int], list[int]]:
    """The concept pairs ``(m, n)``, ``m < n``, in row order: (0,1), (0,2), ..., (1,2), ..."""
    rows, cols = torch.triu_indices(k, k, offset=1).tolist()
    return rows, cols


def segregation(sub_maps: torch.Tensor) -> torch.Tensor:
    """Segregation overlap of every concept pair (A-STAR, L_seg before the sum).

    Parameters
    ----------
    sub_maps : Tensor, shape (B, K, h, w)

    Returns
    -------
    Tensor, shape (B, K (K - 1) / 2)
        :func:`overlap_ratio` of each pair in the order of :func:`pair_indices`.
    """
    rows, cols = pair_indices(sub_maps.shape[1])
    return overlap_ratio(sub_maps[:, rows], sub_maps[:, cols])


def retention(sub_maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Retention term of every concept, ``1 - overlap_ratio(A^m, B^m)`` (A-STAR, L_ret before the sum).

    Parameters
    ----------
    sub_maps : Tensor, shape (B, K, h, w)
        Current concept maps in [0, 1].
    masks : Tensor, shape (B, K, h, w) or (K, h, w)
        Binary masks ``B^m`` (constants: no gradient flows into them).

    Returns
    -------
    Tensor, shape (B, K)
        Each value in [0.5, 1] for maps in [0, 1].
    """
    return 1.0 - overlap_ratio(sub_maps, masks.detach().to(sub_maps.dtype))


def high_activation_mask(sub_maps: torch.Tensor, threshold: float = DEFAULT_MASK_THRESHOLD) -> torch.Tensor:
    """``B = 1[M >= threshold * max M]`` per map (our choice for the paper's unspecified mask).

    Parameters
    ----------
    sub_maps : Tensor, shape (..., h, w)

    Returns
    -------
    Tensor, shape (..., h, w)
        Detached, 0/1 in the dtype of ``sub_maps``; never empty (the maximum is always inside).
    """
    m = sub_maps.detach()
    peak = m.flatten(-2).amax(-1)[..., None, None]
    return (m >= threshold * peak).to(m.dtype)


def binary_layout_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A user layout mask at any resolution as a binary ``(h, w)`` mask of the attention maps.

    The mask is resampled (:func:`~storm_ops.attention.shapes.resample_masks`) and binarised at 0.5, i.e. a
    map pixel belongs to the mask when at least half of the area it covers does.

    Parameters
    ----------
    mask : Tensor, shape (h', w')
        Values in [0, 1] (bool accepted). Not modified.
    size : (int, int)

    Returns
    -------
    Tensor, shape (h, w), float32 0/1
    """
    return (resample_masks(mask[None], size, antialias=True)[0] >= 0.5).float()


@dataclass(frozen=True)
class AStarConfig:
    """A-STAR options (defaults: our choices where the paper is silent, see the module docstring).

    Attributes
    ----------
    preprocess : MapSettings
        How concept maps are formed (A&E's softmax and smoothing; ``end_token_convention="auto"``
        is resolved per model by :meth:`AStarTerm.resolve`).
    mask_threshold : float
        ``B = 1[M >= mask_threshold * max M]``, in (0, 1].
    segregation_weight, retention_weight : float
        Weights of L_seg and L_ret (1 and 1 in the paper; 0 reproduces its ablations, Table 2).
    """

    preprocess: MapSettings = MapSettings()
    mask_threshold: float = DEFAULT_MASK_THRESHOLD
    segregation_weight: float = 1.0
    retention_weight: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 < self.mask_threshold <= 1.0:
            raise StormError(f"mask threshold must lie in (0, 1], got {self.mask_threshold}",
                             input_name="mask_threshold")
        for name in ("segregation_weight", "retention_weight"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise StormError(f"{name} must be a finite number >= 0, got {value}", input_name=name)


def _check_masks(masks: Sequence[torch.Tensor | None], subjects: tuple[Subject, ...]) -> tuple:
    if len(masks) != len(subjects):
        raise StormError(f"A-STAR: got {len(masks)} layout masks for {len(subjects)} subjects; give one "
                         "per subject (None where the previous step's mask should be used)", input_name="masks")
    out = []
    for mask, subject in zip(masks, subjects, strict=True):
        if mask is None:
            out.append(None)
            continue
        if mask.dim() != 2:
            raise ShapeError(f"A-STAR: the layout mask of {subject.name!r} must be a 2-d (h, w) tensor, "
                             f"got shape {tuple(mask.shape)}", input_name="masks")
        m = mask.detach().float().cpu().clone()
        if not bool(torch.isfinite(m).all()) or float(m.min()) < 0 or float(m.max()) > 1:
            raise StormError(f"A-STAR: the layout mask of {subject.name!r} must hold values in [0, 1]",
                             input_name="masks")
        if not bool((m >= 0.5).any()):
            raise StormError(f"A-STAR: the layout mask of {subject.name!r} is empty; draw the region where "
                             "it should appear", input_name="masks")
        out.append(m)
    return tuple(out)


class AStarTerm(GuidanceTerm):
    """A-STAR as a guidance term over the subject words (the A&E subjects are its concepts).

    Parameters
    ----------
    layout : TokenLayout
    subjects : tuple of Subject
        The concepts (at least one; segregation needs two).
    config : AStarConfig
    masks : sequence of (Tensor (h', w') or None), optional
        One per subject: a user layout mask used as ``B`` from the first step (paper Fig. 12),
        or ``None`` for the previous step's high-activation mask.
    window, step_size, weight, thresholds, max_refine_iters
        See :class:`~storm_ops.guidance.terms.GuidanceTerm`.

    Per-run state (``ctx.state``): ``"mask"``/``"mask_step"``, the masks used at this step (from
    the previous guided step), and ``"next"``/``"next_step"``, those recorded at this step for the
    next one.
    """

    name = "astar"
    default_window = DEFAULT_WINDOW
    default_step_size = DEFAULT_STEP_SIZE
    default_thresholds = DEFAULT_THRESHOLDS

    def __init__(self, layout: TokenLayout, subjects: tuple[Subject, ...],
                 config: AStarConfig = AStarConfig(), *, masks: Sequence[torch.Tensor | None] | None = None,
                 **schedule):
        super().__init__(**schedule)
        if not subjects:
            raise StormError("A-STAR needs at least one subject token", input_name="tokens")
        self.layout = layout
        self.subjects = tuple(subjects)
        self.config = config
        self.masks = _check_masks(masks, self.subjects) if masks is not None else (None,) * len(self.subjects)

    def token_columns(self) -> tuple[int, ...]:
        return tuple(p for s in self.subjects for p in s.positions)

    def _previous_masks(self, sub: torch.Tensor, state: dict, step: int) -> torch.Tensor | None:
        """Masks from the previous guided step; records this step's for the next (first call per step)."""
        if state.get("next_step") is not None and state["next_step"] < step:
            state["mask"], state["mask_step"] = state.pop("next"), state.pop("next_step")
        for key in ("next_step", "mask_step"):
            if state.get(key) is not None and state[key] > step:
                raise StormError(f"A-STAR: the per-run state holds masks of step {state[key]} at step {step}; "
                                 "the guidance state must be created fresh for every sampling run")
        if state.get("next_step") is None:
            state["next"], state["next_step"] = high_activation_mask(sub, self.config.mask_threshold), step
        mask = state.get("mask")
        if mask is not None and mask.shape != sub.shape:
            raise ShapeError(f"A-STAR: the previous step's masks have shape {tuple(mask.shape)} but the maps "
                             f"have {tuple(sub.shape)}; the batch or map size changed within a run")
        return mask

    def _masks(self, sub: torch.Tensor, previous: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The masks ``B`` (B, K, h, w) and which concepts have one (K,): user masks, else the previous step's."""
        size = tuple(sub.shape[-2:])
        masks = previous.clone() if previous is not None else torch.zeros_like(sub)
        have = torch.full((len(self.subjects),), previous is not None, dtype=torch.bool, device=sub.device)
        for k, user in enumerate(self.masks):
            if user is None:
                continue
            m = binary_layout_mask(user, size).to(device=sub.device, dtype=sub.dtype)
            if not bool(m.any()):
                raise StormError(f"A-STAR: the layout mask of {self.subjects[k].name!r} covers no pixel of the "
                                 f"{size[0]}x{size[1]} attention map; draw a larger region", input_name="masks")
            masks[:, k] = m
            have[k] = True
        return masks, have

    def compute(self, ctx: GuidanceContext) -> TermResult:
        sub = word_maps(ctx.maps, self.layout, [s.positions for s in self.subjects], self.config.preprocess)  # (B, K, h, w)
        masks, have = self._masks(sub, self._previous_masks(sub, ctx.state, ctx.step))
        seg = segregation(sub)  # shape: (B, P)
        ret = torch.where(have, retention(sub, masks), torch.zeros((), dtype=sub.dtype, device=sub.device))
        loss = self.config.segregation_weight * seg.sum(1) + self.config.retention_weight * ret.sum(1)
        metrics = {"segregation": seg.detach(), "retention": ret.detach(),
                   "max_attention": max_attention(sub).detach()}
        return TermResult(loss, metrics)

    def satisfied(self, result: TermResult, threshold: float) -> torch.Tensor:
        """Refinement is done when every concept's maximum attention reaches ``threshold`` (A&E semantics)."""
        return result.metrics["max_attention"].amin(1) >= threshold

    def describe(self) -> str:
        names = ", ".join(s.name + (" (mask)" if m is not None else "") for s, m in zip(self.subjects, self.masks, strict=True))
        return (f"{super().describe()}; concepts {names}; segregation x{self.config.segregation_weight:g}, "
                f"retention x{self.config.retention_weight:g}, mask threshold {self.config.mask_threshold:g}")
