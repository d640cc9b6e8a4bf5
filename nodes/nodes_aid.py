"""AID / PAID nodes: attention interpolation between two prompts (a fixed Beta schedule, or AID's dynamic
selection) or two image-prompted models, and frame selection."""

from __future__ import annotations

from dataclasses import replace

import comfy.samplers
import torch

from ..storm_ops.aid import schedule as aid_schedule
from ..storm_ops.aid import selection
from ..storm_ops.aid.interpolation import DEFAULT_FUSED, DEFAULT_MODE
from ..storm_ops.aid.schedule import beta_schedule
from ..storm_ops.attention.maps import MapSettings, word_maps
from ..storm_ops.errors import StormError
from ..storm_ops.losses.attend_excite import max_attention
from .aid_attention import AID_MODES
from .aid_dynamic import clip_scores, decode, dynamic_sequence
from .aid_image import check_endpoint_models, install_image_morph
from .aid_sampling import InterpolationSettings, _cond_parts, attention_history, sample_sequence
from .architecture import DEFAULT_LAYER_SELECTION, check_conditioning_family
from .attention_capture import tag_latent
from .errors import node_errors
from .widgets import float_input, int_input

#: The name in AID_MODES of storm_ops' default interpolation (AID's "fused outer").
DEFAULT_MODE_NAME = next(name for name, spec in AID_MODES.items() if spec == (DEFAULT_MODE, DEFAULT_FUSED))


