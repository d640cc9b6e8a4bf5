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
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from ..analysis import OPPOSITE, RELATIONS, BindingSet, SpatialRelation
from ..attention import select_token_maps, token_softmax
from ..errors import StormError
from ..guidance import GuidanceContext, GuidanceTerm, StepSize, StepWindow, TermResult
from ..ot import centroids, entropic_ot, pixel_coordinates, squared_distance_cost
from ..smoothing import KERNEL_CONVENTIONS, gaussian_smooth
from ..tokens import END_TOKEN_CONVENTIONS, Subject, TokenLayout
from .storm_reference import BRANCH, REF_ATTRIBUTE_STEP, reference_adjective_loss, storm_reference_loss

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
        if self.temperature <= 0:
            raise StormError(f"softmax temperature must be positive, got {self.temperature}")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise StormError(f"smoothing kernel size must be a positive odd number, got {self.kernel_size}",
                             input_name="kernel_size")
        if self.sigma <= 0:
            raise StormError(f"smoothing sigma must be positive, got {self.sigma}", input_name="sigma")
        if self.kernel_convention not in KERNEL_CONVENTIONS:
            raise StormError(f"unknown kernel convention {self.kernel_convention!r}")
        if self.end_token_convention not in END_TOKEN_CONVENTIONS + ("auto",):
            raise StormError(f"unknown end-token convention {self.end_token_convention!r}; "
                             f"use 'auto' or one of {END_TOKEN_CONVENTIONS}", input_name="end_tokens")
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


def as_distribution(maps: torch.Tensor) -> torch.Tensor:
    """Each map ``(..., h, w)`` divided by its sum (a distribution over pixels)."""
    total = maps.sum((-2, -1), keepdim=True)
    return maps / total.clamp_min(torch.finfo(maps.dtype).tiny)


def resize_mask(mask: torch.Tensor, h: int, w: int, batch: int) -> torch.Tensor:
    """A painted target mask as a distribution over an ``h x w`` map.

    Parameters
    ----------
    mask : Tensor, shape (h', w') or (1 | B, h', w')
        Non-negative weights at any resolution (resized bilinearly, antialiased when shrinking).

    Returns
    -------
    Tensor, shape (B, h, w), float32, each map summing to 1.
    """
    m = mask.detach().float()
    m = m[None] if m.dim() == 2 else m
    if m.shape[0] not in (1, batch):
        raise StormError(f"a target mask has {m.shape[0]} images but the batch has {batch}; "
                         "give one mask or one per image", input_name="target_masks")
    if m.shape[-2:] != (h, w):
        shrink = m.shape[-2] > h or m.shape[-1] > w
        m = F.interpolate(m[:, None], size=(h, w), mode="bilinear", align_corners=False, antialias=shrink)[:, 0]
    m = m.clamp_min(0.0)
    if bool((m.flatten(1).sum(-1) <= 0).any()):
        raise StormError("a target mask has no painted pixel at the attention-map resolution; paint a larger "
                         "region", input_name="target_masks")
    return as_distribution(m).expand(batch, h, w)


# ----------------------------------------------------------------------------- targets
def target_centers(own: torch.Tensor, partner: torch.Tensor, relation: str, h: int, w: int,
                   near_distance: float, fallback: float) -> torch.Tensor:
    """Where an entity should go to lie ``relation`` of its partner (paper mode).

    Parameters
    ----------
    own, partner : Tensor, shape (B, 2)
        Centroids ``(x, y)`` in normalised units (:func:`storm_ops.ot.pixel_coordinates`).
    relation : str
        One of ``RELATIONS``, read as "this entity lies <relation> of the partner".
    fallback : float
        ``-1`` or ``+1``: the x direction for "near" when both centroids coincide.

    Returns
    -------
    Tensor, shape (B, 2), inside the image ``[0, w/s] x [0, h/s]``.
    """
    s = max(h, w)
    width, height = w / s, h / s
    x, y = own[:, 0], own[:, 1]
    if relation == "left":
        x = partner[:, 0] / 2
    elif relation == "right":
        x = (width + partner[:, 0]) / 2
    elif relation == "above":
        y = partner[:, 1] / 2
    elif relation == "below":
        y = (height + partner[:, 1]) / 2
    elif relation == "near":
        away = own - partner
        norm = away.norm(dim=-1, keepdim=True)
        default = torch.tensor([fallback, 0.0], dtype=own.dtype, device=own.device).expand_as(away)
        direction = torch.where(norm > 1e-6, away / norm.clamp_min(1e-6), default)
        x, y = (partner + near_distance * direction).unbind(-1)
    else:
        raise StormError(f"unknown spatial relation {relation!r}; use one of {RELATIONS}", input_name="relations")
    return torch.stack([x.clamp(0, width), y.clamp(0, height)], -1)


