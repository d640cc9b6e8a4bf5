"""Spatial relations between the objects of a prompt ("a cat to the left of a dog" -> cat left of dog).

STORM's own code decides the relation by substring tests on the raw prompt and always treats the
first noun as the subject: "laptop" reads as "top", "bright" as "right", and
"a dog to the right of a cat" is guided like "left of". Here relations come from the dependency
parse, whole words only: the relation word ("left", "above", "next"), the noun its phrase attaches
to (the subject, found through verbs, relative clauses and coordinated prepositions) and the noun
after "of"/"to" (the object). Chains ("a cat left of a dog left of a bird") give one relation per
phrase. Without a parser, and for users' overrides (:mod:`.relation_overrides`), the same phrases are
matched on the words.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..tokens.layout import Subject
from .parsed import SpatialRelation

#: Prepositions that are a relation on their own ("a bird above a tree").
PREPOSITIONS = {"above": "above", "over": "above", "atop": "above", "below": "below", "under": "below",
                "beneath": "below", "underneath": "below", "beside": "near", "near": "near", "behind": None}
#: Nouns of frame phrases "<prep> the <word> of X" (``None``: depth, which STORM cannot guide).
FRAME_WORDS = {"left": "left", "right": "right", "top": "above", "bottom": "below", "side": "near", "front": None}
#: Words followed by "to" ("next to", "close to").
ADJACENCY = {"next": "near", "close": "near"}
#: Nouns that name the picture rather than an object in it ("a photo of ...").
FRAMING_NOUNS = frozenset("photo photograph picture image painting drawing illustration render rendering sketch "
                          "shot view scene portrait poster artwork".split())
_NOUNS = ("NOUN", "PROPN")
_SUBJECT_DEPS = ("nsubj", "nsubjpass")


def _phrase_table(*, bare_sides: bool) -> dict[tuple[str, ...], str | None]:
    table: dict[tuple[str, ...], str | None] = {}
    for side in ("left", "right"):
        for pre in ((), ("to",), ("on",), ("to", "the"), ("on", "the"), ("at", "the")):
            table[(*pre, side, "of")] = table[(*pre, side, "side", "of")] = side
        if bare_sides:
            table[(side,)] = side
    for pre in (("on",), ("on", "the"), ("at", "the")):
        table[(*pre, "top", "of")] = "above"
        table[(*pre, "bottom", "of")] = "below"
        table[(*pre, "side", "of")] = "near"
    table.update({(word,): rel for word, rel in PREPOSITIONS.items()})
    table.update({(word, "to"): rel for word, rel in ADJACENCY.items()})
    table[("in", "front", "of")] = None
    return table


#: Word sequences that state a relation, for the rule-based analysis.
PHRASES = _phrase_table(bare_sides=False)
#: The same plus bare "left"/"right" ("cat left dog"), for users' overrides.
OVERRIDE_PHRASES = _phrase_table(bare_sides=True)
_LONGEST = max(len(p) for p in OVERRIDE_PHRASES)


def match_phrases(words: Sequence[str], table: Mapping[tuple[str, ...], str | None] = PHRASES
                  ) -> list[tuple[int, int, str | None]]:
    """Relation phrases in a word sequence, longest match first: ``(start, end, relation)`` with
    ``words[start:end]`` the phrase; whole words only ("laptop" never matches "top")."""
    words = [w.lower() for w in words]
    found, i = [], 0
    while i < len(words):
        for n in range(min(_LONGEST, len(words) - i), 0, -1):
            key = tuple(words[i:i + n])
            if key in table:
                found.append((i, i + n, table[key]))
                i += n
                break
        else:
            i += 1
    return found


# --------------------------------------------------------------------------------- from a parse
@dataclass(frozen=True)
class RelationPhrase:
    """A relation phrase found in a parse (token indices of the spaCy ``Doc``).

    ``start`` is the token that attaches the phrase to the sentence ("to" of "to the left of", or the
    relation word itself), ``anchor`` the relation word, ``object`` the object noun (``None`` when
    the phrase has none) and ``consumed`` the tokens that belong to the phrase and therefore are
    neither objects nor modifiers ("left", "side", "top", "next").
    """

    relation: str | None
    text: str
    start: int
    anchor: int
    object: int | None
    consumed: frozenset[int]
    bare: bool = False  # "on the left" without "of": paired with a phrase of the other side


def _child(token, text: str):
    return next((c for c in token.children if c.text.lower() == text), None)


def _pobj(token):
    return next((c for c in token.children if c.dep_ == "pobj"), None)


def find_relation_phrases(doc) -> tuple[RelationPhrase, ...]:
    """The relation phrases of a parsed prompt, in prompt order."""
    phrases = []
    for tok in doc:
        word = tok.text.lower()
        bare = _bare_side(doc, tok)
        if bare is not None:
            phrases.append(bare)
            continue
        if word in FRAME_WORDS:
            frame = tok.head if word in ("left", "right") and tok.dep_ in ("amod", "compound") \
                and tok.head.text.lower() == "side" else tok
            if word == "side" and any(c.text.lower() in ("left", "right") for c in tok.children):
                continue  # "the left side of": found from "left"
            of = _child(frame, "of")
            obj = _pobj(of) if of is not None else None
            attached = frame.dep_ == "pobj" and frame.head.pos_ == "ADP"
            if of is None and not (attached and word in ("left", "right")):
                continue  # "a red top", "a left shoe": not a relation
            start, end = (frame.head if attached else frame), (of if of is not None else frame)
            relation = FRAME_WORDS[word]
        elif word in PREPOSITIONS and tok.pos_ in ("ADP", "ADV", "SCONJ") and tok.dep_ in ("prep", "conj", "advmod"):
            start, end, obj, relation = tok, tok, _pobj(tok), PREPOSITIONS[word]
            if obj is None and tok.dep_ != "prep":
                continue
        elif word in ADJACENCY:
            to = _child(tok, "to")
            if to is None and tok.head.text.lower() == "to" and tok.dep_ == "advmod":
                to = tok.head
            if to is None:
                continue
            start, end, obj, relation = (tok if to.head.i == tok.i else to), to, _pobj(to), ADJACENCY[word]
        else:
            continue
        lo, hi = min(start.i, tok.i), max(end.i, tok.i)
        consumed = frozenset(range(lo, hi + 1))
        phrases.append(RelationPhrase(relation, doc[lo:hi + 1].text, start.i, tok.i,
                                      obj.i if obj is not None else None, consumed))
    return tuple(sorted(phrases, key=lambda p: p.start))


#: Verbs whose object is what a relation phrase places ("holding a balloon above a dog": the balloon).
PLACING_VERBS = frozenset("hold holding holds held carry carrying carries carried put putting puts place placing places "
                          "placed lift lifting lifts lifted raise raising raises raised throw throwing throws threw "
                          "toss tossing tosses tossed hang hanging hangs hung set setting sets lay laying lays laid "
                          "balance balancing balances balanced drop dropping drops dropped stack stacking stacks "
                          "stacked push pushing pushes pushed pull pulling pulls pulled drag dragging drags dragged "
                          "move moving moves moved wave waving waves waved".split())


def _places(verb) -> bool:
    return verb.text.lower() in PLACING_VERBS or verb.lemma_.lower() in PLACING_VERBS


_SIDE_PREPOSITIONS = frozenset({"on", "to", "at"})


def _bare_side(doc, tok) -> RelationPhrase | None:
    """"on the left", "to the right side" without "of": a side of the picture (word pattern, whatever
    the parse; en_core_web_sm makes "left" of "on the left a cat" an adjective of "cat")."""
    word = tok.text.lower()
    if word not in ("left", "right") or tok.i < 2:
        return None
    if doc[tok.i - 1].text.lower() != "the" or doc[tok.i - 2].text.lower() not in _SIDE_PREPOSITIONS:
        return None
    end = tok.i + 1
    if end < len(doc) and doc[end].text.lower() == "side":
        end += 1
    if end < len(doc) and doc[end].text.lower() == "of":
        return None
    start = tok.i - 2
    return RelationPhrase(word, doc[start:end].text, start, tok.i, None, frozenset(range(start, end)), bare=True)


def _segment_subject(doc, phrase: RelationPhrase, entity_of: Mapping[int, Subject]) -> int | None:
    """The object a bare side phrase places: the nearest one before it in its part of the prompt (parts
    end at punctuation and coordinating words), else the first one after it ("on the left a cat")."""
    def boundary(t):
        return t.is_punct or t.dep_ == "cc" or t.text.lower() in ("and", "or", "but", "while")

    for i in range(phrase.start - 1, -1, -1):
        if boundary(doc[i]):
            break
        if i in entity_of:
            return i
    for i in range(max(phrase.consumed) + 1, len(doc)):
        if boundary(doc[i]) or _bare_side(doc, doc[i]) is not None:
            break
        if i in entity_of:
            return i
    return None


def _pair_sides(bare: list[tuple[RelationPhrase, int | None]], entity_of: Mapping[int, Subject],
                notes: list[str]) -> list[SpatialRelation]:
    """"a car on the left and a bus on the right": every object on the left is left of every object on
    the right."""
    sides = {"left": [], "right": []}
    for phrase, subject in bare:
        if subject is None:
            notes.append(f"'{phrase.text}' has no subject noun in the parse; the relation is ignored "
                         f"(write it in the relations override, e.g. 'cat left of dog')")
        else:
            sides[phrase.relation].append((phrase, subject))
    out = []
    for side, other in (("left", "right"), ("right", "left")):
        if sides[side] and not sides[other]:
            for phrase, subject in sides[side]:
                notes.append(f"'{phrase.text}' places '{entity_of[subject].name}' but no object is placed on the "
                             f"{other}; the relation is ignored (write it in the relations override, e.g. "
                             f"'cat left of dog')")
    for _, left in sides["left"]:
        for _, right in sides["right"]:
            if left != right and not set(entity_of[left].positions) & set(entity_of[right].positions):
                out.append(SpatialRelation(entity_of[left], "left", entity_of[right]))
    return out


def _subject_token(doc, phrase: RelationPhrase, entity_of: Mapping[int, Subject],
                   owner: Mapping[int, RelationPhrase]) -> int | None:
    """The noun a relation phrase describes: climb from the phrase's attachment token."""
    x = doc[phrase.start]
    if x.i == phrase.anchor or x.text.lower() in FRAME_WORDS:  # bare "X left of Y" / "X is left of Y"
        for child in x.children:
            before = child.i < x.i and child.dep_ in ("compound", "amod", "nmod")
            if child.pos_ in _NOUNS and child.i in entity_of and (child.dep_ in _SUBJECT_DEPS or before):
                return child.i
    for _ in range(len(doc)):
        while x.dep_ == "conj" and x.head.i != x.i:  # "above a dog and below a bird"
            x = x.head
        if x.head.i == x.i:
            return None
        g = x.head
        if g.i in owner and owner[g.i] is not phrase:  # chain: "... left of a cat to the left of a horse"
            return owner[g.i].object
        if g.pos_ in _NOUNS:  # a noun that is no object (not found in the tokens): no guess beyond it
            return g.i if g.i in entity_of or g.text.lower() in FRAMING_NOUNS else None  # framing: see _unframe
        if g.pos_ == "VERB" and x.dep_ in ("prep", "advmod", "npadvmod", "advcl") and _places(g):
            placed = next((c for c in g.children if c.dep_ == "dobj" and c.i in entity_of and c.i < phrase.start), None)
            if placed is not None:  # "a girl holding a balloon above a dog": the balloon is placed
                return placed.i
        if g.pos_ in ("VERB", "AUX"):
            subject = next((c for c in g.children if c.dep_ in _SUBJECT_DEPS and c.i in entity_of), None)
            if subject is not None:
                return subject.i
        x = g
    return None


