"""Read the objects back out of a shape-world image and judge it against a prompt.

Pure numpy + scipy.ndimage: no ComfyUI, no pack, no torch. The vocabulary is
:mod:`harness.shape_world`'s.

Detection (:func:`detect`), in order:

1. **White balance.** Each channel is scaled so the image's median colour (the background, which
   covers most of any shape-world image) becomes neutral grey (gains within [2/3, 3/2]; skipped when
   the median itself is clearly coloured, chroma > :data:`MAX_CAST`); this undoes a global colour cast.
2. **Colour, by hue.** A generated image's colours come out washed out, tinted and blended, so the
   classifier ignores brightness and how saturated a colour is beyond a floor. After a ``k x k`` box
   filter (k = 3 below 384 px, 5 below 576 px, ...: averages pixel noise away), a pixel is *coloured*
   when its chroma ``max(R,G,B) - min(R,G,B)`` is at least :data:`CHROMA_MIN` of full scale; a coloured
   pixel takes the palette colour whose HSV hue is nearest its own, if within :data:`HUE_TOL` degrees,
   and stays unassigned otherwise (cyan, magenta). The background is neutral grey (chroma 0), so it is
   never coloured; neither are greys, whites and blacks. (Hue and chroma rather than RGB distance: a
   washed-out or darkened red keeps its hue, while its RGB distance to pink or brown shrinks.)
3. **Clean-up, per colour.** The colour's mask is opened with a ``k x k`` square (drops speckle and
   one-pixel fringes) and its holes are filled.
4. **Objects.** 4-connected components of each cleaned mask; components smaller than
   :data:`MIN_AREA_FRAC` of the image (a quarter of the smallest object the world draws), thinner than
   :data:`MIN_ASPECT` (bounding-box short side / long side) or filling less than :data:`MIN_FILL` of
   their bounding box are dropped: specks, streaks and bent lines are not shapes of this world (the
   emptiest, a triangle, fills 1/2).
5. **Shape, by geometry.** ``fill`` = area / bounding-box area (ideal square 1, circle pi/4 = 0.785,
   triangle 1/2) and ``skew`` = |mass-centre height in its box - 1/2| (ideal circle and square 0, upright
   triangle 1/6). A component is a ``triangle`` if ``skew >= 0.05`` or ``fill < 0.65``, else a
   ``square`` if ``fill >= 0.87``, else a ``circle`` (:func:`classify_shape`). Measured on rendered
   scenes, blurred, noisy and desaturated ones included: circles fill 0.75-0.82 with skew <= 0.015,
   squares fill >= 0.91, triangles fill 0.52-0.67 with skew >= 0.10.

6. **Clean image.** :func:`clutter` is the fraction of the image's pixels that are coloured but lie
   outside every detection's box; a *clean* image (:class:`Judgement`) has at most
   :data:`MAX_DETECTIONS` detections and clutter <= :data:`CLUTTER_MAX`. Rendered scenes, degraded
   ones included, have clutter 0; an image that guidance turned into coloured noise has 2-8% and
   many shape-like fragments.

A detection's centre ``(cx, cy)`` is its mass centre in pixels (x right, y down; pixel ``(i, j)`` at
``(j + 0.5, i + 0.5)``), which for a triangle lies a third of the way up from its base.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .shape_world import COLOURS, PALETTE, PromptSpec

MAX_CAST = 0.25  # white balance corrects a background tint up to this chroma
CHROMA_MIN = 0.15  # of full scale; palette colours have >= 0.69, the background 0
HUE_TOL = 40.0  # degrees from the nearest palette hue
MIN_AREA_FRAC = 0.006  # of the image; the world's smallest object (a small triangle) covers 0.024
MIN_ASPECT = 0.3  # bounding box short side / long side
MIN_FILL = 0.3  # area / bounding-box area; the world's shapes fill >= 1/2
TRIANGLE_SKEW = 0.05  # an upright triangle's mass centre is 1/6 of its box height below the middle
TRIANGLE_FILL = 0.65  # a triangle fills 1/2 of its box
SQUARE_FILL = 0.87  # a square fills all of its box, a circle pi/4 = 0.785
CLUTTER_MAX = 0.01  # a clean image: coloured pixels outside the detections' boxes, fraction of the image
MAX_DETECTIONS = 4  # a clean image: the world draws at most 3 objects; one spurious fragment is tolerated
RELATION_AXES = {"left": (0, -1), "right": (0, 1), "above": (1, -1), "below": (1, 1)}  # (axis, sign of s - o)


def _hue(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """HSV hue in degrees [0, 360) and chroma in [0, 1] of float RGB in [0, 1] (hue 0 where chroma is 0)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    mx, mn = rgb.max(axis=-1), rgb.min(axis=-1)
    chroma = mx - mn
    c = np.where(chroma > 0, chroma, 1.0)
    h = np.where(mx == r, ((g - b) / c) % 6.0, np.where(mx == g, (b - r) / c + 2.0, (r - g) / c + 4.0))
    return np.where(chroma > 0, h * 60.0, 0.0), chroma


