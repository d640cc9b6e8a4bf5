"""The shape world (scenes, captions, rendering) and its evaluator (detection, judgement).

Pure numpy / scipy: no host, no torch. Accuracy checks render seeded scenes of every caption kind,
clean and degraded the way a small model's decoded output is (blur, noise, washed-out and tinted
colours), and require the evaluator to read back exactly what was drawn, to accept the scene's own
caption and to reject corrupted ones.
"""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest
from scipy import ndimage

from harness import shape_eval as E
from harness import shape_world as W

DEGRADATIONS = {  # blur sd (px), desaturation, wash-out towards white, colour cast (+- per channel), noise sd
    "mild": ((1.0, 2.0), (0.2, 0.45), (0.0, 0.15), 10.0, 8.0),
    "harsh": ((1.5, 2.5), (0.4, 0.6), (0.0, 0.15), 20.0, 12.0),
}


def degrade(image: np.ndarray, rng: np.random.Generator, level: str = "mild") -> np.ndarray:
    """What a small model's decoded output may look like: blurred, washed out, tinted and noisy."""
    blur, desat, wash, cast, noise = DEGRADATIONS[level]
    x = image.astype(np.float32)
    sigma = rng.uniform(*blur)
    x = ndimage.gaussian_filter(x, (sigma, sigma, 0))
    lum = x @ np.float32([0.299, 0.587, 0.114])
    x += rng.uniform(*desat) * (lum[..., None] - x)
    x += rng.uniform(*wash) * (255.0 - x)
    x += rng.uniform(-cast, cast, 3).astype(np.float32)
    x += rng.normal(0.0, noise, x.shape).astype(np.float32)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _other_relation(rel: str) -> str:
    return {"left": "above", "right": "below", "above": "right", "below": "left"}[rel]


def check_scene(scene: W.Scene, image: np.ndarray, corrupt: bool, missing: bool) -> list[str]:
    """Everything the evaluator must get right about ``image`` of ``scene``; returns what it got wrong."""
    errors = []
    dets = E.detect(image)
    got = Counter((d.colour, d.shape) for d in dets)
    want = Counter((o.colour, o.shape) for o in scene.objects)
    if got != want:
        errors.append(f"detected {sorted(got.elements())} != drawn {sorted(want.elements())}")
    for o in scene.objects:  # each drawn object has its detection near its centre
        if not any(d.colour == o.colour and d.shape == o.shape and abs(d.cx - o.cx) < o.r / 2
                   and abs(d.cy - o.cy) < o.r / 2 for d in dets):
            errors.append(f"no detection at {o}")
    if E.clutter(image, dets) > E.CLUTTER_MAX:
        errors.append(f"clutter {E.clutter(image, dets):.3f} on a rendered scene")
    spec = scene.spec
    j = E.judge(None, spec, dets)
    if not (j.all_present and j.binding_ok and j.relation_ok in (None, True)):
        errors.append(f"own caption rejected: {j.present} {j.bound} {j.relation_ok}")
    if not corrupt:
        return errors
    objs = list(spec.objects)
    # a colour the scene does not have -> that object is present (its shape is drawn) but not bound
    absent = next(c for c in W.COLOURS if c not in {o.colour for o in scene.objects})
    bad = W.make_spec([(absent, objs[0][1])] + objs[1:], spec.relation)
    j = E.judge(None, bad, dets)
    if j.binding_ok or j.bound[0] or not j.all_present:
        errors.append(f"absent colour accepted: {bad.text}")
    # swapped colours (objects differing in both) -> binding fails, presence holds
    if len(objs) >= 2 and objs[0][0] != objs[1][0] and objs[0][1] != objs[1][1]:
        swapped = [(objs[1][0], objs[0][1]), (objs[0][0], objs[1][1])] + objs[2:]
        if len(set(swapped)) == len(swapped):
            bad = W.make_spec(swapped, spec.relation)
            j = E.judge(None, bad, dets)
            if j.binding_ok or not j.all_present:
                errors.append(f"swapped colours accepted: {bad.text}")
    if spec.relation is not None:
        s, rel, o = spec.relation
        for wrong in (W.swapped_relation(spec), W.make_spec(objs, (s, _other_relation(rel), o))):
            if E.judge(None, wrong, dets).relation_ok is not False:
                errors.append(f"wrong relation accepted: {wrong.text}")
    if missing:  # the image lacks one of the named objects
        k = len(scene.objects) - 1
        if len(scene.objects) == 1:
            image = W.render(W.without_object(scene, 0))
        else:
            image = W.render(W.without_object(scene, k))
        j = E.judge(image, spec)
        others = j.present[:k] + j.present[k + 1:]
        if j.present[k] or j.all_present or not all(others):
            errors.append(f"missing object {k} not noticed: {j.present}")
        if spec.relation is not None and j.relation_ok is not False:
            errors.append("relation with a missing object accepted")
    return errors


