"""Token text with the ``transformers`` release that a fresh ComfyUI install takes (5.x on 0.3.64 and 0.33).

The pack decodes CLIP pieces from the vocabulary itself (:func:`storm_ops.tokens.clip_vocab.clip_piece_text`);
what it takes from ``transformers`` is the tokenizer's ids and ``get_vocab()``. This tokenises with the
host's own CLIP vocabulary files, and the pack's layout code must find the prompt's words without the
end-of-word markers that 5.x keeps in ``convert_tokens_to_string``.
"""

from __future__ import annotations

import pytest
import transformers

from harness.host import comfy_package_dir

PROMPT = "a cat and a dog, café"
# The host's tokenizers: SD1 CLIP-L pads with the end token, SDXL's CLIP-G (same vocabulary) with 0.
PAD_WITH_END = {"sd1": True, "sdxl_g": False}


@pytest.fixture(scope="module")
def tokenisation() -> dict:
    tok = transformers.CLIPTokenizer.from_pretrained(str(comfy_package_dir() / "sd1_tokenizer"))
    ids = tok(PROMPT)["input_ids"]
    vocab = {v: k for k, v in tok.get_vocab().items()}
    return {"version": transformers.__version__, "ids": ids, "pieces": {i: vocab[i] for i in ids},
            "converted": tok.convert_tokens_to_string([vocab[ids[2]]])}


@pytest.mark.parametrize("tokenizer", sorted(PAD_WITH_END))
def test_words_resolve_without_end_of_word_markers(pack, tokenisation, tokenizer):
    tokens, ops = pack.storm_ops.tokens.layout, pack.storm_ops.tokens
    t = tokenisation
    ids = t["ids"]
    start, end = ids[0], ids[-1]
    pad = end if PAD_WITH_END[tokenizer] else 0
    row = ids + [pad] * (tokens.CLIP_CHUNK - len(ids))
    layout = tokens.TokenLayout.from_ids(row, ops.clip_vocab.clip_vocab_decoder(t["pieces"]), start_id=start,
                                         end_id=end)
    subjects = ops.subjects.resolve_subjects(layout, "cat, dog, café")
    assert [s.positions for s in subjects][:2] == [(2,), (5,)], t["version"]
    text = tokens.PromptTokens(PROMPT, layout, subjects).describe()
    assert "</w>" not in text and "2:cat 3:and 4:a 5:dog" in text, (t["version"], text)
    if t["version"].startswith("5."):
        # the reason the pack does not call convert_tokens_to_string: 5.x keeps the marker
        assert t["converted"] == "cat</w>"