def _negation(doc, phrase: RelationPhrase) -> str:
    """The "not" of a negated relation phrase ("a cat that is not left of a dog", "a cat not next to a dog"):
    a negation on the phrase's words or on the verbs it hangs on, up to the first noun."""
    for x in (*(doc[i] for i in sorted(phrase.consumed)), *doc[phrase.start].ancestors):
        if x.i not in phrase.consumed and x.pos_ in _NOUNS:
            break
        neg = next((c for c in x.children if c.dep_ == "neg" or c.text.lower() in ("not", "never")), None)
        if neg is not None:
            return neg.text
    return ""


def _unframe(doc, i: int | None, entity_of: Mapping[int, Subject]) -> int | None:
    """"a photo of a cat to the left of a dog": the parser hangs the phrase on "photo"; the subject is
    what the picture shows, the noun after its "of"."""
    if i is None or doc[i].text.lower() not in FRAMING_NOUNS:
        return i
    of = _child(doc[i], "of")
    shown = _pobj(of) if of is not None else None
    return shown.i if shown is not None and shown.i in entity_of else i


def resolve_relations(doc, phrases: Sequence[RelationPhrase], entity_of: Mapping[int, Subject]
                      ) -> tuple[tuple[SpatialRelation, ...], tuple[str, ...]]:
    """Relations of the parsed phrases; ``entity_of`` maps token indices to the objects' Subjects.

    Returns the relations and notes for phrases that could not be used (no object, no subject,
    depth relations such as "in front of").
    """
    owner = {i: p for p in phrases for i in p.consumed}
    relations, notes = [], []
    tokens: list[tuple[int, int, RelationPhrase]] = []  # subject token, object token, phrase of each relation
    bare = []
    for phrase in phrases:
        if phrase.relation is None:
            notes.append(f"'{phrase.text}' is a depth relation, which STORM cannot guide "
                         f"(left, right, above, below, near only); it is ignored (a layout it should guide "
                         f"instead goes in the relations override, e.g. 'dog below car')")
            continue
        negator = _negation(doc, phrase)
        if negator:
            notes.append(f"'{phrase.text}' is negated ('{negator}'): STORM cannot guide 'not {phrase.relation}'; it is "
                         f"ignored (write the relation you want in the relations override, e.g. 'cat right of dog')")
            continue
        if phrase.bare:
            bare.append((phrase, _segment_subject(doc, phrase, entity_of)))
            continue
        obj = entity_of.get(phrase.object) if phrase.object is not None else None
        subject_token = _unframe(doc, _subject_token(doc, phrase, entity_of, owner), entity_of)
        subject = entity_of.get(subject_token) if subject_token is not None else None
        if obj is None or subject is None:
            missing = "object" if obj is None else "subject"
            notes.append(f"'{phrase.text}' has no {missing} noun in the parse; the relation is ignored "
                         f"(write it in the relations override, e.g. 'cat left of dog')")
        elif set(subject.positions) & set(obj.positions):
            notes.append(f"'{phrase.text}' relates '{subject.name}' to itself; ignored")
        else:
            relation = SpatialRelation(subject, phrase.relation, obj)
            if any({r.subject, r.object} == {subject, obj} for r in relations):
                relation = _reattach(relation, phrase, entity_of, notes)
            relations.append(relation)
            tokens.append((subject_token, phrase.object, phrase))
    relations += _coordinated(doc, relations, tokens, entity_of)
    for relation in _pair_sides(bare, entity_of, notes):
        if relation not in relations:
            relations.append(relation)
    return tuple(relations), tuple(notes)


