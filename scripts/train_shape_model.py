"""Train the shape-world model: a thin SD1.5-topology VAE, CLIP text encoder and UNet.

The architecture is the host's own (``harness.tiny_models.build_tiny("sd15")``: ComfyUI's
``AutoencoderKL``, ``SDClipModel`` with the real CLIP tokenizer, and the ``SD15`` UNet with thin
channels); only the weights are learned, from scenes of ``harness.shape_world``. Two stages:

* ``vae``: the autoencoder on rendered scenes (MSE + L1 + a small KL term, Kingma & Welling 2014);
  afterwards the latent is rescaled (an exact reparameterisation of ``quant_conv`` /
  ``post_quant_conv``) so that SD1.5's fixed latent scale 0.18215 gives the UNet unit variance.
* ``diffusion``: the text encoder and the UNet together, with the VAE frozen: epsilon prediction
  (Ho et al. 2020, Eq. 14) on ComfyUI's SD1.5 noise schedule, captions dropped 10% of the time so
  classifier-free guidance has an unconditional model (Ho & Salimans 2022).

Everything is seeded: the scenes and noise of training step ``i`` are drawn from generators seeded
by ``(seed, stage, i)``, so a resumed run continues exactly where it stopped. State (weights, Adam
moments and Adam's step) is saved as safetensors every ``--save-every`` steps and at the end, with the
stage's recipe (steps, batch, size, learning rates); ``--resume`` continues from it and warns when
called with a different recipe. ``--minutes`` bounds the wall time of a call; ``--steps`` the stage's
length (the cosine learning-rate schedule spans it), ``--until`` an earlier step to stop at (a resumed
call with a larger ``--steps`` continues on a longer schedule: a second, lower cycle). ``--text-lr-scale`` gives the text encoder its
own learning rate (a multiple of ``--lr``). ``python -m scripts.probe_text_dependence`` tells whether a
trained model follows its prompt.

    python -m scripts.train_shape_model --stage vae --minutes 12 --work train-run/
    python -m scripts.train_shape_model --stage diffusion --minutes 40 --work train-run/
    python -m scripts.train_shape_model --export models/storm_shapes_sd15.safetensors --work train-run/
    python -m scripts.train_shape_model --stage diffusion --init-from models/storm_shapes_sd15.safetensors \
        --work next-cycle/     # a further cycle on the shipped weights (their training state is not kept)

Runs on the CPU (2 cores suffice) and uses a GPU when one is present.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from harness.host import ensure_host
from harness.shape_world import object_masks, render, sample_scene

#: SD1.5's latent scale (``comfy.latent_formats.SD15.scale_factor``): model latent = VAE latent * this
SD15_LATENT_SCALE = 0.18215
STAGES = ("vae", "diffusion")
#: fraction of captions replaced by the empty prompt (the unconditional model of CFG)
CAPTION_DROPOUT = 0.1
KL_WEIGHT = 1e-6


def _generator(seed: int, stage: str, step: int, device="cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed((seed * 1_000_003 + STAGES.index(stage) * 7_919 + step) % (2 ** 63))
    return g


def render_batch(seed: int, stage: str, step: int, batch: int, size: int) -> tuple[np.ndarray, list]:
    """The scenes of one training step and their images, ``uint8 (B, size, size, 3)``: a function of its
    arguments alone, so batches can be drawn ahead in other processes (``--workers``)."""
    rng = np.random.default_rng([seed, STAGES.index(stage), step])
    scenes = [sample_scene(rng, size=size) for _ in range(batch)]
    return np.stack([render(s) for s in scenes]), scenes


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """``uint8 (B, H, W, 3)`` -> ``(B, 3, H, W)`` in [-1, 1]."""
    return torch.from_numpy(images.astype(np.float32) / 127.5 - 1.0).permute(0, 3, 1, 2).contiguous()


def scene_batch(seed: int, stage: str, step: int, batch: int, size: int) -> tuple[torch.Tensor, list]:
    """Rendered scenes of one training step, ``(B, 3, size, size)`` in [-1, 1], and the scenes."""
    images, scenes = render_batch(seed, stage, step, batch, size)
    return to_tensor(images), scenes


class BatchSource:
    """The batches of steps ``start, start + 1, ...``: drawn inline, or ``workers`` steps ahead in that many
    processes (rendering 256 px scenes on one core takes about as long as a training step on a GPU). The same
    batches either way: each is a function of (seed, stage, step)."""

    def __init__(self, seed: int, stage: str, batch: int, size: int, workers: int):
        self.key = (seed, stage, batch, size)
        self.workers = workers
        self.pool = None
        self.pending: dict[int, object] = {}
        if workers > 0:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            # spawn: the parent may hold a CUDA context, which a forked child must not inherit
            self.pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))

    def get(self, step: int, stop: int) -> tuple[torch.Tensor, list]:
        seed, stage, batch, size = self.key
        if self.pool is None:
            return scene_batch(seed, stage, step, batch, size)
        for ahead in range(step, min(step + 2 * self.workers, stop)):
            if ahead not in self.pending:
                self.pending[ahead] = self.pool.submit(render_batch, seed, stage, ahead, batch, size)
        images, scenes = self.pending.pop(step).result()
        return to_tensor(images), scenes

    def close(self) -> None:
        if self.pool is not None:
            for future in self.pending.values():
                future.cancel()
            self.pool.shutdown(wait=True, cancel_futures=True)


# ----------------------------------------------------------------------------- the modules
class OutOfPlaceResiduals(torch.overrides.TorchFunctionMode):
    """ComfyUI's transformer blocks add residuals in place (``x += n``, fine for inference); autograd
    cannot differentiate that when ``x`` was saved for a LayerNorm's backward. While training, an
    in-place add on a tensor of the autograd graph returns a new tensor instead (``x += n`` rebinds
    ``x`` to what ``__iadd__`` returns, so the blocks' code is unchanged)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch._C.TensorBase.add_ and args[0].requires_grad:
            return torch.add(*args, **kwargs)
        return func(*args, **kwargs)


class ShapeModel:
    """The host objects of the tiny SD1.5 architecture and their trainable modules."""

    def __init__(self, seed: int, device: torch.device):
        from harness.tiny_models import build_tiny, tiny_modules

        tiny = build_tiny("sd15", seed=seed)
        self.tiny = tiny
        self.device = device
        modules = {name: module.float().to(device) for name, module in tiny_modules(tiny).items()}
        self.vae, self.unet, self.text = modules["vae"], modules["unet"], modules["text"]
        sigmas = tiny.model.model.model_sampling.sigmas.float()
        self.alphas_cumprod = (1.0 / (1.0 + sigmas ** 2)).to(device)  # sigma^2 = (1 - a) / a

    def trainable(self, stage: str) -> list[torch.nn.Module]:
        """The modules ``stage`` trains, their parameters made to require gradients, every other one frozen
        (the host builds its diffusion model frozen since ComfyUI 0.33)."""
        trained = [self.vae] if stage == "vae" else [self.unet, self.text]
        for mod in self.modules().values():
            mod.requires_grad_(any(mod is t for t in trained))
        return trained

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"vae": self.vae, "unet": self.unet, "text": self.text}

    # -- vae
    def vae_moments(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.vae.quant_conv(self.vae.encoder(images))
        mean, logvar = h.chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def vae_decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decoder(self.vae.post_quant_conv(z))

    # -- text
    def encode_text(self, captions: list[str]) -> torch.Tensor:
        """``(B, 77, 32)``: the captions through the text encoder, tokenised by the host's tokenizer."""
        ids = []
        for text in captions:
            chunk = self.tiny.clip.tokenize(text)["l"][0]
            ids.append([int(t[0]) for t in chunk])
        out = self.text.clip_l.encode(ids)
        return out[0].float()


def vae_loss(m: ShapeModel, images: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, dict]:
    mean, logvar = m.vae_moments(images)
    z = mean + torch.randn(mean.shape, generator=g, device="cpu").to(mean) * (0.5 * logvar).exp()
    rec = m.vae_decode(z)
    mse, l1 = F.mse_loss(rec, images), F.l1_loss(rec, images)
    mse_value = float(mse.detach())
    kl = 0.5 * (mean ** 2 + logvar.exp() - 1.0 - logvar).sum(dim=(1, 2, 3)).mean()
    psnr = 10 * math.log10(4.0 / max(mse_value, 1e-12))  # images span [-1, 1]: peak-to-peak 2
    return mse + l1 + KL_WEIGHT * kl, {"mse": mse_value, "psnr": psnr, "kl": float(kl.detach())}


class AttentionGrounding:
    """Token-level grounding of the UNet's cross-attention, the ``L_token`` objective of TokenCompose
    (Wang et al., CVPR 2024, Sec. 3.2): for every word of an object's phrase (its colour, shape and size
    words), the share of that token's cross-attention map (softmax over tokens, mean over heads,
    normalised over pixels) that falls outside the object's mask, squared, averaged over words and over
    every cross-attention layer whose map is at least 4 x 4.

    Large pretrained models learn maps that sit on their objects from data at scale; this thin model,
    trained on denoising alone, did not (a subject's map lay on its own object in about half of the
    images, chance level), and attention guidance steers nothing through maps that do not localise.
    The maps are recomputed from each ``attn2``'s own ``to_q`` / ``to_k`` in a forward hook, so the
    host's attention code is untouched and the loss trains the same weights that sampling uses.
    """

    MIN_SIDE = 4

    def __init__(self, m: ShapeModel):
        self.m = m
        self.maps: list[torch.Tensor] = []
        self.active = False
        self._word_ids: dict[str, int] = {}
        self._handles = [mod.register_forward_hook(self._hook, with_kwargs=True)
                         for name, mod in m.unet.named_modules() if name.endswith("attn2")]
        if not self._handles:
            raise RuntimeError("the UNet has no cross-attention (attn2) modules to ground")

    def close(self) -> None:
        for h in self._handles:
            h.remove()

    def _hook(self, mod, args, kwargs, out):
        if not self.active:
            return
        x = args[0]
        context = kwargs.get("context", args[1] if len(args) > 1 else None)
        q, k = mod.to_q(x), mod.to_k(context)
        b, n, c = q.shape
        h = mod.heads
        d = c // h
        q = q.view(b, n, h, d).transpose(1, 2)
        k = k.view(b, -1, h, d).transpose(1, 2)
        self.maps.append((q @ k.transpose(-1, -2) * d ** -0.5).softmax(dim=-1).mean(dim=1))  # (b, n, tokens)

    def word_id(self, word: str) -> int:
        if word not in self._word_ids:
            ids = [int(t[0]) for t in self.m.tiny.clip.tokenize(word)["l"][0]]
            body = [i for i in ids[1:] if i != ids[-1]]  # between BOS and the EOS/padding
            if len(body) != 1:
                raise ValueError(f"grounding needs one token per vocabulary word; {word!r} is {body}")
            self._word_ids[word] = body[0]
        return self._word_ids[word]

    def targets(self, scenes, dropped: list[bool], side: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(item, token, mask)`` of every grounded word: batch index, token position in the 77, and
        the object's coverage on a ``side x side`` grid (``(K, side, side)``)."""
        items, tokens, masks = [], [], []
        for j, scene in enumerate(scenes):
            if dropped[j]:
                continue
            ids = [int(t[0]) for t in self.m.tiny.clip.tokenize(scene.caption)["l"][0]]
            cov = object_masks(scene, side)
            pos = 1
            for o, obj in enumerate(scene.objects):
                words = [obj.colour, obj.shape]
                if f"{obj.size} {obj.colour} {obj.shape}" in scene.caption:
                    words.insert(0, obj.size)
                for w in words:  # the object's words, in caption order after the previous object's
                    pos = ids.index(self.word_id(w), pos)
                    items.append(j)
                    tokens.append(pos)
                    masks.append(cov[o])
                    pos += 1
        if not items:
            return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), torch.zeros(0, side, side)
        return torch.tensor(items), torch.tensor(tokens), torch.from_numpy(np.stack(masks))

    def loss(self, scenes, dropped: list[bool], latent_side: int) -> tuple[torch.Tensor | None, float]:
        """The grounding loss of the maps recorded since the last call, and the mean share on the object."""
        maps, self.maps = self.maps, []
        items, tokens, masks = self.targets(scenes, dropped, latent_side)
        if items.numel() == 0:
            return None, float("nan")
        terms, shares = [], []
        for p in maps:
            side = math.isqrt(p.shape[1])
            if side * side != p.shape[1] or side < self.MIN_SIDE:
                continue
            mk = F.adaptive_avg_pool2d(masks, side).flatten(1).to(p)
            mk = mk / mk.amax(dim=1, keepdim=True).clamp_min(1e-6)  # the object's best cell counts fully
            a = p[items.to(p.device), :, tokens.to(p.device)]  # (K, n)
            share = (a / a.sum(dim=1, keepdim=True).clamp_min(1e-12) * mk).sum(dim=1)
            terms.append(((1.0 - share) ** 2).mean())
            shares.append(float(share.detach().mean()))
        if not terms:
            return None, float("nan")
        return torch.stack(terms).mean(), float(np.mean(shares))


def diffusion_loss(m: ShapeModel, images: torch.Tensor, scenes, g: torch.Generator,
                   grounding: AttentionGrounding | None = None, ground_weight: float = 0.0
                   ) -> tuple[torch.Tensor, dict]:
    with torch.no_grad():
        mean, _ = m.vae_moments(images)
        x0 = mean * SD15_LATENT_SCALE
    b = x0.shape[0]
    drop = (torch.rand(b, generator=g) < CAPTION_DROPOUT).tolist()
    captions = ["" if d else s.caption for s, d in zip(scenes, drop, strict=True)]
    context = m.encode_text(captions)
    t = torch.randint(0, m.alphas_cumprod.shape[0], (b,), generator=g)
    eps = torch.randn(x0.shape, generator=g).to(x0)
    a = m.alphas_cumprod[t.to(m.device)].view(b, 1, 1, 1)
    xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
    if grounding is not None:
        grounding.maps, grounding.active = [], True
    try:
        pred = m.unet(xt, t.to(m.device).float(), context=context)
    finally:
        if grounding is not None:
            grounding.active = False
    mse = F.mse_loss(pred, eps)
    info = {"mse": float(mse.detach())}
    loss = mse
    if grounding is not None:
        ground, share = grounding.loss(scenes, drop, x0.shape[-1])
        info["on_object"] = share
        if ground is not None and ground_weight > 0:
            loss = loss + ground_weight * ground
    return loss, info


# ----------------------------------------------------------------------------- state
def save_state(path: Path, m: ShapeModel, opt: torch.optim.Optimizer | None, meta: dict) -> None:
    """Weights of every module and the Adam moments, as safetensors (no pickle)."""
    from safetensors.torch import save_file

    tensors = {f"{name}.{k}": v.detach().float().cpu().contiguous()
               for name, mod in m.modules().items() for k, v in mod.state_dict().items()}
    if opt is not None:
        names = {id(p): n for name, mod in m.modules().items() for n, p in
                 ((f"{name}.{k}", p) for k, p in mod.named_parameters())}
        for p, st in opt.state.items():
            for key in ("exp_avg", "exp_avg_sq"):
                if key in st:
                    tensors[f"adam.{key}.{names[id(p)]}"] = st[key].detach().float().cpu().contiguous()
            meta["adam_step"] = float(st.get("step", 0))  # the current step: Adam's bias correction on resume
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"meta": json.dumps(meta)})
    os.replace(tmp, path)


