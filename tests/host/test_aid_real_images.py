"""AID from real images (the release's issue #1): the endpoints start from inverted latents.

The host's inversion path is the graph users build: VAE Encode, then SamplerCustom with its noise off over
FlipSigmas (the sampler run from sigma ~0 up to sigma_max), which gives the latent the sampler would start from to
end at that image. STORM Attention Interpolation's ``start_a`` / ``start_b`` take such latents: each endpoint then
starts exactly where a sampler with its noise off (KSamplerAdvanced ``add_noise: disable``) would start from it, and
the frames start from the slerp of the two.
"""

import importlib

import comfy.sample
import comfy.samplers
import numpy as np
import pytest
import torch

from harness.nodeutil import node_output

HW = (16, 16)


def interpolate(nodes, model, a, b, neg, steps=5, cfg=7.5, **kw):
    with torch.inference_mode():
        return node_output(nodes["STORM_AttentionInterpolation"]().interpolate(
            model=model, positive_a=a, positive_b=b, negative=neg, latent_image={"samples": torch.zeros(1, 4, *HW)},
            frames=4, seed=3, steps=steps, cfg=cfg, sampler_name="euler", scheduler="normal", mode="fused outer",
            alpha=3.0, beta=3.0, warmup_ratio=0.5, chunk_size=0, endpoint_noise="same", **kw))


def noise_off(model, cond, neg, latent, steps=5, cfg=7.5):
    """The core KSamplerAdvanced with ``add_noise: disable`` from ``latent`` (the whole schedule)."""
    with torch.inference_mode():
        return importlib.import_module("nodes").KSamplerAdvanced().sample(
            model, "disable", 3, steps, cfg, "euler", "normal", cond, neg, {"samples": latent}, 0, 10000,
            "disable")[0]["samples"]


def invert(model, cond, neg, latent, steps, cfg=1.0):
    """What VAE Encode -> SamplerCustom (add_noise off, euler, FlipSigmas of BasicScheduler normal) gives."""
    with torch.inference_mode():
        sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "normal", steps).flip(0)
        if sigmas[0] == 0:
            sigmas[0] = 0.0001  # FlipSigmas
        return comfy.sample.sample_custom(model, torch.zeros_like(latent), cfg, comfy.samplers.sampler_object("euler"),
                                          sigmas.cpu(), cond, neg, latent, disable_pbar=True, seed=0)


def close(x, y):
    return (x - y).abs().max().item() <= 1e-5 * y.abs().max().item() + 1e-5


def test_endpoints_start_from_the_given_latents(nodes, tiny, encode):
    tm = tiny("sd15")
    a, b, neg = encode(tm.clip, "a dog"), encode(tm.clip, "a car"), encode(tm.clip, "")
    gen = torch.Generator().manual_seed(11)
    start_a, start_b = (torch.randn(1, 4, *HW, generator=gen) * 14.6 / 0.18215 for _ in range(2))
    frames = interpolate(nodes, tm.model, a, b, neg, start_a={"samples": start_a}, start_b={"samples": start_b})[0]
    x = frames["samples"]
    assert close(x[0], noise_off(tm.model, a, neg, start_a)[0])
    assert close(x[-1], noise_off(tm.model, b, neg, start_b)[0])
    seeded = interpolate(nodes, tm.model, a, b, neg)[0]["samples"]
    for i in (1, 2):  # frames between start from the two inversions' slerp: they differ from the endpoints and the seeded run
        assert not close(x[i], x[0]) and not close(x[i], x[-1]) and not close(x[i], seeded[i])
    # one start: the other endpoint keeps the seed's noise (its plain generation)
    one = interpolate(nodes, tm.model, a, b, neg, start_a={"samples": start_a})[0]["samples"]
    assert close(one[0], x[0]) and close(one[-1], seeded[-1])


def test_bad_start_latents_are_refused_by_name(nodes, tiny, encode):
    tm = tiny("sd15")
    a, b, neg = encode(tm.clip, "a dog"), encode(tm.clip, "a car"), encode(tm.clip, "")
    with pytest.raises(Exception, match=r"STORM Attention Interpolation: input 'start_b':.*frame size"):
        interpolate(nodes, tm.model, a, b, neg, start_b={"samples": torch.zeros(1, 4, 8, 8)})
    with pytest.raises(Exception, match=r"STORM Attention Interpolation: input 'latent_image':.*empty latent"):
        with torch.inference_mode():
            nodes["STORM_AttentionInterpolation"]().interpolate(
                model=tm.model, positive_a=a, positive_b=b, negative=neg,
                latent_image={"samples": torch.ones(1, 4, *HW)}, frames=3, seed=3, steps=2, cfg=7.5,
                sampler_name="euler", scheduler="normal", mode="fused outer", alpha=3.0, beta=3.0, warmup_ratio=0.5,
                chunk_size=0, endpoint_noise="same", start_a={"samples": torch.zeros(1, 4, *HW)})


#: steps of the inversion and of the interpolation (the test prints the measured differences)
INVERSION_STEPS = 20


def test_on_the_shape_model_an_inverted_image_comes_back_at_its_endpoint(nodes):
    """Outcome: a shape-world picture, inverted with the host's graph and used as endpoint A, comes back (its shapes
    where they were), far closer to the picture than the prompt's plain generation; a middle frame differs."""
    from harness.shape_eval import detect
    from harness.shape_world import make_spec, render, scene_from_spec
    from harness.tiny_models import SHAPE_MODEL, SHAPE_MODEL_SIZE, load_trained, tiny_conditioning

    with torch.inference_mode():
        tm = load_trained(SHAPE_MODEL)
        spec_a, spec_b = make_spec([("red", "circle")]), make_spec([("blue", "square")])
        a, b, neg = (tiny_conditioning(tm.clip, t) for t in (spec_a.text, spec_b.text, ""))
        picture = render(scene_from_spec(spec_a, np.random.default_rng(4), size=SHAPE_MODEL_SIZE))
        latent = tm.vae.encode(torch.from_numpy(picture).float().div(255)[None])
        start = invert(tm.model, a, neg, latent, INVERSION_STEPS)
    frames = interpolate(nodes, tm.model, a, b, neg, steps=INVERSION_STEPS, cfg=1.0, start_a={"samples": start})[0]
    seeded = interpolate(nodes, tm.model, a, b, neg, steps=INVERSION_STEPS, cfg=1.0)[0]
    with torch.inference_mode():
        back, fresh, middle = (tm.vae.decode(x[None])[0].mul(255).clamp(0, 255).cpu().numpy()
                               for x in (frames["samples"][0], seeded["samples"][0], frames["samples"][1]))
    error_back = float(np.abs(back - picture).mean())
    error_fresh = float(np.abs(fresh - picture).mean())
    print(f"inverted endpoint: mean |difference| {error_back:.2f} of 255 from the picture; a fresh generation of its "
          f"prompt: {error_fresh:.2f}")
    assert error_back < 0.5 * error_fresh, (error_back, error_fresh)
    found = {(d.colour, d.shape) for d in detect(back.round().astype(np.uint8))}
    assert ("red", "circle") in found, found
    assert float(np.abs(middle - back).mean()) > 1.0
