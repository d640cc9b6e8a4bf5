"""Token layouts built with the host's own tokenizers (the columns of its conditioning).

UNet families condition on CLIP columns only. SD3 conditions on its CLIP columns followed by T5
rows, Flux on T5 rows alone (its CLIP-L gives only the pooled vector), Chroma on the T5 rows of the prompt
alone (no padding); either text encoder of SD3 may be left out. Qwen-Image, Z-Image, Flux.2 and Krea 2 condition on a
language model's rows of the prompt inside a chat template, of which Qwen-Image's and Krea 2's encoders drop the system
turn (:func:`_llm_layout`). Which streams a conditioning holds is read off its row count (see
:func:`conditioning_layout`)."""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

from ..storm_ops.errors import StormError
from ..storm_ops.tokens.clip_vocab import clip_vocab_decoder
from ..storm_ops.tokens.identity import prompt_encoding
from ..storm_ops.tokens.layout import TokenLayout
from .compat import encode_prompt

# Tokenizer keys in the dict returned by clip.tokenize(): SD1 "l", SD2 "h", SDXL "g" + "l"; SD3 "l" + "g"
# + "t5xxl", Flux "l" + "t5xxl".
_PREFERRED_KEYS = ("l", "h", "g")
_CLIP_KEYS = frozenset(_PREFERRED_KEYS)
#: the T5 stream of DiT conditionings, and the name its rows get in a layout
_T5_KEY, _T5_NAME = "t5xxl", "T5"


def _sd_tokenizer(clip, key: str):
    tokenizer = clip.tokenizer
    for attr in (f"clip_{key}", key):
        found = getattr(tokenizer, attr, None)
        if found is not None and hasattr(found, "tokenizer"):
            return found
    raise StormError(f"cannot find the {key!r} tokenizer of this CLIP model ({type(tokenizer).__name__})",
                     input_name="clip")


def _clip_layout(clip, tokens: dict) -> TokenLayout:
    """The CLIP columns of ``tokens`` (what ``clip.tokenize(text)`` returned; other streams' keys are ignored).

    The columns are exactly those of the conditioning the same CLIP encodes from ``text``
    (chunks of 77, words never split across chunks unless longer than the host's limit). The
    layout's end-token convention is decided here, from the tokenizers themselves: ``"sd1"`` when
    every one pads with its end token (SD-1.x's CLIP-L), else ``"words"`` (SD-2.x's OpenCLIP pads
    with 0, and so does SDXL's CLIP-G half).
    """
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
                                  end_tokens="sd1" if all(_sd_tokenizer(clip, k).pad_with_end
                                                          for k in tokens if k in _CLIP_KEYS or k == key) else "words")
    return layout


def _t5_layout(clip, tokens: dict) -> TokenLayout:
    sd_tok = _sd_tokenizer(clip, _T5_KEY)
    inv_vocab = getattr(sd_tok, "inv_vocab", None) or {v: k for k, v in sd_tok.tokenizer.get_vocab().items()}
    pieces = [inv_vocab.get(item[0], f"<{item[0]}>") if isinstance(item[0], int) else None
              for chunk in tokens[_T5_KEY] for item in chunk]
    return TokenLayout.from_sentencepiece(pieces, end_piece=inv_vocab[sd_tok.end_token], name=_T5_NAME)


@dataclass(frozen=True)
class LLMStream:
    """A language-model text encoder's stream: its name in layouts, the text that opens the user's prompt inside the
    family's chat template, and the piece that ends it."""

    name: str
    opening: str
    end_piece: str


#: language-model text encoders by the key of their tokens in ``clip.tokenize()``'s dict. Qwen-Image (Qwen2.5-VL),
#: Z-Image and Flux.2 klein 4B (Qwen3 4B), klein 9B (Qwen3 8B) wrap the prompt in ``<|im_start|>user\n{}<|im_end|>``
LLM_STREAMS = {
    "qwen25_7b": LLMStream("Qwen2.5-VL", "<|im_start|>user\n", "<|im_end|>"),
    "qwen3_4b": LLMStream("Qwen3", "<|im_start|>user\n", "<|im_end|>"),
    "qwen3_8b": LLMStream("Qwen3", "<|im_start|>user\n", "<|im_end|>"),
    "qwen3vl_4b": LLMStream("Qwen3-VL", "<|im_start|>user\n", "<|im_end|>"),  # Krea 2 (Qwen-Image's system turn)
}
#: text encoders whose rows the pack does not lay out: the key of their tokens -> what to tell the user
_UNSUPPORTED_STREAMS = {
    "mistral3_24b": "Flux.2 dev's Mistral text encoder is not supported yet (ComfyUI pads its conditioning to 512 "
                    "rows when sampling, and its tokenizer ships inside the text-encoder file, so the pack could not "
                    "be tested with it); Flux.2 klein (a Qwen3 text encoder) works",
    "llama": "HiDream's text encoders (CLIP-L, CLIP-G, T5 and Llama 3.1, whose rows ComfyUI hands to every block beside "
             "the T5 rows) are not supported yet: the Llama 3 tokenizer is absent from the ComfyUI trees the pack is "
             "tested on, so its rows could not be laid out against it",
}


