"""What every loss node shares: its schedule widgets, the schedule it hands its term, the check of its
thresholds text when a prompt is queued, and the STORM_GUIDANCE chain it returns.

A loss node (a :class:`LossNode` in a ``nodes_<area>.py``) declares its method's own inputs next to these, builds
its term with ``**schedule(...)`` and returns :meth:`LossNode.guide`. See "Adding a loss" in ARCHITECTURE.md.
"""

from __future__ import annotations

from ..storm_ops.guidance.terms import DEFAULT_WEIGHT, Guidance, StepSize, StepWindow, parse_thresholds
from ..storm_ops.tokens.layout import END_TOKEN_CONVENTIONS
from .validation import validate_text_inputs
from .widgets import float_input, int_input

GUIDANCE_INPUT = ("STORM_GUIDANCE", {
    "tooltip": "Optional: guidance from another STORM loss node to combine with this one in one sampling run."})
WEIGHT_INPUT = float_input(DEFAULT_WEIGHT, 0.0, 100.0, 0.05,
                           "Relative weight of this loss when combined with others (multiplies the step size).")


def step_decay_input(default: float) -> tuple:
    """The step_decay widget, its default the loss' own ``StepSize.end_factor``."""
    return float_input(default, 0.01, 1.0, 0.01, "The step size decays as step_size * sqrt(linspace(1, step_decay)) "
                                                  "over the schedule (A&E: 0.5). 1 = constant.")


def window_inputs(window: StepWindow, what: str) -> dict:
    """The start_at / end_at widgets, defaults from the loss' ``window``; ``what`` says what its paper used."""
    return {
        "start_at": float_input(window.start, 0.0, 1.0, 0.01,
                                f"First guided step as a fraction of the schedule (0 = first step). {what}"),
        "end_at": float_input(window.end, 0.0, 1.0, 0.01, f"Guidance stops before this fraction of the schedule. {what}"),
    }


def step_size_input(step_size: StepSize, tooltip: str) -> tuple:
    """The step_size widget, its default the loss' ``step_size.scale``."""
    return float_input(step_size.scale, 0.0, 500.0, 0.5, tooltip)


def max_refine_iters_input(default: int, tooltip: str) -> tuple:
    """The max_refine_iters widget of a loss with refinement thresholds."""
    return int_input(default, 0, 200, tooltip)


def end_tokens_input(tooltip: str) -> tuple:
    """The end_tokens combo of the losses that take A&E's softmax over tokens; 'auto' picks per model."""
    return (["auto", *END_TOKEN_CONVENTIONS], {"default": "auto", "tooltip": tooltip})


def schedule(step_size: float, start_at: float, end_at: float, weight: float, step_decay: float,
             thresholds: str | None = None, max_refine_iters: int | None = None) -> dict:
    """The schedule keywords of a :class:`~storm_ops.guidance.terms.GuidanceTerm` (``**schedule``) from a loss
    node's widgets; refinement keywords only where the node has them (the term's defaults otherwise)."""
    out = {"window": StepWindow(float(start_at), float(end_at)),
           "step_size": StepSize(float(step_size), float(step_decay)), "weight": float(weight)}
    if thresholds is not None:
        out["thresholds"] = parse_thresholds(thresholds)
    if max_refine_iters is not None:
        out["max_refine_iters"] = int(max_refine_iters)
    return out


class LossNode:
    """A loss node: it returns a STORM_GUIDANCE chain with its term appended."""

    NODE_NAME = "STORM loss"
    CATEGORY = "STORM/guidance"
    FUNCTION = "build"
    RETURN_TYPES = ("STORM_GUIDANCE",)
    RETURN_NAMES = ("guidance",)
    OUTPUT_TOOLTIPS = ("Guidance for a STORM Guided Sampler / Guided KSampler (can be chained into other loss nodes).",)

    @classmethod
    def VALIDATE_INPUTS(cls, thresholds=None):
        """Syntax of the thresholds text when the prompt is queued (see nodes.validation); a node without a
        thresholds input is never passed one."""
        return validate_text_inputs(cls.NODE_NAME, thresholds=(thresholds, parse_thresholds))

    def guide(self, guidance: Guidance | None, term, layout) -> tuple[Guidance]:
        """The node's output: ``guidance`` (or a new chain) with ``term`` appended, named after this node."""
        return ((guidance or Guidance()).with_term(term, layout, source=self.NODE_NAME),)
