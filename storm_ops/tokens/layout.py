"""Token layouts: which conditioning column holds which piece of which word.

A prompt is encoded by ComfyUI as ``k`` chunks of 77 CLIP columns: ``[start, pieces..., end, pad...]``.
The cross-attention maps have one column per conditioning column (``T = 77 * k``), so a word of
the prompt is identified by the column indices of its BPE pieces. DiT models add a *stream* of T5
rows (SD3: after the CLIP chunks; Flux: the T5 rows alone, Esser et al. 2024 section 5.2 and
Black Forest Labs' Flux.1 use T5-XXL this way): the same prompt in a sentencepiece vocabulary, whose
words are matched to the first stream's, so a word's columns are its pieces in every stream.
This module works on already tokenised prompts (:class:`TokenLayout`); the ComfyUI layer builds
layouts with the host's own tokenizers, so the columns here are exactly the columns of the
conditioning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import torch

from ..errors import StormError

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
        Columns per chunk of the first stream (CLIP: 77). The first stream must be a whole number
        of chunks.
    streams : tuple of (name, first column)
        Further streams after the first (SD3's T5 rows): each holds the same prompt tokenised
        again; see :attr:`words`.
    """

    pieces: tuple[Piece, ...]
    chunk_length: int = CLIP_CHUNK
    #: the end-token convention of the tokenizer(s) that made the layout (what ``"auto"`` means)
    end_tokens: str = "sd1"
    #: the prompt's encoding ``(T, D)`` (float32, CPU) when the layout was made by encoding a
    #: prompt: lets a sampler or visualiser check that a conditioning is really this prompt's
    encoding: torch.Tensor | None = field(default=None, compare=False, repr=False)
    streams: tuple[tuple[str, int], ...] = ()
    #: the first stream's name, for :meth:`describe` when there are several
    name: str = "CLIP"

    def __post_init__(self) -> None:
        if self.chunk_length < 3:
            raise StormError(f"chunk_length must be at least 3, got {self.chunk_length}")
        starts = [start for _, start in self.streams]
        if starts != sorted(starts) or any(not 0 < s < len(self.pieces) for s in starts):
            raise StormError(f"stream starts {starts} must increase inside the {len(self.pieces)} columns")
        if not self.pieces or self.first_stream_length % self.chunk_length:
            raise StormError(
                f"a token layout needs a whole number of {self.chunk_length}-column chunks, "
                f"got {self.first_stream_length} columns"
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

    @classmethod
    def from_sentencepiece(cls, pieces: list[str | None], *, end_piece: str, name: str, lead: int = 0) -> TokenLayout:
        """One stream of a sentencepiece tokenizer (T5): no start token, ``end_piece`` then padding. The first
        ``lead`` pieces are a template's opening (a chat template before the user's prompt): start tokens, no words.

        ``pieces`` are the vocabulary strings of the columns (``None`` for an embedding vector). A
        word starts at a piece beginning with U+2581 (sentencepiece's word-boundary mark); punctuation
        pieces are words of their own, as in CLIP (``"cat,"`` is ``cat`` + ``,``), so "cat" names it.
        """
        def text_of(piece: str | None) -> str:
            return "<embedding>" if piece is None else piece.replace(_SP_SPACE, " ").strip()

        def starts_word(piece: str | None) -> bool:
            return piece is None or piece == end_piece or piece.startswith(_SP_SPACE) or _is_punctuation(text_of(piece))

        out: list[Piece] = []
        seen_end = False
        for j, piece in enumerate(pieces):
            if j < lead:
                out.append(Piece(text_of(piece), START, True))
            elif seen_end:
                out.append(Piece("", PAD, True))
            elif piece == end_piece:
                seen_end = True
                out.append(Piece("<end>", END, True))
            else:
                following = pieces[j + 1] if j + 1 < len(pieces) else end_piece
                ends = starts_word(following) or _is_punctuation(text_of(piece))
                out.append(Piece(text_of(piece), WORD, ends))
        return cls(tuple(out), len(out), "words", name=name)

    def with_stream(self, other: TokenLayout) -> TokenLayout:
        """This layout followed by ``other`` (the same prompt in another tokenizer) as a further stream."""
        if other.streams:
            raise StormError("a stream to append must have one stream")
        end_tokens = self.end_tokens if self.end_tokens == other.end_tokens else "words"
        return TokenLayout(self.pieces + other.pieces, self.chunk_length, end_tokens,
                           streams=self.streams + ((other.name, self.length),), name=self.name)

    # ------------------------------------------------------------------ views
    @property
    def length(self) -> int:
        """Number of columns ``T``."""
        return len(self.pieces)

    @property
    def first_stream_length(self) -> int:
        return self.streams[0][1] if self.streams else len(self.pieces)

    @property
    def num_chunks(self) -> int:
        """Chunks of the first stream."""
        return self.first_stream_length // self.chunk_length

    def columns_summary(self) -> str:
        """``"1 x 77"``, or per stream with several (``"CLIP 1 x 77 + T5 77"``)."""
        chunks = f"{self.num_chunks} x {self.chunk_length}"
        if not self.streams:
            return chunks
        return " + ".join([f"{self.name} {chunks}"] + [f"{n} {hi - lo}" for n, lo, hi in self._stream_ranges()[1:]])

    def by_stream(self, positions) -> tuple[tuple[str, tuple[int, ...]], ...]:
        """``positions`` grouped by the stream that holds them, as ``(stream name, columns)`` in stream order
        (streams holding none are left out): ``(("CLIP", (2,)), ("T5", (79,)))``."""
        return tuple((name, cols) for name, lo, hi in self._stream_ranges()
                     if (cols := tuple(p for p in positions if lo <= p < hi)))

    def _stream_ranges(self) -> list[tuple[str, int, int]]:
        bounds = [(self.name, 0)] + list(self.streams) + [("", self.length)]
        return [(name, lo, bounds[i + 1][1]) for i, (name, lo) in enumerate(bounds[:-1])]

    @cached_property
    def word_positions(self) -> tuple[int, ...]:
        """Columns holding word pieces, in order."""
        return tuple(i for i, p in enumerate(self.pieces) if p.kind == WORD)

    @cached_property
    def words(self) -> tuple[WordSpan, ...]:
        """The prompt's words: consecutive word pieces up to one that ends a word.

        With several streams, the words of the first stream, each with the columns of the same word
        in every further stream added (matched in order by their letters and digits: tokenizers split
        punctuation differently); a word no further stream matches keeps its own columns.
        """
        ranges = self._stream_ranges()
        words = list(self._words_in(ranges[0][1], ranges[0][2]))
        for _, lo, hi in ranges[1:]:
            others = self._words_in(lo, hi)
            for i, j in _match_words([w.text for w in words], [w.text for w in others]):
                words[i] = WordSpan(words[i].text, words[i].positions + others[j].positions)
        return tuple(words)

    def _words_in(self, lo: int, hi: int) -> tuple[WordSpan, ...]:
        spans: list[WordSpan] = []
        current: list[int] = []
        for i in range(lo, hi):
            p = self.pieces[i]
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
        if convention == "sd1":  # over the first stream; further streams (T5) take part with their words
            mask = torch.zeros(self.length, dtype=torch.bool)
            mask[list(self.word_positions)] = True
            first = self.first_stream_length
            mask[:first] = True
            mask[0:first:self.chunk_length] = False
            mask[self.chunk_length - 1:first:self.chunk_length] = False
        elif convention == "words":
            mask = torch.zeros(self.length, dtype=torch.bool)
            mask[list(self.word_positions)] = True
        else:
            raise StormError(
                f"unknown end-token convention {convention!r}; use one of {END_TOKEN_CONVENTIONS}"
            )
        return mask

    def describe(self) -> str:
        """One line per chunk (and per further stream) listing ``index:piece`` for every word piece
        (``-`` marks a piece that continues into the next one)."""
        lines = []
        for c in range(self.num_chunks):
            lo = c * self.chunk_length
            prefix = f"chunk {c + 1}: " if self.num_chunks > 1 else ""
            lines.append(prefix + self._listing(lo, lo + self.chunk_length))
        if self.streams:
            lines[0] = f"{self.name}: " + lines[0]
            lines += [f"{name}: " + self._listing(lo, hi) for name, lo, hi in self._stream_ranges()[1:]]
        return "\n".join(lines)

    def _listing(self, lo: int, hi: int) -> str:
        return " ".join(f"{i}:{p.text}{'' if p.ends_word else '-'}"
                        for i, p in enumerate(self.pieces[lo:hi], start=lo) if p.kind == WORD)


#: sentencepiece's word-boundary mark (U+2581 LOWER ONE EIGHTH BLOCK)
_SP_SPACE = "\u2581"


def _is_punctuation(text: str) -> bool:
    return bool(text) and not any(c.isalnum() for c in text)


def _letters(text: str) -> str:
    return "".join(c for c in text.lower() if c.isalnum())


def _match_words(first: list[str], other: list[str]) -> list[tuple[int, int]]:
    """Pairs ``(i, j)``: word ``i`` of ``first`` is word ``j`` of ``other``, matched in order by their
    letters and digits (a longest common subsequence, so a word one tokenizer splits or drops never
    shifts the rest); words without letters or digits are not matched."""
    a, b = [_letters(t) for t in first], [_letters(t) for t in other]
    n, m = len(a), len(b)
    best = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n - 1, -1, -1):
        for j in range(m - 1, -1, -1):
            same = a[i] and a[i] == b[j]
            best[i][j] = best[i + 1][j + 1] + 1 if same else max(best[i + 1][j], best[i][j + 1])
    pairs, i, j = [], 0, 0
    while i < n and j < m:
        if a[i] and a[i] == b[j]:
            pairs.append((i, j))
            i, j = i + 1, j + 1
        elif best[i + 1][j] >= best[i][j + 1]:
            i += 1
        else:
            j += 1
    return pairs


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
        lines = [f"Prompt: {self.text}", f"Columns: {self.layout.length} ({self.layout.columns_summary()})",
                 "Tokens:", self.layout.describe()]
        if self.subjects:
            lines.append("Subjects:")
            for s in self.subjects:
                pieces = " + ".join(self.layout.pieces[p].text for p in s.positions)
                lines.append(f"  {s.name}: {list(s.positions)} ({pieces})")
        return "\n".join(lines)