def _llm_piece(text: str | None) -> str | None:
    """A byte-level BPE token's text as a sentencepiece-style piece: a leading space becomes U+2581 (a word starts);
    None stays None (an embedding vector)."""
    return "\u2581" + text[1:] if text is not None and text.startswith(" ") else text


def _prompt_start(texts: list[str | None], opening: str) -> int:
    """The index of the first token of the user's prompt: the first after the template's ``opening`` (the last
    opening, when the system turn holds one too), or 0 when the text had no template (the host leaves a prompt that
    brings its own template alone; then that template's opening is found)."""
    text, ends = "", []
    for piece in texts:
        text += piece or ""
        ends.append(len(text))
    at = text.rfind(opening)
    if at < 0:
        return 0
    return next(i + 1 for i, end in enumerate(ends) if end >= at + len(opening))


def _llm_layout(clip, tokens: dict, key: str, rows: int | None = None, keep_opening: bool = False) -> TokenLayout:
    """The rows of a language-model encoder's conditioning: the host encodes the prompt inside its family's chat
    template and keeps the last ``rows`` tokens (Qwen-Image and Krea 2 drop the template's system turn; Z-Image and
    Flux.2 keep
    every token). Without ``rows`` (no encoding yet) the kept rows start at the prompt, or with ``keep_opening`` at
    the first token. The template's rows before
    the prompt are start tokens, its closing tokens (and padding) the layout's end and padding: never words."""
    stream = LLM_STREAMS[key]
    hf_tok = _sd_tokenizer(clip, key).tokenizer
    ids = [item[0] for chunk in tokens[key] for item in chunk]
    texts = [None if not isinstance(t, int) else hf_tok.decode([t]) for t in ids]
    prompt = _prompt_start(texts, stream.opening)
    first = len(ids) - rows if rows is not None else 0 if keep_opening else prompt
    if not 0 <= first <= len(ids):
        raise StormError(f"the prompt's conditioning has {rows} rows, but its {stream.name} tokens are {len(ids)}: "
                         "this text encoder lays out its conditioning in a way the pack does not know", input_name="clip")
    return TokenLayout.from_sentencepiece([_llm_piece(t) for t in texts[first:]], end_piece=stream.end_piece,
                                          name=stream.name, lead=max(prompt - first, 0))


def prompt_layout(clip, text: str, rows: int | None = None) -> TokenLayout:
    """Tokenise ``text`` with the host's tokenizers: the CLIP columns, or with ``rows`` (the row count
    of the prompt's conditioning) the streams of a DiT conditioning (:func:`conditioning_layout`), or the
    rows a language-model encoder keeps (:func:`_llm_layout`)."""
    tokens = clip.tokenize(text)
    for key, why in _UNSUPPORTED_STREAMS.items():
        if key in tokens:
            raise StormError(why, input_name="clip")
    llm = next((key for key in LLM_STREAMS if key in tokens), None)
    if llm is not None:
        return _llm_layout(clip, tokens, llm, rows)
    if rows is None or _T5_KEY not in tokens:
        return _clip_layout(clip, tokens)
    return conditioning_layout(clip, tokens, rows)


def conditioning_layout(clip, tokens: dict, rows: int) -> TokenLayout:
    """The layout of a DiT conditioning of ``rows`` rows: CLIP then T5 (SD3), T5 alone (Flux, or SD3
    without its CLIP encoders) or CLIP alone (SD3 without T5), whichever has that many rows. When CLIP
    and T5 have the same length, the text encoder decides: without a loaded T5 the rows are CLIP's."""
    t5 = _t5_layout(clip, tokens)
    has_clip = any(k in tokens for k in _CLIP_KEYS)
    clip_layout = _clip_layout(clip, tokens) if has_clip else None
    t5_loaded = getattr(getattr(clip, "cond_stage_model", None), _T5_KEY, None) is not None
    candidates = ([clip_layout.with_stream(t5)] if clip_layout is not None else []) + \
        ([t5, clip_layout] if t5_loaded or clip_layout is None else [clip_layout, t5])
    for layout in candidates:
        if layout is not None and layout.length == rows:
            return layout
    raise StormError(f"the prompt's conditioning has {rows} rows, but its tokens make "
                     f"{' or '.join(str(c.length) for c in candidates if c is not None)}: this text encoder "
                     "lays out its conditioning in a way the pack does not know", input_name="clip")


