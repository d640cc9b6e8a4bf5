"""STORM pieces both modes share: configuration, released defaults, time weight, token maps, term.

Han et al., "Spatial Transport Optimization by Repositioning Attention Map for Training-Free
Text-to-Image Synthesis", CVPR 2025, arXiv 2503.22168. Each spatial relation "S <relation> O"
moves the subject's and the object's cross-attention maps by optimal transport; an optional
attribute term binds modifiers to their nouns. :class:`TransportTerm` holds what every mode does with
a prompt's relations (inputs, token maps, time weight, attribute pairs); a mode subclass supplies
its step convention, spatial loss, attribute loss and refinement rule:

* :class:`~.transport_paper.TransportPaperTerm` — the method as described, done so that the target matters;
* :class:`~.transport_reference.TransportReferenceTerm` — the released code's loss (MICV-yonsei/STORM
  ``88dbc3a``), quirks included.

:data:`.transport.TRANSPORT_TERMS` picks the class from the mode name.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import ClassVar

import torch

from ..attention.maps import MapSettings, word_maps
from ..errors import StormError
from ..guidance.terms import GuidanceContext, GuidanceTerm, StepSize, StepWindow, TermResult
from ..prompt.overrides import validate_relations
from ..prompt.parsed import BindingSet, PromptAnalysis, SpatialRelation
from ..tokens.layout import Subject, TokenLayout

#: Released defaults: update at steps 1..24 of 50, refinement at steps
#: 0, 5, 10, 15, 20 (step 0 lies outside the window, so it never fires on 50 steps), <= 30 iterations.
DEFAULT_WINDOW = StepWindow(0.02, 0.5)
DEFAULT_THRESHOLDS = ((0.0, 0.9), (0.1, 0.95), (0.2, 0.99), (0.3, 0.995), (0.4, 0.999))
DEFAULT_STEP_SIZE = StepSize(20.0, 0.5)
DEFAULT_MAX_REFINE_ITERS = 30


@dataclass(frozen=True)
class TransportConfig:
    """Settings of the STORM loss. Fields marked (paper) are ignored in reference mode.

    The mode is not a setting: it is the term class (:data:`.transport.TRANSPORT_TERMS`).

    Attributes
    ----------
    maps : MapSettings
        Map processing (released code, A&E's): x100 softmax, 3x3 A&E Gaussian with sigma 0.5;
        ``end_token_convention`` as in A&E (``"sd1"`` = released default, ``"words"`` = its
        ``sd_2_1`` flag, ``"auto"`` = per model). Which maps are smoothed, and the smoothing's padding,
        are the mode's (:attr:`TransportTerm.smoothing_pad`, :attr:`TransportTerm.smooth_modifiers`).
    time_weight_k, time_weight_max : float
        ``k = 0.4``, ``W_max = 100`` (released code).
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

    maps: MapSettings = MapSettings()
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
    """``w(i) = 1 + (W_max - 1)(1 - exp(-k i))`` (released code): 1 at i=0, 33.6 at 1, 98.2 at 10."""
    return 1.0 + (w_max - 1.0) * (1.0 - math.exp(-k * step))


# --------------------------------------------------------------------------------- term
def no_relation(analysis: PromptAnalysis | None = None) -> StormError:
    """The error of a STORM term without a spatial relation: about the prompt ``analysis`` (what it found) when the
    term came from one, else about the term's ``relations``."""
    what, found = "no spatial relation between two objects was given", ""
    if analysis is not None:
        objects = ", ".join(e.name for e in analysis.entities) or "none"
        what = ("the prompt names only one object" if len(analysis.entities) == 1 else
                "no spatial relation between two objects was found")
        found = f" (objects: {objects})"
    notes = "; ".join(analysis.notes) if analysis is not None else ""
    return StormError(
        f"STORM needs at least one spatial relation, and {what}{found}. Write a relation between two objects of the "
        "prompt ('a cat to the left of a dog'; left of, right of, above, below, on top of, under, next to, near) or "
        "set relations in STORM Prompt Analysis ('cat left of dog')." + (f" Analysis notes: {notes}" if notes else ""),
        input_name="relations" if analysis is None else "analysis")


class TransportTerm(GuidanceTerm):
    """STORM spatial-relation guidance as a :class:`GuidanceTerm` (Han et al., CVPR 2025).

    What every mode does with a prompt's relations; a mode subclass (:data:`.transport.TRANSPORT_TERMS`)
    supplies its step convention, spatial loss, attribute loss and refinement rule.

    Parameters
    ----------
    layout : TokenLayout
        The prompt's columns.
    relations : tuple of SpatialRelation
        At least one; their losses add up.
    config : TransportConfig
    bindings : tuple of BindingSet
        Noun/modifier pairs for the attribute term (the mode's :meth:`attribute_pairs` says which
        modifiers count). Empty disables the term.
    target_masks : mapping of entity name -> Tensor (h', w') or (1 | B, h', w'), optional
        Painted targets replacing the computed target of that entity in every relation it is
        part of (keys are :attr:`Subject.name` of a relation's subject/object). Checked here; the
        mode decides whether it can use them (:meth:`_accept_target_masks`).
    window, step_size, weight, thresholds, max_refine_iters
        As in :class:`GuidanceTerm`; defaults are the released ones (:data:`DEFAULT_WINDOW`, ...).

    Attributes
    ----------
    grad_clip_norm : float
        The released code clips the latent gradient to global L2 norm 1.0 before the step; the
        sampler applies it.
    """

    name = "storm"
    default_window = DEFAULT_WINDOW
    default_step_size = DEFAULT_STEP_SIZE
    default_thresholds = DEFAULT_THRESHOLDS
    default_max_refine_iters = DEFAULT_MAX_REFINE_ITERS
    grad_clip_norm: float | None = 1.0
    #: the mode's name, its key in :data:`.transport.TRANSPORT_TERMS`
    mode: ClassVar[str]
    #: reflect padding of the map smoothing (:attr:`MapSettings.pad`)
    smoothing_pad: ClassVar[int | None]

    def __init__(self, layout: TokenLayout, relations: tuple[SpatialRelation, ...],
                 config: TransportConfig = TransportConfig(), *, bindings: tuple[BindingSet, ...] = (),
                 target_masks: Mapping[str, torch.Tensor] | None = None, **schedule):
        super().__init__(**schedule)
        relations = tuple(relations)
        if not relations:
            raise no_relation()
        validate_relations(relations)
        entities: dict[tuple[int, ...], Subject] = {}
        for rel in relations:
            for ent in (rel.subject, rel.object):
                entities.setdefault(ent.positions, ent)
        by_name = {e.name: e.positions for rel in relations for e in (rel.subject, rel.object)}
        masks: dict[tuple[int, ...], torch.Tensor] = {}
        for key, mask in dict(target_masks or {}).items():
            if key not in by_name:
                raise StormError(f"target mask for {key!r}: no relation involves it; known entities: "
                                 f"{sorted(by_name)}", input_name="target_masks")
            if not isinstance(mask, torch.Tensor) or mask.dim() not in (2, 3):
                raise StormError(f"target mask for {key!r} must be a tensor (h, w) or (B, h, w)",
                                 input_name="target_masks")
            if not bool(torch.isfinite(mask).all()) or bool((mask < 0).any()) or not bool((mask > 0).any()):
                raise StormError(f"target mask for {key!r} must be finite, non-negative and not empty",
                                 input_name="target_masks")
            masks[by_name[key]] = mask.detach()
        self.layout = layout
        self.relations = relations
        self.config = config
        self.bindings = tuple(b for b in bindings if b.modifiers)
        self.target_masks = self._accept_target_masks(masks)  # keyed by the entity's token columns
        self._entities = tuple(entities.values())
        self._index = {e.positions: k for k, e in enumerate(self._entities)}

    def token_columns(self) -> tuple[int, ...]:
        cols = [p for e in self._entities for p in e.positions]
        cols += [p for b in self.bindings for p in b.columns]
        return tuple(dict.fromkeys(cols))

    # -- loss ----------------------------------------------------------------------------
    def compute(self, ctx: GuidanceContext) -> TermResult:
        cfg = self.config
        ents = self._token_maps(ctx.maps, [e.positions for e in self._entities], smooth=True)
        batch = ents.shape[0]
        step = self.schedule_step(ctx)
        wt = time_weight(step, cfg.time_weight_k, cfg.time_weight_max)
        spatial, metrics = self.spatial_loss(ents, step, wt)
        attribute = self._attribute(ctx, step, batch)
        metrics["attribute"] = attribute.detach()
        metrics["time_weight"] = torch.full((batch,), float(wt), device=ents.device)
        return TermResult(spatial + cfg.attribute_weight * attribute, metrics)

    def _token_maps(self, maps: torch.Tensor, groups, *, smooth: bool) -> torch.Tensor:
        """Each group's map (:func:`word_maps`), smoothed if ``smooth``, with the mode's padding."""
        settings = replace(self.config.maps, smooth=smooth, pad=self.smoothing_pad)
        return word_maps(maps, self.layout, groups, settings)

    def _pair_maps(self, ents: torch.Tensor, rel: SpatialRelation) -> tuple[torch.Tensor, torch.Tensor]:
        """The subject's and the object's maps ``(B, h, w)`` of a relation, out of ``compute``'s maps."""
        return ents[:, self._index[rel.subject.positions]], ents[:, self._index[rel.object.positions]]

    def _attribute(self, ctx: GuidanceContext, step: float, batch: int) -> torch.Tensor:
        """Mean attribute loss over :meth:`attribute_pairs`, ``(B,)``; zero before :attr:`attribute_start`."""
        pairs = self.attribute_pairs()
        if not pairs or self.config.attribute_weight == 0 or step < self.attribute_start:
            return ctx.maps.new_zeros(batch, dtype=torch.float32)
        nouns = self._token_maps(ctx.maps, [n.positions for n, _ in pairs], smooth=True)
        mods = self._token_maps(ctx.maps, [m.positions for _, m in pairs], smooth=self.smooth_modifiers)
        losses = [self.attribute_loss(nouns[:, k], mods[:, k]) for k in range(len(pairs))]
        return torch.stack(losses, 1).mean(1)

    # -- what a mode supplies ------------------------------------------------------------
    @abstractmethod
    def _accept_target_masks(self, masks: dict[tuple[int, ...], torch.Tensor]) -> dict[tuple[int, ...], torch.Tensor]:
        """The checked target masks this mode keeps (or a StormError when it cannot use them)."""

    @abstractmethod
    def schedule_step(self, ctx: GuidanceContext) -> float:
        """The step index the time weight and the attribute start are applied to."""

    @abstractmethod
    def spatial_loss(self, ents: torch.Tensor, step: float, weight: float) -> tuple[torch.Tensor, dict]:
        """Summed spatial loss of the relations, ``(B,)``, and the mode's metrics.

        ``ents`` (B, K, h, w) are the smoothed maps of the relations' entities (see
        :meth:`_pair_maps`), ``step`` is :meth:`schedule_step`, ``weight`` the time weight there.
        """

    @abstractmethod
    def attribute_pairs(self) -> list[tuple[Subject, Subject]]:
        """(noun, modifier) pairs of the attribute term, from the bindings."""

    @property
    @abstractmethod
    def attribute_start(self) -> float:
        """First step (in :meth:`schedule_step` units) of the attribute term."""

    @property
    @abstractmethod
    def smooth_modifiers(self) -> bool:
        """Whether the modifier maps of the attribute term are smoothed."""

    @abstractmethod
    def attribute_loss(self, noun: torch.Tensor, modifier: torch.Tensor) -> torch.Tensor:
        """Attribute loss ``(B,)`` of a smoothed noun map and a modifier map, each ``(B, h, w)``."""

    @abstractmethod
    def satisfied(self, result: TermResult, threshold: float) -> torch.Tensor:
        """Per-sample ``(B,)``: whether refinement to ``threshold`` is done (the mode's rule)."""

    def describe(self) -> str:
        rels = "; ".join(r.describe() for r in self.relations)
        return f"{super().describe()}; {self.mode} mode; {rels}"
