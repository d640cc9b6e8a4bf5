"""Spatial relations from hand-built parses, word patterns and user overrides, and their validation."""

import pytest
from test_prompt_analysis import analyze, clip_of

from storm_ops.errors import StormError
from storm_ops.prompt.analysis import analyze_rules
from storm_ops.prompt.overrides import parse_relation_override, validate_relations
from storm_ops.prompt.parsed import SpatialRelation
from storm_ops.prompt.relations import match_phrases
from storm_ops.tokens.layout import Subject


def relations_of(analysis):
    """``"cat:2 left dog:8; ..."``."""
    def word(s):
        return f"{s.name}:{','.join(map(str, s.positions))}"
    return "; ".join(f"{word(r.subject)} {r.relation} {word(r.object)}" for r in analysis.relations)


# ------------------------------------------------------------------------------- word patterns
@pytest.mark.parametrize("words", [
    "a laptop and a bright stopwatch", "a linear overcoat", "lefty underwear nearby", "a topiary overhead",
    "a red top and a left shoe", "the right answer", "a bright upright piano",
])
def test_words_that_contain_relation_words_are_not_relations(words):
    assert match_phrases(words.split()) == []


def test_phrases_match_whole_words_longest_first():
    assert match_phrases("a cat to the left of a dog".split()) == [(2, 6, "left")]
    assert match_phrases("a cat left of a dog".split()) == [(2, 4, "left")]
    assert match_phrases("a mouse on the right side of a keyboard".split()) == [(2, 7, "right")]
    assert match_phrases("a laptop on top of a desk".split()) == [(2, 5, "above")]
    assert match_phrases("a lamp next to a sofa under a shelf".split()) == [(2, 4, "near"), (6, 7, "below")]
    assert match_phrases("a dog in front of a car".split()) == [(2, 5, None)]


def test_rule_relations_chain_and_roles():
    a = analyze_rules("", clip_of("a cat left of a dog left of a bird"))
    assert relations_of(a) == "cat:2 left dog:6; dog:6 left bird:10"
    a = analyze_rules("", clip_of("a bright lamp to the right of a linear sofa"))
    assert relations_of(a) == "lamp:3 right sofa:10"
    a = analyze_rules("", clip_of("a dog behind a car"))
    assert a.relations == () and any("depth relation" in n for n in a.notes)


# ------------------------------------------------------------------------------------ parses
def test_subject_and_object_roles_follow_the_parse():
    a = analyze("a/DET/det/1 dog/NOUN/ROOT/1 to/ADP/prep/1 the/DET/det/4 right/NOUN/pobj/2 of/ADP/prep/4 "
                "a/DET/det/7 cat/NOUN/pobj/5")
    assert relations_of(a) == "dog:2 right cat:8"
    assert [e.name for e in a.entities] == ["dog", "cat"]  # "right" is not an object


def test_chains_on_nouns_and_on_relation_words():
    a = analyze("a/DET/det/1 cat/NOUN/ROOT/1 left/VERB/acl/1 of/ADP/prep/2 a/DET/det/5 dog/NOUN/pobj/3 "
                "left/VERB/acl/5 of/ADP/prep/6 a/DET/det/9 bird/NOUN/pobj/7")
    assert relations_of(a) == "cat:2 left dog:6; dog:6 left bird:10"
    # en_core_web_sm hangs the second phrase on the first "left": it still continues the chain
    a = analyze("a/DET/det/1 dog/NOUN/ROOT/1 to/ADP/prep/1 the/DET/det/4 left/NOUN/pobj/2 of/ADP/prep/4 "
                "a/DET/det/7 cat/NOUN/pobj/5 to/ADP/prep/4 the/DET/det/10 left/NOUN/pobj/8 of/ADP/prep/10 "
                "a/DET/det/13 horse/NOUN/pobj/11")
    assert relations_of(a) == "dog:2 left cat:8; cat:8 left horse:14"


