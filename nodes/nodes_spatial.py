"""STORM Spatial Transport: optimal-transport guidance for "a cat to the left of a dog"."""

from __future__ import annotations

from ..storm_ops.attention.maps import MapSettings
from ..storm_ops.guidance.terms import DEFAULT_WEIGHT
from ..storm_ops.losses import transport_core
from ..storm_ops.losses.transport import TRANSPORT_MODES, transport_term_for
from ..storm_ops.losses.transport_core import TransportConfig
from ..storm_ops.tokens.layout import AUTO
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
from .widgets import thresholds_input


class SpatialTransport(LossNode):
    """STORM (Han et al., CVPR 2025): spatial transport optimisation of the attention maps."""

    NODE_NAME = "STORM Spatial Transport"
    SEARCH_ALIASES = ("placement", "layout", "left of", "object position", "optimal transport", "spatial relation")  # node search
    DESCRIPTION = (
        "STORM (Han et al., CVPR 2025): in the early denoising steps, moves each object's cross-attention "
        "map to where the prompt says it belongs ('a cat to the left of a dog') with optimal transport: a "
        "spatial cost between every pixel and a target region on the correct side of the partner object, "
        "plus a non-overlap penalty, weighted up over the first steps. Relations come from STORM Prompt "
        "Analysis (left of, right of, above, below, on top of, under, next to, near). Optional MASK targets "
        "let you paint where each object goes. 'reference' mode reproduces the released code's loss, "
        "quirks included, for comparison.")
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "analysis": ("STORM_ANALYSIS", {"tooltip": "From STORM Prompt Analysis (its relations are guided)."}),
            "mode": (list(TRANSPORT_MODES), {"default": "paper",
                                   "tooltip": "paper: the method as described (target-dependent spatial cost); "
                                              "reference: the released code's loss with its quirks (right treated as "
                                              "left, below as above, target-independent cost); see the README."}),
            "step_size": step_size_input(transport_core.DEFAULT_STEP_SIZE,
                                         "Step size (released: 20 with A&E's decay; the gradient is clipped to "
                                         "norm 1 first). 0 disables the loss."),
            **window_inputs(transport_core.DEFAULT_WINDOW, "Released: steps 1 to 24 of 50 (0.02 to 0.5)."),
            "thresholds": thresholds_input(transport_core.DEFAULT_THRESHOLDS,
                                           "Refinement: 'position:threshold' pairs. Paper mode refines until the "
                                           "relation score (share of each object's attention on its requested "
                                           "side) reaches the threshold. Released: steps 0, 5, 10, 15, 20 of 50 -> "
                                           "0.9 ... 0.999. Empty = no refinement."),
            "max_refine_iters": max_refine_iters_input(
                transport_core.DEFAULT_MAX_REFINE_ITERS, "Cap of refinement iterations per threshold step (released: 30)."),
        }, "optional": {
            "guidance": GUIDANCE_INPUT,
            "weight": WEIGHT_INPUT,
            "step_decay": step_decay_input(transport_core.DEFAULT_STEP_SIZE.end_factor),
            "masks": ("MASK", {"tooltip": "Optional target regions (paper mode): a MASK batch, one per object named in "
                                          "mask_subjects, painted where that object should be."}),
            "mask_subjects": ("STRING", {"default": "",
                                         "tooltip": "Which object each mask belongs to ('cat, dog'); empty = the objects "
                                                    "of the relations in order."}),
            "end_tokens": end_tokens_input("Token softmax convention (as in Attend-and-Excite)."),
        }}

    @node_errors(NODE_NAME)
    @in_declared_range
    def build(self, analysis, mode, step_size, start_at, end_at, thresholds, max_refine_iters, guidance=None,
              weight=DEFAULT_WEIGHT, step_decay=transport_core.DEFAULT_STEP_SIZE.end_factor, masks=None,
              mask_subjects="", end_tokens=AUTO):
        term = transport_term_for(mode, analysis, TransportConfig(MapSettings(end_token_convention=end_tokens)),
                                  masks=masks, mask_subjects=mask_subjects, **schedule(
                                      step_size, start_at, end_at, weight, step_decay, thresholds, max_refine_iters))
        return self.guide(guidance, term, analysis.layout)
