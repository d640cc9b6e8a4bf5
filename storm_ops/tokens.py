"""CLIP token layouts and subject-word resolution.

A prompt is encoded by ComfyUI as ``k`` chunks of 77 columns: ``[start, pieces..., end, pad...]``.
The cross-attention maps have one column per conditioning column (``T = 77 * k``), so a word of
the prompt is identified by the column indices of its BPE pieces. This module works on already
tokenised prompts (:class:`TokenLayout`); the ComfyUI layer builds layouts with the host's own
tokenizer, so the columns here are exactly the columns of the conditioning.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property

import torch

from .errors import StormError

START, WORD, END, PAD = "start", "word", "end", "pad"
TOKEN_KINDS = (START, WORD, END, PAD)
CLIP_CHUNK = 77

# Attend-and-Excite's end-token conventions for the softmax over tokens (Chefer et al. 2023,
# section 3.1, which drops the start token; the columns after the prompt follow the released code):
#   "sd1":   drop each chunk's start token and its last column (EOT and padding stay in), for a
#            tokenizer that pads with its end token (SD-1.x's CLIP-L; positions 1..75 of 77);
#   "words": keep only the prompt's word pieces, for tokenizers that pad with another token
#            (OpenCLIP in SD-2.x and SDXL, where the padding is not the EOT token).
# "auto" (a loss setting) means the layout's own ``end_tokens``, decided from its tokenizers.
END_TOKEN_CONVENTIONS = ("sd1", "words")
AUTO = "auto"


# ---------------------------------------------------------------------- CLIP BPE pieces
#: CLIP's end-of-word marker on the last BPE piece of a word (Radford et al. 2021 use the
#: byte-level BPE of GPT-2 with this suffix).
END_OF_WORD = "</w>"


def _byte_alphabet() -> dict[str, int]:
    """The byte-level BPE alphabet: each of the 256 byte values is written as one printable
    character (Radford et al. 2019, section 2.2). Printable Latin-1 bytes stand for themselves;
    the others are numbered upwards from U+0100 in byte order."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    extra = (b for b in range(256) if b not in printable)
    chars = {chr(b): b for b in printable}
    chars.update({chr(256 + n): b for n, b in enumerate(extra)})
    return chars


_BYTE_OF_CHAR = _byte_alphabet()


def clip_piece_text(piece: str) -> tuple[str, bool]:
    """The text of one CLIP vocabulary entry and whether it ends a word.

    Decodes the vocabulary string itself (``"cat</w>"`` -> ``("cat", True)``, ``"tira"`` ->
    ``("tira", False)``), so the result does not depend on the installed ``transformers``
    release (whose ``convert_tokens_to_string`` keeps ``</w>`` from version 5 on). Bytes of a
    multi-byte character split across pieces decode to U+FFFD in each piece.
    """
    ends_word = piece.endswith(END_OF_WORD)
    body = piece[: -len(END_OF_WORD)] if ends_word else piece
    if all(c in _BYTE_OF_CHAR for c in body):
        text = bytes(_BYTE_OF_CHAR[c] for c in body).decode("utf-8", errors="replace")
    else:  # not a byte-level piece (an added token): keep it as written
        text = body
    return text.strip(), ends_word


def clip_vocab_decoder(inv_vocab: dict[int, str]):
    """``decode(id) -> (text, ends_word)`` for :meth:`TokenLayout.from_ids` over a CLIP vocabulary
    ``{id: piece}`` (the tokenizer's ``get_vocab()`` inverted)."""

    def decode(token_id: int) -> tuple[str, bool]:
        piece = inv_vocab.get(token_id)
        return clip_piece_text(piece) if piece else (f"<{token_id}>", True)

    return decode


