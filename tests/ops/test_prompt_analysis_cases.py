"""The prompt analysis on the real parser (en_core_web_sm or better) for prompts as people write them:
each test is one reported failure (quality tags, negation, relation subjects, coordination, frames,
punctuation, emphasis syntax, parser slips, other languages)."""

import pytest

from harness.prompt_corpus import canonical
from harness.prompt_layout import clip_layout
from storm_ops.prompt import nlp
from storm_ops.prompt.analysis import analyze_prompt

pytestmark = pytest.mark.skipif(not nlp.available_pipelines(), reason="no spaCy English pipeline installed")


def run(text):
    return analyze_prompt(text, clip_layout(text), parser="spacy")


def objects(a):
    return [e.name for e in a.entities]


def bindings(a):
    return {b.noun.name: sorted(m.name for m in b.modifiers) for b in a.bindings}


def relations(a):
    return canonical((r.subject.name, r.relation, r.object.name) for r in a.relations)


def rels(*triples):
    return canonical(tuple(t.split()) for t in triples)


def test_quality_and_style_tags_are_never_objects():
    a = run("a beautiful woman with long red hair in a green dress, masterpiece, best quality, 8k uhd, dslr, "
            "artstation, depth of field, volumetric lighting, bokeh, award winning photo, vivid colors")
    assert objects(a) == ["woman", "hair", "dress"]
    assert bindings(a) == {"woman": ["beautiful"], "hair": ["long", "red"], "dress": ["green"]}
    assert any(n.startswith("quality and style tags are not objects: ") and "'volumetric lighting'" in n
               for n in a.notes)
    a = run("a castle on a hill, fantasy art, digital painting, by greg rutkowski, trending on artstation")
    assert objects(a) == ["castle", "hill"] and a.bindings == ()
    a = run("a photo of a brown bear, close-up of a bee")
    assert objects(a) == ["bear", "bee"]


def test_negated_things_are_not_objects_and_negated_relations_are_not_guided():
    a = run("a cat but no dog")
    assert objects(a) == ["cat"]
    assert any("'dog' is negated ('no')" in n and "negative prompt" in n for n in a.notes)
    assert objects(run("a cat, not a dog")) == ["cat"]
    assert objects(run("a street with no cars or people")) == ["street"]
    assert objects(run("a cake without candles")) == ["cake"]
    a = run("a cat that is not to the left of a dog")
    assert objects(a) == ["cat", "dog"] and a.relations == ()  # never "cat left of dog"
    assert any("'to the left of' is negated ('not')" in n and "relations override" in n for n in a.notes)
    assert run("a dog that is not above a cat").relations == ()


def test_the_object_of_a_placing_verb_is_what_the_relation_places():
    a = run("a girl holding a red balloon above a white dog")
    assert relations(a) == rels("balloon above dog")
    assert relations(run("a man holding an umbrella above his head")) == rels("umbrella above head")
    assert relations(run("a chef putting a pie next to a cake")) == rels("pie near cake")
    assert relations(run("a little girl reading a book under a tree")) == rels("girl below tree")  # not placing


def test_coordinated_subjects_and_objects_give_every_pair():
    assert relations(run("a cat and a dog to the left of a bird")) == rels("cat left bird", "dog left bird")
    assert relations(run("a cat and a dog above a bird")) == rels("cat above bird", "dog above bird")
    assert relations(run("a cat to the left of a dog and a bird")) == rels("cat left dog", "cat left bird")
    assert relations(run("a sheep next to a cow and a pig")) == rels("sheep near cow", "sheep near pig")
    # a conjunct with a relation of its own is not coordinated into another one
    a = run("a red ball to the left of a blue box and a green cube to the right of the box")
    assert relations(a) == rels("ball left box", "cube right box")


def test_sides_of_the_picture_without_of_are_paired():
    a = run("a red car on the left and a blue bus on the right")
    assert relations(a) == rels("car left bus") and bindings(a) == {"car": ["red"], "bus": ["blue"]}
    a = run("on the left a cat, on the right a dog")
    assert relations(a) == rels("cat left dog") and a.bindings == ()  # "left" is no modifier of "cat"
    assert relations(run("a cup on the right and a plate on the left")) == rels("plate left cup")
    assert relations(run("on the left side a horse and on the right side a cow")) == rels("horse left cow")
    a = run("a cat on the left")
    assert a.relations == () and any("no object is placed on the right" in n and "override" in n for n in a.notes)


