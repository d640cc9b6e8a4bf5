"""Benchmark: guided vs unguided sampling on the tiny models, measured side by side in one run.

    python -m scripts.benchmark                 # CPU, and CUDA too when a GPU is present
    python -m scripts.benchmark --devices cpu --repeats 5 --steps 20

(from the repository root, in the test environment: the ``scripts`` package imports the test harness).

Each device runs in its own process (ComfyUI picks its device once per process). For every
architecture the variants are timed in interleaved rounds and the median is reported:

* ``host``            the host's own sampler (comfy.sample.sample, euler) - the baseline;
* ``guided-off``      STORM Guided KSampler with no active loss (must cost ~1x);
* ``guided``          Attend-and-Excite with the paper's settings (update on the first half of the
                      steps, refinement at 0/0.2/0.4 of the schedule, up to 20 iterations);
* ``guided-noref``    the same without refinement (one update per guided step);
* ``guided-fullpass`` as ``guided-noref`` but the gradient pass runs the whole UNet instead of
                      stopping after the last layer the loss reads (what a straightforward
                      implementation does).

Ratios are relative to ``host``; peak CUDA memory is reported on GPUs. Tiny random models only
show relative costs: a real SD1.5 at 512 px is ~1000x more work per pass.

``--real`` uses the real-size SD1.5 and SDXL UNets, with ``--archs sd35m`` SD3.5 Medium's MMDiT-X, and with
``--archs flux`` one and two units of Flux.1-dev's real-size blocks (1 double- + 2 single-stream blocks each, from
the host's own model detection), extrapolated per unit to its 19 units (random weights, ComfyUI's PyTorch
attention as on an NVIDIA GPU; fp16 on CUDA (Flux bf16), fp32 on the CPU: use a small ``--size`` there; SD3.5 and
Flux need a current ComfyUI, ``COMFYUI_PATH``; ``--toy-widths`` runs the same on the tiny models) and, instead of ``guided``
(random weights refine to the cap), times ``guided-1iter`` (one refinement iteration at step 0),
``storm-noref`` (STORM paper mode, its Sinkhorn included) and ``aid-3frames`` (an AID sequence of 3
frames); then prints, per guided step, the *floor* of a gradient pass (the conditional forward up to the
projections of the last cross-attention the loss reads, then backward to the latent, nothing recorded)
against ours (``(guided-noref - guided-off) / gradient passes``), the full pass, one refinement
iteration, a STORM step and AID per frame. ``--memory 256,384`` adds, per architecture and size, the
bytes autograd saves for the backward of one gradient pass (ours and the floor, bf16 on the CPU = the
GPU's element size), its linear extrapolation to 512 px (SD1.5) and 1024 px (SDXL), and the same pass
with weights the host casts per call (recast in backward vs kept).

    python -m scripts.benchmark --real --devices cpu --steps 4 --size 256 --repeats 2 --memory 256,384
    python -m scripts.benchmark --real --archs sd35m --devices cpu --steps 3 --size 256 --repeats 1 \
        --memory 128,192,256 --memory-dtype float32      # SD3.5 Medium on a CPU without fast bf16

``--archs qwen_image,z_image`` (and ``flux2`` = Flux.2 dev, ``flux2_klein4b``, ``flux2_klein9b``, ``krea2``) with ``--memory SIZES``
measures memory only, on the CPU: a few real-size blocks of each model, from the host's own model detection
(:data:`harness.tiny_dit.REAL_DITS`), the bytes one gradient pass keeps for backward (floor, ours, and ours with every
block computed again in backward: per-block recomputation, its peak held at once), extrapolated per block to the
whole model and affinely in the image rows it attends over (one per 16 x 16 px; Z-Image pads them to a multiple of
32) to 1024 px, with the estimate for a GPU (bf16 activations, fp8 weights) against 24 GB:

    python -m scripts.benchmark --archs qwen_image,z_image --memory 128,192,256
    python -m scripts.benchmark --archs flux2,flux2_klein4b,flux2_klein9b --memory 64,128,192   # 16 px latents

``--spatial N`` also prints the STORM relation sweep: over N seeds, how often the subject's
attention centroid ends on the requested side of the object with and without guidance.

``--interpolation`` also prints (a) the smoothness of AID sequences against plain text-embedding
interpolation (TEI: the same frames, noises and conditions with the attention interpolation
switched off): adjacent-frame distances of the decoded frames, their mean (consistency, lower is
more consistent) and 1 - Gini (smoothness, 1 = evenly spaced); and (b) the peak memory of a
2-frame and a 16-frame sequence, chunked and unchunked, each measured in a fresh process (peak
RSS growth on CPU, peak allocated memory on CUDA).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: this script in a fresh process (each device and measurement runs in its own)
CHILD = [sys.executable, "-m", "scripts.benchmark"]
#: the real-size DiT configurations (``--real`` only): SD3.5 Medium (:func:`harness.tiny_dit.build_real_size_dit`)
#: and Flux.1-dev, measured on a few of its real-size blocks (:func:`harness.tiny_dit.build_flux_blocks`)
DIT = ("sd35m", "flux")
#: families measured for memory only, on a few real-size blocks (:data:`harness.tiny_dit.REAL_DITS`)
REAL_DIT_ARCHS = ("qwen_image", "z_image", "flux2", "flux2_klein4b", "flux2_klein9b", "krea2")
#: Flux is measured with this many units of (1 double- + 2 single-stream blocks) and extrapolated per unit to
#: Flux.1-dev's 19 (19 double + 38 single blocks): run time and memory are affine in the number of blocks
FLUX_UNITS = (1, 3)


def _measure(device: str, archs: list[str], steps: int, size: int, repeats: int, real: bool = False,
             toy: bool = False, flux_units: tuple[int, ...] = FLUX_UNITS) -> list[dict]:
    os.environ["STORM_TEST_DEVICE"] = device
    if real:  # the attention ComfyUI runs on an NVIDIA GPU, on every device
        os.environ["STORM_TEST_ATTENTION"] = "pytorch"
    from harness.host import ensure_host

    ensure_host()
    import comfy.model_management as mm

    rows = []
    for arch in archs:
        for units in (flux_units if arch == "flux" else (None,)):
            rows += _measure_arch(device, arch, steps, size, repeats, real, toy=toy, units=units)
            mm.unload_all_models()  # the next model's peak memory must not include this one's weights
            mm.soft_empty_cache()
    return rows


def run_child(args: list[str], timeout: float | None = None):
    """This script in a fresh process with ``args``; the JSON of its last output line. Raises RuntimeError with the
    end of its error output when it fails, ``subprocess.TimeoutExpired`` when it runs past ``timeout`` seconds."""
    proc = subprocess.run([*CHILD, *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def extrapolate_units(rows: list[dict], target: int) -> list[dict]:
    """Rows measured on a few units of blocks (``row["units"]``), extrapolated per unit to ``target`` units along the
    line through the two largest unit counts of each (device, arch, variant): times and peak memory are affine in
    the number of blocks (the embedders, sampler and loss once, every block's weights, activations and maps once
    per block). Ratios are recomputed from the extrapolated figures. Marked ``"extrapolated_from"``."""
    out = []
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r.get("units") is not None:
            groups.setdefault((r["device"], r["arch"], r["variant"]), []).append(r)
    linear = ("seconds", "peak_mib", "plain_step", "floor_pass", "ours_pass", "fullpass_pass", "refine_iter",
              "storm_pass")
    for sel in groups.values():
        sel = sorted(sel, key=lambda r: r["units"])
        if len(sel) < 2:
            continue
        lo, hi = sel[-2], sel[-1]
        row = dict(hi)
        for k in linear:
            if isinstance(hi.get(k), (int, float)) and isinstance(lo.get(k), (int, float)):
                slope = (hi[k] - lo[k]) / (hi["units"] - lo["units"])
                row[k] = hi[k] + slope * (target - hi["units"])
        row["units"], row["extrapolated_from"] = target, [lo["units"], hi["units"]]
        out.append(row)
    host = {(r["device"], r["arch"]): r["seconds"] for r in out if r["variant"] == "host"}
    for r in out:
        if r["variant"] == "floor":
            r["ours_vs_floor"] = r["ours_pass"] / r["floor_pass"]
            r["guided_step_vs_plain"] = (r["plain_step"] + r["ours_pass"]) / r["plain_step"]
            r["floor_step_vs_plain"] = (r["plain_step"] + r["floor_pass"]) / r["plain_step"]
        elif (r["device"], r["arch"]) in host:
            r["ratio"] = r["seconds"] / host[(r["device"], r["arch"])]
    return out


class _Setup:
    """A model and the conditionings and guidances every variant of one architecture uses."""

    def __init__(self, pack, arch: str, real: bool, dtype, steps: int, toy: bool = False, units: int | None = None):
        import torch

        from harness.nodeutil import call_node, node_output
        from harness.tiny_dit import FLUX_DEV, FLUX_TOY, build_flux_blocks, build_real_size_dit, build_tiny_dit
        from harness.tiny_models import build_real_size, build_tiny, tiny_conditioning

        nodes = pack.NODE_CLASS_MAPPINGS
        self.arch = arch
        with torch.inference_mode():
            if arch in DIT:
                if not real:
                    raise SystemExit(f"{arch} is a real-size configuration only: add --real")
                if arch == "flux":  # ``units`` x (1 double + 2 single blocks) of Flux.1-dev (or of its thin copy)
                    self.tm = tm = build_flux_blocks(FLUX_TOY if toy else FLUX_DEV, units, 2 * units, dtype=dtype)
                elif toy:  # the tiny SD3 with an image-only self-attention block, as SD3.5 Medium has
                    self.tm = tm = build_tiny_dit("sd3", dtype=dtype, config={"x_block_self_attn_layers": [0]})
                else:
                    self.tm = tm = build_real_size_dit(dtype=dtype)
            else:
                self.tm = tm = (build_real_size if real and not toy else build_tiny)(arch, dtype=dtype)
            self.tokens, self.pos, _ = node_output(nodes["STORM_SubjectTokens"]().run(
                clip=tm.clip, text="a cat and a dog", subjects="cat, dog"))
            self.pos_b = tiny_conditioning(tm.clip, "a cat and a bird")
            self.neg = tiny_conditioning(tm.clip, "")

            def ae(**kw):
                base = dict(tokens=self.tokens, step_size=20.0, start_at=0.0, end_at=0.5, thresholds="",
                            max_refine_iters=0, smoothing=True, end_tokens="auto")
                return nodes["STORM_AttendAndExcite"]().build(**{**base, **kw})[0]

            self.full = ae(thresholds="0:0.05, 0.2:0.5, 0.4:0.8", max_refine_iters=20)
            self.noref = ae()
            # one refinement iteration at step 0 (a threshold no random model reaches): its cost alone
            self.one_iter = ae(thresholds="0:0.999", max_refine_iters=1)
            self.off = ae(step_size=0.0)
            # only step 0 guided: one gradient pass per run (the memory of one pass)
            self.single = ae(end_at=0.5 / steps)
            analysis, _, self.storm_pos, _ = call_node(nodes["STORM_PromptAnalysis"], clip=tm.clip,
                                                      text="a cat to the left of a dog", parser="auto")
            self.storm = call_node(nodes["STORM_SpatialTransport"], analysis=analysis, mode="paper",
                                   max_refine_iters=0)[0]


def _schedule(tm, steps: int, size: int):
    """The empty latent of a ``size`` px image and the host's euler/normal sigmas of ``steps`` steps."""
    import comfy.samplers
    import torch

    latent = torch.zeros(1, tm.channels, size // 8, size // 8)
    sigmas = comfy.samplers.KSampler(tm.model, steps=steps, device=tm.model.load_device, sampler="euler",
                                     scheduler="normal", model_options=tm.model.model_options).sigmas
    return latent, sigmas


def _host_run(tm, latent, steps: int, positive, negative):
    """The host's own sampler (``comfy.sample.sample``, euler), the baseline of every ratio."""
    import comfy.sample

    noise = comfy.sample.prepare_noise(latent, 1)
    return comfy.sample.sample(tm.model, noise, steps, 7.5, "euler", "normal", positive, negative, latent, seed=1,
                               disable_pbar=True)


def _guided_run(pack, tm, guidance, latent, sigmas, positive, negative, stop_early: bool = True):
    """STORM's guided sampler (euler) with ``guidance``: its output and the run's record."""
    import comfy.sample

    sampler_mod = pack.nodes.guided_sampler
    settings = sampler_mod.GuidedSamplerSettings(guidance, "euler", stop_early=stop_early)
    history = pack.nodes.attention_capture.AttentionHistory("benchmark", capacity=1)
    noise = comfy.sample.prepare_noise(latent, 1)
    out = comfy.sample.sample_custom(tm.model, noise, 7.5, sampler_mod.make_ksampler(settings, history), sigmas,
                                     positive, negative, latent, disable_pbar=True, seed=1)
    return out, history.latest()


def _gradient_passes(record) -> int:
    return sum(1 + e.refine_iters for e in record.log)


def _measure_arch(device: str, arch: str, steps: int, size: int, repeats: int, real: bool = False,
                  toy: bool = False, units: int | None = None) -> list[dict]:
    import torch

    from harness.host import load_pack
    from harness.nodeutil import call_node

    pack = load_pack()
    nodes = pack.NODE_CLASS_MAPPINGS
    # weights as ComfyUI loads them: fp16 on a GPU (Flux: bf16, its released files' type); on the CPU fp32 (the
    # host computes in fp32 there)
    dtype = ((torch.bfloat16 if arch == "flux" else torch.float16) if device == "cuda" and real else torch.float32)
    setup = _Setup(pack, arch, real, dtype, steps, toy=toy, units=units)
    tm, pos, neg = setup.tm, setup.pos, setup.neg
    latent, sigmas = _schedule(tm, steps, size)

    def run_host():
        return _host_run(tm, latent, steps, pos, neg)

    def run_guided(guidance, stop_early=True, positive=pos):
        out, record = _guided_run(pack, tm, guidance, latent, sigmas, positive, neg, stop_early)
        copied[0] = max(copied[0], record.info.weights_copied)
        return out, _gradient_passes(record)

    def run_aid():  # 3 frames (A, one in-between, B) in one chunk, the node's defaults otherwise
        return call_node(nodes["STORM_AttentionInterpolation"], model=tm.model, positive_a=pos, positive_b=setup.pos_b,
                         negative=neg, latent_image={"samples": latent}, frames=3, seed=1, steps=steps, cfg=7.5,
                         sampler_name="euler", scheduler="normal", chunk_size=1)

    copied = [0]
    runs = {
        "host": run_host,
        "guided-off": lambda: run_guided(setup.off),
        "guided": lambda: run_guided(setup.full),
        "guided-noref": lambda: run_guided(setup.noref),
        "guided-1iter": lambda: run_guided(setup.one_iter),
        "guided-fullpass": lambda: run_guided(setup.noref, stop_early=False),
        "storm-noref": lambda: run_guided(setup.storm, positive=setup.storm_pos),
        "aid-3frames": run_aid,
    }
    if real:  # random weights refine to the cap: say what one iteration costs instead
        runs.pop("guided")
        if arch in DIT:  # AID refuses DiTs (README)
            runs.pop("aid-3frames")
    else:  # the tiny models' table stays as it was
        for name in ("guided-1iter", "storm-noref", "aid-3frames"):
            runs.pop(name)
    times = {k: [] for k in runs}
    peaks = dict.fromkeys(runs, 0)
    grad_passes = {}
    with torch.inference_mode():
        for fn in runs.values():  # warm-up: model loading, kernels
            fn()
        for _ in range(repeats):
            for name, fn in runs.items():
                if device == "cuda":
                    torch.cuda.synchronize()
                PeakMemory.reset(device)
                start = time.perf_counter()
                result = fn()
                if device == "cuda":
                    torch.cuda.synchronize()
                times[name].append(time.perf_counter() - start)
                peaks[name] = max(peaks[name], PeakMemory.read(device) or 0)
                if isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], int):
                    grad_passes[name] = result[1]
    base = statistics.median(times["host"])
    gpu = torch.cuda.get_device_name() if device == "cuda" else ""
    rows = [{"device": device, "gpu": gpu, "arch": arch, "variant": name, "seconds": statistics.median(times[name]),
             "ratio": statistics.median(times[name]) / base, "grad_passes": grad_passes.get(name, 0),
             "peak_mib": peaks[name] / 2 ** 20 if peaks[name] else None, "peak_kind": PeakMemory.kind(device)}
            for name in runs]
    if real:
        bare = _bare_pass(pack, tm, pos, latent, sigmas[0])
        rows.append(_floor(bare, device, repeats, steps, times, grad_passes, copied[0], arch))
    for r in rows:
        r.update(size=size, steps=steps, dtype=str(dtype).split(".")[-1], units=units, toy=toy)
    return rows


