"""STORM (Han et al., CVPR 2025, arXiv 2503.22168): the guidance term of each mode, by name.

``"paper"`` — the method as described (:mod:`.storm_paper`); ``"reference"`` — the released
code's loss, quirks included (:mod:`.storm_reference`). What both share is in :mod:`.storm_core`.
"""

from __future__ import annotations

from ..analysis import SpatialRelation
from ..errors import StormError
from ..tokens import TokenLayout
from .storm_core import StormConfig, StormTerm
from .storm_paper import StormPaperTerm
from .storm_reference import StormReferenceTerm

__all__ = ["STORM_TERMS", "MODES", "storm_term"]

#: The term class of each mode, by its name.
STORM_TERMS: dict[str, type[StormTerm]] = {cls.mode: cls for cls in (StormPaperTerm, StormReferenceTerm)}
#: The mode names, paper mode (the default) first.
MODES = tuple(STORM_TERMS)


def storm_term(mode: str, layout: TokenLayout, relations: tuple[SpatialRelation, ...],
               config: StormConfig = StormConfig(), **kwargs) -> StormTerm:
    """The STORM term of ``mode``: ``STORM_TERMS[mode](layout, relations, config, **kwargs)``.

    Raises
    ------
    StormError
        ``input_name`` ``"mode"`` for an unknown mode.
    """
    if mode not in STORM_TERMS:
        raise StormError(f"unknown STORM mode {mode!r}; use one of {MODES}", input_name="mode")
    return STORM_TERMS[mode](layout, relations, config, **kwargs)
