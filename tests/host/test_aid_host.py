"""AID / PAID on the real hosts: exact endpoints, chunking, PAID frame selection, bad input."""

import re

import comfy.sample
import pytest
import torch

from harness.aid_probe import interpolation_stats
from harness.nodeutil import node_output

HW = (16, 16)


@pytest.fixture(scope="module")
def prompts(tiny, encode):
    cache = {}

    def get(arch):
        if arch not in cache:
            tm = tiny(arch)
            cache[arch] = (tm, encode(tm.clip, "a dog"), encode(tm.clip, "a car"), encode(tm.clip, ""),
                           encode(tm.clip, "a dog driving a car"))
        return cache[arch]

    return get


def interpolate(nodes, model, a, b, neg, frames=6, chunk=2, warmup=0.5, mode="fused outer", seed=3, steps=5,
                guide=None, noise="same", alpha=3.0, beta=3.0, latent=None):
    latent = latent if latent is not None else {"samples": torch.zeros(1, 4, *HW)}
    with torch.inference_mode():
        return nodes["STORM_AttentionInterpolation"]().interpolate(
            model=model, positive_a=a, positive_b=b, negative=neg, latent_image=latent, frames=frames, seed=seed,
            steps=steps, cfg=7.5, sampler_name="euler", scheduler="normal", mode=mode, alpha=alpha, beta=beta,
            warmup_ratio=warmup, chunk_size=chunk, endpoint_noise=noise, guide=guide)


def plain(model, cond, neg, seed=3, steps=5):
    latent = torch.zeros(1, 4, *HW)
    with torch.inference_mode():
        return comfy.sample.sample(model, comfy.sample.prepare_noise(latent, seed), steps, 7.5, "euler", "normal",
                                   cond, neg, latent, seed=seed, disable_pbar=True)


def close(x, y):
    return (x - y).abs().max().item() <= 1e-5 * y.abs().max().item() + 1e-6


@pytest.mark.parametrize("arch", ["sd15", "sdxl", "sd2"])
@pytest.mark.parametrize("mode", ["fused outer", "inner"])
def test_endpoint_frames_equal_plain_generation(nodes, prompts, arch, mode):
    tm, a, b, neg, _ = prompts(arch)
    frames = node_output(interpolate(nodes, tm.model, a, b, neg, mode=mode))[0]["samples"]
    assert frames.shape == (6, 4, *HW)
    assert close(frames[0], plain(tm.model, a, neg)[0])
    assert close(frames[-1], plain(tm.model, b, neg)[0])


def test_two_frames_are_just_the_endpoints(nodes, prompts):
    tm, a, b, neg, _ = prompts("sd15")
    frames = node_output(interpolate(nodes, tm.model, a, b, neg, frames=2))[0]["samples"]
    assert frames.shape[0] == 2 and close(frames[1], plain(tm.model, b, neg)[0])


def test_different_endpoint_noises(nodes, prompts):
    tm, a, b, neg, _ = prompts("sd15")
    frames = node_output(interpolate(nodes, tm.model, a, b, neg, frames=3, noise="different"))[0]["samples"]
    assert close(frames[-1], plain(tm.model, b, neg, seed=4)[0])  # B uses seed + 1


def test_attention_interpolation_acts_during_the_warmup_only(pack, prompts):
    tm, a, b, neg, _ = prompts("sd15")
    interp = pack.nodes.aid_sampling
    latent = {"samples": torch.zeros(1, 4, *HW)}
    coef = pack.storm_ops.aid.schedule.beta_schedule(5, 3.0, 3.0)
    runs = {}
    for warmup in (0.0, 0.6):
        settings = interp.InterpolationSettings(coef, "fused outer", warmup, 3)
        with torch.inference_mode(), interpolation_stats(pack.nodes.aid_attention) as stats:
            frames, _ = interp.sample_sequence(tm.model, a, b, neg, None, latent, 3, 5, 7.5, "euler", "normal",
                                               settings, None)
        runs[warmup] = (frames, stats)
    no_interp, with_interp = runs[0.0], runs[0.6]
    assert no_interp[1][0].calls == 0  # warm-up 0: the frames are plain embedding interpolation
    # warm-up 0.6 of 5 steps = 3 steps x (16 attn1 + 16 attn2 layers) conditional passes
    assert with_interp[1][0].calls == 3 * 32
    assert not torch.allclose(no_interp[0][1:-1], with_interp[0][1:-1])
    assert torch.allclose(no_interp[0][0], with_interp[0][0])  # endpoints never change


def test_chunking_bounds_the_batch_and_does_not_change_the_frames(pack, prompts):
    tm, a, b, neg, _ = prompts("sd15")
    interp = pack.nodes.aid_sampling
    latent = {"samples": torch.zeros(1, 4, *HW)}
    results = {}
    for frames, chunk in ((4, 2), (16, 2), (16, 14)):
        coef = pack.storm_ops.aid.schedule.beta_schedule(frames, 3.0, 3.0)
        with torch.inference_mode(), interpolation_stats(pack.nodes.aid_attention) as stats:
            out, _ = interp.sample_sequence(tm.model, a, b, neg, None, latent, 3, 3, 7.5, "euler", "normal",
                                            interp.InterpolationSettings(coef, "fused outer", 0.5, chunk), None)
        results[(frames, chunk)] = (out, max(s.max_rows for s in stats), len(stats))
    # cond + uncond rows of one chunk: 2 x (frames per chunk + 2 endpoints), whatever the sequence length
    assert results[(4, 2)][1] == results[(16, 2)][1] == 2 * (2 + 2)
    assert results[(16, 2)][2] == 7 and results[(16, 14)][1] == 2 * 16
    chunked, whole = results[(16, 2)][0], results[(16, 14)][0]
    assert chunked.shape == whole.shape == (16, 4, *HW)
    assert close(chunked, whole)


