"""STORM (Han et al., CVPR 2025, arXiv 2503.22168): the guidance term of each mode, by name.

``"paper"`` — the method as described (:mod:`.transport_paper`); ``"reference"`` — the released
code's loss, quirks included (:mod:`.transport_reference`). What both share is in :mod:`.transport_core`.
"""

from __future__ import annotations

from ..errors import StormError
from ..prompt.parsed import PromptAnalysis, SpatialRelation
from ..tokens.layout import TokenLayout
from ..tokens.subjects import masks_by_subject
from .transport_core import TransportConfig, TransportTerm, no_relation
from .transport_paper import TransportPaperTerm
from .transport_reference import TransportReferenceTerm

__all__ = ["TRANSPORT_TERMS", "TRANSPORT_MODES", "transport_term", "transport_term_for"]

#: The term class of each mode, by its name.
TRANSPORT_TERMS: dict[str, type[TransportTerm]] = {cls.mode: cls for cls in (TransportPaperTerm, TransportReferenceTerm)}
#: The mode names, paper mode (the default) first.
TRANSPORT_MODES = tuple(TRANSPORT_TERMS)


def transport_term(mode: str, layout: TokenLayout, relations: tuple[SpatialRelation, ...],
                   config: TransportConfig = TransportConfig(), **kwargs) -> TransportTerm:
    """The STORM term of ``mode``: ``TRANSPORT_TERMS[mode](layout, relations, config, **kwargs)``.

    Raises
    ------
    StormError
        ``input_name`` ``"mode"`` for an unknown mode.
    """
    if mode not in TRANSPORT_TERMS:
        raise StormError(f"unknown STORM mode {mode!r}; use one of {TRANSPORT_MODES}", input_name="mode")
    return TRANSPORT_TERMS[mode](layout, relations, config, **kwargs)


def transport_term_for(mode: str, analysis: PromptAnalysis, config: TransportConfig = TransportConfig(), *,
                       masks=None, mask_subjects: str = "", **schedule) -> TransportTerm:
    """The STORM term of ``mode`` for a prompt analysis' relations (and bindings, for the attribute term), with
    optional painted target masks: a MASK batch, one per object named in ``mask_subjects`` (empty: the objects of
    the relations in order)."""
    relations = tuple(analysis.relations)
    if not relations:
        raise no_relation(analysis)
    objects = tuple(dict.fromkeys(e for r in relations for e in (r.subject, r.object)))
    targets = masks_by_subject(objects, masks, mask_subjects)
    target_masks = {obj.name: m for obj, m in zip(objects, targets or (), strict=False) if m is not None}
    return transport_term(mode, analysis.layout, relations, config, bindings=analysis.bindings,
                          target_masks=target_masks or None, **schedule)
