"""The prompt-analysis regression corpus: its shape, and the scores the analysis must keep."""

from collections import Counter

from harness.prompt_corpus import CORPUS, canonical
from harness.prompt_layout import clip_layout


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
