"""Widget specs for ``INPUT_TYPES``.

A default that is a fact of a method (a paper's step size, window or thresholds) is owned by
``storm_ops`` (a ``DEFAULT_*`` constant or a config dataclass default); the nodes build their
widgets from it with these helpers instead of retyping the value. Bounds, steps and tooltips are
facts of the widget and stay in the node.
"""

from __future__ import annotations

from ..storm_ops.guidance.terms import format_thresholds
from .architecture import DEFAULT_LAYER_SELECTION, LAYER_SELECTIONS


def float_input(default: float, minimum: float, maximum: float, step: float, tooltip: str, **options) -> tuple:
    """A FLOAT widget; ``options`` adds further keys (``round``...)."""
    return ("FLOAT", {"default": float(default), "min": minimum, "max": maximum, "step": step, **options,
                      "tooltip": tooltip})


def int_input(default: int, minimum: int, maximum: int, tooltip: str, **options) -> tuple:
    """An INT widget; ``options`` adds further keys (``step``, ``control_after_generate``...)."""
    return ("INT", {"default": int(default), "min": minimum, "max": maximum, **options, "tooltip": tooltip})


def bool_input(default: bool, tooltip: str) -> tuple:
    """A BOOLEAN widget."""
    return ("BOOLEAN", {"default": bool(default), "tooltip": tooltip})


def thresholds_input(thresholds: tuple[tuple[float, float], ...], tooltip: str) -> tuple:
    """The STRING widget of refinement thresholds, its default the text of ``thresholds``
    (``storm_ops.guidance.terms.parse_thresholds`` reads it back)."""
    return ("STRING", {"default": format_thresholds(thresholds), "tooltip": tooltip})


LAYERS_INPUT = (list(LAYER_SELECTIONS), {
    "default": DEFAULT_LAYER_SELECTION,
    "tooltip": "Cross-attention layers whose maps the losses read, by UNet level: 1/32 of the image resolution "
               "(16x16 at 512 px on SD1.5, 32x32 at 1024 px on SDXL) on the down and up path is the paper's choice; "
               "'+mid' adds the middle block where it has the same size; 1/16 uses twice finer, costlier maps."})
ATTENTION_OUTPUT_TOOLTIP = ("Attention maps and guidance log of each run, for STORM Attention Heatmap "
                            "(it picks the run that produced the latent you connect).")
