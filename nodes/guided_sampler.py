"""The attention-guided sampler: a ComfyUI ``SAMPLER`` that owns the denoising loop.

On a guided step ``i`` it runs a conditional-only UNet pass with gradients (stopping after the
last recorded layer), evaluates the active guidance terms on the recorded maps, refines/updates
the latent (``storm_ops.guidance.optimize``), and then takes the base sampler's step. The base samplers
are the host's own k-diffusion functions, called over segments of the schedule:

* unguided stretches run as one call, so with guidance off the output equals the host's sampler
  bit for bit;
* every guided step is its own call. Single-step samplers (euler, heun, dpm_2, ddim) are exact;
  multistep samplers (dpmpp_2m, lms, res_multistep) restart their history at each guided step, i.e. take a
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

import contextlib
import logging
from dataclasses import dataclass

import comfy.k_diffusion.sampling as k_sampling
import comfy.model_patcher
import comfy.samplers
import torch

from ..storm_ops.errors import StormError
from ..storm_ops.guidance.optimize import Evaluation, clip_grad_norm, guidance_step
from ..storm_ops.guidance.run_log import GuidedStep, RunInfo, refinement_hint
from ..storm_ops.guidance.terms import Guidance
from ..storm_ops.tokens.identity import check_prompt_encoding, prompt_encoding
from .architecture import DEFAULT_LAYER_SELECTION, check_conditioning_family, describe_model
from .attention_capture import AttentionHistory, MapRecorder, RunRecord, StopForward
from .block_checkpoint import checkpointed_blocks
from .compat import (
    OUT_OF_MEMORY,
    accepts_kwarg,
    free_accelerator_memory,
    inpaint_blend,
    report_progress,
    throw_if_interrupted,
)
from .dit_capture import JointAttentionTap, install_recording
from .errors import node_error_context
from .gradient_pass import gradient_options, gradient_pass

log = logging.getLogger("comfyui-storm")

NODE = "STORM Guided Sampler"

#: base samplers (host k-diffusion names); "ddim" is ComfyUI's ddim = euler with seeded inpaint noise
BASE_SAMPLERS = ("euler", "euler_ancestral", "heun", "dpm_2", "dpm_2_ancestral", "lms",
                 "dpmpp_2m", "dpmpp_2s_ancestral", "res_multistep", "ddim")


@dataclass(frozen=True)
class GuidedSamplerSettings:
    """Everything the sampler function needs besides ComfyUI's arguments."""

    guidance: Guidance
    base_sampler: str = "euler"
    attention_layers: str = DEFAULT_LAYER_SELECTION
    node: str = NODE
    #: stop gradient passes after the last recorded layer (off only to benchmark the full pass)
    stop_early: bool = True
    #: a DiT's gradient passes compute each block again in backward from the first guided step on (otherwise only
    #: after a pass ran out of GPU memory); :mod:`.block_checkpoint`
    recompute_blocks: bool = False

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
    """k-diffusion-style sampler function (see module docstring): the host's base sampler over the schedule's
    segments, each guided step first moving the latent (:meth:`GuidedRun.guided_step`)."""
    run = GuidedRun(model, x, sigmas, dict(extra_args or {}), settings)
    base_fn = base_sampler_function(settings.base_sampler)
    base_kwargs = {}
    segments = plan_segments(run.num_steps, run.guided)
    if len(segments) > 1 and accepts_kwarg(base_fn, "noise_sampler"):
        base_kwargs["noise_sampler"] = _noise_sampler(x, run.extra_args.get("seed"))
    checked = _CheckedModel(model)
    for start, stop, is_guided in segments:
        if is_guided:
            x = run.guided_step(x, start)
        offset_cb = None if callback is None else _offset_callback(callback, start)
        x = base_fn(checked, x, sigmas[start:stop + 1], extra_args=run.extra_args, callback=offset_cb,
                    disable=disable if len(segments) == 1 else True, **base_kwargs)
    run.finish(x)
    history.add(run.record)
    return x


