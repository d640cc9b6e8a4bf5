"""STORM (Han et al., CVPR 2025, arXiv 2503.22168): the guidance term of each mode, by name.

``"paper"`` — the method as described (:mod:`.transport_paper`); ``"reference"`` — the released
code's loss, quirks included (:mod:`.transport_reference`). What both share is in :mod:`.transport_core`.
"""

from __future__ import annotations

from ..errors import StormError
from ..prompt.parsed import SpatialRelation
from ..tokens.layout import TokenLayout
from .transport_core import TransportConfig, TransportTerm
from .transport_paper import TransportPaperTerm
from .transport_reference import TransportReferenceTerm

__all__ = ["TRANSPORT_TERMS", "MODES", "transport_term"]

#: The term class of each mode, by its name.
TRANSPORT_TERMS: dict[str, type[TransportTerm]] = {cls.mode: cls for cls in (TransportPaperTerm, TransportReferenceTerm)}
#: The mode names, paper mode (the default) first.
MODES = tuple(TRANSPORT_TERMS)


def transport_term(mode: str, layout: TokenLayout, relations: tuple[SpatialRelation, ...],
                   config: TransportConfig = TransportConfig(), **kwargs) -> TransportTerm:
    """The STORM term of ``mode``: ``TRANSPORT_TERMS[mode](layout, relations, config, **kwargs)``.

    Raises
    ------
    StormError
        ``input_name`` ``"mode"`` for an unknown mode.
    """
    if mode not in TRANSPORT_TERMS:
        raise StormError(f"unknown STORM mode {mode!r}; use one of {MODES}", input_name="mode")
    return TRANSPORT_TERMS[mode](layout, relations, config, **kwargs)