def _coordinated(doc, relations: list[SpatialRelation], tokens, entity_of: Mapping[int, Subject]
                 ) -> list[SpatialRelation]:
    """Relations of coordinated objects: "a cat and a dog left of a bird" places both, "a cat left of a
    dog and a bird" both objects. A conjunct counts on the side of the phrase where it stands (the
    parser often hangs a coordinated object on the subject), and never when it has a relation of its own."""
    related = {x.positions for r in relations for x in (r.subject, r.object)}
    own = {i for i, e in entity_of.items() if e.positions in related}
    out: list[SpatialRelation] = []
    for relation, (s, o, phrase) in zip(list(relations), tokens, strict=True):
        if entity_of.get(s) != relation.subject or entity_of.get(o) != relation.object:
            continue  # reattached: not the parse's pair
        group_s = [c.i for c in doc[s].conjuncts if c.i in entity_of and c.i not in own]
        group_s += [c.i for c in doc[s].children if c.dep_ == "appos" and c.i > o and c.i in entity_of  # misparse:
                    and c.i not in own and c.left_edge.i > 0 and doc[c.left_edge.i - 1].dep_ == "cc"]  # "... and a bird"
        group_o = [c.i for c in doc[o].conjuncts if c.i in entity_of and c.i not in own]
        subjects = [s] + [i for i in group_s if i < phrase.start]
        objects = [o] + [i for i in group_o if i > phrase.start] + [i for i in group_s if i > o]
        for i in subjects:
            for j in objects:
                new = SpatialRelation(entity_of[i], relation.relation, entity_of[j])
                if (i, j) != (s, o) and not set(new.subject.positions) & set(new.object.positions) \
                        and not any({r.subject, r.object} == {new.subject, new.object} for r in relations + out):
                    out.append(new)
    return out