def load_state(path: Path, m: ShapeModel, opt: torch.optim.Optimizer | None) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["meta"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    for name, mod in m.modules().items():
        prefix = f"{name}."
        sd = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        mod.load_state_dict(sd)
    if opt is not None:
        params = {n: p for name, mod in m.modules().items() for n, p in
                  ((f"{name}.{k}", p) for k, p in mod.named_parameters())}
        for n, p in params.items():
            if f"adam.exp_avg.{n}" in tensors and p.requires_grad:
                opt.state[p] = {"step": torch.tensor(meta.get("adam_step", 0.0)),
                                "exp_avg": tensors[f"adam.exp_avg.{n}"].to(p),
                                "exp_avg_sq": tensors[f"adam.exp_avg_sq.{n}"].to(p)}
    return meta


def load_checkpoint(path: Path, m: ShapeModel) -> dict:
    """The weights of an exported checkpoint (``--export``: fp16, SD1.5 key layout) into ``m``, strictly; returns
    the training record it carries. A cycle started from it has fresh Adam moments and fp32 weights rounded
    to fp16 once, so it does not match one resumed from the state the file was exported from."""
    from safetensors import safe_open

    from harness.tiny_models import CHECKPOINT_PREFIXES

    with safe_open(str(path), framework="pt") as f:
        record = json.loads((f.metadata() or {}).get("training", "{}"))
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    for name, mod in m.modules().items():
        prefix = CHECKPOINT_PREFIXES[name]
        mod.load_state_dict({k[len(prefix):]: v.float() for k, v in tensors.items() if k.startswith(prefix)})
    record.setdefault("steps", {})
    record.setdefault("seconds", {})
    record["initialised_from"] = path.name
    return record


def _new_cycle(meta: dict, stage: str) -> dict:
    """``meta`` for a new run of ``stage`` on weights that were trained before (fresh optimizer): a stage
    that ran before keeps its record in ``history``."""
    meta.pop("adam_step", None)
    if stage in meta["steps"]:
        meta.setdefault("history", []).append(
            {"stage": stage, "steps": meta["steps"][stage], "seconds": meta["seconds"].get(stage),
             "recipe": meta.get("recipe", {}).get(stage)})
    return meta


def rescale_latent(m: ShapeModel, seed: int, size: int, batch: int = 64) -> float:
    """Scale the VAE latent so that ``latent * 0.18215`` has unit standard deviation; returns the factor.

    ``quant_conv`` outputs (mean, logvar): the mean rows are multiplied by ``s`` and ``log s^2`` is
    added to the logvar bias; ``post_quant_conv``'s input weights are divided by ``s``. Decoding an
    encoded image is unchanged.
    """
    with torch.no_grad():
        images, _ = scene_batch(seed, "vae", 10 ** 9, batch, size)
        mean, _ = m.vae_moments(images.to(m.device))
        s = float(1.0 / (mean.std() * SD15_LATENT_SCALE))
        qc, pqc = m.vae.quant_conv, m.vae.post_quant_conv
        c = qc.weight.shape[0] // 2
        qc.weight[:c] *= s
        qc.bias[:c] *= s
        qc.bias[c:] += 2 * math.log(s)
        pqc.weight /= s
    return s


# ----------------------------------------------------------------------------- training loop
class TrainRefused(ValueError):
    """The call cannot run as asked (e.g. a diffusion stage without a trained VAE)."""


def train(args) -> int:
    try:
        summary = train_stage(args)
    except TrainRefused as e:
        print(f"train: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


def train_stage(args) -> dict:
    """Run (or continue) one stage as ``args`` say; the call's summary: the stage, the step it reached, the
    stage's seconds so far, the device, the median seconds per step of this call (its first two steps, which
    pay for allocation and kernel selection, left out) and the means of the last 50 steps' losses."""
    ensure_host()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    if device.type == "cuda" and args.tf32:  # TF32 matrix products and convolutions, cuDNN autotuning
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    m = ShapeModel(args.seed, device)
    stage = args.stage
    state_path = work / "state.safetensors"
    trainable = m.trainable(stage)
    params = [p for mod in trainable for p in mod.parameters()]
    groups = [{"params": list(mod.parameters()), "lr_scale": args.text_lr_scale if mod is m.text else 1.0}
              for mod in trainable]
    opt = torch.optim.AdamW(groups, lr=args.lr, weight_decay=0.0)
    meta = {"seed": args.seed, "size": args.size, "batch": args.batch, "steps": {}, "seconds": {}}
    if args.init_from:
        if args.resume or state_path.exists():
            raise TrainRefused(f"--init-from starts a new state, but "
                               f"{'--resume was given' if args.resume else f'{work} holds one'}")
        meta = _new_cycle(load_checkpoint(Path(args.init_from), m), stage)
    elif state_path.exists():
        meta = load_state(state_path, m, opt if args.resume else None)
        if not args.resume:  # a new stage (or a new cycle of one) starts from the saved weights, fresh optimizer
            opt = torch.optim.AdamW(groups, lr=args.lr, weight_decay=0.0)
            meta = _new_cycle(meta, stage)
    elif stage == "diffusion":
        raise TrainRefused("the diffusion stage needs a trained VAE (run --stage vae first)")
    start = int(meta["steps"].get(stage, 0)) if args.resume else 0
    meta["steps"][stage] = start
    recipe = {"steps": args.steps, "batch": args.batch, "size": args.size, "lr": args.lr, "warmup": args.warmup,
              "text_lr_scale": args.text_lr_scale, **({"ground": args.ground} if args.ground else {})}
    previous = meta.setdefault("recipe", {}).get(stage)
    if args.resume and previous is not None and previous != recipe:
        print(f"train: resuming {stage} with {recipe}, but it ran with {previous}: the result will not match "
              "an uninterrupted run", file=sys.stderr)
    meta["recipe"][stage] = recipe
    spent = float(meta["seconds"].get(stage, 0.0)) if args.resume else 0.0
    t0 = time.monotonic()
    deadline = t0 + args.minutes * 60.0
    step = start
    try:
        from tqdm import tqdm
        bar = tqdm(total=args.steps, initial=start, desc=stage, dynamic_ncols=True)
    except ImportError:  # pragma: no cover - tqdm comes with ComfyUI
        bar = None
    log = []
    grounding = AttentionGrounding(m) if stage == "diffusion" else None
    for p in m.modules().values():
        p.train(stage == "vae" and p is m.vae or stage == "diffusion" and p is not m.vae)
    stop = args.steps if args.until is None else min(args.until, args.steps)
    source = BatchSource(args.seed, stage, args.batch, args.size, args.workers)
    step_times = []
    while step < stop and time.monotonic() < deadline:
        step_start = time.monotonic()
        lr = args.lr * min(1.0, (step + 1) / args.warmup) * 0.5 * (1 + math.cos(math.pi * min(step / args.steps, 1.0)))
        for group in opt.param_groups:
            group["lr"] = lr * group["lr_scale"]
        g = _generator(args.seed, stage, step)
        images, scenes = source.get(step, stop)
        images = images.to(device)
        with OutOfPlaceResiduals():
            if stage == "vae":
                loss, info = vae_loss(m, images, g)
            else:
                loss, info = diffusion_loss(m, images, scenes, g, grounding, args.ground)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        log.append(info)
        step_times.append(time.monotonic() - step_start)
        if bar is not None:
            bar.update(1)
            bar.set_postfix({k: f"{v:.4g}" for k, v in info.items()})
        if step % args.save_every == 0:
            meta["steps"][stage] = step
            meta["seconds"][stage] = spent + time.monotonic() - t0
            save_state(state_path, m, opt, meta)
    if bar is not None:
        bar.close()
    source.close()
    if grounding is not None:
        grounding.close()
    meta["steps"][stage] = step
    meta["seconds"][stage] = spent + time.monotonic() - t0
    if stage == "vae" and step >= args.steps or stage == "vae" and args.finish:
        meta["latent_rescale"] = rescale_latent(m, args.seed, args.size)
    save_state(state_path, m, opt, meta)
    tail = log[-50:]
    summary = {k: float(np.nanmean([e[k] for e in tail])) for k in tail[0]} if tail else {}
    timed = step_times[2:] or step_times
    return {"stage": stage, "step": step, "seconds": round(meta["seconds"][stage], 1), "device": str(device),
            "seconds_per_step": float(np.median(timed)) if timed else None, "last50": summary}


def export(args) -> int:
    """The trained weights as one fp16 safetensors file in the layout of an SD1.5 checkpoint."""
    from safetensors.torch import save_file

    ensure_host()
    m = ShapeModel(args.seed, torch.device("cpu"))
    meta = load_state(Path(args.work) / "state.safetensors", m, None)
    from harness.tiny_models import CHECKPOINT_PREFIXES

    tensors = {}
    for name, mod in m.modules().items():
        for k, v in mod.state_dict().items():
            tensors[CHECKPOINT_PREFIXES[name] + k] = v.detach().to(torch.float16).contiguous()
    out = Path(args.export)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out), metadata={"training": json.dumps(meta), "architecture": "storm-tiny-sd15"})
    print(f"wrote {out} ({out.stat().st_size / 2 ** 20:.1f} MiB)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="train-run", help="folder of the training state")
    parser.add_argument("--stage", choices=STAGES)
    parser.add_argument("--export", help="write the fp16 checkpoint here and exit")
    parser.add_argument("--steps", type=int, default=4000, help="total steps of the stage (the cosine schedule spans them)")
    parser.add_argument("--until", type=int, default=None,
                        help="stop after this step (default: --steps); the schedule still spans --steps")
    parser.add_argument("--minutes", type=float, default=30.0, help="wall-time budget of this call")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=128, help="image side in pixels")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--text-lr-scale", type=float, default=1.0,
                        help="diffusion: the text encoder's learning rate as a multiple of --lr")
    parser.add_argument("--ground", type=float, default=0.0,
                        help="diffusion: weight of the cross-attention grounding loss (TokenCompose's L_token)")
    parser.add_argument("--save-every", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true", help="continue the stage from the saved state")
    parser.add_argument("--init-from", metavar="CHECKPOINT",
                        help="start a new state (in an empty --work) from an exported checkpoint's weights, e.g. "
                             "models/storm_shapes_sd15.safetensors, with a fresh optimizer")
    parser.add_argument("--finish", action="store_true", help="vae: rescale the latent even if steps remain")
    parser.add_argument("--cpu", action="store_true", help="ignore a GPU")
    parser.add_argument("--workers", type=int, default=0,
                        help="draw the scenes of the coming steps in this many processes (0: inline); same batches")
    parser.add_argument("--tf32", action="store_true",
                        help="on a GPU: TF32 matrix products and convolutions, cuDNN autotuning (faster, not bitwise "
                             "reproducible)")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.export:
        return export(args)
    if not args.stage:
        parser.error("give --stage or --export")
    return train(args)


if __name__ == "__main__":
    sys.exit(main())
