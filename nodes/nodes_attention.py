"""Attention nodes: STORM Attention Recorder (records the maps of any sampler's run, UNet or DiT), STORM
Attention Heatmap (the maps of the run that produced a latent: a labelled grid, an overlay on the image, masks,
the guidance log, and for the node's view the per-step maps and the log's JSON) and STORM Save Attention (the
maps, the run's info and its log in a safetensors file)."""

from __future__ import annotations

import json
import os
import uuid

import torch
from safetensors.torch import save_file

from ..storm_ops.attention.maps import MapSettings, normalize_maps, select_token_maps, word_maps
from ..storm_ops.errors import StormError
from ..storm_ops.guidance.run_log import RunInfo
from ..storm_ops.tokens.identity import check_prompt_encoding, untile_encoding
from ..storm_ops.tokens.layout import Subject
from .architecture import check_conditioning_family, describe_model
from .attention_capture import AttentionHistory, ContinuousRecorder, latent_run, mean_of_steps
from .compat import folder_paths, require_model, wrap_sampling_calls
from .dit_capture import install_recording
from .errors import node_error_context, node_errors
from .heatmap_render import (
    RUNS,
    SHOW,
    VIEWS,
    colorize,
    format_log,
    labelled_grid,
    step_maps_payload,
    to_pil,
    upsample,
)
from .widgets import ATTENTION_OUTPUT_TOOLTIP, LAYERS_INPUT

#: the ``format`` metadata of files written by STORM Save Attention
ATTENTION_FILE_FORMAT = "comfyui-storm.attention/1"


def find_run(attention, latent: dict, run: str):
    """The run ``run`` selects for ``latent`` (the ``run`` input of the heatmap and save nodes)."""
    if run == "latest run" and latent_run(latent) is None:
        record = attention.latest()
        if record is None:
            raise StormError("no sampling run has been recorded yet", input_name="attention")
        return record
    record = attention.find(latent)
    if record is None:
        raise StormError(attention.miss_message(latent), input_name="latent")
    return record


class AttentionRecorder:
    """MODEL -> MODEL patch that records cross-attention maps for STORM Attention Heatmap."""

    NODE_NAME = "STORM Attention Recorder"
    SEARCH_ALIASES = ("record attention", "cross attention maps", "daam")  # node search
    DESCRIPTION = (
        "Records the cross-attention maps of the selected layers while any sampler (KSampler, "
        "SamplerCustom, ...) runs the returned model, without changing the image. Connect the attention "
        "output and the sampler's latent to STORM Attention Heatmap. SD3 and Flux: the image-to-text part "
        "of every block's joint attention is recorded (the layer selection applies to UNets).")
    CATEGORY = "STORM/attention"
    FUNCTION = "patch"
    RETURN_TYPES = ("MODEL", "STORM_ATTENTION")
    RETURN_NAMES = ("model", "attention")
    OUTPUT_TOOLTIPS = ("The model with recording patches (a clone; the input model is unchanged).",
                       ATTENTION_OUTPUT_TOOLTIP)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The diffusion model to record (SD1.x, SD2.x, SDXL, SD3 or Flux)."}),
            "attention_layers": LAYERS_INPUT,
        }}

    @node_errors(NODE_NAME)
    def patch(self, model, attention_layers):
        arch = describe_model(require_model(model, self.NODE_NAME).model, self.NODE_NAME)
        layers = arch.select(attention_layers, self.NODE_NAME)
        history = AttentionHistory(self.NODE_NAME)
        recorder = ContinuousRecorder(layers, history, RunInfo(self.NODE_NAME, arch.model_name, arch.family,
                                                               [layer.label for layer in layers],
                                                               pixels_per_latent=arch.pixels_per_latent))
        patched = model.clone()
        install_recording(patched.model_options, recorder, layers, arch)

        def storm_record_final(args):
            recorder.on_denoised(args["denoised"], args.get("sigma"))
            return args["denoised"]

        patched.set_model_sampler_post_cfg_function(storm_record_final)
        previous = patched.model_options.get("model_function_wrapper")

        def storm_record_context(apply_model, args):
            context = args["c"].get("c_crossattn")
            if context is not None:  # fail with a clear message, not the host's shape error
                with node_error_context(self.NODE_NAME):
                    check_conditioning_family(self.NODE_NAME, arch, {"positive or negative": [context]})
            out = previous(apply_model, args) if previous is not None else \
                apply_model(args["input"], args["timestep"], **args["c"])
            recorder.on_context(args)  # after the pass: a new run's record exists by then
            return out

        patched.set_model_unet_function_wrapper(storm_record_context)
        wrap_sampling_calls(patched, "storm_attention_recorder", recorder.begin_run)
        return (patched, history)


