"""AID / PAID on DiTs (SD3's MMDiT, Flux.1, Flux.2, Chroma, Qwen-Image, Z-Image) through STORM Attention Interpolation.

The frames' joint attention is interpolated over the endpoints' joint keys/values (``nodes/aid_attention.py``);
the endpoint rows and the unconditional pass keep plain attention, so the first and last frames are the plain
generations of A and B; the middle frame must differ from both and from the frame that the same noise and
conditioning give without interpolated attention (warm-up 0).
"""

import comfy.sample
import pytest
import torch

from harness.nodeutil import call_node, node_output
from harness.tiny_dit import build_tiny_dit
from harness.tiny_models import tiny_conditioning

#: 64 x 96 px: 4 x 6 patches of 2 x 2 (Qwen-Image's sampler makes it (1, 16, 1, 8, 12)); Flux.2: 4 x 6 latent
#: pixels of 16 px, patches of 1
LATENTS = {"flux2": (1, 128, 4, 6)}
#: families whose latent is a one-frame video latent (the Wan 2.1 latent format): the node samples (B, 16, 1, h, w)
VIDEO_LATENT = ("qwen_image", "krea2")
STEPS = 3
#: the cfg each family is sampled with (Flux is guidance-distilled: cfg 1, no unconditional pass)
CFG = {"sd3": 4.0, "flux": 1.0, "chroma": 3.5, "qwen_image": 3.0, "z_image": 3.0, "flux2": 3.0, "krea2": 3.0}
#: the host's model class of the families ComfyUI 0.3.64 lacks
NEWER = {"z_image": "ZImage", "flux2": "Flux2", "krea2": "Krea2"}


def latent_of(arch: str) -> tuple:
    return LATENTS.get(arch, (1, 16, 8, 12))


@pytest.fixture(scope="module", params=["sd3", "flux", "chroma", "qwen_image", "z_image", "flux2", "krea2"])
def dit(request):
    import comfy.supported_models

    if request.param in NEWER and not hasattr(comfy.supported_models, NEWER[request.param]):
        pytest.skip(f"this ComfyUI has no {NEWER[request.param]}")
    with torch.inference_mode():
        tiny = build_tiny_dit(request.param)
        prompts = {text: tiny_conditioning(tiny.clip, text) for text in ("a dog", "a car", "a dog driving a car", "")}
    return tiny, prompts


def interpolate(nodes, tiny, prompts, mode="fused outer", warmup=1.0, guide=None, frames=3, seed=3, chunk=0):
    with torch.inference_mode():
        return node_output(nodes["STORM_AttentionInterpolation"]().interpolate(
            model=tiny.model, positive_a=prompts["a dog"], positive_b=prompts["a car"], negative=prompts[""],
            latent_image={"samples": torch.zeros(latent_of(tiny.arch))}, frames=frames, seed=seed, steps=STEPS,
            cfg=CFG[tiny.arch], sampler_name="euler", scheduler="simple", mode=mode, alpha=3.0, beta=3.0,
            warmup_ratio=warmup, chunk_size=chunk, endpoint_noise="same", guide=guide))


def plain(tiny, cond, negative, seed=3):
    """The host's own sampling of one prompt, with the latent the node samples (5-D for Qwen-Image)."""
    with torch.inference_mode():
        latent = comfy.sample.fix_empty_latent_channels(tiny.model, torch.zeros(latent_of(tiny.arch)))
        return comfy.sample.sample(tiny.model, comfy.sample.prepare_noise(latent, seed), STEPS, CFG[tiny.arch], "euler",
                                   "simple", cond, negative, latent, seed=seed, disable_pbar=True)[0]


def close(x, y):
    return (x - y).abs().max().item() <= 1e-5 * y.abs().max().item() + 1e-6


def differs(x, y):
    return (x - y).abs().max().item() > 1e-4 * y.abs().max().item()


