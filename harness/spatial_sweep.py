"""The STORM relation sweep shared by the host test and scripts/benchmark.py.

For a spatial prompt, sample every seed with and without STORM guidance (same noise) and check
whether the subject's attention centroid ends on the requested side of the object's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .nodeutil import node_output

LAYERS = "1/32 res: down+up (A&E)"
THRESHOLDS = "0:0.9, 0.1:0.95, 0.2:0.99, 0.3:0.995, 0.4:0.999"


@dataclass
class SweepResult:
    arch: str
    relation: str
    seeds: int
    unguided: int
    guided: int

    def row(self) -> str:
        return (f"{self.arch:5} {self.relation:22} {self.seeds:5d} {self.unguided:9d} ({self.unguided / self.seeds:4.0%})"
                f" {self.guided:7d} ({self.guided / self.seeds:4.0%})")


HEADER = f"{'arch':5} {'relation':22} {'seeds':>5} {'unguided':>15} {'guided':>13}"


def sample_record(nodes, model, guidance, pos, neg, seed, steps=8, hw=24):
    """Run the STORM Guided Sampler through the host's sample_custom; returns the run's record."""
    import comfy.sample
    import comfy.samplers

    with torch.inference_mode():
        sampler, history = nodes["STORM_GuidedSampler"]().build(guidance=guidance, sampler_name="euler",
                                                                attention_layers=LAYERS)
        latent = torch.zeros(1, 4, hw, hw)
        sigmas = comfy.samplers.KSampler(model, steps=steps, device=model.load_device, sampler="euler",
                                         scheduler="normal", model_options=model.model_options).sigmas
        comfy.sample.sample_custom(model, comfy.sample.prepare_noise(latent, seed), 7.5, sampler, sigmas, pos, neg,
                                   latent, disable_pbar=True, seed=seed)
    return history.latest()


def storm_guidance(nodes, analysis, step_size=20.0, mode="paper", iters=2, **kw):
    with torch.inference_mode():
        return nodes["STORM_SpatialTransport"]().build(
            analysis=analysis, mode=mode, step_size=step_size, start_at=0.02, end_at=0.5, thresholds=THRESHOLDS,
            max_refine_iters=iters, **kw)[0]


def centroid_offset(pack, record, tokens, relation, step: int = -1):
    """Subject minus object attention centroid ``(x, y)`` at ``step`` (map-width units)."""
    maps_of, ot = pack.storm_ops.attention.maps, pack.storm_ops.losses.ot
    maps = record.step_maps[step][1].float()
    # STORM's map settings (TransportConfig().maps; "auto": the tokens' own end-token convention)
    ents = maps_of.word_maps(maps, tokens.layout, [relation.subject.positions, relation.object.positions],
                             pack.storm_ops.losses.transport_core.TransportConfig().maps)
    c = ot.centroids(ents)[0]
    return c[0] - c[1]


def on_requested_side(offset, relation: str) -> bool:
    dx, dy = float(offset[0]), float(offset[1])
    return {"left": dx < 0, "right": dx > 0, "above": dy < 0, "below": dy > 0}[relation]


def sweep(pack, model, clip, negative, text: str, seeds, arch: str) -> SweepResult:
    """Guided vs unguided side rates over ``seeds`` for the first relation of ``text``."""
    nodes = pack.NODE_CLASS_MAPPINGS
    with torch.inference_mode():
        analysis, tokens, pos = node_output(nodes["STORM_PromptAnalysis"]().analyze(
            clip=clip, text=text, parser="auto"))[:3]
    relation = analysis.relations[0]
    hits = {0.0: 0, 20.0: 0}
    seeds = list(seeds)
    for seed in seeds:
        for size in hits:
            record = sample_record(nodes, model, storm_guidance(nodes, analysis, size), pos, negative, seed)
            hits[size] += on_requested_side(centroid_offset(pack, record, tokens, relation), relation.relation)
    return SweepResult(arch, relation.describe(), len(seeds), hits[0.0], hits[20.0])
