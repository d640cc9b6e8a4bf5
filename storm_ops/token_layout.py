"""CLIP token layouts: which conditioning column holds which piece of which word.

A prompt is encoded by ComfyUI as ``k`` chunks of 77 columns: ``[start, pieces..., end, pad...]``.
The cross-attention maps have one column per conditioning column (``T = 77 * k``), so a word of
the prompt is identified by the column indices of its BPE pieces. This module works on already
tokenised prompts (:class:`TokenLayout`); the ComfyUI layer builds layouts with the host's own
tokenizer, so the columns here are exactly the columns of the conditioning.
"""

from __future__ import annotations

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
