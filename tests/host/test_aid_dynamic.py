"""STORM Dynamic Interpolation on the real hosts: AID's dynamic selection with the host's sampler, VAE and CLIP vision.

The algorithm itself (split points, refit, min-spread path, metrics) is tested on numbers in
``tests/ops/test_aid_selection.py``; here: the node samples each explored frame exactly as the fixed-schedule node
samples it, returns the frames the selection chose with the distances it measured, measures with a connected CLIP
vision model, refuses bad sizes before sampling, and on the shape model is at least as smooth as the fixed Beta
schedule on the same seed.
"""

import re

import pytest
import torch

from harness.nodeutil import node_output

HW = (16, 16)


@pytest.fixture(scope="module")
def setup(tiny, encode):
    tm = tiny("sd15")
    return tm, encode(tm.clip, "a dog"), encode(tm.clip, "a car"), encode(tm.clip, "")


def shared(setup, steps=4, seed=3):
    tm, a, b, neg = setup
    return dict(model=tm.model, positive_a=a, positive_b=b, negative=neg, latent_image={"samples": torch.zeros(1, 4, *HW)},
                seed=seed, steps=steps, cfg=7.5, sampler_name="euler", scheduler="normal", mode="fused outer",
                warmup_ratio=0.5, endpoint_noise="same")


def dynamic(nodes, setup, vae, exploration, keep, clip_vision=None, **kw):
    with torch.inference_mode():
        return node_output(nodes["STORM_DynamicInterpolation"]().interpolate(
            **shared(setup, **kw), vae=vae, exploration_size=exploration, interpolation_size=keep, alpha=3.0,
            beta=3.0, clip_vision=clip_vision))


def fixed(nodes, setup, frames, **kw):
    with torch.inference_mode():
        return node_output(nodes["STORM_AttentionInterpolation"]().interpolate(
            **shared(setup, **kw), frames=frames, alpha=3.0, beta=3.0, chunk_size=0))


def close(x, y):
    return torch.allclose(x.float(), y.float(), atol=1e-3, rtol=1e-4)


def test_three_explored_frames_are_the_fixed_schedules_three(nodes, setup):
    """Explore 3 = {0, Beta(3, 3)'s median 0.5, 1}, keep 3: the same coefficients and frames as the fixed schedule with
    3 frames (both endpoints in each frame's batch, the same slerped noise), so the endpoints are the plain
    generations the fixed node's tests check."""
    tm = setup[0]
    frames, images, text, report = dynamic(nodes, setup, tm.vae, 3, 3)
    reference = fixed(nodes, setup, 3)[0]["samples"]
    assert text == "0: 0.00000, 1: 0.50000, 2: 1.00000"
    assert frames["samples"].shape == reference.shape == (3, 4, *HW)
    for i in range(3):
        assert close(frames["samples"][i], reference[i]), i
    assert images.shape == (3, HW[0] * 8, HW[1] * 8, 3)


def test_keeps_the_chosen_explored_frames_and_reports_their_measured_distances(nodes, pack, setup):
    tm = setup[0]
    frames, images, text, report = dynamic(nodes, setup, tm.vae, 6, 4)
    ts = [float(t) for t in re.findall(r"\d+: ([0-9.]+)", text)]
    assert len(ts) == 4 and ts[0] == 0.0 and ts[-1] == 1.0 and all(x < y for x, y in zip(ts, ts[1:], strict=False))
    explored = [float(t) for t in re.search(r"explored 6 coefficients [^:]*: (.*)", report).group(1).split(", ")]
    assert len(explored) == 6 and set(round(t, 5) for t in ts) <= set(explored)
    assert frames["samples"].shape[0] == images.shape[0] == 4
    # the images out are the frames the selection measured: their distances are the ones it reports
    adjacent, smooth, mean = pack.nodes.aid_dynamic.sequence_measures(images)
    reported = [float(d) for d in re.search(r"adjacent distances: (.*)", report).group(1).split(", ")]
    assert adjacent == pytest.approx(reported, abs=1e-4)
    assert f"smoothness (1 - Gini of adjacent distances): {smooth:.4f}" in report
    assert f"consistency (mean adjacent distance): {mean:.4f}" in report
    assert "decoded frames at 64 x 64 px" in report
    # ... and they are the VAE's decoding of the frames out
    with torch.inference_mode():
        assert close(images, tm.vae.decode(frames["samples"]))


