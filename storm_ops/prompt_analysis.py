"""Prompt analysis: objects, SynGen modifier sets and spatial relations, aligned to CLIP columns.

With spaCy (the default when an English pipeline is installed) the modifier sets follow the
extractors of SynGen's official code (Rassin et al., NeurIPS 2023): (a) every noun collects its
children labelled ``amod, nmod, compound, npadvmod, advmod, acomp`` and, below them, further such
labels and ``conj`` ("a red and blue table" binds red and blue to table); (b) a copula binds its
predicate to its subject ("the dog is red"). SynGen's extractor (c) is not used (it stops after
the first noun). Choices beyond SynGen:

* an object is a noun with its noun-noun compounds: "teddy bear" is one entity whose columns are
  both words, and the compound is not listed as a modifier of itself (SynGen would bind "teddy" to
  "bear"; the set's columns are the same). Colour, material and pattern words are modifiers even
  when the parser labels them ``compound`` ("a red teddy bear", "a cream sofa");
* a noun labelled as a modifier but heading its own noun phrase (a determiner or a coordinating
  word of its own: "a man wearing a blue shirt and red shoes", where ``en_core_web_sm`` makes
  "shirt" an ``nmod`` of "shoes") is an object of its own, not a modifier;
* a repeated noun with "the" and nothing else ("a frog ..., a bird above the frog") is the same
  object as its first mention;
* a noun attached across a comma heads its own phrase ("riding a horse, photorealistic, 8k"), and
  words with digits ("4k", "8k") are quality tags, not objects;
* the words of relation phrases ("next", "left", "top") are neither objects nor modifiers;
* quality tags and style words are never objects (see :func:`storm_ops.prompt_filters.tag_tokens`): nouns of ``STYLE_NOUNS``
  ("masterpiece", "bokeh", "lighting", "dslr", "artstation"), words with digits ("8k"), framing nouns
  with an "of" ("a photo of a cat"), and every word of a tag phrase: a comma-separated phrase without
  a determiner that holds a style word ("volumetric lighting", "award winning photo", "depth of
  field", "white background") or names an artist ("by greg rutkowski").

Without spaCy a rule-based fallback handles plain lists ("a red crown and a golden strawberry").
"""

from __future__ import annotations

from . import nlp, relations
from .errors import StormError
from .parsed_prompt import BindingSet, PromptAnalysis
from .prompt_filters import (
    NOT_ENGLISH_NOTE,
    NOUN_POS,
    STYLE_NOUNS,
    STYLE_WORDS,
    is_digit_tag,
    is_separator,
    looks_english,
    negated_nouns,
    negator,
    tag_tokens,
)
from .subjects import parse_word_reference, resolve_word
from .token_layout import Subject, TokenLayout

PARSERS = ("auto", "spacy", "rules")
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
_DETERMINERS = frozenset("a an the some another this that these those my his her its our their your one two "
                         "three four five several many few".split())
_BREAKS = frozenset("and with or & plus , ; . : ! ? | on in of at by from to into onto for inside outside behind "
                    "against along across around through between among without within is are".split())
_COPULAS = ("is", "are")
_MAX_RULE_WORDS = 4
FALLBACK_NOTE = ("rule-based fallback (no spaCy pipeline installed): only plain 'adjective noun and adjective "
                 "noun' prompts are understood. For a real parse: ")