@dataclass(frozen=True)
class Piece:
    """One column of the tokenised prompt.

    Attributes
    ----------
    text : str
        Decoded text of the BPE piece without CLIP's end-of-word marker (``"cat"``, ``","``).
    kind : str
        ``"start"``, ``"word"``, ``"end"`` or ``"pad"``.
    ends_word : bool
        Whether the piece ends a word (CLIP's ``</w>`` suffix). Non-final pieces of a multi-piece
        word have ``ends_word=False``.
    """

    text: str
    kind: str = WORD
    ends_word: bool = True

    def __post_init__(self) -> None:
        if self.kind not in TOKEN_KINDS:
            raise StormError(f"unknown token kind {self.kind!r}; expected one of {TOKEN_KINDS}")


@dataclass(frozen=True)
class WordSpan:
    """A word of the prompt: its text and the columns of its pieces (in order)."""

    text: str
    positions: tuple[int, ...]


@dataclass(frozen=True)
class Subject:
    """A selected subject: a display name and the token columns whose maps represent it."""

    name: str
    positions: tuple[int, ...]


@dataclass(frozen=True)
class TokenLayout:
    """The columns of a tokenised prompt, ``T = len(pieces)``.

    Parameters
    ----------
    pieces : tuple of Piece, length T
        One entry per conditioning column, chunk after chunk.
    chunk_length : int
        Columns per CLIP chunk (77). ``T`` must be a multiple of it.
    """

    pieces: tuple[Piece, ...]
    chunk_length: int = CLIP_CHUNK
    #: the end-token convention of the tokenizer(s) that made the layout (what ``"auto"`` means)
    end_tokens: str = "sd1"
    #: the prompt's CLIP encoding ``(T, D)`` (float32, CPU) when the layout was made by encoding a
    #: prompt: lets a sampler or visualiser check that a conditioning is really this prompt's
    encoding: torch.Tensor | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.chunk_length < 3:
            raise StormError(f"chunk_length must be at least 3, got {self.chunk_length}")
        if not self.pieces or len(self.pieces) % self.chunk_length:
            raise StormError(
                f"a token layout needs a whole number of {self.chunk_length}-column chunks, "
                f"got {len(self.pieces)} columns"
            )
        if self.end_tokens not in END_TOKEN_CONVENTIONS:
            raise StormError(f"unknown end-token convention {self.end_tokens!r}; use one of {END_TOKEN_CONVENTIONS}")
        if self.encoding is not None and self.encoding.shape[0] != len(self.pieces):
            raise StormError(f"the encoding has {self.encoding.shape[0]} columns, the layout {len(self.pieces)}")

    @classmethod
    def from_ids(
        cls,
        ids: list[int | None],
        decode,
        *,
        start_id: int | None,
        end_id: int | None,
        chunk_length: int = CLIP_CHUNK,
        end_tokens: str = "sd1",
    ) -> TokenLayout:
        """Build a layout from token ids as the host's tokenizer returned them.

        Parameters
        ----------
        ids : list, length T
            Token ids chunk after chunk; ``None`` marks a column that is not a vocabulary token
            (a textual-inversion embedding vector).
        decode : callable
            ``decode(id) -> (text, ends_word)`` for a vocabulary id.
        start_id, end_id : int or None
            The tokenizer's start and end ids. In each chunk the first column is the start token
            when it equals ``start_id``; the first ``end_id`` after it is the end token and every
            later column is padding (whatever its id: SD-1 pads with ``end_id``, OpenCLIP with 0).
        end_tokens : str
            The end-token convention of the tokenizers (``"sd1"`` when every one pads with its end
            token, else ``"words"``).
        """
        pieces: list[Piece] = []
        for c in range(0, len(ids), chunk_length):
            seen_end = False
            for j, tid in enumerate(ids[c:c + chunk_length]):
                if seen_end:
                    pieces.append(Piece("", PAD, True))
                elif j == 0 and start_id is not None and tid == start_id:
                    pieces.append(Piece("<start>", START, True))
                elif end_id is not None and tid == end_id:
                    seen_end = True
                    pieces.append(Piece("<end>", END, True))
                elif tid is None:
                    pieces.append(Piece("<embedding>", WORD, True))
                else:
                    text, ends_word = decode(tid)
                    pieces.append(Piece(text, WORD, bool(ends_word)))
        return cls(tuple(pieces), chunk_length, end_tokens)

    # ------------------------------------------------------------------ views
    @property
    def length(self) -> int:
        """Number of columns ``T``."""
        return len(self.pieces)

    @property
    def num_chunks(self) -> int:
        return self.length // self.chunk_length

    @cached_property
    def word_positions(self) -> tuple[int, ...]:
        """Columns holding word pieces, in order."""
        return tuple(i for i, p in enumerate(self.pieces) if p.kind == WORD)

    @cached_property
    def words(self) -> tuple[WordSpan, ...]:
        """The prompt's words: consecutive word pieces up to one that ends a word."""
        spans: list[WordSpan] = []
        current: list[int] = []
        for i, p in enumerate(self.pieces):
            if p.kind != WORD:
                if current:  # a word cut by a chunk boundary still ends here
                    spans.append(self._span(current))
                    current = []
                continue
            current.append(i)
            if p.ends_word:
                spans.append(self._span(current))
                current = []
        if current:
            spans.append(self._span(current))
        return tuple(spans)

    def _span(self, positions: list[int]) -> WordSpan:
        return WordSpan("".join(self.pieces[i].text for i in positions), tuple(positions))

    def convention(self, setting: str = AUTO) -> str:
        """The end-token convention a loss setting means here (``"auto"``: this layout's own)."""
        return self.end_tokens if setting == AUTO else setting

    def softmax_mask(self, convention: str = AUTO) -> torch.Tensor:
        """Boolean mask ``(T,)`` of the columns that take part in A&E's softmax over tokens.

        ``"sd1"`` drops each chunk's first and last column; ``"words"`` keeps word pieces only;
        ``"auto"`` is the layout's own convention.
        """
        convention = self.convention(convention)
        if convention == "sd1":
            mask = torch.ones(self.length, dtype=torch.bool)
            mask[0::self.chunk_length] = False
            mask[self.chunk_length - 1::self.chunk_length] = False
        elif convention == "words":
            mask = torch.zeros(self.length, dtype=torch.bool)
            mask[list(self.word_positions)] = True
        else:
            raise StormError(
                f"unknown end-token convention {convention!r}; use one of {END_TOKEN_CONVENTIONS}"
            )
        return mask

    def describe(self) -> str:
        """One line per chunk listing ``index:piece`` for every word piece (``-`` marks a piece
        that continues into the next one)."""
        lines = []
        for c in range(self.num_chunks):
            lo = c * self.chunk_length
            items = [
                f"{i}:{p.text}{'' if p.ends_word else '-'}"
                for i, p in enumerate(self.pieces[lo:lo + self.chunk_length], start=lo)
                if p.kind == WORD
            ]
            prefix = f"chunk {c + 1}: " if self.num_chunks > 1 else ""
            lines.append(prefix + " ".join(items))
        return "\n".join(lines)


