"""One command for a lent GPU: train the shape model at 256 px, benchmark it, measure the real-size costs.

    python -m scripts.gpu_evidence --out DIR              # on a CUDA device: about 9 minutes
    python -m scripts.gpu_evidence --out DIR --dry-run    # every stage at toy size on the CPU, a few minutes

(from the repository root; ``COMFYUI_PATH`` names the ComfyUI checkout, as for the tests). Three stages, each
with a time budget; the command always finishes and writes what it has, after every stage, also when a stage
runs out of time or fails (the JSON says which and why):

1. ``train``: ``scripts.train_shape_model``'s two stages (the VAE, then text encoder + UNet) at 256 px with its
   recipe (learning rates, warm-up, caption dropout, the text encoder's 10x rate), the batch scaled up for the
   GPU and the number of steps chosen to fill the budget: a short calibration run times a step of each stage
   (in a scratch folder), then the stages run with the planned steps, seeded and resumable (``--resume``), and
   the model is exported (fp16 safetensors). At 256 px the papers' 1/32-resolution layers give 8 x 8 maps.
2. ``shape``: ``scripts.shape_benchmark --targeted`` on the trained model at 256 px: plain sampling and every
   method on the same 64 initial noises (one batch, seed 0), the first prompt of each kind, judged by
   ``harness.shape_eval``, 95% Wilson intervals and paired-bootstrap changes against plain sampling.
3. ``real``: ``scripts.benchmark --real``, one process per architecture: SD1.5 at 512 px, SDXL, SD3.5 Medium and
   Flux.1-dev at 1024 px (Flux from one and three units of its real-size blocks, extrapolated per unit to its
   19), seconds and peak memory of every variant beside the host's own plain sampling in the same process.

Written into ``--out`` (at most 8 files, each under 15 MiB): ``evidence.json``, ``evidence.md``,
``shape-grid.png`` and the model, ``storm_shapes_sd15_256px.safetensors`` (as ``.part0``, ``.part1``, ... when it
is larger than 15 MiB: ``cat`` them back together; the JSON holds the whole file's sha256).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("train", "shape", "real")
MODEL_NAME = "storm_shapes_sd15_256px.safetensors"
#: the files that come back from a lent machine may be at most 16 MiB each; parts stay below this
PART_BYTES = 15 * 2 ** 20
#: the shape benchmark's extra variants of the README's table (its refinement loops never reach the papers' thresholds)
SHAPE_EXTRA = ("attend_excite~max_refine_iters=0", "storm_reference~max_refine_iters=0")
#: the real-size architectures, their native image size, and their share of the stage's time
REAL_ARCHS = (("sd15", 512, 0.2), ("sdxl", 1024, 0.3), ("sd35m", 1024, 0.25), ("flux", 1024, 0.25))


@dataclasses.dataclass(frozen=True)
class Profile:
    """Sizes and budgets of one kind of run: ``GPU`` (a lent H100, about 9 minutes) or ``DRY`` (toy sizes, CPU)."""

    seconds: float  # the whole command
    train_seconds: float
    shape_seconds: float
    real_seconds: float
    size: int  # the shape model's image side
    vae_batch: int
    diffusion_batch: int
    calibration_steps: int  # per training stage
    vae_share: float  # of the training time (the shipped recipe: 4,068 of 18,278 s)
    vae_steps_max: int
    diffusion_steps_max: int | None
    workers: int  # processes drawing the training scenes
    samples: int  # initial noises per prompt
    shape_steps: int
    real_steps: int
    real_repeats: int
    real_size: int | None  # None: each architecture's native size


#: a lent H100: 200 s of training (the tiny UNet is launch-bound there: a larger batch costs little), 170 s of
#: shape benchmark (each gradient pass pays the pack's Python-level dispatch, whatever the batch), 140 s of
#: real-size measurements (one process per architecture, most of it building random weights)
GPU = Profile(seconds=540, train_seconds=200, shape_seconds=170, real_seconds=140, size=256, vae_batch=32,
              diffusion_batch=64, calibration_steps=12, vae_share=0.2, vae_steps_max=3000, diffusion_steps_max=None,
              workers=12, samples=64, shape_steps=20, real_steps=4, real_repeats=1, real_size=None)
#: the dry run: the same stages, methods and processes at toy size (one compute thread per process); its budgets
#: only stop a hang (it takes about 1.5 minutes on 2 CPU cores)
DRY = Profile(seconds=900, train_seconds=150, shape_seconds=300, real_seconds=400, size=64, vae_batch=2,
              diffusion_batch=2, calibration_steps=3, vae_share=0.2, vae_steps_max=3, diffusion_steps_max=3,
              workers=0, samples=2, shape_steps=4, real_steps=4, real_repeats=1, real_size=64)
#: the diffusion stage's recipe (models/README.md): lr, warm-up, text encoder's rate; the VAE's lr
DIFFUSION_RECIPE = {"lr": 5e-4, "warmup": 200, "text_lr_scale": 10.0}
VAE_LR = 2e-3


def log(message: str) -> None:
    print(f"[gpu-evidence {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Clock:
    """The command's deadline, and each stage's share of what is left of it."""

    def __init__(self, seconds: float):
        self.start = time.monotonic()
        self.deadline = self.start + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def budget(self, own: float, later: float) -> float:
        """A stage's seconds: its own budget, less what the later stages need of the time left."""
        return max(0.0, min(own, self.left() - later))


