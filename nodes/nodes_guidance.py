"""Loss nodes: each adds one guidance term to a STORM_GUIDANCE chain."""

from __future__ import annotations

from ..storm_ops.guidance.terms import DEFAULT_WEIGHT, Guidance, StepSize, StepWindow, parse_thresholds
from ..storm_ops.losses import attend_excite
from ..storm_ops.losses.attend_excite import AttendExciteConfig, AttendExciteTerm
from ..storm_ops.tokens.layout import END_TOKEN_CONVENTIONS
from .errors import node_errors
from .validation import in_declared_range, validate_text_inputs
from .widgets import bool_input, float_input, int_input, thresholds_input

GUIDANCE_INPUT = ("STORM_GUIDANCE", {
    "tooltip": "Optional: guidance from another STORM loss node to combine with this one in one sampling run."})


WEIGHT_INPUT = float_input(DEFAULT_WEIGHT, 0.0, 100.0, 0.05,
                           "Relative weight of this loss when combined with others (multiplies the step size).")
#: The step decay widget with A&E's decay; another loss gives it its own (``with_default``).
STEP_DECAY_INPUT = float_input(attend_excite.DEFAULT_STEP_SIZE.end_factor, 0.01, 1.0, 0.01,
                               "The step size decays as step_size * sqrt(linspace(1, step_decay)) over the "
                               "schedule (A&E: 0.5). 1 = constant.")


def window_inputs(window: StepWindow, what: str) -> dict:
    """The start_at / end_at widgets shared by every loss node, defaults from the loss' ``window``."""
    return {
        "start_at": float_input(window.start, 0.0, 1.0, 0.01,
                                f"First guided step as a fraction of the schedule (0 = first step). {what}"),
        "end_at": float_input(window.end, 0.0, 1.0, 0.01, f"Guidance stops before this fraction of the schedule. {what}"),
    }


def step_size_input(step_size: StepSize, tooltip: str) -> tuple:
    """The step_size widget of a loss node, its default the loss' ``step_size.scale``."""
    return float_input(step_size.scale, 0.0, 500.0, 0.5, tooltip)


def max_refine_iters_input(default: int, tooltip: str) -> tuple:
    """The max_refine_iters widget of a loss node with refinement thresholds."""
    return int_input(default, 0, 200, tooltip)


def end_tokens_input(tooltip: str) -> tuple:
    """The end_tokens combo of the losses that take A&E's softmax over tokens; 'auto' picks per model."""
    return (["auto", *END_TOKEN_CONVENTIONS], {"default": "auto", "tooltip": tooltip})


def chain(guidance: Guidance | None, term, layout, node: str) -> Guidance:
    """``guidance`` (or a new chain) with ``term`` appended; ``node`` names it in messages."""
    return (guidance or Guidance()).with_term(term, layout, source=node)


class LossNode:
    """What every loss node shares: it returns a STORM_GUIDANCE chain with its term appended."""

    CATEGORY = "STORM/guidance"
    FUNCTION = "build"
    RETURN_TYPES = ("STORM_GUIDANCE",)
    RETURN_NAMES = ("guidance",)
    OUTPUT_TOOLTIPS = ("Guidance for a STORM Guided Sampler / Guided KSampler (can be chained into other loss nodes).",)


class AttendAndExcite(LossNode):
    """STORM Attend-and-Excite: the max-attention loss of Chefer et al. (SIGGRAPH 2023)."""

    NODE_NAME = "STORM Attend-and-Excite"
    SEARCH_ALIASES = ("attend and excite", "missing objects", "object neglect", "attend-and-excite")  # node search
    DESCRIPTION = (
        "Attend-and-Excite (Chefer et al. 2023): on early steps, moves the latent so that every subject "
        "token is strongly attended somewhere in the image (loss = 1 - smoothed maximum attention of the "
        "most neglected subject), with iterative refinement until thresholds are met. Fixes missing "
        "objects ('a cat and a dog' giving only a cat). Defaults are the paper's.")

    @classmethod
    def INPUT_TYPES(cls):
        required = {
            "tokens": ("STORM_TOKENS", {"tooltip": "Subjects to excite, from STORM Subject Tokens."}),
            "step_size": step_size_input(attend_excite.DEFAULT_STEP_SIZE,
                                         "Step size of the latent update (paper: 20, in the diffusers latent scale; "
                                         "converted to ComfyUI's sigma scale internally). 0 disables the loss."),
            **window_inputs(attend_excite.DEFAULT_WINDOW, "Paper: the first 25 of 50 steps (0 to 0.5)."),
            "thresholds": thresholds_input(attend_excite.DEFAULT_THRESHOLDS,
                                           "Iterative refinement: 'position:threshold' pairs. At that position "
                                           "(fraction of the steps) the latent is refined until every subject's "
                                           "smoothed maximum attention reaches the threshold or the iteration cap "
                                           "is hit. Paper: steps 0, 10, 20 of 50 -> 0.05, 0.5, 0.8. Empty = off."),
            "max_refine_iters": max_refine_iters_input(
                attend_excite.DEFAULT_MAX_REFINE_ITERS,
                "Cap of refinement iterations per threshold step (paper: 20). 0 = no refinement."),
            "smoothing": bool_input(AttendExciteConfig.smooth,
                                    "Gaussian-smooth the maps before taking the maximum (paper: on, 3x3, sigma 0.5 "
                                    "in A&E's kernel convention) so a single hot pixel cannot satisfy the loss."),
            "end_tokens": end_tokens_input(
                "Which tokens share the softmax over tokens. sd1: all but the start token and the last "
                "column (A&E for SD1.x); words: only the prompt's words (A&E's sd_2_1 mode, needed when "
                "padding is not the end token). auto: sd1 for SD1.x, words for SD2.x and SDXL."),
        }
        optional = {
            "guidance": GUIDANCE_INPUT,
            "weight": WEIGHT_INPUT,
            "step_decay": STEP_DECAY_INPUT,
            "kernel_size": int_input(AttendExciteConfig.kernel_size, 1, 15, "Smoothing kernel size (odd; paper: 3).",
                                     step=2),
            "sigma": float_input(AttendExciteConfig.sigma, 0.05, 10.0, 0.05,
                                 "Smoothing sigma in A&E's convention exp(-(x/(2 sigma))^2) (paper: 0.5)."),
        }
        return {"required": required, "optional": optional}

    @classmethod
    def VALIDATE_INPUTS(cls, thresholds=None):
        """Syntax of the thresholds text when the prompt is queued (see nodes.validation)."""
        return validate_text_inputs(cls.NODE_NAME, thresholds=(thresholds, parse_thresholds))

    @node_errors(NODE_NAME)
    @in_declared_range
    def build(self, tokens, step_size, start_at, end_at, thresholds, max_refine_iters, smoothing, end_tokens,
              guidance=None, weight=DEFAULT_WEIGHT, step_decay=attend_excite.DEFAULT_STEP_SIZE.end_factor,
              kernel_size=AttendExciteConfig.kernel_size, sigma=AttendExciteConfig.sigma):
        config = AttendExciteConfig(smooth=bool(smoothing), kernel_size=int(kernel_size), sigma=float(sigma),
                                    end_token_convention=end_tokens)
        term = AttendExciteTerm(
            tokens.layout, tokens.subjects, config,
            window=StepWindow(float(start_at), float(end_at)),
            step_size=StepSize(float(step_size), float(step_decay)),
            weight=float(weight), thresholds=parse_thresholds(thresholds),
            max_refine_iters=int(max_refine_iters))
        return (chain(guidance, term, tokens.layout, self.NODE_NAME),)
