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
* quality tags and style words are never objects (see :func:`storm_ops.prompt.filters.tag_tokens`): nouns of ``STYLE_NOUNS``
  ("masterpiece", "bokeh", "lighting", "dslr", "artstation"), words with digits ("8k"), framing nouns
  with an "of" ("a photo of a cat"), and every word of a tag phrase: a comma-separated phrase without
  a determiner that holds a style word ("volumetric lighting", "award winning photo", "depth of
  field", "white background") or names an artist ("by greg rutkowski").

Without spaCy a rule-based fallback handles plain lists ("a red crown and a golden strawberry").
"""

from __future__ import annotations

from ..errors import StormError
from ..tokens.layout import Subject, TokenLayout
from . import nlp, relations
from .filters import (
    NOT_ENGLISH_NOTE,
    NOUN_POS,
    STYLE_NOUNS,
    STYLE_WORDS,
    is_digit_tag,
    looks_english,
    negated_nouns,
    negator,
    tag_tokens,
)
from .noun_phrases import (
    MOD_LABELS,
    add_modifiers,
    adjective_noun,
    bind_linearly,
    collect_modifiers,
    compound_parts,
    copula_subjects,
    first_mention,
    heads_phrase,
    is_attribute,
    noun_tail,
)
from .overrides import validate_relations
from .parsed import BindingSet, PromptAnalysis

PARSERS = ("auto", "spacy", "rules")
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
    heads = [t for t in doc if (t.pos_ in NOUN_POS or adjective_noun(t)) and t.i not in consumed
             and heads_phrase(t, consumed)]
    notes += [f"'{t.text}' (parsed as an adjective) ends its noun phrase: read as a noun" for t in heads
              if t.pos_ not in NOUN_POS]
    head_ids = {t.i for t in heads}
    entity_of: dict[int, Subject] = {}
    entities: list[Subject] = []
    parts_of: dict[int, set[int]] = {}
    for head in heads:
        tail = noun_tail(head, head_ids | consumed)
        parts = sorted(compound_parts(head, head_ids | consumed) | {head.i} | ({tail} if tail is not None else set()))
        words = [w for i in parts for w in aligned[i]]
        if not aligned[head.i]:
            notes.append(f"'{head.text}' was not found in the CLIP tokens; it is left out")
            continue
        subject = nlp.word_subject(layout, list(dict.fromkeys(words)))
        earlier = first_mention(head, subject, entities)
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
            found = collect_modifiers(head.children, skip)
            add_modifiers(modifiers, entity_of[head.i], [i for i in found if i not in parts_of[head.i]])
    for aux in doc:
        if aux.pos_ == "AUX" and aux.dep_ not in MOD_LABELS:
            subjects = copula_subjects(aux, entity_of)
            predicate = [c for c in aux.children if c.dep_ in MOD_LABELS and c.pos_ not in ("AUX", "VERB")]
            if subjects and predicate:
                found = collect_modifiers(predicate, skip, direct=True)
                for subject in subjects:
                    add_modifiers(modifiers, subject, found)

    bind_linearly(doc, modifiers, entity_of, set(skip) | set(entity_of))
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


def _spans(indices: list[int]) -> list[tuple[int, int]]:
    """Runs of consecutive indices as ``(start, end)``."""
    spans: list[list[int]] = []
    for i in indices:
        if spans and spans[-1][1] == i:
            spans[-1][1] = i + 1
        else:
            spans.append([i, i + 1])
    return [(a, b) for a, b in spans]


def _finish(text, layout, entities, bindings, rels, method, notes) -> PromptAnalysis:
    if not entities:
        notes.append("no nouns found: nothing to guide (write the subjects or bindings by hand)")
    elif not bindings:
        notes.append("no modifiers found: no attribute bindings (SynGen has nothing to bind)")
    try:
        validate_relations(rels)
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
