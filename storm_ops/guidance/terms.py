"""Composable guidance: loss terms with their own step windows, step sizes and thresholds.

A :class:`Guidance` is an immutable tuple of :class:`GuidanceTerm` objects (what the loss nodes
produce and chain). At denoising step ``i`` of ``n`` the sampler asks which terms are active,
records the attention maps they need, and minimises

    objective = sum_k  weight_k * alpha_k(i) * L_k

so one backward pass serves every term and each term keeps its paper's step size
(``z <- z - alpha_k * grad L_k`` summed over terms). Per-run scratch state (A-STAR's masks of the
previous step, say) lives in a dict the sampler creates per run, never in the terms.

Step positions are fractions of the schedule so paper defaults carry over to any step count:
step ``i`` of ``n`` sits at fraction ``i / n``. A window ``[start, end)`` guides the steps with
``start <= i / n < end``, and a threshold at position ``p`` applies at the first step with
``i / n >= p`` (where a window starting at ``p`` would start). A&E's "update at steps 0..24 of 50"
(Chefer et al. 2023) is the window ``[0, 0.5)``; its refinement thresholds at steps 0, 10 and 20
are at fractions 0, 0.2 and 0.4.
"""

from __future__ import annotations

import copy
import math
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from ..errors import StormError
from ..tokens.layout import TokenLayout

#: Tolerance of ``fraction * n`` against the step index: ``0.07 * 100`` is ``7.000000000000001`` in
#: binary floating point but means step 7. Far below ``1 / n`` for any schedule a sampler takes.
_STEP_TOLERANCE = 1e-9

#: Weight of a term in a chain of losses (its step size is multiplied by it); 1 = the term's own step.
DEFAULT_WEIGHT = 1.0
#: The loss papers' sampling settings: 50 denoising steps at classifier-free guidance 7.5 (their
#: windows and thresholds are fractions of the schedule, so they carry over to any step count).
DEFAULT_STEPS = 50
DEFAULT_CFG = 7.5


def first_step_at(fraction: float, num_steps: int) -> int:
    """The first step ``i`` of an ``num_steps``-step schedule with ``i / num_steps >= fraction``
    (``num_steps`` when there is none)."""
    return max(0, math.ceil(fraction * num_steps - _STEP_TOLERANCE))


@dataclass(frozen=True)
class StepWindow:
    """The steps ``i`` of an ``n``-step schedule with ``start <= i / n < end``."""

    start: float = 0.0
    end: float = 0.5

    def __post_init__(self) -> None:
        if not (0.0 <= self.start <= 1.0 and 0.0 <= self.end <= 1.0):
            raise StormError(f"step window fractions must lie in [0, 1], got {self.start}..{self.end}",
                             input_name="start_at")
        if self.end < self.start:
            raise StormError(f"the guidance window ends ({self.end}) before it starts ({self.start})",
                             input_name="end_at")

    def steps(self, num_steps: int) -> range:
        return range(first_step_at(self.start, num_steps), first_step_at(self.end, num_steps))


@dataclass(frozen=True)
class StepSize:
    """A&E's step-size schedule ``alpha_i = scale * sqrt(linspace(1, end_factor, n)[i])``.

    ``end_factor = 1`` gives a constant step (SynGen); A&E uses ``scale=20, end_factor=0.5``
    (20.0 at i=0 down to 17.38 at i=24 of 50). Step sizes are in the diffusers latent space
    ``z``; the sampler converts them to ComfyUI's ``x`` space.
    """

    scale: float = 20.0
    end_factor: float = 0.5

    def __post_init__(self) -> None:
        if not math.isfinite(self.scale) or self.scale < 0:
            raise StormError(f"step size must be a finite number >= 0, got {self.scale}", input_name="step_size")
        if not 0.0 < self.end_factor <= 1.0:
            raise StormError(f"step size end factor must lie in (0, 1], got {self.end_factor}",
                             input_name="step_decay")

    def at(self, step: int, num_steps: int) -> float:
        if num_steps <= 1:
            return self.scale
        frac = 1.0 + (self.end_factor - 1.0) * step / (num_steps - 1)
        return self.scale * math.sqrt(frac)


