"""AID / PAID sampling on the host: the frames' conditions and noises, and the chunked frame loop.

One sampling call denoises a batch ``[A, frame_1 .. frame_k, B]``: the endpoints with their own
prompts and noises, the frames with their own condition (AID: the lerp of the endpoint
conditions; PAID: the guide prompt) and the slerp of the endpoint noises (He et al., NeurIPS 2024, section 3).
During the warm-up steps each chunk's model carries the interpolation patches of :mod:`.aid_attention`. Long
sequences run in chunks of frames, each chunk with both endpoints, so memory is bounded by the chunk size.

A DiT's text rows are part of its joint sequence, so tiling a prompt to a common length (what
makes prompts of different lengths combinable in a UNet's cross-attention) would change a DiT's
image: on a DiT every prompt must have as many rows as the others (SD3 and Flux pad theirs to a
fixed length; Chroma's and Qwen-Image's follow the prompt).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import comfy.sample
import comfy.samplers
import torch

from ..storm_ops.aid.interpolation import frame_chunks, match_token_lengths
from ..storm_ops.aid.schedule import lerp, slerp, warmup_steps
from ..storm_ops.errors import StormError
from ..storm_ops.guidance.run_log import RunInfo
from .aid_attention import AID_MODES, ChunkPlan, install_chunk_interpolation
from .architecture import check_conditioning_family, describe_model
from .attention_capture import AttentionHistory, MapRecorder, RunRecord
from .compat import NodeProgress, require_model, throw_if_interrupted
from .dit_capture import install_recording


# ------------------------------------------------------------------------------ conditions
def _cond_parts(conditioning, name: str):
    if not conditioning:
        raise StormError("the conditioning is empty", input_name=name)
    if len(conditioning) != 1:
        raise StormError(f"{len(conditioning)} conditioning entries (combined or scheduled prompts); attention "
                         "interpolation needs one prompt encoding per input", input_name=name)
    tensor, extras = conditioning[0]
    if tensor.shape[0] != 1:
        raise StormError(f"a batch of {tensor.shape[0]} prompts; give one prompt", input_name=name)
    return tensor, extras


#: DiT families whose model reads a conditioning's ``attention_mask`` only as a regional mask (with
#: ``attention_mask_img_shape``): a text encoder's padding mask (Flux.2 klein's) never reaches their attention
#: (ComfyUI's ``model_base.Flux.extra_conds``, which Flux.2 and Chroma inherit)
TEXT_MASK_UNUSED = ("flux", "flux2", "chroma")


def frame_conditioning(cond_a, cond_b, t: torch.Tensor, guide=None, joint: bool = False, family: str = ""):
    """One CONDITIONING whose batch rows are ``[A, frames..., B]``.

    Frames get ``lerp(A, B, t)`` (AID) or the guide prompt (PAID). For a UNet, prompts of different
    lengths are tiled to a common length (cross-attention to a repeated key set is unchanged); for a
    DiT (``joint``) the text rows are part of the joint attention, where tiling would change the
    endpoints' images, so the prompts must have equal lengths, and one attention mask (or none) must fit them all.
    """
    ta, ea = _cond_parts(cond_a, "positive_a")
    tb, eb = _cond_parts(cond_b, "positive_b")
    parts = [ta, tb] + ([_cond_parts(guide, "guide")[0]] if guide is not None else [])
    names = ["positive_a", "positive_b", "guide"][:len(parts)]
    for tensor, name in zip(parts[1:], names[1:], strict=True):
        if tensor.shape[-1] != ta.shape[-1]:
            raise StormError(
                f"{name} has {tensor.shape[-1]} features per token but positive_a has {ta.shape[-1]}: the prompts "
                "were encoded by different text encoders (e.g. SDXL and SD1.x); encode all prompts with the "
                "CLIP of the model being sampled", input_name=name)
    mask = None
    if joint:
        mask = _check_joint_prompts(parts, names, [ea, eb] + ([_cond_parts(guide, "guide")[1]] if guide is not None else []),
                                    family in TEXT_MASK_UNUSED)
    parts = match_token_lengths(parts, names)
    ta, tb = parts[0], parts[1]
    middle = parts[2].expand(t.shape[0], -1, -1) if guide is not None else lerp(ta, tb, t)
    rows = torch.cat([ta, middle.to(ta.dtype), tb], 0)
    extras = {k: v for k, v in ea.items() if k != "attention_mask"}
    if mask is not None:
        extras["attention_mask"] = mask.expand(rows.shape[0], *mask.shape[1:])
    pooled_a, pooled_b = ea.get("pooled_output"), eb.get("pooled_output")
    if pooled_a is not None and pooled_b is not None:
        if guide is not None and _cond_parts(guide, "guide")[1].get("pooled_output") is not None:
            mid = _cond_parts(guide, "guide")[1]["pooled_output"].expand(t.shape[0], -1)
        else:
            mid = lerp(pooled_a, pooled_b, t)
        extras["pooled_output"] = torch.cat([pooled_a, mid.to(pooled_a.dtype), pooled_b], 0)
    return [[rows, extras]]


def _check_joint_prompts(parts, names, extras, mask_unused: bool):
    """A DiT's prompts run in one joint-attention batch: equal text rows, one guidance value, and one attention mask
    for all (returned; None: none). An all-ones mask is no mask (the host's models drop it); where the model does
    not read a text encoder's mask (``mask_unused``), differing masks are dropped."""
    for tensor, name in zip(parts[1:], names[1:], strict=True):
        if tensor.shape[1] != parts[0].shape[1]:
            raise StormError(
                f"{name} encodes to {tensor.shape[1]} text rows but positive_a to {parts[0].shape[1]}: on a DiT the "
                "text rows are part of every frame's joint attention, so all prompts of an interpolation must "
                "have the same number of tokens (change a word, or add one, until they match)", input_name=name)
    masks = [extra.get("attention_mask") for extra in extras]
    masks = [None if m is None or bool((m != 0).all()) else m for m in masks]
    for extra, mask, name in zip(extras, masks, names, strict=True):
        if extra.get("attention_mask_img_shape") is not None:
            raise StormError("a regional attention mask cannot be interpolated; connect the prompt without its mask",
                             input_name=name)
        if not mask_unused and not _same_mask(mask, masks[0]):
            raise StormError(f"{name} has another attention mask than positive_a (its padding differs): on a DiT every "
                             "frame's joint attention shares one; give the prompts the same number of tokens",
                             input_name=name)
        if name != names[0] and extra.get("guidance") != extras[0].get("guidance"):
            raise StormError(f"{name} has guidance {extra.get('guidance')} but positive_a has "
                             f"{extras[0].get('guidance')}: every frame shares one (use one FluxGuidance value)",
                             input_name=name)
    return None if mask_unused else masks[0]


def _same_mask(a, b) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and a.shape == b.shape and torch.equal(a, b))


