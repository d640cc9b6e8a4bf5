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
