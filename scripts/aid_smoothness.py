"""Is AID's dynamic selection smoother than the fixed Beta schedule? Both on the same seeds, side by side.

For each seed, the shape model (``models/storm_shapes_sd15.safetensors``) morphs prompt A into prompt B twice
with the same sampler, steps, noise and interpolation mode:

* **fixed**: STORM Attention Interpolation, ``frames`` coefficients at the quantiles of Beta(alpha, beta)
  (He et al., NeurIPS 2024: the paper's schedule, and the pack's default);
* **dynamic**: STORM Dynamic Interpolation, ``exploration`` coefficients explored under a refitted Beta prior and
  the ``frames`` of them with the most even adjacent distances kept (the release's ``BetaPriorPipeline``).

Both sequences are decoded by the model's VAE and scored by the same measure
(:func:`nodes.aid_dynamic.sequence_measures`: ``1 - cos`` of the decoded frames at 64 x 64 px, mean-centred, the
node's fallback without a CLIP vision model): smoothness ``1 - Gini`` of the adjacent distances (higher is
smoother) and consistency, their mean (lower is closer neighbours). Prints one row per seed and method, and the
per-seed difference.

    python -m scripts.aid_smoothness --seeds 0,1,2 --steps 20 --exploration 16 --frames 7
"""

from __future__ import annotations

import argparse
import json
import time

import torch

#: prompts of the shape world the model knows, far enough apart that the morph has to change colour and shape
PROMPT_A, PROMPT_B = "a red circle", "a blue square"


def compare(pack, tiny, seeds, *, steps: int = 20, cfg: float = 5.0, frames: int = 7, exploration: int = 16,
            alpha: float = 3.0, beta: float = 3.0, side: int = 16, prompts=(PROMPT_A, PROMPT_B),
            sampler: str = "euler") -> list[dict]:
    """One row per (seed, method): the coefficients, adjacent distances, smoothness, consistency and seconds."""
    from harness.nodeutil import call_node, node_output
    from harness.tiny_models import tiny_conditioning

    nodes = pack.NODE_CLASS_MAPPINGS
    measures = pack.nodes.aid_dynamic.sequence_measures
    with torch.inference_mode():
        a, b = (tiny_conditioning(tiny.clip, p) for p in prompts)
        negative = tiny_conditioning(tiny.clip, "")
    latent = {"samples": torch.zeros(1, 4, side, side)}
    shared = dict(model=tiny.model, positive_a=a, positive_b=b, negative=negative, latent_image=latent, steps=steps,
                  cfg=cfg, sampler_name=sampler, scheduler="normal")
    rows = []
    for seed in seeds:
        with torch.inference_mode():
            t0 = time.perf_counter()
            out, _, text = call_node(nodes["STORM_AttentionInterpolation"], seed=seed, frames=frames, alpha=alpha,
                                     beta=beta, **shared)
            images = tiny.vae.decode(out["samples"])
            fixed_seconds = time.perf_counter() - t0
            adjacent, smooth, mean = measures(images)
            rows.append({"seed": seed, "method": "fixed", "coefficients": text, "adjacent": adjacent,
                         "smoothness": smooth, "consistency": mean, "seconds": fixed_seconds})
            t0 = time.perf_counter()
            result = nodes["STORM_DynamicInterpolation"]().interpolate(
                seed=seed, mode="fused outer", warmup_ratio=0.5, endpoint_noise="same", vae=tiny.vae,
                exploration_size=exploration, interpolation_size=frames, alpha=alpha, beta=beta, **shared)
            _, images, text, report = node_output(result)
            dynamic_seconds = time.perf_counter() - t0
            adjacent, smooth, mean = measures(images)
            rows.append({"seed": seed, "method": "dynamic", "coefficients": text, "adjacent": adjacent,
                         "smoothness": smooth, "consistency": mean, "seconds": dynamic_seconds, "report": report})
    return rows


def format_rows(rows: list[dict]) -> str:
    lines = [f"{'seed':>4}  {'method':8} {'1-Gini':>7} {'mean d':>7} {'s':>6}  coefficients"]
    for row in rows:
        lines.append(f"{row['seed']:>4}  {row['method']:8} {row['smoothness']:7.4f} {row['consistency']:7.4f} "
                     f"{row['seconds']:6.0f}  {row['coefficients']}")
    by_seed = {}
    for row in rows:
        by_seed.setdefault(row["seed"], {})[row["method"]] = row
    gains = [r["dynamic"]["smoothness"] - r["fixed"]["smoothness"] for r in by_seed.values()]
    lines.append(f"dynamic - fixed smoothness per seed: {', '.join(f'{g:+.4f}' for g in gains)}; "
                 f"dynamic at least as smooth on {sum(g >= 0 for g in gains)} of {len(gains)} seeds")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=5.0)
    parser.add_argument("--frames", type=int, default=7)
    parser.add_argument("--exploration", type=int, default=16)
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args(argv)
    from harness.host import ensure_host, load_pack
    from harness.tiny_models import SHAPE_MODEL, SHAPE_MODEL_SIZE, load_trained

    ensure_host()
    pack = load_pack()
    with torch.inference_mode():
        tiny = load_trained(SHAPE_MODEL)
    rows = compare(pack, tiny, [int(s) for s in args.seeds.split(",")], steps=args.steps, cfg=args.cfg,
                   frames=args.frames, exploration=args.exploration, side=SHAPE_MODEL_SIZE // 8)
    print(format_rows(rows))
    for row in rows:
        if "report" in row:
            print(f"\nseed {row['seed']} dynamic report:\n{row['report']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