def _reattach(relation: SpatialRelation, phrase: RelationPhrase, entity_of: Mapping[int, Subject],
              notes: list[str]) -> SpatialRelation:
    """A second phrase between the same two objects is usually a misattached one ("a ball left of a box
    and a cube right of the box": the parser hangs "right of" on "ball"); use the nearest object before
    the phrase instead, when there is another one."""
    before = [entity_of[i] for i in sorted(entity_of) if i < phrase.start]
    nearest = next((s for s in reversed(before) if s not in (relation.subject, relation.object)), None)
    if nearest is None or relation.subject not in before or before.index(nearest) < before.index(relation.subject):
        return relation
    moved = SpatialRelation(nearest, relation.relation, relation.object)
    notes.append(f"the parser attached '{phrase.text}' to '{relation.subject.name}', which already has a relation "
                 f"to '{relation.object.name}'; read as '{moved.describe()}'")
    return moved


def rule_relations(words: Sequence[str], nouns: Sequence[tuple[int, Subject]]
                   ) -> tuple[tuple[SpatialRelation, ...], tuple[str, ...]]:
    """Relations by word patterns (no parser): the subject of a phrase is the nearest noun before it,
    the object the first noun after it; ``nouns`` holds ``(word index, Subject)`` in prompt order."""
    relations, notes = [], []
    for start, end, relation in match_phrases(words):
        text = " ".join(words[start:end])
        before = [s for i, s in nouns if i < start]
        after = [s for i, s in nouns if i >= end]
        if relation is None:
            notes.append(f"'{text}' is a depth relation, which STORM cannot guide; it is ignored")
        elif not before or not after:
            notes.append(f"'{text}' has no {'subject' if not before else 'object'} noun; the relation is ignored")
        else:
            relations.append(SpatialRelation(before[-1], relation, after[0]))
    return tuple(relations), tuple(notes)

