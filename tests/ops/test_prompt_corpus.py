"""The prompt-analysis regression corpus: its shape, and the scores the analysis must keep."""

from collections import Counter

import pytest

from harness.prompt_corpus import CORPUS, canonical, score
from harness.prompt_layout import clip_layout
from storm_ops.prompt import nlp
from storm_ops.prompt.analysis import analyze_prompt


def test_corpus_covers_every_category():
    counts = Counter(c.category for c in CORPUS)
    assert len(CORPUS) >= 150 and len({c.prompt for c in CORPUS}) == len(CORPUS)
    assert min(counts.values()) >= 8 and set(counts) >= {"tags", "natural", "long", "emphasis", "negation",
                                                         "relations", "slips", "non_english"}
    assert all(len(clip_layout(c.prompt).words) > 75 for c in CORPUS if c.category == "long")
    assert all("(" in c.prompt or "embedding:" in c.prompt for c in CORPUS if c.category == "emphasis")
    for case in CORPUS:
        names = {o for o in case.objects}
        assert all(noun in names for noun, _ in case.bindings), case.prompt
        assert all(s in names and o in names for s, _, o in case.relations), case.prompt


def test_relations_compare_in_canonical_form():
    assert canonical([("a", "right", "b")]) == canonical([("b", "left", "a")])
    assert canonical([("a", "near", "b")]) == canonical([("b", "near", "a")])
    assert canonical([("a", "below", "b")]) != canonical([("a", "above", "b")])


def test_layouts_follow_the_host_reading_of_weights_and_embeddings():
    words = [w.text for w in clip_layout("(a red:1.2) cat, embedding:bad, ((8k)) \\(dog\\)").words]
    assert words == ["a", "red", "cat", ",", "embedding", ":", "bad", ",", "8", "k", "(", "dog", ")"]
    assert len(clip_layout(" ".join(["cat"] * 80)).words) == 80


@pytest.mark.skipif(not nlp.available_pipelines(), reason="no spaCy English pipeline installed")
def test_scores_do_not_fall_below_the_recorded_ones():
    """The AFTER scores of scripts/score_prompt_analysis.py (en_core_web_sm), as floors."""
    table, rows = score(lambda text: analyze_prompt(text, clip_layout(text), parser="spacy"))
    overall = table["ALL"]
    assert overall["objects"] >= 0.93 and overall["bindings"] >= 0.97 and overall["relations"] >= 0.98
    assert overall["all"] >= 0.90 and overall["false_relations"] <= 2
    for category in ("negation", "relations", "slips", "non_english"):
        failing = [case.prompt for case, _, row in rows if case.category == category and not row["all"]]
        assert not failing, failing
