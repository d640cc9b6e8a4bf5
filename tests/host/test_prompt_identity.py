"""The conditioning and the tokens must belong to one prompt, and to the model's family.

Same-length mistakes used to run silently: the negative prompt's encoding wired into ``positive``
(guidance then pulls on the negative prompt's words), tokens of another prompt in the heatmap
(labels name the wrong words), a 77-column token set on a 154-column run (the heatmap summed
columns j and j + 77). Another family's conditioning ended in the host's matrix-shape error.
"""

import comfy.sample
import comfy.samplers
import pytest
import torch

from harness.nodeutil import node_output

LAYERS = "1/32 res: down+up (A&E)"
LONG = "a cat and a dog, " + ", ".join(["a very detailed painting of a garden"] * 9)


@pytest.fixture(scope="module")
def prompt(cat_and_dog):
    return cat_and_dog(negative="ugly blurry low quality")


def ksample(nodes, model, guidance, pos, neg, steps=2, hw=(16, 16)):
    with torch.inference_mode():
        return nodes["STORM_GuidedKSampler"]().sample(model=model, guidance=guidance, seed=0, steps=steps, cfg=7.5,
                                                      sampler_name="euler", scheduler="normal", positive=pos,
                                                      negative=neg, latent_image={"samples": torch.zeros(1, 4, *hw)},
                                                      denoise=1.0, attention_layers=LAYERS)


def custom(model, sampler, pos, neg, steps=2, hw=(16, 16)):
    latent = torch.zeros(1, 4, *hw)
    sigmas = comfy.samplers.KSampler(model, steps=steps, device=model.load_device, sampler="euler",
                                     scheduler="normal", model_options=model.model_options).sigmas
    with torch.inference_mode():
        return {"samples": comfy.sample.sample_custom(model, comfy.sample.prepare_noise(latent, 0), 7.5, sampler,
                                                      sigmas, pos, neg, latent, disable_pbar=True, seed=0)}


def render(nodes, attention, latent, tokens):
    with torch.inference_mode():
        return nodes["STORM_AttentionHeatmap"]().render(attention=attention, latent=latent, tokens=tokens,
                                                        show="subjects", view="attention")


def test_negative_encoding_wired_into_positive_is_refused(nodes, prompt):
    tm, _, _, neg, guidance = prompt
    assert neg[0][0].shape == prompt[2][0][0].shape  # same length: the old column-count check passed
    pattern = (r"input 'positive':.*positive conditioning is not the encoding of the prompt the tokens were "
               r"computed for \('a cat and a dog'\): it differs at columns 1:a, 2:cat.*STORM Subject Tokens")
    with pytest.raises(Exception, match="STORM Guided KSampler: " + pattern):
        ksample(nodes, tm.model, guidance, neg, neg)
    with torch.inference_mode():
        sampler, _ = nodes["STORM_GuidedSampler"]().build(guidance=guidance, sampler_name="euler",
                                                          attention_layers=LAYERS)
    with pytest.raises(Exception, match="^STORM Guided Sampler: " + pattern):
        custom(tm.model, sampler, neg, neg)


def test_the_same_prompt_encoded_by_clip_text_encode_is_accepted(nodes, prompt, encode):
    tm, _, _, neg, guidance = prompt
    latent, _ = ksample(nodes, tm.model, guidance, encode(tm.clip, "a cat and a dog"), neg)
    assert torch.isfinite(latent["samples"]).all()


def test_conditioning_of_another_model_family_names_the_input(nodes, prompt, tiny, encode):
    tm, _, pos, neg, guidance = prompt
    xl = tiny("sdxl")
    with pytest.raises(Exception, match=r"STORM Guided KSampler: input 'positive': the positive conditioning has 32 "
                                        r"features per token, but the model SDXL takes 96: it was encoded by another "
                                        r"model family's text encoder"):
        ksample(nodes, xl.model, guidance, pos, encode(xl.clip, ""))
    with pytest.raises(Exception, match=r"STORM Guided KSampler: input 'negative':.*has 96 features.*takes 32"):
        ksample(nodes, tm.model, guidance, pos, encode(xl.clip, ""))
    with torch.inference_mode():
        sampler, _ = nodes["STORM_GuidedSampler"]().build(guidance=guidance, sampler_name="euler",
                                                          attention_layers=LAYERS)
    with pytest.raises(Exception, match=r"^STORM Guided Sampler: input 'positive':.*model SDXL takes 96"):
        custom(xl.model, sampler, pos, encode(xl.clip, ""))
    with torch.inference_mode(), pytest.raises(Exception, match=r"STORM Attention Interpolation: input 'negative':"):
        nodes["STORM_AttentionInterpolation"]().interpolate(
            model=xl.model, positive_a=encode(xl.clip, "a cat"), positive_b=encode(xl.clip, "a dog"), negative=neg,
            latent_image={"samples": torch.zeros(1, 4, 16, 16)}, frames=3, seed=0, steps=2, cfg=7.5,
            sampler_name="euler", scheduler="normal", mode="fused outer", alpha=3.0, beta=3.0, warmup_ratio=0.5,
            chunk_size=4, endpoint_noise="same")


