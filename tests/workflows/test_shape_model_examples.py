"""The README's first command: every SD1.5 example workflow on the shipped shape model draws shapes.

``scripts.run_example`` swaps the checkpoint for ``models/storm_shapes_sd15.safetensors`` and each
workflow's prompts for shape prompts of the same construction (an image prompt's pictures for shape pictures);
the saved image must show at least one of the prompted objects (colour and shape, read back by ``harness.shape_eval``) and the heatmaps and
guidance log must be written. Whether the methods *improve* the images is measured by
``tests/host/test_shape_model.py`` on many noises, not on one.
"""

import json

import numpy as np
import pytest
from PIL import Image

from harness.image_adapter import TEST_IMAGES
from harness.shape_eval import clutter, detect, is_clean
from harness.shape_world import parse_caption
from harness.workflows import checkpoint_archs, example_files, example_key
from scripts import run_example


def _sd15(path) -> bool:
    archs = checkpoint_archs(path)
    return bool(archs) and all(arch == "sd15" for arch in archs)


#: examples whose method, at its default settings, turns the shape model's image into coloured noise
#: (README, "Proof on images": STORM's transport steps and refinement at the paper's defaults)
SPOILED = {"storm_spatial"}

SD15_WORKFLOWS = [p for p in example_files() if _sd15(p)]


def test_the_sd15_examples_are_found():
    assert len(SD15_WORKFLOWS) >= 5


@pytest.mark.parametrize("path", SD15_WORKFLOWS, ids=[example_key(p) for p in SD15_WORKFLOWS])
def test_example_on_the_shape_model_draws_the_prompted_shapes(path, tmp_path, runner):
    assert run_example.main([str(tmp_path), "--workflow", str(path)]) == 0
    prompt = json.loads((tmp_path / "prompt_api.json").read_text())
    texts = [v for n in prompt.values() for k, v in n["inputs"].items() if k == "text" and isinstance(v, str)]
    assert texts and set(texts) <= set(run_example.SHAPE_PROMPTS.values())  # every prompt was replaced
    asked = {obj for t in texts if t for obj in parse_caption(t).objects}
    pictures = [TEST_IMAGES[n["inputs"]["image"]] for n in prompt.values() if n["class_type"] == "STORMTest_LoadImage"]
    asked |= {obj for caption in pictures for obj in parse_caption(caption).objects}  # image prompts' objects
    savers = [node_id for node_id, n in prompt.items() if n["class_type"] == "SaveImage"
              and prompt[n["inputs"]["images"][0]]["class_type"] != "STORM_AttentionHeatmap"]
    assert savers
    colours = {colour for colour, _ in asked}
    for node_id in savers:  # each saved image (batch: at least one of its frames) shows a prompted colour
        images = sorted(tmp_path.glob(f"SaveImage_node{node_id}_*.png"))
        found, messy = set(), []
        for image in images:
            pixels = np.asarray(Image.open(image).convert("RGB"))
            assert pixels.shape[:2] == (128, 128)
            detections = detect(pixels)
            found |= {(d.colour, d.shape) for d in detections}
            if not is_clean(detections, clutter(pixels, detections)):
                messy.append(image.name)
        assert images and {c for c, _ in found} & colours, f"node {node_id}: found {sorted(found)}, prompted {sorted(asked)}"
        if example_key(path) not in SPOILED:
            assert not messy, f"node {node_id}: not a clean image: {messy}"
    if any(n["class_type"] == "STORM_AttentionHeatmap" for n in prompt.values()):
        assert list(tmp_path.glob("heatmaps_node*.png"))


def test_real_pictures_example_gives_the_pictures_back(tmp_path, runner):
    """AID from real pictures: the first and last frames, started from the inverted pictures, are the pictures (within
    a few levels of 255), and a frame between differs from both pictures: the inversion graph of the example is wired right
    (each picture to its own endpoint) and its settings invert exactly."""
    from harness.tiny_nodes import STORMTest_LoadImage
    from harness.workflows import example_path

    assert run_example.main([str(tmp_path), "--workflow", str(example_path("aid_real_images"))]) == 0
    prompt = json.loads((tmp_path / "prompt_api.json").read_text())
    saver = next(node_id for node_id, n in prompt.items() if n["class_type"] == "SaveImage")
    frames = [np.asarray(Image.open(p).convert("RGB"), dtype=np.float64)
              for p in sorted(tmp_path.glob(f"SaveImage_node{saver}_*.png"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))]
    pictures = [STORMTest_LoadImage().load_image(name)[0][0].numpy() * 255 for name in ("cat.png", "dog.png")]
    first, last = (float(np.abs(f - p).mean()) for f, p in zip((frames[0], frames[-1]), pictures, strict=True))
    assert first < 4.0 and last < 4.0, (first, last)
    between = max(min(float(np.abs(f - p).mean()) for p in pictures) for f in frames[1:-1])
    assert between > 4 * max(first, last), (between, first, last)
