"""STORM Attention Heatmap: outputs, run matching (never stale maps), options and errors."""

import base64
import io

import comfy.sample
import comfy.samplers
import numpy as np
import pytest
import torch
from PIL import Image

from harness.nodeutil import node_output, node_ui

LAYERS = "1/32 res: down+up (A&E)"


@pytest.fixture(scope="module")
def prompt(cat_and_dog):
    return cat_and_dog(thresholds="0:0.05", max_refine_iters=2)


def run_custom(model, sampler, pos, neg, seed, steps=4, hw=(16, 24)):
    latent = torch.zeros(1, 4, *hw)
    sigmas = comfy.samplers.KSampler(model, steps=steps, device=model.load_device, sampler="euler",
                                     scheduler="normal", model_options=model.model_options).sigmas
    with torch.inference_mode():
        return {"samples": comfy.sample.sample_custom(model, comfy.sample.prepare_noise(latent, seed), 7.5, sampler,
                                                      sigmas, pos, neg, latent, disable_pbar=True, seed=seed)}


def render(nodes, attention, latent, tokens, **kw):
    with torch.inference_mode():
        return nodes["STORM_AttentionHeatmap"]().render(attention=attention, latent=latent, tokens=tokens,
                                                        show=kw.pop("show", "subjects"),
                                                        view=kw.pop("view", "attention"), **kw)


def test_outputs_grid_overlay_mask_and_log(pack, nodes, prompt):
    tm, tokens, pos, neg, guidance = prompt
    with torch.inference_mode():
        sampler, attention = nodes["STORM_GuidedSampler"]().build(guidance=guidance, sampler_name="euler",
                                                                  attention_layers=LAYERS)
    latent = run_custom(tm.model, sampler, pos, neg, seed=1)
    image = torch.rand(1, 128, 192, 3)
    out = render(nodes, attention, latent, tokens, image=image)
    grid, overlay, mask, log = node_output(out)
    assert grid.shape == (1, 128 + 18, 2 * 192 + 4, 3)
    assert overlay.shape == (2, 128, 192, 3) and 0 <= overlay.min() and overlay.max() <= 1
    assert mask.shape == (2, 128, 192)
    assert torch.allclose(mask.flatten(1).amax(1), torch.ones(2)) and mask.min() >= 0
    legend, first = log.splitlines()[:2]
    assert "before the step's update" in legend
    assert first.startswith("step 0 (sigma") and "attend_excite" in first and first.endswith("; updated")
    ui = node_ui(out)
    assert ui["storm_log"] == [log] and ui["images"][0]["type"] == "temp"
    # the per-step maps of the heatmap view: K tokens x S evaluations x h x w bytes, each map up to 255
    maps = ui["storm_maps"][0]
    steps = len(attention.latest().step_maps)
    data = np.frombuffer(base64.b64decode(maps["data"]), np.uint8).reshape(2, steps, maps["height"], maps["width"])
    assert maps["labels"] == ["cat", "dog"] and len(maps["sigmas"]) == steps > 1
    assert (data.reshape(2, steps, -1).max(-1) == 255).all()
    # the view's colours: the grid image's colormap, its stops interpolated linearly as web/storm.js does
    stops = torch.tensor(maps["colormap"])
    values = torch.linspace(0, 1, 101)
    x = values * (len(stops) - 1)
    lo = x.floor().long().clamp(max=len(stops) - 2)
    as_drawn = stops[lo] * (1 - (x - lo))[:, None] + stops[lo + 1] * (x - lo)[:, None]
    assert torch.allclose(as_drawn, pack.nodes.heatmap_render.colorize(values), atol=1e-4)
    mean = torch.from_numpy(data.astype(np.float32)).mean(1).flatten(1)  # the view's "mean" ~ the mask output
    small = torch.nn.functional.interpolate(mask[:, None], size=(maps["height"], maps["width"]), mode="area")
    for a, b in zip(mean, small.flatten(1), strict=True):
        assert torch.corrcoef(torch.stack([a, b]))[0, 1] > 0.8
    # the view draws the maps over the decoded image: it travels as a PNG of the image's own pixels
    assert (maps["image_width"], maps["image_height"], maps["opacity"]) == (192, 128, 0.6)
    prefix = "data:image/png;base64,"
    assert maps["image"].startswith(prefix)
    with Image.open(io.BytesIO(base64.b64decode(maps["image"][len(prefix):]))) as png:
        sent = np.asarray(png.convert("RGB"))
    assert np.abs(sent.astype(int) - (image[0].numpy() * 255).round().astype(int)).max() <= 1
    words_out = render(nodes, attention, latent, tokens, show="all words", view="attend-and-excite")
    assert "image" not in node_ui(words_out)["storm_maps"][0]  # no image input: the maps alone
    words = node_output(words_out)
    assert words[2].shape[0] == 5  # a cat and a dog
    assert words[0].shape[-2] == 5 * 192 + 4 * 4  # no image: the latent's size in pixels (16x24 latent)


