"""Recording cross-attention probabilities through ``attn2`` replace patches.

A replace patch receives the projected ``q, k, v`` of a layer and returns the attention output
before ``to_out``. Ours computes the fp32 softmax probabilities of the *conditional* slice for
the selected layers only, hands them to a :class:`MapRecorder`, and returns the output of the
replace patch that was registered before it (IP-Adapter-style packs keep working) or of the
host's own kernel, called exactly as the unpatched layer calls it — so recording never changes
the image.

Patches are closures over a recorder created per sampling run. ``ModelPatcher.clone()`` copies
``model_options``: the pip fork and 0.3.x use ``copy.deepcopy``, which copies callable objects and
the owners of bound methods, newer upstream copies only the dicts and lists; a closure survives as
the same object in all of them, and so does the recorder it closes over.
"""

from __future__ import annotations

import uuid
from collections import deque
from dataclasses import dataclass, replace

import torch
from einops import rearrange, reduce

from ..storm_ops.attention.maps import AttentionAccumulator, fold_token_tiling
from ..storm_ops.attention.shapes import downsampled_size, infer_hw
from ..storm_ops.errors import StormError
from ..storm_ops.guidance.run_log import GuidedStep, RunInfo
from ..storm_ops.tokens.identity import prompt_encoding
from .architecture import CrossAttentionLayer
from .compat import host_attention, throw_if_interrupted

#: transformer_options flag marking the guided sampler's gradient passes (recorders skip them)
GRAD_PASS_FLAG = "storm_grad_pass"


def current_sigma(extra_options: dict) -> float:
    sigmas = extra_options.get("sigmas")
    return float(sigmas.flatten()[0]) if isinstance(sigmas, torch.Tensor) else float("nan")


class StopForward(Exception):
    """Raised by the last recorded layer of a gradient pass: later layers cannot change the loss."""


def attention_probs(q: torch.Tensor, k: torch.Tensor, heads: int) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d))`` per head in float32.

    Parameters
    ----------
    q : Tensor, shape (B, N, Hd * d)
    k : Tensor, shape (B, T, Hd * d)

    Returns
    -------
    Tensor, shape (B, Hd, N, T)
    """
    qh = rearrange(q.float(), "b n (h d) -> b h n d", h=heads)
    kh = rearrange(k.float(), "b t (h d) -> b h t d", h=heads)
    d = qh.shape[-1]
    return torch.softmax((qh @ kh.transpose(-1, -2)) * d ** -0.5, dim=-1)


class RunRecord:
    """Attention maps and guidance log of one sampling run (what the visualiser shows).

    ``step_maps`` holds, per UNet evaluation of the sampler, the layer/head-averaged maps of
    the conditional pass: ``(sigma, Tensor (B, Tctx, h, w) float16 on the CPU)``.
    """

    def __init__(self, info: RunInfo):
        self.info = replace(info)  # a run's own copy (the guided sampler counts into it)
        #: names this run in the LATENTs it produced (see :func:`tag_latent`)
        self.run_id = uuid.uuid4().hex
        self.step_maps: list[tuple[float, torch.Tensor]] = []
        self.final_latent: torch.Tensor | None = None
        #: the positive prompt's encoding ``(T, D)`` (possibly tiled), to check the visualiser's tokens
        self.prompt_encoding: torch.Tensor | None = None
        #: one entry per guided step (guided samplers only)
        self.log: list[GuidedStep] = []

    def add_step(self, sigma: float, maps: torch.Tensor) -> None:
        self.step_maps.append((sigma, maps.detach().to("cpu", torch.float16)))

    def mean_maps(self, n_tokens: int) -> torch.Tensor:
        """Average over the run's evaluations, folded to ``n_tokens`` columns: ``(B, T, h, w)``."""
        return mean_of_steps(self.folded_steps(n_tokens))

    def folded_steps(self, n_tokens: int) -> list[tuple[float, torch.Tensor]]:
        """Each evaluation's ``(sigma, maps (B, T, h, w) float32)``, folded to ``n_tokens`` columns."""
        if not self.step_maps:
            raise StormError("this sampling run recorded no attention maps")
        return [(sigma, fold_token_tiling(maps.float().movedim(1, -1), n_tokens).movedim(-1, 1))
                for sigma, maps in self.step_maps]


