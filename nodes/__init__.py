"""ComfyUI glue: the only package of ComfyUI-STORM that imports ``comfy``.

Node ids are permanent (``STORM_*``); display names may change.
"""

from .nodes_aid import AttentionInterpolation, SelectFrame
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
    "STORM_SelectFrame": SelectFrame,
}

NODE_CLASS_MAPPINGS = dict(_NODES)
NODE_DISPLAY_NAME_MAPPINGS = {node_id: cls.NODE_NAME for node_id, cls in _NODES.items()}

register_routes(NODE_CLASS_MAPPINGS)