def analyze_prompt(text: str, layout: TokenLayout, *, parser: str = "auto", pipeline: str | None = None
                   ) -> PromptAnalysis:
    """Analyse a prompt tokenised as ``layout``.

    Parameters
    ----------
    text : str
        The prompt as typed (ComfyUI weights such as ``(red:1.2)`` are allowed).
    layout : TokenLayout
        Its tokenisation by the model's own CLIP tokenizer; every word found is given by its columns.
    parser : {"auto", "spacy", "rules"}
        ``"auto"`` uses spaCy when an English pipeline is installed, else the rules (with a note).
    pipeline : str, optional
        spaCy pipeline to load (``"en_core_web_trf"``); default: the best installed one.

    Raises
    ------
    NoParserError
        ``parser="spacy"`` (or a named ``pipeline``) and no such pipeline is installed.
    """
    if parser not in PARSERS:
        raise StormError(f"unknown parser {parser!r}; use one of {PARSERS}", input_name="parser")
    cleaned = nlp.clean_prompt(text)
    english = looks_english(cleaned)
    if parser == "rules":
        return analyze_rules(text, layout) if english else _not_english(text, layout, "rules")
    try:
        model, name = nlp.load_pipeline(pipeline)
    except nlp.NoParserError:
        if parser == "spacy" or pipeline:
            raise
        if not english:
            return _not_english(text, layout, "rules")
        return analyze_rules(text, layout, notes=(FALLBACK_NOTE + nlp.install_hint(),))
    if not english:
        return _not_english(text, layout, f"spacy:{name}")
    return analyze_parsed(text, layout, model(cleaned), method=f"spacy:{name}")


def _not_english(text: str, layout: TokenLayout, method: str) -> PromptAnalysis:
    """No objects from a prompt the English parser cannot read, and a note on the override inputs."""
    return _finish(text, layout, [], [], [], method, [NOT_ENGLISH_NOTE])


def analyze_parsed(text: str, layout: TokenLayout, doc, *, method: str = "spacy") -> PromptAnalysis:
    """Analysis of an already parsed prompt (a spaCy ``Doc`` of the cleaned prompt)."""
    notes: list[str] = []
    aligned = nlp.align_words([t.text for t in doc], layout)
    phrases = relations.find_relation_phrases(doc)
    consumed = frozenset(i for p in phrases for i in p.consumed)

    tags = tag_tokens(doc)
    negated = negated_nouns(doc)
    for i in sorted(negated):
        if doc[i].dep_ != "compound":
            notes.append(f"'{doc[i].text}' is negated ('{negator(doc[i])}'): it is not an object (guidance cannot make "
                         f"a thing absent; put '{doc[i].text}' in the negative prompt)")
    consumed = consumed | tags | negated
    heads = [t for t in doc if (t.pos_ in NOUN_POS or _adjective_noun(t)) and t.i not in consumed
             and _heads_phrase(t, consumed)]
    notes += [f"'{t.text}' (parsed as an adjective) ends its noun phrase: read as a noun" for t in heads
              if t.pos_ not in NOUN_POS]
    head_ids = {t.i for t in heads}
    entity_of: dict[int, Subject] = {}
    entities: list[Subject] = []
    parts_of: dict[int, set[int]] = {}
    for head in heads:
        tail = _noun_tail(head, head_ids | consumed)
        parts = sorted(_compound_parts(head, head_ids | consumed) | {head.i} | ({tail} if tail is not None else set()))
        words = [w for i in parts for w in aligned[i]]
        if not aligned[head.i]:
            notes.append(f"'{head.text}' was not found in the CLIP tokens; it is left out")
            continue
        subject = nlp.word_subject(layout, list(dict.fromkeys(words)))
        earlier = _first_mention(head, subject, entities)
        if earlier is not None:
            notes.append(f"'the {head.text}' at columns {list(subject.positions)} is taken as the "
                         f"'{earlier.name}' at {list(earlier.positions)}")
            subject = earlier
        else:
            entities.append(subject)
        parts_of[head.i] = set(parts)
        entity_of.update((i, subject) for i in parts)
        if tail is not None:
            notes.append(f"'{doc[tail].text}' (parsed as {doc[tail].pos_.lower()}) ends the noun phrase of "
                         f"'{head.text}': read as the noun '{subject.name}'")

    modifiers: dict[tuple[int, ...], list[int]] = {}
    skip = consumed | head_ids
    for head in heads:
        if head.i in parts_of:
            found = _collect(head.children, skip)
            _bind(modifiers, entity_of[head.i], [i for i in found if i not in parts_of[head.i]])
    for aux in doc:
        if aux.pos_ == "AUX" and aux.dep_ not in MOD_LABELS:
            subjects = _copula_subjects(aux, entity_of)
            predicate = [c for c in aux.children if c.dep_ in MOD_LABELS and c.pos_ not in ("AUX", "VERB")]
            if subjects and predicate:
                found = _collect(predicate, skip, direct=True)
                for subject in subjects:
                    _bind(modifiers, subject, found)

    _bind_linearly(doc, modifiers, entity_of, set(skip) | set(entity_of))
    by_positions = {e.positions: e for e in entities}
    bindings, bound = [], set()
    for positions, found in sorted(modifiers.items()):
        mods, used = [], set(positions)
        for i in sorted(set(found)):
            bound.add(i)
            mod = nlp.word_subject(layout, aligned[i]) if aligned[i] else None
            if mod is None or used & set(mod.positions):
                where = "in the CLIP tokens" if mod is None else "apart from its noun's tokens"
                notes.append(f"modifier '{doc[i].text}' was not found {where}; it is left out")
                continue
            mods.append(mod)
            used.update(mod.positions)
        if mods:
            bindings.append(BindingSet(by_positions[positions], tuple(mods)))
    if tags:
        notes.append("quality and style tags are not objects: " + ", ".join(
            f"'{doc[lo:hi].text}'" for lo, hi in _spans(sorted(tags))))
    attached = bound | consumed | set(entity_of)
    for t in doc:
        if t.pos_ == "ADJ" and t.i not in attached:
            notes.append(f"'{t.text}' is not attached to any noun by the parser; it is not bound "
                         f"(write the binding in the override, e.g. '{t.text} -> <noun>')")

    rels, rel_notes = relations.resolve_relations(doc, phrases, entity_of)
    return _finish(text, layout, entities, bindings, rels, method, notes + list(rel_notes))


