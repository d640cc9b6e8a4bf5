"""AID / PAID sampling on the host: attention interpolation patches and the chunked frame loop.

One sampling call denoises a batch ``[A, frame_1 .. frame_k, B]``: the endpoints with their own
prompts and noises, the frames with their own condition (AID: the lerp of the endpoint
conditions; PAID: the guide prompt) and the slerp of the endpoint noises. During the warm-up
steps, in the conditional pass only, every self- and cross-attention layer gives each frame the
interpolated attention over the endpoints' keys/values (``storm_ops.aid.interpolation``); endpoint
rows and the unconditional pass keep plain attention, so the endpoints are exactly the plain
generations of A and B. Afterwards every frame denoises on its own. Long sequences run in chunks
of frames, each chunk with both endpoints, so memory is bounded by the chunk size.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import comfy.sample
import comfy.samplers
import comfy.utils
import torch

from ..storm_ops.aid.interpolation import frame_chunks, interpolated_attention, match_token_lengths
from ..storm_ops.aid.schedule import lerp, slerp, warmup_steps
from ..storm_ops.errors import StormError
from ..storm_ops.guidance.run_log import RunInfo
from .architecture import check_conditioning_family, describe_unet
from .attention_capture import AttentionHistory, MapRecorder, RunRecord, install_patches
from .compat import host_attention, latent_preview_callback, require_model, throw_if_interrupted

AID_MODES = {"fused outer": ("outer", True), "fused inner": ("inner", True), "outer": ("outer", False),
             "inner": ("inner", False)}


@dataclass
class ChunkPlan:
    """What the patches of one sampling call need: the frames' coefficients and the warm-up."""

    t: torch.Tensor            # (k,) coefficients of the middle rows
    mode: str                  # "outer" | "inner"
    fused: bool
    warmup_sigma: float        # interpolation runs while sigma > this (inf: never)

    def active(self, extra_options: dict) -> bool:
        sigmas = extra_options.get("sigmas")
        sigma = float(sigmas.flatten()[0]) if isinstance(sigmas, torch.Tensor) else float("inf")
        return sigma > self.warmup_sigma


def make_interpolation_patch(plan: ChunkPlan, previous=None):
    """An attn1/attn2 replace patch giving the frame rows of the conditional chunk interpolated attention."""

    def storm_aid_attention(q, k, v, extra_options):
        heads = extra_options["n_heads"]
        out = previous(q, k, v, extra_options) if previous is not None else host_attention(q, k, v, heads, extra_options)
        cond_or_uncond = list(extra_options.get("cond_or_uncond", [0]))
        if 0 not in cond_or_uncond or plan.t.shape[0] == 0 or not plan.active(extra_options):
            return out
        rows = q.shape[0] // len(cond_or_uncond)
        frames = plan.t.shape[0]
        if rows != frames + 2:
            raise StormError(f"attention interpolation expected {frames + 2} rows per chunk, got {rows}")
        out = out.clone()
        for chunk, kind in enumerate(cond_or_uncond):
            if kind != 0:
                continue
            lo = chunk * rows
            qc, kc, vc = q[lo:lo + rows], k[lo:lo + rows], v[lo:lo + rows]
            own = {"k_self": kc[1:-1], "v_self": vc[1:-1]} if plan.fused else {}
            out[lo + 1:lo + rows - 1] = interpolated_attention(
                qc[1:-1], kc[:1], vc[:1], kc[-1:], vc[-1:], plan.t.to(q.device), heads, mode=plan.mode,
                attn_fn=lambda q_, k_, v_, h_: host_attention(q_, k_, v_, h_, extra_options), **own)
        return out

    return storm_aid_attention


def install_interpolation(model_options: dict, plan: ChunkPlan, layers) -> None:
    """Register the interpolation patch on every attn1 and attn2 of ``layers`` (all transformer depths)."""
    replace = model_options.setdefault("transformer_options", {}).setdefault("patches_replace", {})
    for name in ("attn1", "attn2"):
        patches = dict(replace.get(name, {}))
        for layer in layers:
            for depth in range(layer.depth):
                key = (layer.key[0], layer.key[1], depth)
                patches[key] = make_interpolation_patch(plan, patches.get(key, patches.get(layer.key)))
        replace[name] = patches


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