def test_heatmap_refuses_tokens_of_another_prompt_of_the_same_length(nodes, prompt):
    tm, tokens, pos, neg, guidance = prompt
    with torch.inference_mode():
        other, _, _ = node_output(nodes["STORM_SubjectTokens"]().run(clip=tm.clip, text="a bird and a fish",
                                                                     subjects="bird, fish"))
    latent, attention = ksample(nodes, tm.model, guidance, pos, neg)
    render(nodes, attention, latent, tokens)  # its own tokens are fine
    with pytest.raises(Exception, match=r"STORM Attention Heatmap: input 'tokens':.*not the encoding of the prompt "
                                        r"the tokens were computed for \('a bird and a fish'\).*2:bird"):
        render(nodes, attention, latent, other)


def test_heatmap_refuses_a_77_column_token_set_on_a_154_column_run(nodes, prompt, encode):
    tm, tokens, _, neg, _ = prompt
    long_pos = encode(tm.clip, LONG)
    assert long_pos[0][0].shape[1] == 154
    with torch.inference_mode():
        model, attention = nodes["STORM_AttentionRecorder"]().patch(model=tm.model, attention_layers=LAYERS)
        latent = {"samples": comfy.sample.sample(model, torch.randn(1, 4, 16, 16), 2, 7.5, "euler", "normal",
                                                 long_pos, neg, torch.zeros(1, 4, 16, 16), disable_pbar=True, seed=0)}
        long_tokens, _, _ = node_output(nodes["STORM_SubjectTokens"]().run(
            clip=tm.clip, text=LONG, subjects="cat, dog"))
    render(nodes, attention, latent, long_tokens)  # the right tokens: accepted
    with pytest.raises(Exception, match=r"STORM Attention Heatmap: input 'tokens':.*has 154 token columns but the "
                                        r"tokens \('a cat and a dog'\) were computed for a prompt with 77"):
        render(nodes, attention, latent, tokens)


def test_recorder_accepts_a_short_prompt_tiled_to_a_longer_negative(nodes, prompt, encode):
    tm, tokens, pos, _, _ = prompt
    long_neg = encode(tm.clip, LONG)
    with torch.inference_mode():
        model, attention = nodes["STORM_AttentionRecorder"]().patch(model=tm.model, attention_layers=LAYERS)
        latent = {"samples": comfy.sample.sample(model, torch.randn(1, 4, 16, 16), 2, 7.5, "euler", "normal",
                                                 pos, long_neg, torch.zeros(1, 4, 16, 16), disable_pbar=True, seed=0)}
    grid = node_output(render(nodes, attention, latent, tokens))[0]
    assert grid.shape[0] == 1


def test_recorder_names_conditioning_of_another_family(nodes, prompt, tiny, encode):
    _, _, pos, neg, _ = prompt
    xl = tiny("sdxl")
    with torch.inference_mode():
        model, _ = nodes["STORM_AttentionRecorder"]().patch(model=xl.model, attention_layers=LAYERS)
        with pytest.raises(Exception, match=r"STORM Attention Recorder: input 'positive or negative': the positive "
                                            r"or negative conditioning has 32 features per token, but the model SDXL "
                                            r"takes 96"):
            comfy.sample.sample(model, torch.randn(1, 4, 16, 16), 2, 7.5, "euler", "normal", pos, neg,
                                torch.zeros(1, 4, 16, 16), disable_pbar=True, seed=0)


def test_a_window_without_steps_is_an_error_before_sampling(nodes, prompt):
    tm, tokens, pos, neg, _ = prompt
    with torch.inference_mode():
        (narrow,) = nodes["STORM_AttendAndExcite"]().build(tokens=tokens, step_size=20.0, start_at=0.5, end_at=0.6,
                                                           thresholds="", max_refine_iters=0, smoothing=True,
                                                           end_tokens="auto")
    pattern = (r"input 'start_at': STORM Attend-and-Excite: the guidance window start_at 0.5 to end_at 0.6 contains "
               r"no step of a schedule of 5 steps")
    with pytest.raises(Exception, match="STORM Guided KSampler: " + pattern):
        ksample(nodes, tm.model, narrow, pos, neg, steps=5)
    with torch.inference_mode():
        sampler, _ = nodes["STORM_GuidedSampler"]().build(guidance=narrow, sampler_name="euler",
                                                          attention_layers=LAYERS)
    with pytest.raises(Exception, match="^STORM Guided Sampler: " + pattern):
        custom(tm.model, sampler, pos, neg, steps=5)
    latent, _ = ksample(nodes, tm.model, narrow, pos, neg, steps=10)  # 10 steps: step 5 lies in the window
    assert torch.isfinite(latent["samples"]).all()