def blob_targets(centers: torch.Tensor, h: int, w: int, sigma: float, radius: float) -> torch.Tensor:
    """Truncated Gaussian blobs ``exp(-d^2 / (2 sigma^2)) [d <= radius]`` as distributions.

    Parameters
    ----------
    centers : Tensor, shape (B, 2)
        ``(x, y)`` in normalised units; ``sigma`` and ``radius`` in the same units.

    Returns
    -------
    Tensor, shape (B, h * w)
        Each row sums to 1 (the pixel nearest to the centre is always kept).
    """
    pts = pixel_coordinates(h, w, device=centers.device, dtype=centers.dtype)
    d2 = (pts[None] - centers[:, None]).square().sum(-1)  # shape: (B, N)
    inside = (d2 <= radius ** 2) | (d2 == d2.amin(-1, keepdim=True))
    blob = torch.exp(-d2 / (2 * sigma ** 2)) * inside
    return blob / blob.sum(-1, keepdim=True)


def side_score(p: torch.Tensor, partner: torch.Tensor, relation: str) -> torch.Tensor:
    """Fraction of ``p``'s mass on the ``relation`` side of the partner's centroid.

    Parameters
    ----------
    p : Tensor, shape (B, h, w)
        A distribution.
    partner : Tensor, shape (B, 2)
        Partner centroid (normalised units). A pixel counts half when its centre lies on the
        centroid line and fully from half a pixel past it (a ramp, so the score is continuous).

    Returns
    -------
    Tensor, shape (B,)
    """
    h, w = p.shape[-2:]
    pts = pixel_coordinates(h, w, device=p.device, dtype=p.dtype)  # shape: (N, 2)
    step = 1.0 / max(h, w)
    axis, sign = {"left": (0, -1.0), "right": (0, 1.0), "above": (1, -1.0), "below": (1, 1.0)}[relation]
    ramp = (sign * (pts[None, :, axis] - partner[:, None, axis]) / step + 0.5).clamp(0, 1)
    return (p.flatten(1) * ramp).sum(-1)


