"""Guided sampling of an inpainting latent (VAE Encode for Inpaint / Set Latent Noise Mask): the
masked region is guided, the unmasked region is kept as the host keeps it."""

import pytest
import torch

from harness.nodeutil import node_output

LAYERS = "1/32 res: down+up (A&E)"
HW = (32, 32)


def ksample(nodes, model, guidance, pos, neg, latent):
    with torch.inference_mode():
        return node_output(nodes["STORM_GuidedKSampler"]().sample(model=model, guidance=guidance, seed=0, steps=4,
                                                                  cfg=7.5, sampler_name="euler", scheduler="normal",
                                                                  positive=pos, negative=neg, latent_image=latent,
                                                                  denoise=1.0, attention_layers=LAYERS))[0]["samples"]


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_guided_inpainting_changes_only_the_masked_region(nodes, tiny, encode, arch):
    tm = tiny(arch)
    with torch.inference_mode():
        tokens, pos, _ = node_output(nodes["STORM_SubjectTokens"]().run(clip=tm.clip, text="a cat and a dog",
                                                                        subjects="cat, dog"))
        build = nodes["STORM_AttendAndExcite"]().build
        (guided,) = build(tokens=tokens, step_size=200.0, start_at=0.0, end_at=1.0, thresholds="", max_refine_iters=0,
                          smoothing=True, end_tokens="auto")
        (off,) = build(tokens=tokens, step_size=0.0, start_at=0.0, end_at=1.0, thresholds="", max_refine_iters=0,
                       smoothing=True, end_tokens="auto")
        image_latent = torch.randn(1, 4, *HW, generator=torch.Generator().manual_seed(5))
        mask = torch.zeros(1, 1, HW[0] * 8, HW[1] * 8)
        mask[..., :, : HW[1] * 4] = 1.0  # repaint the left half
    latent = {"samples": image_latent, "noise_mask": mask}
    neg = encode(tm.clip, "blurry")
    unguided = ksample(nodes, tm.model, off, pos, neg, latent)
    result = ksample(nodes, tm.model, guided, pos, neg, latent)
    left, right = (..., slice(None), slice(0, HW[1] // 2)), (..., slice(None), slice(HW[1] // 2, None))
    # the unmasked half is what the host keeps without guidance (the input latent)
    assert torch.equal(result[right], unguided[right])
    torch.testing.assert_close(result[right], image_latent[right])
    # the masked half was denoised and guided
    assert (result[left] - unguided[left]).abs().max() > 1e-3
    assert torch.isfinite(result).all()


def test_a_guided_inpainting_latent_names_its_run_and_the_heatmap_shows_it(pack, nodes, tiny):
    tm = tiny("sd15")
    with torch.inference_mode():
        tokens, pos, _ = node_output(nodes["STORM_SubjectTokens"]().run(clip=tm.clip, text="a cat and a dog",
                                                                        subjects="cat, dog"))
        neg = node_output(nodes["STORM_SubjectTokens"]().run(clip=tm.clip, text="blurry", subjects="blurry"))[1]
        (guided,) = nodes["STORM_AttendAndExcite"]().build(tokens=tokens, step_size=200.0, start_at=0.0, end_at=1.0,
                                                           thresholds="", max_refine_iters=0, smoothing=True,
                                                           end_tokens="auto")
        mask = torch.zeros(1, 1, HW[0] * 8, HW[1] * 8)
        mask[..., :, : HW[1] * 4] = 1.0
        latent = {"samples": torch.randn(1, 4, *HW, generator=torch.Generator().manual_seed(5)), "noise_mask": mask}
        out, attention = node_output(nodes["STORM_GuidedKSampler"]().sample(
            model=tm.model, guidance=guided, seed=0, steps=4, cfg=7.5, sampler_name="euler", scheduler="normal",
            positive=pos, negative=neg, latent_image=latent, denoise=1.0, attention_layers=LAYERS))
    tag = pack.nodes.attention_capture.latent_run(out)
    assert tag is not None and tag.run_id == attention.latest().run_id
    masks = node_output(nodes["STORM_AttentionHeatmap"]().render(attention=attention, latent=out, tokens=tokens,
                                                                     show="subjects", view="attention"))[2]
    assert masks.shape == (2, HW[0] * 8, HW[1] * 8) and torch.isfinite(masks).all()
