"""The attention-guided sampler: a ComfyUI ``SAMPLER`` that owns the denoising loop.

On a guided step ``i`` it runs a conditional-only UNet pass with gradients (stopping after the
last recorded layer), evaluates the active guidance terms on the recorded maps, refines/updates
the latent (``storm_ops.guidance.optimize``), and then takes the base sampler's step. The base samplers
are the host's own k-diffusion functions, called over segments of the schedule:

* unguided stretches run as one call, so with guidance off the output equals the host's sampler
  bit for bit;
* every guided step is its own call. Single-step samplers (euler, heun, dpm_2, ddim) are exact;
  multistep samplers (dpmpp_2m, lms) restart their history at each guided step, i.e. take a
  first-order step there (the latent was just moved, so the old history no longer describes it),
  and resume higher order after the guidance window; ancestral samplers draw their noise from
  one generator for the whole run.

Step sizes are the papers' (diffusers latent ``z``, what the network reads). ComfyUI's samplers move
``x``, and the network reads ``z = s x`` with the scale ``s`` of the model's own sampling
(``model_sampling.calculate_input``): ``1 / sqrt(1 + sigma^2)`` for the noise-prediction models of
SD1.x/SDXL (``x = x0 + sigma * eps``), 1 for rectified-flow models such as SD3 and Flux. So
``z <- z - a * grad_z`` is ``x <- x - a / s^2 * grad_x`` (``a (1 + sigma^2) grad_x`` for SD1.x/SDXL).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import comfy.k_diffusion.sampling as k_sampling
import comfy.model_patcher
import comfy.samplers
import torch

from ..storm_ops.errors import StormError
from ..storm_ops.guidance.optimize import Evaluation, clip_grad_norm, guidance_step
from ..storm_ops.guidance.terms import Guidance
from ..storm_ops.tokens.identity import check_prompt_encoding, prompt_encoding
from .architecture import DEFAULT_LAYER_SELECTION, PIXELS_PER_LATENT, check_conditioning_family, describe_model
from .attention_capture import AttentionHistory, MapRecorder, RunRecord, StopForward
from .compat import (
    OUT_OF_MEMORY,
    accepts_kwarg,
    free_accelerator_memory,
    inpaint_blend,
    report_progress,
    throw_if_interrupted,
)
from .dit_capture import install_recording
from .errors import node_error_context
from .gradient_pass import gradient_options, gradient_pass
from .heatmap_render import refinement_hint

log = logging.getLogger("comfyui-storm")

NODE = "STORM Guided Sampler"

#: base samplers (host k-diffusion names); "ddim" is ComfyUI's ddim = euler with seeded inpaint noise
BASE_SAMPLERS = ("euler", "euler_ancestral", "heun", "dpm_2", "dpm_2_ancestral", "lms",
                 "dpmpp_2m", "dpmpp_2s_ancestral", "ddim")
MULTISTEP_SAMPLERS = frozenset({"lms", "dpmpp_2m"})


@dataclass(frozen=True)
class GuidedSamplerSettings:
    """Everything the sampler function needs besides ComfyUI's arguments."""

    guidance: Guidance
    base_sampler: str = "euler"
    attention_layers: str = DEFAULT_LAYER_SELECTION
    node: str = NODE
    #: stop gradient passes after the last recorded layer (off only to benchmark the full pass)
    stop_early: bool = True

    def __post_init__(self) -> None:
        if self.base_sampler not in BASE_SAMPLERS:
            raise StormError(f"{self.node}: unknown base sampler {self.base_sampler!r}; "
                             f"choose one of {', '.join(BASE_SAMPLERS)}", input_name="sampler_name")


def base_sampler_function(name: str):
    """The host's k-diffusion sampling function for ``name``."""
    return getattr(k_sampling, "sample_" + ("euler" if name == "ddim" else name))


def make_ksampler(settings: GuidedSamplerSettings, history: AttentionHistory):
    """A ``comfy.samplers.KSAMPLER`` running :func:`sample_guided` (the SAMPLER socket value)."""

    def storm_guided_sampler(model, x, sigmas, extra_args=None, callback=None, disable=None):
        with node_error_context(settings.node):
            return sample_guided(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable,
                                 settings=settings, history=history)

    inpaint = {"random": True} if settings.base_sampler == "ddim" else {}
    return comfy.samplers.KSAMPLER(storm_guided_sampler, inpaint_options=inpaint)


class _CheckedModel:
    """Delegates to the sampler's model and checks for a UI interrupt before every UNet call."""

    def __init__(self, model):
        self._model = model

    def __getattr__(self, name):
        return getattr(self._model, name)

    def __call__(self, *args, **kwargs):
        throw_if_interrupted()
        return self._model(*args, **kwargs)