def _memory(device: str, arch: str, sizes: list[int], dtype_name: str = "auto") -> list[dict]:
    """Activation memory of one gradient pass (bytes saved for backward), ours vs the floor, at each size.

    Weights in fp16 on CUDA and bf16 on the CPU: the element size ComfyUI computes in on a GPU, so the
    CPU's byte counts are the GPU's (the loss math is fp32 on both). ``dtype_name="float32"`` computes in
    fp32 instead, for CPUs without bf16 arithmetic (without AVX-512 a bf16 matrix product runs hundreds of
    times slower than fp32): then the network's saved activations take twice a GPU's bytes. On CUDA also
    the peak allocated memory of a one-step guided run and of a plain run (weights included).
    """
    os.environ["STORM_TEST_DEVICE"] = device
    os.environ["STORM_TEST_ATTENTION"] = "pytorch"
    from harness.host import ensure_host, load_pack

    ensure_host()
    import torch

    pack = load_pack()
    steps = 4
    dtype = {"auto": torch.float16 if device == "cuda" else torch.bfloat16, "float32": torch.float32}[dtype_name]
    setup = _Setup(pack, arch, True, dtype, steps)
    tm, pos, neg = setup.tm, setup.pos, setup.neg
    # compute in the weights' dtype as on a GPU (the host would cast bf16 weights to fp32 on the CPU, and a
    # gradient pass keeps every cast weight alive until backward: see the README's performance notes)
    tm.model.model.manual_cast_dtype = None
    weights = sum(p.numel() * p.element_size() for p in tm.model.model.diffusion_model.parameters())
    rows = []
    for size in sizes:
        latent, sigmas = _schedule(tm, steps, size)
        bare = _bare_pass(pack, tm, pos, latent, sigmas[0])
        with torch.inference_mode(False), SavedBytes() as floor:
            bare()

        def one_step(latent=latent, sigmas=sigmas):
            passes = _gradient_passes(_guided_run(pack, tm, setup.single, latent, sigmas, pos, neg)[1])
            if passes != 1:
                raise RuntimeError(f"expected one gradient pass, the run made {passes}")

        def plain(latent=latent):
            _host_run(tm, latent, steps, pos, neg)

        peaks = {}
        with torch.inference_mode():
            one_step()  # warm-up (model loading)
            with SavedBytes() as ours:
                if device == "cuda":
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                one_step()
                if device == "cuda":
                    peaks["guided"] = torch.cuda.max_memory_allocated()
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
                plain()
                peaks["plain"] = torch.cuda.max_memory_allocated()
        rows.append({"device": device, "arch": arch, "size": size, "dtype": str(dtype).split(".")[-1],
                     "weights_mib": weights / 2 ** 20, "floor_saved_mib": floor.bytes / 2 ** 20,
                     "ours_saved_mib": ours.bytes / 2 ** 20,
                     **{f"peak_{k}_mib": v / 2 ** 20 for k, v in peaks.items()}})
    if dtype != torch.float32:  # float32 weights are not cast per call: nothing to compare
        rows += _manual_cast_memory(pack, setup, device, min(sizes), steps, weights)
    return rows


