"""A procedural world of flat coloured shapes with faithful captions, for training and judging a tiny model.

Pure numpy: no ComfyUI, no pack, no torch. :mod:`harness.shape_eval` reads these images back.

Vocabulary (the one owner of it):

* shapes :data:`SHAPES` ``circle, square, triangle``. All are axis-aligned and drawn in a
  ``2r x 2r`` box around their centre: a disc of radius ``r``, a square of side ``2r``, an upright
  isosceles triangle with its apex at the top middle of the box and its base the bottom edge (so its
  box is filled to 1/2, a circle's to pi/4, a square's to 1).
* colours :data:`PALETTE` ``red, green, blue, yellow``: saturated colours whose hues lie 50-130 degrees
  apart (red 0, yellow ~51, green ~134, blue ~227) and whose chroma (max - min channel) is >= 150/255,
  so a detector can tell them apart by hue alone even after heavy desaturation.
* sizes :data:`SIZES` ``small, large``: box side (= diameter) 22 % and 34 % of the canvas side, so two
  large objects fit side by side and stacked with room to spare.
* background :data:`BACKGROUND` a light, exactly neutral grey (232, 232, 232): its chroma is 0, so every
  coloured pixel stands out from it by chroma alone, and it is not pure white (a VAE clips white).

Captions use the constructions attention guidance targets, and are faithful: every object drawn is
mentioned, in the order of :attr:`Scene.objects`, and nothing else is::

    single    "a red circle"                        (1 object)
    pair      "a red circle and a blue square"      (2 objects, free placement)
    relation  "a red circle to the left of a blue square" / "... to the right of ..." /
              "a green triangle above a yellow circle" / "... below ..."   (2 objects)
    triple    "a red circle, a blue square and a green triangle"           (3 objects)

Any object phrase may carry its size word ("a small red circle"); a sampled caption mentions the sizes
of all its objects or of none. The two objects of a pair or relation caption always differ in shape or
colour; the three of a triple are pairwise different (colour, shape) combinations.

Placement: every object lies inside the canvas with a margin of :data:`EDGE_MARGIN` of the side, and
the boxes of any two objects are separated by at least :data:`GAP` of the side along x or along y (so
they never touch). For a relation ``(s, rel, o)`` the centre offset along the relation's axis points
the right way, is at least one object size (the larger box side) and at least twice the offset along
the other axis, so the relation is unambiguous whichever centre (box centre, mass centre) one uses.

Everything is a function of the :class:`numpy.random.Generator` passed in: same seed, same scene,
same image bytes.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace

import numpy as np

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (10, 190, 50),
    "blue": (40, 80, 225),
    "yellow": (240, 210, 30),
}
COLOURS: tuple[str, ...] = tuple(PALETTE)
SIZES: dict[str, float] = {"small": 0.22, "large": 0.34}  # box side (diameter) / canvas side
BACKGROUND: tuple[int, int, int] = (232, 232, 232)
RELATIONS: tuple[str, ...] = ("left", "right", "above", "below")
KINDS: tuple[str, ...] = ("single", "pair", "relation", "triple")

EDGE_MARGIN = 0.03  # object box to canvas edge, fraction of the side
GAP = 0.04  # between two objects' boxes (along x or y), fraction of the side
MAX_CROSS_RATIO = 0.5  # relation: |offset across the axis| <= this * |offset along it|
SIZE_WORD_PROB = 0.3  # fraction of sampled captions that name their objects' sizes

_RELATION_WORDS = {"left": "to the left of", "right": "to the right of", "above": "above", "below": "below"}
_OPPOSITE = {"left": "right", "right": "left", "above": "below", "below": "above"}


@dataclass(frozen=True)
class ShapeObject:
    """One object: ``cx, cy`` the centre of its ``2r x 2r`` box in pixels (x right, y down)."""

    shape: str
    colour: str
    size: str
    cx: float
    cy: float
    r: float


@dataclass(frozen=True)
class PromptSpec:
    """What a caption asks for: ``objects`` as ``(colour, shape)`` in mention order, ``relation`` as
    ``(subject_index, relation, object_index)`` or None, ``sizes`` the size word of each object or None
    where the text names no size (None for the whole tuple when no object's size is named)."""

    text: str
    objects: tuple[tuple[str, str], ...]
    relation: tuple[int, str, int] | None = None
    sizes: tuple[str | None, ...] | None = None

    @property
    def kind(self) -> str:
        if self.relation is not None:
            return "relation"
        return {1: "single", 2: "pair", 3: "triple"}[len(self.objects)]


@dataclass(frozen=True)
class Scene:
    """A canvas of ``canvas x canvas`` pixels, its objects (in caption order) and its caption."""

    canvas: int
    objects: tuple[ShapeObject, ...]
    caption: str
    kind: str
    relation: tuple[int, str, int] | None = None

    @property
    def spec(self) -> PromptSpec:
        return parse_caption(self.caption)


# ----------------------------------------------------------------------------------------------- captions

def _phrase(colour: str, shape: str, size: str | None = None) -> str:
    return f"a {size} {colour} {shape}" if size else f"a {colour} {shape}"


def caption_text(objects, relation=None, sizes=None) -> str:
    """The world's caption for ``objects`` ``[(colour, shape), ...]`` (and ``relation``, ``sizes``)."""
    sizes = sizes or (None,) * len(objects)
    phrases = [_phrase(c, s, z) for (c, s), z in zip(objects, sizes, strict=True)]
    if relation is not None:
        if len(objects) != 2 or tuple(relation[::2]) != (0, 1) or relation[1] not in RELATIONS:
            raise ValueError(f"a relation caption relates object 0 to object 1, got {relation!r}")
        return f"{phrases[0]} {_RELATION_WORDS[relation[1]]} {phrases[1]}"
    if len(phrases) == 1:
        return phrases[0]
    if len(phrases) == 2:
        return f"{phrases[0]} and {phrases[1]}"
    if len(phrases) == 3:
        return f"{phrases[0]}, {phrases[1]} and {phrases[2]}"
    raise ValueError(f"captions name 1 to 3 objects, got {len(objects)}")


_OBJ = rf"a (?:({'|'.join(SIZES)}) )?({'|'.join(COLOURS)}) ({'|'.join(SHAPES)})"
_REL = "|".join(re.escape(w) for w in _RELATION_WORDS.values())
_CAPTION_RES = (
    re.compile(rf"{_OBJ}"),
    re.compile(rf"{_OBJ} and {_OBJ}"),
    re.compile(rf"{_OBJ}, {_OBJ} and {_OBJ}"),
    re.compile(rf"{_OBJ} ({_REL}) {_OBJ}"),
)
_WORD_RELATION = {w: k for k, w in _RELATION_WORDS.items()}


def make_spec(objects, relation=None, sizes=None) -> PromptSpec:
    """A :class:`PromptSpec` with its canonical text; validates the vocabulary."""
    objects = tuple((str(c), str(s)) for c, s in objects)
    for c, s in objects:
        if c not in PALETTE or s not in SHAPES:
            raise ValueError(f"unknown object {c!r} {s!r}")
    if len(set(objects)) != len(objects):
        raise ValueError(f"objects must be distinct (colour, shape) pairs: {objects}")
    if sizes is not None:
        sizes = tuple(sizes)
        if len(sizes) != len(objects) or any(z is not None and z not in SIZES for z in sizes):
            raise ValueError(f"bad sizes {sizes!r}")
        if all(z is None for z in sizes):
            sizes = None
    relation = tuple(relation) if relation is not None else None
    return PromptSpec(caption_text(objects, relation, sizes), objects, relation, sizes)


def parse_caption(text: str) -> PromptSpec:
    """Parse a caption of the world's grammar (case and a final full stop ignored); ValueError otherwise."""
    clean = " ".join(text.lower().strip().rstrip(".").split())
    for pattern in _CAPTION_RES:
        m = pattern.fullmatch(clean)
        if m is None:
            continue
        groups = m.groups()
        relation = None
        if pattern is _CAPTION_RES[3]:
            relation = (0, _WORD_RELATION[groups[3]], 1)
            groups = groups[:3] + groups[4:]
        sizes = tuple(groups[0::3])
        objects = tuple(zip(groups[1::3], groups[2::3], strict=True))
        return make_spec(objects, relation, sizes)
    raise ValueError(f"not a caption of the shape world: {text!r}")


# ---------------------------------------------------------------------------------------------- sampling

def _pick(rng: np.random.Generator, items):
    return items[int(rng.integers(len(items)))]


def _sample_pair(rng: np.random.Generator) -> tuple[tuple[str, str], tuple[str, str]]:
    """Two objects that differ in both shape and colour (70 %), only in colour (15 %) or only in shape (15 %)."""
    u = rng.random()
    c1, c2 = (COLOURS[i] for i in rng.choice(len(COLOURS), 2, replace=False))
    s1, s2 = (SHAPES[i] for i in rng.choice(len(SHAPES), 2, replace=False))
    if u < 0.7:
        return (c1, s1), (c2, s2)
    if u < 0.85:
        return (c1, s1), (c2, s1)
    return (c1, s1), (c1, s2)


def _sample_objects(rng: np.random.Generator, kind: str) -> tuple[tuple[str, str], ...]:
    if kind == "single":
        return ((_pick(rng, COLOURS), _pick(rng, SHAPES)),)
    if kind in ("pair", "relation"):
        return _sample_pair(rng)
    if kind == "triple":
        combos = [(c, s) for c in COLOURS for s in SHAPES]
        return tuple(combos[i] for i in rng.choice(len(combos), 3, replace=False))
    raise ValueError(f"unknown caption kind {kind!r}; expected one of {KINDS}")


def _separated(a: ShapeObject, b: ShapeObject, gap: float) -> bool:
    need = a.r + b.r + gap
    return abs(a.cx - b.cx) >= need or abs(a.cy - b.cy) >= need


def _place_free(rng, canvas: int, objs, radii, tries: int = 400):
    edge, gap = EDGE_MARGIN * canvas, GAP * canvas
    placed: list[ShapeObject] = []
    for _ in range(tries):
        placed = []
        for (colour, shape), (size, r) in zip(objs, radii, strict=True):
            lo, hi = edge + r, canvas - edge - r
            o = ShapeObject(shape, colour, size, float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi)), r)
            if not all(_separated(o, p, gap) for p in placed):
                break
            placed.append(o)
        if len(placed) == len(objs):
            return tuple(placed)
    return None