def test_depth_relations_are_reported_as_unsupported():
    for text in ("a dog in front of a car", "a man standing behind a tree"):
        a = run(text)
        assert a.relations == () and len(a.entities) == 2
        assert any("is a depth relation, which STORM cannot guide" in n for n in a.notes)
    a = run("a cat in front of a dog and to the left of a bird")
    assert relations(a) == rels("cat left bird") and any("'in front of' is a depth relation" in n for n in a.notes)


@pytest.mark.parametrize("text", ["a cat to the left of... a dog", "a cat... to the left of a dog",
                                  "a cat…to the left of … a dog", "a cat to the left of a dog...",
                                  "a cat . . . to the left of a dog"])
def test_runs_of_dots_keep_the_relation(text):
    assert relations(run(text)) == rels("cat left dog")
    assert nlp.clean_prompt("a cat... a dog") == "a cat, a dog"


def test_emphasis_and_embeddings_are_read_like_the_host():
    text = "(masterpiece:1.2), embedding:easynegative, a ((fluffy)) dog (next to:1.2) a (small:0.8) cat"
    a = run(text)
    assert objects(a) == ["dog", "cat"] and bindings(a) == {"dog": ["fluffy"], "cat": ["small"]}
    assert relations(a) == rels("dog near cat")
    cols = {e.name: e.positions for e in a.entities}
    words = [w.text for w in clip_layout(text).words]
    assert words[cols["dog"][0] - 1] == "dog" and words[cols["cat"][0] - 1] == "cat"


def test_parser_slips_on_pattern_words_and_unknown_nouns():
    a = run("a striped shirt and plaid pants")  # en_core_web_sm: "plaid" a noun, "striped" hung on "pants"
    assert objects(a) == ["shirt", "pants"] and bindings(a) == {"shirt": ["striped"], "pants": ["plaid"]}
    a = run("a backpack near a fire hydrant")  # en_core_web_sm: "hydrant" an adverb
    assert objects(a) == ["backpack", "fire hydrant"]
    assert relations(a) == canonical([("backpack", "near", "fire hydrant")])
    assert any("'hydrant' (parsed as adv) ends the noun phrase" in n for n in a.notes)
    assert objects(run("a fire hydrant on a street")) == ["fire hydrant", "street"]
    a = run("a room full of books, a dog asleep on a sofa")  # adjectives after a noun stay adjectives
    assert objects(a) == ["room", "books", "dog", "sofa"]
    a = run("a brown dog and a gray cat sleeping on a rug, cozy, warm light, 4k")  # "rug" tagged ADJ
    assert objects(a) == ["dog", "cat", "rug"] and any("'rug' (parsed as an adjective)" in n for n in a.notes)
    assert objects(run("a big, red dog")) == ["dog"] and bindings(run("a big, red dog")) == {"dog": ["big", "red"]}


@pytest.mark.parametrize("text", ["un gato rojo y un perro azul", "eine rote Katze neben einem blauen Hund",
                                  "un chat noir à gauche d'un chien blanc", "кошка слева от собаки",
                                  "一只红色的猫和一只蓝色的狗"])
def test_other_languages_give_no_objects_and_say_how_to_override(text):
    for parser in ("spacy", "rules"):
        a = analyze_prompt(text, clip_layout(text), parser=parser)
        assert a.entities == () and a.bindings == () and a.relations == ()
        assert any("does not look like English" in n and "subjects, bindings and relations inputs" in n
                   for n in a.notes)


def test_english_tag_lists_without_function_words_are_english():
    from storm_ops.prompt.filters import looks_english

    assert looks_english("1girl, solo, long hair, blue eyes, school uniform")
    assert looks_english("a café in Paris, crème brûlée on a table") and looks_english("")
    assert not looks_english("un gatto bianco sopra un tavolo") and not looks_english("un gato a la izquierda")
    assert looks_english("a cup of café au lait on a table")