# ---------------------------------------------------------------------- subject selection
_OCCURRENCE = re.compile(r"^(?P<word>.+?)\s*#\s*(?P<n>\d+)$")


def _normalise(text: str) -> str:
    return "".join(text.lower().split())


def find_word(layout: TokenLayout, query: str, occurrence: int = 1) -> tuple[int, ...] | None:
    """Columns of the ``occurrence``-th match of ``query`` (one or more words) in the prompt.

    Matching is case-insensitive and compares the query, whitespace removed, with the text of
    consecutive words, so ``"teddy bear"``, multi-piece words (``"tiramisu"`` = ``tira`` +
    ``misu``) and words split by punctuation (``"dog's"``) all resolve. Returns ``None`` when
    there is no such occurrence.
    """
    target = _normalise(query)
    if not target:
        return None
    words = layout.words
    seen = 0
    for start in range(len(words)):
        text = ""
        for end in range(start, len(words)):
            text += words[end].text.lower()
            if not target.startswith(text):
                break
            if text == target:
                seen += 1
                if seen == occurrence:
                    return tuple(p for w in words[start:end + 1] for p in w.positions)
                break
    return None


def count_word(layout: TokenLayout, query: str) -> int:
    """How many times ``query`` occurs in the prompt (see :func:`find_word`)."""
    n = 0
    while find_word(layout, query, n + 1) is not None:
        n += 1
    return n


