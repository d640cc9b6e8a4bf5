"""Sampler nodes: a SAMPLER for SamplerCustom(Advanced) and an all-in-one KSampler replacement."""

from __future__ import annotations

import comfy.sample
import comfy.samplers
import comfy.utils

from ..storm_ops.errors import StormError
from ..storm_ops.guidance.terms import DEFAULT_CFG, DEFAULT_STEPS
from .architecture import check_conditioning_family, describe_model
from .attention_capture import AttentionHistory, tag_latent
from .compat import latent_preview_callback, require_model
from .errors import node_errors
from .guided_sampler import BASE_SAMPLERS, GuidedSamplerSettings, check_positive, make_ksampler
from .widgets import ATTENTION_OUTPUT_TOOLTIP, LAYERS_INPUT, float_input, int_input

SAMPLER_TOOLTIP = (
    "Base sampler that takes the denoising steps (the host's own implementation). Single-step samplers "
    "(euler, heun, dpm_2, ddim and the ancestral ones) are exact on guided steps; multistep samplers "
    "(dpmpp_2m, lms, res_multistep: Z-Image's and Lumina's) restart their history at each guided step (a first-order step right after the "
    "latent was moved) and run at full order once guidance ends. Ancestral samplers use one noise "
    "stream for the whole run.")
GUIDANCE_INPUT = ("STORM_GUIDANCE", {"tooltip": "The losses to apply, from STORM loss nodes (e.g. STORM Attend-and-Excite)."})
class GuidedSampler:
    """STORM Guided Sampler: a SAMPLER for the core SamplerCustom / SamplerCustomAdvanced nodes."""

    NODE_NAME = "STORM Guided Sampler"
    SEARCH_ALIASES = ("attention guidance sampler", "guided sampling", "samplercustom guidance")  # node search
    DESCRIPTION = (
        "A SAMPLER that applies attention guidance: on guided steps it runs a conditional UNet pass with "
        "gradients, evaluates the connected losses on the cross-attention maps and moves the latent, then "
        "takes the base sampler's step. Use with SamplerCustom / SamplerCustomAdvanced. With no active "
        "loss it reproduces the base sampler exactly.")
    CATEGORY = "STORM/sampling"
    FUNCTION = "build"
    RETURN_TYPES = ("SAMPLER", "STORM_ATTENTION")
    RETURN_NAMES = ("sampler", "attention")
    OUTPUT_TOOLTIPS = ("Connect to the sampler input of SamplerCustom / SamplerCustomAdvanced.", ATTENTION_OUTPUT_TOOLTIP)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "guidance": GUIDANCE_INPUT,
            "sampler_name": (list(BASE_SAMPLERS), {"default": "euler", "tooltip": SAMPLER_TOOLTIP}),
            "attention_layers": LAYERS_INPUT,
        }}

    @node_errors(NODE_NAME)
    def build(self, guidance, sampler_name, attention_layers):
        settings = GuidedSamplerSettings(guidance, sampler_name, attention_layers, self.NODE_NAME)
        history = AttentionHistory(self.NODE_NAME)
        return (make_ksampler(settings, history), history)


