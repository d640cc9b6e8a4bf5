"""STORM as released (MICV-yonsei/STORM ``88dbc3a``): the loss reproduced with its quirks.

Han et al., "Spatial Transport Optimization by Repositioning Attention Map for Training-Free
Text-to-Image Synthesis", CVPR 2025, arXiv 2503.22168. Everything here follows the released code
(the released ``_storm_loss``), reimplemented from those formulas, batched over images:

* maps: normalised by ``/(sum + 1e-8)``; subject/object maps smoothed, adjective maps not (4.3);
* a relation selects a *branch*, not a direction (4.4): ``left``/``right`` -> horizontal,
  ``above``/``below`` -> vertical, ``near`` -> object relation. The subject is always pushed
  left (horizontal) or up (vertical): "right of" gives exactly the loss of "left of";
* time weight ``w(i) = 1 + (W_max - 1)(1 - exp(-k i))`` on the raw step index (4.5);
* cost (4.6): a per-pixel vector ``c = vec(M * f)`` of the *partner* map ``M`` times a directional
  factor ``f`` around ``M``'s centroid (``1e-8`` added to the differences), repeated along the
  target axis (rank 1). The vertical factor is built on rows and then transposed, so it is
  evaluated at the *column* index: ``f(r, c) = f_row(c; y_bar)``. On a non-square map this file
  evaluates ``f_row`` at the column indices (the released code only runs on square maps);
* targets (4.7): circular blobs (radius 4, sigma 3) on a grid built with
  ``meshgrid(x, y, indexing='ij')``, so the first centre coordinate indexes rows; in the object
  relation branch the target is the partner's map. The released code also has a random-centre
  branch that can never run (it needs a prompt that is vertical and non-spatial at once), so
  non-spatial prompts get the horizontal blobs; no random numbers are drawn here;
* plain Sinkhorn (reg 0.1 + 1e-8, 100 iterations, u = v = 1), loss ``<P, C>`` (4.8). Because the
  cost is rank 1 the value does not depend on the target at all (see the released solver,
  ``property_check_loss_sub_vs_target``);
* attribute term: 1-D flattened-index cost ``0.5|n - m| + 0.5|a_n - b_m|`` divided by its max,
  added from step 7 (4.8).

:class:`TransportReferenceTerm` is the guidance term of this mode.
"""

from __future__ import annotations

import torch

from ..errors import StormError
from ..guidance.terms import GuidanceContext, TermResult
from ..tokens.layout import Subject
from .ot import sinkhorn_reference
from .transport_core import TransportTerm

#: Released-code constants.
REF_SINKHORN_REG = 0.1
REF_SINKHORN_ITERS = 100
REF_EPS = 1e-8
REF_ATTRIBUTE_STEP = 7
REF_TARGET_RADIUS = 4.0
REF_TARGET_SIGMA = 3.0

#: Which branch of the released code a relation runs.
BRANCH = {"left": "horizontal", "right": "horizontal", "above": "vertical", "below": "vertical",
          "near": "object"}
#: Directions the branch uses for the subject's and the object's cost (4.6).
BRANCH_DIRECTIONS = {"horizontal": ("left", "right"), "vertical": ("above", "below"), "object": ("obj", "obj")}


def reference_time_weight(step: int, k: float = 0.4, w_max: float = 100.0) -> torch.Tensor:
    """``w(i) = 1 + (W_max - 1)(1 - exp(-k i))`` in float32, as the released code computes it.

    w(0)=1, w(1)=33.6, w(3)=70.2, w(5)=86.6, w(10)=98.2, w(20)=99.97 (released code).
    """
    t = torch.tensor(step)
    return 1 + (w_max - 1) * (1 - torch.exp(-k * t))


def normalize_reference(maps: torch.Tensor) -> torch.Tensor:
    """``M / (sum M + 1e-8)`` over the last two dimensions (released code)."""
    return maps / (maps.sum((-2, -1), keepdim=True) + REF_EPS)