def parse_subject_spec(spec: str) -> list[str]:
    """Split a subject specification (``"cat, dog"``, ``"2, 5"``, ``"dog#2"``) into items.

    Items are separated by commas, semicolons or new lines; blanks are ignored.
    """
    return [item.strip() for item in re.split(r"[,;\n]", spec or "") if item.strip()]


def resolve_subjects(layout: TokenLayout, spec: str) -> tuple[Subject, ...]:
    """Turn a subject specification into token columns of ``layout``.

    Each item is a word or phrase of the prompt (``"cat"``, ``"teddy bear"``), a word with the
    occurrence to use (``"dog#2"`` = the second "dog"), or an explicit column index (``"5"``;
    column 0 is the start token, the first word piece is column 1).

    Raises
    ------
    StormError
        With ``input_name="subjects"``, naming the offending item and listing the prompt's
        tokens with their indices.
    """
    items = parse_subject_spec(spec)
    if not items:
        raise StormError(
            "no subjects given: enter the words of the prompt to guide, separated by commas "
            "(for example 'cat, dog'), or their token indices (for example '2, 5').\n"
            f"Prompt tokens: {layout.describe()}",
            input_name="subjects",
        )
    subjects: list[Subject] = []
    for item in items:
        subject = _resolve_item(layout, item)
        for other in subjects:
            if other.positions == subject.positions:
                raise StormError(
                    f"subject {item!r} selects the same tokens as {other.name!r}; to guide a "
                    f"repeated word use its occurrence, e.g. '{other.name.split('#')[0]}#2'",
                    input_name="subjects",
                )
        subjects.append(subject)
    return tuple(subjects)


def _resolve_item(layout: TokenLayout, item: str) -> Subject:
    listing = f"Prompt tokens: {layout.describe()}"
    if item.isdigit():
        index = int(item)
        if index >= layout.length:
            raise StormError(
                f"token index {index} is out of range: the prompt has {layout.length} columns and "
                f"its words sit at indices {_ranges(layout.word_positions)}.\n{listing}",
                input_name="subjects",
            )
        piece = layout.pieces[index]
        if piece.kind != WORD:
            raise StormError(
                f"token index {index} is the {piece.kind} token, not a word of the prompt; "
                f"pick one of the word indices.\n{listing}",
                input_name="subjects",
            )
        return Subject(f"{piece.text}@{index}", (index,))
    match = _OCCURRENCE.match(item)
    word, occurrence = (match["word"], int(match["n"])) if match else (item, 1)
    if occurrence < 1:
        raise StormError(f"{item!r}: occurrences count from 1", input_name="subjects")
    positions = find_word(layout, word, occurrence)
    if positions is None:
        count = count_word(layout, word)
        if count:
            raise StormError(
                f"{item!r}: the prompt contains {word!r} only {count} time(s).\n{listing}",
                input_name="subjects",
            )
        raise StormError(
            f"{word!r} is not a word of the prompt. Use words exactly as they appear in the "
            f"prompt, or token indices.\n{listing}",
            input_name="subjects",
        )
    return Subject(item, positions)


def _ranges(positions: tuple[int, ...]) -> str:
    if not positions:
        return "(none: the prompt is empty)"
    out, start, prev = [], positions[0], positions[0]
    for p in positions[1:] + (None,):
        if p is not None and p == prev + 1:
            prev = p
            continue
        out.append(f"{start}" if start == prev else f"{start}-{prev}")
        if p is not None:
            start = prev = p
    return ", ".join(out)


