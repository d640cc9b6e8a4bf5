"""How a dependency parse is read for objects and their modifiers (SynGen, Rassin et al. 2023, Sec. 3.1):
which nouns head an object's phrase, which words the parser mis-tagged, and which modifier tokens belong
to which object (SynGen's expansion over its modifier labels, plus the words a parser hangs on the wrong
noun). Every function takes spaCy tokens and returns token indices; :mod:`.prompt_analysis` aligns them
to the model's columns.
"""

from __future__ import annotations

from ..tokens.layout import Subject
from . import relations
from .filters import NOUN_POS, STYLE_WORDS, is_separator

#: SynGen's modifier dependency labels.
MOD_LABELS = frozenset({"amod", "nmod", "compound", "npadvmod", "advmod", "acomp"})
#: Colour, material and pattern words: modifiers even where the parser calls them compound nouns.
ATTRIBUTE_WORDS = frozenset(
    "red orange yellow green blue purple violet pink brown black white gray grey gold golden silver beige "
    "cream ivory maroon navy teal turquoise cyan magenta lime lavender crimson scarlet olive tan khaki coral "
    "amber indigo burgundy peach mint rose charcoal bronze copper wooden wood metal metallic plastic glass "
    "stone brick marble rubber paper fabric ceramic steel iron leather velvet silk wool woolen cotton denim "
    "porcelain crystal concrete clay checkered striped spotted dotted plaid floral matte glossy transparent brass "
    "tin chrome".split())
#: Adjective endings: "iridescent", "luminous" are attributes even when tagged as compound nouns.
ATTRIBUTE_SUFFIXES = ("escent", "ous", "ful", "ive", "less", "ish")


def heads_phrase(token, consumed) -> bool:
    """Whether a noun heads an object's phrase (SynGen: its label is not a modifier label)."""
    nxt = token.doc[token.i + 1] if token.i + 1 < len(token.doc) else None
    if is_attribute(token.text) and nxt is not None and nxt.pos_ in NOUN_POS and nxt.i not in consumed:
        return False  # "plaid pants" (parsed as conjoined nouns): a pattern word before a noun describes it
    if token.dep_ not in MOD_LABELS:
        return True
    if token.head.i in consumed:  # "an apple right of a banana": apple is parsed as compound of "right"
        return True
    lo, hi = sorted((token.i, token.head.i))
    if any(t.text in (",", ";") for t in token.doc[lo:hi]):  # "riding a horse, photorealistic, 8k"
        return True
    if token.dep_ == "compound" or is_attribute(token.text):
        return False

    return any(c.dep_ in ("det", "cc", "poss", "nummod") for c in token.children)


def is_attribute(word: str) -> bool:
    """Whether a word names a colour, material, pattern or other attribute (see ``ATTRIBUTE_WORDS``)."""
    word = word.lower()
    return word in ATTRIBUTE_WORDS or word.endswith(ATTRIBUTE_SUFFIXES)


#: Words that may follow a noun without being one ("a cat asleep", "a dog outside").
_POSTNOMINAL = frozenset("asleep awake alone alive afloat ablaze aglow nearby outside inside outdoors indoors upstairs "
                         "downstairs together too again here there now away home abroad ahead apart aside around "
                         "galore overhead underwater full empty open closed visible far high low".split())
_PHRASE_ENDS = ("PUNCT", "ADP", "CCONJ", "SCONJ", "DET", "VERB", "AUX", "PRON", "PART")


def noun_tail(head, stop) -> int | None:
    """A word after a noun that the parser did not know as a noun and that ends the noun phrase: the real
    head of a compound ("a fire hydrant": en_core_web_sm tags "hydrant" as an adverb)."""
    doc = head.doc
    if head.i + 1 >= len(doc):
        return None
    tail = doc[head.i + 1]
    word = tail.text.lower()
    if tail.pos_ not in ("ADJ", "ADV") or tail.i in stop or not tail.is_alpha or word.endswith("ly") \
            or word in _POSTNOMINAL or word in relations.PREPOSITIONS or word in relations.FRAME_WORDS \
            or word in STYLE_WORDS or is_attribute(word) or tail.head.i > tail.i:
        return None
    if any(c.dep_ != "prep" or c.text.lower() == "of" for c in tail.children):  # "a room full of books"
        return None
    after = doc[tail.i + 1] if tail.i + 1 < len(doc) else None
    return tail.i if after is None or after.pos_ in _PHRASE_ENDS else None