def _heads_phrase(token, consumed) -> bool:
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


def _spans(indices: list[int]) -> list[tuple[int, int]]:
    """Runs of consecutive indices as ``(start, end)``."""
    spans: list[list[int]] = []
    for i in indices:
        if spans and spans[-1][1] == i:
            spans[-1][1] = i + 1
        else:
            spans.append([i, i + 1])
    return [(a, b) for a, b in spans]


def is_attribute(word: str) -> bool:
    """Whether a word names a colour, material, pattern or other attribute (see ``ATTRIBUTE_WORDS``)."""
    word = word.lower()
    return word in ATTRIBUTE_WORDS or word.endswith(ATTRIBUTE_SUFFIXES)


#: Words that may follow a noun without being one ("a cat asleep", "a dog outside").
_POSTNOMINAL = frozenset("asleep awake alone alive afloat ablaze aglow nearby outside inside outdoors indoors upstairs "
                         "downstairs together too again here there now away home abroad ahead apart aside around "
                         "galore overhead underwater full empty open closed visible far high low".split())
_PHRASE_ENDS = ("PUNCT", "ADP", "CCONJ", "SCONJ", "DET", "VERB", "AUX", "PRON", "PART")


def _noun_tail(head, stop) -> int | None:
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


def _adjective_noun(token) -> bool:
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


def _bind_linearly(doc, modifiers: dict, entity_of: dict, taken: set) -> None:
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


def _compound_parts(head, stop) -> set[int]:
    parts = set()
    for child in head.children:
        if child.dep_ == "compound" and child.pos_ in NOUN_POS and child.i not in stop \
                and not is_attribute(child.text):
            parts |= {child.i} | _compound_parts(child, stop)
    return parts


def _first_mention(head, subject: Subject, entities: list[Subject]) -> Subject | None:
    """The earlier entity that a bare "the <noun>" refers to, if any."""
    children = list(head.children)
    if not any(c.dep_ == "det" and c.text.lower() == "the" for c in children):
        return None
    if any(c.dep_ in MOD_LABELS for c in children):
        return None
    name = subject.name.split("#")[0]
    return next((e for e in entities if e.name.split("#")[0] == name), None)


def _collect(start, skip, *, direct: bool = False) -> list[int]:
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