@dataclass(frozen=True)
class PromptTokens:
    """What the Subject Tokens node hands to guidance: the layout of the prompt and its subjects.

    Attributes
    ----------
    text : str
        The prompt as typed.
    layout : TokenLayout
        Its columns (``T = layout.length``).
    subjects : tuple of Subject
        The selected subject words.
    """

    text: str
    layout: TokenLayout
    subjects: tuple[Subject, ...]

    def describe(self) -> str:
        """Readable summary: the tokenisation with indices and the chosen subjects."""
        lines = [f"Prompt: {self.text}", f"Columns: {self.layout.length} ({self.layout.num_chunks} x {self.layout.chunk_length})",
                 "Tokens:", self.layout.describe()]
        if self.subjects:
            lines.append("Subjects:")
            for s in self.subjects:
                pieces = " + ".join(self.layout.pieces[p].text for p in s.positions)
                lines.append(f"  {s.name}: {list(s.positions)} ({pieces})")
        return "\n".join(lines)


# ---------------------------------------------------------------------- prompt identity
#: relative per-column difference above which two encodings are of different prompts (the same
#: CLIP encodes the same text identically; any other prompt differs by far more than this)
ENCODING_TOLERANCE = 1e-2


def prompt_encoding(cross_attn: torch.Tensor) -> torch.Tensor:
    """A conditioning's cross-attention tensor ``(1, T, D)`` or ``(T, D)`` as ``(T, D)`` float32 on the CPU."""
    enc = cross_attn.detach()
    if enc.dim() == 3:
        enc = enc[0]
    return enc.to("cpu", torch.float32)


def untile_encoding(context: torch.Tensor, length: int) -> torch.Tensor | None:
    """``context (T', D)`` cut back to ``length`` columns when it is that prompt repeated (ComfyUI
    tiles conditionings of different lengths to a common length); ``None`` when it is not."""
    total = context.shape[0]
    if total == length:
        return context
    if total % length:
        return None
    copies = context.reshape(total // length, length, -1)
    return copies[0] if torch.equal(copies, copies[:1].expand_as(copies)) else None


def differing_columns(layout: TokenLayout, given: torch.Tensor) -> tuple[int, ...]:
    """The start/word/end columns where ``given (T, D)`` is not the encoding of ``layout``'s prompt
    (all of them when the shapes differ); empty when it is, or when the layout has no encoding."""
    expected = layout.encoding
    if expected is None:
        return ()
    columns = [i for i, p in enumerate(layout.pieces) if p.kind != PAD]
    if given.shape != expected.shape:
        return tuple(columns)
    e, g = expected[columns], given.to(expected)[columns]
    rel = (e - g).norm(dim=-1) / e.norm(dim=-1).clamp_min(1e-12)
    return tuple(c for c, r in zip(columns, rel.tolist(), strict=True) if not r <= ENCODING_TOLERANCE)


def check_prompt_encoding(layout: TokenLayout, given: torch.Tensor, *, what: str, input_name: str,
                          remedy: str) -> None:
    """Raise a :class:`StormError` when ``given (T, D)`` was not encoded from ``layout``'s prompt.

    Column counts are compared first (a 77-column token set on a 154-column prompt), then the
    features (another model family's text encoder), then the encoding itself (a negative prompt
    wired into ``positive``, tokens of another prompt of the same length).
    """
    prompt = " ".join(w.text for w in layout.words)
    if given.shape[0] != layout.length:
        raise StormError(
            f"{what} has {given.shape[0]} token columns but the tokens ({prompt!r}) were computed for a "
            f"prompt with {layout.length}; {remedy}", input_name=input_name)
    if layout.encoding is not None and given.shape[-1] != layout.encoding.shape[-1]:
        raise StormError(
            f"{what} has {given.shape[-1]} features per token but the tokens' CLIP encodes "
            f"{layout.encoding.shape[-1]} (a text encoder of another model family); {remedy}", input_name=input_name)
    bad = differing_columns(layout, given)
    if bad:
        cols = ", ".join(f"{c}:{layout.pieces[c].text}" for c in bad[:8]) + (" ..." if len(bad) > 8 else "")
        raise StormError(
            f"{what} is not the encoding of the prompt the tokens were computed for ({prompt!r}): it differs "
            f"at columns {cols}. {remedy}", input_name=input_name)