class AttentionInterpolation:
    """STORM Attention Interpolation: AID (He et al., NeurIPS 2024), and PAID with a guide prompt."""

    NODE_NAME = "STORM Attention Interpolation"
    SEARCH_ALIASES = ("morph", "prompt interpolation", "interpolate prompts", "aid", "paid", "blend prompts", "composition")  # node search
    DESCRIPTION = (
        "AID / PAID (He et al., NeurIPS 2024): a sequence of images between prompt A and prompt B made by "
        "interpolating inside the attention layers (not the text embeddings), for smooth, consistent "
        "morphs. Frames are spaced by a Beta(alpha, beta) schedule, start from the slerp of the endpoint "
        "noises and denoise on their own after the warm-up. With a guide prompt (PAID) the frames follow it: "
        "e.g. 'a dog' -> 'a car' guided by 'a dog driving a car' for compositional generation. Returns all "
        "frames as one latent batch (decode it and save it with the core animated-image savers). The first "
        "and last frames equal plain generations of A and B with the same noise.")
    CATEGORY = "STORM/interpolation"
    FUNCTION = "interpolate"
    RETURN_TYPES = ("LATENT", "STORM_ATTENTION", "STRING")
    RETURN_NAMES = ("frames", "attention", "coefficients")
    OUTPUT_TOOLTIPS = (
        "All frames [A, ..., B] as one latent batch.",
        "Cross-attention maps of every frame (batch rows), for STORM Select Frame or STORM Attention Heatmap.",
        "The interpolation coefficient of each frame.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The diffusion model: SD1.x, SD2.x, SDXL, or an SD3.x, Flux.1, Flux.2 klein, "
                                           "Chroma, Qwen-Image or Z-Image DiT (its prompts must have equal token "
                                           "counts)."}),
            "positive_a": ("CONDITIONING", {"tooltip": "Prompt of the first frame."}),
            "positive_b": ("CONDITIONING", {"tooltip": "Prompt of the last frame."}),
            "negative": ("CONDITIONING", {"tooltip": "Negative prompt of every frame."}),
            "latent_image": ("LATENT", {"tooltip": "Empty latent of the frame size (batch 1)."}),
            "frames": ("INT", {"default": 7, "min": 2, "max": 512,
                               "tooltip": "Number of frames including both endpoints."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                             "tooltip": "Noise seed of endpoint A (and of B with endpoint_noise 'same')."}),
            "steps": int_input(aid_schedule.DEFAULT_STEPS, 1, 10000, "Denoising steps (the official pipeline: 28)."),
            "cfg": float_input(aid_schedule.DEFAULT_CFG, 0.0, 100.0, 0.1,
                               "Classifier-free guidance (official: 7.5 for SD, 5 for SDXL).", round=0.01),
            "sampler_name": (comfy.samplers.KSampler.SAMPLERS, {"default": "euler",
                                                                "tooltip": "Sampler (deterministic samplers keep the "
                                                                           "endpoints exactly equal to plain generation)."}),
            "scheduler": (comfy.samplers.KSampler.SCHEDULERS, {"default": "normal", "tooltip": "Noise schedule."}),
            "mode": (list(AID_MODES), {"default": DEFAULT_MODE_NAME,
                                   "tooltip": "outer: mix the attention outputs of A and B; inner: attend to the "
                                              "mixed keys/values; fused: also attend to the frame's own keys/values "
                                              "(self-attention fusion, the official default 'fused outer')."}),
            "alpha": float_input(aid_schedule.DEFAULT_ALPHA, 0.01, 100.0, 0.1,
                                 "Beta(alpha, beta) frame spacing: coefficients are its quantiles at i/(n-1) "
                                 "(1, 1 = uniform; official init 3, 3 puts more frames near the middle)."),
            "beta": float_input(aid_schedule.DEFAULT_BETA, 0.01, 100.0, 0.1, "Second Beta parameter (see alpha)."),
            "warmup_ratio": float_input(aid_schedule.DEFAULT_WARMUP_RATIO, 0.0, 1.0, 0.01,
                                        "Interpolate attention during this fraction of the steps, then let "
                                        "each frame denoise on its own (official: 0.5 for SD, 1.0 for SDXL)."),
            "chunk_size": ("INT", {"default": 4, "min": 0, "max": 512,
                                   "tooltip": "Frames denoised together (each chunk also runs both endpoints); bounds "
                                              "memory for long sequences. 0 = all at once."}),
            "endpoint_noise": (["same", "different"], {"default": "same",
                                                       "tooltip": "same: one noise for A and B (seed); different: B "
                                                                  "uses seed + 1 and frames slerp between the two."}),
        }, "optional": {
            "guide": ("CONDITIONING", {"tooltip": "PAID: a guide prompt the frames follow (e.g. 'a dog driving a car')."}),
            "start_a": ("LATENT", {"tooltip": "Interpolate from a real image: endpoint A starts from this inverted "
                                              "latent instead of the seed's noise (SamplerCustom with FlipSigmas, "
                                              "noise off, on the VAE-encoded image; SD1.x/SD2.x/SDXL)."}),
            "start_b": ("LATENT", {"tooltip": "The same for endpoint B (its inverted image)."}),
        }}

    @node_errors(NODE_NAME)
    def interpolate(self, model, positive_a, positive_b, negative, latent_image, frames, seed, steps, cfg,
                    sampler_name, scheduler, mode, alpha, beta, warmup_ratio, chunk_size, endpoint_noise,
                    guide=None, start_a=None, start_b=None):
        settings = replace(interpolation_settings(self.NODE_NAME, frames, mode, alpha, beta, warmup_ratio, chunk_size),
                           starts=(start_a, start_b))
        samples, record = sample_sequence(
            model, positive_a, positive_b, negative, guide, latent_image, seed, steps, cfg, sampler_name, scheduler,
            settings, None if endpoint_noise == "same" else seed + 1, record_layers=DEFAULT_LAYER_SELECTION)
        return sequence_result(self.NODE_NAME, settings, samples, record)


def interpolation_settings(node: str, frames, mode, alpha, beta, warmup_ratio, chunk_size) -> InterpolationSettings:
    """The checked settings of an interpolation node's widgets (the coefficients from the Beta schedule)."""
    if mode not in AID_MODES:
        raise StormError(f"unknown mode {mode!r}; use one of {list(AID_MODES)}", input_name="mode")
    if not 0.0 <= warmup_ratio <= 1.0:
        raise StormError(f"warmup_ratio must lie in [0, 1], got {warmup_ratio}", input_name="warmup_ratio")
    if chunk_size < 0:
        raise StormError(f"chunk_size must be >= 0, got {chunk_size}", input_name="chunk_size")
    coefficients = beta_schedule(int(frames), float(alpha), float(beta))
    return InterpolationSettings(coefficients, mode, float(warmup_ratio), int(chunk_size) or max(int(frames) - 2, 1),
                                 node)


def sequence_result(node: str, settings: InterpolationSettings, samples, record) -> dict:
    text = ", ".join(f"{i}: {float(t):.4f}" for i, t in enumerate(settings.frames))
    return {"ui": {"storm_text": [f"coefficients: {text}"]},
            "result": (tag_latent({"samples": samples}, record, node), attention_history(record, node), text)}