def test_measures_with_a_connected_clip_vision_model(nodes, pack, setup):
    from harness.tiny_models import build_tiny_clip_vision

    tm = setup[0]
    clip_vision = build_tiny_clip_vision()
    _, images, _, report = dynamic(nodes, setup, tm.vae, 4, 3, clip_vision=clip_vision)
    assert "CLIP vision model's image embeddings" in report
    with torch.inference_mode():
        adjacent, _, _ = pack.nodes.aid_dynamic.sequence_measures(images, clip_vision)
        pixels, _, _ = pack.nodes.aid_dynamic.sequence_measures(images)
    reported = [float(d) for d in re.search(r"adjacent distances: (.*)", report).group(1).split(", ")]
    assert adjacent == pytest.approx(reported, abs=1e-4)
    assert adjacent != pytest.approx(pixels, abs=1e-3)  # a different measure from the fallback's


@pytest.mark.parametrize(("exploration", "keep", "name"), [(5, 6, "interpolation_size"), (2, 2, "exploration_size")])
def test_bad_sizes_are_refused_before_sampling(nodes, setup, exploration, keep, name, monkeypatch, pack):
    def no_sampling(*args, **kwargs):
        raise AssertionError("sampled before refusing")

    monkeypatch.setattr(pack.nodes.aid_dynamic, "sample_sequence", no_sampling)
    with pytest.raises(Exception, match=rf"STORM Dynamic Interpolation: input '{name}'"):
        dynamic(nodes, setup, setup[0].vae, exploration, keep)


#: the shape-model comparison's seed and steps (measured on 0.33: fixed 0.500, dynamic 0.797; README has more seeds)
SMOOTH_SEED, SMOOTH_STEPS = 0, 10


def test_on_the_shape_model_at_least_as_smooth_as_the_fixed_schedule_on_the_same_seed(pack):
    """The issue's outcome on a trained model (``scripts.aid_smoothness``, fewer steps and frames than the README's
    run): the dynamic selection's 1 - Gini of adjacent frame distances is at least the fixed Beta(3, 3) schedule's,
    both measured on the decoded frames by the same measure."""
    from harness.tiny_models import SHAPE_MODEL, load_trained
    from scripts.aid_smoothness import compare

    with torch.inference_mode():
        tiny = load_trained(SHAPE_MODEL)
    rows = compare(pack, tiny, [SMOOTH_SEED], steps=SMOOTH_STEPS, frames=5, exploration=9)
    by = {row["method"]: row for row in rows}
    assert by["dynamic"]["smoothness"] >= by["fixed"]["smoothness"], rows


@pytest.fixture
def progress_bar(monkeypatch):
    """What the node's progress bar shows: ``(value, total)`` of each update the host sends to the browser."""
    import comfy.utils

    shown = []
    monkeypatch.setattr(comfy.utils, "PROGRESS_BAR_HOOK", lambda value, total, *a, **kw: shown.append((value, total)))
    return shown


def _moves_forward_to_the_end(shown):
    totals = {total for _, total in shown}
    values = [value for value, _ in shown]
    return len(totals) == 1 and values == sorted(values) and values[-1] == next(iter(totals)), shown


@pytest.mark.parametrize("node", ["dynamic", "fixed in chunks"])
def test_one_progress_bar_moves_forward_over_every_sampling_run(nodes, setup, progress_bar, node):
    """The node samples several runs (the explored frames; the fixed node's chunks): its bar covers them all and never
    moves back, as a ComfyUI user reads it (the host's own per-run bar restarted at every run)."""
    tm = setup[0]
    if node == "dynamic":
        dynamic(nodes, setup, tm.vae, 5, 3, steps=3)
        runs = 4  # the endpoints' run, then one per explored coefficient between them
    else:
        with torch.inference_mode():
            node_output(nodes["STORM_AttentionInterpolation"]().interpolate(
                **shared(setup, steps=3), frames=5, alpha=3.0, beta=3.0, chunk_size=1))
        runs = 3  # one chunk per middle frame
    ok, shown = _moves_forward_to_the_end(progress_bar)
    assert ok, shown
    assert shown[-1] == (3 * runs, 3 * runs)
