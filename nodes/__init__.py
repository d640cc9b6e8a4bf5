"""ComfyUI glue: the only package of ComfyUI-STORM that imports ``comfy``.

Node ids are permanent (``STORM_*``); display names may change. On a host the pack cannot run on, the
import fails with a message that says why (ComfyUI prints it and lists the pack as failed).
"""

import logging

from .compat import host_supported, isolation_notice

if host_supported() is not None:
    raise ImportError(host_supported())
if isolation_notice() is not None:
    logging.getLogger("comfyui-storm").warning(isolation_notice())

from .nodes_aid import AttentionInterpolation, DynamicInterpolation, ImageMorph, SelectFrame
from .nodes_attention import AttentionHeatmap, AttentionRecorder, SaveAttention
from .nodes_binding import AStar, SynGen
from .nodes_guidance import AttendAndExcite
from .nodes_prompt import PromptAnalysisNode, SubjectTokens
from .nodes_sampling import GuidedKSampler, GuidedSampler
from .nodes_spatial import SpatialTransport
from .web_routes import register_routes

_NODES = {
    "STORM_SubjectTokens": SubjectTokens,
    "STORM_PromptAnalysis": PromptAnalysisNode,
    "STORM_AttendAndExcite": AttendAndExcite,
    "STORM_SynGen": SynGen,
    "STORM_AStar": AStar,
    "STORM_SpatialTransport": SpatialTransport,
    "STORM_GuidedSampler": GuidedSampler,
    "STORM_GuidedKSampler": GuidedKSampler,
    "STORM_AttentionRecorder": AttentionRecorder,
    "STORM_AttentionHeatmap": AttentionHeatmap,
    "STORM_SaveAttention": SaveAttention,
    "STORM_AttentionInterpolation": AttentionInterpolation,
    "STORM_DynamicInterpolation": DynamicInterpolation,
    "STORM_SelectFrame": SelectFrame,
    "STORM_ImageMorph": ImageMorph,
}

NODE_CLASS_MAPPINGS = dict(_NODES)
NODE_DISPLAY_NAME_MAPPINGS = {node_id: cls.NODE_NAME for node_id, cls in _NODES.items()}

register_routes(NODE_CLASS_MAPPINGS)
