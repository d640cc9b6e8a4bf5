"""Guidance losses, one module per method."""

from .attend_excite import AttendExciteConfig, AttendExciteTerm, attend_excite_loss, max_attention, subject_maps

__all__ = ["AttendExciteConfig", "AttendExciteTerm", "attend_excite_loss", "max_attention", "subject_maps"]