class GuidedRun:
    """One run of the guided sampler: its checks and set-up (the constructor), its guided steps and its log.

    Everything per run lives here (the recorder, the run's record, the terms' scratch states), never in the
    settings or the terms.
    """

    def __init__(self, model, x, sigmas, extra_args: dict, settings: GuidedSamplerSettings):
        self.model, self.sigmas, self.settings, self.node = model, sigmas, settings, settings.node
        self.num_steps = len(sigmas) - 1
        self.base_model = model.inner_model.inner_model
        self.batch_ones = x.new_ones([x.shape[0]])
        self.guidance = guidance = settings.guidance
        arch = describe_model(self.base_model, self.node)
        layers = arch.select(settings.attention_layers, self.node)
        guidance.check_windows(self.num_steps)
        self.guided = {i for i in range(self.num_steps) if guidance.active_terms(i, self.num_steps)} \
            if guidance.terms else set()
        conds = getattr(model.inner_model, "conds", None) or {}
        check_conditioning_family(self.node, arch, {name: [c.get("cross_attn") for c in entries]
                                                    for name, entries in conds.items()})
        self.positive = _positive_conds(model, self.node) if self.guided else None
        n_tokens = None
        if self.positive is not None:
            n_tokens = int(self.positive[0]["cross_attn"].shape[1])
            if guidance.layout is not None:
                check_positive(self.node, guidance.layout, self.positive[0]["cross_attn"])
            for term in guidance.terms:
                term.check_layout(n_tokens)
        self.record = RunRecord(RunInfo(self.node, arch.model_name, arch.family, [layer.label for layer in layers],
                                        base_sampler=settings.base_sampler, steps=self.num_steps,
                                        guided_steps=sorted(self.guided), pixels_per_latent=arch.pixels_per_latent,
                                        blocks_recomputed=settings.recompute_blocks and arch.is_dit))
        self.arch = arch
        if len(conds.get("positive") or []) == 1:
            self.record.prompt_encoding = prompt_encoding(conds["positive"][0]["cross_attn"])
        self.recorder = MapRecorder(layers, self.record, n_tokens, stop_early=settings.stop_early)
        # the host hands samplers a copy of the patcher's options; one more keeps a caller's own from our patches
        options = comfy.model_patcher.create_model_options_clone(extra_args.get("model_options", {}))
        self.extra_args = {**extra_args, "model_options": install_recording(options, self.recorder, layers, arch)}
        self.grad_options = gradient_options(self.extra_args["model_options"])
        tap = self.extra_args["model_options"].get("transformer_options", {}).get("optimized_attention_override")
        #: a DiT's recording tap (its blocks hand it their joint calls when they are recomputed in backward)
        self.tap = tap if isinstance(tap, JointAttentionTap) else None
        #: each term's scratch state for this run (A-STAR's previous masks, say)
        self.states: dict = {}

    # -- one guided step -------------------------------------------------------------------
    def guided_step(self, x: torch.Tensor, step: int) -> torch.Tensor:
        """Move ``x`` at guided step ``step`` (evaluate, refine, update; ``storm_ops.guidance.optimize``), log it."""
        sigma = float(self.sigmas[step])
        scale = input_scale(self.base_model, sigma)
        x, report = guidance_step(x, _Evaluator(self, step, scale), multiplier=scale ** -2)
        self.record.log.append(GuidedStep.of(step, sigma, report))
        for reason in report.skipped:
            log.warning("%s: step %d: %s", self.node, step, reason)
        return x

    def gradient(self, z: torch.Tensor, step: int):
        """One gradient pass at ``z``: the guidance's combined loss and its gradient."""
        info = self.record.info
        net = self.base_model.diffusion_model
        recompute = checkpointed_blocks(net, self.arch.family, self.tap) if info.blocks_recomputed \
            else contextlib.nullcontext()
        with gradient_pass(offload=info.activations_offloaded, net=net) as frozen, recompute:
            zg = z.detach().clone().requires_grad_(True)
            timestep = (self.sigmas[step] * self.batch_ones).detach().clone()
            z_in = inpaint_blend(self.model, zg, timestep, self.extra_args.get("denoise_mask"), self.grad_options)
            self.recorder.begin_grad_pass()
            try:
                comfy.samplers.calc_cond_batch(self.base_model, [self.positive], z_in, timestep, self.grad_options)
            except StopForward:
                pass
            maps = self.recorder.end_grad_pass()
            info.weights_copied += frozen.copied
            info.weights_recast += frozen.recast
            combined = self.guidance.combine(maps, step, self.num_steps, self.states)
            if combined.objective.requires_grad:
                return combined, torch.autograd.grad(combined.objective.sum(), zg)[0]
            return combined, torch.zeros_like(zg)

    def gradient_or_offload(self, z: torch.Tensor, step: int):
        """:meth:`gradient`; when its activations do not fit next to the model, free what the failed pass held and, for
        the rest of the run, compute a DiT's blocks again in backward instead of keeping their activations (about one
        more forward pass), and if that does not fit either, keep the activations in CPU memory (slower, never a
        crashed run)."""
        info = self.record.info
        while True:
            try:
                return self.gradient(z, step)
            except OUT_OF_MEMORY:
                if info.activations_offloaded:
                    raise _out_of_memory(self.node, z, info.pixels_per_latent) from None
            self.recorder.abort_grad_pass()
            free_accelerator_memory()
            if self.arch.is_dit and not info.blocks_recomputed:
                info.blocks_recomputed = True
                log.warning("%s: out of GPU memory in the gradient pass at step %d; computing each block again in "
                            "backward for the rest of this run (about one more forward pass)", self.node, step)
            else:
                info.activations_offloaded = True
                log.warning("%s: out of GPU memory in the gradient pass at step %d; keeping its activations in "
                            "CPU memory for the rest of this run (slower)", self.node, step)

    # -- the end -----------------------------------------------------------------------------
    def finish(self, x: torch.Tensor) -> None:
        """Keep the run's final latent (it names the run to the visualiser) and warn about refinement that never
        reached its threshold."""
        self.record.final_latent = x.detach().to("cpu", torch.float32)
        hint = refinement_hint(self.record.log)
        if hint:
            log.warning("%s: %s", self.node, hint)