# --------------------------------------------------------------------------- paper loss
def storm_paper_loss(sub: torch.Tensor, obj: torch.Tensor, relation: str, config: StormConfig = StormConfig(),
                     *, weight: float = 1.0, sub_target: torch.Tensor | None = None,
                     obj_target: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """The paper-mode spatial loss of one relation "sub <relation> obj".

    ``L = weight * (OT_eps(p_S, q_S) + OT_eps(p_O, q_O) + lambda * overlap)`` with the targets
    ``q`` described in the module docstring.

    Parameters
    ----------
    sub, obj : Tensor, shape (B, h, w)
        Subject and object maps (normalised here). Not modified.
    relation : str
        One of ``RELATIONS``.
    config : StormConfig
    weight : float
        Time weight ``w(i)``.
    sub_target, obj_target : Tensor, shape (B, h, w), optional
        Distributions replacing the computed targets (painted masks, see :func:`resize_mask`).

    Returns
    -------
    loss : Tensor, shape (B,)
    info : dict
        ``positional`` (OT_S + OT_O), ``overlap``, ``score`` (relation score, see ``satisfied``),
        all (B,) and detached; ``targets`` (B, 2, h, w); ``sinkhorn`` (the solver's info).
    """
    if relation not in RELATIONS:
        raise StormError(f"unknown spatial relation {relation!r}; use one of {RELATIONS}", input_name="relations")
    p_s, p_o = as_distribution(sub.float()), as_distribution(obj.float())
    b, h, w = p_s.shape
    c_s, c_o = centroids(p_s).detach(), centroids(p_o).detach()
    targets = []
    for own, partner, rel, given, fallback in ((c_s, c_o, relation, sub_target, -1.0),
                                               (c_o, c_s, OPPOSITE[relation], obj_target, 1.0)):
        if given is not None:
            targets.append(as_distribution(given.detach().float()).expand(b, h, w).reshape(b, h * w))
        else:
            centre = target_centers(own, partner, rel, h, w, config.near_distance, fallback)
            targets.append(blob_targets(centre, h, w, config.target_sigma, config.target_radius))
    cost = squared_distance_cost(h, w, device=p_s.device)
    values, ot_info = entropic_ot(torch.cat([p_s, p_o]).flatten(1), torch.cat(targets), cost, config.sinkhorn_reg,
                                  max_iter=config.sinkhorn_max_iter, tol=config.sinkhorn_tol)
    positional = values[:b] + values[b:]
    overlap = ((p_s * p_o).flatten(1).sum(-1) / p_o.flatten(1).amax(-1)
               + (p_s * p_o).flatten(1).sum(-1) / p_s.flatten(1).amax(-1))
    loss = weight * (positional + config.overlap_weight * overlap)
    # Relation score (detached): the smallest share of mass where each entity should be.
    with torch.no_grad():
        scores = []
        for p, given, partner, rel in ((p_s, sub_target, c_o, relation), (p_o, obj_target, c_s, OPPOSITE[relation])):
            if given is not None:
                support = given.float().expand(b, h, w)
                scores.append((p * support / support.flatten(1).amax(-1)[:, None, None]).flatten(1).sum(-1))
            elif rel == "near":
                scores.append(1.0 - torch.minimum(p_s, p_o).flatten(1).sum(-1))
            else:
                scores.append(side_score(p, partner, rel))
        score = torch.minimum(*scores)
    info = {"positional": positional.detach(), "overlap": overlap.detach(), "score": score,
            "targets": torch.stack(targets, 1).reshape(b, 2, h, w), "sinkhorn": ot_info}
    return loss, info


def paper_attribute_loss(noun: torch.Tensor, modifier: torch.Tensor, config: StormConfig = StormConfig()) -> torch.Tensor:
    """Attribute term ``OT_eps(p_noun, p_modifier)`` with a 2-D cost (paper mode).

    ``C[n, m] = alpha |p_n - p_m|^2 + beta |a_n / max a - b_m / max b|``: the released two-part
    cost (methods.md 4.8) with the squared grid distance in place of the flattened-index distance
    ``|n - m|`` and the values scaled to [0, 1]. Differentiable through the value part of the cost.

    Parameters
    ----------
    noun, modifier : Tensor, shape (B, h, w)

    Returns
    -------
    Tensor, shape (B,)
    """
    a = as_distribution(noun.float()).flatten(1)
    b = as_distribution(modifier.float()).flatten(1)
    h, w = noun.shape[-2:]
    a_rel = a / a.amax(-1, keepdim=True)
    b_rel = b / b.amax(-1, keepdim=True)
    cost = (config.attribute_position_weight * squared_distance_cost(h, w, device=a.device)[None]
            + config.attribute_value_weight * (a_rel[:, :, None] - b_rel[:, None, :]).abs())
    value, _ = entropic_ot(a, b, cost, config.sinkhorn_reg, max_iter=config.sinkhorn_max_iter,
                           tol=config.sinkhorn_tol)
    return value


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
