"""Small helpers for calling node classes directly in host tests."""

from __future__ import annotations

from typing import Any


def node_output(value: Any) -> tuple:
    """The result tuple of a node call that may return ``{"ui": ..., "result": ...}``."""
    return tuple(value["result"]) if isinstance(value, dict) else tuple(value)


def node_ui(value: Any) -> dict:
    """The ``ui`` part of a node call's return value (empty when there is none)."""
    return dict(value.get("ui", {})) if isinstance(value, dict) else {}


def call_node(cls: type, **inputs: Any) -> tuple:
    """Run a node class' FUNCTION with ``inputs`` by name, every other widget at its declared default."""
    from .workflows import widget_defaults

    values = {**widget_defaults(cls.INPUT_TYPES()), **inputs}
    return node_output(getattr(cls(), cls.FUNCTION)(**values))


def weakest_subject_attention(pack: Any, record: Any, tokens: Any) -> list[float]:
    """Per recorded step of a run, the weakest subject's smoothed max attention (1 - Attend-and-Excite's
    loss), read from the maps of the run's conditional passes with the tokens' own conventions."""
    ae, maps_of = pack.storm_ops.losses.attend_excite, pack.storm_ops.attention.maps
    groups = [s.positions for s in tokens.subjects]  # MapSettings' "auto": the tokens' own end-token convention
    return [float(ae.max_attention(maps_of.word_maps(maps.float(), tokens.layout, groups, maps_of.MapSettings())).min())
            for _, maps in record.step_maps]


def guided_log_of_method(nodes: dict, clip: Any, model: Any, method: str, *, cfg: float, latent: Any) -> list:
    """The guided log of a 4-step Guided KSampler run of ``method`` (``"syngen"``, ``"storm"`` or ``"astar"``)
    on ``model`` with its ``clip``: a two-object prompt through STORM Prompt Analysis (rules parser), the
    method's node at its defaults (A-STAR: steps 0 to 0.5, no refinement), the empty prompt as the negative."""
    import torch

    from .tiny_models import tiny_conditioning

    text = "a red cat to the left of a blue dog" if method == "storm" else "a red cat and a blue dog"
    with torch.inference_mode():
        analysis, tokens, positive, _ = call_node(nodes["STORM_PromptAnalysis"], clip=clip, text=text, parser="rules")
        if method == "astar":
            (guidance,) = call_node(nodes["STORM_AStar"], tokens=tokens, step_size=20.0, start_at=0.0, end_at=0.5,
                                    thresholds="")
        else:
            node = nodes["STORM_SpatialTransport" if method == "storm" else "STORM_SynGen"]
            (guidance,) = call_node(node, analysis=analysis)
        negative = tiny_conditioning(clip, "")
        _, attention = call_node(nodes["STORM_GuidedKSampler"], model=model, guidance=guidance, seed=1, steps=4,
                                 cfg=cfg, sampler_name="euler", scheduler="simple", positive=positive,
                                 negative=negative, latent_image={"samples": latent})
    return attention.latest().log