# ----------------------------------------------------------------------------- train
def _train_args(work: Path, stage: str, steps: int, batch: int, p: Profile, args, seconds: float,
                resume: bool = False, finish: bool = False) -> list[str]:
    argv = ["--work", str(work), "--stage", stage, "--steps", str(steps), "--batch", str(batch), "--size", str(p.size),
            "--minutes", f"{max(seconds, 1.0) / 60:.4f}", "--seed", str(args.seed), "--save-every", "100",
            "--workers", str(p.workers), "--tf32"]
    if stage == "vae":
        argv += ["--lr", str(VAE_LR)]
    else:
        argv += ["--lr", str(DIFFUSION_RECIPE["lr"]), "--warmup", str(min(DIFFUSION_RECIPE["warmup"], max(steps // 5, 1))),
                 "--text-lr-scale", str(DIFFUSION_RECIPE["text_lr_scale"])]
        if args.ground:
            argv += ["--ground", str(args.ground)]
    if stage == "vae" and steps < 100:  # the default warm-up is 100 steps
        argv += ["--warmup", str(max(steps // 5, 1))]
    return argv + (["--resume"] if resume else []) + (["--finish"] if finish else []) + (["--cpu"] if args.dry_run else [])


def _run_stage(argv: list[str]) -> dict:
    from scripts import train_shape_model as tsm

    return tsm.train_stage(tsm.build_parser().parse_args(argv))


def _state_steps(work: Path) -> dict:
    path = work / "state.safetensors"
    if not path.exists():
        return {}
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["meta"]).get("steps", {})


def plan_steps(p: Profile, seconds: float, vae_step: float, diffusion_step: float, overhead: float) -> dict:
    """Steps of each training stage that fill ``seconds``: the VAE gets ``p.vae_share`` of the time (capped), the
    diffusion stage the rest; ``overhead`` is what a stage call costs besides its steps (building the model)."""
    usable = max(seconds - 2 * overhead, 0.0)
    vae = max(1, min(p.vae_steps_max, int(p.vae_share * usable / vae_step)))
    diffusion = max(1, int((usable - vae * vae_step) / diffusion_step))
    if p.diffusion_steps_max is not None:
        diffusion = min(diffusion, p.diffusion_steps_max)
    return {"vae": vae, "diffusion": diffusion}


def stage_train(args, p: Profile, seconds: float, result: dict) -> None:
    """Calibrate, plan, train both stages, export; fills ``result`` as it goes."""
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + seconds
    export_reserve = 5.0 if args.dry_run else 15.0  # seconds
    plan_path = work / "plan.json"
    if args.resume and plan_path.exists():
        plan = json.loads(plan_path.read_text())
        log(f"train: resuming the plan {plan['steps']}")
    else:
        if (work / "state.safetensors").exists():
            raise RuntimeError(f"{work} holds a training state: pass --resume, or choose another --work")
        calibration = work / "calibration"
        if calibration.exists():
            for f in calibration.iterdir():
                f.unlink()
        cal, n = {}, p.calibration_steps
        for stage, batch in (("vae", p.vae_batch), ("diffusion", p.diffusion_batch)):
            t0 = time.monotonic()
            summary = _run_stage(_train_args(calibration, stage, n, batch, p, args, 600, finish=True))
            cal[stage] = {"seconds_per_step": summary["seconds_per_step"], "call_seconds": time.monotonic() - t0,
                          "steps": summary["step"], "device": summary["device"]}
        overhead = max(c["call_seconds"] - c["steps"] * c["seconds_per_step"] for c in cal.values())
        steps = plan_steps(p, deadline - time.monotonic() - export_reserve, cal["vae"]["seconds_per_step"],
                           cal["diffusion"]["seconds_per_step"], overhead)
        plan = {"steps": steps, "calibration": cal, "overhead_seconds": overhead, "size": p.size,
                "batch": {"vae": p.vae_batch, "diffusion": p.diffusion_batch}, "seed": args.seed}
        plan_path.write_text(json.dumps(plan, indent=1))
        log(f"train: calibrated {cal['vae']['seconds_per_step']:.3f} s/step (VAE), "
            f"{cal['diffusion']['seconds_per_step']:.3f} s/step (diffusion); plan {steps}")
    result["plan"] = plan
    for stage in ("vae", "diffusion"):
        done = int(_state_steps(work).get(stage, 0))
        planned = plan["steps"][stage]
        if done >= planned:
            log(f"train: {stage} already at step {done} of {planned}")
            continue
        left = deadline - time.monotonic() - export_reserve
        if stage == "vae":  # leave the diffusion stage its planned share
            d = plan["calibration"]["diffusion"]["seconds_per_step"]
            left -= plan["steps"]["diffusion"] * d + plan["overhead_seconds"]
            left = max(left, 0.5 * (deadline - time.monotonic()) * p.vae_share)
        batch = p.vae_batch if stage == "vae" else p.diffusion_batch
        summary = _run_stage(_train_args(work, stage, planned, batch, p, args, left, resume=done > 0,
                                         finish=stage == "vae"))
        result[stage] = summary
        log(f"train: {stage} reached step {summary['step']} of {planned} ({summary['seconds']} s)")
    from scripts import train_shape_model as tsm

    model = work / MODEL_NAME
    if tsm.main(["--export", str(model), "--work", str(work)]) != 0:
        raise RuntimeError("export failed")
    result["model"] = {"path": str(model), "bytes": model.stat().st_size, "sha256": _sha256(model),
                       "steps": _state_steps(work)}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def split_file(path: Path, out: Path, part_bytes: int = PART_BYTES) -> list[str]:
    """``path`` into ``out`` whole when it is at most ``part_bytes``, else as ``NAME.part0``, ``NAME.part1``, ...
    of at most ``part_bytes`` each (``cat NAME.part* > NAME`` joins them, in order up to ``part9``)."""
    for old in out.glob(path.name + "*"):
        old.unlink()
    data = path.read_bytes()
    if len(data) <= part_bytes:
        (out / path.name).write_bytes(data)
        return [path.name]
    names = []
    for i in range(math.ceil(len(data) / part_bytes)):
        name = f"{path.name}.part{i}"
        (out / name).write_bytes(data[i * part_bytes:(i + 1) * part_bytes])
        names.append(name)
    return names


def join_parts(out: Path, name: str = MODEL_NAME) -> Path:
    """The model file of an evidence folder: the file itself, or its parts joined into ``out/name`` (verified
    against the JSON's sha256 when the JSON is there)."""
    whole = out / name
    parts = sorted(out.glob(name + ".part*"), key=lambda p: int(p.name.rsplit("part", 1)[1]))
    if parts:
        whole.write_bytes(b"".join(p.read_bytes() for p in parts))
    evidence = out / "evidence.json"
    if evidence.exists():
        expected = json.loads(evidence.read_text()).get("train", {}).get("model", {}).get("sha256")
        if expected and _sha256(whole) != expected:
            raise ValueError(f"{whole}: sha256 differs from the one evidence.json records")
    return whole


# ----------------------------------------------------------------------------- shape
def stage_shape(args, p: Profile, seconds: float, model: Path, result: dict, out: Path) -> None:
    from harness.nodeutil import call_node
    from harness.shape_world import prompt_sets
    from scripts import shape_benchmark as sb

    deadline = time.monotonic() + seconds
    runner = sb.Runner(str(model), p.shape_steps, args.shape_size or p.size, 5.0, "euler")
    kinds = list(sb.SUCCESS)
    parsers = {}
    import torch

    with torch.inference_mode():
        for kind in ("binding", "relation"):
            spec = prompt_sets()[kind][0]
            analysis = call_node(runner.nodes["STORM_PromptAnalysis"], clip=runner.tiny.clip, text=spec.text,
                                 parser="auto")[0]
            parsers[spec.text] = analysis.method
    result["settings"] = {"model": str(model), "size": runner.size, "steps": p.shape_steps, "cfg": 5.0,
                          "sampler": "euler", "samples": p.samples, "seed": 0, "prompts": 1, "targeted": True,
                          "extra": list(SHAPE_EXTRA), "prompt_analysis": parsers}
    rows, complete = sb.run_benchmark(runner, kinds, [], list(SHAPE_EXTRA), True, 1, 0, p.samples, deadline)
    result["complete"] = complete
    result["table"] = sb.summarise(rows)
    result["rows"] = [{k: v for k, v in r.items() if k != "image"} for r in rows]
    methods = list(dict.fromkeys(e["method"] for e in result["table"]))  # the table's order: kind by kind
    sb.picture_grid(rows, out / "shape-grid.png", methods)
    print(sb.format_table(result["table"]), file=sys.stderr)


# ----------------------------------------------------------------------------- real
def stage_real(args, p: Profile, seconds: float, result: dict) -> None:
    import torch

    from harness.tiny_dit import FLUX_DEV
    from scripts import benchmark

    device = "cpu" if args.dry_run or not torch.cuda.is_available() else "cuda"
    deadline = time.monotonic() + seconds
    result.setdefault("rows", [])
    result["errors"] = {}  # of this call (resumed: the architectures measured before are kept and skipped)
    done = {r["arch"] for r in result["rows"]}
    archs = [a for a in REAL_ARCHS if a[0] in args.archs.split(",") and a[0] not in done]
    if done:
        log(f"real: measured already: {', '.join(sorted(done))}")
    for i, (names, native, share) in enumerate(archs):  # one process each: its own peak memory and time limit
        left = deadline - time.monotonic()
        budget = left * share / sum(s for _, _, s in archs[i:])
        if budget < 5:
            result["errors"][names] = "no time left"
            continue
        size = p.real_size or native
        cmd = ["--child", "--devices", device, "--archs", names, "--steps", str(p.real_steps), "--size", str(size),
               "--repeats", str(p.real_repeats), "--real", "--flux-units", ",".join(map(str, benchmark.FLUX_UNITS))]
        if args.dry_run:
            cmd.append("--toy-widths")
        log(f"real: {names} at {size} px on {device} (budget {budget:.0f} s)")
        t0 = time.monotonic()
        try:
            rows = benchmark.run_child(cmd, timeout=budget)
        except subprocess.TimeoutExpired:
            result["errors"][names] = f"out of time after {budget:.0f} s"
            log(f"real: {names} ran out of its {budget:.0f} s")
            continue
        except RuntimeError as e:
            result["errors"][names] = str(e)[-2000:]
            log(f"real: {names} failed: {str(e)[-500:]}")
            continue
        rows += benchmark.extrapolate_units(rows, FLUX_DEV.double)  # the Flux rows, per unit of blocks
        result["rows"] += rows
        result.setdefault("seconds", {})[names] = time.monotonic() - t0


# ----------------------------------------------------------------------------- output
def _pct(v: float) -> str:
    return f"{v * 100:.1f}%"


def markdown(evidence: dict) -> str:
    """The evidence as markdown tables: the stages, the training, the shape benchmark, the real-size costs."""
    lines = [f"# GPU evidence ({evidence['environment'].get('device', '?')})", ""]
    env = evidence["environment"]
    lines += [f"ComfyUI {env.get('comfyui', '?')}, torch {env.get('torch', '?')}, dry run: {evidence['dry_run']}", ""]
    lines += ["| stage | status | seconds | budget s |", "| --- | --- | --- | --- |"]
    for name in STAGES:
        st = evidence["stages"].get(name, {})
        lines.append(f"| {name} | {st.get('status', 'not run')} | {st.get('seconds', 0):.0f} | {st.get('budget', 0):.0f} |")
    train = evidence.get("train", {})
    if train.get("plan"):
        plan = train["plan"]
        lines += ["", "## Training", "", "| stage | planned steps | reached | seconds | s/step | last 50 steps |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for stage in ("vae", "diffusion"):
            s = train.get(stage, {})
            last = ", ".join(f"{k} {v:.4g}" for k, v in s.get("last50", {}).items())
            sps = s.get("seconds_per_step")
            lines.append(f"| {stage} | {plan['steps'][stage]} | {s.get('step', '-')} | {s.get('seconds', '-')} | "
                         f"{'-' if sps is None else f'{sps:.3f}'} | {last} |")
        if train.get("model"):
            m = train["model"]
            lines += ["", f"Model: `{Path(m['path']).name}`, {m['bytes'] / 2 ** 20:.1f} MiB, sha256 `{m['sha256']}`, "
                      f"files {', '.join(m.get('files', []))}"]
    shape = evidence.get("shape", {})
    if shape.get("table"):
        st = shape["settings"]
        lines += ["", "## Shape benchmark", "",
                  f"{st['size']} px, {st['steps']} {st['sampler']} steps, cfg {st['cfg']}, {st['samples']} noises "
                  f"(seed {st['seed']}), the first prompt of each kind; {'complete' if shape.get('complete') else 'INCOMPLETE (out of time)'}. "
                  f"Prompt analysis: {', '.join(sorted(set(st['prompt_analysis'].values())))}.", "",
                  "| kind | method | n | success | 95% CI | plain | vs plain (paired 95% CI) | s/img | refine iters/img "
                  "| clean | maps on their object |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        plain = {e["kind"]: e["rate"] for e in shape["table"] if e["method"] == "plain"}
        for e in shape["table"]:
            change = (f"{e['change'] * 100:+.1f} [{e['change_ci'][0] * 100:+.1f}, {e['change_ci'][1] * 100:+.1f}]"
                      if "change" in e else "")
            maps = "" if math.isnan(e["attention_on_objects"]) else _pct(e["attention_on_objects"])
            lines.append(f"| {e['kind']} | {e['method']} | {e['n']} | {_pct(e['rate'])} | "
                         f"{e['ci'][0] * 100:.1f}-{e['ci'][1] * 100:.1f} | "
                         f"{_pct(plain[e['kind']]) if e['kind'] in plain else '-'} | {change} | {e['seconds']:.2f} | "
                         f"{e['refine_iters']:.1f} | {_pct(e['clean'])} | {maps} |")
    real = evidence.get("real", {})
    if real.get("rows"):
        from scripts.benchmark import arch_label

        lines += ["", "## Real-size costs", "",
                  "Random weights, each architecture in its own process; `plain` is the host's own sampler in the same process. flux/K: K units "
                  "of (1 double + 2 single) real-size blocks; flux/19*: extrapolated per unit (Flux.1-dev has 19).",
                  "", "| arch | size | dtype | variant | seconds | plain seconds | x plain | grad passes | peak MiB | "
                  "plain peak MiB |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        rows = [r for r in real["rows"] if r["variant"] != "floor"]
        plain = {(r["arch"], r.get("units"), bool(r.get("extrapolated_from"))): r for r in rows if r["variant"] == "host"}
        for r in rows:
            base = plain.get((r["arch"], r.get("units"), bool(r.get("extrapolated_from"))), {})

            def mib(v):
                return "-" if v is None else f"{v:,.0f}"

            lines.append(f"| {arch_label(r)} | {r['size']} | {r['dtype']} | {r['variant']} | {r['seconds']:.3f} | "
                         f"{base.get('seconds', float('nan')):.3f} | {r['ratio']:.2f} | {r['grad_passes']} | "
                         f"{mib(r['peak_mib'])} | {mib(base.get('peak_mib'))} |")
        floors = [r for r in real["rows"] if r["variant"] == "floor"]
        if floors:
            lines += ["", "Per guided step (A&E, no refinement): the floor of a gradient pass against ours.", "",
                      "| arch | plain step s | floor pass s | ours pass s | ours/floor | guided step / plain step | "
                      "one refinement iteration s | STORM pass s |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
            for r in floors:
                lines.append(f"| {arch_label(r)} | {r['plain_step']:.3f} | {r['floor_pass']:.3f} | {r['ours_pass']:.3f} | "
                             f"{r['ours_vs_floor']:.2f} | {r['guided_step_vs_plain']:.2f} | {r['refine_iter']:.3f} | "
                             f"{r['storm_pass']:.3f} |")
        if rows:
            lines += ["", f"Peak memory: {rows[0].get('peak_kind', '?')}."]
    for name, errors in (("real", real.get("errors", {})),):
        for arch, message in errors.items():
            lines.append(f"\n{name} {arch}: {message.strip().splitlines()[-1] if message.strip() else message}")
    for name in STAGES:
        err = evidence["stages"].get(name, {}).get("error")
        if err:
            lines.append(f"\n{name} failed: {err.strip().splitlines()[-1]}")
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, evidence: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "evidence.json.tmp"
    tmp.write_text(json.dumps(evidence, indent=1, default=str))
    os.replace(tmp, out / "evidence.json")
    (out / "evidence.md").write_text(markdown(evidence))


def environment(dry_run: bool) -> dict:
    import torch

    from harness.host import ensure_host

    info = ensure_host()
    env = {"torch": torch.__version__, "python": sys.version.split()[0], "comfyui": info.version,
           "device": "cpu (dry run)" if dry_run else "cpu"}
    # where the packages the payload carries were found (the payload's folder on a lent machine); None: absent
    env["packages"] = {}
    for name in ("comfy_kitchen", "comfy_aimdo", "torchsde", "trampoline", "spacy"):
        spec = importlib.util.find_spec(name)
        env["packages"][name] = None if spec is None else spec.origin or ",".join(spec.submodule_search_locations or [])
    if torch.cuda.is_available() and not dry_run:
        env["device"] = torch.cuda.get_device_name()
        env["cuda_memory_mib"] = torch.cuda.get_device_properties(0).total_memory / 2 ** 20
    return env


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--out", required=True, help="folder for the evidence files (at most 8)")
    parser.add_argument("--dry-run", action="store_true", help="every stage at toy size on the CPU")
    parser.add_argument("--work", default=None,
                        help="training state and the whole model file (default: .gpu-work, or .gpu-work-dry in a dry "
                             "run, emptied by a run that trains without --resume)")
    parser.add_argument("--skip", default="", help=f"comma list of stages not to run ({', '.join(STAGES)})")
    parser.add_argument("--resume", action="store_true",
                        help="continue: the training plan and state in --work, the evidence already in --out "
                             "(stages run now replace their part)")
    parser.add_argument("--model", default=None,
                        help="the model the shape stage benchmarks when the train stage is skipped "
                             "(default: the one trained in --work)")
    parser.add_argument("--shape-size", type=int, default=None,
                        help="image side of the shape stage (default: the training size)")
    parser.add_argument("--archs", default=",".join(a for a, _, _ in REAL_ARCHS), help="the real stage's architectures")
    parser.add_argument("--seconds", type=float, default=None, help="the whole command's budget (default: 540 on "
                        "a GPU, 240 in a dry run); the stages' budgets shrink to fit")
    parser.add_argument("--ground", type=float, default=0.0,
                        help="train with the cross-attention grounding loss at this weight (not the shipped recipe)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device-image-check", action="store_true",
                        help="fail the import of every package the lent GPU machines' image lacks and the payload "
                             "does not carry (harness.device_image), here and in the benchmark's processes")
    args = parser.parse_args(argv)
    p = DRY if args.dry_run else GPU
    skip = {s for s in args.skip.split(",") if s}
    if skip - set(STAGES):
        parser.error(f"--skip takes {', '.join(STAGES)}")
    if args.dry_run:
        os.environ["STORM_TEST_DEVICE"] = "cpu"
        # one compute thread per process (children too): toy sizes gain nothing from more, and on a CPU shared
        # with other work, threads that wait for each other's time slices made each step 10-100x slower
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.device_image_check:
        import scripts
        from harness.device_image import blocked

        os.environ["STORM_BLOCK_IMPORTS"] = ",".join(blocked())
        scripts.block_imports()
    os.environ.setdefault("TQDM_MININTERVAL", "15")  # a progress line every 15 s, not a flood in the log
    if args.work is None:  # the command's own folder: a new run starts it afresh
        args.work = str(ROOT / (".gpu-work-dry" if args.dry_run else ".gpu-work"))
        if not args.resume and "train" not in skip:
            shutil.rmtree(args.work, ignore_errors=True)
    out = Path(args.out)
    clock = Clock(args.seconds or p.seconds)
    evidence = {"dry_run": args.dry_run, "stages": {}}
    if args.resume and (out / "evidence.json").exists():
        evidence = json.loads((out / "evidence.json").read_text())
    evidence["environment"] = environment(args.dry_run)
    evidence["environment"]["blocked_imports"] = os.environ.get("STORM_BLOCK_IMPORTS", "")
    evidence["profile"] = dataclasses.asdict(p)
    log(f"device: {evidence['environment']['device']}; ComfyUI {evidence['environment']['comfyui']}")
    own = {"train": p.train_seconds, "shape": p.shape_seconds, "real": p.real_seconds}
    model = Path(args.model) if args.model else Path(args.work) / MODEL_NAME
    for i, name in enumerate(STAGES):
        if name in skip:
            evidence["stages"].setdefault(name, {"status": "skipped"})
            continue
        later = sum(own[s] for s in STAGES[i + 1:] if s not in skip)
        budget = clock.budget(own[name], min(later, 0.9 * clock.left()))
        record = {"status": "running", "budget": budget}
        evidence["stages"][name] = record
        part = evidence.get(name, {}) if args.resume else {}  # resumed: the real stage keeps what it measured
        evidence[name] = part
        t0 = time.monotonic()
        log(f"stage {name}: budget {budget:.0f} s")
        try:
            if budget < 5:
                raise TimeoutError("no time left for this stage")
            if name == "train":
                stage_train(args, p, budget, part)
                part["model"]["files"] = split_file(Path(part["model"]["path"]), _mkdir(out))
            elif name == "shape":
                if not model.exists():
                    raise FileNotFoundError(f"no model to benchmark: {model}")
                stage_shape(args, p, budget, model, part, _mkdir(out))
            else:
                stage_real(args, p, budget, part)
            record["status"] = "done"
            if name == "shape" and not part.get("complete"):
                record["status"] = "out of time"
            if name == "real" and part.get("errors"):
                record["status"] = "partial"
        except Exception as e:  # the command writes what it has whatever a stage does
            record["status"] = "failed"
            record["error"] = "".join(traceback.format_exception(e))[-4000:]
            log(f"stage {name} failed: {e}")
        record["seconds"] = time.monotonic() - t0
        _release_memory()
        write_outputs(out, evidence)
    evidence["seconds"] = time.monotonic() - clock.start
    write_outputs(out, evidence)
    log(f"done in {evidence['seconds']:.0f} s: " + ", ".join(f"{k} {v['status']} ({v.get('seconds', 0):.0f} s)"
                                                            for k, v in evidence["stages"].items()))
    log(f"wrote {', '.join(sorted(f.name for f in out.iterdir()))} into {out}")
    return 0


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _release_memory() -> None:
    """Drop the models the host keeps loaded, so the next stage (and its child processes) start clean."""
    import gc

    try:
        import comfy.model_management as mm

        mm.unload_all_models()
        mm.soft_empty_cache()
    except ImportError:
        pass
    gc.collect()


if __name__ == "__main__":
    sys.exit(main())