def parse_thresholds(text: str) -> tuple[tuple[float, float], ...]:
    """Parse ``"0:0.05, 0.2:0.5, 0.4:0.8"`` (schedule fraction : threshold) pairs.

    An empty string means no refinement. Raises :class:`StormError` (input ``thresholds``)
    with the offending item.
    """
    pairs = []
    for item in re.split(r"[,;\n]", text or ""):
        item = item.strip()
        if not item:
            continue
        parts = item.split(":")
        try:
            if len(parts) != 2:
                raise ValueError
            pos, value = float(parts[0]), float(parts[1])
        except ValueError:
            raise StormError(
                f"cannot read refinement threshold {item!r}: write 'position:threshold' pairs where "
                "position is a fraction of the steps (0 = first step), e.g. '0:0.05, 0.2:0.5, 0.4:0.8'",
                input_name="thresholds",
            ) from None
        if not 0.0 <= pos <= 1.0:
            raise StormError(f"threshold position {pos} in {item!r} must lie in [0, 1]", input_name="thresholds")
        if not 0.0 <= value <= 1.0:
            raise StormError(f"threshold {value} in {item!r} must lie in [0, 1]", input_name="thresholds")
        pairs.append((pos, value))
    return tuple(sorted(pairs))


def format_thresholds(pairs: tuple[tuple[float, float], ...]) -> str:
    """The text :func:`parse_thresholds` reads back as ``pairs``: ``((0, 0.05), (0.2, 0.5))`` ->
    ``"0:0.05, 0.2:0.5"``; no pairs -> ``""``."""

    def number(x: float) -> str:
        text = repr(float(x))  # the shortest text that reads back as x
        return text[:-2] if text.endswith(".0") else text

    return ", ".join(f"{number(pos)}:{number(value)}" for pos, value in pairs)


@dataclass
class GuidanceContext:
    """What a term sees at one evaluation.

    Attributes
    ----------
    maps : Tensor, shape (B, T, h, w)
        Aggregated cross-attention probabilities of the conditional pass (differentiable).
    step, num_steps : int
        Denoising step index and schedule length.
    state : dict
        Per-run scratch space of this term (empty at the first step of every run).
    """

    maps: torch.Tensor
    step: int
    num_steps: int
    state: dict = field(default_factory=dict)


@dataclass
class TermResult:
    """A term's loss per sample (differentiable) and detached metrics for the log."""

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


