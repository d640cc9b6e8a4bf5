"""The shape-world model tooling end to end, in a few steps: train (both stages, resumed), export,
load into the host's objects, sample. The trained model itself is judged by scripts/shape_benchmark."""

import json

import pytest
import torch
from safetensors import safe_open

from scripts import train_shape_model as train  # noqa: F401  (the scripts package also provides harness)
from scripts.probe_text_dependence import TIMESTEPS, text_dependence


def run(*args):
    assert train.main(list(args)) == 0


def test_train_resume_export_and_load(tmp_path, nodes):
    from harness.nodeutil import call_node
    from harness.tiny_models import load_trained

    work = str(tmp_path / "run")
    common = ["--work", work, "--batch", "2", "--size", "64", "--warmup", "1", "--cpu"]
    run("--stage", "vae", "--steps", "2", "--save-every", "1", *common)
    run("--stage", "diffusion", "--steps", "1", "--save-every", "1", *common)
    run("--stage", "diffusion", "--steps", "2", "--save-every", "1", "--resume", *common)
    # a longer schedule, resumed, stopped before its end (how the shipped model's second cycle ran)
    run("--stage", "diffusion", "--steps", "5", "--until", "3", "--save-every", "1", "--resume", *common)
    with safe_open(str(tmp_path / "run" / "state.safetensors"), framework="pt") as f:
        meta = json.loads(f.metadata()["meta"])
    assert meta["steps"] == {"vae": 2, "diffusion": 3} and meta["latent_rescale"] > 0
    assert meta["adam_step"] == 3  # the resumed optimizer continues Adam's bias correction at its own step
    assert meta["recipe"]["diffusion"]["text_lr_scale"] == 1.0 and meta["recipe"]["diffusion"]["steps"] == 5
    out = tmp_path / "model.safetensors"
    run("--export", str(out), "--work", work)
    with safe_open(str(out), framework="pt") as f:
        keys = list(f.keys())
        assert {f.get_tensor(k).dtype for k in keys[:5]} == {torch.float16}
    assert any(k.startswith("model.diffusion_model.") for k in keys)
    assert any(k.startswith("cond_stage_model.") for k in keys)
    assert any(k.startswith("first_stage_model.") for k in keys)
    # a new cycle from the exported file (the state is not in git): its weights, its record, a fresh optimizer
    again = str(tmp_path / "again")
    assert train.main(["--stage", "diffusion", "--steps", "1", "--init-from", str(out), *common]) == 2  # a state exists
    run("--stage", "diffusion", "--steps", "1", "--init-from", str(out), *common[2:], "--work", again)
    with safe_open(str(tmp_path / "again" / "state.safetensors"), framework="pt") as f, \
            safe_open(str(out), framework="pt") as exported:
        meta = json.loads(f.metadata()["meta"])
        vae_key = next(k for k in exported.keys() if k.startswith("first_stage_model."))  # frozen in this stage
        assert torch.equal(f.get_tensor("vae." + vae_key[len("first_stage_model."):]),
                           exported.get_tensor(vae_key).float())
    assert meta["steps"] == {"vae": 2, "diffusion": 1} and meta["initialised_from"] == "model.safetensors"
    assert meta["history"][-1]["steps"] == 3 and meta["adam_step"] == 1 and meta["latent_rescale"] > 0
    with torch.inference_mode():
        tiny = load_trained(out)
        tokens, positive, _ = call_node(nodes["STORM_SubjectTokens"], clip=tiny.clip, text="a red circle",
                                        subjects="circle")
        (guidance,) = call_node(nodes["STORM_AttendAndExcite"], tokens=tokens)
        latent, _ = call_node(nodes["STORM_GuidedKSampler"], model=tiny.model, guidance=guidance, seed=0, steps=2,
                              positive=positive, negative=positive,
                              latent_image={"samples": torch.zeros(1, 4, 8, 8)})
        image = tiny.vae.decode(latent["samples"])
    assert image.shape == (1, 64, 64, 3) and torch.isfinite(image).all()
    dependence = text_dependence(str(out), batch=2)
    assert set(dependence) == set(TIMESTEPS)
    assert all(0.0 < v < float("inf") for pair in dependence.values() for v in pair)


def test_grounding_loss_targets_each_objects_words_and_reaches_the_maps():
    """The grounding loss (``--ground``) takes the map of each word of an object's phrase (size, colour,
    shape), scores the share of it inside that object's mask, and its gradient reaches the
    cross-attention weights that sampling uses."""
    import numpy as np

    from harness.shape_world import object_masks, sample_scene

    m = train.ShapeModel(0, torch.device("cpu"))
    grounding = train.AttentionGrounding(m)
    rng = np.random.default_rng(3)
    scenes = [sample_scene(rng, 64, size_word_prob=0.5) for _ in range(12)]
    dropped = [i == 4 for i in range(12)]
    items, tokens, masks = grounding.targets(scenes, dropped, 8)
    assert 4 not in items.tolist()
    for j, scene in enumerate(scenes):  # positions from the caption's own words (CLIP: BOS, then a token a word)
        if dropped[j]:
            continue
        words = scene.caption.replace(",", " ,").split()
        mine = [int(t) for i, t in zip(items.tolist(), tokens.tolist(), strict=True) if i == j]
        expected, start = [], 0
        for obj in scene.objects:
            phrase = [w for w in (obj.size, obj.colour, obj.shape) if w != obj.size or
                      f"{obj.size} {obj.colour} {obj.shape}" in scene.caption]
            for w in phrase:
                start = words.index(w, start) + 1
                expected.append(start)  # word index + 1 = token position after BOS
        assert mine == expected, (scene.caption, mine, expected)
    cover = [object_masks(s, 8)[o] for s, d in zip(scenes, dropped, strict=True) if not d
             for o, obj in enumerate(s.objects) for _ in range(2 + (f"{obj.size} {obj.colour}" in s.caption))]
    assert torch.equal(masks, torch.from_numpy(np.stack(cover)))

    # a map on the cells each object covers most scores 1; a flat map scores the object's share of the canvas
    perfect = torch.full((12, 64, 77), 1e-9)
    core = masks.flatten(1) == masks.flatten(1).amax(1, keepdim=True)
    perfect[items, :, tokens] = core.float()
    grounding.maps = [perfect, torch.full((12, 64, 77), 1.0 / 77)]
    loss, share = grounding.loss(scenes, dropped, 8)
    peak = (masks / masks.flatten(1).amax(1)[:, None, None]).flatten(1)
    flat = float((peak.sum(1) / 64).mean())
    assert share == pytest.approx((1.0 + flat) / 2, abs=1e-4) and flat < 0.3
    assert float(loss) == pytest.approx((0.0 + float(((1 - peak.sum(1) / 64) ** 2).mean())) / 2, abs=1e-4)

    # the gradient of the loss on the UNet's own maps reaches to_q / to_k of the cross-attention
    from scripts.train_shape_model import scene_batch

    images, batch = scene_batch(0, "diffusion", 0, 4, 64)
    m.trainable("diffusion")
    with train.OutOfPlaceResiduals():
        loss, info = train.diffusion_loss(m, images, batch, torch.Generator().manual_seed(0), grounding, 1.0)
    loss.backward()
    attn2 = [mod for name, mod in m.unet.named_modules() if name.endswith("attn2")]
    assert 0.0 < info["on_object"] < 1.0
    assert all(a.to_k.weight.grad is not None for a in attn2[:1])
    assert sum(float(a.to_k.weight.grad.abs().sum()) for a in attn2 if a.to_k.weight.grad is not None) > 0
    grounding.close()
