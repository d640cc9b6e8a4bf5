"""Loss nodes: each adds one guidance term to a STORM_GUIDANCE chain."""

from __future__ import annotations

from ..storm_ops.guidance import Guidance, StepSize, StepWindow, parse_thresholds
from ..storm_ops.losses.attend_excite import AttendExciteConfig, AttendExciteTerm
from .errors import node_errors
from .validation import in_declared_range, validate_text_inputs

GUIDANCE_INPUT = ("STORM_GUIDANCE", {
    "tooltip": "Optional: guidance from another STORM loss node to combine with this one in one sampling run."})


WEIGHT_INPUT = ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.05,
                         "tooltip": "Relative weight of this loss when combined with others (multiplies the step size)."})
STEP_DECAY_INPUT = ("FLOAT", {"default": 0.5, "min": 0.01, "max": 1.0, "step": 0.01,
                              "tooltip": "The step size decays as step_size * sqrt(linspace(1, step_decay)) over the "
                                         "schedule (A&E: 0.5). 1 = constant."})


def window_inputs(start: float, end: float, what: str) -> dict:
    """The start_at / end_at widgets shared by every loss node."""
    return {
        "start_at": ("FLOAT", {"default": start, "min": 0.0, "max": 1.0, "step": 0.01,
                               "tooltip": f"First guided step as a fraction of the schedule (0 = first step). {what}"}),
        "end_at": ("FLOAT", {"default": end, "min": 0.0, "max": 1.0, "step": 0.01,
                             "tooltip": f"Guidance stops before this fraction of the schedule. {what}"}),
    }


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
    DESCRIPTION = (
        "Attend-and-Excite (Chefer et al. 2023): on early steps, moves the latent so that every subject "
        "token is strongly attended somewhere in the image (loss = 1 - smoothed maximum attention of the "
        "most neglected subject), with iterative refinement until thresholds are met. Fixes missing "
        "objects ('a cat and a dog' giving only a cat). Defaults are the paper's.")

    @classmethod
    def INPUT_TYPES(cls):
        required = {
            "tokens": ("STORM_TOKENS", {"tooltip": "Subjects to excite, from STORM Subject Tokens."}),
            "step_size": ("FLOAT", {"default": 20.0, "min": 0.0, "max": 500.0, "step": 0.5,
                                    "tooltip": "Step size of the latent update (paper: 20, in the diffusers latent scale; "
                                               "converted to ComfyUI's sigma scale internally). 0 disables the loss."}),
            **window_inputs(0.0, 0.5, "Paper: the first 25 of 50 steps (0 to 0.5)."),
            "thresholds": ("STRING", {"default": "0:0.05, 0.2:0.5, 0.4:0.8",
                                      "tooltip": "Iterative refinement: 'position:threshold' pairs. At that position "
                                                 "(fraction of the steps) the latent is refined until every subject's "
                                                 "smoothed maximum attention reaches the threshold or the iteration cap "
                                                 "is hit. Paper: steps 0, 10, 20 of 50 -> 0.05, 0.5, 0.8. Empty = off."}),
            "max_refine_iters": ("INT", {"default": 20, "min": 0, "max": 200,
                                         "tooltip": "Cap of refinement iterations per threshold step (paper: 20). 0 = no refinement."}),
            "smoothing": ("BOOLEAN", {"default": True,
                                      "tooltip": "Gaussian-smooth the maps before taking the maximum (paper: on, 3x3, sigma 0.5 "
                                                 "in A&E's kernel convention) so a single hot pixel cannot satisfy the loss."}),
            "end_tokens": (["auto", "sd1", "words"], {
                "default": "auto",
                "tooltip": "Which tokens share the softmax over tokens. sd1: all but the start token and the last "
                           "column (A&E for SD1.x); words: only the prompt's words (A&E's sd_2_1 mode, needed when "
                           "padding is not the end token). auto: sd1 for SD1.x, words for SD2.x and SDXL."}),
        }
        optional = {
            "guidance": GUIDANCE_INPUT,
            "weight": WEIGHT_INPUT,
            "step_decay": STEP_DECAY_INPUT,
            "kernel_size": ("INT", {"default": 3, "min": 1, "max": 15, "step": 2,
                                    "tooltip": "Smoothing kernel size (odd; paper: 3)."}),
            "sigma": ("FLOAT", {"default": 0.5, "min": 0.05, "max": 10.0, "step": 0.05,
                                "tooltip": "Smoothing sigma in A&E's convention exp(-(x/(2 sigma))^2) (paper: 0.5)."}),
        }
        return {"required": required, "optional": optional}

    @classmethod
    def VALIDATE_INPUTS(cls, thresholds=None):
        """Syntax of the thresholds text when the prompt is queued (see nodes.validation)."""
        return validate_text_inputs(cls.NODE_NAME, thresholds=(thresholds, parse_thresholds))

    @node_errors(NODE_NAME)
    @in_declared_range
    def build(self, tokens, step_size, start_at, end_at, thresholds, max_refine_iters, smoothing, end_tokens,
              guidance=None, weight=1.0, step_decay=0.5, kernel_size=3, sigma=0.5):
        config = AttendExciteConfig(smooth=bool(smoothing), kernel_size=int(kernel_size), sigma=float(sigma),
                                    end_token_convention=end_tokens)
        term = AttendExciteTerm(
            tokens.layout, tokens.subjects, config,
            window=StepWindow(float(start_at), float(end_at)),
            step_size=StepSize(float(step_size), float(step_decay)),
            weight=float(weight), thresholds=parse_thresholds(thresholds),
            max_refine_iters=int(max_refine_iters))
        return (chain(guidance, term, tokens.layout, self.NODE_NAME),)