def accuracy(size: int, per_kind: int, seed0: int, degraded: str | None) -> tuple[dict[str, float], list[str]]:
    results: dict[str, list[bool]] = {k: [] for k in W.KINDS}
    failures: list[str] = []
    for kind in W.KINDS:
        for i in range(per_kind):
            seed = seed0 + 1000 * W.KINDS.index(kind) + i
            rng = np.random.default_rng(seed)
            scene = W.sample_scene(rng, size, kinds=(kind,))
            image = W.render(scene)
            if degraded:
                image = degrade(image, rng, degraded)
            errors = check_scene(scene, image, corrupt=True, missing=not degraded and i % 3 == 0)
            results[kind].append(not errors)
            if errors:
                failures.append(f"seed {seed} {scene.caption!r}: {'; '.join(errors)}")
    return {k: float(np.mean(v)) for k, v in results.items()}, failures


def _report(size, acc, failures):
    return f"{size}px accuracy per kind {acc}; first failures: {failures[:5]}"


@pytest.mark.parametrize(("size", "per_kind"), [(256, 120), (128, 120)])
def test_ground_truth_accuracy(size, per_kind):
    acc, failures = accuracy(size, per_kind, seed0=10_000, degraded=None)
    assert min(acc.values()) >= 0.99, _report(size, acc, failures)


@pytest.mark.parametrize(("size", "per_kind"), [(256, 60), (128, 100)])
def test_degraded_accuracy(size, per_kind):
    acc, failures = accuracy(size, per_kind, seed0=50_000, degraded="mild")
    assert min(acc.values()) >= 0.97, _report(size, acc, failures)


def test_harshly_degraded_accuracy():
    """Blur up to 2.5 px on a 128 px canvas (a small object is 28 px across), colours 40-60 % desaturated,
    strong tint and noise: the white balance, the box filter and the opening each earn their keep here."""
    acc, failures = accuracy(128, 60, seed0=90_000, degraded="harsh")
    assert np.mean(list(acc.values())) >= 0.97, _report(128, acc, failures)


@pytest.mark.parametrize("size", [128, 256, 512])
def test_plain_background_has_no_objects(size):
    for seed in range(8):
        rng = np.random.default_rng(seed)
        blank = np.empty((size, size, 3), np.uint8)
        blank[:] = W.BACKGROUND
        noisy = degrade(blank, rng)
        loud = np.clip(blank + rng.normal(0, 16, blank.shape) + rng.uniform(-20, 20, 3), 0, 255).astype(np.uint8)
        for image in (noisy, loud):
            assert E.detect(image) == [], f"seed {seed}: objects on a plain background"
    for grey in (0, 40, 128, 200, 255):
        assert E.detect(np.full((size, size, 3), grey, np.uint8)) == []