def test_prompts_of_different_lengths_are_tiled(nodes, prompts, encode):
    tm, a, _, neg, _ = prompts("sd15")
    long_b = encode(tm.clip, ", ".join(["a red car"] * 30))
    assert long_b[0][0].shape[1] == 154
    frames = node_output(interpolate(nodes, tm.model, a, long_b, neg, frames=4))[0]["samples"]
    assert close(frames[0], plain(tm.model, a, neg)[0])
    assert close(frames[-1], plain(tm.model, long_b, neg)[0])


def test_paid_guide_and_frame_selection(nodes, prompts):
    tm, a, b, neg, guide = prompts("sd15")
    frames, attention, coefficients = node_output(interpolate(nodes, tm.model, a, b, neg, frames=5, guide=guide))
    assert coefficients.startswith("0: 0.0000") and coefficients.endswith("4: 1.0000")
    with torch.inference_mode():
        tokens = node_output(nodes["STORM_SubjectTokens"]().run(clip=tm.clip, text="a dog driving a car",
                                                                subjects="dog, car"))[0]
        best, index, scores = node_output(nodes["STORM_SelectFrame"]().select(frames=frames, attention=attention,
                                                                              tokens=tokens, include_endpoints=False))
    assert 1 <= index <= 3 and torch.equal(best["samples"][0], frames["samples"][index])
    assert scores.count("frame") == 5 and "<- best" in scores
    with pytest.raises(Exception, match=r"STORM Select Frame: input 'frames'"):
        nodes["STORM_SelectFrame"]().select(frames={"samples": torch.randn(5, 4, *HW)}, attention=attention,
                                            tokens=tokens, include_endpoints=False)



def test_select_frame_by_clip_score_with_a_clip_vision_model(nodes, prompts):
    """PAID's choice: with a CLIP vision model the frame with the highest CLIP score to the guide prompt (cos of its
    image embedding and the text tower's projected pooled output, both from the host's own calls) wins; endpoints
    stay out unless asked; a missing partner input and a text tower of another width are refused by name."""
    from harness.tiny_models import build_tiny_clip_vision

    tm, a, b, neg, guide = prompts("sd15")
    frames, attention, _ = node_output(interpolate(nodes, tm.model, a, b, neg, frames=5, guide=guide))
    with torch.inference_mode():
        tokens = node_output(nodes["STORM_SubjectTokens"]().run(clip=tm.clip, text="a dog driving a car",
                                                                subjects="dog, car"))[0]
        pooled = tm.clip.encode_from_tokens(tm.clip.tokenize("a dog driving a car"), return_pooled=True)[1]
        clip_vision = build_tiny_clip_vision(projection_dim=pooled.shape[-1])
        image_embeds = clip_vision.encode_image(tm.vae.decode(frames["samples"]))["image_embeds"].float()
        expected = torch.nn.functional.cosine_similarity(image_embeds, pooled.float().expand_as(image_embeds), dim=1)

        def select(include_endpoints, **kw):
            return node_output(nodes["STORM_SelectFrame"]().select(frames=frames, attention=attention, tokens=tokens,
                                                                   include_endpoints=include_endpoints, **kw))

        best, index, scores = select(False, clip_vision=clip_vision, clip=tm.clip, vae=tm.vae)
        assert index == 1 + int(expected[1:-1].argmax())
        assert torch.equal(best["samples"][0], frames["samples"][index])
        listed = [float(x) for x in re.findall(r"CLIP score (-?[0-9.]+)", scores)]
        assert listed == pytest.approx(expected.tolist(), abs=1e-4)
        assert scores.count("attention ") == 5
        assert select(True, clip_vision=clip_vision, clip=tm.clip, vae=tm.vae)[1] == int(expected.argmax())
        with pytest.raises(Exception, match=r"STORM Select Frame: input 'vae'"):
            select(False, clip_vision=clip_vision, clip=tm.clip)
        other = build_tiny_clip_vision(projection_dim=pooled.shape[-1] + 1)
        with pytest.raises(Exception, match=r"STORM Select Frame: input 'clip':.*not two towers of one CLIP model"):
            select(False, clip_vision=other, clip=tm.clip, vae=tm.vae)

def test_bad_input_names_the_input(nodes, prompts):
    tm, a, b, neg, _ = prompts("sd15")
    xl_b = prompts("sdxl")[2]
    with pytest.raises(Exception, match=r"STORM Attention Interpolation: input 'positive_b':.*another model family's text encoder"):
        interpolate(nodes, tm.model, a, xl_b, neg)
    with pytest.raises(Exception, match=r"input 'frames'"):
        interpolate(nodes, tm.model, a, b, neg, frames=1)
    with pytest.raises(Exception, match=r"input 'alpha'"):
        interpolate(nodes, tm.model, a, b, neg, alpha=0.0)
    with pytest.raises(Exception, match=r"input 'beta'"):
        interpolate(nodes, tm.model, a, b, neg, beta=-1.0)
    with pytest.raises(Exception, match=r"input 'latent_image'"):
        interpolate(nodes, tm.model, a, b, neg, latent={"samples": torch.zeros(2, 4, *HW)})