def test_endpoints_are_the_plain_generations_and_the_frames_are_interpolated(dit, nodes):
    tiny, prompts = dit
    frames, attention, coefficients = interpolate(nodes, tiny, prompts)
    samples = frames["samples"]
    shape = (3, 16, 1, 8, 12) if tiny.arch in VIDEO_LATENT else (3, *latent_of(tiny.arch)[1:])
    assert samples.shape == shape and coefficients == "0: 0.0000, 1: 0.5000, 2: 1.0000"
    a, b = plain(tiny, prompts["a dog"], prompts[""]), plain(tiny, prompts["a car"], prompts[""])
    assert close(samples[0], a) and close(samples[-1], b)
    without = interpolate(nodes, tiny, prompts, warmup=0.0)[0]["samples"]  # the same frames, plain attention
    assert close(without[0], a) and close(without[-1], b)
    middle = samples[1]
    assert differs(middle, a) and differs(middle, b) and differs(middle, without[1])
    record = attention.latest()  # the DiT recorder's maps of every frame, one column per text row
    assert record.info.family == tiny.arch and record.step_maps[0][1].shape[:3] == (3, prompts["a dog"][0][0].shape[1], 4)


def test_interpolation_acts_during_the_warmup_only(dit, nodes):
    """Warm-up 0.5 of 3 steps interpolates the first step only: its middle frame lies between no interpolation
    (warm-up 0) and interpolation on every step (warm-up 1), equal to neither."""
    tiny, prompts = dit
    runs = {w: interpolate(nodes, tiny, prompts, warmup=w)[0]["samples"] for w in (0.0, 0.5, 1.0)}
    assert differs(runs[0.5][1], runs[0.0][1]) and differs(runs[0.5][1], runs[1.0][1])
    assert close(runs[0.5][0], runs[0.0][0]) and close(runs[0.5][-1], runs[1.0][-1])


def test_chunks_give_the_same_frames(dit, nodes):
    tiny, prompts = dit
    if tiny.arch not in ("sd3", "qwen_image"):
        pytest.skip("one MMDiT and one 5-D latent with an unconditional pass are enough")
    whole = interpolate(nodes, tiny, prompts, frames=5, chunk=0)[0]["samples"]
    chunked = interpolate(nodes, tiny, prompts, frames=5, chunk=2)[0]["samples"]
    assert whole.shape[0] == 5 and chunked.shape == whole.shape and close(chunked, whole)


def test_inner_and_outer_interpolation_differ(dit, nodes):
    tiny, prompts = dit
    outer = interpolate(nodes, tiny, prompts, mode="outer")[0]["samples"]
    inner = interpolate(nodes, tiny, prompts, mode="inner")[0]["samples"]
    fused = interpolate(nodes, tiny, prompts, mode="fused outer")[0]["samples"]
    assert close(outer[0], inner[0]) and close(outer[-1], inner[-1])
    assert differs(inner[1], outer[1]) and differs(fused[1], outer[1])


def test_paid_guide_prompt_on_a_dit(dit, nodes):
    tiny, prompts = dit
    if tiny.arch not in ("sd3", "flux", "flux2"):
        pytest.skip("one DiT per text encoder kind: SD3 (CLIP), Flux (T5) and Flux.2 klein (Qwen3) pad their prompts "
                    "to one length")
    aid = interpolate(nodes, tiny, prompts)[0]["samples"]
    frames, attention, _ = interpolate(nodes, tiny, prompts, guide=prompts["a dog driving a car"])
    paid = frames["samples"]
    assert close(paid[0], aid[0]) and close(paid[-1], aid[-1])
    assert differs(paid[1], aid[1])
    plain_paid = interpolate(nodes, tiny, prompts, guide=prompts["a dog driving a car"], warmup=0.0)[0]["samples"]
    assert differs(paid[1], plain_paid[1])  # the guide's frame is interpolated too, not only conditioned
    with torch.inference_mode():
        tokens = call_node(nodes["STORM_SubjectTokens"], clip=tiny.clip, text="a dog driving a car",
                           subjects="dog, car")[0]
        best, index, _ = call_node(nodes["STORM_SelectFrame"], frames=frames, attention=attention, tokens=tokens,
                                   include_endpoints=False)
    assert index == 1 and torch.equal(best["samples"][0], paid[1])


def test_prompts_of_different_lengths_are_refused_on_a_dit(dit, nodes):
    tiny, prompts = dit
    if tiny.arch not in ("chroma", "qwen_image", "z_image", "krea2"):
        pytest.skip("SD3, Flux and Flux.2 klein pad every prompt to one length")
    longer = {**prompts, "a car": prompts["a dog driving a car"]}
    with pytest.raises(Exception, match=r"STORM Attention Interpolation: input 'positive_b':.*text rows"):
        interpolate(nodes, tiny, longer)
    with pytest.raises(Exception, match=r"input 'guide':.*text rows"):
        interpolate(nodes, tiny, prompts, guide=prompts["a dog driving a car"])