def frame_conditioning(cond_a, cond_b, t: torch.Tensor, guide=None):
    """One CONDITIONING whose batch rows are ``[A, frames..., B]``.

    Frames get ``lerp(A, B, t)`` (AID) or the guide prompt (PAID). Prompts of different lengths
    are tiled to a common length (attention to a repeated key set is unchanged).
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
    parts = match_token_lengths(parts, names)
    ta, tb = parts[0], parts[1]
    middle = parts[2].expand(t.shape[0], -1, -1) if guide is not None else lerp(ta, tb, t)
    rows = torch.cat([ta, middle.to(ta.dtype), tb], 0)
    extras = dict(ea)
    pooled_a, pooled_b = ea.get("pooled_output"), eb.get("pooled_output")
    if pooled_a is not None and pooled_b is not None:
        if guide is not None and _cond_parts(guide, "guide")[1].get("pooled_output") is not None:
            mid = _cond_parts(guide, "guide")[1]["pooled_output"].expand(t.shape[0], -1)
        else:
            mid = lerp(pooled_a, pooled_b, t)
        extras["pooled_output"] = torch.cat([pooled_a, mid.to(pooled_a.dtype), pooled_b], 0)
    return [[rows, extras]]


# ------------------------------------------------------------------------------ sampling
@dataclass(frozen=True)
class InterpolationSettings:
    frames: torch.Tensor       # (n,) coefficients including the endpoints 0 and 1
    mode: str = "fused outer"
    warmup_ratio: float = 0.5
    chunk_size: int = 4
    node: str = "STORM Attention Interpolation"


def sample_sequence(model, positive_a, positive_b, negative, guide, latent: dict, seed: int, steps: int,
                    cfg: float, sampler_name: str, scheduler: str, settings: InterpolationSettings,
                    noise_b_seed: int | None, record_layers: str | None = None):
    """Sample the whole sequence; returns (latent batch ``(n, C, h, w)``, RunRecord or None)."""
    samples = latent["samples"]
    if samples.shape[0] != 1:
        raise StormError(f"the latent has a batch of {samples.shape[0]}; give a single latent (the frames are "
                         "the batch)", input_name="latent_image")
    samples = comfy.sample.fix_empty_latent_channels(model, samples)
    arch = describe_unet(require_model(model, settings.node).model, settings.node)
    check_conditioning_family(settings.node, arch, {
        name: [c[0] for c in cond] for name, cond in
        (("positive_a", positive_a), ("positive_b", positive_b), ("negative", negative), ("guide", guide or []))})
    layers = arch.layers
    mode, fused = AID_MODES[settings.mode]
    noise_a = comfy.sample.prepare_noise(samples, seed)
    noise_b = noise_a if noise_b_seed is None else comfy.sample.prepare_noise(samples, noise_b_seed)
    t_all = settings.frames.float()
    middle = t_all[1:-1]
    chunks = frame_chunks(middle.shape[0], settings.chunk_size) if middle.shape[0] else [slice(0, 0)]
    sigmas = comfy.samplers.KSampler(model, steps=steps, device=model.load_device, sampler=sampler_name,
                                     scheduler=scheduler, model_options=model.model_options).sigmas
    n_steps = sigmas.shape[-1] - 1
    w = warmup_steps(n_steps, settings.warmup_ratio)
    warmup_sigma = float(sigmas[w]) if w < n_steps else -1.0  # interpolate while sigma > sigmas[w]
    pbar = comfy.utils.ProgressBar(n_steps * len(chunks))
    preview = latent_preview_callback(model, n_steps)
    outputs, records = [], []
    for index, chunk in enumerate(chunks):
        throw_if_interrupted()
        t = middle[chunk]
        plan = ChunkPlan(t, mode, fused, warmup_sigma if w > 0 else float("inf"))
        patched = model.clone()
        install_interpolation(patched.model_options, plan, layers)
        record = None
        if record_layers is not None:
            record = RunRecord(RunInfo(settings.node, arch.model_name, arch.family, steps=n_steps, chunk=index))
            chosen = arch.select(record_layers, settings.node)
            install_patches(patched.model_options, MapRecorder(chosen, record), chosen)
        noise = torch.cat([noise_a, slerp(noise_a, noise_b, t).to(noise_a.dtype), noise_b], 0)
        batch_latent = samples.expand(noise.shape[0], -1, -1, -1).contiguous()
        cond = frame_conditioning(positive_a, positive_b, t, guide)

        def callback(step, x0, x, total, offset=index * n_steps):
            throw_if_interrupted()
            pbar.update_absolute(offset + step + 1, n_steps * len(chunks))
            preview(step, x0, x, total)

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


def attention_history(record) -> AttentionHistory:
    history = AttentionHistory("STORM Attention Interpolation", capacity=1)
    if record is not None:
        history.add(record)
    return history