class ImageMorph:
    """STORM Image Morph: AID between two image-prompted models (image morphing, image-control generation)."""

    NODE_NAME = "STORM Image Morph"
    SEARCH_ALIASES = ("morph images", "image morphing", "ip-adapter interpolation", "image control",
                      "image prompt scale", "blend images")  # node search
    DESCRIPTION = (
        "Image morphing and image-control generation of PAID (He et al., NeurIPS 2024): a sequence of frames between "
        "two image prompts. Apply an image prompt that patches cross-attention (e.g. the IP-Adapter pack's IPAdapter "
        "node) to one checkpoint twice, image A -> model_a, image B -> model_b; every frame's cross-attention is "
        "(1 - t) times model_a's plus t times model_b's, and self-attention is interpolated as in STORM Attention "
        "Interpolation during the warm-up. The first and last frames equal plain generations of model_a and "
        "model_b. Image-control: connect the checkpoint without the image prompt to model_a; t then acts as the "
        "adapter's scale (frame 0 is the plain model).")
    CATEGORY = "STORM/interpolation"
    FUNCTION = "morph"
    RETURN_TYPES = ("LATENT", "STORM_ATTENTION", "STRING")
    RETURN_NAMES = ("frames", "attention", "coefficients")
    OUTPUT_TOOLTIPS = (
        "All frames [A, ..., B] as one latent batch.",
        "Cross-attention maps of the prompt in every frame (batch rows), for STORM Attention Heatmap.",
        "The interpolation coefficient t of each frame (image-control: the image prompt's scale).",
    )

    @classmethod
    def INPUT_TYPES(cls):
        spec = AttentionInterpolation.INPUT_TYPES()["required"]
        shared = {name: spec[name] for name in ("latent_image", "frames", "seed", "steps", "cfg", "sampler_name",
                                                 "scheduler")}
        return {"required": {
            "model_a": ("MODEL", {"tooltip": "The first frame's model: a UNet (SD1.x, SD2.x, SDXL) with image A's "
                                             "prompt applied (e.g. IPAdapter). Image-control: the checkpoint "
                                             "without an image prompt (t = 0)."}),
            "model_b": ("MODEL", {"tooltip": "The last frame's model: the same checkpoint with image B's prompt "
                                             "(only cross-attention patches may differ from model_a)."}),
            "positive": ("CONDITIONING", {"tooltip": "Prompt of every frame (may be empty or a short description)."}),
            "negative": ("CONDITIONING", {"tooltip": "Negative prompt of every frame."}),
            **shared,
            "mode": (spec["mode"][0], {**spec["mode"][1],
                                       "tooltip": "Self-attention interpolation during the warm-up (" +
                                                  spec["mode"][1]["tooltip"] + ") Cross-attention is always the "
                                                  "outer mix of the two models."}),
            "alpha": spec["alpha"],
            "beta": spec["beta"],
            "warmup_ratio": float_input(aid_schedule.DEFAULT_WARMUP_RATIO, 0.0, 1.0, 0.01,
                                        "Interpolate self-attention during this fraction of the steps (0: only the "
                                        "cross-attention is mixed, at every step)."),
            "chunk_size": spec["chunk_size"],
            "endpoint_noise": spec["endpoint_noise"],
        }}

    @node_errors(NODE_NAME)
    def morph(self, model_a, model_b, positive, negative, latent_image, frames, seed, steps, cfg, sampler_name,
              scheduler, mode, alpha, beta, warmup_ratio, chunk_size, endpoint_noise):
        settings = interpolation_settings(self.NODE_NAME, frames, mode, alpha, beta, warmup_ratio, chunk_size)
        arch, patches_a, patches_b = check_endpoint_models(model_a, model_b, self.NODE_NAME)
        _cond_parts(positive, "positive")
        check_conditioning_family(self.NODE_NAME, arch, {"positive": [c[0] for c in positive],
                                                         "negative": [c[0] for c in negative]})

        def install(model_options, plan, _arch):
            install_image_morph(model_options, plan, arch.layers, patches_a, patches_b)

        samples, record = sample_sequence(
            model_a, positive, positive, negative, None, latent_image, seed, steps, cfg, sampler_name, scheduler,
            settings, None if endpoint_noise == "same" else seed + 1, record_layers=DEFAULT_LAYER_SELECTION,
            install_chunk=install)
        return sequence_result(self.NODE_NAME, settings, samples, record)


