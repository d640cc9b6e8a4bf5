"""What users write in place of the prompt analysis: bindings ("red -> crown; golden -> strawberry") and
relations ("cat left of dog; bird above cat"), and the check every relation set passes before STORM
guides it (no self-relations, no contradictions such as a cycle of "left of")."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from ..errors import StormError
from ..tokens.layout import TokenLayout
from ..tokens.subjects import parse_word_reference, resolve_word
from .parsed import OPPOSITE, BindingSet, PromptAnalysis, SpatialRelation
from .relations import OVERRIDE_PHRASES, match_phrases

_DETERMINERS = ("a", "an", "the")
_FORMS = "left of, right of, above, below, near (also: to the left of, on top of, over, under, beneath, next to, beside)"


def parse_relation_override(text: str, layout: TokenLayout) -> tuple[SpatialRelation, ...]:
    """Relations written by a user: ``"cat left of dog; bird above cat"`` (also ``,`` or new lines
    between relations, chains ``"cat left of dog left of bird"``, ``"dog#2"`` for occurrences).

    Raises
    ------
    StormError
        ``input_name="relations"``: no relation word, a missing subject or object, a word that is
        not in the prompt, or a set that :func:`validate_relations` rejects.
    """
    relations = [SpatialRelation(resolve_word(layout, left, input_name="relations"), relation,
                                 resolve_word(layout, right, input_name="relations"))
                 for left, relation, right in split_relation_override(text)]
    validate_relations(relations)
    return tuple(relations)


def split_relation_override(text: str) -> list[tuple[str, str, str]]:
    """The relations of a relations text as ``(subject, relation, object)`` words, before they are
    looked up in the prompt (see :func:`parse_relation_override`; needs no prompt).

    Raises
    ------
    StormError
        ``input_name="relations"``: no relation word, a depth relation, a missing subject or
        object, or a word with an occurrence below 1 (``"dog#0"``).
    """
    out = []
    for clause in (c.strip() for c in text.replace("\n", ";").replace(",", ";").split(";")):
        if not clause:
            continue
        words = clause.split()
        found = match_phrases(words, OVERRIDE_PHRASES)
        if not found:
            raise StormError(f"{clause!r} has no relation word; write 'subject relation object' with one of: {_FORMS}",
                             input_name="relations")
        bounds = [0, *(b for s, e, _ in found for b in (s, e)), len(words)]
        parts = [words[bounds[i]:bounds[i + 1]] for i in range(0, len(bounds), 2)]
        for k, (start, end, relation) in enumerate(found):
            phrase = " ".join(words[start:end])
            if relation is None:
                raise StormError(f"{phrase!r} (depth) is not supported; use one of: {_FORMS}", input_name="relations")
            left, right = _strip(parts[k]), _strip(parts[k + 1])
            if not left or not right:
                raise StormError(f"{clause!r}: the relation {phrase!r} needs an object on each side "
                                 f"({'before' if not left else 'after'} it), e.g. 'cat {phrase} dog'",
                                 input_name="relations")
            for word in (left, right):
                parse_word_reference(word, input_name="relations")
            out.append((left, relation, right))
    return out


def _strip(words: list[str]) -> str:
    while words and words[0].lower() in _DETERMINERS:
        words = words[1:]
    return " ".join(words)


def validate_relations(relations: Sequence[SpatialRelation]) -> None:
    """Reject relation sets STORM cannot satisfy.

    Raises
    ------
    StormError
        ``input_name="relations"``, naming the words: a relation without a subject or object, a
        relation between an object and itself (one object only), or contradictory relations
        ("cat left of dog" with "dog left of cat" or "cat right of dog"; any cycle).
    """
    for r in relations:
        if not r.subject.positions or not r.object.positions:
            missing = "object" if not r.object.positions else "subject"
            raise StormError(f"the relation '{r.describe()}' has no {missing} tokens", input_name="relations")
        if set(r.subject.positions) & set(r.object.positions):
            raise StormError(f"'{r.describe()}' relates '{r.subject.name}' to itself: a spatial relation needs "
                             f"two different objects of the prompt", input_name="relations")
    for axis in ("left", "above"):
        edges: dict[tuple[int, ...], list[tuple[tuple[int, ...], SpatialRelation]]] = {}
        for r in relations:
            if r.relation in (axis, OPPOSITE[axis]):
                a, b = (r.subject, r.object) if r.relation == axis else (r.object, r.subject)
                edges.setdefault(a.positions, []).append((b.positions, r))
        cycle = _find_cycle(edges)
        if cycle:
            raise StormError("contradictory relations: " + " and ".join(f"'{r.describe()}'" for r in cycle)
                             + "; remove one of them", input_name="relations")


def _find_cycle(edges) -> list[SpatialRelation] | None:
    """A cycle of the directed graph ``edges`` (node -> [(node, relation)]), as its relations."""
    done: set = set()

    def visit(node, path: list, rels: list):
        for nxt, rel in edges.get(node, ()):
            if nxt in path:
                return rels[path.index(nxt):] + [rel]
            if nxt not in done:
                found = visit(nxt, [*path, nxt], [*rels, rel])
                if found:
                    return found
        done.add(node)
        return None

    for node in list(edges):
        found = None if node in done else visit(node, [node], [])
        if found:
            return found
    return None


def split_binding_override(text: str) -> list[tuple[str, list[str], str]]:
    """The sets of a bindings text as ``(item, modifiers, noun)`` words, before they are looked up
    in the prompt (see :func:`parse_binding_override`; needs no prompt).

    Raises
    ------
    StormError
        ``input_name="bindings"``: a set without one ``->``, without modifiers or noun, or a word
        with an occurrence below 1 (``"crown#0"``).
    """
    out = []
    for item in (s.strip() for s in text.replace("\n", ";").split(";")):
        if not item:
            continue
        if item.count("->") != 1:
            raise StormError(f"{item!r}: write a binding as 'modifier, modifier -> noun' (e.g. 'red -> crown')",
                             input_name="bindings")
        left, right = (s.strip() for s in item.split("->"))
        mods = [m.strip() for m in left.split(",") if m.strip()]
        if not mods or not right:
            raise StormError(f"{item!r} needs at least one modifier before '->' and a noun after it",
                             input_name="bindings")
        for word in (*mods, right):
            parse_word_reference(word, input_name="bindings")
        out.append((item, mods, right))
    return out


def parse_binding_override(text: str, layout: TokenLayout) -> tuple[BindingSet, ...]:
    """Bindings written by a user: ``"red -> crown; golden, shiny -> strawberry"``.

    Sets are separated by ``;`` or new lines; modifiers by commas; ``word#2`` is the second
    occurrence of a word; phrases ("teddy bear") and multi-piece words resolve to all their columns.

    Raises
    ------
    StormError
        ``input_name="bindings"``: a set without ``->``, without modifiers or noun, a word that is not
        in the prompt (the message lists the prompt's words), or a noun given twice.
    """
    out: list[BindingSet] = []
    for item, mods, right in split_binding_override(text):
        noun = resolve_word(layout, right, input_name="bindings")
        subjects = tuple(resolve_word(layout, m, input_name="bindings") for m in mods)
        for m in subjects:
            if set(m.positions) & set(noun.positions):
                raise StormError(f"{item!r}: {m.name!r} cannot modify itself", input_name="bindings")
        if any(b.noun.positions == noun.positions for b in out):
            raise StormError(f"{noun.name!r} is bound twice; list all its modifiers in one set "
                             f"('a, b -> {noun.name}')", input_name="bindings")
        out.append(BindingSet(noun, subjects))
    return tuple(out)


def apply_overrides(analysis: PromptAnalysis, bindings: str, relations: str) -> PromptAnalysis:
    """The analysis with the user's bindings / relations (non-empty texts) replacing the parsed ones."""
    notes = list(analysis.notes)
    if bindings.strip():
        parsed = parse_binding_override(bindings, analysis.layout)
        known = {e.positions for e in analysis.entities}
        extra = tuple(b.noun for b in parsed if b.noun.positions not in known)
        analysis = replace(analysis, bindings=parsed, entities=analysis.entities + extra)
        notes.append("bindings set by the user")
    if relations.strip():
        analysis = replace(analysis, relations=parse_relation_override(relations, analysis.layout))
        notes.append("relations set by the user")
    return replace(analysis, notes=tuple(notes))
