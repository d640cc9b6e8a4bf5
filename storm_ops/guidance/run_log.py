"""The log of a guided run: what each guided step did, typed, and its one JSON form.

The guided sampler writes a :class:`GuidedStep` per guided step (:meth:`GuidedStep.of`); the heatmap's text log and
loss charts, the saved attention file and the scripts read them. The JSON form (:meth:`GuidedStep.to_json`) is what
the browser receives (the Attention Heatmap's ``storm_steps`` output, read by ``web/storm.js``) and what
``STORM Save Attention`` writes into its file's metadata (``"log"``); :meth:`GuidedStep.from_json` reads it back.
One guided step is one JSON object:

============================  ==========================================================================
key                           value
============================  ==========================================================================
``step``                      the denoising step (0 = the first)
``sigma``                     its noise level (6 decimals)
``loss_before``               the combined objective of each image before the step's update (a list)
``loss_after``                ... after its refinement (equal to ``loss_before`` without refinement)
``terms_before``              ``{term name: [loss per image]}`` before the update (term names unique in the run)
``terms_after``               the same after the refinement
``refine_iters``              refinement updates applied at this step (0 = none)
``refine_iters_per_sample``   the same per image
``updates``                   all updates applied (refinement plus the regular one)
``refine_cap``                only when the step allowed refinement: its iteration cap
``threshold_reached``         only then: per image, whether refinement reached the threshold
``skipped``                   only when an update was skipped: why (a list of texts)
``<term>.<metric>``           each term's metrics, per image (e.g. ``attend_excite.max_attention``)
============================  ==========================================================================

Numbers are floats rounded to 6 decimals; a non-finite one is its text (``"nan"``, ``"inf"``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

#: the keys of :meth:`GuidedStep.to_json` that are not metrics
_FIELDS = ("step", "sigma", "loss_before", "loss_after", "terms_before", "terms_after", "refine_iters",
           "refine_iters_per_sample", "updates", "refine_cap", "threshold_reached", "skipped")


def numbers(t: torch.Tensor | list) -> list:
    """Values of a tensor as JSON numbers (6 decimals; a non-finite one as its text)."""
    values = t.flatten().tolist() if isinstance(t, torch.Tensor) else list(t)
    return [round(float(v), 6) if math.isfinite(float(v)) else str(float(v)) for v in values]


@dataclass
class GuidedStep:
    """One guided step of a run (see the module docstring for each field's meaning)."""

    step: int
    sigma: float
    loss_before: list
    loss_after: list
    terms_before: dict[str, list]
    terms_after: dict[str, list]
    refine_iters: int
    refine_iters_per_sample: list[int]
    updates: int
    refine_cap: int = 0
    threshold_reached: list[bool] | None = None
    skipped: list[str] = field(default_factory=list)
    metrics: dict[str, list] = field(default_factory=dict)

    @classmethod
    def of(cls, step: int, sigma: float, report) -> GuidedStep:
        """The log of a guided step from its :class:`~storm_ops.guidance.optimize.StepReport`."""
        return cls(
            step=int(step), sigma=round(float(sigma), 6),
            loss_before=numbers(report.first.objective), loss_after=numbers(report.last.objective),
            terms_before={k: numbers(v) for k, v in report.first.term_losses.items()},
            terms_after={k: numbers(v) for k, v in report.last.term_losses.items()},
            refine_iters=int(report.refine_iters),
            refine_iters_per_sample=[int(v) for v in report.sample_refine_iters],
            updates=int(report.updates), refine_cap=int(report.refine_cap),
            threshold_reached=[bool(v) for v in report.last.satisfied] if report.refine_cap else None,
            skipped=list(report.skipped), metrics={k: numbers(v) for k, v in report.last.metrics.items()})

    @property
    def updated(self) -> bool:
        """Whether the regular update (after any refinement) was applied."""
        return self.updates > self.refine_iters

    def to_json(self) -> dict:
        """The step's JSON object (the module docstring's table)."""
        out = {name: getattr(self, name) for name in _FIELDS[:9]}
        if self.refine_cap:
            out["refine_cap"] = self.refine_cap
            out["threshold_reached"] = list(self.threshold_reached or ())
        out.update(self.metrics)
        if self.skipped:
            out["skipped"] = list(self.skipped)
        return out

    @classmethod
    def from_json(cls, data: dict) -> GuidedStep:
        """Read back :meth:`to_json`."""
        known = {name: data[name] for name in _FIELDS if name in data}
        return cls(**known, metrics={k: v for k, v in data.items() if k not in _FIELDS})


def refinement_hint(log: list[GuidedStep]) -> str | None:
    """A warning for a run whose refinement never reached its threshold for some image at any step that allowed
    refinement (each such step then ran to its cap), with the remedy; None otherwise.

    A&E's thresholds (Chefer et al. 2023, Sec. 3.3) were set for SD1.4's maps. Where a model's maps cannot reach
    them, every refinement loop runs to its cap, and that many updates can turn the image into coloured noise."""
    steps = [e for e in log if e.refine_cap]
    if not steps:
        return None
    never = [i for i in range(len(steps[0].threshold_reached))
             if not any(e.threshold_reached[i] for e in steps)]
    if not never:
        return None
    who = "" if len(steps[0].threshold_reached) == 1 else f" of sample(s) {never}"
    return (f"the refinement never reached the threshold{who} at any of its {len(steps)} step(s) "
            f"(step(s) {[e.step for e in steps]}, up to {max(e.refine_cap for e in steps)} iterations each): "
            "the thresholds may be out of reach of this model's attention maps, and that many updates can "
            "spoil the image. If it looks spoiled, lower max_refine_iters (0 turns refinement off; the "
            "regular guided updates stay) or lower the thresholds.")


@dataclass
class RunInfo:
    """What a recorded run was: the node, the model and the layers it recorded, and (a guided run) its schedule
    and how its gradient passes went. Its JSON form is :meth:`to_json` (the saved attention file's ``"info"``)."""

    node: str
    model: str
    family: str
    layers: list[str] = field(default_factory=list)
    base_sampler: str | None = None
    steps: int | None = None
    guided_steps: list[int] = field(default_factory=list)
    #: inference tensors the gradient passes had to copy (0 unless a layer kind is not covered)
    weights_copied: int = 0
    #: layers whose weight the gradient passes computed again in backward instead of keeping it
    weights_recast: int = 0
    #: whether the gradient passes keep their activations in CPU memory (after running out of GPU memory)
    activations_offloaded: bool = False
    #: whether the gradient passes compute each DiT block again in backward instead of keeping its activations
    #: (after running out of GPU memory, or asked for)
    blocks_recomputed: bool = False
    #: an interpolation run: the chunk of frames a record holds, or how many chunks were merged
    chunk: int | None = None
    chunks: int | None = None
    #: image pixels per latent pixel of the model (8; Flux.2: 16), for the size of heatmaps without an image
    pixels_per_latent: int = 8

    def to_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}