def _manual_cast_memory(pack, setup, device: str, size: int, steps: int, weights: int) -> list[dict]:
    """One gradient pass's saved bytes when the host casts every weight per call to float32 (manual cast:
    fp8/bf16 weights, low-VRAM offloading), with the cast weights cast again in backward (ours) and kept
    as autograd keeps them (the pack before; the same code with the recast switched off)."""
    import torch

    frozen = pack.storm_ops.guidance.frozen_weights.FrozenWeights
    tm, pos, neg = setup.tm, setup.pos, setup.neg
    tm.model.model.manual_cast_dtype = torch.float32
    latent, sigmas = _schedule(tm, steps, size)
    rows = []
    remember = frozen._remember
    for label, patched in (("manual cast, recast", remember), ("manual cast, kept", lambda self, cast, source: cast)):
        frozen._remember = patched
        try:
            with torch.inference_mode(), SavedBytes() as saved:
                record = _guided_run(pack, tm, setup.single, latent, sigmas, pos, neg)[1]
        finally:
            frozen._remember = remember
        rows.append({"device": device, "arch": setup.arch, "size": size, "dtype": label, "weights_mib": weights / 2 ** 20,
                     "floor_saved_mib": float("nan"), "ours_saved_mib": saved.bytes / 2 ** 20,
                     "recast": record.info.weights_recast})
    return rows


def _last_recorded_attn2(pack, base_model):
    """The ``attn2`` module of the deepest transformer of the last layer the default selection records."""
    arch_mod = pack.nodes.architecture
    unet = base_model.diffusion_model
    layers = arch_mod.describe_unet(base_model).select(arch_mod.DEFAULT_LAYER_SELECTION)
    block, index = layers[-1].key
    module = unet.middle_block if block == "middle" else {"input": unet.input_blocks,
                                                           "output": unet.output_blocks}[block][index]
    transformer = next(m for m in module.modules() if hasattr(m, "transformer_blocks"))
    return transformer.transformer_blocks[-1].attn2


