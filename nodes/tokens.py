"""Token layouts through the host's own CLIP tokenizer, and the Subject Tokens node."""

from __future__ import annotations

from dataclasses import replace

from ..storm_ops.errors import StormError
from ..storm_ops.tokens import PromptTokens, TokenLayout, clip_vocab_decoder, prompt_encoding, resolve_subjects
from .compat import encode_prompt
from .errors import node_errors

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


def encode_with_layout(clip, text: str) -> tuple[TokenLayout, list]:
    """Encode ``text`` like CLIP Text Encode; returns its layout (carrying the encoding, so samplers
    and the visualiser can check that a conditioning is this prompt's) and the CONDITIONING."""
    layout = prompt_layout(clip, text)
    _, conditioning = encode_prompt(clip, text)
    return replace(layout, encoding=prompt_encoding(conditioning[0][0])), conditioning


class SubjectTokens:
    """STORM Subject Tokens: prompt encoding + the CLIP token positions of its subjects."""

    NODE_NAME = "STORM Subject Tokens"
    DESCRIPTION = (
        "Encodes the prompt (like CLIP Text Encode) and finds the CLIP token positions of the subject "
        "words with the model's own tokenizer. Use its conditioning as the sampler's positive input so "
        "the positions match the encoding. The text output lists every token with its index.")
    CATEGORY = "STORM/prompt"
    FUNCTION = "run"
    RETURN_TYPES = ("STORM_TOKENS", "CONDITIONING", "STRING")
    RETURN_NAMES = ("tokens", "conditioning", "tokenization")
    OUTPUT_TOOLTIPS = (
        "The prompt's token layout and the selected subjects, for the guidance and visualiser nodes.",
        "The encoded prompt (same as CLIP Text Encode); connect it to the sampler's positive input.",
        "The tokenisation with indices and the resolved subjects, for checking or for choosing indices.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "clip": ("CLIP", {"tooltip": "The CLIP model of the checkpoint (its tokenizer defines the positions)."}),
            "text": ("STRING", {"multiline": True, "default": "a cat and a dog",
                                "tooltip": "The positive prompt. Prompts over 75 tokens are split into 77-token chunks like CLIP Text Encode does."}),
            "subjects": ("STRING", {"default": "cat, dog",
                                    "tooltip": "Subject words of the prompt, comma separated ('cat, dog'). Phrases ('teddy bear') "
                                               "and multi-piece words work; 'dog#2' picks the second 'dog'; numbers are token indices "
                                               "(see the tokenization output, the first word is 1)."}),
        }}

    @node_errors(NODE_NAME)
    def run(self, clip, text, subjects):
        layout, conditioning = encode_with_layout(clip, text)
        subject_list = resolve_subjects(layout, subjects)
        tokens = PromptTokens(text, layout, subject_list)
        description = tokens.describe()
        return {"ui": {"storm_text": [description]}, "result": (tokens, conditioning, description)}