def adjective_noun(token) -> bool:
    """A word the parser tagged as an adjective that stands alone between a determiner and a comma or the
    end: a noun it did not know ("sleeping on a rug, cozy": en_core_web_sm tags "rug" as an adjective)."""
    doc = token.doc
    if token.pos_ != "ADJ" or token.i == 0 or doc[token.i - 1].text.lower() not in ("a", "an", "the") \
            or is_attribute(token.text) or token.text.lower() in STYLE_WORDS or not token.is_alpha:
        return False
    after = doc[token.i + 1] if token.i + 1 < len(doc) else None
    if after is not None and not is_separator(after):
        return False
    return not (token.head.pos_ in NOUN_POS and token.head.i > token.i)  # "a big, red dog": big describes dog


def bind_linearly(doc, modifiers: dict, entity_of: dict, taken: set) -> None:
    """A word before a noun describes that noun: a prenominal modifier the parser hung on a later noun,
    or left unattached, is bound to the first object after it when only modifiers and "and" / "," stand
    between ("a striped shirt and plaid pants": en_core_web_sm hangs "striped" on "pants")."""
    owner = {i: positions for positions, found in modifiers.items() for i in found}
    for m in doc:
        if m.i in taken and m.i not in owner:
            continue
        if m.i not in owner and not (m.pos_ == "ADJ" or (m.pos_ in NOUN_POS and is_attribute(m.text))):
            continue
        target = None
        for t in doc[m.i + 1:]:
            if t.i in entity_of:
                target = entity_of[t.i]
                break
            if not (t.pos_ in ("ADJ", "ADV") or is_attribute(t.text) or t.text in (",", "-") or t.dep_ == "cc"):
                break
        if target is None or (m.i in owner and owner[m.i] == target.positions):
            continue
        if m.i in owner and not any(i > m.i for i, e in entity_of.items() if e.positions == owner[m.i]):
            continue  # a predicate after its noun ("the dog is red")
        if m.i in owner:
            modifiers[owner[m.i]].remove(m.i)
            if not modifiers[owner[m.i]]:
                del modifiers[owner[m.i]]
        modifiers.setdefault(target.positions, []).append(m.i)
        taken.add(m.i)


def compound_parts(head, stop) -> set[int]:
    parts = set()
    for child in head.children:
        if child.dep_ == "compound" and child.pos_ in NOUN_POS and child.i not in stop \
                and not is_attribute(child.text):
            parts |= {child.i} | compound_parts(child, stop)
    return parts


def first_mention(head, subject: Subject, entities: list[Subject]) -> Subject | None:
    """The earlier entity that a bare "the <noun>" refers to, if any."""
    children = list(head.children)
    if not any(c.dep_ == "det" and c.text.lower() == "the" for c in children):
        return None
    if any(c.dep_ in MOD_LABELS for c in children):
        return None
    name = subject.name.split("#")[0]
    return next((e for e in entities if e.name.split("#")[0] == name), None)


def collect_modifiers(start, skip, *, direct: bool = False) -> list[int]:
    """SynGen's expansion: modifier-labelled ``start`` tokens (all of them when ``direct``), then
    below them every modifier or ``conj`` token; tokens in ``skip`` and their subtrees are left out."""
    found, stack = [], []
    for child in start:
        if child.i not in skip and (direct or child.dep_ in MOD_LABELS):
            found.append(child.i)
            stack.extend(child.children)
    while stack:
        node = stack.pop()
        if node.i not in skip and node.pos_ not in ("AUX",) and (node.dep_ in MOD_LABELS or node.dep_ == "conj"):
            found.append(node.i)
            stack.extend(node.children)
    return found


def copula_subjects(aux, entity_of) -> list[Subject]:
    """Subjects of a copula: its nominal subjects and their conjuncts, or the noun a relative clause
    describes ("a car that is red")."""
    tokens = [c for c in aux.children if c.dep_ in ("nsubj", "nsubjpass")]
    tokens += [c for t in tokens for c in t.conjuncts]
    if not any(t.i in entity_of for t in tokens) and aux.dep_ == "relcl":
        tokens = [aux.head]
    return list({entity_of[t.i].positions: entity_of[t.i] for t in tokens if t.i in entity_of}.values())


def add_modifiers(modifiers: dict, subject: Subject, found: list[int]) -> None:
    if found:
        modifiers.setdefault(subject.positions, []).extend(found)
