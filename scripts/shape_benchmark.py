"""Does each method fix what it claims, in the image? Plain sampling vs every method on the shape model.

For every prompt of ``harness.shape_world.prompt_sets()``, each method samples the same ``--samples``
initial noises (one batch from seed ``--seed``: image ``i`` of every method starts from noise sample
``i``; STORM Guided KSampler, ``plain`` is the same sampler with no loss; guidance and refinement are
per image), the VAE decodes them, and ``harness.shape_eval.judge`` decides, per the prompt's kind:

* ``single``   success = the object is drawn in its colour (``binding_ok``: what the model knows);
* ``pair``     success = every requested shape is drawn (``all_present``: object neglect);
* ``binding``  success = every requested (colour, shape) is drawn (``binding_ok``);
* ``relation`` success = both objects drawn and the subject on the requested side (``relation_ok``);

and in every kind the image must be *clean* (``Judgement.clean``: at most one fragment beyond what the
world draws and no colour smeared outside the objects), so guidance that turns an image into coloured
noise, whose fragments can happen to sit in the right places, never counts as a success.

Reported per kind and method: the success rate with its 95% Wilson interval, the change against
``plain`` on the same (prompt, noise) pairs with a 95% paired-bootstrap interval, the time per image,
the refinement iterations the losses used (per image), the share of clean images and how often a subject's attention map (the
run's mean, at image size) lies on its own detected object rather than on the other's ("maps on",
``harness.shape_eval.attention_on_objects``, over images where every object was found). Prints a
table and writes JSON (and, with ``--grid``, a before/after picture grid).

    python -m scripts.shape_benchmark --model models/storm_shapes_sd15.safetensors --samples 64
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from harness.shape_eval import attention_on_objects, judge
from harness.shape_world import prompt_sets

#: which outcome each prompt kind is judged by
SUCCESS = {"single": "binding_ok", "pair": "all_present", "binding": "binding_ok", "relation": "relation_ok"}
#: methods, and the prompt kinds each applies to (STORM needs a spatial relation)
METHODS = {
    "plain": ("single", "pair", "binding", "relation"),
    "attend_excite": ("pair", "binding", "relation"),
    "syngen": ("pair", "binding", "relation"),
    "syngen_entropy": ("pair", "binding", "relation"),
    "astar": ("pair", "binding", "relation"),
    "storm_paper": ("relation",),
    "storm_reference": ("relation",),
    "attend_excite+storm": ("relation",),
}
#: ``--targeted``: each kind with plain sampling and the methods that claim to fix it (and one control)
TARGETS = {
    "single": ("plain",),
    "pair": ("plain", "attend_excite", "attend_excite@1/16", "astar", "syngen"),
    "binding": ("plain", "syngen", "syngen_entropy", "attend_excite"),
    "relation": ("plain", "storm_paper", "storm_reference", "attend_excite+storm"),
}
#: a method name ``"NAME@SEL"`` runs NAME on the attention layers of the sampler's selection starting
#: with SEL (default: the sampler's default selection, "1/32 res: down+up (A&E)")
LAYER_PREFIX = "@"
#: ``"NAME~key=value;key=value"`` sets inputs of the method's loss node (for a composition, of its last
#: node), e.g. ``attend_excite~max_refine_iters=0`` or ``storm_reference~step_size=10``
OPTIONS_PREFIX = "~"


def parse_method(method: str) -> tuple[str, str | None, dict]:
    """``(name, layer selection prefix or None, loss-node inputs)`` of a method string."""
    head, _, options = method.partition(OPTIONS_PREFIX)
    name, _, layers = head.partition(LAYER_PREFIX)
    kwargs = {}
    for item in filter(None, options.split(";")):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"{method!r}: expected key=value, got {item!r}")
        for cast in (int, float):
            try:
                kwargs[key] = cast(value)
                break
            except ValueError:
                pass
        else:
            kwargs[key] = value
    if name not in METHODS:
        raise ValueError(f"{method!r}: unknown method {name!r} (one of {', '.join(METHODS)})")
    return name, layers or None, kwargs
BOOTSTRAP = 2000


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a binomial rate (Wilson 1927)."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (centre - half, centre + half)


def paired_difference(a: np.ndarray, b: np.ndarray, seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``b - a`` over paired outcomes and its 95% bootstrap interval (resampling the pairs)."""
    d = b.astype(float) - a.astype(float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(d), size=(BOOTSTRAP, len(d)))
    means = d[idx].mean(1)
    return float(d.mean()), float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def subjects_of(spec) -> str:
    """The subject words of a prompt: each object's shape, its occurrence when a shape repeats."""
    seen: dict[str, int] = {}
    words = []
    for _, shape in spec.objects:
        seen[shape] = seen.get(shape, 0) + 1
        words.append(shape if seen[shape] == 1 else f"{shape}#{seen[shape]}")
    return ", ".join(words)