def _place_relation(rng, canvas: int, objs, radii, relation: str, tries: int = 100):
    """Subject (objs[0]) and object (objs[1]) with the subject ``relation`` of the object."""
    edge, gap = EDGE_MARGIN * canvas, GAP * canvas
    (ss, rs), (so, ro) = radii
    lo = max(rs + ro + gap, 2 * max(rs, ro))  # along the axis: apart, and by at least one object size
    hi = canvas - 2 * edge - rs - ro  # both still inside
    if lo > hi:
        return None
    sign = -1.0 if relation in ("left", "above") else 1.0  # subject minus object, along the axis
    for _ in range(tries):
        along = float(rng.uniform(lo, hi))
        cross = float(rng.uniform(-MAX_CROSS_RATIO, MAX_CROSS_RATIO)) * along
        # subject coordinate range along each axis such that both objects stay inside
        d_along, d_cross = sign * along, cross  # subject - object
        a_lo = max(edge + rs, edge + ro + d_along)
        a_hi = min(canvas - edge - rs, canvas - edge - ro + d_along)
        c_lo = max(edge + rs, edge + ro + d_cross)
        c_hi = min(canvas - edge - rs, canvas - edge - ro + d_cross)
        if a_lo > a_hi or c_lo > c_hi:
            continue
        a_s, c_s = float(rng.uniform(a_lo, a_hi)), float(rng.uniform(c_lo, c_hi))
        a_o, c_o = a_s - d_along, c_s - d_cross
        if relation in ("left", "right"):
            (xs, ys), (xo, yo) = (a_s, c_s), (a_o, c_o)
        else:
            (xs, ys), (xo, yo) = (c_s, a_s), (c_o, a_o)
        return (ShapeObject(objs[0][1], objs[0][0], ss, xs, ys, rs), ShapeObject(objs[1][1], objs[1][0], so, xo, yo, ro))
    return None