def plan_segments(num_steps: int, guided: set[int]) -> list[tuple[int, int, bool]]:
    """Split ``range(num_steps)`` into ``(start, stop, guided)`` segments.

    Guided steps are single-step segments; consecutive unguided steps form one segment.
    """
    segments: list[tuple[int, int, bool]] = []
    i = 0
    while i < num_steps:
        if i in guided:
            segments.append((i, i + 1, True))
            i += 1
            continue
        j = i
        while j < num_steps and j not in guided:
            j += 1
        segments.append((i, j, False))
        i = j
    return segments


def _positive_conds(model, node: str) -> list[dict]:
    guider = model.inner_model
    conds = getattr(guider, "conds", None)
    if not isinstance(conds, dict) or "positive" not in conds:
        raise StormError(f"{node}: the guider {type(guider).__name__} has no positive conditioning; "
                         "use it with SamplerCustom or a CFG guider", input_name="positive")
    positive = conds["positive"]
    if len(positive) != 1:
        raise StormError(
            f"{node}: the positive conditioning has {len(positive)} entries (combined, area or "
            "timestep-scheduled conditionings); attention guidance needs a single prompt encoding",
            input_name="positive")
    return positive


POSITIVE_REMEDY = ("Connect the conditioning output of STORM Subject Tokens (or STORM Prompt Analysis) to "
                   "'positive', or encode the same prompt with the same CLIP.")


def check_positive(node: str, layout, cross_attn: torch.Tensor) -> None:
    """The positive conditioning must be the encoding of the prompt the guidance's tokens come from."""
    try:
        check_prompt_encoding(layout, prompt_encoding(cross_attn), what="the positive conditioning",
                              input_name="positive", remedy=POSITIVE_REMEDY)
    except StormError as error:
        raise StormError(f"{node}: {error}", input_name=error.input_name) from None


def sample_guided(model, x, sigmas, extra_args=None, callback=None, disable=None, *,
                  settings: GuidedSamplerSettings, history: AttentionHistory):
    """k-diffusion-style sampler function (see module docstring)."""
    extra_args = dict(extra_args or {})
    node = settings.node
    num_steps = len(sigmas) - 1
    base_model = model.inner_model.inner_model
    unet = describe_model(base_model, node)
    layers = unet.select(settings.attention_layers, node)
    guidance = settings.guidance
    guidance.check_windows(num_steps)
    layout = guidance.layout

    guided = {i for i in range(num_steps) if guidance.active_terms(i, num_steps)} if guidance.terms else set()
    conds = getattr(model.inner_model, "conds", None) or {}
    check_conditioning_family(node, unet, {name: [c.get("cross_attn") for c in entries]
                                           for name, entries in conds.items()})
    positive = _positive_conds(model, node) if guided else None
    n_tokens = None
    if positive is not None:
        n_tokens = int(positive[0]["cross_attn"].shape[1])
        if layout is not None:
            check_positive(node, layout, positive[0]["cross_attn"])
        for term in guidance.terms:
            term.check_layout(n_tokens)

    record = RunRecord({"node": node, "model": unet.model_name, "family": unet.family,
                        "layers": [layer.label for layer in layers], "base_sampler": settings.base_sampler,
                        "steps": num_steps, "guided_steps": sorted(guided), "weights_copied": 0,
                        "weights_recast": 0, "activations_offloaded": False})
    if len(conds.get("positive") or []) == 1:
        record.prompt_encoding = prompt_encoding(conds["positive"][0]["cross_attn"])
    recorder = MapRecorder(layers, record, n_tokens, stop_early=settings.stop_early)
    # the host hands samplers a copy of the patcher's options; one more keeps a caller's own from our patches
    model_options = install_recording(comfy.model_patcher.create_model_options_clone(extra_args.get("model_options", {})),
                                      recorder, layers, unet)
    extra_args["model_options"] = model_options
    grad_options = gradient_options(model_options)

    checked = _CheckedModel(model)
    base_fn = base_sampler_function(settings.base_sampler)
    base_kwargs = {}
    segments = plan_segments(num_steps, guided)
    if len(segments) > 1 and accepts_kwarg(base_fn, "noise_sampler"):
        base_kwargs["noise_sampler"] = _noise_sampler(x, extra_args.get("seed"))
    states: dict = {}

    def evaluate_at(step: int, scale: float):
        """The evaluation of guided step ``step``; ``scale`` is :func:`input_scale` at its sigma."""
        sigma = sigmas[step]
        s_in = x.new_ones([x.shape[0]])
        evaluations = refine_cap = 0

        def gradient(z: torch.Tensor):
            """One gradient pass: the guidance's combined loss at ``z`` and its gradient."""
            with gradient_pass(offload=record.info["activations_offloaded"], net=base_model.diffusion_model) as frozen:
                zg = z.detach().clone().requires_grad_(True)
                timestep = (sigma * s_in).detach().clone()
                z_in = inpaint_blend(model, zg, timestep, extra_args.get("denoise_mask"), grad_options)
                recorder.begin_grad_pass()
                try:
                    comfy.samplers.calc_cond_batch(base_model, [positive], z_in, timestep, grad_options)
                except StopForward:
                    pass
                maps = recorder.end_grad_pass()
                record.info["weights_copied"] += frozen.copied  # 0 unless a layer kind is not covered
                record.info["weights_recast"] += frozen.recast  # layers whose host-cast weight is cast again
                combined = guidance.combine(maps, step, num_steps, states)
                if combined.objective.requires_grad:
                    return combined, torch.autograd.grad(combined.objective.sum(), zg)[0]
                return combined, torch.zeros_like(zg)

        def evaluate(z: torch.Tensor) -> Evaluation:
            nonlocal evaluations, refine_cap
            throw_if_interrupted()
            if evaluations:  # a refinement iteration: the sampler's own progress stands still meanwhile
                report_progress(evaluations, max(evaluations, refine_cap))
            evaluations += 1
            try:
                combined, grad = gradient(z)
            except OUT_OF_MEMORY:
                if record.info["activations_offloaded"]:
                    raise _out_of_memory(node, z) from None
                # the pass's activations do not fit next to the model: free what the failed pass held and
                # keep them in CPU memory for the rest of the run (slower, never a crashed run)
                recorder.abort_grad_pass()
                free_accelerator_memory()
                record.info["activations_offloaded"] = True
                log.warning("%s: out of GPU memory in the gradient pass at step %d; keeping its activations in "
                            "CPU memory for the rest of this run (slower)", node, step)
                try:
                    combined, grad = gradient(z)
                except OUT_OF_MEMORY:
                    raise _out_of_memory(node, z) from None
            if combined.grad_norm_bound is not None:
                # the bound is on the z-space gradient; grad_z = grad_x / s
                grad = clip_grad_norm(grad, combined.grad_norm_bound * scale)
            refine_cap = combined.max_refine_iters
            return Evaluation(combined.objective.detach(), grad.detach(), combined.satisfied,
                              combined.max_refine_iters, combined.term_losses, combined.metrics)

        return evaluate

    x_out = x
    for start, stop, is_guided in segments:
        if is_guided:
            sigma = float(sigmas[start])
            scale = input_scale(base_model, sigma)
            x_out, report = guidance_step(x_out, evaluate_at(start, scale), multiplier=scale ** -2)
            entry = _log_entry(start, sigma, report)
            record.log.append(entry)
            for reason in report.skipped:
                log.warning("%s: step %d: %s", node, start, reason)
        offset_cb = None if callback is None else _offset_callback(callback, start)
        x_out = base_fn(checked, x_out, sigmas[start:stop + 1], extra_args=extra_args, callback=offset_cb,
                        disable=disable if len(segments) == 1 else True, **base_kwargs)
    record.final_latent = x_out.detach().to("cpu", torch.float32)
    hint = refinement_hint(record.log)
    if hint:
        log.warning("%s: %s", node, hint)
    history.add(record)
    return x_out