def mean_of_steps(steps: list[tuple[float, torch.Tensor]]) -> torch.Tensor:
    """The average of :meth:`RunRecord.folded_steps`' maps (for callers that also need the steps)."""
    total = None
    for _, maps in steps:
        total = maps if total is None else total + maps
    return total / len(steps)


def latent_match_error(stored: torch.Tensor, given: torch.Tensor) -> float:
    """Channel-wise affine-invariant relative distance between a run's final latent and a LATENT's samples.

    The host maps the sampler's output to the LATENT's format per channel: it divides by the VAE's scale factor
    (SD1.x, SDXL), adds a shift (SD3, Flux), or un-normalises each channel by its own mean and deviation
    (Wan 2.1's format, Qwen-Image's latent), so ``given[c] = stored[c] / s_c + t_c``. Returns
    ``min_{a_c,b_c} ||a_c * given[c] + b_c - stored[c]|| / ||stored||`` over all channels ``c`` (dimension 1;
    ``inf`` for mismatched shapes).
    """
    if stored.shape != given.shape:
        return float("inf")
    channels = stored.shape[1] if stored.dim() > 1 else 1
    s = stored.double().transpose(0, 1).reshape(channels, -1) if stored.dim() > 1 else stored.double()[None]
    g = given.double().cpu().transpose(0, 1).reshape(channels, -1) if given.dim() > 1 else given.double().cpu()[None]
    gc, sc = g - g.mean(1, keepdim=True), s - s.mean(1, keepdim=True)
    gg = (gc * gc).sum(1, keepdim=True)
    a = torch.where(gg > 0, (gc * sc).sum(1, keepdim=True) / gg.clamp_min(1e-300), torch.zeros_like(gg))
    residual = float((sc - a * gc).norm())
    norm = float(s.norm())
    if norm == 0.0:
        return 0.0 if residual == 0.0 else float("inf")
    return residual / norm


#: the key of a LATENT dict that names the run which produced its samples
RUN_KEY = "storm_run"


@dataclass(frozen=True)
class RunTag:
    """What a STORM node puts under :data:`RUN_KEY` in a LATENT it produced.

    ``samples`` is the very tensor the node returned: a node downstream that replaces the samples
    (a KSampler, an upscale) copies the dict and with it the tag, which then no longer holds the
    LATENT's tensor and is ignored, so a stale tag never names the wrong run.
    """

    run_id: str
    source: str
    samples: torch.Tensor


def tag_latent(latent: dict, record: RunRecord | None, source: str) -> dict:
    """``latent`` (a new dict) naming ``record`` as the run that produced its samples (unnamed when
    nothing was recorded)."""
    out = dict(latent)
    if record is None:
        out.pop(RUN_KEY, None)
        return out
    out[RUN_KEY] = RunTag(record.run_id, source, latent["samples"])
    return out


def latent_run(latent: dict) -> RunTag | None:
    """The tag of the run that produced ``latent``; None when a host node built it or changed its samples."""
    tag = latent.get(RUN_KEY)
    return tag if isinstance(tag, RunTag) and tag.samples is latent["samples"] else None


class AttentionHistory:
    """The ``STORM_ATTENTION`` socket value: the last few runs of one recorder or sampler.

    A LATENT made by a STORM node (Guided KSampler, Attention Interpolation, Select Frame) names its
    run (:func:`tag_latent`); one made by a host sampler (SamplerCustom with the Guided Sampler, any
    sampler with the Attention Recorder) is matched to the run whose final latent it equals.
    """

    MATCH_TOLERANCE = 1e-3

    def __init__(self, source: str, capacity: int = 8):
        self.source = source
        self.runs: deque[RunRecord] = deque(maxlen=capacity)

    def add(self, record: RunRecord) -> None:
        self.runs.append(record)

    def find(self, latent: dict) -> RunRecord | None:
        """The run that produced ``latent`` (a LATENT dict), or None when none of these runs did.

        A tagged LATENT is found by its run id; an untagged one, or one tagged by another node that
        ran this model (a Guided KSampler on an Attention Recorder's model), by its final latent.
        """
        tag = latent_run(latent)
        if tag is not None:
            for record in self.runs:
                if record.run_id == tag.run_id:
                    return record
        samples = latent["samples"]
        for record in reversed(self.runs):
            if record.final_latent is not None and \
                    latent_match_error(record.final_latent, samples) < self.MATCH_TOLERANCE:
                return record
        return None

    def miss_message(self, latent: dict) -> str:
        """Why :meth:`find` found no run for ``latent``, and what to connect instead."""
        tag = latent_run(latent)
        made_by = f" (it was produced by {tag.source})" if tag is not None else ""
        return (f"none of the {len(self.runs)} recorded run(s) of {self.source} produced this latent{made_by}. "
                "Connect the LATENT output of the sampler that used this attention source (for inpainting with a "
                "host sampler set run to 'latest run')")

    def latest(self) -> RunRecord | None:
        return self.runs[-1] if self.runs else None


