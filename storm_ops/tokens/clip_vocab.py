"""Text of CLIP's byte-level BPE vocabulary entries, independent of the installed transformers."""

from __future__ import annotations

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
