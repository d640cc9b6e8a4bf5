"""Binding losses: SynGen (+ the entropy variant) and A-STAR."""

from __future__ import annotations

from ..storm_ops.attention.maps import MapSettings
from ..storm_ops.guidance.terms import DEFAULT_WEIGHT
from ..storm_ops.losses import astar, syngen
from ..storm_ops.losses.astar import AStarConfig, AStarTerm
from ..storm_ops.losses.syngen import UNRELATED_ENTROPY_MODES, SynGenConfig, SynGenTerm
from ..storm_ops.tokens.subjects import masks_by_subject
from .errors import node_errors
from .loss_node import (
    GUIDANCE_INPUT,
    WEIGHT_INPUT,
    LossNode,
    end_tokens_input,
    schedule,
    step_decay_input,
    step_size_input,
    window_inputs,
)
from .validation import in_declared_range
from .widgets import bool_input, float_input, thresholds_input


class SynGen(LossNode):
    """STORM SynGen: linguistic binding of modifiers to their nouns (Rassin et al., NeurIPS 2023)."""

    NODE_NAME = "STORM SynGen"
    SEARCH_ALIASES = ("attribute binding", "color binding", "colour binding", "syntax guided generation", "syngen entropy")  # node search
    DESCRIPTION = (
        "SynGen (Rassin et al. 2023): pulls each modifier's attention map onto its noun's map and pushes "
        "both away from the other words (symmetric KL), so 'a red crown and a golden strawberry' keeps red "
        "on the crown. The modifier->noun sets come from STORM Prompt Analysis. Optional entropy terms "
        "(Jiang et al. 2024 blog). Defaults are the paper's: constant step 20 on the first half of the steps.")
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "analysis": ("STORM_ANALYSIS", {"tooltip": "From STORM Prompt Analysis (its bindings are the sets)."}),
            "step_size": step_size_input(syngen.DEFAULT_STEP_SIZE,
                                         "Constant step size of the latent update (paper: 20, diffusers latent "
                                         "scale). 0 disables the loss."),
            **window_inputs(syngen.DEFAULT_WINDOW, "Paper: the first 25 of 50 steps (0 to 0.5)."),
            "include_entities": bool_input(syngen.DEFAULT_INCLUDE_ENTITIES,
                                           "Also push every noun's map away from unrelated words (the "
                                           "official include_entities option; off in the paper's runs)."),
        }, "optional": {
            "guidance": GUIDANCE_INPUT,
            "weight": WEIGHT_INPUT,
            "lambda_entropy": float_input(SynGenConfig.lambda_entropy, 0.0, 1.0, 0.001,
                                          "Entropy variant: weight of H(modifier) + H(noun) per pair (keeps "
                                          "bound maps concentrated). No published value; entropies (~4-5.5) "
                                          "dwarf the KL terms (~0.05-0.5), so try 0.001-0.01. 0 = plain SynGen."),
            "gamma_entropy": float_input(SynGenConfig.gamma_entropy, 0.0, 1.0, 0.001,
                                         "Entropy variant: weight of the unrelated words' entropy (0.001-0.01)."),
            "unrelated_entropy": (list(UNRELATED_ENTROPY_MODES), {
                "default": SynGenConfig.unrelated_entropy,
                "tooltip": "Sign of the unrelated-entropy term. The blog's formula as written ('literal') lowers the "
                           "unrelated maps' entropy, i.e. makes them more concentrated, while its text says they "
                           "should become more diffuse; 'diffuse' (default) follows the text."}),
        }}

    @node_errors(NODE_NAME)
    @in_declared_range
    def build(self, analysis, step_size, start_at, end_at, include_entities, guidance=None, weight=DEFAULT_WEIGHT,
              lambda_entropy=SynGenConfig.lambda_entropy, gamma_entropy=SynGenConfig.gamma_entropy,
              unrelated_entropy=SynGenConfig.unrelated_entropy):
        config = SynGenConfig(float(lambda_entropy), float(gamma_entropy), unrelated_entropy)
        term = SynGenTerm.from_analysis(analysis, bool(include_entities), config, **schedule(
            step_size, start_at, end_at, weight, syngen.DEFAULT_STEP_SIZE.end_factor))
        return self.guide(guidance, term, analysis.layout)


