"""The prompt analysis on the real parser (en_core_web_sm or better) for prompts as people write them:
each test is one reported failure (quality tags, negation, relation subjects, coordination, frames,
punctuation, emphasis syntax, parser slips, other languages)."""

import pytest

from harness.prompt_corpus import canonical
from harness.prompt_layout import clip_layout
from storm_ops import nlp
from storm_ops.prompt_analysis import analyze_prompt

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
