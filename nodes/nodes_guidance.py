"""The presence loss node: STORM Attend-and-Excite (missing objects)."""

from __future__ import annotations

from ..storm_ops.attention.maps import MapSettings
from ..storm_ops.guidance.terms import DEFAULT_WEIGHT
from ..storm_ops.losses import attend_excite
from ..storm_ops.losses.attend_excite import AttendExciteTerm
from .errors import node_errors
from .loss_node import (
    GUIDANCE_INPUT,
    WEIGHT_INPUT,
    LossNode,
    end_tokens_input,
    max_refine_iters_input,
    schedule,
    step_decay_input,
    step_size_input,
    window_inputs,
)
from .validation import in_declared_range
from .widgets import bool_input, float_input, int_input, thresholds_input


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
            "smoothing": bool_input(MapSettings.smooth,
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
            "step_decay": step_decay_input(attend_excite.DEFAULT_STEP_SIZE.end_factor),
            "kernel_size": int_input(MapSettings.kernel_size, 1, 15, "Smoothing kernel size (odd; paper: 3).",
                                     step=2),
            "sigma": float_input(MapSettings.sigma, 0.05, 10.0, 0.05,
                                 "Smoothing sigma in A&E's convention exp(-(x/(2 sigma))^2) (paper: 0.5)."),
        }
        return {"required": required, "optional": optional}

    @node_errors(NODE_NAME)
    @in_declared_range
    def build(self, tokens, step_size, start_at, end_at, thresholds, max_refine_iters, smoothing, end_tokens,
              guidance=None, weight=DEFAULT_WEIGHT, step_decay=attend_excite.DEFAULT_STEP_SIZE.end_factor,
              kernel_size=MapSettings.kernel_size, sigma=MapSettings.sigma):
        config = MapSettings(smooth=bool(smoothing), kernel_size=int(kernel_size), sigma=float(sigma),
                             end_token_convention=end_tokens)
        term = AttendExciteTerm(tokens.layout, tokens.subjects, config, **schedule(
            step_size, start_at, end_at, weight, step_decay, thresholds, max_refine_iters))
        return self.guide(guidance, term, tokens.layout)