class GuidanceTerm(ABC):
    """One loss of a guidance run. Subclasses are immutable configuration objects.

    A subclass takes its method's own inputs and ``**schedule``: the keywords of this constructor (window,
    step_size, weight, thresholds, max_refine_iters), each defaulting to the subclass' ``default_*`` class
    attribute (its paper's values).
    """

    #: short name used in logs ("attend_excite", "syngen", ...)
    name: str = "term"
    #: per-sample L2 bound of this term's gradient in the diffusers latent z (STORM: 1.0), or None
    grad_clip_norm: float | None = None
    #: the node that built this term, for messages (set by :meth:`Guidance.with_term`)
    source: str | None = None
    #: the method's schedule defaults (a subclass sets its paper's)
    default_window: ClassVar[StepWindow] = StepWindow()
    default_step_size: ClassVar[StepSize] = StepSize()
    default_thresholds: ClassVar[tuple[tuple[float, float], ...]] = ()
    default_max_refine_iters: ClassVar[int] = 20
    #: whether the method refines to thresholds at all (SynGen does not)
    refines: ClassVar[bool] = True

    def __init__(self, *, window: StepWindow | None = None, step_size: StepSize | None = None,
                 weight: float = DEFAULT_WEIGHT, thresholds: tuple[tuple[float, float], ...] | None = None,
                 max_refine_iters: int | None = None):
        if not self.refines and (thresholds or max_refine_iters):
            raise StormError(f"{self.name} has no refinement: it takes no thresholds or refinement iterations",
                             input_name="thresholds" if thresholds else "max_refine_iters")
        thresholds = self.default_thresholds if thresholds is None else thresholds
        max_refine_iters = (self.default_max_refine_iters if self.refines else 0) if max_refine_iters is None \
            else max_refine_iters
        if not math.isfinite(weight):
            raise StormError(f"weight must be finite, got {weight}", input_name="weight")
        if max_refine_iters < 0:
            raise StormError(f"max refinement iterations must be >= 0, got {max_refine_iters}",
                             input_name="max_refine_iters")
        self.window = self.default_window if window is None else window
        self.step_size = self.default_step_size if step_size is None else step_size
        self.weight = float(weight)
        self.thresholds = tuple(thresholds)
        self.max_refine_iters = int(max_refine_iters)

    # -- schedule ------------------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        """Whether the term ever moves the latent (a zero step size or weight switches it off)."""
        return self.weight != 0 and self.step_size.scale > 0

    def active(self, step: int, num_steps: int) -> bool:
        return step in self.window.steps(num_steps) and self.enabled

    def coefficient(self, step: int, num_steps: int) -> float:
        """``weight * alpha(step)`` — the factor of this term in the objective."""
        return self.weight * self.step_size.at(step, num_steps)

    def threshold_at(self, step: int, num_steps: int) -> float | None:
        """The refinement threshold at this step, if any (the last pair mapping to it wins)."""
        found = None
        for pos, value in self.thresholds:
            if first_step_at(pos, num_steps) == step:
                found = value
        return found

    def check_window(self, num_steps: int) -> None:
        """Raise when the step window contains no step of an ``num_steps``-step schedule.

        Raises
        ------
        StormError
            ``input_name`` ``"end_at"`` (empty window) or ``"start_at"``, naming the node (or the
            term), the window, the step fractions of the schedule and what to change.
        """
        if not self.enabled or len(self.window.steps(num_steps)):
            return
        start, end = self.window.start, self.window.end
        who = self.source or self.name
        if end <= start:
            raise StormError(f"{who}: the guidance window start_at {start:g} to end_at {end:g} is empty, so the "
                             "loss would never be applied; set end_at above start_at.", input_name="end_at")
        fractions = [i / num_steps for i in range(min(num_steps, 12))]
        listing = ", ".join(f"{f:.3g}" for f in fractions) + (", ..." if num_steps > len(fractions) else "")
        nearest = first_step_at(start, num_steps)
        above = lambda step: f"{math.ceil(step / num_steps * 1e4 - _STEP_TOLERANCE) / 1e4:g}"  # noqa: E731
        at_most = lambda step: f"{math.floor(step / num_steps * 1e4 + _STEP_TOLERANCE) / 1e4:g}"  # noqa: E731
        if nearest < num_steps:
            fix = f"set end_at above {above(nearest)} or start_at to at most {at_most(nearest - 1)}"
        else:
            fix = f"set start_at to at most {at_most(num_steps - 1)}"
        more = next((m for m in range(num_steps + 1, 10001) if len(self.window.steps(m))), None)
        raise StormError(
            f"{who}: the guidance window start_at {start:g} to end_at {end:g} contains no step of a schedule of "
            f"{num_steps} steps (step i runs at fraction i/{num_steps}: {listing}), so the loss would never be "
            f"applied. {fix[0].upper() + fix[1:]}"
            + (f", or sample with more steps (with {more} it guides step "
               f"{self.window.steps(more)[0]})." if more else "."),
            input_name="start_at")

    # -- math ----------------------------------------------------------------------------
    @abstractmethod
    def token_columns(self) -> tuple[int, ...]:
        """Columns whose maps the loss reads (for validation against the prompt length)."""

    @abstractmethod
    def compute(self, ctx: GuidanceContext) -> TermResult:
        """Loss per sample, shape ``(B,)``, differentiable w.r.t. ``ctx.maps``."""

    def satisfied(self, result: TermResult, threshold: float) -> torch.Tensor:
        """Per-sample ``(B,)`` bool: whether refinement to ``threshold`` is done.

        The default compares the loss with ``1 - threshold`` (A&E semantics).
        """
        return result.loss.detach() <= 1.0 - threshold

    def check_layout(self, layout_length: int) -> None:
        cols = self.token_columns()
        if cols and max(cols) >= layout_length:
            raise StormError(
                f"{self.name}: token column {max(cols)} does not exist in a conditioning of "
                f"{layout_length} columns; the subject tokens were made for another prompt",
                input_name="positive",
            )

    def describe(self) -> str:
        return (f"{self.name}: weight {self.weight:g}, step size {self.step_size.scale:g} "
                f"(decay to x{math.sqrt(self.step_size.end_factor):.3f}), steps "
                f"{self.window.start:g}-{self.window.end:g} of the schedule"
                + (f", thresholds {', '.join(f'{p:g}:{v:g}' for p, v in self.thresholds)}" if self.thresholds else ""))