def input_scale(base_model, sigma) -> float:
    """``s`` with ``z = s x``: how the model's sampling scales the sampler's latent at ``sigma`` before the
    network reads it (see the module docstring)."""
    sigma = torch.as_tensor(float(sigma), dtype=torch.float64).reshape(1)
    return float(base_model.model_sampling.calculate_input(sigma, torch.ones(1, dtype=torch.float64)))


def _out_of_memory(node: str, z: torch.Tensor) -> StormError:
    height, width = (int(v) * PIXELS_PER_LATENT for v in z.shape[-2:])
    return StormError(
        f"{node}: out of GPU memory in the gradient pass of attention guidance ({z.shape[0]} image(s) of about "
        f"{width}x{height} px), even with its activations kept in CPU memory. Lower the batch size or the image "
        "size, choose attention layers of a lower resolution, or start ComfyUI with --lowvram.",
        input_name="attention_layers")


def _noise_sampler(x, seed):
    return k_sampling.default_noise_sampler(x, seed=seed)


def _offset_callback(callback, offset: int):
    def storm_offset_callback(info: dict):
        callback({**info, "i": info["i"] + offset})
    return storm_offset_callback


def _floats(t: torch.Tensor) -> list:
    return [round(float(v), 6) if math.isfinite(float(v)) else str(float(v)) for v in t.flatten()]


def _log_entry(step: int, sigma: float, report) -> dict:
    entry = {
        "step": step,
        "sigma": round(sigma, 6),
        "loss_before": _floats(report.first.objective),
        "loss_after": _floats(report.last.objective),
        "terms_before": {k: _floats(v) for k, v in report.first.term_losses.items()},
        "terms_after": {k: _floats(v) for k, v in report.last.term_losses.items()},
        "refine_iters": report.refine_iters,
        "refine_iters_per_sample": [int(v) for v in report.sample_refine_iters],
        "updates": report.updates,
    }
    if report.refine_cap:
        entry["refine_cap"] = report.refine_cap
        entry["threshold_reached"] = [bool(v) for v in report.last.satisfied]
    for key, value in report.last.metrics.items():
        entry[key] = _floats(value)
    if report.skipped:
        entry["skipped"] = list(report.skipped)
    return entry
