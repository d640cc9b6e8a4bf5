"""STORM Image Morph on the real hosts, with a test-only adapter that patches attn2 as IP-Adapter does: exact
endpoints, a middle frame unlike both, image-control's t = 0 is the plain model, the mix is the adapter at scale t,
bad input."""

import comfy.sample
import pytest
import torch

from harness.image_adapter import TinyImageAdapter, apply_image_adapter
from harness.nodeutil import node_output

HW = (16, 16)
STEPS = 4


@pytest.fixture(scope="module")
def world(tiny, encode):
    tm = tiny("sd15")
    with torch.inference_mode():
        model_a = apply_image_adapter(tm.model, TinyImageAdapter.from_seed(1))
        model_b = apply_image_adapter(tm.model, TinyImageAdapter.from_seed(2))
    return tm, model_a, model_b, encode(tm.clip, "a photo"), encode(tm.clip, "")


def morph(nodes, model_a, model_b, pos, neg, frames=3, warmup=0.5, chunk=0, seed=3, alpha=1.0, beta=1.0,
          noise="same"):
    with torch.inference_mode():
        return node_output(nodes["STORM_ImageMorph"]().morph(
            model_a=model_a, model_b=model_b, positive=pos, negative=neg, latent_image={"samples": torch.zeros(1, 4, *HW)},
            frames=frames, seed=seed, steps=STEPS, cfg=7.5, sampler_name="euler", scheduler="normal",
            mode="fused outer", alpha=alpha, beta=beta, warmup_ratio=warmup, chunk_size=chunk,
            endpoint_noise=noise))


def plain(model, pos, neg, seed=3):
    latent = torch.zeros(1, 4, *HW)
    with torch.inference_mode():
        return comfy.sample.sample(model, comfy.sample.prepare_noise(latent, seed), STEPS, 7.5, "euler", "normal",
                                   pos, neg, latent, seed=seed, disable_pbar=True)[0]


def close(x, y):
    return (x - y).abs().max().item() <= 1e-5 * y.abs().max().item() + 1e-6


def far(x, y):
    return (x - y).abs().max().item() > 1e-2 * y.abs().max().item()


def test_the_test_adapter_changes_the_image(world):
    tm, model_a, model_b, pos, neg = world
    base, a, b = plain(tm.model, pos, neg), plain(model_a, pos, neg), plain(model_b, pos, neg)
    assert far(a, base) and far(b, base) and far(a, b)


@pytest.mark.parametrize("chunk", [0, 1])
def test_image_morph_endpoints_are_the_two_models_plain_generations(nodes, world, chunk):
    tm, model_a, model_b, pos, neg = world
    frames, attention, coefficients = morph(nodes, model_a, model_b, pos, neg, frames=4, chunk=chunk)
    samples = frames["samples"]
    assert samples.shape == (4, 4, *HW)
    assert close(samples[0], plain(model_a, pos, neg))
    assert close(samples[-1], plain(model_b, pos, neg))
    assert coefficients.startswith("0: 0.0000") and coefficients.endswith("3: 1.0000")
    assert attention.find(frames) is not None


def test_image_morph_middle_frame_differs_from_both_endpoints(nodes, world):
    tm, model_a, model_b, pos, neg = world
    samples = morph(nodes, model_a, model_b, pos, neg, frames=3)[0]["samples"]  # alpha = beta = 1: t = 0, 0.5, 1
    assert far(samples[1], samples[0]) and far(samples[1], samples[2])


def test_image_control_t0_is_the_unpatched_model(nodes, world):
    tm, _, model_b, pos, neg = world
    samples = morph(nodes, tm.model, model_b, pos, neg, frames=3)[0]["samples"]
    assert close(samples[0], plain(tm.model, pos, neg))
    assert close(samples[-1], plain(model_b, pos, neg))
    assert far(samples[1], samples[0]) and far(samples[1], samples[2])


def test_image_control_frame_is_the_adapter_at_scale_t(nodes, world):
    """Without self-attention interpolation (warm-up 0), image-control's frame at t = 0.5 is the plain generation
    of the additive adapter at half its scale: (1 - t) Attn(q, K, V) + t (Attn(q, K, V) + s Attn(q, K_img, V_img))."""
    tm, _, _, pos, neg = world
    with torch.inference_mode():
        full = apply_image_adapter(tm.model, TinyImageAdapter.from_seed(2, scale=1.0))
        half = apply_image_adapter(tm.model, TinyImageAdapter.from_seed(2, scale=0.5))
    samples = morph(nodes, tm.model, full, pos, neg, frames=3, warmup=0.0)[0]["samples"]
    assert (samples[1] - plain(half, pos, neg)).abs().max().item() <= 1e-4 * samples[1].abs().max().item()


def test_self_attention_interpolation_changes_the_frames_only(nodes, world):
    tm, model_a, model_b, pos, neg = world
    off = morph(nodes, model_a, model_b, pos, neg, frames=3, warmup=0.0)[0]["samples"]
    on = morph(nodes, model_a, model_b, pos, neg, frames=3, warmup=0.5)[0]["samples"]
    assert far(off[1], on[1])
    assert close(off[0], on[0]) and close(off[-1], on[-1])


def test_image_morph_bad_input_names_the_input(nodes, world, tiny, encode):
    tm, model_a, model_b, pos, neg = world
    other = tiny("sd2").model
    with pytest.raises(Exception, match=r"STORM Image Morph: input 'model_b'.*not the same base model"):
        morph(nodes, model_a, other, pos, neg)
    with torch.inference_mode():
        lora_like = model_b.clone()
        key = next(iter(lora_like.model.state_dict()))
        lora_like.add_patches({key: (torch.zeros_like(lora_like.model.state_dict()[key]),)}, 1.0)
        attn1 = model_b.clone()
        attn1.set_model_attn1_replace(lambda q, k, v, extra: q, "input", 1)
    with pytest.raises(Exception, match=r"input 'model_b'.*differs from model_a in patches"):
        morph(nodes, model_a, lora_like, pos, neg)
    with pytest.raises(Exception, match=r"input 'model_b'.*differs from model_a in model_options.*attn1"):
        morph(nodes, model_a, attn1, pos, neg)
    with pytest.raises(Exception, match=r"input 'positive'"):
        morph(nodes, model_a, model_b, pos + pos, neg)
    with pytest.raises(Exception, match=r"STORM Image Morph: input 'negative':.*another model family"):
        morph(nodes, model_a, model_b, pos, encode(tiny("sdxl").clip, ""))
    with pytest.raises(Exception, match=r"input 'frames'"):
        morph(nodes, model_a, model_b, pos, neg, frames=1)
