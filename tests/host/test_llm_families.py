"""Families with a language-model text encoder: Qwen-Image, Z-Image and Flux.2 klein.

Each host encoder wraps the prompt in its family's chat template: Qwen-Image's (Qwen2.5-VL) drops the template's
system turn and the user turn's opening from the conditioning and keeps the prompt and the template's closing tokens;
Z-Image's (Qwen3 4B) keeps every token of ``<|im_start|>user\\n{}<|im_end|>\\n<|im_start|>assistant\\n``; Flux.2
klein's (Qwen3 4B, three layers stacked) keeps them too and pads to 512 rows. Subject Tokens must give each word the
rows it has in that conditioning (checked against the host's own tokenizer output); the joint attention is recorded
and guided through the DiT path: Qwen-Image's dual-stream blocks, Z-Image's single-stream blocks over text and image
rows each padded to a multiple of 32, Flux.2's double- and single-stream blocks on its 128-channel latent of 16 px
per latent pixel. Tiny models from the host's classes (thin encoders, the host's tokenizers).
"""

import dataclasses

import comfy.sample
import pytest
import torch

from harness.nodeutil import call_node, guided_log_of_method, weakest_subject_attention
from harness.tiny_dit import build_tiny_dit
from harness.tiny_models import tiny_conditioning


@dataclasses.dataclass(frozen=True)
class Family:
    arch: str
    key: str            # the tokens' key in clip.tokenize()
    stream: str         # the stream's name in layouts and chips
    tokens: int         # tokens of "a cat and a dog" in the template (with padding)
    rows: int           # rows of its conditioning
    cat_dog: tuple      # the rows of cat and dog
    latent: tuple       # the latent the host's KSampler passes (Qwen-Image: a one-frame video latent)
    empty: tuple        # an empty latent as the user's graph gives it
    maps: tuple         # one map pixel per patch
    step_size: float    # A&E's step size that makes a difference on the tiny model within 6 steps


FAMILIES = {
    "qwen_image": Family("qwen_image", "qwen25_7b", "Qwen2.5-VL", 44, 10, (1, 4), (1, 16, 1, 8, 12), (1, 16, 8, 12),
                         (4, 6), 80.0),
    "z_image": Family("z_image", "qwen3_4b", "Qwen3", 13, 13, (4, 7), (1, 16, 8, 12), (1, 16, 8, 12), (4, 6), 80.0),
    "flux2": Family("flux2", "qwen3_4b", "Qwen3", 512, 512, (4, 7), (1, 128, 4, 6), (1, 128, 4, 6), (4, 6), 20.0),
    "krea2": Family("krea2", "qwen3vl_4b", "Qwen3-VL", 44, 10, (1, 4), (1, 16, 1, 8, 12), (1, 16, 8, 12), (4, 6), 80.0),
}
CFG = 3.0


#: the host's model class of each family (ComfyUI 0.3.64 has Qwen-Image only)
HOST_CLASSES = {"qwen_image": "QwenImage", "z_image": "ZImage", "flux2": "Flux2", "krea2": "Krea2"}


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    import comfy.supported_models

    if not hasattr(comfy.supported_models, HOST_CLASSES[request.param]):
        pytest.skip(f"this ComfyUI has no {HOST_CLASSES[request.param]} (added after 0.3.64)")
    with torch.inference_mode():
        return FAMILIES[request.param], build_tiny_dit(request.param)


@pytest.fixture(scope="module")
def prompt(family, nodes):
    _, tiny = family
    with torch.inference_mode():
        tokens, positive, _ = call_node(nodes["STORM_SubjectTokens"], clip=tiny.clip, text="a cat and a dog",
                                        subjects="cat, dog")
        negative = tiny_conditioning(tiny.clip, "")
    return tokens, positive, negative


def test_each_word_gets_the_rows_the_host_encoder_gives_it(family, prompt):
    """The conditioning's rows are the last ``rows`` of the host tokenizer's output (Qwen-Image: 10 of 44, the
    dropped rows being the template's system turn; Z-Image and Flux.2: all of them); cat and dog are the rows whose
    host tokens are " cat" and " dog"; the template's rows are no words."""
    fam, tiny = family
    tokens, positive, _ = prompt
    ids = [t for t, _ in tiny.clip.tokenize("a cat and a dog")[fam.key][0]]
    hf = getattr(tiny.clip.tokenizer, fam.key).tokenizer
    rows = positive[0][0].shape[1]
    kept = ids[len(ids) - rows:]
    assert (len(ids), rows, tokens.layout.length) == (fam.tokens, fam.rows, fam.rows)
    if fam.arch in ("qwen_image", "krea2"):
        assert hf.decode(ids[:len(ids) - rows]).startswith("<|im_start|>system")  # the dropped template turn
    else:
        assert hf.decode(kept[:3]) == "<|im_start|>user\n"  # the template's opening is kept
    cat, dog = tokens.subjects
    assert (cat.positions, dog.positions) == ((fam.cat_dog[0],), (fam.cat_dog[1],))
    assert [hf.decode([kept[p]]) for p in fam.cat_dog] == [" cat", " dog"]
    assert [w.text for w in tokens.layout.words] == ["a", "cat", "and", "a", "dog"]
    assert [w.positions[0] for w in tokens.layout.words] == list(range(fam.cat_dog[0] - 1, fam.cat_dog[1] + 1))