class _Evaluator:
    """``evaluate(z) -> Evaluation`` of one guided step, for :func:`~storm_ops.guidance.optimize.guidance_step`:
    honours Cancel, moves the progress bar through refinement iterations, clips the gradient (its bound is on the
    z-space gradient, ``grad_z = grad_x / s``)."""

    def __init__(self, run: GuidedRun, step: int, scale: float):
        self.run, self.step, self.scale = run, step, scale
        self.evaluations = self.refine_cap = 0

    def __call__(self, z: torch.Tensor) -> Evaluation:
        throw_if_interrupted()
        if self.evaluations:  # a refinement iteration: the sampler's own progress stands still meanwhile
            report_progress(self.evaluations, max(self.evaluations, self.refine_cap))
        self.evaluations += 1
        combined, grad = self.run.gradient_or_offload(z, self.step)
        if combined.grad_norm_bound is not None:
            grad = clip_grad_norm(grad, combined.grad_norm_bound * self.scale)
        self.refine_cap = combined.max_refine_iters
        return Evaluation(combined.objective.detach(), grad.detach(), combined.satisfied,
                          combined.max_refine_iters, combined.term_losses, combined.metrics)


def input_scale(base_model, sigma) -> float:
    """``s`` with ``z = s x``: how the model's sampling scales the sampler's latent at ``sigma`` before the
    network reads it (see the module docstring)."""
    sigma = torch.as_tensor(float(sigma), dtype=torch.float64).reshape(1)
    return float(base_model.model_sampling.calculate_input(sigma, torch.ones(1, dtype=torch.float64)))


def _out_of_memory(node: str, z: torch.Tensor, pixels_per_latent: int) -> StormError:
    height, width = (int(v) * pixels_per_latent for v in z.shape[-2:])
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
