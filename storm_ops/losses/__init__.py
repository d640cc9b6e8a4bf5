"""Guidance losses, one module per method (each a :class:`~storm_ops.guidance.GuidanceTerm`)."""

from .astar import AStarConfig, AStarTerm, retention, segregation
from .attend_excite import AttendExciteConfig, AttendExciteTerm, attend_excite_loss, max_attention, subject_maps
from .storm import STORM_TERMS, storm_term
from .storm_core import StormConfig, StormTerm
from .storm_paper import StormPaperTerm, storm_paper_loss
from .storm_reference import StormReferenceTerm, storm_reference_loss
from .syngen import SynGenConfig, SynGenTerm, entropy, symmetric_kl, syngen_loss, syngen_sets

__all__ = [
    "AStarConfig", "AStarTerm", "retention", "segregation",
    "AttendExciteConfig", "AttendExciteTerm", "attend_excite_loss", "max_attention", "subject_maps",
    "STORM_TERMS", "storm_term", "StormConfig", "StormTerm", "StormPaperTerm", "StormReferenceTerm",
    "storm_paper_loss", "storm_reference_loss",
    "SynGenConfig", "SynGenTerm", "entropy", "symmetric_kl", "syngen_loss", "syngen_sets",
]