def test_each_latent_shows_the_maps_of_its_own_run(nodes, prompt):
    tm, tokens, pos, neg, guidance = prompt
    with torch.inference_mode():
        sampler, attention = nodes["STORM_GuidedSampler"]().build(guidance=guidance, sampler_name="euler",
                                                                  attention_layers=LAYERS)
    first = run_custom(tm.model, sampler, pos, neg, seed=1)
    second = run_custom(tm.model, sampler, pos, neg, seed=2)  # re-queued with a new seed
    masks_first = node_output(render(nodes, attention, first, tokens))[2]
    masks_second = node_output(render(nodes, attention, second, tokens))[2]
    assert not torch.allclose(masks_first, masks_second)
    # the same as a fresh sampler that only ever ran seed 2: no mixing of runs
    with torch.inference_mode():
        fresh_sampler, fresh = nodes["STORM_GuidedSampler"]().build(guidance=guidance, sampler_name="euler",
                                                                    attention_layers=LAYERS)
    fresh_latent = run_custom(tm.model, fresh_sampler, pos, neg, seed=2)
    assert torch.equal(fresh_latent["samples"], second["samples"])
    assert torch.equal(node_output(render(nodes, fresh, fresh_latent, tokens))[2], masks_second)
    # a latent no recorded run produced is refused instead of showing stale maps
    foreign = {"samples": torch.randn_like(first["samples"])}
    with pytest.raises(Exception, match="input 'latent'.*produced this latent"):
        render(nodes, attention, foreign, tokens)
    latest = node_output(render(nodes, attention, foreign, tokens, run="latest run"))[2]
    assert torch.equal(latest, masks_second)


def test_recorder_with_the_core_ksampler_path(nodes, prompt):
    tm, tokens, pos, neg, _ = prompt
    with torch.inference_mode():
        model, attention = nodes["STORM_AttentionRecorder"]().patch(model=tm.model, attention_layers=LAYERS)
        noise = comfy.sample.prepare_noise(torch.zeros(1, 4, 16, 16), 4)
        samples = comfy.sample.sample(model, noise, 4, 7.5, "dpmpp_2m", "karras", pos, neg,
                                      torch.zeros(1, 4, 16, 16), seed=4, disable_pbar=True)
    grid, _, mask, log = node_output(render(nodes, attention, {"samples": samples}, tokens))
    assert mask.shape == (2, 128, 128) and log == "no guided steps in this run"


def test_bad_batch_index_names_the_input(nodes, prompt):
    tm, tokens, pos, neg, guidance = prompt
    with torch.inference_mode():
        sampler, attention = nodes["STORM_GuidedSampler"]().build(guidance=guidance, sampler_name="euler",
                                                                  attention_layers=LAYERS)
    latent = run_custom(tm.model, sampler, pos, neg, seed=1)
    with pytest.raises(Exception, match="STORM Attention Heatmap: input 'batch_index'"):
        render(nodes, attention, latent, tokens, batch_index=3)