def _copula_subjects(aux, entity_of) -> list[Subject]:
    """Subjects of a copula: its nominal subjects and their conjuncts, or the noun a relative clause
    describes ("a car that is red")."""
    tokens = [c for c in aux.children if c.dep_ in ("nsubj", "nsubjpass")]
    tokens += [c for t in tokens for c in t.conjuncts]
    if not any(t.i in entity_of for t in tokens) and aux.dep_ == "relcl":
        tokens = [aux.head]
    return list({entity_of[t.i].positions: entity_of[t.i] for t in tokens if t.i in entity_of}.values())


def _bind(modifiers: dict, subject: Subject, found: list[int]) -> None:
    if found:
        modifiers.setdefault(subject.positions, []).extend(found)


def _finish(text, layout, entities, bindings, rels, method, notes) -> PromptAnalysis:
    if not entities:
        notes.append("no nouns found: nothing to guide (write the subjects or bindings by hand)")
    elif not bindings:
        notes.append("no modifiers found: no attribute bindings (SynGen has nothing to bind)")
    try:
        relations.validate_relations(rels)
    except StormError as err:
        notes.append(str(err))
    return PromptAnalysis(text, layout, tuple(entities), tuple(bindings), tuple(rels), method,
                          tuple(dict.fromkeys(notes)))


# ------------------------------------------------------------------------------ rule fallback
def analyze_rules(text: str, layout: TokenLayout, *, notes: tuple[str, ...] = ()) -> PromptAnalysis:
    """Rule-based analysis for plain prompts, on the CLIP words themselves (no alignment needed).

    The words are split at "and", "with", punctuation, prepositions and relation phrases; in each
    part the determiners are dropped, the last word is the noun and the earlier ones its modifiers.
    A part of colour/material words only ("a red" of "a red and blue table") gives its words to the
    next part, or after "is"/"are" to the previous noun. Parts with a determiner after a content word
    ("a dog chasing a cat") or more than four words are skipped with a note.
    """
    words = [w.text.lower() for w in layout.words]
    notes_out = list(notes)
    breaks = set()
    for start, end, _ in relations.match_phrases(words):
        breaks.update(range(start, end))
    segments, current = [], []
    for i, word in enumerate(words):
        if i in breaks or word in _BREAKS:
            segments.append((current, word))
            current = []
        else:
            current.append(i)
    segments.append((current, ""))

    nouns: list[int] = []
    mods_of: dict[int, list[int]] = {}
    carry: list[int] = []
    previous_break = ""
    tags: list[str] = []
    for part, next_break in segments:
        k = 0
        while k < len(part) and words[part[k]] in _DETERMINERS:
            k += 1
        content = part[k:]
        styled = [i for i in content if words[i] in STYLE_NOUNS or is_digit_tag(words[i])
                  or (k == 0 and words[i] in STYLE_WORDS)]
        if styled:  # "best quality", "volumetric lighting", "8k": tags, never objects
            tags.append(" ".join(words[i] for i in content))
            carry = []
        elif content and all(is_attribute(words[i]) for i in content) and previous_break in _COPULAS and nouns:
            mods_of.setdefault(nouns[-1], []).extend(content)  # "the dog is red"
        elif content and all(is_attribute(words[i]) for i in content) and next_break in ("and", ","):
            carry += content  # "a red and blue table"
        elif any(words[i] in _DETERMINERS for i in content) or len(content) > _MAX_RULE_WORDS:
            notes_out.append(f"'{' '.join(words[i] for i in part)}' is too complex for the rule-based fallback; "
                             "it is left out")
            carry = []
        elif content:
            nouns.append(content[-1])
            mods_of[content[-1]] = carry + content[:-1]
            carry = []
        previous_break = next_break

    subject_of = {i: nlp.word_subject(layout, [i]) for i in nouns}
    bindings = [BindingSet(subject_of[i], tuple(nlp.word_subject(layout, [m]) for m in mods_of[i]))
                for i in nouns if mods_of.get(i)]
    if tags:
        notes_out.append("quality and style tags are not objects: " + ", ".join(f"'{t}'" for t in tags))
    rels, rel_notes = relations.rule_relations(words, [(i, subject_of[i]) for i in nouns])
    return _finish(text, layout, list(subject_of.values()), bindings, rels, "rules", notes_out + list(rel_notes))


# ----------------------------------------------------------------------------- user override
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
