"""AID's dynamic selection on the host: frames generated one coefficient at a time, measured, and chosen.

He et al., "AID: Attention Interpolation of Text-to-Image Diffusion" (PAID), NeurIPS 2024: the release's
dynamic selection explores coefficients where the frames change most under a Beta prior refitted to the
measured changes, then keeps the explored frames whose adjacent distances are most even
(:func:`storm_ops.aid.selection.dynamic_selection` has the method). Here each explored frame is sampled
by :func:`nodes.aid_sampling.sample_sequence` with both endpoints in its batch (AID's frames attend to the
endpoints' keys and values, so every frame needs them), exactly as in a whole-sequence run: a frame at
``t`` has the same noise (the slerp of the endpoint noises) and conditioning either way.

Frame distance, as the release measures it, is ``1 - cos`` of CLIP image embeddings: with a *Load CLIP Vision*
model connected, its image embeddings of the decoded frames. Without one, the decoded frames themselves at
64 x 64 pixels, mean-centred, stand in for the embedding (``1 - cos`` of those vectors): pixels are what the
user sees and need no download; the attention maps would not do, since A's and B's prompts have different
tokens, so their maps have no common columns to compare.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..storm_ops.aid.selection import consistency as mean_distance
from ..storm_ops.aid.selection import cosine_distance, dynamic_selection, smoothness
from ..storm_ops.errors import StormError
from .aid_sampling import InterpolationSettings, sample_sequence
from .compat import NodeProgress, throw_if_interrupted

#: side of the decoded frames compared without a CLIP vision model
FALLBACK_SIDE = 64


@dataclass
class Frame:
    """One explored frame: its latent (the model's shape, batch 1), its decoded image and the vector its distance is
    measured on."""

    latent: torch.Tensor
    image: torch.Tensor
    embedding: torch.Tensor


def frame_embedding(images: torch.Tensor, clip_vision=None) -> torch.Tensor:
    """The vectors frame distances compare, one row per image of ``images`` (ComfyUI IMAGE, ``(B, H, W, C)``
    in [0, 1]): CLIP image embeddings with ``clip_vision``, else the images at 64 x 64, mean-centred."""
    if clip_vision is not None:
        out = clip_vision.encode_image(images)
        embeds = getattr(out, "image_embeds", None)
        if embeds is None:
            embeds = out["image_embeds"]
        return embeds.detach().float().flatten(1).cpu()
    small = torch.nn.functional.interpolate(images.movedim(-1, 1).float(), size=(FALLBACK_SIDE, FALLBACK_SIDE),
                                            mode="area")
    flat = small.flatten(1).cpu()
    return flat - flat.mean(dim=1, keepdim=True)


def sequence_measures(images: torch.Tensor, clip_vision=None) -> tuple[list[float], float, float]:
    """A frame sequence's adjacent distances (``1 - cos`` of :func:`frame_embedding`), its smoothness
    (``1 - Gini`` of them) and consistency (their mean): how the release scores a sequence, for any
    sequence, e.g. a fixed Beta schedule's frames against a dynamic selection's."""
    if images.shape[0] < 2:
        raise StormError(f"a sequence needs at least 2 frames to measure, got {images.shape[0]}", input_name="images")
    embeddings = frame_embedding(images, clip_vision)
    adjacent = [cosine_distance(x, y) for x, y in zip(embeddings[:-1], embeddings[1:], strict=True)]
    return adjacent, smoothness(adjacent), mean_distance(adjacent)


def clip_scores(images: torch.Tensor, clip_vision, clip, text: str) -> torch.Tensor:
    """The CLIP score of each image to ``text``: ``cos`` of the CLIP vision model's image embeddings and the text
    encoder's projected pooled output (``clip``: the text tower of the same CLIP model, e.g. SDXL's CLIP, whose
    ViT-bigG tower carries its projection, with ``clip_vision_g``). PAID's compositional generation keeps the frame
    with the highest score to the guide prompt (He et al., NeurIPS 2024, section 5)."""
    image = frame_embedding(images, clip_vision)
    pooled = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)[1]
    if pooled is None:
        raise StormError("this text encoder has no pooled output to compare with image embeddings; connect the "
                         "text tower of the CLIP model the CLIP vision model belongs to", input_name="clip")
    pooled = pooled.detach().float().flatten(1)[:1].cpu()
    if pooled.shape[1] != image.shape[1]:
        raise StormError(f"the text encoder's pooled output has {pooled.shape[1]} values and the CLIP vision model's "
                         f"image embeddings {image.shape[1]}: they are not two towers of one CLIP model; connect the "
                         f"matching text encoder (e.g. SDXL's CLIP, 1280, with clip_vision_g)", input_name="clip")
    return torch.nn.functional.cosine_similarity(image, pooled.expand_as(image), dim=1)


def decode(vae, latent: torch.Tensor) -> torch.Tensor:
    images = vae.decode(latent)
    if images.dim() == 5:  # a video VAE's one-frame output (B, T, H, W, C)
        images = images.flatten(0, 1)
    return images


def describe(selection, distance_name: str) -> str:
    """The report of a dynamic selection: the chosen coefficients, their adjacent distances and measures, the
    explored ones and the refitted prior."""
    run = selection.exploration
    explored = [mean_distance(run.adjacent), smoothness(run.adjacent)]
    lines = [
        "coefficients: " + ", ".join(f"{i}: {t:.5f}" for i, t in enumerate(selection.ts)),
        f"smoothness (1 - Gini of adjacent distances): {selection.smoothness:.4f}; consistency (mean adjacent "
        f"distance): {selection.consistency:.4f}; spread: {selection.spread:.4f}",
        "adjacent distances: " + ", ".join(f"{d:.4f}" for d in selection.adjacent),
        f"explored {len(run.ts)} coefficients (smoothness {explored[1]:.4f}, consistency {explored[0]:.4f}): "
        + ", ".join(f"{t:.5f}" for t in run.ts),
        f"Beta prior: ({run.init_prior[0]:g}, {run.init_prior[1]:g}) refitted to ({run.prior[0]:.3f}, {run.prior[1]:.3f})",
        f"distance: {distance_name}",
    ]
    return "\n".join(lines)


class RunsProgress:
    """One progress bar over ``runs`` sampling runs of equal length (the explored frames of one node run)."""

    def __init__(self, model, runs: int):
        self.model, self.runs, self.started = model, runs, 0
        self.node: NodeProgress | None = None

    def next_run(self):
        """The ``progress(done, total, x0)`` of the next run (:func:`~.aid_sampling.sample_sequence`)."""
        index, self.started = self.started, self.started + 1

        def progress(steps_done: int, total: int, x0) -> None:
            if self.node is None:  # the runs' length is known at the first step
                self.node = NodeProgress(self.model, self.runs * total)
            self.node.update(index * total + steps_done, x0)

        return progress

    def finish(self) -> None:
        """The bar at its end (the selection may have asked for fewer runs than it could)."""
        if self.node is not None:
            self.node.update(self.node.total)


def dynamic_sequence(model, positive_a, positive_b, negative, guide, latent: dict, seed: int, steps: int, cfg: float,
                     sampler_name: str, scheduler: str, settings: InterpolationSettings, noise_b_seed: int | None,
                     vae, clip_vision=None, *, exploration_size: int, interpolation_size: int, alpha: float,
                     beta: float):
    """Explore ``exploration_size`` coefficients and keep ``interpolation_size`` frames (both endpoints included).
    Returns ``(latent batch of the chosen frames, their decoded images, the Selection, its report)``."""
    if not 2 <= interpolation_size <= exploration_size:
        raise StormError(f"interpolation_size ({interpolation_size}) must lie between 2 and exploration_size "
                         f"({exploration_size})", input_name="interpolation_size")
    if exploration_size < 3:
        raise StormError(f"exploration_size must be at least 3 (both ends and a middle), got {exploration_size}",
                         input_name="exploration_size")
    done: dict[float, Frame] = {}
    # one bar over every sampling run: the endpoints' and one per explored coefficient between them
    runs = RunsProgress(model, exploration_size - 1)

    def sample(ts: list[float]) -> torch.Tensor:
        frames = torch.tensor(ts, dtype=torch.float64)
        samples, _ = sample_sequence(model, positive_a, positive_b, negative, guide, latent, seed, steps, cfg,
                                     sampler_name, scheduler, replace(settings, frames=frames, chunk_size=1),
                                     noise_b_seed, progress=runs.next_run())
        return samples

    def keep(t: float, samples: torch.Tensor) -> Frame:
        images = decode(vae, samples)
        frame = Frame(samples.detach().cpu(), images, frame_embedding(images, clip_vision)[0])
        done[t] = frame
        return frame

    def generate(t: float) -> Frame:
        throw_if_interrupted()
        if t in done:
            return done[t]
        if t in (0.0, 1.0):  # both endpoints in one run: A and B
            ends = sample([0.0, 1.0])
            keep(0.0, ends[:1])
            keep(1.0, ends[-1:])
            return done[t]
        return keep(t, sample([0.0, t, 1.0])[1:2])

    selection = dynamic_selection(generate, lambda x, y: cosine_distance(x.embedding, y.embedding),
                                  exploration_size=exploration_size, interpolation_size=interpolation_size,
                                  init_alpha=alpha, init_beta=beta)
    runs.finish()
    samples = torch.cat([frame.latent for frame in selection.items], 0)
    name = "1 - cos of the CLIP vision model's image embeddings" if clip_vision is not None else \
        f"1 - cos of the decoded frames at {FALLBACK_SIDE} x {FALLBACK_SIDE} px, mean-centred (no CLIP vision model)"
    images = torch.cat([frame.image for frame in selection.items], 0)  # decoded once, when explored
    return samples, images, selection, describe(selection, name)
