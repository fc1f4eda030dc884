"""Drawing synthetic shape scenes with exact ground truth: classes, visible boxes, masks.

Scenes are drawn at ``SUPERSAMPLE`` times the output size with hard-edged Pillow polygons
and box-filtered down, which anti-aliases edges and gives every output pixel a coverage
per shape. Shapes are painted in order, later ones on top; a placement that would hide
more than half of an earlier shape is retried elsewhere, so occlusion is partial. Labels
come from the visible coverage after occlusion, so a box is tight around what can be seen.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

# Sorted, so a class's index is the same in class folders (sorted folder names), COCO
# (category id = index + 1) and masks (value = index + 1, 0 = background).
SHAPES = ("circle", "ellipse", "hexagon", "square", "star", "triangle")
SUPERSAMPLE = 2
MIN_VISIBLE = 0.5  # fraction of a shape that must stay visible under later shapes
MIN_CONTRAST = 90.0  # RGB distance between a shape's colour and the background under it


def _ring(n: int, radius: float = 1.0, phase: float = 0.0) -> np.ndarray:
    t = phase + 2 * np.pi * np.arange(n) / n
    return radius * np.stack([np.cos(t), np.sin(t)], axis=1)


def _star(points: int = 5, inner: float = 0.45) -> np.ndarray:
    outer, inside = _ring(points, 1.0, -np.pi / 2), _ring(points, inner, -np.pi / 2 + np.pi / points)
    return np.stack([outer, inside], axis=1).reshape(-1, 2)


# Unit outlines (circumradius 1); ellipse's minor axis is scaled per instance.
_OUTLINES = {
    "circle": _ring(64),
    "ellipse": _ring(64),
    "hexagon": _ring(6),
    "square": _ring(4, phase=np.pi / 4),
    "star": _star(),
    "triangle": _ring(3, phase=-np.pi / 2),
}


@dataclass(frozen=True)
class ShapeSpec:
    """One shape to draw: class index, centre and circumradius in output pixels, rotation."""

    label: int
    cx: float
    cy: float
    radius: float
    angle: float
    aspect: float = 1.0
    colour: tuple[float, float, float] = (255.0, 255.0, 255.0)

    def polygon(self, scale: float) -> list[tuple[float, float]]:
        """Vertices in pixels of a canvas ``scale`` times the output size."""
        unit = _OUTLINES[SHAPES[self.label]] * np.array([1.0, self.aspect])
        c, s = np.cos(self.angle), np.sin(self.angle)
        pts = unit @ np.array([[c, s], [-s, c]]) * self.radius + np.array([self.cx, self.cy])
        return [(float(x), float(y)) for x, y in pts * scale]


@dataclass
class Scene:
    """A drawn scene.

    Args:
        image: ``[H, W, 3]`` uint8 RGB.
        labels: ``[H, W]`` uint8, 0 background, ``k + 1`` for shape class ``k``.
        shapes: the shapes kept, in paint order.
        boxes: ``[N, 4]`` float32 xyxy tight around each shape's visible pixels.
        areas: ``[N]`` visible pixel count of each shape.
    """

    image: np.ndarray
    labels: np.ndarray
    shapes: list[ShapeSpec]
    boxes: np.ndarray
    areas: np.ndarray


def random_background(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """A textured ``[H, W, 3]`` float32 background: gradient, blotchy noise or soft stripes."""
    h, w = size
    kind = int(rng.integers(3))
    c0, c1 = rng.uniform(20, 235, 3).astype(np.float32), rng.uniform(20, 235, 3).astype(np.float32)
    theta = rng.uniform(0, np.pi)
    ramp = (np.cos(theta) * np.arange(w, dtype=np.float32)[None, :]
            + np.sin(theta) * np.arange(h, dtype=np.float32)[:, None]) / max(h, w)
    if kind == 0:
        t = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    elif kind == 1:
        coarse = rng.uniform(0, 1, (max(2, h // 24), max(2, w // 24))).astype(np.float32)
        t = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC))
    else:
        period = rng.uniform(0.08, 0.2)
        t = 0.5 + 0.5 * np.sin(2 * np.pi * ramp / period + rng.uniform(0, 2 * np.pi))
    return (c0 + (c1 - c0) * t[..., None]).astype(np.float32)


def draw_scene(rng: np.random.Generator, size: tuple[int, int], specs: list[ShapeSpec]) -> Scene:
    """Paint ``specs`` in order on a random background; drop placements that hide earlier shapes.

    A shape whose placement would leave an earlier shape less than :data:`MIN_VISIBLE`
    visible is skipped. Colours are re-drawn to contrast with the background under each shape.
    """
    h, w = size
    ss = SUPERSAMPLE
    # The background is smooth: draw it at the output size and repeat pixels up to the canvas.
    canvas = random_background(rng, (h, w)).repeat(ss, axis=0).repeat(ss, axis=1)
    kept: list[ShapeSpec] = []
    visible: list[np.ndarray] = []  # per kept shape, full-canvas bool mask of what is still seen
    seen: list[int] = []  # pixel count of each mask above
    full: list[int] = []  # pixel count before any occlusion
    for spec in specs:
        outline = Image.new("L", (w * ss, h * ss), 0)
        ImageDraw.Draw(outline).polygon(spec.polygon(ss), fill=255)
        bbox = outline.getbbox()
        if bbox is None:
            continue
        win = np.s_[bbox[1]:bbox[3], bbox[0]:bbox[2]]  # work inside the shape's bounding box only
        cover = np.asarray(outline.crop(bbox)) > 0
        hidden = [int((vis[win] & cover).sum()) for vis in visible]
        if any(s - lost < MIN_VISIBLE * f for s, lost, f in zip(seen, hidden, full)):
            continue
        for vis in visible:
            vis[win] &= ~cover
        seen = [s - lost for s, lost in zip(seen, hidden)]
        mask = np.zeros((h * ss, w * ss), bool)
        mask[win] = cover
        visible.append(mask)
        seen.append(int(cover.sum()))
        full.append(seen[-1])
        region = canvas[win]  # a view: writing into it paints the canvas
        spec = ShapeSpec(spec.label, spec.cx, spec.cy, spec.radius, spec.angle, spec.aspect,
                         _contrasting_colour(rng, region[cover].mean(axis=0)))
        kept.append(spec)
        region[cover] = np.asarray(spec.colour, np.float32) * _shading(rng, cover)[:, None]
    # Faint grain at the output size, one value for all channels, so JPEG stays small.
    image = _downsample(canvas, ss) + rng.normal(0, 3.0, (h, w, 1)).astype(np.float32)
    image = image.round().clip(0, 255).astype(np.uint8)
    return _label(image, kept, [_downsample(v, ss) for v in visible])


def _contrasting_colour(rng: np.random.Generator, under: np.ndarray) -> tuple[float, float, float]:
    best, best_d = (255.0, 255.0, 255.0), -1.0
    for _ in range(24):
        colour = rng.uniform(0, 255, 3)
        d = float(np.linalg.norm(colour - under))
        if d >= MIN_CONTRAST:
            return tuple(float(c) for c in colour)
        if d > best_d:
            best, best_d = tuple(float(c) for c in colour), d
    return best


def _shading(rng: np.random.Generator, cover: np.ndarray) -> np.ndarray:
    """Light factors (about 0.85..1.15 across the shape) for the pixels of ``cover``, a linear ramp."""
    theta = rng.uniform(0, 2 * np.pi)
    ys, xs = np.nonzero(cover)
    ramp = (np.cos(theta) * xs + np.sin(theta) * ys) / max(cover.shape)
    return (1.0 + 0.3 * (ramp - ramp.mean())).clip(0.7, 1.3).astype(np.float32)


def _downsample(array: np.ndarray, factor: int) -> np.ndarray:
    """Box-filter by ``factor`` (strided sums: several times faster than a reshaped mean)."""
    total = sum(array[i::factor, j::factor].astype(np.float32) for i in range(factor) for j in range(factor))
    return total / np.float32(factor * factor)


def _label(image: np.ndarray, shapes: list[ShapeSpec], coverage: list[np.ndarray]) -> Scene:
    h, w = image.shape[:2]
    if not shapes:
        return Scene(image, np.zeros((h, w), np.uint8), [], np.zeros((0, 4), np.float32), np.zeros(0, np.int64))
    stack = np.stack(coverage)
    owner = stack.argmax(axis=0)
    covered = stack.sum(axis=0) >= 0.5
    classes = np.array([s.label + 1 for s in shapes], np.uint8)
    labels = np.where(covered, classes[owner], 0).astype(np.uint8)
    kept, boxes, areas = [], [], []
    for i, spec in enumerate(shapes):
        ys, xs = np.nonzero(covered & (owner == i))
        if len(xs) == 0:  # too thin to own a whole output pixel: nothing to box
            continue
        kept.append(spec)
        boxes.append((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1))
        areas.append(len(xs))
    return Scene(image, labels, kept, np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(areas, np.int64))
