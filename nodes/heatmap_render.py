"""Rendering of attention heatmaps (colormap, labelled grid) and of the guidance log, for STORM Attention Heatmap."""

from __future__ import annotations

import base64
import io

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from ..storm_ops.guidance.run_log import GuidedStep, refinement_hint

#: the pack's one colormap (dark blue -> cyan -> yellow -> red) as 6 RGB stops in [0, 1], linearly interpolated:
#: the grid images (:func:`colorize`) and the node's heatmap view (``web/storm.js``, sent in the payload) use it
COLORMAP_STOPS = torch.tensor([[0.05, 0.03, 0.35], [0.10, 0.35, 0.85], [0.10, 0.75, 0.80],
                       [0.55, 0.90, 0.25], [0.98, 0.80, 0.10], [0.85, 0.10, 0.05]])
LABEL_HEIGHT = 18
VIEWS = ("attention", "attend-and-excite")
SHOW = ("subjects", "all words")
RUNS = ("matching latent", "latest run")


def colorize(maps: torch.Tensor) -> torch.Tensor:
    """Map values in [0, 1], shape ``(K, H, W)``, to RGB ``(K, H, W, 3)``."""
    x = maps.clamp(0, 1) * (len(COLORMAP_STOPS) - 1)
    lo = x.floor().long().clamp(max=len(COLORMAP_STOPS) - 2)
    t = (x - lo).unsqueeze(-1)
    stops = COLORMAP_STOPS.to(maps.device)
    return stops[lo] * (1 - t) + stops[lo + 1] * t


def upsample(maps: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear resize of ``(K, h, w)`` maps to ``(K, height, width)``."""
    return F.interpolate(maps[:, None].float(), size=(height, width), mode="bilinear", align_corners=False)[:, 0]


def to_pil(image: torch.Tensor) -> Image.Image:
    """An ``(H, W, 3)`` image with values in [0, 1] as an 8-bit PIL image."""
    return Image.fromarray((image.float().clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8))


def labelled_grid(tiles: torch.Tensor, labels: list[str]) -> torch.Tensor:
    """Tiles ``(K, H, W, 3)`` side by side with a caption under each: ``(1, H + 18, K W + gaps, 3)``."""
    k, h, w, _ = tiles.shape
    gap = 4
    canvas = Image.new("RGB", (k * w + (k - 1) * gap, h + LABEL_HEIGHT), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i in range(k):
        tile = to_pil(tiles[i])
        canvas.paste(tile, (i * (w + gap), 0))
        draw.text((i * (w + gap) + 3, h + 3), labels[i][: max(1, w // 6)], fill=(0, 0, 0))
    return torch.from_numpy(np.asarray(canvas).astype(np.float32) / 255.0)[None]


#: first line of the guidance log: what its numbers are
LOG_LEGEND = ("loss of each guided step, evaluated before the step's update (its effect shows in the next "
              "step's value); 'refined xN -> v': N refinement updates brought the loss to v first")


#: the longest side of the image the heatmap view overlays its maps on (larger images are downscaled)
VIEW_IMAGE_SIDE = 512


def step_maps_payload(steps, labels: list[str], image: torch.Tensor | None = None, opacity: float = 0.6) -> dict:
    """The per-step maps the heatmap view of ``web/storm.js`` shows: ``steps`` is a list of ``(sigma,
    maps (K, h, w))``, one per UNet evaluation; each map is scaled to its own maximum and sent as uint8
    (K x steps x h x w bytes, base64: about 26 KB for 2 subjects x 50 steps of 16 x 16 maps), with the stops of
    the colormap the grid images use (:data:`COLORMAP_STOPS`), so the view draws the same colours.

    ``image`` ``(H, W, 3)`` in [0, 1], the decoded image, goes along as a PNG (longest side at most
    :data:`VIEW_IMAGE_SIDE`) for the view to draw the maps over it at ``opacity``."""
    sigmas = [float(sigma) for sigma, _ in steps]
    stack = torch.stack([maps.float() for _, maps in steps], dim=1)  # (K, S, h, w)
    peak = stack.flatten(2).amax(-1).clamp_min(1e-12)[..., None, None]
    data = (stack / peak * 255).round().clamp(0, 255).to(torch.uint8).contiguous().numpy()
    payload = {"labels": labels, "sigmas": [round(s, 4) for s in sigmas], "height": int(stack.shape[-2]),
               "width": int(stack.shape[-1]), "data": base64.b64encode(data.tobytes()).decode("ascii"),
               "colormap": [[round(c, 4) for c in stop] for stop in COLORMAP_STOPS.tolist()]}
    if image is not None:
        picture = to_pil(image[..., :3])
        picture.thumbnail((VIEW_IMAGE_SIDE, VIEW_IMAGE_SIDE))
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        payload.update(image="data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii"),
                       image_width=picture.width, image_height=picture.height, opacity=float(opacity))
    return payload


def format_log(log: list[GuidedStep]) -> str:
    """A legend, then one line per guided step: the loss before the step, the refinement and what it
    reached, whether the regular update was applied, skips."""
    if not log:
        return "no guided steps in this run"
    lines = [LOG_LEGEND]
    for e in log:
        terms = ", ".join(
            f"{name} {_fmt(e.terms_before[name])}"
            + (f" refined x{e.refine_iters} -> {_fmt(e.terms_after[name])}" if e.refine_iters else "")
            for name in e.terms_before)
        missed = [i for i, ok in enumerate(e.threshold_reached or ()) if not ok]
        if missed:
            terms += f" (threshold not reached{'' if len(e.threshold_reached) == 1 else f' by sample(s) {missed}'})"
        skipped = f"; SKIPPED: {'; '.join(e.skipped)}" if e.skipped else ""
        lines.append(f"step {e.step} (sigma {e.sigma:.3f}): {terms}; "
                     f"{'updated' if e.updated else 'not updated'}{skipped}")
    hint = refinement_hint(log)
    if hint:
        lines.append(hint[0].upper() + hint[1:])
    return "\n".join(lines)


def _fmt(values) -> str:
    vals = [f"{v:.4f}" if isinstance(v, float) else str(v) for v in values]
    return vals[0] if len(vals) == 1 else "[" + ", ".join(vals) + "]"
