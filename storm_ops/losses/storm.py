"""STORM: Spatial Transport Optimization by Repositioning Attention Map (methods.md section 4).

Han et al., CVPR 2025, arXiv 2503.22168. Each spatial relation "S <relation> O" moves the
subject's and the object's cross-attention distributions towards target regions on the requested
sides of each other by optimal transport (Spatial Transport Optimization), with a Spatial
Transport cost made of a positional cost and a non-overlap penalty, weighted up over the first
denoising steps and applied only in the early steps.

Two modes (:class:`StormConfig.mode`):

``"paper"`` (default) — the method as described, done so that the target matters:
    * maps: A&E processing (softmax over tokens without the start token at temperature 100,
      Gaussian smoothing k=3, sigma=0.5 in the A&E convention), each map a distribution over pixels;
    * positional cost ``C[n, m] = |p_n - t_m|^2`` between source pixel ``n`` and target location
      ``m`` on a grid whose longer side spans [0, 1]; the loss is the entropic OT value
      ``OT_eps(p_S, q_S)`` (envelope gradients, :func:`storm_ops.ot.entropic_ot`);
    * targets: Gaussian blobs (sigma 3/16, truncated at radius 4/16 of the longer side, the released
      code's 3 and 4 pixels of a 16-pixel map) on the requested side of the partner's centroid:
      "left of" at the midpoint between the left border and the partner's centroid (as the
      released code places its blobs), keeping the entity's own cross-axis position; "right",
      "above", "below" mirrored; "near" at ``near_distance`` from the partner's centroid in the
      direction the entity already lies. The object gets the mirrored relation towards the subject.
      A painted target mask replaces the computed target of its entity. Targets are constants of
      the gradient (computed from detached centroids);
    * non-overlap penalty: ``sum_n p_S(n) p_O(n) / max p_O + sum_n p_O(n) p_S(n) / max p_S``, the
      expected partner presence under each entity's mass, in [0, 1] each. It is the part of the
      ST cost that depends on the source pixel only; under any plan with row marginals ``p`` such
      a cost contributes exactly ``sum_n p(n) c(n)``, so it is added in closed form;
    * time weight ``w(i) = 1 + (W_max - 1)(1 - exp(-k i))`` (k=0.4, W_max=100, methods.md 4.5) with
      ``i`` the step index scaled to a 50-step schedule, multiplying the spatial part:
      ``L = w(i) (OT_S + OT_O + lambda * overlap) [+ attribute term]``. With the sampler's gradient
      clip (norm 1, ``grad_clip_norm``) the weight mostly decides how soon updates reach the clip;
    * attribute term (optional, from step 7 of 50 as released): ``OT_eps(noun, modifier)`` with the
      released two-part cost made 2-D: ``0.5 |p_n - p_m|^2 + 0.5 |a_n / max a - b_m / max b|``;
    * ``satisfied`` (refinement): the relation score is at least the threshold ``T``, where the
      score is the smallest fraction of an entity's mass lying on the requested side of its
      partner's centroid (inside its painted mask, if any; outside the partner for "near").
      The released code's ``L <= 1 - T`` (carried over from A&E) is meaningless for an OT value.

``"reference"`` — the released code's loss, quirks included (:mod:`.storm_reference`).

Relations come from :class:`storm_ops.analysis.SpatialRelation`; several relations add up.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import replace

import torch

from ..analysis import BindingSet, SpatialRelation
from ..errors import StormError
from ..guidance import GuidanceContext, GuidanceTerm, StepSize, StepWindow, TermResult
from ..tokens import Subject, TokenLayout
from .storm_core import (
    DEFAULT_MAX_REFINE_ITERS,
    DEFAULT_STEP_SIZE,
    DEFAULT_THRESHOLDS,
    DEFAULT_WINDOW,
    MODES,
    StormConfig,
    time_weight,
    token_maps,
)
from .storm_paper import (
    as_distribution,
    blob_targets,
    paper_attribute_loss,
    resize_mask,
    side_score,
    storm_paper_loss,
    target_centers,
)
from .storm_reference import BRANCH, REF_ATTRIBUTE_STEP, reference_adjective_loss, storm_reference_loss

__all__ = ["MODES", "DEFAULT_WINDOW", "DEFAULT_THRESHOLDS", "DEFAULT_STEP_SIZE", "DEFAULT_MAX_REFINE_ITERS", "StormConfig", "time_weight", "token_maps", "as_distribution", "resize_mask", "target_centers", "blob_targets", "side_score", "storm_paper_loss", "paper_attribute_loss", "StormTerm", "storm_reference_loss"]


# --------------------------------------------------------------------------------- term
class StormTerm(GuidanceTerm):
    """STORM spatial-relation guidance as a :class:`GuidanceTerm` (Han et al., CVPR 2025).

    Parameters
    ----------
    layout : TokenLayout
        The prompt's columns.
    relations : tuple of SpatialRelation
        At least one; their losses add up.
    config : StormConfig
    bindings : tuple of BindingSet
        Noun/modifier pairs for the attribute term (paper mode: every modifier of a binding;
        reference mode: its last modifier, as the released index extraction keeps one adjective
        per noun). Empty disables the term.
    target_masks : mapping of entity name -> Tensor (h', w') or (1 | B, h', w'), optional
        Painted targets replacing the computed target of that entity in every relation it is
        part of (paper mode only; keys are :attr:`Subject.name` of a relation's subject/object).
    window, step_size, weight, thresholds, max_refine_iters
        As in :class:`GuidanceTerm`; defaults are the released ones (methods.md 4.9).

    Attributes
    ----------
    grad_clip_norm : float
        The released code clips the latent gradient to global L2 norm 1.0 before the step
        (methods.md 4.9); the sampler applies it.
    """

    name = "storm"
    grad_clip_norm: float | None = 1.0

    def __init__(self, layout: TokenLayout, relations: tuple[SpatialRelation, ...],
                 config: StormConfig = StormConfig(), *, bindings: tuple[BindingSet, ...] = (),
                 target_masks: Mapping[str, torch.Tensor] | None = None,
                 window: StepWindow = DEFAULT_WINDOW, step_size: StepSize = DEFAULT_STEP_SIZE,
                 weight: float = 1.0, thresholds: tuple[tuple[float, float], ...] = DEFAULT_THRESHOLDS,
                 max_refine_iters: int = DEFAULT_MAX_REFINE_ITERS):
        super().__init__(window=window, step_size=step_size, weight=weight, thresholds=thresholds,
                         max_refine_iters=max_refine_iters)
        relations = tuple(relations)
        if not relations:
            raise StormError("STORM needs at least one spatial relation (e.g. 'cat left of dog')",
                             input_name="relations")
        entities: dict[tuple[int, ...], Subject] = {}
        for rel in relations:
            if set(rel.subject.positions) & set(rel.object.positions):
                raise StormError(f"relation {rel.describe()!r} relates a word to itself", input_name="relations")
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
        if masks and config.mode == "reference":
            raise StormError("target masks have no effect in reference mode (its loss does not depend on the "
                             "target, methods.md 4.8); use mode 'paper'", input_name="target_masks")
        self.layout = layout
        self.relations = relations
        self.config = config
        self.bindings = tuple(b for b in bindings if b.modifiers)
        self.target_masks = masks  # keyed by the entity's token columns
        self._entities = tuple(entities.values())

    def token_columns(self) -> tuple[int, ...]:
        cols = [p for e in self._entities for p in e.positions]
        cols += [p for b in self.bindings for p in b.columns]
        return tuple(dict.fromkeys(cols))

    def resolve(self, defaults: dict) -> StormTerm:
        if self.config.end_token_convention != "auto":
            return self
        resolved = copy.copy(self)
        resolved.config = replace(self.config, end_token_convention=defaults.get("end_tokens", "sd1"))
        return resolved

    # -- loss ----------------------------------------------------------------------------
    def _attribute_pairs(self) -> list[tuple[Subject, Subject]]:
        if self.config.mode == "reference":
            return [(b.noun, b.modifiers[-1]) for b in self.bindings]
        return [(b.noun, m) for b in self.bindings for m in b.modifiers]

    def compute(self, ctx: GuidanceContext) -> TermResult:
        cfg = self.config
        ents = token_maps(ctx.maps, self.layout, [e.positions for e in self._entities], cfg, smooth=True)
        index = {e.positions: k for k, e in enumerate(self._entities)}
        batch, _, h, w = ents.shape
        reference = cfg.mode == "reference"
        step = ctx.step if reference else ctx.step * cfg.schedule_steps / max(ctx.num_steps, 1)
        wt = time_weight(step, cfg.time_weight_k, cfg.time_weight_max)
        masks = {k: resize_mask(m, h, w, batch) for k, m in self.target_masks.items()}
        spatial = ents.new_zeros(batch)
        metrics: dict[str, torch.Tensor] = {}
        if reference:
            coords = []
            for rel in self.relations:
                loss, info = storm_reference_loss(ents[:, index[rel.subject.positions]],
                                                  ents[:, index[rel.object.positions]], rel.relation, ctx.step,
                                                  k=cfg.time_weight_k, w_max=cfg.time_weight_max)
                spatial = spatial + loss
                axis = 0 if BRANCH[rel.relation] == "horizontal" else 1
                coords.append(info["coordinate"][:, axis])
            # Released gate (4.9): refinement runs only while the subject is already on the
            # left / upper side of the object (coordinate > 0).
            metrics["refine_gate"] = (torch.stack(coords, 1) > 0).any(1).float()
        else:
            positional, overlap, scores = ents.new_zeros(batch), ents.new_zeros(batch), []
            for rel in self.relations:
                loss, info = storm_paper_loss(ents[:, index[rel.subject.positions]],
                                              ents[:, index[rel.object.positions]], rel.relation, cfg, weight=wt,
                                              sub_target=masks.get(rel.subject.positions),
                                              obj_target=masks.get(rel.object.positions))
                spatial = spatial + loss
                positional = positional + info["positional"]
                overlap = overlap + info["overlap"]
                scores.append(info["score"])
            metrics.update(positional=positional, overlap=overlap,
                           relation_score=torch.stack(scores, 1).amin(1))
        attribute = self._attribute(ctx, step, batch)
        metrics["attribute"] = attribute.detach()
        metrics["time_weight"] = torch.full((batch,), float(wt), device=ents.device)
        return TermResult(spatial + cfg.attribute_weight * attribute, metrics)

    def _attribute(self, ctx: GuidanceContext, step: float, batch: int) -> torch.Tensor:
        cfg = self.config
        start = REF_ATTRIBUTE_STEP if cfg.mode == "reference" else cfg.attribute_start
        pairs = self._attribute_pairs()
        if not pairs or cfg.attribute_weight == 0 or step < start:
            return ctx.maps.new_zeros(batch, dtype=torch.float32)
        nouns = token_maps(ctx.maps, self.layout, [n.positions for n, _ in pairs], cfg, smooth=True)
        smooth_mods = cfg.mode == "paper" and cfg.smooth_modifiers
        mods = token_maps(ctx.maps, self.layout, [m.positions for _, m in pairs], cfg, smooth=smooth_mods)
        fn = reference_adjective_loss if cfg.mode == "reference" else (lambda n, m: paper_attribute_loss(n, m, cfg))
        losses = [fn(nouns[:, k], mods[:, k]) for k in range(len(pairs))]
        return torch.stack(losses, 1).mean(1)

    def satisfied(self, result: TermResult, threshold: float) -> torch.Tensor:
        """Per-sample ``(B,)``: whether refinement to ``threshold`` is done.

        Paper mode: the relation score (the smallest share of an entity's mass on its requested
        side / in its mask / off its "near" partner) is at least ``threshold``. Reference mode: the
        released rule, ``L <= 1 - T`` or the subject is not already left of / above the object.
        """
        if self.config.mode == "reference":
            return (result.loss.detach() <= 1.0 - threshold) | (result.metrics["refine_gate"] <= 0)
        return result.metrics["relation_score"] >= threshold

    def describe(self) -> str:
        rels = "; ".join(r.describe() for r in self.relations)
        masked = [e.name for e in self._entities if e.positions in self.target_masks]
        extra = f"; target masks for {', '.join(masked)}" if masked else ""
        return f"{super().describe()}; {self.config.mode} mode; {rels}{extra}"