class GuidedKSampler:
    """STORM Guided KSampler: KSampler with attention guidance, for graphs built around KSampler."""

    NODE_NAME = "STORM Guided KSampler"
    SEARCH_ALIASES = ("guided ksampler", "attention guidance", "ksampler with guidance")  # node search
    DESCRIPTION = (
        "KSampler with attention guidance (same inputs as KSampler plus the guidance). On guided steps it "
        "moves the latent along the gradient of the connected losses before each denoising step. Outputs "
        "the latent and the attention maps of exactly this run.")
    CATEGORY = "STORM/sampling"
    FUNCTION = "sample"
    RETURN_TYPES = ("LATENT", "STORM_ATTENTION")
    RETURN_NAMES = ("latent", "attention")
    OUTPUT_TOOLTIPS = ("The denoised latent.", ATTENTION_OUTPUT_TOOLTIP)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The diffusion model (SD1.x, SD2.x, SDXL, SD3 or Flux)."}),
            "guidance": GUIDANCE_INPUT,
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                             "tooltip": "Noise seed."}),
            "steps": int_input(DEFAULT_STEPS, 1, 10000,
                               "Denoising steps (papers: 50; guidance windows scale with the step count)."),
            "cfg": float_input(DEFAULT_CFG, 0.0, 100.0, 0.1, "Classifier-free guidance scale (papers: 7.5).",
                               round=0.01),
            "sampler_name": (list(BASE_SAMPLERS), {"default": "euler", "tooltip": SAMPLER_TOOLTIP}),
            "scheduler": (list(comfy.samplers.KSampler.SCHEDULERS), {"default": "normal", "tooltip": "Noise schedule."}),
            "positive": ("CONDITIONING", {"tooltip": "Positive prompt; use the conditioning output of STORM Subject Tokens."}),
            "negative": ("CONDITIONING", {"tooltip": "Negative prompt."}),
            "latent_image": ("LATENT", {"tooltip": "Latent to denoise (batches are guided per image)."}),
            "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                  "tooltip": "Denoising strength, as in KSampler."}),
            "attention_layers": LAYERS_INPUT,
        }}

    @node_errors(NODE_NAME)
    def sample(self, model, guidance, seed, steps, cfg, sampler_name, scheduler, positive, negative,
               latent_image, denoise, attention_layers):
        settings = GuidedSamplerSettings(guidance, sampler_name, attention_layers, self.NODE_NAME)
        # the checks sample_guided repeats for SamplerCustom, made here before any model is loaded
        guidance.check_windows(steps)
        arch = describe_model(require_model(model, self.NODE_NAME).model, self.NODE_NAME)
        check_conditioning_family(self.NODE_NAME, arch, {"positive": [c[0] for c in positive],
                                                         "negative": [c[0] for c in negative]})
        if guidance.terms and guidance.layout is not None and len(positive) == 1:
            check_positive(self.NODE_NAME, guidance.layout, positive[0][0])
        history = AttentionHistory(self.NODE_NAME, capacity=1)
        sampler = make_ksampler(settings, history)
        samples = _sample_like_ksampler(model, sampler, sampler_name, seed, steps, cfg, scheduler,
                                        positive, negative, latent_image, denoise)
        out = latent_image.copy()
        out["samples"] = samples
        return (tag_latent(out, history.latest(), self.NODE_NAME), history)


def _sample_like_ksampler(model, sampler, sampler_name, seed, steps, cfg, scheduler, positive, negative,
                          latent, denoise):
    """What the core KSampler node does, with our SAMPLER: same noise, sigmas, mask and callback."""
    latent_image = latent["samples"]
    latent_image = comfy.sample.fix_empty_latent_channels(model, latent_image)
    # an image latent: (B, C, H, W), or a video-format latent of one frame (B, C, 1, H, W) (Qwen-Image's)
    if not (latent_image.dim() == 4 or (latent_image.dim() == 5 and latent_image.shape[2] == 1)):
        raise StormError(f"expected an image latent of shape (B, C, H, W) or (B, C, 1, H, W), got "
                         f"{tuple(latent_image.shape)}", input_name="latent_image")
    noise = comfy.sample.prepare_noise(latent_image, seed, latent.get("batch_index"))
    base = comfy.samplers.KSampler(model, steps=steps, device=model.load_device, sampler=sampler_name,
                                   scheduler=scheduler, denoise=denoise, model_options=model.model_options)
    callback = latent_preview_callback(model, steps)
    disable_pbar = not bool(getattr(comfy.utils, "PROGRESS_BAR_ENABLED", True))
    return comfy.sample.sample_custom(model, noise, cfg, sampler, base.sigmas, positive, negative, latent_image,
                                      noise_mask=latent.get("noise_mask"), callback=callback,
                                      disable_pbar=disable_pbar, seed=seed)
