"""Guidance losses, one module per method (each a :class:`~storm_ops.guidance.terms.GuidanceTerm`)."""

from .astar import AStarConfig, AStarTerm, retention, segregation
from .attend_excite import AttendExciteTerm, attend_excite_loss, max_attention
from .syngen import SynGenConfig, SynGenTerm, entropy, symmetric_kl, syngen_loss, syngen_sets
from .transport import TRANSPORT_TERMS, transport_term
from .transport_core import TransportConfig, TransportTerm
from .transport_paper import TransportPaperTerm, transport_paper_loss
from .transport_reference import TransportReferenceTerm, transport_reference_loss

__all__ = [
    "AStarConfig", "AStarTerm", "retention", "segregation",
    "AttendExciteTerm", "attend_excite_loss", "max_attention",
    "TRANSPORT_TERMS", "transport_term", "TransportConfig", "TransportTerm", "TransportPaperTerm", "TransportReferenceTerm",
    "transport_paper_loss", "transport_reference_loss",
    "SynGenConfig", "SynGenTerm", "entropy", "symmetric_kl", "syngen_loss", "syngen_sets",
]