class AttentionHeatmap:
    """Shows the cross-attention maps of the run that produced a latent."""

    NODE_NAME = "STORM Attention Heatmap"
    SEARCH_ALIASES = ("heatmap", "attention map", "daam", "visualize attention", "visualise attention")  # node search
    DESCRIPTION = (
        "Per-token cross-attention heatmaps of the sampling run that produced the connected latent "
        "(averaged over the recorded layers, heads and steps): a labelled grid, overlays on an image "
        "and a MASK per token, plus the guidance log of that run. Re-queued runs always show their "
        "own maps.")
    CATEGORY = "STORM/attention"
    FUNCTION = "render"
    OUTPUT_NODE = True
    RETURN_TYPES = ("IMAGE", "IMAGE", "MASK", "STRING")
    RETURN_NAMES = ("grid", "overlay", "mask", "log")
    OUTPUT_TOOLTIPS = (
        "All selected tokens side by side, labelled.",
        "One heatmap per token blended over the input image (or alone without one).",
        "One mask per token: the normalised map at image resolution.",
        "Guidance log of the run: losses per guided step before -> after, refinement (and thresholds it did not reach), skipped updates.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "attention": ("STORM_ATTENTION", {"tooltip": "From STORM Guided Sampler / Guided KSampler / Attention Recorder."}),
            "latent": ("LATENT", {"tooltip": "The latent produced by that sampler: selects the run to show."}),
            "tokens": ("STORM_TOKENS", {"tooltip": "The prompt's tokens (from STORM Subject Tokens)."}),
            "show": (list(SHOW), {"default": "subjects", "tooltip": "Subject tokens only, or every word of the prompt."}),
            "view": (list(VIEWS), {"default": "attention",
                                   "tooltip": "attention: raw maps (each scaled to its own max); attend-and-excite: the "
                                              "maps A&E's loss reads (softmax over tokens without the start token, smoothed)."}),
        }, "optional": {
            "image": ("IMAGE", {"tooltip": "Image to overlay the heatmaps on (e.g. the VAE-decoded result)."}),
            "run": (list(RUNS), {"default": "matching latent",
                                 "tooltip": "matching latent: the run that produced the latent (STORM samplers name it in "
                                            "the LATENT; a host sampler's result is matched by value), safe with several "
                                            "samplers; latest run: the last run recorded, for inpainting with a host "
                                            "sampler (the host blends the result after sampling)."}),
            "batch_index": ("INT", {"default": 0, "min": 0, "max": 4095, "tooltip": "Which image of a batch to show."}),
            "opacity": ("FLOAT", {"default": 0.6, "min": 0.0, "max": 1.0, "step": 0.05,
                                  "tooltip": "Heatmap opacity in the overlay."}),
        }}

    @node_errors(NODE_NAME)
    def render(self, attention, latent, tokens, show, view, image=None, run="matching latent", batch_index=0,
               opacity=0.6):
        record = find_run(attention, latent, run)
        layout = tokens.layout
        if record.prompt_encoding is not None:
            given = untile_encoding(record.prompt_encoding, layout.length)
            check_prompt_encoding(layout, record.prompt_encoding if given is None else given,
                                  what="the prompt of the shown run", input_name="tokens",
                                  remedy="Connect the tokens of the prompt that run sampled (the STORM Subject Tokens "
                                         "or Prompt Analysis whose conditioning went into the sampler's positive input).")
        folded = record.folded_steps(layout.length)  # each evaluation's maps, folded once for both uses
        maps = mean_of_steps(folded)  # (B, T, h, w)
        if batch_index >= maps.shape[0]:
            raise StormError(f"batch_index {batch_index} is out of range for a batch of {maps.shape[0]}",
                             input_name="batch_index")
        maps = maps[batch_index:batch_index + 1]
        if show == "subjects":
            subjects = tokens.subjects
        else:
            subjects = tuple(Subject(w.text, w.positions) for w in layout.words)
        if not subjects:
            raise StormError("no tokens to show: select subjects in STORM Subject Tokens or show all words",
                             input_name="tokens")
        if view == "attend-and-excite":
            sel = word_maps(maps, layout, [s.positions for s in subjects], MapSettings())[0]
        else:
            sel = select_token_maps(maps, [s.positions for s in subjects])[0]
        if image is not None:
            height, width = int(image.shape[1]), int(image.shape[2])
        else:
            height, width = (int(v) * record.info.pixels_per_latent for v in latent["samples"].shape[-2:])
        masks = normalize_maps(upsample(sel, height, width))   # (K, H, W)
        heat = colorize(masks)
        if image is not None:
            base = image[min(batch_index, image.shape[0] - 1)].float().cpu()[None]
            overlay = base * (1 - opacity) + heat * opacity
        else:
            overlay = heat
        labels = [s.name for s in subjects]
        grid = labelled_grid(heat, labels)
        text = format_log(record.log)
        groups = [s.positions for s in subjects]
        steps = [(sigma, select_token_maps(m[batch_index:batch_index + 1], groups)[0])
                 for sigma, m in folded]
        ui = {"images": [self._save_preview(grid)], "storm_log": [text], "storm_labels": labels,
              "storm_steps": [e.to_json() for e in record.log], "storm_maps": [step_maps_payload(steps, labels, None if image is None else base[0], opacity)]}
        return {"ui": ui, "result": (grid, overlay.clamp(0, 1), masks, text)}

    @staticmethod
    def _save_preview(grid: torch.Tensor) -> dict:
        paths = folder_paths()
        directory = paths.get_temp_directory()
        os.makedirs(directory, exist_ok=True)
        name = f"storm_heatmap_{uuid.uuid4().hex[:12]}.png"
        to_pil(grid[0]).save(os.path.join(directory, name))
        return {"filename": name, "subfolder": "", "type": "temp"}