# ------------------------------------------------------------------------------ sampling
@dataclass(frozen=True)
class InterpolationSettings:
    frames: torch.Tensor       # (n,) coefficients including the endpoints 0 and 1
    mode: str = "fused outer"
    warmup_ratio: float = 0.5
    chunk_size: int = 4
    node: str = "STORM Attention Interpolation"
    #: start latents of endpoints A and B (a LATENT dict, e.g. an inverted image), or None for seeded noise
    starts: tuple = (None, None)


def start_noise(model, start: dict, like: torch.Tensor, sigmas: torch.Tensor, name: str) -> torch.Tensor:
    """The noise that makes the host's sampler start exactly at the latent ``start`` (an inverted image: e.g. the
    output of SamplerCustom with FlipSigmas on the VAE-encoded image) from an empty latent.

    The sampler starts at ``noise_scaling(sigma_0, noise, process_latent_in(latent_image))``, linear in ``noise``;
    with ``latent_image = 0`` (an empty latent) that is ``c * noise``, so ``noise = process_latent_in(start) / c``
    starts at the same point as a sampler with its noise disabled run from ``start`` (KSamplerAdvanced
    ``add_noise: disable``) on SD1.x/SD2.x/SDXL, where ``noise_scaling(s, 0, x) = x``. AID then slerps the two
    endpoints' start noises for the frames (He et al., NeurIPS 2024, section 3), here the two inversions."""
    x = start["samples"] if isinstance(start, dict) and "samples" in start else None
    if x is None:
        raise StormError("expected a LATENT", input_name=name)
    x = comfy.sample.fix_empty_latent_channels(model, x)
    if tuple(x.shape) != tuple(like.shape):
        raise StormError(f"the start latent has shape {tuple(x.shape)}, the frames {tuple(like.shape)}: invert an "
                         f"image of the frame size (batch 1)", input_name=name)
    sampling = model.get_model_object("model_sampling")
    sigma = sigmas[:1].float()
    # the host's KSAMPLER.max_denoise: the first sigma is the model's largest
    max_denoise = bool(torch.isclose(sigma, sampling.sigma_max.float().cpu().reshape(1), rtol=1e-5).item()
                       or float(sigma) > float(sampling.sigma_max))
    scale = sampling.noise_scaling(sigma, torch.ones(1), torch.zeros(1), max_denoise).reshape(())
    if not float(scale) > 0:
        raise StormError(f"this model's sampler starts at sigma {float(sigma):g} where a start latent cannot be "
                         f"reached", input_name=name)
    return model.model.process_latent_in(x.float()).to(like.dtype) / scale


