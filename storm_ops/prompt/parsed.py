"""Data types of prompt analysis, shared by the parsers and the losses.

A :class:`PromptAnalysis` describes one tokenised prompt: its entities (nouns), the modifier sets
bound to them (SynGen), and the spatial relations between them (STORM), every word given as a
:class:`~storm_ops.tokens.layout.Subject` (display name + the CLIP columns of its pieces). It is produced
by the spaCy parser, by the rule-based fallback or from a user's override, and consumed by every
loss that needs more than a plain list of subjects.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import StormError
from ..tokens.layout import Subject, TokenLayout

#: Canonical spatial relations: the subject lies to the <relation> of the object.
RELATIONS = ("left", "right", "above", "below", "near")
#: Mirror images, used by "X right of Y" == "Y left of X" style checks.
OPPOSITE = {"left": "right", "right": "left", "above": "below", "below": "above", "near": "near"}


@dataclass(frozen=True)
class BindingSet:
    """A noun and the modifiers that describe it ("red", "crown")."""

    noun: Subject
    modifiers: tuple[Subject, ...] = ()

    @property
    def columns(self) -> tuple[int, ...]:
        return tuple(p for s in (*self.modifiers, self.noun) for p in s.positions)


@dataclass(frozen=True)
class SpatialRelation:
    """``subject`` lies ``relation`` of ``object`` ("cat" left of "dog")."""

    subject: Subject
    relation: str
    object: Subject

    def __post_init__(self) -> None:
        if self.relation not in RELATIONS:
            raise StormError(f"unknown spatial relation {self.relation!r}; use one of {RELATIONS}",
                             input_name="relations")

    def describe(self) -> str:
        rel = {"left": "left of", "right": "right of", "above": "above", "below": "below", "near": "near"}
        return f"{self.subject.name} {rel[self.relation]} {self.object.name}"


@dataclass(frozen=True)
class PromptAnalysis:
    """What a prompt says about its objects, aligned to CLIP columns.

    Attributes
    ----------
    text : str
        The prompt.
    layout : TokenLayout
        Its columns.
    entities : tuple of Subject
        The nouns (objects) of the prompt, in prompt order.
    bindings : tuple of BindingSet
        Modifier sets (only nouns that have modifiers).
    relations : tuple of SpatialRelation
        Spatial relations between entities.
    method : str
        ``"spacy:<pipeline>"``, ``"rules"`` (fallback, no parser installed) or ``"user"``.
    notes : tuple of str
        Human-readable remarks (words that could not be attached, fallbacks taken, ...).
    """

    text: str
    layout: TokenLayout
    entities: tuple[Subject, ...] = ()
    bindings: tuple[BindingSet, ...] = ()
    relations: tuple[SpatialRelation, ...] = ()
    method: str = "user"
    notes: tuple[str, ...] = field(default_factory=tuple)

    def describe(self) -> str:
        lines = [f"Prompt: {self.text}", f"Analysis: {self.method}"]
        lines.append("Entities: " + (", ".join(f"{e.name} {list(e.positions)}" for e in self.entities) or "(none)"))
        if self.bindings:
            lines.append("Bindings:")
            for b in self.bindings:
                mods = ", ".join(f"{m.name} {list(m.positions)}" for m in b.modifiers)
                lines.append(f"  {b.noun.name} {list(b.noun.positions)} <- {mods}")
        else:
            lines.append("Bindings: (none)")
        if self.relations:
            lines.append("Relations: " + "; ".join(r.describe() for r in self.relations))
        for note in self.notes:
            lines.append(f"Note: {note}")
        return "\n".join(lines)
