"""The shipped shape model has learned its world, and guidance reaches its images without spoiling them.

``models/storm_shapes_sd15.safetensors`` (a tiny SD1.5-topology model trained on the shape world) is
sampled through the pack's own STORM Guided KSampler by ``scripts.shape_benchmark.Runner`` (the code
the benchmark uses), on one fixed batch of initial noises per prompt, the same for every method (the
first 32 of the benchmark's 64); the decoded images are read back by ``harness.shape_eval``.

What is asserted is what the benchmark supports (README, "Proof on images"): the model draws what it
is asked, far above chance and far above a random-weight model; Attend-and-Excite's gradient step
reaches the image on the same noises, keeps it clean and does not lower the success rate. The
benchmark shows **no** method raising a success rate on this model at the papers' defaults, and the
refinement loops and STORM's transport steps turn many images into coloured noise; those claims are
therefore not asserted here (a test that asserted them would fail). The margins allow for the two
hosts sampling a few images differently.
"""

import functools

import numpy as np
import pytest
import torch
from safetensors import safe_open

from harness.shape_world import prompt_sets
from harness.tiny_models import SHAPE_MODEL, SHAPE_MODEL_SIZE

#: sampling settings of the benchmark's table
STEPS, CFG, SAMPLER = 20, 5.0, "euler"
NOISES = 32  # initial noises per prompt (one batch, seed 0)
PROMPTS = 1  # the first prompt of each of the benchmark's sets
RED_DRAWN_MIN = 0.75  # measured 30/32 (0.94); about three standard errors below
SINGLE_SUCCESS_MIN = 5 / 32  # measured 10/32; a guess of colour and shape is right 1 time in 12
IMAGE_CHANGE_MIN = 1.0  # mean |pixel difference| (of 255) from plain on the same noise; measured 2.9
SLACK = 2  # images (of 32) the two hosts may judge differently


@pytest.fixture(scope="module")
def outcomes(pack):
    """``outcomes(method, kind)`` -> the rows of the first prompt of ``kind``, cached per module."""
    from scripts.shape_benchmark import Runner

    runner = Runner(str(SHAPE_MODEL), STEPS, SHAPE_MODEL_SIZE, CFG, SAMPLER)

    @functools.cache
    def get(method: str, kind: str) -> tuple[dict, ...]:
        rows = []
        for spec in prompt_sets()[kind][:PROMPTS]:
            rows += runner.run(method, kind, spec, 0, NOISES)
        return tuple(rows)

    return get


def rate(rows, key: str = "success") -> float:
    return float(np.mean([bool(r[key]) for r in rows]))


def test_the_shipped_model_is_small_fp16_and_in_sd15_layout():
    assert SHAPE_MODEL.stat().st_size <= 25 * 2 ** 20
    with safe_open(str(SHAPE_MODEL), framework="pt") as f:
        keys = list(f.keys())
        assert f.metadata()["architecture"] == "storm-tiny-sd15"
        assert {f.get_tensor(k).dtype for k in keys} == {torch.float16}
    for prefix in ("model.diffusion_model.", "cond_stage_model.", "first_stage_model."):
        assert any(k.startswith(prefix) for k in keys)


def detected_colours(row) -> set[str]:
    from harness.shape_eval import detect

    return {d.colour for d in detect(row["image"])}


def test_the_model_draws_what_it_is_asked(outcomes):
    """'a red circle' on 32 noises: every image clean, red drawn in most, a red circle far above chance
    (1 in 12 for a guess of colour and shape). Measured: 32/32 clean, 10/32 red circles; a random-weight
    model draws none of this (its images are noise)."""
    spec = prompt_sets()["single"][0]
    assert spec.text == "a red circle"
    rows = outcomes("plain", "single")
    assert all(r["clean"] for r in rows)
    red = np.mean(["red" in detected_colours(r) for r in rows])
    assert red >= RED_DRAWN_MIN, red
    assert rate(rows) >= SINGLE_SUCCESS_MIN, rate(rows)


def test_attend_and_excite_reaches_the_image_and_keeps_it_clean(outcomes):
    """A&E's gradient step (no refinement) on 'a red circle and a blue square', same noises as plain:
    the images change, stay clean, and the both-shapes-present rate does not drop (measured on these
    32 noises: 9 vs 8 successes, 29 vs 29 clean)."""
    plain = outcomes("plain", "pair")
    guided = outcomes("attend_excite~max_refine_iters=0", "pair")
    change = np.mean([np.abs(p["image"].astype(int) - g["image"].astype(int)).mean() for p, g in zip(plain, guided, strict=True)])
    assert change >= IMAGE_CHANGE_MIN, change  # guidance reached the latent
    assert sum(g["clean"] for g in guided) >= sum(p["clean"] for p in plain) - SLACK
    assert sum(g["success"] for g in guided) >= sum(p["success"] for p in plain) - SLACK
    assert all(g["guided_steps"] > 0 for g in guided)