class _SD1TokenizerOnly:
    """Just enough of a CLIP object for :func:`prompt_layout`: the host's SD1 tokenizer (CLIP-L's vocabulary
    and BPE, which SDXL's two encoders share, so word positions are the same), no text encoder."""

    def __init__(self):
        import comfy.sd1_clip

        self.tokenizer = type("Tokenizers", (), {})()
        self.tokenizer.clip_l = comfy.sd1_clip.SDTokenizer()

    def tokenize(self, text: str) -> dict:
        return {"l": self.tokenizer.clip_l.tokenize_with_weights(text)}


class _DiTTokenizerOnly:
    """The same for a DiT family: the host's own tokenizer class of that family (CLIP and T5), no encoders."""

    def __init__(self, family: str):
        import importlib

        module, name = _DIT_TOKENIZERS[family]
        try:
            self.tokenizer = getattr(importlib.import_module(module), name)()
        except (ImportError, AttributeError):
            raise StormError(f"this ComfyUI has no {family} tokenizer ({module}.{name}); update ComfyUI",
                             input_name="clip") from None

    def tokenize(self, text: str) -> dict:
        return self.tokenizer.tokenize_with_weights(text)


#: the host's tokenizer class of each DiT family (module, class)
_DIT_TOKENIZERS = {"sd3": ("comfy.text_encoders.sd3_clip", "SD3Tokenizer"),
                   "flux": ("comfy.text_encoders.flux", "FluxTokenizer"),
                   "chroma": ("comfy.text_encoders.pixart_t5", "PixArtTokenizer"),
                   "qwen_image": ("comfy.text_encoders.qwen_image", "QwenImageTokenizer"),
                   "z_image": ("comfy.text_encoders.z_image", "ZImageTokenizer"),
                   "flux2": ("comfy.text_encoders.flux", "KleinTokenizer"),
                   "krea2": ("comfy.text_encoders.krea2", "Krea2Tokenizer")}  # Flux.2 klein 4B (dev's is in its file)
#: the streams of a DiT family's conditioning when all its text encoders are loaded, in order (a
#: conditioning with fewer encoders is laid out by :func:`conditioning_layout` from its row count)
DIT_STREAMS = {"sd3": ("CLIP", _T5_NAME), "flux": (_T5_NAME,), "chroma": (_T5_NAME,),
               "qwen_image": (LLM_STREAMS["qwen25_7b"].name,), "z_image": (LLM_STREAMS["qwen3_4b"].name,),
               "flux2": (LLM_STREAMS["qwen3_4b"].name,), "krea2": (LLM_STREAMS["qwen3vl_4b"].name,)}
#: families whose conditioning keeps its chat template's opening rows (Qwen-Image drops its system turn and the
#: user turn's opening: its rows start at the prompt)
_KEEPS_TEMPLATE_OPENING = frozenset({"z_image", "flux2"})


@functools.lru_cache(maxsize=len(_DIT_TOKENIZERS) + 1)
def _tokenizer_only(family: str | None = None) -> _SD1TokenizerOnly | _DiTTokenizerOnly:
    # loaded once per process and family (the vocabularies take ~0.3-1 s), like the spaCy pipeline
    return _SD1TokenizerOnly() if family is None else _DiTTokenizerOnly(family)


def text_layout(text: str, family: str | None = None) -> TokenLayout:
    """The layout of ``text`` without a loaded model (for the UI's token chips; the nodes use the model's own
    tokenizer): SD1.x/SDXL's CLIP columns, or for a DiT ``family`` (a key of :data:`DIT_STREAMS`) the rows of that
    family's conditioning: SD3's CLIP columns then its T5 rows, Flux's and Chroma's T5 rows, the Qwen2.5-VL rows
    Qwen-Image keeps (and the Qwen3-VL rows Krea 2 keeps), the Qwen3 rows of Z-Image and Flux.2 klein (the whole chat
    template; klein's 512)."""
    if family is not None and family not in DIT_STREAMS:
        raise StormError(f"unknown model family {family!r}; expected one of {sorted(DIT_STREAMS)} or none",
                         input_name="family")
    clip = _tokenizer_only(family)
    if family is None:
        return prompt_layout(clip, text)
    tokens = clip.tokenize(text)
    llm = next((key for key in LLM_STREAMS if key in tokens), None)
    if llm is not None:
        return _llm_layout(clip, tokens, llm, keep_opening=family in _KEEPS_TEMPLATE_OPENING)
    streams = {"CLIP": _clip_layout, _T5_NAME: _t5_layout}
    first, *rest = (streams[name](clip, tokens) for name in DIT_STREAMS[family])
    for other in rest:
        first = first.with_stream(other)
    return first


def encode_with_layout(clip, text: str) -> tuple[TokenLayout, list]:
    """Encode ``text`` like CLIP Text Encode; returns its layout (carrying the encoding, so samplers
    and the visualiser can check that a conditioning is this prompt's) and the CONDITIONING."""
    _, conditioning = encode_prompt(clip, text)
    layout = prompt_layout(clip, text, rows=int(conditioning[0][0].shape[-2]))
    return replace(layout, encoding=prompt_encoding(conditioning[0][0])), conditioning