class MapRecorder:
    """Receives the probabilities of the patched layers during one sampling run.

    Modes: ``"cfg"`` records every conditional pass into ``record.step_maps`` (no gradients);
    ``"grad"`` accumulates differentiable maps of one gradient pass and asks the patch to stop
    the forward pass after the last recorded layer; ``"off"`` records nothing.
    """

    def __init__(self, layers: tuple[CrossAttentionLayer, ...], record: RunRecord | None,
                 n_tokens: int | None = None, stop_early: bool = True):
        self.levels = {layer.key: layer.level for layer in layers}
        self.expected_calls = sum(layer.depth for layer in layers)
        self.record = record
        self.n_tokens = n_tokens
        self.stop_early = stop_early
        self.mode = "cfg" if record is not None else "off"
        self._acc = AttentionAccumulator()
        self._calls = 0
        self._seen: set = set()
        self._grad_maps: torch.Tensor | None = None
        self._recorded_sigma: float | None = None

    def _reset_pass(self) -> None:
        self._acc, self._calls, self._seen = AttentionAccumulator(), 0, set()

    # ---------------------------------------------------------------- gradient passes
    def begin_grad_pass(self) -> None:
        self._reset_pass()
        self.mode, self._grad_maps = "grad", None

    def abort_grad_pass(self) -> None:
        """Drop a gradient pass that failed part way (its partial maps hold the pass's graph)."""
        self._reset_pass()
        self._grad_maps = None
        self.mode = "cfg" if self.record is not None else "off"

    def end_grad_pass(self) -> torch.Tensor:
        """The differentiable maps ``(B, T, h, w)`` of the pass; back to recording CFG passes."""
        maps, self._grad_maps = self._grad_maps, None
        self._reset_pass()
        self.mode = "cfg" if self.record is not None else "off"
        if maps is None:
            raise StormError("the gradient pass did not reach every selected attention layer "
                             "(another patch may have replaced the UNet forward)")
        return maps

    # ---------------------------------------------------------------- called by the patches
    def observe(self, key: tuple[str, int], q: torch.Tensor, k: torch.Tensor, extra_options: dict) -> bool:
        """Record one layer call; returns True when a gradient pass may stop here."""
        if self.mode == "off" or (self.mode == "cfg" and extra_options.get(GRAD_PASS_FLAG)):
            return False
        if self.mode == "grad":  # a gradient pass is the slow part of guidance: honour Cancel at every layer
            throw_if_interrupted()
        cond_or_uncond = list(extra_options.get("cond_or_uncond", [0]))
        if 0 not in cond_or_uncond:
            return False
        chunk = q.shape[0] // len(cond_or_uncond)
        rows = [r for i, c in enumerate(cond_or_uncond) if c == 0 for r in range(i * chunk, (i + 1) * chunk)]
        if len(rows) != q.shape[0]:
            q, k = q[rows], k[rows]
        layer_call = (key, extra_options.get("block_index", 0))
        if layer_call in self._seen:  # a new UNet call began before the last one finished: drop it
            self._reset_pass()
        self._seen.add(layer_call)
        if self.mode == "cfg":
            q, k = q.detach(), k.detach()
        probs = attention_probs(q, k, extra_options["n_heads"])
        if len(rows) > chunk:  # several positive chunks in one call: average them
            probs = reduce(probs, "(c b) h n t -> b h n t", "mean", b=chunk)
        if self.n_tokens is not None:
            probs = fold_token_tiling(probs, self.n_tokens)
        self._acc.add(probs, self._map_size(key, probs.shape[2], extra_options))
        self._calls += 1
        if self._calls < self.expected_calls:
            return False
        maps = self._acc.mean()
        self._reset_pass()
        if self.mode == "grad":
            self._grad_maps = maps
            return self.stop_early
        sigma = current_sigma(extra_options)
        if sigma == self._recorded_sigma:
            # a second conditional pass at the same noise level is not the prompt's own pass but an
            # extra one of another guidance (SAG's blurred negative, PAG's perturbed pass)
            return False
        self._recorded_sigma = sigma
        self.record.add_step(sigma, maps)
        return False

    def _map_size(self, key, n_query: int, extra_options: dict) -> tuple[int, int]:
        shape = extra_options.get("original_shape")
        if shape is None:
            raise StormError("the host did not pass the latent shape to the attention patch")
        height, width = int(shape[-2]), int(shape[-1])
        level = self.levels.get(key)
        if level is not None:
            h, w = downsampled_size(height, level), downsampled_size(width, level)
            if h * w == n_query:
                return h, w
        return infer_hw(n_query, height, width)


