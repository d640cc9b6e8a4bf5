"""STORM Attention Recorder: records cross-attention maps during any sampler's run."""

from __future__ import annotations

from ..storm_ops.tokens import prompt_encoding
from .architecture import check_conditioning_family, describe_unet
from .capture import GRAD_PASS_FLAG, AttentionHistory, MapRecorder, RunRecord, current_sigma, install_patches
from .errors import node_error_context, node_errors
from .nodes_sampling import ATTENTION_OUTPUT_TOOLTIP, LAYERS_INPUT


class ContinuousRecorder(MapRecorder):
    """A recorder living in a patched MODEL, used by whatever sampler runs it.

    A run starts when the noise level goes up (every sampling run starts at its highest sigma);
    each run gets its own :class:`RunRecord` in ``history``. The run's final latent is taken from
    the CFG-combined prediction of its last step (what every sampler returns when the schedule
    ends at sigma 0), so the visualiser can match the run to the LATENT it is shown.
    """

    def __init__(self, layers, history: AttentionHistory, info: dict):
        super().__init__(layers, record=None)
        self.mode = "cfg"
        self.history = history
        self.info = info
        self._last_sigma: float | None = None

    def _maybe_start_run(self, sigma: float) -> None:
        if self.record is None or (self._last_sigma is not None and sigma > self._last_sigma):
            self.record = RunRecord(self.info)
            self.history.add(self.record)
        self._last_sigma = sigma

    def observe(self, key, q, k, extra_options):
        if 0 in extra_options.get("cond_or_uncond", [0]) and not extra_options.get(GRAD_PASS_FLAG):
            self._maybe_start_run(current_sigma(extra_options))
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


class AttentionRecorder:
    """MODEL -> MODEL patch that records cross-attention maps for STORM Attention Heatmap."""

    NODE_NAME = "STORM Attention Recorder"
    DESCRIPTION = (
        "Records the cross-attention maps of the selected layers while any sampler (KSampler, "
        "SamplerCustom, ...) runs the returned model, without changing the image. Connect the attention "
        "output and the sampler's latent to STORM Attention Heatmap.")
    CATEGORY = "STORM/attention"
    FUNCTION = "patch"
    RETURN_TYPES = ("MODEL", "STORM_ATTENTION")
    RETURN_NAMES = ("model", "attention")
    OUTPUT_TOOLTIPS = ("The model with recording patches (a clone; the input model is unchanged).",
                       ATTENTION_OUTPUT_TOOLTIP)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The diffusion model to record (SD1.x, SD2.x or SDXL)."}),
            "attention_layers": LAYERS_INPUT,
        }}

    @node_errors(NODE_NAME)
    def patch(self, model, attention_layers):
        unet = describe_unet(model.model, self.NODE_NAME)
        layers = unet.select(attention_layers, self.NODE_NAME)
        history = AttentionHistory(self.NODE_NAME)
        recorder = ContinuousRecorder(layers, history, {
            "node": self.NODE_NAME, "model": unet.model_name, "family": unet.family,
            "layers": [layer.label for layer in layers]})
        patched = model.clone()
        install_patches(patched.model_options, recorder, layers)

        def storm_record_final(args):
            recorder.on_denoised(args["denoised"], args.get("sigma"))
            return args["denoised"]

        patched.set_model_sampler_post_cfg_function(storm_record_final)
        previous = patched.model_options.get("model_function_wrapper")

        def storm_record_context(apply_model, args):
            context = args["c"].get("c_crossattn")
            if context is not None:  # fail with a clear message, not the host's shape error
                with node_error_context(self.NODE_NAME):
                    check_conditioning_family(self.NODE_NAME, unet, {"positive or negative": [context]})
            out = previous(apply_model, args) if previous is not None else \
                apply_model(args["input"], args["timestep"], **args["c"])
            recorder.on_context(args)  # after the pass: a new run's record exists by then
            return out

        patched.set_model_unet_function_wrapper(storm_record_context)
        return (patched, history)
