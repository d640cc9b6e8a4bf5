"""Heatmaps record only the prompt's own conditional pass when other guidance runs extra passes.

Perturbed-Attention Guidance and Self-Attention Guidance (core ComfyUI nodes) run a second
conditional-slot pass per step (PAG: the prompt with perturbed self-attention; SAG: the blurred
negative prompt), which also arrives with ``cond_or_uncond == [0]``.
"""

import importlib

import comfy.sample
import pytest
import torch

LAYERS = "1/32 res: down+up (A&E)"
STEPS = 3


def _extra_node(module: str, cls: str):
    for name in (f"comfy_extras.{module}", f"comfy_extras.nodes.{module}"):
        try:
            return getattr(importlib.import_module(name), cls)
        except ImportError:
            continue
    pytest.skip(f"this host has no {module}")


def _apply(node_cls, *args):
    if hasattr(node_cls, "execute"):  # upstream's V3 node schema
        out = node_cls.execute(*args)
        return out.result[0] if hasattr(out, "result") else out[0]
    return getattr(node_cls(), node_cls.FUNCTION)(*args)[0]


def with_pag(model):
    return _apply(_extra_node("nodes_pag", "PerturbedAttentionGuidance"), model, 3.0)


def with_sag(model):
    return _apply(_extra_node("nodes_sag", "SelfAttentionGuidance"), model, 0.5, 2.0)


def recorded(nodes, model, pos, neg):
    with torch.inference_mode():
        patched, attention = nodes["STORM_AttentionRecorder"]().patch(model=model, attention_layers=LAYERS)
        latent = torch.zeros(1, 4, 32, 32)
        comfy.sample.sample(patched, comfy.sample.prepare_noise(latent, 1), STEPS, 7.5, "euler", "normal", pos, neg,
                            latent, disable_pbar=True, seed=1)
    return attention.latest()


@pytest.mark.parametrize("extra", [with_pag, with_sag], ids=["pag", "sag"])
def test_recorder_keeps_one_conditional_pass_per_step(nodes, tiny, encode, extra):
    tm = tiny("sd15")
    pos, neg = encode(tm.clip, "a cat and a dog"), encode(tm.clip, "blurry")
    plain = recorded(nodes, tm.model, pos, neg)
    with torch.inference_mode():
        guided_model = extra(tm.model)
    other = recorded(nodes, guided_model, pos, neg)
    assert len(plain.step_maps) == STEPS
    assert len(other.step_maps) == STEPS, "the extra guidance pass was recorded as the prompt's maps"
    # the first step sees the same latent with and without the extra guidance: the same maps
    assert torch.equal(plain.step_maps[0][1], other.step_maps[0][1])
    assert torch.equal(plain.prompt_encoding, other.prompt_encoding)


def test_guided_sampler_keeps_one_conditional_pass_per_step(nodes, tiny, encode):
    tm = tiny("sd15")
    with torch.inference_mode():
        tokens, pos, _ = nodes["STORM_SubjectTokens"]().run(
            clip=tm.clip, text="a cat and a dog", subjects="cat, dog")["result"]
        (guidance,) = nodes["STORM_AttendAndExcite"]().build(tokens=tokens, step_size=20.0, start_at=0.0, end_at=0.5,
                                                             thresholds="", max_refine_iters=0, smoothing=True,
                                                             end_tokens="auto")
        _, attention = nodes["STORM_GuidedKSampler"]().sample(
            model=with_pag(tm.model), guidance=guidance, seed=0, steps=STEPS, cfg=7.5, sampler_name="euler",
            scheduler="normal", positive=pos, negative=encode(tm.clip, "blurry"),
            latent_image={"samples": torch.zeros(1, 4, 32, 32)}, denoise=1.0, attention_layers=LAYERS)
    assert len(attention.latest().step_maps) == STEPS