def sample_sequence(model, positive_a, positive_b, negative, guide, latent: dict, seed: int, steps: int,
                    cfg: float, sampler_name: str, scheduler: str, settings: InterpolationSettings,
                    noise_b_seed: int | None, record_layers: str | None = None, install_chunk=None, progress=None):
    """Sample the whole sequence; returns (latent batch ``(n, C, h, w)`` or ``(n, C, 1, h, w)``, RunRecord or None).

    ``install_chunk(model_options, plan, arch)`` replaces :func:`install_chunk_interpolation` as what patches each
    chunk's model (image morphing, ``aid_image``). ``progress(done, total, x0)`` reports the steps done of this
    sequence's ``total`` (every chunk's steps) to a caller that samples several sequences on one bar; by default
    the node's bar is this sequence's."""
    samples = latent["samples"]
    if samples.shape[0] != 1:
        raise StormError(f"the latent has a batch of {samples.shape[0]}; give a single latent (the frames are "
                         "the batch)", input_name="latent_image")
    samples = comfy.sample.fix_empty_latent_channels(model, samples)
    # an image latent: (1, C, H, W), or a video-format latent of one frame (1, C, 1, H, W) (Qwen-Image's)
    if not (samples.dim() == 4 or (samples.dim() == 5 and samples.shape[2] == 1)):
        raise StormError(f"expected an image latent of shape (1, C, H, W) or (1, C, 1, H, W), got "
                         f"{tuple(samples.shape)}", input_name="latent_image")
    arch = describe_model(require_model(model, settings.node).model, settings.node)
    check_conditioning_family(settings.node, arch, {
        name: [c[0] for c in cond] for name, cond in
        (("positive_a", positive_a), ("positive_b", positive_b), ("negative", negative), ("guide", guide or []))})
    mode, fused = AID_MODES[settings.mode]
    noise_a = comfy.sample.prepare_noise(samples, seed)
    noise_b = noise_a if noise_b_seed is None else comfy.sample.prepare_noise(samples, noise_b_seed)
    t_all = settings.frames.float()
    middle = t_all[1:-1]
    chunks = frame_chunks(middle.shape[0], settings.chunk_size) if middle.shape[0] else [slice(0, 0)]
    sigmas = comfy.samplers.KSampler(model, steps=steps, device=model.load_device, sampler=sampler_name,
                                     scheduler=scheduler, model_options=model.model_options).sigmas
    start_a, start_b = settings.starts
    if start_a is not None or start_b is not None:
        if samples.abs().max() > 0:
            raise StormError("with a start latent (start_a / start_b) the latent_image must be an empty latent (it "
                             "gives the frame size); connect an Empty Latent Image", input_name="latent_image")
        if start_a is not None:
            noise_a = start_noise(model, start_a, noise_a, sigmas, "start_a")
        if start_b is not None:
            noise_b = start_noise(model, start_b, noise_b, sigmas, "start_b")
    n_steps = sigmas.shape[-1] - 1
    w = warmup_steps(n_steps, settings.warmup_ratio)
    warmup_sigma = float(sigmas[w]) if w < n_steps else -1.0  # interpolate while sigma > sigmas[w]
    if progress is None:
        bar = NodeProgress(model, n_steps * len(chunks))
        progress = lambda done, total, x0: bar.update(done, x0)  # noqa: E731
    outputs, records = [], []
    for index, chunk in enumerate(chunks):
        throw_if_interrupted()
        t = middle[chunk]
        plan = ChunkPlan(t, mode, fused, warmup_sigma if w > 0 else float("inf"))
        patched = model.clone()
        (install_chunk or install_chunk_interpolation)(patched.model_options, plan, arch)
        record = None
        if record_layers is not None:
            record = RunRecord(RunInfo(settings.node, arch.model_name, arch.family, steps=n_steps, chunk=index))
            chosen = arch.select(record_layers, settings.node)
            install_recording(patched.model_options, MapRecorder(chosen, record), chosen, arch)
        noise = torch.cat([noise_a, slerp(noise_a, noise_b, t).to(noise_a.dtype), noise_b], 0)
        batch_latent = samples.expand(noise.shape[0], *samples.shape[1:]).contiguous()
        cond = frame_conditioning(positive_a, positive_b, t, guide, joint=arch.is_dit, family=arch.family)

        def callback(step, x0, x, total, offset=index * n_steps):
            throw_if_interrupted()
            progress(offset + step + 1, n_steps * len(chunks), x0)

        out = comfy.sample.sample(patched, noise, steps, cfg, sampler_name, scheduler, cond, negative, batch_latent,
                                  callback=callback, disable_pbar=True, seed=seed)
        outputs.append(out if index == 0 else out[1:])
        records.append(record)
    frames = torch.cat([o[:-1] for o in outputs[:-1]] + [outputs[-1]], 0) if len(outputs) > 1 else outputs[0]
    return frames, _merge_records(records, frames)


def _merge_records(records, frames):
    """One RunRecord whose maps' batch rows follow the output frames ``[A, frames..., B]``."""
    if not records or records[0] is None:
        return None
    merged = RunRecord(replace(records[0].info, chunks=len(records)))
    for step in range(len(records[0].step_maps)):
        parts = []
        for i, record in enumerate(records):
            maps = record.step_maps[step][1]
            first = 0 if i == 0 else 1
            last = maps.shape[0] if i == len(records) - 1 else maps.shape[0] - 1
            parts.append(maps[first:last])
        merged.step_maps.append((records[0].step_maps[step][0], torch.cat(parts, 0)))
    merged.final_latent = frames.detach().to("cpu", torch.float32)
    return merged


def attention_history(record, node: str = "STORM Attention Interpolation") -> AttentionHistory:
    history = AttentionHistory(node, capacity=1)
    if record is not None:
        history.add(record)
    return history
