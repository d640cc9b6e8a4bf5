"""Each example workflow, as the frontend would submit it, runs through ComfyUI's executor.

For CPU CI the image size and step count are reduced (``CPU_PROFILE``); every other widget value
is the workflow's own. The tiny checkpoint substitutes for ``CheckpointLoaderSimple``.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness.workflows import (
    CPU_PROFILE,
    EXAMPLES,
    TINY_LOADER,
    example_files,
    example_key,
    example_path,
    load_ui_workflow,
    substitute_checkpoints,
    ui_to_api,
)

WORKFLOWS = example_files()
#: per class_type: inputs overridden so a run takes seconds on 2 CPU cores
def ci_prompt(path: Path, runner) -> dict:
    prompt = substitute_checkpoints(ui_to_api(load_ui_workflow(path), runner.node_defs()))
    for node in prompt.values():
        node["inputs"].update(CPU_PROFILE.get(node["class_type"], {}))
    return prompt


def test_every_example_has_a_builder_a_descriptive_file_and_a_thumbnail():
    """The files are exactly the examples the builder writes; the template browser shows a file's name as
    the example's title (and description), so each name says what it does (a method, a dash, a phrase)
    in at most 32 characters, what a card shows before cutting it short (frontend 1.58), and each has
    its thumbnail beside it."""
    from scripts import build_example_workflows as build

    assert {e.__name__ for e in build.EXAMPLES} == set(EXAMPLES)
    assert sorted(p.stem for p in WORKFLOWS) == sorted(EXAMPLES.values())
    for path in WORKFLOWS:
        method, _, phrase = path.stem.partition(" - ")
        assert method and len(phrase.split()) >= 2 and len(path.stem) <= 32, path.stem
        assert path.with_suffix(".jpg").is_file(), path.stem
        assert example_path(example_key(path)) == path


@pytest.mark.parametrize("path", WORKFLOWS, ids=[example_key(p) for p in WORKFLOWS])
def test_workflow_is_valid_ui_format(path):
    wf = json.loads(path.read_text())
    assert {"nodes", "links", "version", "last_node_id", "last_link_id"} <= set(wf)
    ids = {n["id"] for n in wf["nodes"]}
    assert len(ids) == len(wf["nodes"]) and max(ids) <= wf["last_node_id"]
    by_id = {n["id"]: n for n in wf["nodes"]}
    for link_id, src, src_slot, dst, dst_slot, type_ in wf["links"]:
        assert link_id <= wf["last_link_id"]
        assert link_id in by_id[src]["outputs"][src_slot]["links"]
        assert by_id[dst]["inputs"][dst_slot]["link"] == link_id
        assert by_id[src]["outputs"][src_slot]["type"] == type_


@pytest.mark.parametrize("path", WORKFLOWS, ids=[example_key(p) for p in WORKFLOWS])
def test_workflow_runs_in_the_host_executor(path, runner):
    prompt = ci_prompt(path, runner)
    result = runner.run(prompt)
    result.raise_for_error()
    assert any(n["class_type"].startswith("STORM_") for n in prompt.values())
    assert all(node_id in result.executed_nodes for node_id, n in prompt.items() if n["class_type"].startswith("STORM_"))
    saved = [p for node_id in result.outputs_ui for p in result.file_paths(node_id)]
    assert saved and all(p.exists() for p in saved)
    for p in saved:
        assert np.asarray(Image.open(p)).std() > 0  # not a blank image
    for node_id, node in prompt.items():
        if node["class_type"] == "STORM_AttentionHeatmap":  # the guidance log reaches the UI
            assert result.outputs_ui[node_id]["storm_log"][0]


def _heatmap_node(prompt):
    return next(i for i, n in prompt.items() if n["class_type"] == "STORM_AttentionHeatmap")


def _sampler_node(prompt):
    return next(i for i, n in prompt.items() if "seed" in n["inputs"] or "noise_seed" in n["inputs"])


def test_requeue_with_a_new_seed_never_shows_stale_maps(runner):
    path = example_path("attend_and_excite")
    prompt = ci_prompt(path, runner)
    heat, sampler = _heatmap_node(prompt), _sampler_node(prompt)
    key = "seed" if "seed" in prompt[sampler]["inputs"] else "noise_seed"

    first = runner.run(prompt)
    first.raise_for_error()
    prompt[sampler]["inputs"][key] += 1
    second = runner.run(prompt)  # re-queued: loaders and prompt encoding come from the cache
    second.raise_for_error()
    assert "1" in second.cached_nodes and sampler in second.executed_nodes and heat in second.executed_nodes

    runner.reset_cache()
    fresh = runner.run(prompt)  # the same seed from scratch
    fresh.raise_for_error()

    def heatmaps(result):
        return [np.asarray(Image.open(p)) for p in result.file_paths(heat)]

    def log(result):
        return result.outputs_ui[heat]["storm_log"][0]

    assert log(second) == log(fresh) and log(second) != log(first)
    assert all(np.array_equal(a, b) for a, b in zip(heatmaps(second), heatmaps(fresh), strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(heatmaps(second), heatmaps(first), strict=True))


def test_paid_heatmap_shows_the_frame_select_frame_picked(runner):
    prompt = ci_prompt(example_path("paid_composition"), runner)
    pick = next(i for i, n in prompt.items() if n["class_type"] == "STORM_SelectFrame")
    assert prompt[_heatmap_node(prompt)]["inputs"]["batch_index"] == [pick, 1]


def test_image_morph_example_as_image_control(runner):
    """The image morph example, and the same with the checkpoint's MODEL (no IPAdapter) into model_a, as the
    example's note says for image-control: both run; the first frame changes (picture A's model -> the plain
    checkpoint), the last (picture B's model, exactly) does not."""
    prompt = ci_prompt(example_path("aid_image_morph"), runner)
    morph = next(i for i, n in prompt.items() if n["class_type"] == "STORM_ImageMorph")
    saver = next(i for i, n in prompt.items() if n["class_type"] == "SaveImage")
    loader = next(i for i, n in prompt.items() if n["class_type"] == TINY_LOADER)
    assert {n["class_type"] for n in prompt.values()} >= {"STORMTest_IPAdapter", "STORMTest_LoadImage"}
    prompt[morph]["inputs"]["frames"] = 3

    def frames(result):
        result.raise_for_error()
        return [np.asarray(Image.open(p)).astype(np.float64) for p in result.file_paths(saver)]

    morphed = frames(runner.run(prompt))
    prompt[morph]["inputs"]["model_a"] = [loader, 0]
    control = frames(runner.run(prompt))
    assert len(morphed) == len(control) == 3
    assert np.abs(morphed[0] - control[0]).mean() > 1.0
    assert np.abs(morphed[-1] - control[-1]).max() <= 1.0