class PeakMemory:
    """The peak memory of this process while a variant runs: on CUDA the peak of allocated memory
    (``torch.cuda.max_memory_allocated``: weights, activations, maps, nothing cached), on a Linux CPU the peak
    resident set size (``VmHWM``, reset by writing 5 to ``/proc/self/clear_refs``: the interpreter, weights and
    everything else the process holds). None where neither can be read."""

    @staticmethod
    def kind(device: str) -> str:
        return "cuda max allocated" if device == "cuda" else "peak RSS"

    @staticmethod
    def reset(device: str) -> None:
        if device == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats()
            return
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass

    @staticmethod
    def read(device: str) -> int | None:
        if device == "cuda":
            import torch

            return torch.cuda.max_memory_allocated()
        try:
            with open("/proc/self/status") as f:
                line = next(v for v in f if v.startswith("VmHWM:"))
        except (OSError, StopIteration):
            return None
        return int(line.split()[1]) * 1024


class SavedBytes:
    """Bytes autograd saves for backward while active (each storage once): a pass's activation memory.

    ``bytes`` sums every storage saved (what a pass keeps when its backward starts); ``peak`` is the most held at
    once, a storage counting from the save until autograd frees it: the figure for passes that recompute blocks in
    backward, whose replays save and free one block's activations at a time (``bytes`` would sum them all).

    On the CPU this is the only memory figure that does not depend on the allocator. The gradient pass
    installs saved-tensor hooks of its own (``allow_mutation_on_saved_tensors``), which would hide an
    outer hook, so while active every pack hook pushed is wrapped to count what it receives (benchmark
    instrumentation, in the benchmark's own process). Count one gradient pass per instance: storages
    freed by one pass can be reused by the next."""

    def __init__(self):
        self.bytes = self.peak = self._live = 0
        self._seen = set()
        self._held: dict[tuple, int] = {}

    def _count(self, t):
        storage = t.untyped_storage()
        key = (storage.data_ptr(), storage.nbytes())
        if key not in self._seen:
            self._seen.add(key)
            self.bytes += storage.nbytes()
        if not self._held.get(key):
            self._live += storage.nbytes()
            self.peak = max(self.peak, self._live)
        self._held[key] = self._held.get(key, 0) + 1
        return key

    def _release(self, key) -> None:
        self._held[key] -= 1
        if not self._held[key]:
            del self._held[key]
            self._live -= key[1]

    def __enter__(self):
        import torch

        autograd = torch._C._autograd
        self._push = push = autograd._push_saved_tensors_default_hooks

        def counting_push(pack, unpack):
            push(lambda t: _Held(self, self._count(t), pack(t)), lambda held: unpack(held.packed))

        autograd._push_saved_tensors_default_hooks = counting_push
        self._hooks = torch.autograd.graph.saved_tensors_hooks(lambda t: _Held(self, self._count(t), t),
                                                               lambda held: held.packed)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        import torch

        self._hooks.__exit__(*exc)
        torch._C._autograd._push_saved_tensors_default_hooks = self._push
        self._seen.clear()


class _Held:
    """What a counting pack hook returns: the inner hook's packed value; freed with the saved tensor."""

    __slots__ = ("counter", "key", "packed")

    def __init__(self, counter: SavedBytes, key, packed):
        self.counter, self.key, self.packed = counter, key, packed

    def __del__(self):
        self.counter._release(self.key)


