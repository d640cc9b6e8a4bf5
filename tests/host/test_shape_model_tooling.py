"""The shape-world model tooling end to end, in a few steps: train (both stages, resumed), export,
load into the host's objects, sample. The trained model itself is judged by scripts/shape_benchmark."""

import json

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