class SaveAttention:
    """Saves the recorded cross-attention maps of a run as a safetensors file, for analysis outside ComfyUI."""

    NODE_NAME = "STORM Save Attention"
    SEARCH_ALIASES = ("export attention", "save attention maps", "attention safetensors")  # node search
    DESCRIPTION = (
        "Writes the cross-attention maps of the sampling run that produced the connected latent to the output "
        "folder as .safetensors: 'maps' (steps, batch, tokens, h, w; float16, averaged over the recorded layers and "
        "heads), 'sigmas', the run's final latent and prompt encoding, and as metadata the run's settings, guidance "
        "log and (with tokens connected) the text of every token column. Read it with safetensors' safe_open.")
    CATEGORY = "STORM/attention"
    FUNCTION = "save"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("path",)
    OUTPUT_TOOLTIPS = ("The written file, relative to the output folder.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "attention": ("STORM_ATTENTION", {"tooltip": "From STORM Guided Sampler / Guided KSampler / Attention Recorder."}),
            "latent": ("LATENT", {"tooltip": "The latent produced by that sampler: selects the run to save."}),
            "filename_prefix": ("STRING", {"default": "storm/attention",
                                           "tooltip": "File name prefix in the output folder (sub-folders allowed)."}),
        }, "optional": {
            "tokens": ("STORM_TOKENS", {"tooltip": "The prompt's tokens: stores the text of each token column and the "
                                                   "subjects' columns in the metadata."}),
            "run": (list(RUNS), {"default": "matching latent", "tooltip": "As in STORM Attention Heatmap."}),
        }}

    @node_errors(NODE_NAME)
    def save(self, attention, latent, filename_prefix, tokens=None, run="matching latent"):
        record = find_run(attention, latent, run)
        if not record.step_maps:
            raise StormError("this sampling run recorded no attention maps", input_name="attention")
        tensors = {"maps": torch.stack([m for _, m in record.step_maps]).contiguous(),
                   "sigmas": torch.tensor([s for s, _ in record.step_maps], dtype=torch.float32)}
        if record.final_latent is not None:
            tensors["final_latent"] = record.final_latent.float().contiguous()
        if record.prompt_encoding is not None:
            tensors["prompt_encoding"] = record.prompt_encoding.float().contiguous()
        metadata = {"format": ATTENTION_FILE_FORMAT, "run_id": record.run_id, "info": json.dumps(record.info.to_json()),
                    "log": json.dumps([e.to_json() for e in record.log])}
        if tokens is not None:
            metadata["tokens"] = json.dumps([p.text for p in tokens.layout.pieces])
            metadata["subjects"] = json.dumps({s.name: list(s.positions) for s in tokens.subjects})
        paths = folder_paths()
        output_dir = paths.get_output_directory()
        folder, filename, counter, subfolder, _ = paths.get_save_image_path(filename_prefix, output_dir)
        os.makedirs(folder, exist_ok=True)
        name = f"{filename}_{counter:05}_.safetensors"
        save_file(tensors, os.path.join(folder, name), metadata=metadata)
        relative = os.path.join(subfolder, name)
        return {"ui": {"storm_text": [f"saved {relative}"]}, "result": (relative,)}