PALETTE_HUES = {name: float(_hue(np.asarray(rgb, np.float64) / 255.0)[0]) for name, rgb in PALETTE.items()}
_REF_HUES = np.asarray([PALETTE_HUES[c] for c in COLOURS], np.float32)


@dataclass(frozen=True)
class Detection:
    """One detected object. ``bbox`` is ``(x0, y0, x1, y1)`` in pixels, end-exclusive; ``area`` in pixels;
    ``fill`` = area / bbox area; ``skew`` = |mass-centre height in the box - 1/2|."""

    colour: str
    shape: str
    cx: float
    cy: float
    area: int
    bbox: tuple[int, int, int, int]
    fill: float
    skew: float


def white_balance(image: np.ndarray) -> np.ndarray:
    """Float RGB in [0, 1] with each channel scaled so the image's median colour (the background, which
    covers most of any shape-world image) becomes neutral grey; gains are kept within [2/3, 3/2], and an
    image whose median colour has a chroma above :data:`MAX_CAST` is left as it is."""
    rgb = np.asarray(image)[..., :3]
    if rgb.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {rgb.dtype}")
    step = max(1, min(rgb.shape[:2]) // 64)
    bg = np.median(rgb[::step, ::step].reshape(-1, 3), axis=0).astype(np.float32) + 1.0
    if bg.max() - bg.min() > MAX_CAST * 255:  # the median is a colour, not a tinted grey: leave it
        return rgb.astype(np.float32) / 255.0
    gains = np.clip(bg.mean() / bg, 2 / 3, 3 / 2) / 255.0
    return np.minimum(rgb * gains.astype(np.float32), 1.0)


def _smoothed(image: np.ndarray, smooth: int | None) -> np.ndarray:
    """The white-balanced image after the ``smooth x smooth`` box filter (default: the opening size)."""
    rgb = white_balance(image)
    smooth = opening_size(*rgb.shape[:2]) if smooth is None else smooth
    if smooth > 1:
        rgb = ndimage.uniform_filter(rgb, size=(smooth, smooth, 1))
    return rgb


def classify_pixels(image: np.ndarray, chroma_min: float = CHROMA_MIN, hue_tol: float = HUE_TOL,
                    smooth: int | None = None) -> np.ndarray:
    """Per-pixel palette index (order of ``COLOURS``) of the white-balanced image, -1 for background /
    unassigned."""
    rgb = _smoothed(image, smooth)
    chroma = rgb.max(axis=-1) - rgb.min(axis=-1)
    out = np.full(rgb.shape[:2], -1, np.int8)
    where = np.nonzero(chroma >= chroma_min)
    if where[0].size == 0:
        return out
    hue, _ = _hue(rgb[where])  # only coloured pixels: most of an image is background
    dist = np.abs(hue[:, None] - _REF_HUES)
    dist = np.minimum(dist, 360.0 - dist)
    idx = dist.argmin(axis=-1)
    out[where] = np.where(dist[np.arange(idx.size), idx] <= hue_tol, idx, -1)
    return out


def classify_shape(fill: float, skew: float) -> str:
    """``triangle`` if ``skew >= TRIANGLE_SKEW`` or ``fill < TRIANGLE_FILL``, else ``square`` if
    ``fill >= SQUARE_FILL``, else ``circle``; see the module docstring."""
    if skew >= TRIANGLE_SKEW or fill < TRIANGLE_FILL:
        return "triangle"
    return "square" if fill >= SQUARE_FILL else "circle"


def opening_size(height: int, width: int) -> int:
    return 1 + 2 * max(1, min(height, width) // 192)


def detect(image: np.ndarray, chroma_min: float = CHROMA_MIN, hue_tol: float = HUE_TOL,
           min_area_frac: float = MIN_AREA_FRAC) -> list[Detection]:
    """The objects in ``image`` (``uint8 (H, W, 3)``), largest first; see the module docstring."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] < 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {image.shape}")
    h, w = image.shape[:2]
    labels = classify_pixels(image, chroma_min, hue_tol)
    k = opening_size(h, w)
    structure = np.ones((k, k), bool)
    min_area = min_area_frac * h * w
    rows = np.arange(h, dtype=np.float64) + 0.5
    cols = np.arange(w, dtype=np.float64) + 0.5
    found: list[Detection] = []
    for ci, colour in enumerate(COLOURS):
        mask = labels == ci
        rows_any, cols_any = mask.any(axis=1), mask.any(axis=0)
        if not rows_any.any():
            continue
        # work in the mask's bounding box padded by k: the same result as on the whole image, cheaper
        r0, r1 = np.flatnonzero(rows_any)[[0, -1]]
        c0, c1 = np.flatnonzero(cols_any)[[0, -1]]
        r0, c0 = max(0, r0 - k), max(0, c0 - k)
        r1, c1 = min(h, r1 + k + 1), min(w, c1 + k + 1)
        crop = np.zeros((r1 - r0 + 2 * k, c1 - c0 + 2 * k), bool)
        crop[k:-k, k:-k] = mask[r0:r1, c0:c1]
        crop = ndimage.binary_fill_holes(ndimage.binary_opening(crop, structure=structure))
        comp, _ = ndimage.label(crop[k:-k, k:-k])
        for li, local in enumerate(ndimage.find_objects(comp), start=1):
            if local is None:
                continue
            part = comp[local] == li
            area = int(part.sum())
            bh, bw = part.shape
            if area < min_area or min(bh, bw) < MIN_ASPECT * max(bh, bw) or area < MIN_FILL * bh * bw:
                continue
            sl = (slice(local[0].start + r0, local[0].stop + r0), slice(local[1].start + c0, local[1].stop + c0))
            ys, xs = rows[sl[0]], cols[sl[1]]
            cy = float((part.sum(axis=1) * ys).sum() / area)
            cx = float((part.sum(axis=0) * xs).sum() / area)
            fill = area / (bh * bw)
            skew = abs((cy - sl[0].start) / bh - 0.5)
            found.append(Detection(colour, classify_shape(fill, skew), cx, cy, area,
                                   (sl[1].start, sl[0].start, sl[1].stop, sl[0].stop), float(fill), float(skew)))
    found.sort(key=lambda d: (-d.area, d.colour, d.cy, d.cx))
    return found


def clutter(image: np.ndarray, detections, chroma_min: float = CHROMA_MIN) -> float:
    """The fraction of the image's pixels that are coloured (chroma >= ``chroma_min`` after the white
    balance and box filter of :func:`classify_pixels`) but lie outside every detection's bounding box
    grown by the opening size: about 0 for a scene of shapes on the background, large for smeared colour,
    colour noise, or fragments too small, thin or ragged to be shapes (which :func:`detect` drops)."""
    rgb = _smoothed(image, None)
    coloured = (rgb.max(axis=-1) - rgb.min(axis=-1)) >= chroma_min
    h, w = coloured.shape
    k = opening_size(h, w)
    for d in detections:
        x0, y0, x1, y1 = d.bbox
        coloured[max(0, y0 - k):y1 + k, max(0, x0 - k):x1 + k] = False
    return float(coloured.mean())


def is_clean(detections, clutter_fraction: float | None) -> bool:
    """The clean-image rule (:class:`Judgement`): at most :data:`MAX_DETECTIONS` detections and, when the
    image's :func:`clutter` is known, at most :data:`CLUTTER_MAX`."""
    return len(detections) <= MAX_DETECTIONS and (clutter_fraction is None or clutter_fraction <= CLUTTER_MAX)


@dataclass(frozen=True)
class Judgement:
    """How an image answers a :class:`PromptSpec`; per-object tuples follow ``spec.objects``.

    ``match[i]``: index into ``detections`` of the detection assigned to requested object ``i``, or None.
    ``extra``: detections assigned to no requested object (not penalised by any verdict).
    ``clutter``: :func:`clutter` of the image (None when judged from detections alone).
    ``clean``: the image is one the world could have drawn: at most :data:`MAX_DETECTIONS` detections
    and ``clutter <= CLUTTER_MAX`` (with no image, only the count is checked). Guidance pushed too far
    turns an image into coloured noise, whose fragments can pass for shapes in the right places;
    verdicts that count as a method's success should require ``clean``.
    """

    present: tuple[bool, ...]
    all_present: bool
    bound: tuple[bool, ...]
    binding_ok: bool
    relation_ok: bool | None
    match: tuple[int | None, ...]
    extra: int
    detections: tuple[Detection, ...]
    clutter: float | None
    clean: bool


def match_objects(spec: PromptSpec, detections) -> tuple[tuple[int | None, ...], tuple[bool, ...]]:
    """Assign each requested object at most one detection, no detection to two objects.

    First every requested ``(colour, shape)`` takes the largest unassigned detection of that colour and
    shape (the spec's pairs are distinct, so these never compete); then each still unassigned object,
    in mention order, takes the largest unassigned detection of its shape, any colour. Returns the
    assignment and, per object, whether its detection has its colour too.
    """
    used: set[int] = set()
    match: list[int | None] = [None] * len(spec.objects)
    bound = [False] * len(spec.objects)
    for exact in (True, False):
        for i, (colour, shape) in enumerate(spec.objects):
            if match[i] is not None:
                continue
            for j, d in enumerate(detections):  # largest first
                if j not in used and d.shape == shape and (not exact or d.colour == colour):
                    match[i], bound[i] = j, exact
                    used.add(j)
                    break
    return tuple(match), tuple(bound)


def relation_holds(subject: Detection, obj: Detection, relation: str) -> bool:
    """Whether ``subject`` is ``relation`` of ``obj``: the centre offset's dominant axis (strictly larger
    absolute offset; a tie holds nothing) is the relation's axis and points its way (y grows downwards)."""
    axis, sign = RELATION_AXES[relation]
    dx, dy = subject.cx - obj.cx, subject.cy - obj.cy
    along, across = (dx, dy) if axis == 0 else (dy, dx)
    return abs(along) > abs(across) and along * sign > 0


def judge(image: np.ndarray | None, spec: PromptSpec, detections=None) -> Judgement:
    """Judge ``image`` (or precomputed ``detections`` of it) against ``spec``.

    With detections from :func:`detect` and the assignment of :func:`match_objects`:

    * ``present[i]``: requested object ``i`` was assigned a detection of its **shape**, any colour;
      objects sharing a shape need that many detections of it. The neglect measure.
    * ``all_present``: every ``present[i]``.
    * ``bound[i]``: object ``i`` was assigned a detection of its shape **and** colour.
    * ``binding_ok``: every ``bound[i]``: each requested (colour, shape) pair is drawn by a distinct
      object, so no colour was swapped, lost or leaked onto the wrong shape. Extra objects do not count.
    * ``relation_ok``: None without a relation; else False when the subject or the object has no
      assigned detection, and otherwise :func:`relation_holds` on their mass centres. The assigned
      detections are the colour-and-shape ones where they exist, else shape-only ones.
    """
    if detections is None:
        detections = detect(image)
    detections = tuple(detections)
    match, bound = match_objects(spec, detections)
    present = tuple(m is not None for m in match)
    relation_ok = None
    if spec.relation is not None:
        s, rel, o = spec.relation
        relation_ok = (match[s] is not None and match[o] is not None
                       and relation_holds(detections[match[s]], detections[match[o]], rel))
    extra = len(detections) - sum(present)
    mess = None if image is None else clutter(image, detections)
    clean = is_clean(detections, mess)
    return Judgement(present, all(present), bound, all(bound), relation_ok, match, extra, detections, mess, clean)


def attention_on_objects(maps: np.ndarray, judgement: Judgement) -> tuple[bool, ...] | None:
    """Whether each requested object's attention map sits on that object rather than on the others.

    ``maps``: ``(K, H, W)`` non-negative maps at the image's resolution, one per requested object (in
    ``spec.objects`` order, e.g. each object's shape word). Returns None unless every object was
    matched to a detection, or with fewer than two objects (nothing to tell apart); else, per object ``i``, whether its map's mean over the bounding box of its
    own detection exceeds its mean over the box of every other requested object's detection (a mean,
    not a sum, so a large object does not win by area).
    """
    if len(maps) != len(judgement.match):
        raise ValueError(f"{len(maps)} maps for {len(judgement.match)} requested objects")
    if len(judgement.match) < 2 or any(m is None for m in judgement.match):
        return None
    boxes = [judgement.detections[m].bbox for m in judgement.match]

    def mean_in(k: int, box: tuple[int, int, int, int]) -> float:
        x0, y0, x1, y1 = box
        return float(maps[k, y0:y1, x0:x1].mean())

    return tuple(all(mean_in(i, boxes[i]) > mean_in(i, boxes[j]) for j in range(len(boxes)) if j != i)
                 for i in range(len(boxes)))
