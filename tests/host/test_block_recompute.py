"""Per-block recomputation in the gradient pass (gradient checkpointing): a DiT's guided run with every block computed
again in backward gives the run without it (to float tolerance), while the gradient pass keeps fewer bytes for its
backward. Tiny DiTs from the host's classes: Qwen-Image (dual-stream blocks), Z-Image (refiners + single-stream blocks
over rows padded to 32), Flux.2 (double + single blocks, shared modulation) and Flux.1."""

import comfy.sample
import comfy.samplers
import pytest
import torch

from harness.nodeutil import call_node
from harness.tiny_dit import build_tiny_dit
from harness.tiny_models import tiny_conditioning
from scripts.benchmark import SavedBytes

#: the host's model class of each family (ComfyUI 0.3.64 has no ZImage or Flux2)
HOST_CLASSES = {"qwen_image": "QwenImage", "z_image": "ZImage", "flux2": "Flux2", "flux": "Flux", "krea2": "Krea2"}
#: latent shape of each family's tiny runs (Qwen-Image: a one-frame video latent; Flux.2: 128 channels of 16 px)
LATENTS = {"qwen_image": (1, 16, 1, 16, 24), "z_image": (1, 16, 8, 12), "flux2": (1, 128, 4, 6), "flux": (1, 16, 8, 12),
           "krea2": (1, 16, 1, 16, 24)}


#: the tiny Krea 2 with 4 blocks instead of 2: the pass stops after the last block's attention, so with 2 blocks it holds
#: one whole block and the attention of the other, no more than the replay of one block (measured: 93% of the plain
#: pass's peak with 2 blocks)
CONFIGS = {"krea2": {"layers": 4}}


@pytest.fixture(scope="module", params=list(HOST_CLASSES))
def family(request, nodes):
    import comfy.supported_models

    if not hasattr(comfy.supported_models, HOST_CLASSES[request.param]):
        pytest.skip(f"this ComfyUI has no {HOST_CLASSES[request.param]} (added after 0.3.64)")
    with torch.inference_mode():
        tiny = build_tiny_dit(request.param, config=CONFIGS.get(request.param))
        tokens, positive, _ = call_node(nodes["STORM_SubjectTokens"], clip=tiny.clip, text="a cat and a dog",
                                        subjects="cat, dog")
        negative = tiny_conditioning(tiny.clip, "")
        guidance = nodes["STORM_AttendAndExcite"]().build(
            tokens=tokens, step_size=40.0, start_at=0.0, end_at=0.5, thresholds="0:0.999", max_refine_iters=1,
            smoothing=True, end_tokens="auto")[0]
    return request.param, tiny, positive, negative, guidance


def _guided_run(pack, family, recompute: bool):
    """A 4-step euler run guided on its first two steps (one refinement iteration each); its latent, its run record
    and the most bytes autograd held for backward at once (plain steps save nothing)."""
    arch, tiny, positive, negative, guidance = family
    sampler_mod = pack.nodes.guided_sampler
    settings = sampler_mod.GuidedSamplerSettings(guidance, "euler", recompute_blocks=recompute)
    history = pack.nodes.attention_capture.AttentionHistory("test", capacity=1)
    latent = torch.zeros(LATENTS[arch])
    sigmas = comfy.samplers.KSampler(tiny.model, steps=4, device=tiny.model.load_device, sampler="euler",
                                     scheduler="normal", model_options=tiny.model.model_options).sigmas
    noise = comfy.sample.prepare_noise(latent, 3)
    with torch.inference_mode(), SavedBytes() as saved:
        out = comfy.sample.sample_custom(tiny.model, noise, 3.0, sampler_mod.make_ksampler(settings, history), sigmas,
                                         positive, negative, latent, disable_pbar=True, seed=3)
    return out, history.latest(), saved.peak


def test_recomputed_blocks_give_the_same_guided_run_with_fewer_saved_bytes(pack, family):
    plain, plain_record, plain_bytes = _guided_run(pack, family, recompute=False)
    got, record, got_bytes = _guided_run(pack, family, recompute=True)
    assert plain_record.info.blocks_recomputed is False
    assert record.info.blocks_recomputed is True
    assert [e.step for e in record.log] == [e.step for e in plain_record.log] == [0, 1]
    # the same losses and gradients: the guided latents agree to float rounding
    for a, b in zip(record.log, plain_record.log, strict=True):
        assert a.loss_before == pytest.approx(b.loss_before, rel=1e-4, abs=1e-6)
        assert a.loss_after == pytest.approx(b.loss_after, rel=1e-4, abs=1e-6)
    torch.testing.assert_close(got, plain, rtol=1e-4, atol=2e-4)
    # and guidance did move the latent (the comparison is not of two unguided runs): the loss changed by the update
    assert plain_record.log[0].loss_after != plain_record.log[0].loss_before
    # fewer bytes held for backward at once (measured: Flux.2 37%, Flux.1 39%, Krea 2 41%, Z-Image 65%, Qwen-Image 89% of the
    # plain pass; the tiny models' maps and loss are a large share of their small blocks)
    assert got_bytes < 0.9 * plain_bytes, (got_bytes, plain_bytes)


def test_the_host_blocks_are_untouched_after_the_run(pack, family):
    arch, tiny, *_ = family
    _guided_run(pack, family, recompute=True)
    blocks = pack.nodes.block_checkpoint.dit_blocks(tiny.model.model.diffusion_model, arch)
    assert blocks and all("forward" not in b.__dict__ for b in blocks)
