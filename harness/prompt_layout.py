"""CLIP-like token layouts of prompts without ComfyUI or a tokenizer (for the analysis tests and the
prompt-analysis scorer).

:func:`clip_layout` reads a prompt the way ComfyUI's CLIP tokenizer does, closely enough for word
positions: ``(word:1.2)`` weights and ``(word)`` emphasis removed (``\\(`` kept), ``embedding:name``
kept as text (what the host does with an embedding it does not find; the harder case for the
analysis, whose parser never sees it), lower case, CLIP's pre-tokenizer split
(letters, single digits, runs of punctuation), one piece per word (``chec|kered`` in
:func:`pieces_layout` marks a split into pieces), 75 words per 77-column chunk.
"""

from __future__ import annotations

import re

from storm_ops.tokens.clip_vocab import clip_vocab_decoder
from storm_ops.tokens.layout import TokenLayout

START_ID, END_ID = 49406, 49407
CHUNK = 77
_WEIGHT = re.compile(r":\s*[-+]?(?:\d+\.?\d*|\.\d+)\s*\)")
_CLIP_SPLIT = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+|_", re.IGNORECASE)


def layout_of(pieces, chunks=None, pad_id=END_ID, chunk=CHUNK):
    """Build a layout the way the host tokenises: [start, pieces..., end, pad...] per chunk."""
    vocab = {}
    chunks = chunks or [pieces]
    ids = []
    for words in chunks:
        row = [START_ID] + [vocab.setdefault(p, 1000 + len(vocab)) for p in words] + [END_ID]
        row += [pad_id] * (chunk - len(row))
        ids += row
    inverse = {v: k for k, v in vocab.items()}
    return TokenLayout.from_ids(ids, clip_vocab_decoder(inverse), start_id=START_ID, end_id=END_ID,
                                chunk_length=chunk)


def pieces_layout(text: str) -> TokenLayout:
    """Layout of space-separated words, one piece each; ``chec|kered`` is one word of two pieces."""
    pieces = []
    for word in text.split():
        parts = word.split("|")
        pieces += [p for p in parts[:-1]] + [parts[-1] + "</w>"]
    return layout_of(pieces)


def host_text(text: str) -> str:
    """The text ComfyUI's tokenizer encodes: weights and emphasis brackets removed."""
    text = text.replace("\\(", "\0").replace("\\)", "\1")
    text = _WEIGHT.sub(" ", text)
    return text.replace("(", " ").replace(")", " ").replace("\0", "(").replace("\1", ")")


def clip_layout(text: str) -> TokenLayout:
    """CLIP-like layout of a prompt as typed (see the module docstring); long prompts take several chunks."""
    pieces = [w.lower() + "</w>" for w in _CLIP_SPLIT.findall(host_text(text))]
    per = CHUNK - 2
    chunks = [pieces[i:i + per] for i in range(0, len(pieces), per)] or [[]]
    return layout_of(pieces, chunks)