def _radius(canvas: int, size: str) -> float:
    return SIZES[size] * canvas / 2


def scene_from_spec(spec: PromptSpec, rng: np.random.Generator, size: int = 256) -> Scene:
    """A scene showing exactly ``spec``'s objects (sizes as named, else drawn at random) and relation.

    The caption is ``spec.text`` in canonical form. Use it to draw ground-truth images of benchmark prompts.
    """
    spec = make_spec(spec.objects, spec.relation, spec.sizes)
    named = spec.sizes or (None,) * len(spec.objects)
    for _ in range(50):
        sizes = [z if z is not None else _pick(rng, tuple(SIZES)) for z in named]
        radii = [(z, _radius(size, z)) for z in sizes]
        if spec.relation is not None:
            placed = _place_relation(rng, size, spec.objects, radii, spec.relation[1])
        else:
            placed = _place_free(rng, size, spec.objects, radii)
        if placed is not None:
            return Scene(size, placed, spec.text, spec.kind, spec.relation)
    raise ValueError(f"cannot place {spec.text!r} on a {size}px canvas")


def sample_scene(rng: np.random.Generator, size: int = 256, kinds: tuple[str, ...] = KINDS,
                 size_word_prob: float = SIZE_WORD_PROB) -> Scene:
    """A random scene and its caption; the kind is drawn uniformly from ``kinds`` (list one twice to
    draw it twice as often). ``size_word_prob`` of the captions name every object's size."""
    kind = _pick(rng, tuple(kinds))
    objs = _sample_objects(rng, kind)
    relation = (0, _pick(rng, RELATIONS), 1) if kind == "relation" else None
    named = tuple(_pick(rng, tuple(SIZES)) for _ in objs) if rng.random() < size_word_prob else None
    return scene_from_spec(make_spec(objs, relation, named), rng, size)