def make_attn2_patch(recorder: MapRecorder, key: tuple[str, int], previous=None):
    """An attn2 replace patch that records into ``recorder`` and chains to ``previous``."""

    def storm_attn2_record(q, k, v, extra_options):
        if recorder.observe(key, q, k, extra_options):
            raise StopForward
        if previous is not None:
            return previous(q, k, v, extra_options)
        return host_attention(q, k, v, extra_options["n_heads"], extra_options)

    return storm_attn2_record


def install_patches(model_options: dict, recorder: MapRecorder, layers: tuple[CrossAttentionLayer, ...]) -> dict:
    """Register recording patches for ``layers`` in ``model_options`` (already a private copy).

    One key per transformer depth ``(block, index, depth)``: the host looks those up before the
    2-tuple key, so chaining per depth never hides another pack's patch nor is hidden by it.
    """
    transformer_options = model_options.setdefault("transformer_options", {})
    replace = transformer_options.setdefault("patches_replace", {})
    attn2 = dict(replace.get("attn2", {}))
    for layer in layers:
        for depth in range(layer.depth):
            full = (layer.key[0], layer.key[1], depth)
            previous = attn2.get(full, attn2.get(layer.key))
            attn2[full] = make_attn2_patch(recorder, layer.key, previous)
    replace["attn2"] = attn2
    return model_options


class ContinuousRecorder(MapRecorder):
    """A recorder living in a patched MODEL, used by whatever sampler runs it.

    Each sampling call gets its own :class:`RunRecord` in ``history``: :meth:`begin_run` is called
    at the start of every call by the host's ``OUTER_SAMPLE`` sampling wrapper. The run's final latent is taken from the CFG-combined
    prediction of its last step (what every sampler returns when the schedule ends at sigma 0),
    so the visualiser can match the run to the LATENT a host sampler returns.
    """

    def __init__(self, layers, history: AttentionHistory, info: RunInfo):
        super().__init__(layers, record=None)
        self.mode = "cfg"
        self.history = history
        self.info = info

    def begin_run(self) -> None:
        """A sampling call starts (from the host's sampling wrapper): a new record, no state carried over."""
        self._reset_pass()
        self._recorded_sigma = None
        self.record = RunRecord(self.info)
        self.history.add(self.record)

    def observe(self, key, q, k, extra_options):
        if self.record is None:  # the model ran outside a sampling call (no OUTER_SAMPLE wrapper around it)
            self.begin_run()
        return super().observe(key, q, k, extra_options)

    def on_context(self, args: dict) -> None:
        """From the UNet function wrapper: keep the conditional prompt encoding of the run."""
        cond_or_uncond = list(args.get("cond_or_uncond") or [])
        context = args.get("c", {}).get("c_crossattn")
        if self.record is None or self.record.prompt_encoding is not None or context is None or 0 not in cond_or_uncond:
            return
        chunk = context.shape[0] // len(cond_or_uncond)
        self.record.prompt_encoding = prompt_encoding(context[cond_or_uncond.index(0) * chunk])

    def on_denoised(self, denoised, sigma) -> None:
        if self.record is not None:
            self.record.final_latent = denoised.detach().to("cpu", dtype=denoised.dtype).float()
