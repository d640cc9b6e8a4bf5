"""STORM Attention Heatmap: per-token heatmaps (grid, overlay, mask) and the guidance log."""

from __future__ import annotations

import os
import uuid

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from ..storm_ops.attention import normalize_maps, select_token_maps
from ..storm_ops.errors import StormError
from ..storm_ops.losses.attend_excite import AttendExciteConfig, subject_maps
from ..storm_ops.tokens import AUTO, Subject, check_prompt_encoding, untile_encoding
from .compat import folder_paths
from .errors import node_errors

# A perceptually ordered colormap (dark blue -> cyan -> yellow -> red), sampled at 6 stops.
_STOPS = torch.tensor([[0.05, 0.03, 0.35], [0.10, 0.35, 0.85], [0.10, 0.75, 0.80],
                       [0.55, 0.90, 0.25], [0.98, 0.80, 0.10], [0.85, 0.10, 0.05]])
LABEL_HEIGHT = 18
VIEWS = ("attention", "attend-and-excite")
SHOW = ("subjects", "all words")
RUNS = ("matching latent", "latest run")


def colorize(maps: torch.Tensor) -> torch.Tensor:
    """Map values in [0, 1], shape ``(K, H, W)``, to RGB ``(K, H, W, 3)``."""
    x = maps.clamp(0, 1) * (len(_STOPS) - 1)
    lo = x.floor().long().clamp(max=len(_STOPS) - 2)
    t = (x - lo).unsqueeze(-1)
    stops = _STOPS.to(maps.device)
    return stops[lo] * (1 - t) + stops[lo + 1] * t


def upsample(maps: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear resize of ``(K, h, w)`` maps to ``(K, height, width)``."""
    return F.interpolate(maps[:, None].float(), size=(height, width), mode="bilinear", align_corners=False)[:, 0]


def labelled_grid(tiles: torch.Tensor, labels: list[str]) -> torch.Tensor:
    """Tiles ``(K, H, W, 3)`` side by side with a caption under each: ``(1, H + 18, K W + gaps, 3)``."""
    k, h, w, _ = tiles.shape
    gap = 4
    canvas = Image.new("RGB", (k * w + (k - 1) * gap, h + LABEL_HEIGHT), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i in range(k):
        tile = Image.fromarray((tiles[i].cpu().numpy() * 255).round().astype(np.uint8))
        canvas.paste(tile, (i * (w + gap), 0))
        draw.text((i * (w + gap) + 3, h + 3), labels[i][: max(1, w // 6)], fill=(0, 0, 0))
    return torch.from_numpy(np.asarray(canvas).astype(np.float32) / 255.0)[None]


def format_log(log: list[dict]) -> str:
    """One line per guided step: losses before -> after, refinement iterations, skips."""
    if not log:
        return "no guided steps in this run"
    lines = []
    for e in log:
        terms = ", ".join(f"{name} {_fmt(e['terms_before'][name])} -> {_fmt(e['terms_after'][name])}"
                          for name in e["terms_before"])
        extra = f", refined x{e['refine_iters']}" if e["refine_iters"] else ""
        skipped = f", SKIPPED: {'; '.join(e['skipped'])}" if e.get("skipped") else ""
        lines.append(f"step {e['step']} (sigma {e['sigma']:.3f}): {terms}{extra}{skipped}")
    return "\n".join(lines)


def _fmt(values) -> str:
    vals = [f"{v:.4f}" if isinstance(v, float) else str(v) for v in values]
    return vals[0] if len(vals) == 1 else "[" + ", ".join(vals) + "]"


class AttentionHeatmap:
    """Shows the cross-attention maps of the run that produced a latent."""

    NODE_NAME = "STORM Attention Heatmap"
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
        "Guidance log of the run: losses per guided step before -> after, refinement, skipped updates.",
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
                                 "tooltip": "matching latent: the run whose result equals the latent (safe with several "
                                            "samplers); latest run: the last run recorded (use for inpainting, where the "
                                            "host blends the result after sampling)."}),
            "batch_index": ("INT", {"default": 0, "min": 0, "max": 4095, "tooltip": "Which image of a batch to show."}),
            "opacity": ("FLOAT", {"default": 0.6, "min": 0.0, "max": 1.0, "step": 0.05,
                                  "tooltip": "Heatmap opacity in the overlay."}),
        }}

    @node_errors(NODE_NAME)
    def render(self, attention, latent, tokens, show, view, image=None, run="matching latent", batch_index=0,
               opacity=0.6):
        record = self._find_run(attention, latent, run)
        layout = tokens.layout
        if record.prompt_encoding is not None:
            given = untile_encoding(record.prompt_encoding, layout.length)
            check_prompt_encoding(layout, record.prompt_encoding if given is None else given,
                                  what="the prompt of the shown run", input_name="tokens",
                                  remedy="Connect the tokens of the prompt that run sampled (the STORM Subject Tokens "
                                         "or Prompt Analysis whose conditioning went into the sampler's positive input).")
        maps = record.mean_maps(layout.length)  # (B, T, h, w)
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
            sel = subject_maps(maps, layout, subjects, AttendExciteConfig(end_token_convention=AUTO))[0]
        else:
            sel = select_token_maps(maps, [s.positions for s in subjects])[0]
        if image is not None:
            height, width = int(image.shape[1]), int(image.shape[2])
        else:
            height, width = int(latent["samples"].shape[-2]) * 8, int(latent["samples"].shape[-1]) * 8
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
        ui = {"images": [self._save_preview(grid)], "storm_log": [text], "storm_labels": labels,
              "storm_steps": list(record.log)}
        return {"ui": ui, "result": (grid, overlay.clamp(0, 1), masks, text)}

    @staticmethod
    def _find_run(attention, latent, run):
        if run == "latest run":
            record = attention.latest()
            if record is None:
                raise StormError("no sampling run has been recorded yet", input_name="attention")
            return record
        record = attention.find(latent["samples"])
        if record is None:
            raise StormError(
                f"none of the {len(attention.runs)} recorded run(s) of {attention.source} produced this latent. "
                "Connect the LATENT output of the sampler that used this attention source (for inpainting "
                "set run to 'latest run')", input_name="latent")
        return record

    @staticmethod
    def _save_preview(grid: torch.Tensor) -> dict:
        paths = folder_paths()
        directory = paths.get_temp_directory()
        os.makedirs(directory, exist_ok=True)
        name = f"storm_heatmap_{uuid.uuid4().hex[:12]}.png"
        array = (grid[0].cpu().numpy() * 255).round().astype(np.uint8)
        Image.fromarray(array).save(os.path.join(directory, name))
        return {"filename": name, "subfolder": "", "type": "temp"}