def _bare_pass(pack, tm, pos, latent, sigma):
    """The floor of one gradient pass: the conditional forward up to the query projection of the last
    cross-attention the loss reads (a DiT: its last joint attention), then backward from a scalar of those
    queries to the latent; nothing recorded, no loss math, no sampler around it (the host's
    ``apply_model`` and the same frozen-weight functions as ours)."""
    import torch

    base_model = tm.model.model
    device = tm.model.load_device
    size = latent.shape[-1] * 8
    extra = {}
    if tm.arch == "sdxl":
        extra["y"] = base_model.encode_adm(pooled_output=pos[0][1]["pooled_output"], width=size, height=size,
                                           target_width=size, target_height=size).to(device)
    elif tm.arch == "sd3":
        extra["y"] = pos[0][1]["pooled_output"].to(device)
    elif tm.arch == "flux":
        extra["y"] = pos[0][1]["pooled_output"].to(device)
        extra["guidance"] = torch.tensor([pos[0][1].get("guidance", 3.5)], device=device)
    context = pos[0][0].to(device)
    noisy = (latent + torch.randn(latent.shape, generator=torch.Generator().manual_seed(0)) * sigma).to(device)
    sigma = sigma.reshape(1).to(device)
    captured = {}

    class Stop(Exception):
        pass

    def keep_q(module, args, output):
        captured["q"] = output

    def stop(module, args, output):  # to_v runs after to_q and to_k
        raise Stop

    def last_joint_call(blocks: int, joint_keys: int, key_dim: int):
        """An attention override that stops the pass at the ``blocks``-th joint call (``joint_keys`` keys along
        dimension ``key_dim`` of ``k``: (B, L, H*D) in MMDiT, (B, H, L, D) in Flux; SD3.5's image-only
        self-attention has fewer), keeping its queries."""
        seen = [0]

        def override(func, *args, **kwargs):
            if args[1].shape[key_dim] == joint_keys:
                seen[0] += 1
                if seen[0] == blocks:
                    captured["q"] = args[0]
                    raise Stop
            return func(*args, **kwargs)
        return override

    def run():
        handles = []
        if tm.arch in ("sd3", "flux"):  # every joint block is recorded (Flux: double and single blocks)
            blocks = len(pack.nodes.architecture.describe_model(base_model).layers)
            image_rows = (latent.shape[-2] // 2) * (latent.shape[-1] // 2)
            extra["transformer_options"] = {"optimized_attention_override": last_joint_call(
                blocks, context.shape[1] + image_rows, 2 if tm.arch == "flux" else 1)}
        else:
            attn2 = _last_recorded_attn2(pack, base_model)
            handles = [attn2.to_q.register_forward_hook(keep_q), attn2.to_v.register_forward_hook(stop)]
        try:
            with pack.nodes.gradient_pass.gradient_pass():
                x = noisy.clone().requires_grad_(True)
                try:
                    # the host's own entry (input scaling, compute dtype), as the sampler calls it
                    base_model.apply_model(x, sigma, c_crossattn=context, **extra)
                    raise RuntimeError("the pass was not stopped at the last recorded attention")
                except Stop:
                    pass
                return torch.autograd.grad(captured.pop("q").float().square().mean(), x)[0]
        finally:
            for h in handles:
                h.remove()

    tm.model.model.to(device)
    return run


def _floor(bare, device: str, repeats: int, steps: int, times: dict, passes: dict, copied: int, arch: str) -> dict:
    """Per guided step: the floor of a gradient pass against ours (see the module docstring)."""
    import torch

    bare_times = []
    for _ in range(max(repeats, 1) + 1):  # the first is a warm-up
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.inference_mode(False):
            bare()
        if device == "cuda":
            torch.cuda.synchronize()
        bare_times.append(time.perf_counter() - start)
    floor = statistics.median(bare_times[1:])
    med = {k: statistics.median(v) for k, v in times.items()}
    plain_step = med["host"] / steps
    ours = (med["guided-noref"] - med["guided-off"]) / passes["guided-noref"]
    return {"device": device, "arch": arch, "variant": "floor", "plain_step": plain_step, "floor_pass": floor,
            "ours_pass": ours, "ours_vs_floor": ours / floor,
            "fullpass_pass": (med["guided-fullpass"] - med["guided-off"]) / passes["guided-fullpass"],
            "refine_iter": med["guided-1iter"] - med["guided-noref"],
            "storm_pass": (med["storm-noref"] - med["guided-off"]) / passes["storm-noref"],
            "aid_frame_vs_plain": med["aid-3frames"] / 3 / med["host"] if "aid-3frames" in med else float("nan"),
            "weights_copied": copied,
            "guided_step_vs_plain": (plain_step + ours) / plain_step,
            "floor_step_vs_plain": (plain_step + floor) / plain_step}


def arch_label(row: dict) -> str:
    """``sd15``; a Flux row ``flux/K`` (K units of blocks measured) or ``flux/19*`` (extrapolated)."""
    if row.get("units") is None:
        return row["arch"]
    return f"{row['arch']}/{row['units']}{'*' if row.get('extrapolated_from') else ''}"


def _print_floors(floors: list[dict]) -> None:
    print("\nper guided step (A&E, no refinement): the gradient pass's floor (conditional forward to the last "
          "recorded cross-attention's projections + backward to the latent, nothing recorded) against ours")
    head = (f"{'device':7} {'arch':8} {'plain step s':>12} {'floor pass s':>12} {'ours pass s':>11} {'ours/floor':>10} "
            f"{'full pass s':>11} {'full/ours':>9} {'1 refine s':>10} {'STORM pass s':>12} {'step/plain':>10} "
            f"{'floor/plain':>11} {'AID frame/plain':>15} {'w. copied':>9}")
    print(head)
    print("-" * len(head))
    for r in floors:
        print(f"{r['device']:7} {arch_label(r):8} {r['plain_step']:12.3f} {r['floor_pass']:12.3f} {r['ours_pass']:11.3f} "
              f"{r['ours_vs_floor']:10.2f} {r['fullpass_pass']:11.3f} {r['fullpass_pass'] / r['ours_pass']:9.2f} "
              f"{r['refine_iter']:10.3f} {r['storm_pass']:12.3f} {r['guided_step_vs_plain']:10.2f} "
              f"{r['floor_step_vs_plain']:11.2f} {r['aid_frame_vs_plain']:15.2f} {r['weights_copied']:9d}")


#: the resolution each real-size architecture is used at
NATIVE_SIZE = {"sd15": 512, "sdxl": 1024, "sd35m": 1024}


def _print_memory(rows: list[dict]) -> None:
    """The activation memory table, and its extrapolation to each architecture's native size.

    Bytes saved for backward grow with the pixel count (PyTorch attention keeps no score matrix); a
    line through the two largest measured sizes, ``saved = a + b * pixels``, gives the native size."""
    print("\nactivation memory of one gradient pass (bytes autograd saves for backward), ours vs the floor")
    head = (f"{'device':7} {'arch':5} {'size':>5} {'dtype':20} {'weights MiB':>11} {'floor MiB':>9} {'ours MiB':>9} "
            f"{'ours/floor':>10} {'peak guided MiB':>15} {'peak plain MiB':>14}")
    print(head)
    print("-" * len(head))
    for r in rows:
        peak_g = f"{r['peak_guided_mib']:.0f}" if "peak_guided_mib" in r else "-"
        peak_p = f"{r['peak_plain_mib']:.0f}" if "peak_plain_mib" in r else "-"
        print(f"{r['device']:7} {r['arch']:5} {r['size']:5d} {r['dtype']:20} {r['weights_mib']:11.0f} "
              f"{r['floor_saved_mib']:9.1f} {r['ours_saved_mib']:9.1f} {r['ours_saved_mib'] / r['floor_saved_mib']:10.2f} "
              f"{peak_g:>15} {peak_p:>14}")
    for (device, arch) in dict.fromkeys((r["device"], r["arch"]) for r in rows):
        sel = sorted((r for r in rows if r["device"] == device and r["arch"] == arch and "recast" not in r),
                     key=lambda r: r["size"])
        if len(sel) < 2 or arch not in NATIVE_SIZE:
            continue
        lo, hi, native = sel[-2], sel[-1], NATIVE_SIZE[arch]
        for key in ("floor_saved_mib", "ours_saved_mib"):
            slope = (hi[key] - lo[key]) / (hi["size"] ** 2 - lo["size"] ** 2)
            hi[key + "_native"] = hi[key] + slope * (native ** 2 - hi["size"] ** 2)
        print(f"{device} {arch} at {native} px (extrapolated from {lo['size']} and {hi['size']} px): ours saves "
              f"{hi['ours_saved_mib_native']:.0f} MiB for backward (floor {hi['floor_saved_mib_native']:.0f} MiB); "
              f"with the {hi['dtype']} weights ({hi['weights_mib']:.0f} MiB) that is "
              f"{(hi['ours_saved_mib_native'] + hi['weights_mib']) / 1024:.2f} GiB before the forward's transient "
              "buffers")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", default="auto", help="comma list of cpu,cuda (default: cpu + cuda if present)")
    parser.add_argument("--archs", default="sd15,sdxl",
                        help="comma list of sd15, sdxl (tiny or --real), sd35m and flux (--real only, current ComfyUI; "
                             "flux: a few real-size blocks, extrapolated per block); or, for memory only (--memory), "
                             "any of qwen_image, z_image, flux2 (dev), flux2_klein4b, flux2_klein9b, krea2: a few real-size "
                             "blocks on the CPU, extrapolated per block to the whole model and in pixels to 1024 px, "
                             "with and without blocks recomputed in backward")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=256, help="image size in pixels (latent = size / 8)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--real", action="store_true",
                        help="real-size random-weight models (SD1.5 860M, SDXL 2.6B, SD3.5 Medium 2.5B parameters) "
                             "instead of the tiny ones, "
                             "plus the cost floor table; fp16 on CUDA, fp32 on the CPU (use a small --size there)")
    parser.add_argument("--memory", default="", metavar="SIZES",
                        help="with --real: the activation memory of one gradient pass at these image sizes (comma list, "
                             "e.g. 256,384), extrapolated to SD1.5's 512 px and SDXL's 1024 px")
    parser.add_argument("--memory-dtype", default="auto", choices=("auto", "float32"),
                        help="with --memory: auto = fp16 on CUDA, bf16 on the CPU (a GPU's bytes); float32 for CPUs "
                             "without fast bf16 (the network's activations then take twice a GPU's bytes)")
    parser.add_argument("--memory-child", default="", help=argparse.SUPPRESS)
    parser.add_argument("--real-dit-child", default="", help=argparse.SUPPRESS)
    parser.add_argument("--spatial", type=int, default=0, metavar="N",
                        help="also run the STORM relation sweep over N seeds on the CPU (the issue asks for >= 16)")
    parser.add_argument("--interpolation", action="store_true", help="also run the AID smoothness and memory report")
    parser.add_argument("--interp-child", default="", help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--toy-widths", action="store_true",
                        help="with --real: the same measurements on the tiny models (SD3.5: the tiny SD3, Flux: its "
                             "thin copy), for a dry run of the real-size code path on a CPU")
    parser.add_argument("--flux-units", default=",".join(map(str, FLUX_UNITS)), metavar="K1,K2",
                        help="with --real --archs flux: measure Flux with these numbers of (1 double + 2 single) "
                             "blocks and extrapolate per unit to Flux.1-dev's 19")
    parser.add_argument("--spatial-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    archs = args.archs.split(",")

    flux_units = tuple(int(v) for v in args.flux_units.split(","))
    if args.child:
        print(json.dumps(_measure(args.devices, archs, args.steps, args.size, args.repeats, args.real,
                                  toy=args.toy_widths, flux_units=flux_units)))
        return 0
    if args.spatial_child:
        print(json.dumps(_spatial(archs, args.spatial)))
        return 0
    if args.real_dit_child:
        from harness.tiny_dit import REAL_DITS

        configs = BLOCK_CONFIGS[REAL_DITS[args.real_dit_child].arch]
        print(json.dumps(_memory_real_dit(args.real_dit_child, [int(v) for v in args.memory.split(",")], configs)))
        return 0
    if args.memory_child:
        print(json.dumps(_memory(args.devices, args.memory_child, [int(v) for v in args.memory.split(",")],
                                 args.memory_dtype)))
        return 0
    if args.interp_child:
        print(json.dumps(_interpolation(args.interp_child, args.devices)))
        return 0

    real_dits = [a for a in archs if a in REAL_DIT_ARCHS]
    if real_dits:  # memory only: a few real-size blocks on the CPU, one process per model
        if len(real_dits) != len(archs) or not args.memory:
            raise SystemExit(f"{', '.join(REAL_DIT_ARCHS)}: memory only (--memory SIZES), without other archs")
        rows = []
        for arch in real_dits:
            try:
                rows += run_child(["--real-dit-child", arch, "--memory", args.memory])
            except RuntimeError as e:
                print(e, file=sys.stderr)
                return 1
        _print_real_dit(rows, real_dits)
        return 0
    if args.devices == "auto":
        probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
                               capture_output=True, text=True)
        devices = ["cpu"] + (["cuda"] if probe.stdout.strip() == "True" else [])
    else:
        devices = args.devices.split(",")
    rows = []
    for device in devices:
        cmd = ["--child", "--devices", device, "--archs", args.archs, "--steps", str(args.steps), "--size",
               str(args.size), "--repeats", str(args.repeats), "--flux-units", args.flux_units]
        cmd += (["--real"] if args.real else []) + (["--toy-widths"] if args.toy_widths else [])
        try:
            rows += run_child(cmd)
        except RuntimeError as e:
            print(e, file=sys.stderr)
            return 1
    if "flux" in archs:
        from harness.tiny_dit import FLUX_DEV

        rows += extrapolate_units(rows, FLUX_DEV.double)

    floors = [r for r in rows if r["variant"] == "floor"]
    rows = [r for r in rows if r["variant"] != "floor"]
    models = "real-size random-weight models" if args.real else "tiny models"
    print(f"guided vs unguided sampling, {models}, {args.steps} euler steps at {args.size}px, "
          f"median of {args.repeats} interleaved rounds")
    header = f"{'device':7} {'arch':8} {'variant':16} {'seconds':>8} {'x host':>7} {'grad passes':>11} {'peak MiB':>9}"
    print(header)
    print("-" * len(header))
    for r in rows:
        peak = f"{r['peak_mib']:.0f}" if r["peak_mib"] is not None else "-"
        print(f"{r['device']:7} {arch_label(r):8} {r['variant']:16} {r['seconds']:8.3f} {r['ratio']:7.2f} "
              f"{r['grad_passes']:11d} {peak:>9}")
    if "flux" in archs:
        print(f"flux/K: Flux with K units of (1 double + 2 single) real-size blocks; flux/19* extrapolated per unit "
              f"from {' and '.join(map(str, flux_units[-2:]))} units")
    for device in devices:
        for arch in archs:
            sel = {r["variant"]: r for r in rows if r["device"] == device and r["arch"] == arch}
            if "guided-noref" in sel and "guided-fullpass" in sel:
                saving = sel["guided-fullpass"]["seconds"] / sel["guided-noref"]["seconds"]
                print(f"{device} {arch}: early stop of the gradient pass: full-pass run takes {saving:.2f}x "
                      "the time of the early-stopped run")
    if floors:
        _print_floors(floors)
    gpus = {r["gpu"] for r in rows if r["gpu"]}
    if gpus:
        print("GPU:", ", ".join(sorted(gpus)))
    if args.real and args.memory:
        memory = []
        for device in devices:
            for arch in archs:  # a process per model: SDXL's weights twice would not fit 24 GB
                if arch == "flux":
                    print("--memory: Flux is measured per block in the timing table (peak MiB on CUDA), not here")
                    continue
                cmd = [*CHILD, "--memory-child", arch, "--devices", device, "--memory", args.memory,
                       "--memory-dtype", args.memory_dtype]
                proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
                if proc.returncode != 0:
                    print(proc.stderr[-3000:], file=sys.stderr)
                    return proc.returncode
                memory += json.loads(proc.stdout.strip().splitlines()[-1])
        _print_memory(memory)
    if args.spatial:
        cmd = [*CHILD, "--spatial-child", "--archs", args.archs, "--spatial", str(args.spatial),
               "--devices", "cpu"]
        env = dict(os.environ, STORM_TEST_DEVICE="cpu")
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            return proc.returncode
        from harness.spatial_sweep import HEADER

        print(f"\nSTORM relation sweep: subject attention centroid on the requested side after sampling "
              f"(8 euler steps, 192 px, paper mode, 2 refinement iterations), {args.spatial} seeds")
        print(HEADER)
        for line in json.loads(proc.stdout.strip().splitlines()[-1]):
            print(line)
    if args.interpolation:
        _interpolation_report(devices)
    return 0