def reference_centroids(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Centroids in pixel indices with the ``+ 1e-8`` of the released code.

    Parameters
    ----------
    maps : Tensor, shape (B, h, w)

    Returns
    -------
    x, y : Tensor, shape (B,) each
        ``x = sum_j j colsum_j / (sum + 1e-8)`` (column), ``y`` likewise over rows.
    """
    h, w = maps.shape[-2:]
    cols = torch.arange(w, device=maps.device).float()
    rows = torch.arange(h, device=maps.device).float()
    total = maps.sum((-2, -1)) + REF_EPS
    x = (maps.sum(-2) * cols).sum(-1) / total
    y = (maps.sum(-1) * rows).sum(-1) / total
    return x, y


def reference_cost_vector(maps: torch.Tensor, direction: str, weight: torch.Tensor) -> torch.Tensor:
    """The released cost ``vec(M * f)`` around the centroid of ``M``.

    Parameters
    ----------
    maps : Tensor, shape (B, h, w)
        The normalised *partner* map ``M``.
    direction : str
        ``"left"``, ``"right"``, ``"above"``, ``"below"`` or ``"obj"`` (f = 1).
    weight : Tensor, scalar
        The time weight ``w``.

    Returns
    -------
    Tensor, shape (B, h * w)
        One cost per source pixel; the released "cost matrix" repeats it along the target axis.
    """
    b, h, w = maps.shape
    cx, cy = reference_centroids(maps)
    cx, cy = cx[:, None, None], cy[:, None, None]
    # Horizontal factors vary along columns; the vertical ones are built on rows and then
    # transposed by the released code, i.e. evaluated at the column index (the quirk of 4.6).
    pos = torch.arange(w, device=maps.device).float()[None, None, :]  # shape: (1, 1, w)
    if direction == "left":
        factor = torch.where(pos < cx, 1 / (weight * (cx - pos + REF_EPS)), weight * (pos - cx + REF_EPS))
    elif direction == "right":
        factor = torch.where(pos > cx, 1 / (weight * (pos - cx + REF_EPS)), weight * (cx - pos + REF_EPS))
    elif direction == "above":
        factor = torch.where(pos < cy, 1 / (weight * (cy - pos + REF_EPS)), weight * (pos - cy + REF_EPS))
    elif direction == "below":
        factor = torch.where(pos > cy, 1 / (weight * (pos - cy + REF_EPS)), weight * (cy - pos + REF_EPS))
    elif direction == "obj":
        factor = torch.ones_like(maps)
    else:
        raise StormError(f"unknown reference direction {direction!r}")
    return (maps * factor).reshape(b, h * w)


def circular_target_reference(h: int, w: int, centers: torch.Tensor, radius: float = REF_TARGET_RADIUS,
                              sigma: float = REF_TARGET_SIGMA) -> torch.Tensor:
    """The released circular target blobs, ``ij`` axis convention kept.

    The grid is ``meshgrid(arange(w), arange(h), indexing='ij')``: entry ``[i, j]`` has
    coordinates ``(i, j)``, so a centre ``(cx, cy)`` puts the peak at *row* ``cx``, column ``cy``
    (for square maps; on a ``h x w`` map the array has shape ``(w, h)`` as in the code).

    Parameters
    ----------
    h, w : int
    centers : Tensor, shape (B, 2)
        ``(cx, cy)`` per image.

    Returns
    -------
    Tensor, shape (B, w, h)
        ``exp(-d^2 / (2 sigma^2))`` inside ``d <= radius``, zero outside, divided by its max
        (not yet normalised to sum 1).
    """
    xs = torch.arange(w, dtype=torch.float32, device=centers.device)
    ys = torch.arange(h, dtype=torch.float32, device=centers.device)
    xv, yv = torch.meshgrid(xs, ys, indexing="ij")  # shape: (w, h)
    cx, cy = centers[:, 0, None, None], centers[:, 1, None, None]
    dist = torch.sqrt((xv - cx) ** 2 + (yv - cy) ** 2)
    blob = torch.exp(-dist ** 2 / (2 * sigma ** 2)) * (dist <= radius).float()
    return blob / blob.amax((-2, -1), keepdim=True)


def reference_targets(sub: torch.Tensor, obj: torch.Tensor, branch: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Circular targets of the released code for the subject and object.

    Parameters
    ----------
    sub, obj : Tensor, shape (B, h, w)
        Smoothed (not normalised) maps.

    Returns
    -------
    Tensor, shape (B, h * w), twice
        Normalised (``/(sum + 1e-8)``) and flattened targets.
    """
    h, w = sub.shape[-2:]
    sx, sy = reference_centroids(sub)
    ox, oy = reference_centroids(obj)
    if branch == "vertical":
        c_sub = torch.stack([torch.full_like(oy, w / 2), (0 + oy) / 2], -1)
        c_obj = torch.stack([torch.full_like(sy, w / 2), (h + sy) / 2], -1)
    else:  # horizontal, and the non-spatial prompts that reach the same branch
        c_sub = torch.stack([(0 + ox) / 2, torch.full_like(ox, h / 2)], -1)
        c_obj = torch.stack([(w + sx) / 2, torch.full_like(sx, h / 2)], -1)
    t_sub = normalize_reference(circular_target_reference(h, w, c_sub.detach()))
    t_obj = normalize_reference(circular_target_reference(h, w, c_obj.detach()))
    return t_sub.flatten(1), t_obj.flatten(1)


def reference_adjective_cost(noun: torch.Tensor, adjective: torch.Tensor) -> torch.Tensor:
    """``C[n, m] = 0.5 |n - m| + 0.5 |a_n - b_m|`` on flattened indices, divided by its max.

    Parameters
    ----------
    noun : Tensor, shape (B, N)
    adjective : Tensor, shape (B, M)
        Normalised flattened maps (``N != M`` when a kernel larger than 3 shrank the noun map).

    Returns
    -------
    Tensor, shape (B, N, M)
        Zero where the max is ``<= 1e-6`` (as released).
    """
    n = torch.arange(noun.shape[-1], device=noun.device).float()
    m = torch.arange(adjective.shape[-1], device=noun.device).float()
    position = (n[:, None] - m[None, :]).abs()
    value = (noun[:, :, None] - adjective[:, None, :]).abs()
    cost = 0.5 * position + 0.5 * value
    top = cost.amax((-2, -1), keepdim=True)
    return torch.where(top > 1e-6, cost / top, torch.zeros_like(cost))


def _transport_loss(source: torch.Tensor, target: torch.Tensor, cost: torch.Tensor) -> torch.Tensor:
    plan, _ = sinkhorn_reference(source, target, cost, REF_SINKHORN_REG, REF_SINKHORN_ITERS)
    return (plan * cost).sum((-2, -1))


def reference_adjective_loss(noun: torch.Tensor, adjective: torch.Tensor) -> torch.Tensor:
    """Released attribute loss ``<P, C_adj>`` of a smoothed noun map and an unsmoothed adjective map.

    Parameters
    ----------
    noun, adjective : Tensor, shape (B, h, w)

    Returns
    -------
    Tensor, shape (B,)
    """
    a = normalize_reference(noun).flatten(1)
    b = normalize_reference(adjective).flatten(1)
    return _transport_loss(a, b, reference_adjective_cost(a, b))


def transport_reference_loss(sub: torch.Tensor, obj: torch.Tensor, relation: str, step: int, *,
                             k: float = 0.4, w_max: float = 100.0,
                             targets: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, dict]:
    """The released spatial loss ``loss_S + loss_O`` of one subject/object pair.

    Parameters
    ----------
    sub, obj : Tensor, shape (B, h, w)
        Smoothed softmax maps of the subject and the object (not normalised). Not modified.
    relation : str
        ``"left"``, ``"right"``, ``"above"``, ``"below"`` or ``"near"``; only its branch matters.
    step : int
        Denoising step index (time weight).
    k, w_max : float
        Time-weight parameters.
    targets : (Tensor, Tensor), optional, shapes (B, h * w)
        Replace the computed targets (used to show that they do not matter).

    Returns
    -------
    loss : Tensor, shape (B,)
    info : dict
        ``loss_sub``, ``loss_obj`` (B,), ``coordinate`` (B, 2): the released refinement gate
        ``(max(0, x_O - x_S) / 10, max(0, y_O - y_S) / 10)`` (released code), ``targets``.
    """
    if relation not in BRANCH:
        raise StormError(f"unknown relation {relation!r}; use one of {tuple(BRANCH)}", input_name="relations")
    branch = BRANCH[relation]
    sub, obj = sub.float(), obj.float()
    b, h, w = sub.shape
    sx, sy = reference_centroids(sub)
    ox, oy = reference_centroids(obj)
    coordinate = torch.stack([(ox - sx).clamp(min=0) / 10, (oy - sy).clamp(min=0) / 10], -1).detach()
    a_sub = normalize_reference(sub)
    a_obj = normalize_reference(obj)
    weight = reference_time_weight(step, k, w_max).to(sub.device)
    dir_sub, dir_obj = BRANCH_DIRECTIONS[branch]
    n = h * w
    c_sub = reference_cost_vector(a_obj, dir_sub, weight)[:, :, None].expand(b, n, n)
    c_obj = reference_cost_vector(a_sub, dir_obj, weight)[:, :, None].expand(b, n, n)
    if targets is None:
        if branch == "object":
            targets = (a_obj.flatten(1), a_sub.flatten(1))
        else:
            targets = reference_targets(sub, obj, branch)
    loss_sub = _transport_loss(a_sub.flatten(1), targets[0], c_sub)
    loss_obj = _transport_loss(a_obj.flatten(1), targets[1], c_obj)
    info = {"loss_sub": loss_sub.detach(), "loss_obj": loss_obj.detach(), "coordinate": coordinate,
            "targets": tuple(t.detach() for t in targets)}
    return loss_sub + loss_obj, info


# --------------------------------------------------------------------------------- term
class TransportReferenceTerm(TransportTerm):
    """STORM as released, as a guidance term (parameters as :class:`TransportTerm`).

    Raw step indices; the last modifier of a binding enters the attribute term (the released
    index extraction keeps one adjective per noun); painted target masks are refused, because the
    released loss does not depend on the target.
    """

    mode = "reference"
    smoothing_pad = 1  # the released code reflect-pads by 1

    def _accept_target_masks(self, masks: dict[tuple[int, ...], torch.Tensor]) -> dict[tuple[int, ...], torch.Tensor]:
        if masks:
            raise StormError("target masks have no effect in reference mode (its loss does not depend on the "
                             "target); use mode 'paper'", input_name="target_masks")
        return masks

    def schedule_step(self, ctx: GuidanceContext) -> float:
        return ctx.step

    def spatial_loss(self, ents: torch.Tensor, step: float, weight: float) -> tuple[torch.Tensor, dict]:
        """:func:`transport_reference_loss` summed over the relations (it computes the time weight itself,
        in float32 as released, so ``weight`` is unused); metric ``refine_gate`` ``(B,)``."""
        cfg = self.config
        spatial = ents.new_zeros(ents.shape[0])
        coords = []
        for rel in self.relations:
            sub, obj = self._pair_maps(ents, rel)
            loss, info = transport_reference_loss(sub, obj, rel.relation, step, k=cfg.time_weight_k,
                                                  w_max=cfg.time_weight_max)
            spatial = spatial + loss
            axis = 0 if BRANCH[rel.relation] == "horizontal" else 1
            coords.append(info["coordinate"][:, axis])
        # Released gate: refinement runs only while the subject is already on the left / upper
        # side of the object (coordinate > 0).
        return spatial, {"refine_gate": (torch.stack(coords, 1) > 0).any(1).float()}

    def attribute_pairs(self) -> list[tuple[Subject, Subject]]:
        return [(b.noun, b.modifiers[-1]) for b in self.bindings]

    @property
    def attribute_start(self) -> float:
        return REF_ATTRIBUTE_STEP

    @property
    def smooth_modifiers(self) -> bool:
        return False  # adjective maps are not smoothed in the released code

    def attribute_loss(self, noun: torch.Tensor, modifier: torch.Tensor) -> torch.Tensor:
        return reference_adjective_loss(noun, modifier)

    def satisfied(self, result: TermResult, threshold: float) -> torch.Tensor:
        """The released rule: ``L <= 1 - T``, or the subject is not already left of / above the object."""
        return (result.loss.detach() <= 1.0 - threshold) | (result.metrics["refine_gate"] <= 0)
