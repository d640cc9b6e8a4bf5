"""Self-test of the test harness against the real ComfyUI host (the ``COMFYUI_PATH`` tree).

Needs the repository root on ``sys.path`` (pytest ``pythonpath``); see ``harness/__init__.py``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from harness import host as host_mod
from harness.tiny_models import (
    ARCHS,
    attn2_layout,
    attn2_map_size,
    build_tiny,
    tiny_conditioning,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures"
LATENT_HW = (32, 32)  # 256x256 px


@pytest.fixture(scope="module")
def host():
    return host_mod.ensure_host()


def _sample(model, positive, negative, *, steps=4, cfg=7.0, seed=0):
    import comfy.sample

    latent = torch.zeros(1, 4, *LATENT_HW)
    noise = comfy.sample.prepare_noise(latent, seed)
    return comfy.sample.sample(model, noise, steps, cfg, "euler", "normal", positive, negative, latent,
                               seed=seed, disable_pbar=True)


# ------------------------------------------------------------------------------------ host


def test_host_matches_environment(host):
    assert host.path == Path(os.environ["COMFYUI_PATH"]).expanduser().resolve()
    assert host.version and host.version != "unknown" and len(host.version_tuple) == 3
    import comfy

    assert Path(list(comfy.__path__)[0]).resolve().is_relative_to(host.path)
    assert host_mod.ensure_host() is host


def test_load_pack_like_comfyui(host):
    pack = host_mod.load_pack()
    assert pack is host_mod.load_pack()
    assert pack.__package__ == host_mod.PACK_MODULE_NAME
    assert Path(pack.__file__).resolve() == host_mod.REPO_ROOT / "__init__.py"
    assert isinstance(pack.NODE_CLASS_MAPPINGS, dict)
    assert isinstance(pack.NODE_DISPLAY_NAME_MAPPINGS, dict)
    assert isinstance(pack.WEB_DIRECTORY, str)


# ------------------------------------------------------------------------------ tiny models


@pytest.mark.parametrize("inference", [False, True], ids=["grad-mode", "inference-mode"])
@pytest.mark.parametrize("arch", ARCHS)
def test_tiny_model_builds_and_samples(host, arch, inference):
    import comfy.model_patcher
    import comfy.sd

    mode = torch.inference_mode() if inference else torch.no_grad()
    with mode:
        tiny = build_tiny(arch, seed=0)
        positive = tiny_conditioning(tiny.clip, "a photo of a cat and a dog")
        negative = tiny_conditioning(tiny.clip, "")
        samples = _sample(tiny.model, positive, negative)
        image = tiny.vae.decode(samples)

    assert isinstance(tiny.model, comfy.model_patcher.ModelPatcher)
    assert isinstance(tiny.clip, comfy.sd.CLIP) and isinstance(tiny.vae, comfy.sd.VAE)
    tokens = tiny.clip.tokenize("a photo of a cat")
    assert set(tokens) == {"sd15": {"l"}, "sd2": {"h"}, "sdxl": {"g", "l"}}[arch]
    for encoder, batches in tokens.items():
        ids = [token for token, _weight in batches[0]]
        assert ids[:7] == [49406, 320, 1125, 539, 320, 2368, 49407]  # the real CLIP BPE vocabulary
        assert ids[-1] == (49407 if encoder == "l" else 0)  # OpenCLIP H/G pad with 0
    weight = next(tiny.model.model.diffusion_model.parameters())
    assert weight.is_inference() == inference
    cond, extra = positive[0]
    assert cond.shape == (1, 77, tiny.context_dim)
    if arch == "sdxl":
        assert extra["pooled_output"].shape == (1, tiny.pooled_dim)
    assert samples.shape == (1, 4, *LATENT_HW)
    assert torch.isfinite(samples).all()
    assert image.shape[-3:] == (8 * LATENT_HW[0], 8 * LATENT_HW[1], 3)
    assert torch.isfinite(image).all()


def test_tiny_weights_are_deterministic(host):
    with torch.no_grad():
        a, b, c = build_tiny("sd15", seed=3), build_tiny("sd15", seed=3), build_tiny("sd15", seed=4)
    sd_a = a.model.model.diffusion_model.state_dict()
    sd_b = b.model.model.diffusion_model.state_dict()
    sd_c = c.model.model.diffusion_model.state_dict()
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    assert not all(torch.equal(sd_a[k], sd_c[k]) for k in sd_a)
    assert all(torch.isfinite(v).all() for v in sd_a.values())


# real topology tables (the SD1.5 / SDXL configs in comfy/model_detection.py):
# (block, id) -> number of transformer blocks (depth)
SD1_LAYERS = {("input", 1): 1, ("input", 2): 1, ("input", 4): 1, ("input", 5): 1, ("input", 7): 1, ("input", 8): 1,
              ("middle", 0): 1, **{("output", i): 1 for i in range(3, 12)}}
SDXL_LAYERS = {("input", 4): 2, ("input", 5): 2, ("input", 7): 10, ("input", 8): 10, ("middle", 0): 10,
               ("output", 0): 10, ("output", 1): 10, ("output", 2): 10,
               ("output", 3): 2, ("output", 4): 2, ("output", 5): 2}
EXPECTED_LAYERS = {"sd15": SD1_LAYERS, "sd2": SD1_LAYERS, "sdxl": SDXL_LAYERS}
# UNet level of each block (0 = latent resolution); SD1/SD2 have 4 levels, SDXL 3
SD1_LEVEL = {**{("input", i): (i - 1) // 3 for i in (1, 2, 4, 5, 7, 8)}, ("middle", 0): 3,
             **{("output", i): 3 - i // 3 for i in range(12)}}
SDXL_LEVEL = {**{("input", i): (i - 1) // 3 for i in (4, 5, 7, 8)}, ("middle", 0): 2,
              **{("output", i): 2 - i // 3 for i in range(9)}}
# tiny heads per level: SD1.5 forces 8 heads; SD2/SDXL use a fixed dim_head (16) like the real 64
EXPECTED_HEADS = {"sd15": {0: 8, 1: 8, 2: 8, 3: 8}, "sd2": {0: 2, 1: 4, 2: 8, 3: 8}, "sdxl": {1: 4, 2: 8}}


@pytest.mark.parametrize("arch", ARCHS)
def test_attn2_keys_and_heads_match_real_topology(host, arch):
    from comfy.ldm.modules.attention import optimized_attention

    seen: dict[tuple, tuple] = {}

    def record(q, k, v, extra_options):
        block = tuple(extra_options["block"])
        key = (block[0], int(block[1]), int(extra_options["block_index"]))
        seen.setdefault(key, (extra_options["n_heads"], extra_options["dim_head"], q.shape[1], k.shape[1]))
        return optimized_attention(q, k, v, extra_options["n_heads"])

    with torch.inference_mode():
        tiny = build_tiny(arch)
        model = tiny.model.clone()
        for block, count in (("input", 12), ("middle", 1), ("output", 12)):
            for block_id in range(count):
                model.set_model_attn2_replace(record, block, block_id)
        positive = tiny_conditioning(tiny.clip, "a cat")
        samples = _sample(model, positive, tiny_conditioning(tiny.clip, ""), steps=1, cfg=1.0)
    assert torch.isfinite(samples).all()

    expected_keys = [(b, i, j) for (b, i), depth in EXPECTED_LAYERS[arch].items() for j in range(depth)]
    assert list(seen) == expected_keys
    assert [layer.key for layer in attn2_layout(arch)] == expected_keys
    levels = SDXL_LEVEL if arch == "sdxl" else SD1_LEVEL
    for layer in attn2_layout(arch):
        heads, dim_head, n_query, n_ctx = seen[layer.key]
        level = levels[layer.key[:2]]
        assert layer.level == level
        assert (heads, dim_head) == (layer.heads, layer.dim_head) == (EXPECTED_HEADS[arch][level], layer.dim_head)
        h, w = attn2_map_size(level, LATENT_HW)
        assert n_query == h * w
        assert n_ctx == 77
    if arch == "sd15":  # the Attend-and-Excite level: 8x8 maps at 256 px
        assert {k[:2] for k, v in seen.items() if v[2] == 64} == {("input", 7), ("input", 8), ("output", 3),
                                                                   ("output", 4), ("output", 5)}


def test_cross_attention_maps_are_not_degenerate(host):
    probs = []

    def record(q, k, v, extra_options):
        heads = extra_options["n_heads"]
        b, n, c = q.shape
        d = c // heads
        qh = q.view(b, n, heads, d).transpose(1, 2).float()
        kh = k.view(b, -1, heads, d).transpose(1, 2).float()
        p = torch.softmax(qh @ kh.transpose(-1, -2) * d**-0.5, dim=-1)
        probs.append(p)
        return (p @ v.view(b, -1, heads, d).transpose(1, 2).float()).transpose(1, 2).reshape(b, n, c).to(v.dtype)

    with torch.inference_mode():
        tiny = build_tiny("sd15")
        model = tiny.model.clone()
        for block_id in (7, 8):
            model.set_model_attn2_replace(record, "input", block_id)
        _sample(model, tiny_conditioning(tiny.clip, "a cat and a dog"), tiny_conditioning(tiny.clip, ""),
                steps=1, cfg=1.0)
    for p in probs:
        assert torch.isfinite(p).all()
        entropy = -(p * p.clamp_min(1e-12).log()).sum(-1).mean() / torch.log(torch.tensor(77.0))
        assert 0.05 < entropy < 0.9  # neither one-hot nor uniform
        token_maps = p.mean(1)[0, :, 1:6]  # (Nq, tokens) averaged over heads
        assert (token_maps.std(0) / token_maps.mean(0)).min() > 0.1  # varies over positions


# -------------------------------------------------------------------------------- workflows


@pytest.fixture(scope="module")
def runner(host):
    from harness import workflows

    return workflows.get_runner()


@pytest.fixture(scope="module")
def ui_workflow():
    return json.loads((FIXTURES / "tiny_txt2img_ui.json").read_text(encoding="utf-8"))


def test_widget_slots_skip_control_after_generate(runner):
    from harness.workflows import widget_slots

    slots = widget_slots(runner.node_defs()["KSampler"])
    assert slots == ["seed", None, "steps", "cfg", "sampler_name", "scheduler", "denoise"]
    assert widget_slots(runner.node_defs()["EmptyLatentImage"]) == ["width", "height", "batch_size"]


def test_widgets_values_by_name_are_what_ui_to_api_reads_back(runner):
    from harness.workflows import WorkflowError, ui_to_api, widget_defaults, widget_slots, widgets_values

    defs = runner.node_defs()["KSampler"]
    values = widgets_values(defs, {"seed": 5, "steps": 3})
    assert values[:3] == [5, "fixed", 3] and len(values) == len(widget_slots(defs))
    node = {"id": 1, "type": "KSampler", "inputs": [], "outputs": [], "widgets_values": values}
    inputs = ui_to_api({"nodes": [node], "links": []}, {"KSampler": defs})["1"]["inputs"]
    assert inputs["seed"] == 5 and inputs["steps"] == 3 and inputs["cfg"] == widget_defaults(defs)["cfg"]
    assert inputs["sampler_name"] in defs["required"]["sampler_name"][0]
    with pytest.raises(WorkflowError, match="stepz"):
        widgets_values(defs, {"stepz": 3})


def test_ui_to_api_like_graph_to_prompt(runner, ui_workflow):
    from harness.workflows import substitute_checkpoints, ui_to_api

    prompt = ui_to_api(ui_workflow, runner.node_defs())
    stripped = {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in prompt.items()}
    assert stripped == {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sd15.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 256, "height": 256, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo of a cat and a dog", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": 123, "steps": 4, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
            "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "storm_selftest", "images": ["8", 0]}},
    }
    assert prompt["6"]["_meta"] == {"title": "Positive prompt"}
    tiny = substitute_checkpoints(prompt)
    assert tiny["4"]["class_type"] == "STORMTest_TinyCheckpointLoader"
    assert prompt["4"]["class_type"] == "CheckpointLoaderSimple"  # input not mutated
    assert tiny["4"]["inputs"] == {"ckpt_name": "tiny_sd15.safetensors"}


def test_substitute_checkpoints_can_pick_the_shape_model():
    from harness.tiny_models import SHAPE_MODEL
    from harness.workflows import substitute_checkpoints

    prompt = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "v1-5-pruned.safetensors"}},
              "2": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"}}}
    out = substitute_checkpoints(prompt, shape_model=True)
    assert out["1"]["inputs"] == {"ckpt_name": SHAPE_MODEL.name}  # SD1.5: the trained shape model
    assert out["2"]["inputs"] == {"ckpt_name": "sd_xl_base_1.0.safetensors"}  # SDXL: random weights, as before
    assert substitute_checkpoints(prompt)["1"]["inputs"] == {"ckpt_name": "v1-5-pruned.safetensors"}


def test_ui_to_api_rejects_unknown_node(runner, ui_workflow):
    from harness.workflows import UnknownNodeTypeError, ui_to_api

    broken = json.loads(json.dumps(ui_workflow))
    broken["nodes"][0]["type"] = "NoSuchNode_XYZ"
    with pytest.raises(UnknownNodeTypeError, match="NoSuchNode_XYZ"):
        ui_to_api(broken, runner.node_defs())


def test_ui_workflow_executes_and_requeues_from_cache(runner, ui_workflow):
    from harness.workflows import run_ui_workflow, substitute_checkpoints, ui_to_api

    first = run_ui_workflow(ui_workflow)
    first.raise_for_error()
    assert set(first.executed_nodes) == {"3", "4", "5", "6", "7", "8", "9"}
    [png] = first.file_paths("9")
    assert png.suffix == ".png" and png.is_file() and png.stat().st_size > 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    again = run_ui_workflow(ui_workflow)  # re-queue: everything is cached, as in a server
    again.raise_for_error()
    assert again.executed_nodes == []
    assert again.outputs_ui["9"]["images"][0]["filename"] == png.name

    prompt = substitute_checkpoints(ui_to_api(ui_workflow, runner.node_defs()))
    prompt["3"]["inputs"]["seed"] = 7
    changed = runner.run(prompt)
    changed.raise_for_error()
    assert set(changed.executed_nodes) == {"3", "8", "9"}


def test_validation_error_is_reported_not_raised(runner, ui_workflow):
    from harness.workflows import substitute_checkpoints, ui_to_api

    prompt = substitute_checkpoints(ui_to_api(ui_workflow, runner.node_defs()))
    prompt["3"]["inputs"]["sampler_name"] = "no_such_sampler"
    result = runner.run(prompt)
    assert not result.success
    assert "sampler_name" in result.error and "no_such_sampler" in result.error
    assert "3" in result.node_errors
