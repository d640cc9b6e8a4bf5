"""Prompt identity: is a conditioning the encoding of the prompt a token layout was computed for?"""

from __future__ import annotations

import torch

from ..errors import StormError
from .layout import PAD, TokenLayout

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
