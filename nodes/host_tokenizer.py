"""Token layouts built with the host's own CLIP tokenizer (the columns of its conditioning)."""

from __future__ import annotations

import functools
from dataclasses import replace

from ..storm_ops.clip_vocab import clip_vocab_decoder
from ..storm_ops.errors import StormError
from ..storm_ops.prompt_identity import prompt_encoding
from ..storm_ops.token_layout import TokenLayout
from .compat import encode_prompt

# Tokenizer keys in the dict returned by clip.tokenize(): SD1 "l", SD2 "h", SDXL "g" + "l".
_PREFERRED_KEYS = ("l", "h", "g")


def _sd_tokenizer(clip, key: str):
    tokenizer = clip.tokenizer
    for attr in (f"clip_{key}", key):
        found = getattr(tokenizer, attr, None)
        if found is not None and hasattr(found, "tokenizer"):
            return found
    raise StormError(f"cannot find the {key!r} tokenizer of this CLIP model ({type(tokenizer).__name__})",
                     input_name="clip")


def prompt_layout(clip, text: str) -> TokenLayout:
    """Tokenise ``text`` with the host's tokenizer.

    The columns are exactly those of the conditioning the same CLIP encodes from ``text``
    (chunks of 77, words never split across chunks unless longer than the host's limit). The
    layout's end-token convention is decided here, from the tokenizers themselves: ``"sd1"`` when
    every one pads with its end token (SD-1.x's CLIP-L), else ``"words"`` (SD-2.x's OpenCLIP pads
    with 0, and so does SDXL's CLIP-G half).
    """
    tokens = clip.tokenize(text)
    key = next((k for k in _PREFERRED_KEYS if k in tokens), next(iter(tokens)))
    sd_tok = _sd_tokenizer(clip, key)
    hf_tok = sd_tok.tokenizer
    inv_vocab = getattr(sd_tok, "inv_vocab", None) or {v: k for k, v in hf_tok.get_vocab().items()}

    ids: list[int | None] = []
    for chunk in tokens[key]:
        for item in chunk:
            tid = item[0]
            ids.append(tid if isinstance(tid, int) else None)  # tensors are embedding vectors
    layout = TokenLayout.from_ids(ids, clip_vocab_decoder(inv_vocab), start_id=getattr(sd_tok, "start_token", None),
                                  end_id=getattr(sd_tok, "end_token", None),
                                  chunk_length=len(tokens[key][0]),
                                  end_tokens="sd1" if all(_sd_tokenizer(clip, k).pad_with_end for k in tokens) else "words")
    return layout


class _SD1TokenizerOnly:
    """Just enough of a CLIP object for :func:`prompt_layout`: the host's SD1 tokenizer (CLIP-L's vocabulary
    and BPE, which SDXL's two encoders share, so word positions are the same), no text encoder."""

    def __init__(self):
        import comfy.sd1_clip

        self.tokenizer = type("Tokenizers", (), {})()
        self.tokenizer.clip_l = comfy.sd1_clip.SDTokenizer()

    def tokenize(self, text: str) -> dict:
        return {"l": self.tokenizer.clip_l.tokenize_with_weights(text)}


@functools.lru_cache(maxsize=1)
def _tokenizer_only() -> _SD1TokenizerOnly:
    return _SD1TokenizerOnly()  # loaded once per process (the vocabulary takes ~0.3 s), like the spaCy pipeline


def text_layout(text: str) -> TokenLayout:
    """The layout of ``text`` under SD1.x/SDXL's CLIP tokenizer, without a loaded model (for the UI's
    token chips; the nodes use the model's own tokenizer)."""
    return prompt_layout(_tokenizer_only(), text)


def encode_with_layout(clip, text: str) -> tuple[TokenLayout, list]:
    """Encode ``text`` like CLIP Text Encode; returns its layout (carrying the encoding, so samplers
    and the visualiser can check that a conditioning is this prompt's) and the CONDITIONING."""
    layout = prompt_layout(clip, text)
    _, conditioning = encode_prompt(clip, text)
    return replace(layout, encoding=prompt_encoding(conditioning[0][0])), conditioning