def test_subjects_through_verbs_clauses_and_misparses():
    cases = {
        # "apple" parsed as a compound of the root "right"
        "an/DET/det/2 apple/NOUN/compound/2 right/NOUN/ROOT/2 of/ADP/prep/2 a/DET/det/5 banana/NOUN/pobj/3":
            "apple:2 right banana:6",
        "the/DET/det/1 cat/NOUN/nsubjpass/3 is/AUX/auxpass/3 left/VERB/ROOT/3 of/ADP/prep/3 the/DET/det/6 "
        "dog/NOUN/pobj/4": "cat:2 left dog:7",
        "a/DET/det/1 cat/NOUN/ROOT/1 that/PRON/nsubj/3 is/AUX/relcl/1 to/ADP/prep/3 the/DET/det/6 left/NOUN/pobj/4 "
        "of/ADP/prep/6 a/DET/det/9 dog/NOUN/pobj/7": "cat:2 left dog:10",
        "a/DET/det/1 dog/NOUN/ROOT/1 sitting/VERB/acl/1 next/ADV/advmod/2 to/ADP/prep/3 a/DET/det/6 cat/NOUN/pobj/4":
            "dog:2 near cat:7",
        "a/DET/det/1 cat/NOUN/ROOT/1 above/ADP/prep/1 a/DET/det/4 dog/NOUN/pobj/2 and/CCONJ/cc/2 below/ADP/conj/2 "
        "a/DET/det/8 bird/NOUN/pobj/6": "cat:2 above dog:5; cat:2 below bird:9",
        "a/DET/det/1 laptop/NOUN/ROOT/1 on/ADP/prep/1 top/NOUN/pobj/2 of/ADP/prep/3 a/DET/det/6 desk/NOUN/pobj/4":
            "laptop:2 above desk:7",
        "a/DET/det/1 mouse/NOUN/ROOT/1 to/ADP/prep/1 the/DET/det/5 left/ADJ/amod/5 side/NOUN/pobj/2 of/ADP/prep/5 "
        "a/DET/det/8 keyboard/NOUN/pobj/6": "mouse:2 left keyboard:9",
        # the phrase hangs on "photo": the subject is what the photo shows
        "a/DET/det/1 photo/NOUN/ROOT/1 of/ADP/prep/1 a/DET/det/4 cat/NOUN/pobj/2 to/ADP/prep/1 the/DET/det/7 "
        "left/NOUN/pobj/5 of/ADP/prep/7 a/DET/det/10 dog/NOUN/pobj/8": "cat:5 left dog:11",
    }
    for spec, expected in cases.items():
        a = analyze(spec)
        assert relations_of(a) == expected, spec
        assert not {"left", "right", "top", "side", "next"} & {e.name for e in a.entities}


def test_unusable_phrases_become_notes():
    a = analyze("a/DET/det/1 dog/NOUN/ROOT/1 in/ADP/prep/1 front/NOUN/pobj/2 of/ADP/prep/3 a/DET/det/6 car/NOUN/pobj/4")
    assert a.relations == () and [e.name for e in a.entities] == ["dog", "car"]
    assert any("'in front of' is a depth relation" in n for n in a.notes)
    a = analyze("a/DET/det/1 cat/NOUN/ROOT/1 to/ADP/prep/1 the/DET/det/4 left/NOUN/pobj/2")
    assert a.relations == () and any("'to the left' places 'cat' but no object is placed on the right" in n
                                     for n in a.notes)


def test_a_second_phrase_on_the_same_pair_is_reattached():
    # "a red ball to the left of a blue box and a green cube to the right of the box" (en_core_web_sm parse)
    a = analyze("a/DET/det/2 red/ADJ/amod/2 ball/NOUN/ROOT/2 to/ADP/prep/2 the/DET/det/5 left/NOUN/pobj/3 "
                "of/ADP/prep/5 a/DET/det/9 blue/ADJ/amod/9 box/NOUN/pobj/6 and/CCONJ/cc/9 a/DET/det/13 "
                "green/ADJ/amod/13 cube/NOUN/conj/9 to/ADP/prep/2 the/DET/det/16 right/NOUN/pobj/14 of/ADP/prep/16 "
                "the/DET/det/19 box/NOUN/pobj/17")
    assert relations_of(a) == "ball:3 left box:10; cube:14 right box:10"
    assert any("read as 'cube right of box'" in n for n in a.notes)
    mods = {b.noun.positions: b.modifiers for b in a.bindings}
    subject_mods, object_mods = mods[a.relations[1].subject.positions], mods[a.relations[1].object.positions]
    assert [m.name for m in subject_mods] == ["green"] and [m.name for m in object_mods] == ["blue"]