def _child(kind: str, device: str) -> dict:
    env = dict(os.environ, STORM_TEST_DEVICE=device)
    proc = subprocess.run([*CHILD, "--interp-child", kind, "--devices", device],
                          capture_output=True, text=True, cwd=ROOT, env=env)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _interpolation_report(devices: list[str]) -> None:
    smooth = _child("smoothness", "cpu")
    print(f"\nAID vs text-embedding interpolation (tiny SD1.5, {smooth['frames']} frames, {smooth['steps']} steps, "
          f"{smooth['size']}px, '{smooth['a']}' -> '{smooth['b']}', seed {smooth['seed']})")
    print(f"{'method':22} {'mean adjacent distance':>22} {'smoothness (1-Gini)':>20}   adjacent distances")
    for name, row in smooth["rows"].items():
        dists = " ".join(f"{d:.3f}" for d in row["distances"])
        print(f"{name:22} {row['consistency']:22.4f} {row['smoothness']:20.4f}   {dists}")
    for device in devices:
        mem = {kind: _child(kind, device) for kind in ("mem-2", "mem-16-chunk4", "mem-64-chunk4", "mem-16-all")}
        unit = "peak allocated" if device == "cuda" else "peak RSS growth"
        base = mem["mem-2"]["peak_mib"]
        print(f"\nAID memory on {device} ({unit}, tiny SD1.5, {mem['mem-2']['size']}px, {mem['mem-2']['steps']} steps)")
        for kind, label in (("mem-2", "2 frames"), ("mem-16-chunk4", "16 frames, chunk_size 4"),
                            ("mem-64-chunk4", "64 frames, chunk_size 4"), ("mem-16-all", "16 frames, all at once")):
            row = mem[kind]
            print(f"  {label:26} {row['peak_mib']:9.1f} MiB  ({row['peak_mib'] / base:5.2f}x 2 frames)  "
                  f"max UNet batch {row['max_rows']}")


