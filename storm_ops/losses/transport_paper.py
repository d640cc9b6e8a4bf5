"""STORM paper mode: the method as described, done so that the target matters.

Han et al., "Spatial Transport Optimization by Repositioning Attention Map for Training-Free
Text-to-Image Synthesis", CVPR 2025, arXiv 2503.22168. Each spatial relation "S <relation> O" moves
the subject's and the object's cross-attention distributions towards target regions on the
requested sides of each other by optimal transport (Spatial Transport Optimization), with a Spatial
Transport cost made of a positional cost and a non-overlap penalty, weighted up over the first
denoising steps and applied only in the early steps (:class:`TransportPaperTerm`):

* maps: A&E processing (softmax over tokens without the start token at temperature 100,
  Gaussian smoothing k=3, sigma=0.5 in the A&E convention), each map a distribution over pixels;
* positional cost ``C[n, m] = |p_n - t_m|^2`` between source pixel ``n`` and target location
  ``m`` on a grid whose longer side spans [0, 1]; the loss is the entropic OT value
  ``OT_eps(p_S, q_S)`` (envelope gradients, :func:`storm_ops.losses.ot.entropic_ot`);
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
* time weight ``w(i) = 1 + (W_max - 1)(1 - exp(-k i))`` (k=0.4, W_max=100, as released) with
  ``i`` the step index scaled to a 50-step schedule, multiplying the spatial part:
  ``L = w(i) (OT_S + OT_O + lambda * overlap) [+ attribute term]``. With the sampler's gradient
  clip (norm 1, ``grad_clip_norm``) the weight mostly decides how soon updates reach the clip;
* attribute term (optional, from step 7 of 50 as released): ``OT_eps(noun, modifier)`` with the
  released two-part cost made 2-D: ``0.5 |p_n - p_m|^2 + 0.5 |a_n / max a - b_m / max b|``;
* ``satisfied`` (refinement): the relation score is at least the threshold ``T``, where the
  score is the smallest fraction of an entity's mass lying on the requested side of its
  partner's centroid (inside its painted mask, if any; outside the partner for "near").
  The released code's ``L <= 1 - T`` (carried over from A&E) is meaningless for an OT value.

Relations come from :class:`storm_ops.prompt.parsed.SpatialRelation`; several relations add up.
"""

from __future__ import annotations

import torch

from ..attention.shapes import resample_masks
from ..errors import StormError
from ..guidance.terms import GuidanceContext, TermResult
from ..prompt.parsed import OPPOSITE, RELATIONS
from ..tokens.layout import Subject
from .ot import centroids, entropic_ot, pixel_coordinates, squared_distance_cost
from .transport_core import TransportConfig, TransportTerm


# ------------------------------------------------------------------------ distributions
def as_distribution(maps: torch.Tensor) -> torch.Tensor:
    """Each map ``(..., h, w)`` divided by its sum (a distribution over pixels)."""
    total = maps.sum((-2, -1), keepdim=True)
    return maps / total.clamp_min(torch.finfo(maps.dtype).tiny)


def target_distribution(mask: torch.Tensor, h: int, w: int, batch: int) -> torch.Tensor:
    """A painted target mask as a distribution over an ``h x w`` map.

    Parameters
    ----------
    mask : Tensor, shape (h', w') or (1 | B, h', w')
        Non-negative weights at any resolution (see :func:`~storm_ops.attention.shapes.resample_masks`).

    Returns
    -------
    Tensor, shape (B, h, w), float32, each map summing to 1.
    """
    m = mask.detach().float()
    m = m[None] if m.dim() == 2 else m
    if m.shape[0] not in (1, batch):
        raise StormError(f"a target mask has {m.shape[0]} images but the batch has {batch}; "
                         "give one mask or one per image", input_name="target_masks")
    m = resample_masks(m, (h, w)).clamp_min(0.0)
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
        Centroids ``(x, y)`` in normalised units (:func:`storm_ops.losses.ot.pixel_coordinates`).
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
def transport_paper_loss(sub: torch.Tensor, obj: torch.Tensor, relation: str, config: TransportConfig = TransportConfig(),
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
    config : TransportConfig
    weight : float
        Time weight ``w(i)``.
    sub_target, obj_target : Tensor, shape (B, h, w), optional
        Distributions replacing the computed targets (painted masks, see :func:`target_distribution`).

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


def paper_attribute_loss(noun: torch.Tensor, modifier: torch.Tensor, config: TransportConfig = TransportConfig()) -> torch.Tensor:
    """Attribute term ``OT_eps(p_noun, p_modifier)`` with a 2-D cost (paper mode).

    ``C[n, m] = alpha |p_n - p_m|^2 + beta |a_n / max a - b_m / max b|``: the released two-part
    cost with the squared grid distance in place of the flattened-index distance
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
class TransportPaperTerm(TransportTerm):
    """STORM paper mode as a guidance term (see the module docstring; parameters as :class:`TransportTerm`).

    Every modifier of a binding enters the attribute term; painted target masks replace the
    computed targets of their entities.
    """

    mode = "paper"
    smoothing_pad = None

    def _accept_target_masks(self, masks: dict[tuple[int, ...], torch.Tensor]) -> dict[tuple[int, ...], torch.Tensor]:
        return masks

    def schedule_step(self, ctx: GuidanceContext) -> float:
        """The step index scaled to a ``config.schedule_steps`` schedule (50, as released)."""
        return ctx.step * self.config.schedule_steps / max(ctx.num_steps, 1)

    def spatial_loss(self, ents: torch.Tensor, step: float, weight: float) -> tuple[torch.Tensor, dict]:
        """:func:`transport_paper_loss` summed over the relations; metrics ``positional``, ``overlap``
        (sums) and ``relation_score`` (the smallest over the relations), each ``(B,)``."""
        batch, _, h, w = ents.shape
        masks = {k: target_distribution(m, h, w, batch) for k, m in self.target_masks.items()}
        spatial = ents.new_zeros(batch)
        positional, overlap, scores = ents.new_zeros(batch), ents.new_zeros(batch), []
        for rel in self.relations:
            sub, obj = self._pair_maps(ents, rel)
            loss, info = transport_paper_loss(sub, obj, rel.relation, self.config, weight=weight,
                                              sub_target=masks.get(rel.subject.positions),
                                              obj_target=masks.get(rel.object.positions))
            spatial = spatial + loss
            positional = positional + info["positional"]
            overlap = overlap + info["overlap"]
            scores.append(info["score"])
        return spatial, {"positional": positional, "overlap": overlap,
                         "relation_score": torch.stack(scores, 1).amin(1)}

    def attribute_pairs(self) -> list[tuple[Subject, Subject]]:
        return [(b.noun, m) for b in self.bindings for m in b.modifiers]

    @property
    def attribute_start(self) -> float:
        return self.config.attribute_start

    @property
    def smooth_modifiers(self) -> bool:
        return self.config.smooth_modifiers

    def attribute_loss(self, noun: torch.Tensor, modifier: torch.Tensor) -> torch.Tensor:
        return paper_attribute_loss(noun, modifier, self.config)

    def satisfied(self, result: TermResult, threshold: float) -> torch.Tensor:
        """The relation score (the smallest share of an entity's mass on its requested side / in its
        mask / off its "near" partner) is at least ``threshold``."""
        return result.metrics["relation_score"] >= threshold

    def describe(self) -> str:
        masked = [e.name for e in self._entities if e.positions in self.target_masks]
        extra = f"; target masks for {', '.join(masked)}" if masked else ""
        return f"{super().describe()}{extra}"
