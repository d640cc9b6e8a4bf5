"""Words of a prompt that name no object: quality tags and style words, negated nouns, other languages.

Image prompts carry tags ("masterpiece, 8k, volumetric lighting, by greg rutkowski"), negations ("a
street with no cars") and sometimes another language; :mod:`storm_ops.prompt.analysis` must take no
object, binding or relation from these. The filters read a spaCy ``Doc`` (or, for the language check,
the text) and are kept apart from the analysis itself so that each list of words has one home.
"""

from __future__ import annotations

import re
import unicodedata

from . import relations

#: spaCy parts of speech of an object word
NOUN_POS = ("NOUN", "PROPN")

#: Quality, medium, style, camera, lighting and composition words of image prompts. A noun among them is
#: never an object; a comma-separated phrase without a determiner that holds one is a tag phrase.
STYLE_WORDS = frozenset(
    "masterpiece masterpieces quality resolution res detail details detailed uhd hd fhd hdr dslr slr artstation "
    "deviantart pixiv behance cgsociety bokeh lighting light focus composition render rendering renders octane "
    "unreal engine vray redshift blender photography photo photograph photos wallpaper style styles aesthetic "
    "aesthetics exposure colors colours color colour tones tone grain contrast saturation sharpness shading "
    "depth art artwork painting drawing illustration sketch concept design view shot angle closeup macro lens mm "
    "poly anime manga cinematic photorealistic hyperrealistic realistic realism impressionism minimalism "
    "surrealism expressionism chiaroscuro watercolor watercolour gouache canvas hour award trending volumetric "
    "geographic portrait texture rim ultra highly epic vibrant vivid intricate professional 3d 2d cgi pbr "
    "sharp blurry bloom lut vignette filmic cinematography studio background backdrop still brushstrokes "
    "strokes".split())
#: Style nouns that are never objects, wherever they stand.
STYLE_NOUNS = frozenset(
    "masterpiece masterpieces quality resolution details uhd hd fhd hdr dslr artstation deviantart pixiv behance "
    "cgsociety bokeh lighting composition render rendering renders octane vray photography wallpaper style "
    "aesthetic aesthetics exposure cinematography".split())


def is_digit_tag(word: str) -> bool:
    """Words with digits ("4k", "8k", "1080p") are quality tags, not objects."""
    return any(c.isdigit() for c in word)


_SEPARATORS = frozenset(",;|!?")
_PHRASE_DETERMINERS = frozenset("a an the this that these those my his her its our their your some".split())


def is_separator(token) -> bool:
    text = token.text
    return token.pos_ == "PUNCT" and (text in _SEPARATORS or set(text) <= {".", "\u2026"})


def _is_framing(token) -> bool:
    """A noun that names the picture ("a photo of", "close-up of"), not a thing in it."""
    word = token.text.lower()
    if word == "up" and token.i >= 2 and token.doc[token.i - 2].text.lower() == "close":
        word = "closeup"
    return word in relations.FRAMING_NOUNS | {"closeup", "portrait"} and any(c.text.lower() == "of" for c in token.children)


def tag_tokens(doc) -> frozenset[int]:
    """Tokens that are quality tags or style words, never objects nor modifiers (see the module docstring)."""
    out: set[int] = set()
    segment: list = []
    for token in [*doc, None]:
        if token is not None and not is_separator(token):
            segment.append(token)
            continue
        words = [t for t in segment if not t.is_punct]
        bare = not any(t.text.lower() in _PHRASE_DETERMINERS or t.dep_ == "poss" for t in words)
        styled = any(t.text.lower() in STYLE_WORDS or is_digit_tag(t.text) for t in words)
        if words and bare and (styled or words[0].text.lower() == "by"):
            out.update(t.i for t in segment)
        for t in words:
            if t.text.lower() == "close" and [x.text.lower() for x in doc[t.i + 1:t.i + 3]] == ["-", "up"]:
                out.update((t.i, t.i + 1, t.i + 2))  # "close-up": framing, never an object
            if (t.pos_ in NOUN_POS and t.text.lower() in STYLE_NOUNS) or is_digit_tag(t.text) or _is_framing(t):
                out.add(t.i)
        segment = []
    return frozenset(out)


_NEGATORS = frozenset({"no", "not", "never", "without", "nor"})


def negator(token) -> str:
    """The word that negates a noun ("no", "not", "without"), or ``""``."""
    for x in (token, *token.ancestors):
        word = next((c.text.lower() for c in x.children if c.text.lower() in _NEGATORS and c.i < x.i
                     and c.dep_ in ("det", "neg", "advmod", "preconj")), "")
        before = token.doc[x.left_edge.i - 1] if x.left_edge.i > 0 else None
        if not word and before is not None and before.text.lower() in ("no", "not"):  # "a cat, not a dog"
            word = before.text.lower()
        if word:
            return word
        if x.dep_ == "pobj" and x.head.text.lower() == "without":
            return "without"
        if x.dep_ != "conj":
            return ""
    return ""


def negated_nouns(doc) -> frozenset[int]:
    """Nouns the prompt says are absent: "no dog", "not a dog", "without candles", "no cars or people"
    (with their compound parts)."""
    out = set()
    for t in doc:
        if t.pos_ in NOUN_POS and negator(t):
            out.add(t.i)
            out.update(c.i for c in t.subtree if c.dep_ == "compound")
    return frozenset(out)


NOT_ENGLISH_NOTE = ("the prompt does not look like English, and the parser reads English only: no objects, bindings or "
                    "relations were taken from it. Write them in the subjects, bindings and relations inputs "
                    "(e.g. subjects 'gato, perro'; bindings 'rojo -> gato'; relations 'gato left of perro'), or "
                    "translate the prompt")
_ENGLISH_WORDS = frozenset("a an the and of with on in at to is are near above below under over next behind beside "
                           "left right top front his her their its wearing holding sitting standing".split())
_FOREIGN_WORDS = frozenset("un una uno unos unas el los las y con del en sobre junto ein eine einem einen einer der die "
                           "das und mit neben auf im unter über le les des et avec sur à au aux du dans sous il lo gli "
                           "di della sopra sotto accanto e um uma com ao na no da do em la de al por para von vom zum "
                           "dem den".split())


def looks_english(text: str) -> bool:
    """Whether a prompt is (mostly) English: not when other languages' function words outnumber English
    ones ("un gato rojo a la izquierda"), nor when it has no English function word and mostly non-Latin
    letters ("кошка слева от собаки")."""
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return True
    words = re.findall(r"[^\W\d_]+", text.lower())
    english = sum(w in _ENGLISH_WORDS for w in words)
    foreign = sum(w in _FOREIGN_WORDS for w in words)
    latin = sum(1 for c in letters if c.isascii() or "LATIN" in unicodedata.name(c, ""))
    return english >= foreign if english or latin * 2 > len(letters) else False