def test_token_chips_show_the_rows_of_the_conditioning(pack, family, prompt):
    """Without a loaded model (the UI's chips) the family's own tokenizer gives the same rows."""
    fam, _ = family
    tokens, _, _ = prompt
    reply = pack.nodes.web_routes.prompt_tokens("a cat and a dog", fam.arch)
    assert [(w["text"], w["positions"]) for w in reply["words"]] == [
        (w.text, list(w.positions)) for w in tokens.layout.words]
    assert reply["streams"] == [fam.stream]


def test_the_recorder_records_each_block_and_leaves_the_sample_unchanged(family, prompt, nodes):
    fam, tiny = family
    tokens, positive, negative = prompt
    latent = torch.zeros(fam.latent)
    noise = comfy.sample.prepare_noise(latent, 3)
    with torch.inference_mode():
        plain = comfy.sample.sample(tiny.model, noise, 3, CFG, "euler", "simple", positive, negative, latent,
                                    seed=3, disable_pbar=True)
        recorded_model, attention = call_node(nodes["STORM_AttentionRecorder"], model=tiny.model)
        recorded = comfy.sample.sample(recorded_model, noise, 3, CFG, "euler", "simple", positive, negative, latent,
                                       seed=3, disable_pbar=True)
    assert torch.equal(plain, recorded)
    record = attention.latest()
    blocks = len(tiny.model.model.diffusion_model.double_blocks) + len(tiny.model.model.diffusion_model.single_blocks) \
        if fam.arch == "flux2" else 2  # Qwen-Image: 2 dual-stream blocks; Z-Image, Krea 2: 2 joint blocks (not the
    # refiners: Z-Image's, Krea 2's text-fusion blocks)
    assert record.info.family == fam.arch and len(record.info.layers) == blocks
    maps = record.step_maps[0][1]
    assert maps.shape[-3:] == (fam.rows, *fam.maps)  # one column per conditioning row, one pixel per patch
    assert torch.allclose(maps.float().sum(-3), torch.ones(maps.shape[-2:]), atol=1e-2)
    with torch.inference_mode():  # the heatmap of that run: 8 (Flux.2: 16) image pixels per latent pixel
        grid, _, masks, log = call_node(nodes["STORM_AttentionHeatmap"], attention=attention,
                                        latent={"samples": recorded}, tokens=tokens)
    assert masks.shape == (2, 64, 96) and grid.shape[-1] == 3 and not torch.equal(masks[0], masks[1])
    assert log == "no guided steps in this run"


def _guided(nodes, fam, tiny, tokens, positive, negative, step_size):
    with torch.inference_mode():
        (guidance,) = call_node(nodes["STORM_AttendAndExcite"], tokens=tokens, step_size=step_size, start_at=0.0,
                                end_at=1.0, thresholds="", max_refine_iters=0)
        _, attention = call_node(nodes["STORM_GuidedKSampler"], model=tiny.model, guidance=guidance, seed=5,
                                 steps=6, cfg=CFG, sampler_name="euler", scheduler="simple", positive=positive,
                                 negative=negative, latent_image={"samples": torch.zeros(fam.empty)})
    return attention.latest()


def test_attend_and_excite_raises_the_weakest_subjects_attention(family, prompt, nodes, pack):
    """Same seed and noise, A&E off (step size 0) and on; Qwen-Image's empty 4-D latent is made 5-D by the sampler
    node as the host's KSampler does."""
    fam, tiny = family
    tokens, positive, negative = prompt
    off = _guided(nodes, fam, tiny, tokens, positive, negative, 0.0)
    on = _guided(nodes, fam, tiny, tokens, positive, negative, fam.step_size)
    weakest_off = weakest_subject_attention(pack, off, tokens)
    weakest_on = weakest_subject_attention(pack, on, tokens)
    assert sum(weakest_on[1:]) / 5 > sum(weakest_off[1:]) / 5 + 0.05, (weakest_off, weakest_on)
    assert on.info.guided_steps == [0, 1, 2, 3, 4, 5] and on.info.weights_copied == 0
    assert all(e.updates == 1 for e in on.log)


@pytest.mark.parametrize("method", ["syngen", "storm", "astar"])
def test_binding_spatial_and_astar_guidance_run(family, nodes, method):
    fam, tiny = family
    log = guided_log_of_method(nodes, tiny.clip, tiny.model, method, cfg=CFG, latent=torch.zeros(fam.empty))
    assert log and all(e.updates >= 1 and not e.skipped for e in log)
    assert all(isinstance(v, float) for e in log for v in e.loss_before + e.loss_after)


class _TokensOnly:
    """A text encoder reduced to its tokenizer's output keys: what :func:`prompt_layout` reads first."""

    def __init__(self, keys):
        self.keys = keys

    def tokenize(self, text):
        return {key: [[(1, 1.0)]] for key in self.keys}


@pytest.mark.parametrize(("keys", "names"), [
    (("l", "mistral3_24b"), "Flux.2 dev's Mistral text encoder"),
    # the keys of the host's HiDreamTokenizer (comfy/text_encoders/hidream.py); its Llama 3 tokenizer file is not in
    # the host trees here, so the real tokenizer cannot be built
    (("g", "l", "t5xxl", "llama"), "HiDream's text encoders"),
])
def test_text_encoders_without_a_tested_layout_are_refused_by_name(pack, keys, names):
    """Subject Tokens (and everything that lays out a prompt) names the text encoder instead of laying out only the
    streams it knows (HiDream's T5 rows alone would pass for a Flux conditioning)."""
    with pytest.raises(pack.storm_ops.errors.StormError) as err:
        pack.nodes.host_tokenizer.prompt_layout(_TokensOnly(keys), "a cat and a dog", rows=128)
    assert names in str(err.value) and "not supported yet" in str(err.value)
    assert err.value.input_name == "clip"