# ------------------------------------------------------------------------------------ override
LAYOUT = clip_of("a cat and a teddy bear and a dog and a dog")


def test_relation_override():
    rels = parse_relation_override("cat left of dog; the teddy bear above a cat\n dog#2 right dog, cat next to dog#2",
                                   LAYOUT)
    assert [(r.subject.positions, r.relation, r.object.positions) for r in rels] == [
        ((2,), "left", (9,)), ((5, 6), "above", (2,)), ((12,), "right", (9,)), ((2,), "near", (12,))]
    chain = parse_relation_override("cat to the left of dog left of teddy bear", LAYOUT)
    assert [r.describe() for r in chain] == ["cat left of dog", "dog left of teddy bear"]


@pytest.mark.parametrize("text, message", [
    ("cat dog", "'cat dog' has no relation word"),
    ("cat left of", "needs an object on each side \\(after it\\)"),
    ("left of dog", "needs an object on each side \\(before it\\)"),
    ("cat left of fish", "'fish' is not a word of the prompt. Prompt words: a, cat, and, teddy, bear, dog"),
    ("cat in front of dog", "'in front of' \\(depth\\) is not supported"),
    ("cat left of cat", "relates 'cat' to itself"),
    ("dog left of dog#2; dog#2 left of dog", "contradictory relations: 'dog left of dog#2' and 'dog#2 left of dog'"),
    ("cat left of dog, cat right of dog", "contradictory relations: 'cat left of dog' and 'cat right of dog'"),
    ("cat left of dog; dog left of teddy bear; teddy bear left of cat", "contradictory relations"),
    ("cat above dog; cat below dog", "contradictory relations: 'cat above dog' and 'cat below dog'"),
])
def test_relation_override_errors(text, message):
    with pytest.raises(StormError, match=message) as err:
        parse_relation_override(text, LAYOUT)
    assert err.value.input_name == "relations"


def test_validation_accepts_consistent_sets():
    cat, dog, bird = Subject("cat", (2,)), Subject("dog", (5,)), Subject("bird", (8,))
    validate_relations([])
    validate_relations([SpatialRelation(cat, "left", dog), SpatialRelation(dog, "right", cat),  # the same fact
                        SpatialRelation(cat, "near", dog), SpatialRelation(dog, "near", cat),
                        SpatialRelation(cat, "above", bird), SpatialRelation(dog, "left", bird)])
    with pytest.raises(StormError, match="has no object tokens"):
        validate_relations([SpatialRelation(cat, "left", Subject("dog", ()))])


def test_relation_and_binding_syntax_is_checked_without_a_prompt():
    from storm_ops.prompt.overrides import split_binding_override, split_relation_override

    assert split_relation_override("the cat to the left of a dog; bird above cat#2") == [
        ("cat", "left", "dog"), ("bird", "above", "cat#2")]
    assert split_binding_override("red, shiny -> crown\ngolden -> strawberry") == [
        ("red, shiny -> crown", ["red", "shiny"], "crown"), ("golden -> strawberry", ["golden"], "strawberry")]
    for bad, message in (("cat dog", "no relation word"), ("cat left of", "an object on each side"),
                         ("cat in front of dog", "depth"), ("cat#0 above dog", "count from 1")):
        with pytest.raises(StormError, match=message) as err:
            split_relation_override(bad)
        assert err.value.input_name == "relations"
    for bad, message in (("red crown", "modifier, modifier -> noun"), ("-> crown", "at least one modifier"),
                         ("red -> crown#0", "count from 1")):
        with pytest.raises(StormError, match=message) as err:
            split_binding_override(bad)
        assert err.value.input_name == "bindings"