@pytest.mark.parametrize("size", [128, 256])
def test_debris_is_not_an_object(size):
    """Specks below the minimum area, streaks, lines and an L of bars in palette colours are not objects."""
    rng = np.random.default_rng(size)
    image = np.empty((size, size, 3), np.uint8)
    image[:] = W.BACKGROUND
    cells = size // 16
    for i, j in itertools.product(range(0, 14, 3), range(0, 12, 3)):  # specks up to 0.3 % of the image
        side = int(np.sqrt(0.003 * size * size)) - (i + j) % 4
        colour = W.PALETTE[W.COLOURS[(i + j) % 4]]
        image[i * cells + 2:i * cells + 2 + side, j * cells + 2:j * cells + 2 + side] = colour
    image[size - 12:size - 8, 4:size - 24] = W.PALETTE["red"]  # a 4-px streak along the bottom
    for k, colour in enumerate(W.PALETTE.values()):  # 2-px lines
        image[4:size - 24, size - 20 + 4 * k:size - 18 + 4 * k] = colour
    image[size // 2:size // 2 + 4, 4:size - 24] = W.PALETTE["blue"]  # an L of 4-px bars
    image[4:size // 2, 4:8] = W.PALETTE["blue"]
    image = degrade(image, rng)
    assert E.detect(image) == []


def test_same_seed_same_scene_and_bytes():
    for seed in (0, 1, 7, 12345):
        a = W.sample_scene(np.random.default_rng(seed))
        b = W.sample_scene(np.random.default_rng(seed))
        assert a == b
        assert W.render(a).tobytes() == W.render(b).tobytes()
    scenes = {W.sample_scene(np.random.default_rng(seed)).caption for seed in range(20)}
    assert len(scenes) > 10
    spec = W.prompt_sets()["relation"][0]
    assert W.scene_from_spec(spec, np.random.default_rng(3)) == W.scene_from_spec(spec, np.random.default_rng(3))


def test_vocabulary_is_well_separated():
    hues = list(E.PALETTE_HUES.values())
    for a, b in itertools.combinations(hues, 2):
        assert min(abs(a - b), 360 - abs(a - b)) >= 2 * E.HUE_TOL * 0.6
    for rgb in W.PALETTE.values():
        assert max(rgb) - min(rgb) >= 0.69 * 255
    assert len(set(W.BACKGROUND)) == 1 and W.BACKGROUND[0] > 200
    large = W.SIZES["large"]
    assert 2 * large + W.GAP + 2 * W.EDGE_MARGIN <= 1  # two large objects side by side or stacked
    rng = np.random.default_rng(0)
    for shape in W.SHAPES:  # each shape's own geometry lands in its class
        spec = W.make_spec([("red", shape)], sizes=["large"])
        dets = E.detect(W.render(W.scene_from_spec(spec, rng, 256)))
        assert [(d.colour, d.shape) for d in dets] == [("red", shape)]


def _as_offsets(a: W.ShapeObject, b: W.ShapeObject, relation: str) -> tuple[float, float]:
    dx, dy = a.cx - b.cx, a.cy - b.cy
    along, across = (dx, dy) if relation in ("left", "right") else (dy, dx)
    return (along if relation in ("right", "below") else -along), across


def test_scenes_are_faithful_and_well_placed():
    rng = np.random.default_rng(2024)
    kinds, same_shape, same_colour, named = Counter(), 0, 0, 0
    for i in range(600):
        size = (128, 256, 200)[i % 3]
        scene = W.sample_scene(rng, size)
        kinds[scene.kind] += 1
        spec = W.parse_caption(scene.caption)
        assert spec.text == scene.caption and spec.kind == scene.kind and spec.relation == scene.relation
        assert spec.objects == tuple((o.colour, o.shape) for o in scene.objects)  # every object, in order
        assert len(set(spec.objects)) == len(spec.objects)
        if spec.sizes is not None:
            named += 1
            assert spec.sizes == tuple(o.size for o in scene.objects)
        for o in scene.objects:
            assert o.r == pytest.approx(W.SIZES[o.size] * size / 2)
            edge = W.EDGE_MARGIN * size - 1e-6
            assert min(o.cx - o.r, o.cy - o.r, size - o.cx - o.r, size - o.cy - o.r) >= edge
        for a, b in itertools.combinations(scene.objects, 2):
            need = a.r + b.r + W.GAP * size - 1e-6
            assert abs(a.cx - b.cx) >= need or abs(a.cy - b.cy) >= need
        if len(scene.objects) == 2:
            a, b = spec.objects
            same_shape += a[1] == b[1]
            same_colour += a[0] == b[0]
        if scene.relation is not None:
            s, rel, o = scene.relation
            subj, obj = scene.objects[s], scene.objects[o]
            along, across = _as_offsets(subj, obj, rel)
            assert along >= 2 * max(subj.r, obj.r) - 1e-6
            assert abs(across) <= W.MAX_CROSS_RATIO * along + 1e-6
    assert set(kinds) == set(W.KINDS) and min(kinds.values()) > 100
    assert same_shape > 10 and same_colour > 10  # binding cases occur
    assert 0.2 < named / 600 < 0.4


def test_parse_caption():
    spec = W.parse_caption("A small Red circle to the left of a large blue square.")
    assert spec.objects == (("red", "circle"), ("blue", "square")) and spec.relation == (0, "left", 1)
    assert spec.sizes == ("small", "large") and spec.text == "a small red circle to the left of a large blue square"
    spec = W.parse_caption("a red circle, a small blue square and a green triangle")
    assert spec.kind == "triple" and spec.sizes == (None, "small", None)
    assert W.parse_caption("a yellow triangle below a green circle").relation == (0, "below", 1)
    assert W.parse_caption("a yellow triangle").kind == "single"
    for bad in ("a purple circle", "a red circle and", "two red circles", "a red circle and a red circle",
                "a red circle next to a blue square", "a red circle, a blue square"):
        with pytest.raises(ValueError):
            W.parse_caption(bad)


def test_prompt_sets():
    sets = W.prompt_sets()
    assert set(sets) == {"single", "pair", "binding", "relation"} and all(len(v) == 8 for v in sets.values())
    assert {o for s in sets["single"] for o in s.objects} <= {(c, s) for c in W.COLOURS for s in W.SHAPES}
    assert Counter(s.objects[0][0] for s in sets["single"]) == {c: 2 for c in W.COLOURS}
    assert sets == W.prompt_sets()
    for specs in sets.values():
        assert len({s.text for s in specs}) == 8
        for s in specs:
            assert W.parse_caption(s.text) == s
    for s in sets["pair"] + sets["relation"]:
        (c1, s1), (c2, s2) = s.objects
        assert c1 != c2 and s1 != s2
    binding = {frozenset(s.objects) for s in sets["binding"]}
    for s in sets["binding"]:
        (c1, s1), (c2, s2) = s.objects
        assert c1 != c2 and s1 != s2 and frozenset({(c2, s1), (c1, s2)}) in binding  # its swapped twin
    assert not binding & {frozenset(s.objects) for s in sets["pair"]}
    assert Counter(s.relation[1] for s in sets["relation"]) == {r: 2 for r in W.RELATIONS}
    assert {s.relation[1] for s in sets["relation"][:4]} == set(W.RELATIONS)  # a short run sees every direction
    assert {s.relation[1] for s in sets["relation"][:2]} == {"left", "above"}  # and both axes
    first = sets["binding"][:2]
    assert {(c, s) for c, s in first[1].objects} == {(first[0].objects[1][0], first[0].objects[0][1]),
                                                     (first[0].objects[0][0], first[0].objects[1][1])}
    rng = np.random.default_rng(5)
    for specs in sets.values():  # ground-truth images of the benchmark prompts pass their own prompt
        for s in specs:
            j = E.judge(W.render(W.scene_from_spec(s, rng, 128)), s)
            assert j.all_present and j.binding_ok and j.relation_ok in (None, True), s.text


def _det(colour, shape, cx, cy, area=1000):
    return E.Detection(colour, shape, float(cx), float(cy), area, (0, 0, 1, 1), 1.0, 0.0)


def test_judge_definitions():
    spec = W.parse_caption("a red circle to the left of a blue circle")
    # one circle only: the red one is bound, the blue one is absent (needs a second circle)
    j = E.judge(None, spec, [_det("red", "circle", 10, 50)])
    assert j.present == (True, False) and not j.all_present and j.relation_ok is False
    # the colours drawn on the wrong sides: both bound, but the relation is wrong
    j = E.judge(None, spec, [_det("blue", "circle", 10, 50), _det("red", "circle", 90, 50)])
    assert j.all_present and j.binding_ok and j.relation_ok is False
    # bound detections are preferred over larger shape-only ones for the relation
    spec = W.parse_caption("a red circle to the left of a blue square")
    dets = [_det("green", "circle", 200, 50, area=5000), _det("red", "circle", 10, 50), _det("blue", "square", 90, 50)]
    j = E.judge(None, spec, dets)
    assert j.binding_ok and j.relation_ok and j.match == (1, 2) and j.extra == 1
    # shape-only fallback: a green circle stands in for the red one
    j = E.judge(None, spec, [_det("green", "circle", 10, 50), _det("blue", "square", 90, 50)])
    assert j.all_present and j.bound == (False, True) and not j.binding_ok and j.relation_ok
    # dominant axis decides; a tie holds nothing
    assert not E.relation_holds(_det("red", "circle", 10, 10), _det("blue", "square", 30, 40), "left")
    assert E.relation_holds(_det("red", "circle", 10, 10), _det("blue", "square", 30, 40), "above")
    assert not E.relation_holds(_det("red", "circle", 10, 10), _det("blue", "square", 30, 30), "left")
    assert not E.relation_holds(_det("red", "circle", 10, 10), _det("blue", "square", 30, 30), "above")
    # no relation in the spec
    assert E.judge(None, W.parse_caption("a red circle"), []).relation_ok is None
    with pytest.raises(ValueError):
        E.detect(np.zeros((8, 8), np.uint8))


def test_attention_on_objects_reads_where_each_map_lies():
    """Maps that are the objects' own masks sit on their objects; the same maps swapped sit on the
    others; a uniform map sits on nothing; an unmatched object gives no answer."""
    rng = np.random.default_rng(3)
    for spec in W.prompt_sets()["relation"][:4]:
        scene = W.scene_from_spec(spec, rng, 128)
        image = W.render(scene)
        j = E.judge(image, spec)
        assert j.all_present
        ys, xs = np.mgrid[0:128, 0:128] + 0.5
        masks = np.stack([W._coverage(o, xs[0][None, :], ys[:, 0][:, None]).astype(float) for o in scene.objects])
        assert E.attention_on_objects(masks, j) == (True, True)
        assert E.attention_on_objects(masks[::-1], j) == (False, False)
        assert E.attention_on_objects(np.ones_like(masks), j) == (False, False)
        gone = E.judge(W.render(W.without_object(scene, 1)), spec)
        assert E.attention_on_objects(masks, gone) is None
    single = W.parse_caption("a red circle")  # one object: nothing to tell apart
    j1 = E.judge(W.render(W.scene_from_spec(single, rng, 128)), single)
    assert j1.all_present and E.attention_on_objects(np.ones((1, 128, 128)), j1) is None
    with pytest.raises(ValueError):
        E.attention_on_objects(np.ones((3, 8, 8)), j)


def test_coloured_noise_is_not_a_clean_image():
    """What guidance pushed too far draws: smooth blobs of palette colours all over the canvas. Its
    fragments pass for shapes (so presence or a relation can hold by chance) but the image is not
    clean; a rendered scene of the same prompt is."""
    spec = W.prompt_sets()["relation"][0]
    rng = np.random.default_rng(11)
    palette = np.asarray([W.PALETTE[c] for c in W.COLOURS], np.float32)
    for trial in range(8):
        weights = ndimage.gaussian_filter(rng.normal(size=(128, 128, len(palette))), (4, 4, 0))
        blob = weights.max(-1) > np.quantile(weights.max(-1), 0.6)  # 40% of the canvas coloured
        image = np.where(blob[..., None], palette[weights.argmax(-1)], np.float32(W.BACKGROUND))
        image = degrade(np.clip(image, 0, 255).astype(np.uint8), rng)
        j = E.judge(image, spec)
        assert not j.clean, (trial, j.clutter, len(j.detections))
        assert j.clutter > E.CLUTTER_MAX and len(j.detections) > E.MAX_DETECTIONS  # either criterion alone
    clean = E.judge(W.render(W.scene_from_spec(spec, rng, 128)), spec)
    assert clean.clean and clean.clutter == 0.0
    # judged from detections alone, only their count is checked
    many = [_det(c, "circle", 10 * i, 10) for i, c in enumerate(W.COLOURS)] * 2
    assert not E.judge(None, spec, many[:E.MAX_DETECTIONS + 1]).clean
    assert E.judge(None, spec, many[:2]).clean and E.judge(None, spec, many[:2]).clutter is None


def test_object_masks_match_the_rendered_objects():
    """The masks the grounding loss trains on are where the renderer draws each object: at canvas
    resolution a mask is the object's antialiasing coverage, coarser grids are its area averages, and
    two objects never share a cell's coverage beyond the gap between them."""
    rng = np.random.default_rng(5)
    for _ in range(20):
        scene = W.sample_scene(rng, 128)
        image = W.render(scene).astype(np.float32)
        full = W.object_masks(scene, 128)
        assert full.shape == (len(scene.objects), 128, 128)
        for k, obj in enumerate(scene.objects):
            colour = np.asarray(W.PALETTE[obj.colour], np.float32)
            drawn = np.abs(image - colour).max(-1) < 2  # pixels of exactly the object's colour
            same = [i for i, o in enumerate(scene.objects) if o.colour == obj.colour]  # may share a colour
            inside = full[same].sum(0) > 0.999
            assert full[k].sum() > 50 and (drawn == inside).mean() > 0.995
            fine = W.object_masks(scene, 16, supersample=32)[k]  # 4 samples per pixel side, like the full one
            assert fine.sum() == pytest.approx(full[k].sum() / 64, rel=0.01)  # area, in 8x8-pixel cells
            coarse = W.object_masks(scene, 16)[k]  # 4 samples per cell side: what the grounding loss used
            assert np.abs(coarse - fine).max() <= 0.3 and coarse.sum() == pytest.approx(fine.sum(), rel=0.15)
        assert (full > 0).sum(0).max() == 1  # disjoint
