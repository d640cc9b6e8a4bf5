"""Qwen-Image: a language-model text encoder inside a chat template, and dual-stream joint attention.

The host encodes the prompt inside Qwen-Image's chat template with Qwen2.5-VL and drops the template's system
turn from the conditioning, keeping the prompt and the template's closing tokens. Subject Tokens must give each
word the rows it has in that conditioning; the joint attention (text rows first, as Flux) is recorded and guided
through the DiT path. On a tiny Qwen-Image built from the host's classes (thin Qwen2.5-VL, the host's tokenizer).
"""

import comfy.sample
import pytest
import torch

from harness.nodeutil import call_node, guided_log_of_method, weakest_subject_attention
from harness.tiny_dit import build_tiny_dit
from harness.tiny_models import tiny_conditioning

#: Qwen-Image's latent is a video-format latent of one frame: (B, 16, 1, H, W)
LATENT = (1, 16, 1, 8, 12)
CFG = 3.0


@pytest.fixture(scope="module")
def qwen():
    with torch.inference_mode():
        return build_tiny_dit("qwen_image")


@pytest.fixture(scope="module")
def prompt(qwen, nodes):
    with torch.inference_mode():
        tokens, positive, _ = call_node(nodes["STORM_SubjectTokens"], clip=qwen.clip, text="a cat and a dog",
                                        subjects="cat, dog")
        negative = tiny_conditioning(qwen.clip, "")
    return tokens, positive, negative


def test_each_word_gets_the_rows_the_host_encoder_gives_it(qwen, prompt):
    """The host's tokenizer puts "a cat and a dog" inside the chat template (44 tokens); its encoder keeps the
    last 10 (the prompt and the template's closing tokens). cat and dog are rows 1 and 4 of that conditioning,
    the closing template rows are no words."""
    tokens, positive, _ = prompt
    ids = [t for t, _ in qwen.clip.tokenize("a cat and a dog")["qwen25_7b"][0]]
    hf = qwen.clip.tokenizer.qwen25_7b.tokenizer
    rows = positive[0][0].shape[1]
    kept = ids[len(ids) - rows:]
    assert len(ids) == 44 and rows == tokens.layout.length == 10
    assert hf.decode(ids[:len(ids) - rows]).startswith("<|im_start|>system")  # the dropped template turn
    assert [hf.decode([t]) for t in kept[:6]] == ["a", " cat", " and", " a", " dog", "<|im_end|>"]
    cat, dog = tokens.subjects
    assert (cat.positions, dog.positions) == ((1,), (4,))
    assert [w.text for w in tokens.layout.words] == ["a", "cat", "and", "a", "dog"]


def test_token_chips_show_the_rows_of_the_conditioning(pack, prompt):
    """Without a loaded model (the UI's chips) the prompt's start is found in the template: the same rows."""
    tokens, _, _ = prompt
    reply = pack.nodes.web_routes.prompt_tokens("a cat and a dog", "qwen_image")
    assert [(w["text"], w["positions"]) for w in reply["words"]] == [
        (w.text, list(w.positions)) for w in tokens.layout.words]
    assert reply["streams"] == ["Qwen2.5-VL"]


def test_the_recorder_records_each_block_and_leaves_the_sample_unchanged(qwen, prompt, nodes):
    tokens, positive, negative = prompt
    latent = torch.zeros(LATENT)
    noise = comfy.sample.prepare_noise(latent, 3)
    with torch.inference_mode():
        plain = comfy.sample.sample(qwen.model, noise, 3, CFG, "euler", "simple", positive, negative, latent,
                                    seed=3, disable_pbar=True)
        recorded_model, attention = call_node(nodes["STORM_AttentionRecorder"], model=qwen.model)
        recorded = comfy.sample.sample(recorded_model, noise, 3, CFG, "euler", "simple", positive, negative, latent,
                                       seed=3, disable_pbar=True)
    assert torch.equal(plain, recorded)
    record = attention.latest()
    assert record.info.family == "qwen_image" and len(record.info.layers) == 2  # both dual-stream blocks
    maps = record.step_maps[0][1]
    assert maps.shape[-3:] == (10, 4, 6)  # one column per conditioning row, one map pixel per 2 x 2 patch
    assert torch.allclose(maps.float().sum(-3), torch.ones(maps.shape[-2:]), atol=1e-2)
    with torch.inference_mode():  # the heatmap of the run that made this one-frame video latent
        grid, _, masks, log = call_node(nodes["STORM_AttentionHeatmap"], attention=attention,
                                        latent={"samples": recorded}, tokens=tokens)
    assert masks.shape == (2, 64, 96) and grid.shape[-1] == 3 and not torch.equal(masks[0], masks[1])
    assert log == "no guided steps in this run"


def _guided(nodes, qwen, tokens, positive, negative, step_size):
    with torch.inference_mode():
        (guidance,) = call_node(nodes["STORM_AttendAndExcite"], tokens=tokens, step_size=step_size, start_at=0.0,
                                end_at=1.0, thresholds="", max_refine_iters=0)
        _, attention = call_node(nodes["STORM_GuidedKSampler"], model=qwen.model, guidance=guidance, seed=5,
                                 steps=6, cfg=CFG, sampler_name="euler", scheduler="simple", positive=positive,
                                 negative=negative, latent_image={"samples": torch.zeros(1, 16, 8, 12)})
    return attention.latest()


def test_attend_and_excite_raises_the_weakest_subjects_attention(qwen, prompt, nodes, pack):
    """Same seed and noise (an empty 4-D latent, made 5-D by the sampler node as the host's KSampler does)."""
    tokens, positive, negative = prompt
    off = _guided(nodes, qwen, tokens, positive, negative, 0.0)
    on = _guided(nodes, qwen, tokens, positive, negative, 80.0)
    weakest_off = weakest_subject_attention(pack, off, tokens)
    weakest_on = weakest_subject_attention(pack, on, tokens)
    assert sum(weakest_on[1:]) / 5 > sum(weakest_off[1:]) / 5 + 0.05, (weakest_off, weakest_on)
    assert on.info.guided_steps == [0, 1, 2, 3, 4, 5] and on.info.weights_copied == 0
    assert all(e.updates == 1 for e in on.log)


@pytest.mark.parametrize("method", ["syngen", "storm", "astar"])
def test_binding_spatial_and_astar_guidance_run(qwen, nodes, method):
    log = guided_log_of_method(nodes, qwen.clip, qwen.model, method, cfg=CFG, latent=torch.zeros(1, 16, 8, 12))
    assert log and all(e.updates >= 1 and not e.skipped for e in log)
    assert all(isinstance(v, float) for e in log for v in e.loss_before + e.loss_after)