@dataclass
class Combined:
    """The combined objective of the active terms at one evaluation."""

    objective: torch.Tensor                  # (B,) differentiable
    term_losses: dict[str, torch.Tensor]     # name -> (B,) detached
    satisfied: torch.Tensor                  # (B,) bool, True when no term asks for refinement
    metrics: dict[str, torch.Tensor]         # "name.metric" -> detached tensors
    max_refine_iters: int                    # cap for refinement at this step (0 = none)
    #: per-sample bound of the objective's gradient norm in z (None: unbounded). A clipped term
    #: takes ``z <- z - alpha * clip_c(grad L)``, i.e. the objective's gradient (which already
    #: carries ``alpha``) is bounded by ``alpha * c``; with several clipped terms the smallest wins.
    grad_norm_bound: float | None = None


@dataclass(frozen=True)
class Guidance:
    """An immutable collection of guidance terms (the ``STORM_GUIDANCE`` socket value)."""

    terms: tuple[GuidanceTerm, ...] = ()
    layout: TokenLayout | None = None

    def with_term(self, term: GuidanceTerm, layout: TokenLayout | None = None, source: str | None = None
                  ) -> Guidance:
        """A new Guidance with ``term`` appended (inputs are never mutated).

        ``source`` names the node that built the term in messages (a copy of the term carries it).
        """
        if layout is not None and self.layout is not None and layout.length != self.layout.length:
            raise StormError(
                f"{term.name}: its tokens come from a prompt with {layout.length} columns but the "
                f"guidance it is chained to was built for {self.layout.length} columns; build every "
                "loss from the same prompt",
                input_name="guidance",
            )
        if source is not None and term.source != source:
            term = copy.copy(term)
            term.source = source
        return Guidance(self.terms + (term,), layout if layout is not None else self.layout)

    def active_terms(self, step: int, num_steps: int) -> tuple[GuidanceTerm, ...]:
        return tuple(t for t in self.terms if t.active(step, num_steps))

    def check_windows(self, num_steps: int) -> None:
        """Raise :class:`StormError` when an enabled term's window contains no step of an
        ``num_steps``-step schedule (see :meth:`GuidanceTerm.check_window`); call it before sampling."""
        for term in self.terms:
            term.check_window(num_steps)

    def unique_names(self) -> list[str]:
        names, seen = [], {}
        for t in self.terms:
            seen[t.name] = seen.get(t.name, 0) + 1
            names.append(t.name if seen[t.name] == 1 else f"{t.name}#{seen[t.name]}")
        return names

    def combine(self, maps: torch.Tensor, step: int, num_steps: int, states: dict) -> Combined:
        """Evaluate the active terms on ``maps`` (B, T, h, w) and combine them.

        ``states`` maps a term's unique name to its per-run scratch dict (created on demand).
        """
        batch = maps.shape[0]
        objective = maps.new_zeros(batch)
        satisfied = torch.ones(batch, dtype=torch.bool, device=maps.device)
        term_losses: dict[str, torch.Tensor] = {}
        metrics: dict[str, torch.Tensor] = {}
        cap = 0
        bound: float | None = None
        for name, term in zip(self.unique_names(), self.terms, strict=True):
            if not term.active(step, num_steps):
                continue
            ctx = GuidanceContext(maps, step, num_steps, states.setdefault(name, {}))
            result = term.compute(ctx)
            objective = objective + term.coefficient(step, num_steps) * result.loss
            term_losses[name] = result.loss.detach()
            for key, value in result.metrics.items():
                metrics[f"{name}.{key}"] = value.detach()
            threshold = term.threshold_at(step, num_steps)
            if threshold is not None and term.max_refine_iters > 0:
                satisfied = satisfied & term.satisfied(result, threshold)
                cap = max(cap, term.max_refine_iters)
            if term.grad_clip_norm is not None:
                term_bound = abs(term.coefficient(step, num_steps)) * term.grad_clip_norm
                bound = term_bound if bound is None else min(bound, term_bound)
        return Combined(objective, term_losses, satisfied, metrics, cap, bound)