class Runner:
    """Samples and judges one (method, prompt, seed batch) at a time on the loaded model."""

    def __init__(self, model_path: str, steps: int, size: int, cfg: float, sampler: str):
        from harness.host import ensure_host, load_pack
        from harness.tiny_models import load_trained

        ensure_host()
        self.pack = load_pack()
        self.nodes = self.pack.NODE_CLASS_MAPPINGS
        with torch.inference_mode():
            self.tiny = load_trained(model_path)
        self.steps, self.size, self.cfg, self.sampler = steps, size, cfg, sampler
        from harness.tiny_models import tiny_conditioning

        with torch.inference_mode():
            self.negative = tiny_conditioning(self.tiny.clip, "")
        # one untimed run first: the first sampling call pays for loading and allocation
        self.run("attend_excite", "pair", prompt_sets()["pair"][0], 0, 2)

    def guidance(self, method: str, spec):
        from harness.nodeutil import call_node

        method, _, options = parse_method(method)
        n, clip = self.nodes, self.tiny.clip
        tokens, positive, _ = call_node(n["STORM_SubjectTokens"], clip=clip, text=spec.text, subjects=subjects_of(spec))
        if method == "plain":
            return self.pack.storm_ops.guidance.terms.Guidance(), positive, tokens
        if method == "attend_excite":
            return call_node(n["STORM_AttendAndExcite"], tokens=tokens, **options)[0], positive, tokens
        if method == "astar":
            return call_node(n["STORM_AStar"], tokens=tokens, **options)[0], positive, tokens
        analysis, _, positive, _ = call_node(n["STORM_PromptAnalysis"], clip=clip, text=spec.text, parser="auto")
        if method == "syngen":
            return call_node(n["STORM_SynGen"], analysis=analysis, **options)[0], positive, tokens
        if method == "syngen_entropy":
            options = {"lambda_entropy": 0.005, **options}
            return call_node(n["STORM_SynGen"], analysis=analysis, **options)[0], positive, tokens
        if method in ("storm_paper", "storm_reference"):
            mode = method.split("_")[1]
            return call_node(n["STORM_SpatialTransport"], analysis=analysis, mode=mode, **options)[0], positive, tokens
        if method == "attend_excite+storm":
            ae = call_node(n["STORM_AttendAndExcite"], tokens=tokens)[0]
            return call_node(n["STORM_SpatialTransport"], analysis=analysis, guidance=ae, **options)[0], positive, tokens
        raise ValueError(method)

    def run(self, method: str, kind: str, spec, seed: int, batch: int) -> list[dict]:
        """One sampling call of ``batch`` images from ``seed`` (image ``i`` is noise sample ``i`` of the
        batch's noise, the same for every method); per-image refinement counts from the sampler's log."""
        from harness.nodeutil import call_node

        with torch.inference_mode():
            guidance, positive, tokens = self.guidance(method, spec)
            latent = {"samples": torch.zeros(batch, 4, self.size // 8, self.size // 8)}
            layers = {}
            prefix = parse_method(method)[1]
            if prefix:
                selections = importlib.import_module(self.pack.__name__ + ".nodes.architecture").LAYER_SELECTIONS
                layers["attention_layers"] = next(k for k in selections if k.startswith(prefix))
            t0 = time.perf_counter()
            out, attention = call_node(
                self.nodes["STORM_GuidedKSampler"], model=self.tiny.model, guidance=guidance, seed=seed,
                steps=self.steps, cfg=self.cfg, sampler_name=self.sampler, scheduler="normal",
                positive=positive, negative=self.negative, latent_image=latent, denoise=1.0, **layers)
            images = self.tiny.vae.decode(out["samples"])
            seconds = (time.perf_counter() - t0) / batch
        record = attention.latest()
        log = record.log
        on_objects = self.subject_maps(record, tokens, images.shape[1], images.shape[2])
        refined = np.zeros(batch, dtype=int)
        for entry in log:
            refined += np.asarray(entry.refine_iters_per_sample, dtype=int)
        pixels = (images[..., :3].clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
        rows = []
        for i in range(batch):
            verdict = judge(pixels[i], spec)
            hits = attention_on_objects(on_objects[i], verdict)
            rows.append({"method": method, "kind": kind, "prompt": spec.text, "seed": seed, "index": i,
                         "success": bool(getattr(verdict, SUCCESS[kind])) and verdict.clean,
                         "clean": verdict.clean,
                         "all_present": verdict.all_present, "binding_ok": verdict.binding_ok,
                         "relation_ok": verdict.relation_ok, "seconds": seconds,
                         "attention_on_objects": None if hits is None else list(hits),
                         "refine_iters": int(refined[i]), "guided_steps": len(log), "image": pixels[i]})
        return rows


    def subject_maps(self, record, tokens, height: int, width: int) -> np.ndarray:
        """``(B, K, H, W)``: each subject's attention map, averaged over the run, at image size."""
        attention = self.pack.storm_ops.attention.maps
        maps = record.mean_maps(tokens.layout.length)
        sel = attention.select_token_maps(maps, [s.positions for s in tokens.subjects])
        return torch.nn.functional.interpolate(sel.float().cpu(), size=(height, width), mode="bilinear").numpy()


def summarise(rows: list[dict]) -> list[dict]:
    table = []
    for kind in SUCCESS:
        base = {(r["prompt"], r["seed"], r["index"]): r["success"] for r in rows if r["kind"] == kind and r["method"] == "plain"}
        for method in dict.fromkeys(r["method"] for r in rows if r["kind"] == kind):
            rs = [r for r in rows if r["kind"] == kind and r["method"] == method]
            k, n = sum(r["success"] for r in rs), len(rs)
            lo, hi = wilson(k, n)
            entry = {"kind": kind, "method": method, "n": n, "rate": k / n, "ci": [lo, hi],
                     "seconds": float(np.median([r["seconds"] for r in rs])),
                     "refine_iters": float(np.mean([r["refine_iters"] for r in rs])),
                     "clean": float(np.mean([r["clean"] for r in rs]))}
            hits = [h for r in rs if r["attention_on_objects"] is not None for h in r["attention_on_objects"]]
            entry["attention_on_objects"] = float(np.mean(hits)) if hits else float("nan")
            if method != "plain" and base:
                keys = [(r["prompt"], r["seed"], r["index"]) for r in rs]
                pairs = [(base[k], r["success"]) for k, r in zip(keys, rs, strict=True) if k in base]
                a, b = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
                d, dlo, dhi = paired_difference(a, b)
                entry["change"], entry["change_ci"] = d, [dlo, dhi]
            table.append(entry)
    return table


def format_table(table: list[dict]) -> str:
    lines = [f"{'kind':9} {'method':20} {'n':>5} {'success':>8} {'95% CI':>15} {'vs plain':>9} {'95% CI':>17} "
             f"{'s/img':>6} {'refine':>6} {'clean':>6} {'maps on':>7}"]
    for e in table:
        change = f"{e['change'] * 100:+8.1f}%" if "change" in e else f"{'':>9}"
        cci = f"[{e['change_ci'][0] * 100:+5.1f}, {e['change_ci'][1] * 100:+5.1f}]" if "change" in e else ""
        lines.append(f"{e['kind']:9} {e['method']:20} {e['n']:5d} {e['rate'] * 100:7.1f}% "
                     f"[{e['ci'][0] * 100:5.1f}, {e['ci'][1] * 100:5.1f}] {change} {cci:>17} "
                     f"{e['seconds']:6.2f} {e['refine_iters']:6.1f} {e['clean'] * 100:5.0f}% "
                     f"{e['attention_on_objects'] * 100:6.0f}%")
    return "\n".join(lines)


def picture_grid(rows: list[dict], path: Path, methods: list[str], per_kind: int = 2) -> None:
    """Rows: a few (prompt, seed) of each kind; columns: the methods, same noise."""
    from PIL import Image, ImageDraw

    if not rows:
        return
    keys = []
    for kind in SUCCESS:
        ks = list(dict.fromkeys((r["prompt"], r["seed"], r["index"]) for r in rows if r["kind"] == kind))
        keys += [(kind, k) for k in ks[:per_kind]]
    cell = rows[0]["image"].shape[0]
    label = 14
    grid = Image.new("RGB", (len(methods) * cell, len(keys) * (cell + label) + label), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for j, m in enumerate(methods):
        draw.text((j * cell + 2, 1), m[:cell // 6], fill=(0, 0, 0))
    index = {(r["method"], r["prompt"], r["seed"], r["index"]): r for r in rows}
    for i, (_kind, (prompt, seed, n)) in enumerate(keys):
        y = label + i * (cell + label)
        draw.text((2, y + 1), f"{prompt} (seed {seed}, noise {n})"[: len(methods) * cell // 6], fill=(0, 0, 0))
        for j, m in enumerate(methods):
            r = index.get((m, prompt, seed, n))
            if r is not None:
                grid.paste(Image.fromarray(r["image"]), (j * cell, y + label))
                mark = (0, 160, 0) if r["success"] else (200, 0, 0)
                draw.rectangle([j * cell, y + label, j * cell + cell - 1, y + label + cell - 1], outline=mark)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)


def chosen_methods(kind: str, targeted: bool, methods: list[str], extra: list[str]) -> list[str]:
    """The methods run on prompts of ``kind``: its targets (``--targeted``) or ``methods``, then ``extra``, each once
    and only where it applies."""
    chosen = list(TARGETS[kind]) if targeted else methods
    return [m for m in dict.fromkeys(chosen + extra) if kind in METHODS[parse_method(m)[0]]]


def schedule(kinds: list[str], methods: list[str], extra: list[str], targeted: bool, prompts: int) -> list[tuple]:
    """``(kind, prompt, method)`` of every sampling run, in the order they run: plain sampling of every prompt
    first, then the methods, taking each kind's methods in turn (its first, every kind's second, ...), so that a
    run cut short by a deadline has compared each kind's first methods with plain sampling."""
    sets = prompt_sets()
    per_kind = [[(kind, spec, m) for m in chosen_methods(kind, targeted, methods, extra) for spec in sets[kind][:prompts]]
                for kind in kinds]
    plain = [run for runs in per_kind for run in runs if run[2] == "plain"]
    rest = [[run for run in runs if run[2] != "plain"] for runs in per_kind]
    return plain + [runs[i] for i in range(max(map(len, rest), default=0)) for runs in rest if i < len(runs)]


def run_benchmark(runner: Runner, kinds: list[str], methods: list[str], extra: list[str], targeted: bool,
                  prompts: int, seed: int, samples: int, deadline: float | None = None) -> tuple[list[dict], bool]:
    """Every (kind, prompt, method) sampling run in :func:`schedule`'s order; ``(rows, complete)``. With a
    ``deadline`` (``time.monotonic()``) no run starts after it, and ``complete`` says whether every run was made."""
    for m in methods + extra:
        parse_method(m)  # an unknown method or a malformed option fails before any sampling
    rows = []
    t0 = time.perf_counter()
    for kind, spec, method in schedule(kinds, methods, extra, targeted, prompts):
        if deadline is not None and time.monotonic() >= deadline:
            print(f"shape benchmark: out of time before {kind}: {spec.text}: {method}", file=sys.stderr)
            return rows, False
        rows += runner.run(method, kind, spec, seed, samples)
        print(f"{kind}: {spec.text}: {method} done ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    return rows, True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="models/storm_shapes_sd15.safetensors")
    parser.add_argument("--samples", type=int, default=64, help="initial noises per prompt (one batch)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise batch")
    parser.add_argument("--prompts", type=int, default=8, help="prompts per kind (of 8)")
    parser.add_argument("--kinds", default=",".join(SUCCESS))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--targeted", action="store_true",
                        help="run each kind only with the methods that target it (TARGETS), not --methods")
    parser.add_argument("--extra", default="",
                        help="more methods, run on every kind they apply to, e.g. variants: "
                             "'attend_excite~max_refine_iters=0,storm_reference~step_size=10'")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--cfg", type=float, default=5.0)
    parser.add_argument("--sampler", default="euler")
    parser.add_argument("--json", default="shape-benchmark.json")
    parser.add_argument("--grid", help="write a before/after picture grid (PNG) here")
    parser.add_argument("--minutes", type=float, default=None,
                        help="start no sampling run after this many minutes (the table covers the runs made)")
    args = parser.parse_args(argv)
    kinds = args.kinds.split(",")
    methods = [m for m in args.methods.split(",") if m]
    extra = [m for m in args.extra.split(",") if m]
    for m in methods + extra:
        parse_method(m)  # an unknown method or a malformed option fails before the model loads
    deadline = None if args.minutes is None else time.monotonic() + args.minutes * 60
    runner = Runner(args.model, args.steps, args.size, args.cfg, args.sampler)
    rows, complete = run_benchmark(runner, kinds, methods, extra, args.targeted, args.prompts, args.seed,
                                   args.samples, deadline)
    if not complete:
        print("shape benchmark: --minutes ran out; the table covers the runs made", file=sys.stderr)
    table = summarise(rows)
    print(format_table(table))
    out = {"settings": vars(args), "table": table,
           "rows": [{k: v for k, v in r.items() if k != "image"} for r in rows]}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1))
    if args.grid:
        picture_grid(rows, Path(args.grid), methods)
    return 0


if __name__ == "__main__":
    sys.exit(main())
