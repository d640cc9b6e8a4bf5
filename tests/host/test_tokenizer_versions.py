"""Token text on every installed ``transformers`` major version (4.x as the pip fork needs it,
5.x as a fresh ComfyUI install takes it).

The pack decodes CLIP pieces from the vocabulary itself (:func:`storm_ops.clip_vocab.clip_piece_text`);
what it takes from ``transformers`` is the tokenizer's ids and ``get_vocab()``. Each interpreter
in ``STORM_TRANSFORMERS_PYTHONS`` (``os.pathsep``-separated; ``scripts/setup_env.sh`` makes a
``transformers>=5`` one) and the test interpreter itself tokenise with the host's own CLIP vocabulary
files in a subprocess, and the pack's layout code must find the same words in every one.
``STORM_REQUIRE_TRANSFORMERS`` (e.g. ``4,5``; set by CI) fails the test when a major is missing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from harness.host import comfy_package_dir

PROMPT = "a cat and a dog, café"
# The host's tokenizers: SD1 CLIP-L pads with the end token, SDXL's CLIP-G (same vocabulary) with 0.
PAD_WITH_END = {"sd1": True, "sdxl_g": False}
_SCRIPT = r"""
import json, sys
import transformers
from transformers import CLIPTokenizer
tok = CLIPTokenizer.from_pretrained(sys.argv[1])
ids = tok(sys.argv[2])["input_ids"]
vocab = {v: k for k, v in tok.get_vocab().items()}
print(json.dumps({"version": transformers.__version__, "ids": ids,
                  "pieces": {str(i): vocab[i] for i in ids},
                  "converted": tok.convert_tokens_to_string([vocab[ids[2]]])}))
"""


def _interpreters() -> list[str]:
    extra = [p for p in os.environ.get("STORM_TRANSFORMERS_PYTHONS", "").split(os.pathsep) if p]
    return [sys.executable, *extra]


def _tokenise(python: str) -> dict:
    vocab_dir = comfy_package_dir() / "sd1_tokenizer"
    out = subprocess.run([python, "-c", _SCRIPT, str(vocab_dir), PROMPT], capture_output=True, text=True,
                         timeout=300, check=False)
    assert out.returncode == 0, f"{python}: {out.stderr[-2000:]}"
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def tokenisations() -> list[dict]:
    return [_tokenise(python) for python in _interpreters()]


def test_required_transformers_majors_are_covered(tokenisations):
    majors = {int(t["version"].split(".")[0]) for t in tokenisations}
    required = {int(m) for m in os.environ.get("STORM_REQUIRE_TRANSFORMERS", "").split(",") if m.strip()}
    assert required <= majors, f"transformers majors tested: {sorted(majors)}, required: {sorted(required)}"


@pytest.mark.parametrize("tokenizer", sorted(PAD_WITH_END))
def test_words_resolve_without_end_of_word_markers_on_every_version(pack, tokenisations, tokenizer):
    tokens, ops = pack.storm_ops.token_layout, pack.storm_ops
    for t in tokenisations:
        ids = t["ids"]
        start, end = ids[0], ids[-1]
        pad = end if PAD_WITH_END[tokenizer] else 0
        row = ids + [pad] * (tokens.CLIP_CHUNK - len(ids))
        inv_vocab = {int(k): v for k, v in t["pieces"].items()}
        layout = tokens.TokenLayout.from_ids(row, ops.clip_vocab.clip_vocab_decoder(inv_vocab), start_id=start,
                                             end_id=end)
        subjects = ops.subjects.resolve_subjects(layout, "cat, dog, café")
        assert [s.positions for s in subjects][:2] == [(2,), (5,)], t["version"]
        text = tokens.PromptTokens(PROMPT, layout, subjects).describe()
        assert "</w>" not in text and "2:cat 3:and 4:a 5:dog" in text, (t["version"], text)
        if t["version"].startswith("5."):
            # the reason the pack does not call convert_tokens_to_string: 5.x keeps the marker
            assert t["converted"] == "cat</w>"