def without_object(scene: Scene, index: int) -> Scene:
    """The scene with one object removed (the caption still names it: for 'object missing' checks)."""
    return replace(scene, objects=scene.objects[:index] + scene.objects[index + 1:])


def swapped_relation(spec: PromptSpec) -> PromptSpec:
    """``spec`` with its relation reversed (left <-> right, above <-> below)."""
    if spec.relation is None:
        raise ValueError("spec has no relation")
    s, rel, o = spec.relation
    return make_spec(spec.objects, (s, _OPPOSITE[rel], o), spec.sizes)


# -------------------------------------------------------------------------------------------- rendering

def _coverage(obj: ShapeObject, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Boolean inside-test at sample points ``x`` (row vector) and ``y`` (column vector)."""
    dx, dy = x - obj.cx, y - obj.cy
    if obj.shape == "circle":
        return dx * dx + dy * dy <= obj.r * obj.r
    if obj.shape == "square":
        return (np.abs(dx) <= obj.r) & (np.abs(dy) <= obj.r)
    if obj.shape == "triangle":  # apex (cx, cy - r), base from (cx - r, cy + r) to (cx + r, cy + r)
        depth = dy + obj.r
        return (depth >= 0) & (dy <= obj.r) & (np.abs(dx) <= depth / 2)
    raise ValueError(f"unknown shape {obj.shape!r}")


def render(scene: Scene, supersample: int = 4) -> np.ndarray:
    """The scene as ``uint8 (H, W, 3)``, antialiased: each pixel averages ``supersample**2`` samples.

    Pixel ``(row i, column j)`` covers ``[j, j + 1) x [i, i + 1)`` in the objects' coordinates.
    """
    n, ss = scene.canvas, int(supersample)
    img = np.empty((n, n, 3), np.float32)
    img[:] = BACKGROUND
    offsets = (np.arange(ss, dtype=np.float32) + 0.5) / ss
    for obj in scene.objects:
        x0, x1 = max(0, math.floor(obj.cx - obj.r)), min(n, math.ceil(obj.cx + obj.r) + 1)
        y0, y1 = max(0, math.floor(obj.cy - obj.r)), min(n, math.ceil(obj.cy + obj.r) + 1)
        if x0 >= x1 or y0 >= y1:
            continue
        xs = (np.arange(x0, x1, dtype=np.float32)[:, None] + offsets).reshape(1, -1)
        ys = (np.arange(y0, y1, dtype=np.float32)[:, None] + offsets).reshape(-1, 1)
        inside = _coverage(obj, xs, ys).astype(np.float32)
        alpha = inside.reshape(y1 - y0, ss, x1 - x0, ss).mean(axis=(1, 3))[..., None]
        window = img[y0:y1, x0:x1]
        window += alpha * (np.asarray(PALETTE[obj.colour], np.float32) - window)
    return np.rint(img).astype(np.uint8)


def object_masks(scene: Scene, side: int, supersample: int = 4) -> np.ndarray:
    """``float32 (len(objects), side, side)``: the fraction of each cell of a ``side x side`` grid over the
    canvas that each object covers (cell ``(i, j)`` spans ``canvas / side`` pixels from row ``i``, column
    ``j``), from ``supersample`` x ``supersample`` samples per cell (the shape model's grounding loss was
    trained with the default, 4). Objects never overlap (placement keeps them apart), so the masks are
    disjoint."""
    cell = scene.canvas / side
    ss = int(supersample)
    pts = ((np.arange(side * ss, dtype=np.float32) + 0.5) / ss) * cell
    out = np.empty((len(scene.objects), side, side), np.float32)
    for k, obj in enumerate(scene.objects):
        inside = _coverage(obj, pts.reshape(1, -1), pts.reshape(-1, 1)).astype(np.float32)
        out[k] = inside.reshape(side, ss, side, ss).mean(axis=(1, 3))
    return out


# ----------------------------------------------------------------------------------------- benchmark set

def prompt_sets() -> dict[str, tuple[PromptSpec, ...]]:
    """The benchmark's fixed prompts, 8 per set.

    * ``single``: one object; every colour twice and every shape at least twice (what the model knows).
    * ``pair``: two objects of different shapes and colours (neglect: is each shape drawn?).
    * ``binding``: four prompts and their colour-swapped twins ("a red square and a green circle" /
      "a green square and a red circle"), so no colour-shape prior can pass both; none repeats a
      ``pair`` prompt's objects.
    * ``relation``: two prompts per direction; subject and object differ in shape and colour.

    A benchmark that uses only the first ``n`` of each set still gets swapped twins for ``binding``
    (n even) and both axes for ``relation`` (n >= 2; every direction for n >= 4).
    """
    pair = [
        (("red", "circle"), ("blue", "square")),
        (("green", "triangle"), ("blue", "circle")),
        (("yellow", "square"), ("red", "triangle")),
        (("blue", "triangle"), ("green", "square")),
        (("yellow", "circle"), ("red", "square")),
        (("green", "circle"), ("red", "triangle")),
        (("red", "triangle"), ("yellow", "circle")),
        (("green", "square"), ("yellow", "triangle")),
    ]
    binding = []
    for (c1, s1), (c2, s2) in [(("red", "square"), ("green", "circle")),
                               (("blue", "triangle"), ("yellow", "square")),
                               (("yellow", "circle"), ("green", "triangle")),
                               (("red", "triangle"), ("blue", "circle"))]:
        binding += [((c1, s1), (c2, s2)), ((c2, s1), (c1, s2))]
    relation = [  # the first two: one horizontal, one vertical; the first four: every direction
        (("red", "circle"), ("blue", "square"), "left"),
        (("red", "triangle"), ("blue", "circle"), "above"),
        (("blue", "square"), ("yellow", "circle"), "right"),
        (("blue", "circle"), ("red", "square"), "below"),
        (("yellow", "triangle"), ("green", "circle"), "left"),
        (("yellow", "square"), ("green", "triangle"), "above"),
        (("green", "triangle"), ("red", "square"), "right"),
        (("green", "square"), ("yellow", "triangle"), "below"),
    ]
    single = [("red", "circle"), ("blue", "square"), ("green", "triangle"), ("yellow", "circle"),
              ("red", "square"), ("blue", "triangle"), ("green", "circle"), ("yellow", "square")]
    return {
        "single": tuple(make_spec((o,)) for o in single),
        "pair": tuple(make_spec(o) for o in pair),
        "binding": tuple(make_spec(o) for o in binding),
        "relation": tuple(make_spec((a, b), (0, rel, 1)) for a, b, rel in relation),
    }