class DynamicInterpolation:
    """STORM Dynamic Interpolation: AID's dynamic selection of the coefficients (He et al., NeurIPS 2024)."""

    NODE_NAME = "STORM Dynamic Interpolation"
    SEARCH_ALIASES = ("dynamic selection", "smooth morph", "aid dynamic", "beta prior", "even morph")  # node search
    DESCRIPTION = (
        "AID's dynamic selection (He et al., NeurIPS 2024, 'to further improve smoothness'): explores coefficients "
        "by repeatedly generating the frame between the two neighbouring frames that differ most (placed by a Beta "
        "prior refitted to the measured differences), then keeps the explored frames whose adjacent differences are "
        "most even. Frame difference is 1 - cos of CLIP image embeddings when a CLIP vision model is connected, else "
        "of the decoded frames at 64 x 64 px. Reports smoothness (1 - Gini of the adjacent differences) and "
        "consistency (their mean). Each explored frame is sampled with both endpoints in its batch: at the defaults "
        "(16 explored, 7 kept) about 5x the sampling of a fixed 7-frame sequence.")
    CATEGORY = "STORM/interpolation"
    FUNCTION = "interpolate"
    RETURN_TYPES = ("LATENT", "IMAGE", "STRING", "STRING")
    RETURN_NAMES = ("frames", "images", "coefficients", "report")
    OUTPUT_TOOLTIPS = (
        "The chosen frames [A, ..., B] as one latent batch.",
        "The chosen frames decoded (the distances were measured on them).",
        "The coefficient of each chosen frame.",
        "Smoothness and consistency of the chosen and the explored frames, the refitted Beta prior.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        shared = AttentionInterpolation.INPUT_TYPES()
        required = {k: v for k, v in shared["required"].items() if k not in ("frames", "alpha", "beta", "chunk_size")}
        required["vae"] = ("VAE", {"tooltip": "Decodes the frames whose differences the selection measures."})
        required["exploration_size"] = ("INT", {"default": selection.EXPLORATION_SIZE, "min": 3, "max": 128,
                                                "tooltip": "Coefficients explored, both endpoints included (the "
                                                           "release: 16)."})
        required["interpolation_size"] = ("INT", {"default": selection.INTERPOLATION_SIZE, "min": 2, "max": 128,
                                                  "tooltip": "Frames kept, both endpoints included (the release: 7); "
                                                             "at most exploration_size."})
        required["alpha"] = float_input(selection.INIT_ALPHA, 0.01, 100.0, 0.1,
                                        "Initial Beta prior (the release: 3, 3); refitted after every split.")
        required["beta"] = float_input(selection.INIT_BETA, 0.01, 100.0, 0.1, "Second initial Beta parameter.")
        optional = dict(shared["optional"])
        optional["clip_vision"] = ("CLIP_VISION", {"tooltip": "Measure frame differences with this model's image "
                                                              "embeddings, as the release does (Load CLIP Vision). "
                                                              "Without it: the decoded frames at 64 x 64 px."})
        return {"required": required, "optional": optional}

    @node_errors(NODE_NAME)
    def interpolate(self, model, positive_a, positive_b, negative, latent_image, seed, steps, cfg, sampler_name,
                    scheduler, mode, warmup_ratio, endpoint_noise, vae, exploration_size, interpolation_size, alpha,
                    beta, guide=None, clip_vision=None, start_a=None, start_b=None):
        # the checks and settings of the fixed node; each explored frame replaces the coefficients (both endpoints
        # and one frame per chunk)
        settings = replace(interpolation_settings(self.NODE_NAME, 2, mode, 1.0, 1.0, warmup_ratio, 1),
                           starts=(start_a, start_b))
        samples, images, chosen, report = dynamic_sequence(
            model, positive_a, positive_b, negative, guide, latent_image, seed, steps, cfg, sampler_name, scheduler,
            settings, None if endpoint_noise == "same" else seed + 1, vae, clip_vision,
            exploration_size=int(exploration_size), interpolation_size=int(interpolation_size), alpha=float(alpha),
            beta=float(beta))
        text = ", ".join(f"{i}: {t:.5f}" for i, t in enumerate(chosen.ts))
        return {"ui": {"storm_text": [report]}, "result": ({"samples": samples}, images, text, report)}


class SelectFrame:
    """STORM Select Frame: pick the frame whose subjects are all strongly attended, or with a CLIP vision model the
    frame with the highest CLIP score to the guide prompt (PAID's choice)."""

    NODE_NAME = "STORM Select Frame"
    SEARCH_ALIASES = ("pick frame", "best frame", "morph frame", "select image from batch", "clip score")  # node search
    DESCRIPTION = (
        "Picks the best frame of an interpolation for compositional generation. Without a CLIP vision model "
        "(no download needed) each frame is scored by Attend-and-Excite's measure on its own cross-attention maps "
        "(the smallest, over the subjects, of the smoothed maximum attention), and the frame where every subject is "
        "most present wins. With clip_vision, clip and vae connected it keeps the frame with the highest CLIP score "
        "to the tokens' prompt (the guide prompt), as PAID's release does; both scores are listed.")
    CATEGORY = "STORM/interpolation"
    FUNCTION = "select"
    RETURN_TYPES = ("LATENT", "INT", "STRING")
    RETURN_NAMES = ("latent", "index", "scores")
    OUTPUT_TOOLTIPS = ("The selected frame.", "Its index in the batch.", "The score of every frame.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "frames": ("LATENT", {"tooltip": "Frames from STORM Attention Interpolation."}),
            "attention": ("STORM_ATTENTION", {"tooltip": "The attention output of the same interpolation node."}),
            "tokens": ("STORM_TOKENS", {"tooltip": "Subjects to look for, tokenised from the frames' prompt (the guide "
                                                   "prompt for PAID), e.g. STORM Subject Tokens 'dog, car'."}),
            "include_endpoints": ("BOOLEAN", {"default": False,
                                              "tooltip": "Also consider the first and last frame (plain A and B)."}),
        }, "optional": {
            "clip_vision": ("CLIP_VISION", {"tooltip": "Choose by CLIP score to the tokens' prompt instead (Load CLIP "
                                                       "Vision); needs clip and vae too."}),
            "clip": ("CLIP", {"tooltip": "The text tower of the same CLIP model as clip_vision (its projected pooled "
                                         "output is compared), e.g. SDXL's CLIP with clip_vision_g."}),
            "vae": ("VAE", {"tooltip": "Decodes the frames for the CLIP vision model."}),
        }}

    @node_errors(NODE_NAME)
    def select(self, frames, attention, tokens, include_endpoints, clip_vision=None, clip=None, vae=None):
        record = attention.find(frames)
        if record is None:
            raise StormError("these frames were not produced by the interpolation run that recorded this attention; "
                             "connect both outputs of the same STORM Attention Interpolation node", input_name="frames")
        if clip_vision is not None:
            for name, value in (("clip", clip), ("vae", vae)):
                if value is None:
                    raise StormError("a CLIP score needs the CLIP vision model, the text encoder of the same CLIP "
                                     "model (clip) and the VAE that decodes the frames (vae); connect all three, or "
                                     "disconnect clip_vision to choose by attention", input_name=name)
        elif not tokens.subjects:
            raise StormError("no subjects to score: list them in STORM Subject Tokens", input_name="tokens")
        scores = frame_scores(record, tokens) if tokens.subjects else None
        clip_score = None
        if clip_vision is not None:
            clip_score = clip_scores(decode(vae, frames["samples"]), clip_vision, clip, tokens.text)
        ranking = clip_score if clip_score is not None else scores
        candidates = range(ranking.shape[0]) if include_endpoints else range(1, ranking.shape[0] - 1)
        if not candidates:
            candidates = range(ranking.shape[0])
        best = max(candidates, key=lambda i: float(ranking[i]))
        lines = []
        for i in range(ranking.shape[0]):
            parts = [] if scores is None else [f"attention {float(scores[i]):.4f}"]
            if clip_score is not None:
                parts.append(f"CLIP score {float(clip_score[i]):.4f}")
            lines.append(f"frame {i}: {', '.join(parts)}{'  <- best' if i == best else ''}")
        text = "\n".join(lines)
        out = dict(frames)
        out["samples"] = frames["samples"][best:best + 1].clone()
        out.pop("batch_index", None)
        out = tag_latent(out, record, self.NODE_NAME)
        return {"ui": {"storm_text": [text]}, "result": (out, best, text)}


def frame_scores(record, tokens) -> torch.Tensor:
    """Per frame: min over subjects of the smoothed max attention, averaged over the recorded steps."""
    maps = record.mean_maps(tokens.layout.length)  # (frames, T, h, w)
    sub = word_maps(maps, tokens.layout, [s.positions for s in tokens.subjects], MapSettings())
    return max_attention(sub).amin(1)