class AStar(LossNode):
    """STORM A-STAR: attention segregation and retention (Agarwal et al., ICCV 2023)."""

    NODE_NAME = "STORM A-STAR"
    SEARCH_ALIASES = ("a-star", "attention segregation", "attention retention", "overlapping objects")  # node search
    DESCRIPTION = (
        "A-STAR (Agarwal et al. 2023): a segregation loss keeps the subjects' attention maps apart (so two "
        "objects do not merge) and a retention loss keeps each subject's high-attention region from one "
        "step to the next. Optional layout masks (MASK input) tell where each subject should stay. The paper "
        "leaves map normalisation, mask threshold and step sizes open: the defaults here are ours "
        "(A&E-style maps, threshold 0.5 of the max, A&E step sizes on the first half of the steps).")
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "tokens": ("STORM_TOKENS", {"tooltip": "The concepts (subjects), from STORM Subject Tokens or Prompt Analysis."}),
            "step_size": step_size_input(astar.DEFAULT_STEP_SIZE,
                                         "Step size (our default: A&E's 20 with its decay; the paper gives none)."),
            **window_inputs(astar.DEFAULT_WINDOW,
                            "Our default: the first half (the paper applies it throughout: set end_at to 1)."),
            "mask_threshold": float_input(AStarConfig.mask_threshold, 0.05, 1.0, 0.05,
                                          "Retention mask B = pixels at or above this fraction of the map's "
                                          "maximum at the previous step (our default; unspecified in the paper)."),
            "end_tokens": end_tokens_input("Token softmax convention (as in Attend-and-Excite)."),
        }, "optional": {
            "guidance": GUIDANCE_INPUT,
            "weight": WEIGHT_INPUT,
            "step_decay": step_decay_input(astar.DEFAULT_STEP_SIZE.end_factor),
            "segregation_weight": float_input(AStarConfig.segregation_weight, 0.0, 10.0, 0.05,
                                              "Weight of the segregation loss (0 = retention only)."),
            "retention_weight": float_input(AStarConfig.retention_weight, 0.0, 10.0, 0.05,
                                            "Weight of the retention loss (0 = segregation only)."),
            "masks": ("MASK", {"tooltip": "Optional layout masks, one per subject (a batch in subject order, or as "
                                          "named in mask_subjects): where each subject should be (paper Fig. 12)."}),
            "mask_subjects": ("STRING", {"default": "",
                                         "tooltip": "Which subject each mask of the batch belongs to ('cat, dog'); "
                                                    "empty = the subjects in order."}),
            "thresholds": thresholds_input(astar.DEFAULT_THRESHOLDS,
                                           "Optional refinement: 'position:threshold' pairs as in Attend-and-Excite "
                                           "(every subject's max attention must reach the threshold). Empty = off."),
        }}

    @node_errors(NODE_NAME)
    @in_declared_range
    def build(self, tokens, step_size, start_at, end_at, mask_threshold, end_tokens, guidance=None,
              weight=DEFAULT_WEIGHT, step_decay=astar.DEFAULT_STEP_SIZE.end_factor,
              segregation_weight=AStarConfig.segregation_weight, retention_weight=AStarConfig.retention_weight,
              masks=None, mask_subjects="", thresholds=""):
        config = AStarConfig(MapSettings(end_token_convention=end_tokens), float(mask_threshold),
                             float(segregation_weight), float(retention_weight))
        term = AStarTerm(tokens.layout, tokens.subjects, config,
                         masks=masks_by_subject(tokens.subjects, masks, mask_subjects),
                         **schedule(step_size, start_at, end_at, weight, step_decay, thresholds))
        return self.guide(guidance, term, tokens.layout)