def _interpolation(kind: str, device: str) -> dict:
    import resource

    os.environ["STORM_TEST_DEVICE"] = device
    from harness.host import ensure_host, load_pack

    ensure_host()
    import torch

    from harness.aid_probe import interpolation_stats
    from harness.tiny_models import build_tiny, tiny_conditioning

    pack = load_pack()
    interp = pack.nodes.aid_sampling
    beta_schedule = pack.storm_ops.aid.schedule.beta_schedule
    with torch.inference_mode():
        tm = build_tiny("sd15")
        a, b = tiny_conditioning(tm.clip, "a photo of a cat"), tiny_conditioning(tm.clip, "a photo of a dog")
        neg = tiny_conditioning(tm.clip, "")

    def run(frames, chunk, mode, warmup, size, steps, seed=1):
        latent = {"samples": torch.zeros(1, 4, size // 8, size // 8)}
        settings = interp.InterpolationSettings(beta_schedule(frames, 3.0, 3.0), mode, warmup,
                                                chunk or max(frames - 2, 1))  # 0: all frames in one batch
        with torch.inference_mode(), interpolation_stats(pack.nodes.aid_attention) as stats:
            out, _ = interp.sample_sequence(tm.model, a, b, neg, None, latent, seed, steps, 7.5, "euler",
                                            "normal", settings, None)
        return out, max(s.max_rows for s in stats)

    if kind == "smoothness":
        frames, size, steps, seed = 9, 256, 12, 1
        rows = {}
        for name, mode, warmup in (("AID fused outer", "fused outer", 0.5), ("AID fused inner", "fused inner", 0.5),
                                   ("AID outer (no fusion)", "outer", 0.5), ("TEI (embedding interp.)", "fused outer", 0.0)):
            out, _ = run(frames, 0, mode, warmup, size, steps, seed)
            with torch.inference_mode():
                images = tm.vae.decode(out).float()  # (n, H, W, 3) in [0, 1]
            d = [float((images[i + 1] - images[i]).pow(2).mean().sqrt()) for i in range(frames - 1)]
            x = torch.tensor(sorted(d))
            n = len(d)
            gini = float(((2 * torch.arange(1, n + 1) - n - 1) * x).sum() / (n * x.sum())) if x.sum() > 0 else 0.0
            rows[name] = {"distances": d, "consistency": sum(d) / n, "smoothness": 1 - gini}
        return {"rows": rows, "frames": frames, "size": size, "steps": steps, "seed": seed,
                "a": "a photo of a cat", "b": "a photo of a dog"}
    frames, chunk = {"mem-2": (2, 0), "mem-16-chunk4": (16, 4), "mem-64-chunk4": (64, 4), "mem-16-all": (16, 0)}[kind]
    size, steps = (512, 3) if device == "cuda" else (256, 2)
    run(2, 0, "fused outer", 0.5, 64, 1)  # warm-up: weights loaded, kernels initialised
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
    else:
        start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    _, max_rows = run(frames, chunk, "fused outer", 0.5, size, steps)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() - start
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - start
    return {"peak_mib": peak / 2 ** 20, "max_rows": max_rows, "size": size, "steps": steps}


def _spatial(archs: list[str], seeds: int) -> list[str]:
    os.environ["STORM_TEST_DEVICE"] = "cpu"
    from harness.host import ensure_host, load_pack

    ensure_host()
    import torch

    from harness.spatial_sweep import sweep
    from harness.tiny_models import build_tiny, tiny_conditioning

    pack = load_pack()
    rows = []
    for arch in archs:
        with torch.inference_mode():
            tm = build_tiny(arch)
            negative = tiny_conditioning(tm.clip, "")
        for text in ("a cat to the left of a dog", "a dog to the right of a cat", "a bird above a car",
                     "a car below a bird"):
            rows.append(sweep(pack, tm.model, tm.clip, negative, text, range(seeds), arch).row())
    return rows


# ------------------------------------------------------------------------------------------------
# memory at real size of the families with a language-model text encoder (--archs qwen_image,z_image,flux2,...)

#: the block configurations each family is measured with (blocks of each kind; see harness.tiny_dit.RealDiT): the
#: first, then one more block of each kind, so that each kind's bytes per block are a difference
BLOCK_CONFIGS = {"qwen_image": ((1,), (2,)), "z_image": ((1,), (2,)), "flux2": ((1, 1), (2, 1), (1, 2)),
                 "krea2": ((1,), (2,))}
#: text rows of the measured prompt's conditioning as the model sees it ("a cat and a dog" in each family's template)
LLM_PROMPT = "a cat and a dog"


def _real_dit_floor(pack, tm, context, latent, sigma):
    """The floor of one gradient pass of a real-size DiT of the new families (see :func:`_bare_pass`): the host's
    ``apply_model`` with the conditioning the host's ``extra_conds`` makes (Flux.2's 512 padded rows, Z-Image's token
    count), stopped at the queries of the last joint attention, then backward to the latent."""
    import torch

    base_model = tm.model.model
    noisy = latent + torch.randn(latent.shape, generator=torch.Generator().manual_seed(0)) * sigma
    conds = base_model.extra_conds(cross_attn=context, noise=noisy, device=torch.device("cpu"), guidance=3.5)
    kwargs = {k: v.cond for k, v in conds.items()}
    info = pack.nodes.architecture.describe_model(base_model)
    rows = kwargs["c_crossattn"].shape[1]
    patch = 2 ** info.layers[0].level
    image = -(-latent.shape[-2] // patch) * -(-latent.shape[-1] // patch)
    pad = info.pad_rows_to
    joint = -(-rows // pad) * pad + -(-image // pad) * pad
    captured, seen = {}, [0]

    class Stop(Exception):
        pass

    def override(func, *args, **kw):
        if args[1].shape[2] == joint:
            seen[0] += 1
            if seen[0] == len(info.layers):
                captured["q"] = args[0]
                raise Stop
        return func(*args, **kw)

    def run():
        with pack.nodes.gradient_pass.gradient_pass(net=base_model.diffusion_model):
            x = noisy.clone().requires_grad_(True)
            try:
                base_model.apply_model(x, sigma.reshape(1), transformer_options={"optimized_attention_override": override},
                                       **kwargs)
                raise RuntimeError("the pass was not stopped at the last joint attention")
            except Stop:
                pass
            return torch.autograd.grad(captured.pop("q").float().square().mean(), x)[0]
    return run


def _memory_real_dit(arch: str, sizes: list[int], configs: list[tuple[int, ...]]) -> list[dict]:
    """Bytes one gradient pass saves for backward on a few real-size blocks of ``arch`` (:data:`harness.tiny_dit.
    REAL_DITS`), for each block configuration and image size: the floor, ours, and ours with every block computed again
    in backward (``recompute``: its peak held at once). Weights in bf16 (blocks of a kind share them), computed in fp32
    (this CPU has no fast bf16): the network's activations take twice a GPU's bf16 bytes."""
    os.environ["STORM_TEST_DEVICE"] = "cpu"
    os.environ["STORM_TEST_ATTENTION"] = "pytorch"
    from harness.host import ensure_host, load_pack

    ensure_host()
    import comfy.model_management as mm
    import comfy.sample
    import comfy.samplers
    import torch

    from harness.nodeutil import call_node
    from harness.tiny_dit import REAL_DITS, build_real_dit, widen_conditioning

    pack = load_pack()
    nodes = pack.NODE_CLASS_MAPPINGS
    spec = REAL_DITS[arch]
    sampler_mod = pack.nodes.guided_sampler
    rows = []
    for blocks in configs:
        with torch.inference_mode():
            tm = build_real_dit(spec, blocks)
            tokens, thin, _ = call_node(nodes["STORM_SubjectTokens"], clip=tm.clip, text=LLM_PROMPT, subjects="cat, dog")
            pos = widen_conditioning(thin, spec.context)
            layout = dataclasses.replace(tokens.layout, encoding=pos[0][0][0].float())
            tokens = dataclasses.replace(tokens, layout=layout)
            guidance = nodes["STORM_AttendAndExcite"]().build(tokens=tokens, step_size=20.0, start_at=0.0, end_at=1.0,
                                                              thresholds="", max_refine_iters=0, smoothing=True,
                                                              end_tokens="auto")[0]
        pixels = 16 if spec.arch == "flux2" else 8
        for size in sizes:
            # a one-frame video latent for the families whose latent format is a video's (Qwen-Image, Krea 2), as the
            # host's samplers make it
            latent = comfy.sample.fix_empty_latent_channels(tm.model, torch.zeros(1, tm.channels, size // pixels,
                                                                                   size // pixels))
            sigmas = comfy.samplers.KSampler(tm.model, steps=1, device=tm.model.load_device, sampler="euler",
                                             scheduler="simple", model_options=tm.model.model_options).sigmas
            row = {"arch": arch, "name": spec.name, "blocks": list(blocks), "size": size}
            with torch.inference_mode(False), SavedBytes() as floor:
                _real_dit_floor(pack, tm, pos[0][0], latent, sigmas[0])()
            row["floor_saved_mib"] = floor.bytes / 2 ** 20
            for label, recompute in (("ours", False), ("recompute", True)):
                settings = sampler_mod.GuidedSamplerSettings(guidance, "euler", recompute_blocks=recompute)
                history = pack.nodes.attention_capture.AttentionHistory("benchmark", capacity=1)
                with torch.inference_mode(), SavedBytes() as saved:
                    comfy.sample.sample_custom(tm.model, torch.zeros_like(latent), 1.0,
                                               sampler_mod.make_ksampler(settings, history), sigmas, pos, pos, latent,
                                               disable_pbar=True, seed=1)
                if _gradient_passes(history.latest()) != 1:
                    raise RuntimeError("expected one gradient pass")
                row[f"{label}_saved_mib"], row[f"{label}_peak_mib"] = saved.bytes / 2 ** 20, saved.peak / 2 ** 20
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
        del tm
        mm.unload_all_models()
    return rows


def real_dit_image_rows(arch: str, size: int) -> int:
    """The image rows a model of :data:`harness.tiny_dit.REAL_DITS` ``arch`` attends over at ``size`` px: one per 16 x
    16 pixels (Qwen-Image and Z-Image: 8 px latents in 2 x 2 patches; Flux.2: 16 px latents), Z-Image's padded to a
    multiple of 32 as the host's ``NextDiT`` pads them (``pad_tokens_multiple``): at 192 px 144 rows become 160."""
    from harness.tiny_dit import REAL_DITS

    rows = (size // 16) ** 2
    return rows + (-rows) % 32 if REAL_DITS[arch].arch == "z_image" else rows


def extrapolate_real_dit(rows: list[dict], arch: str, native: int = 1024) -> dict:
    """The whole model at ``native`` px from the measured points: per size, the bytes of the first block configuration
    plus, per kind, (the model's blocks - measured) x (one more block's bytes); then affine in the image rows the model
    attends over (:func:`real_dit_image_rows`: the pixel count, but for Z-Image's padding) through the two largest sizes
    (the smallest checks the line)."""
    from harness.tiny_dit import REAL_DITS

    spec = REAL_DITS[arch]
    configs = BLOCK_CONFIGS[spec.arch]
    by = {(tuple(r["blocks"]), r["size"]): r for r in rows if r["arch"] == arch}
    sizes = sorted({r["size"] for r in rows if r["arch"] == arch})
    keys = ("floor_saved_mib", "ours_saved_mib", "recompute_peak_mib", "ours_peak_mib")
    whole = {}
    for size in sizes:
        if not all((c, size) in by for c in configs):
            continue
        base = by[(configs[0], size)]
        whole[size] = {}
        for key in keys:
            value = base[key]
            for kind, config in enumerate(configs[1:]):
                per_block = by[(config, size)][key] - base[key]
                value += (spec.blocks[kind] - configs[0][kind]) * per_block
            whole[size][key] = value
    out = {"arch": arch, "name": spec.name, "sizes": whole}
    full = sorted(whole)
    if len(full) >= 2:
        lo, hi = full[-2], full[-1]
        n = {size: real_dit_image_rows(arch, size) for size in (*full, native)}
        for key in keys:
            slope = (whole[hi][key] - whole[lo][key]) / (n[hi] - n[lo])
            out[key] = whole[hi][key] + slope * (n[native] - n[hi])
            if len(full) >= 3:  # the third point against the line through the other two
                first = full[0]
                out[key + "_check"] = whole[first][key] - (whole[hi][key] + slope * (n[first] - n[hi]))
    return out


def _print_real_dit(rows: list[dict], archs: list[str], native: int = 1024) -> None:
    from harness.tiny_dit import REAL_DITS, real_dit_parameters

    print("\nbytes one gradient pass keeps for backward (fp32 compute on this CPU: a GPU's bf16 bytes are half), "
          "a few real-size blocks")
    head = f"{'model':16} {'blocks':8} {'size':>5} {'floor MiB':>9} {'ours MiB':>9} {'ours peak':>9} {'recompute peak':>14}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['name']:16} {str(tuple(r['blocks'])):8} {r['size']:5d} {r['floor_saved_mib']:9.1f} "
              f"{r['ours_saved_mib']:9.1f} {r['ours_peak_mib']:9.1f} {r['recompute_peak_mib']:14.1f}")
    gib = 2 ** 30
    for arch in archs:
        ext = extrapolate_real_dit(rows, arch, native)
        if "ours_saved_mib" not in ext:
            continue
        spec = REAL_DITS[arch]
        params = real_dit_parameters(spec)
        print(f"\n{spec.name}: {params / 1e9:.2f} B parameters ({spec.blocks} blocks; {spec.source})")
        for size, v in ext["sizes"].items():
            print(f"  whole model at {size} px: floor {v['floor_saved_mib']:.0f} MiB, ours {v['ours_saved_mib']:.0f} "
                  f"(peak {v['ours_peak_mib']:.0f}), recomputed blocks peak {v['recompute_peak_mib']:.0f} MiB")
        checks = ", ".join(f"{k[:-6]} {ext[k]:+.1f} MiB" for k in ext if k.endswith("_check"))
        print(f"  at {native} px (affine in image rows through the two largest sizes{'; smallest vs line: ' + checks if checks else ''}):"
              f" floor {ext['floor_saved_mib']:.0f} MiB, ours {ext['ours_saved_mib']:.0f} MiB, with recomputed blocks "
              f"{ext['recompute_peak_mib']:.0f} MiB (fp32)")
        weights = params  # fp8: one byte per parameter
        for label, key in (("ours", "ours_saved_mib"), ("recomputed blocks", "recompute_peak_mib")):
            activations = ext[key] / 2 * 2 ** 20  # bf16 on a GPU
            total = (activations + weights) / gib
            print(f"  GPU estimate, {label}: {activations / gib:.1f} GiB bf16 activations + {weights / gib:.1f} GiB fp8 "
                  f"weights = {total:.1f} GiB -> {'fits' if total < 24 * 1e9 / gib else 'does not fit'} a 24 GB card "
                  "(before the forward's transient buffers)")


if __name__ == "__main__":
    sys.exit(main())
