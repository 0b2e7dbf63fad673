"""Drawing primitives of the synthetic "shapes world": outlines, fill textures, backgrounds, a render.

Everything here is a pure function of its arguments (numpy + PIL), so an image is reproducible from
its `Scene` alone. Geometry is in pixels; shapes are polygons in unit coordinates (circumradius 1,
y pointing down) that a `Placement` scales, squashes, rotates and moves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import numpy as np
from PIL import Image, ImageDraw

#: The classes: shape kinds.
SHAPE_CLASSES = ("circle", "square", "triangle", "pentagon", "hexagon", "star", "cross", "crescent")
#: Shapes that are not classes (the OOD variant draws these).
OOD_SHAPES = ("ring", "arrow", "heart", "lshape", "trapezoid", "semicircle")

#: Each class's characteristic fill texture, so that texture is a learnable cue in the ID data.
CLASS_TEXTURES = {
    "circle": "horizontal stripes",
    "square": "vertical stripes",
    "triangle": "diagonal stripes",
    "pentagon": "a checkerboard pattern",
    "hexagon": "polka dots",
    "star": "concentric rings",
    "cross": "a grid pattern",
    "crescent": "wavy stripes",
}

#: Object colours of the ID data.
COLORS = {
    "red": (215, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 80, 215),
    "yellow": (235, 205, 35),
    "orange": (240, 135, 30),
    "purple": (135, 55, 185),
    "pink": (235, 110, 175),
    "cyan": (35, 190, 205),
}
#: Object colours never used in the ID data (the ImageNet-X-style "color" factor).
UNUSUAL_COLORS = {"brown": (125, 80, 40), "gray": (128, 128, 128), "olive": (120, 125, 35), "maroon": (110, 20, 40)}
#: Plain background colours.
BACKGROUNDS = {
    "white": (242, 242, 242),
    "light gray": (205, 205, 205),
    "beige": (228, 218, 190),
    "pale blue": (195, 215, 238),
    "pale green": (200, 232, 205),
    "lavender": (222, 210, 238),
    "dark gray": (70, 70, 70),
}
SKETCH_INK = (25, 25, 25)
PAPER = (248, 248, 245)
OCCLUDER = (120, 120, 120)


@dataclass(frozen=True)
class Placement:
    """Where an outline goes: centre and circumradius in pixels, rotation in degrees, vertical squash."""

    cx: float
    cy: float
    radius: float
    angle: float = 0.0
    aspect: float = 1.0


@dataclass(frozen=True)
class Fill:
    """How an object is painted: a texture of one class (or random ``noise``), or an outline only.

    `texture` is a class name (its `CLASS_TEXTURES` pattern), ``"noise"`` (random 2x2 blocks) or None
    for an outline drawing in `color`. `period` is the texture's spatial period in pixels, `phase` its
    offset; `noise_seed` seeds the ``noise`` texture.
    """

    color: tuple[int, int, int]
    texture: str | None
    period: float = 8.0
    phase: float = 0.0
    noise_seed: int = 0


@dataclass(frozen=True)
class Drawn:
    """One shape in a scene: its kind (a class or an OOD shape), sub-category variant, place and paint."""

    kind: str
    variant: str
    placement: Placement
    fill: Fill


@dataclass(frozen=True)
class Scene:
    """Everything needed to draw one image; rendering a scene is deterministic."""

    size: int
    background: tuple[int, int, int]
    clutter_seed: int | None
    noise_seed: int
    objects: tuple[Drawn, ...]
    occluder: tuple[float, float, float, float] | None = None
    gain: float = 1.0
    lift: float = 0.0


def render(scene: Scene) -> np.ndarray:
    """Draw a scene as an ``(S, S, 3)`` uint8 RGB array.

    Order: background (plain colour with +-6 noise, or clutter), objects (textured fill or outline),
    occluder rectangle, then the photometric change ``out = gain * img + lift * (255 - gain * img)``
    (gain < 1 darkens; lift > 0 washes out towards white).
    """
    size = scene.size
    canvas = _background(size, scene.background, scene.noise_seed, scene.clutter_seed)
    for drawn in scene.objects:
        mask = shape_mask(drawn.kind, drawn.variant, drawn.placement, size)
        if drawn.fill.texture is None:
            edge = mask & ~_erode(mask, max(1, round(size / 32)))
            canvas[edge] = drawn.fill.color
        else:
            paint_texture(canvas, mask, drawn.fill, drawn.placement)
    if scene.occluder is not None:
        x0, y0, x1, y1 = scene.occluder
        canvas[max(0, round(y0)) : max(0, round(y1)), max(0, round(x0)) : max(0, round(x1))] = OCCLUDER
    if scene.gain != 1.0 or scene.lift != 0.0:
        scaled = canvas.astype(np.float32) * scene.gain
        scaled += scene.lift * (255.0 - scaled)
        canvas = np.clip(scaled + 0.5, 0, 255).astype(np.uint8)
    return canvas


def shape_mask(kind: str, variant: str, placement: Placement, size: int) -> np.ndarray:
    """Boolean ``(S, S)`` mask of a shape outline placed on an S x S canvas."""
    image = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(image)
    for polygon, value in unit_polygons(kind, variant):
        draw.polygon(_transform(np.asarray(polygon), placement).ravel().tolist(), fill=value)
    return np.asarray(image) > 0


def _transform(points: np.ndarray, placement: Placement) -> np.ndarray:
    """Unit-coordinate ``(K, 2)`` points squashed vertically by `aspect`, rotated, scaled and moved."""
    theta = math.radians(placement.angle)
    cos, sin = math.cos(theta), math.sin(theta)
    rotation = np.array([[cos, sin], [-sin, cos]]) * placement.radius
    squashed = points * np.array([1.0, placement.aspect])
    return squashed @ rotation + np.array([placement.cx, placement.cy])


@cache
def unit_polygons(kind: str, variant: str = "") -> tuple[tuple[tuple[tuple[float, float], ...], int], ...]:
    """A shape as polygons in unit coordinates, each with fill 255 (draw) or 0 (cut out), in order.

    `variant` ``"sub"`` gives the class's sub-category (the ImageNet-X-style "subcategory" factor):
    a rounded square, a right triangle, irregular pentagon/hexagon, a 7-point star, a thin cross, a
    dodecagon "circle" and a thick crescent.
    """
    sub = variant == "sub"
    if kind == "circle":
        return ((_regular(12 if sub else 48, 0.0), 255),)
    if kind == "square":
        return ((_superellipse(4.0) if sub else _regular(4, 45.0), 255),)
    if kind == "triangle":
        return ((((-0.8, 0.8), (0.8, 0.8), (-0.8, -0.8)) if sub else _regular(3, -90.0), 255),)
    if kind == "pentagon":
        return ((_regular(5, -90.0, (1.0, 0.7, 0.95, 0.8, 1.0) if sub else None), 255),)
    if kind == "hexagon":
        return ((_regular(6, 0.0, (1.0, 0.75, 1.0, 0.85, 0.95, 0.7) if sub else None), 255),)
    if kind == "star":
        return ((_star(7 if sub else 5, 0.55 if sub else 0.45), 255),)
    if kind == "cross":
        return ((_cross(0.14 if sub else 0.3), 255),)
    if kind == "crescent":
        return ((_regular(48, 0.0), 255), (_shifted(_regular(48, 0.0, None, 0.9), 0.6 if sub else 0.4, -0.15), 0))
    if kind == "ring":
        return ((_regular(48, 0.0), 255), (_regular(48, 0.0, None, 0.55), 0))
    if kind == "arrow":
        return ((((-1.0, -0.25), (0.2, -0.25), (0.2, -0.7), (1.0, 0.0), (0.2, 0.7), (0.2, 0.25), (-1.0, 0.25)), 255),)
    if kind == "heart":
        return ((_heart(), 255),)
    if kind == "lshape":
        return ((((-0.8, -0.9), (-0.3, -0.9), (-0.3, 0.4), (0.8, 0.4), (0.8, 0.9), (-0.8, 0.9)), 255),)
    if kind == "trapezoid":
        return ((((-0.45, -0.6), (0.45, -0.6), (1.0, 0.6), (-1.0, 0.6)), 255),)
    if kind == "semicircle":
        half = tuple((math.cos(t), -math.sin(t) + 0.4) for t in np.linspace(0.0, math.pi, 25))
        return ((half, 255),)
    raise ValueError(f"unknown shape kind {kind!r}")


def _regular(
    sides: int, start_degrees: float, radii: tuple[float, ...] | None = None, scale: float = 1.0
) -> tuple[tuple[float, float], ...]:
    points = []
    for index in range(sides):
        theta = math.radians(start_degrees) + 2.0 * math.pi * index / sides
        radius = scale * (radii[index] if radii else 1.0)
        points.append((radius * math.cos(theta), radius * math.sin(theta)))
    return tuple(points)


def _shifted(points: tuple[tuple[float, float], ...], dx: float, dy: float) -> tuple[tuple[float, float], ...]:
    return tuple((x + dx, y + dy) for x, y in points)


def _star(points: int, inner: float) -> tuple[tuple[float, float], ...]:
    vertices = []
    for index in range(2 * points):
        theta = -math.pi / 2 + math.pi * index / points
        radius = 1.0 if index % 2 == 0 else inner
        vertices.append((radius * math.cos(theta), radius * math.sin(theta)))
    return tuple(vertices)


def _cross(half_width: float) -> tuple[tuple[float, float], ...]:
    w, r = half_width, 0.9
    return ((-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r), (-w, r), (-w, w), (-r, w), (-r, -w), (-w, -w))


def _superellipse(exponent: float) -> tuple[tuple[float, float], ...]:
    points = []
    for t in np.linspace(0.0, 2.0 * math.pi, 48, endpoint=False):
        c, s = math.cos(t), math.sin(t)
        points.append(
            (0.8 * math.copysign(abs(c) ** (2 / exponent), c), 0.8 * math.copysign(abs(s) ** (2 / exponent), s))
        )
    return tuple(points)


def _heart() -> tuple[tuple[float, float], ...]:
    points = []
    for t in np.linspace(0.0, 2.0 * math.pi, 48, endpoint=False):
        x = 16 * math.sin(t) ** 3
        y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
        points.append((x / 17.0, -y / 17.0 + 0.1))
    return tuple(points)


def texture_pattern(
    texture: str, period: float, phase: float, placement: Placement, yy: np.ndarray, xx: np.ndarray, noise_seed: int = 0
) -> np.ndarray:
    """Boolean pattern of a texture at pixel coordinates `yy`, `xx` (True = the darker tone).

    `texture` is a class name (its `CLASS_TEXTURES` style) or ``"noise"`` (random 2x2-pixel blocks).
    """
    half = period / 2.0
    if texture == "noise":
        rows, cols = yy.astype(np.int64) // 2, xx.astype(np.int64) // 2
        if rows.size == 0:
            return np.zeros(0, dtype=bool)
        blocks = np.random.default_rng(noise_seed).random((int(rows.max()) + 1, int(cols.max()) + 1)) < 0.5
        return blocks[rows, cols]
    style = CLASS_TEXTURES[texture]
    if style == "horizontal stripes":
        return ((yy + phase) // half) % 2 == 1
    if style == "vertical stripes":
        return ((xx + phase) // half) % 2 == 1
    if style == "diagonal stripes":
        return ((xx + yy + phase) // (half * 1.414)) % 2 == 1
    if style == "a checkerboard pattern":
        return (((xx + phase) // half) + ((yy + phase) // half)) % 2 == 1
    if style == "polka dots":
        dx = (xx + phase) % period - half
        dy = (yy + phase) % period - half
        return dx * dx + dy * dy < (0.32 * period) ** 2
    if style == "concentric rings":
        distance = np.hypot(xx - placement.cx, yy - placement.cy)
        return ((distance + phase) // half) % 2 == 1
    if style == "a grid pattern":
        width = max(1.0, period / 4.0)
        return ((xx + phase) % period < width) | ((yy + phase) % period < width)
    if style == "wavy stripes":
        return ((yy + 0.3 * period * np.sin(np.pi * xx / period) + phase) // half) % 2 == 1
    raise ValueError(f"unknown texture {texture!r}")


def paint_texture(canvas: np.ndarray, mask: np.ndarray, fill: Fill, placement: Placement) -> None:
    """Paint the masked pixels of `canvas` with the fill colour and its texture in a darker tone (45%)."""
    ys, xs = np.nonzero(mask)
    pattern = texture_pattern(
        fill.texture or "",
        fill.period,
        fill.phase,
        placement,
        ys.astype(np.float32),
        xs.astype(np.float32),
        fill.noise_seed,
    )
    base = np.asarray(fill.color, dtype=np.uint8)
    tones = np.stack([base, (base.astype(np.float32) * 0.45).astype(np.uint8)])
    canvas[ys, xs] = tones[pattern.astype(np.intp)]


def _background(size: int, color: tuple[int, int, int], noise_seed: int, clutter_seed: int | None) -> np.ndarray:
    """A plain colour with uniform per-pixel noise in [-6, 6] (every background colour is in [6, 249]),
    optionally covered by 14 random rectangles and lines (the "busy background" factor).

    The noise is a window, at an offset given by `noise_seed`, of one fixed noise tile per size.
    """
    offset_y, offset_x = divmod(noise_seed % (size * size), size)
    noise = _noise_tile(size)[offset_y : offset_y + size, 3 * offset_x : 3 * (offset_x + size)]
    # (S, 3S) + (3S,) broadcasts along rows, which numpy does far faster than (S, S, 3) + (3,).
    canvas = (noise + np.tile(np.asarray(color, dtype=np.uint8) - np.uint8(6), size)).reshape(size, size, 3)
    if clutter_seed is None:
        return canvas
    clutter = np.random.default_rng(clutter_seed)
    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    for _ in range(14):
        x0, y0 = clutter.uniform(-0.1, 1.0, size=2) * size
        w, h = clutter.uniform(0.05, 0.35, size=2) * size
        color_rgb = tuple(int(v) for v in clutter.integers(0, 256, size=3))
        if clutter.random() < 0.5:
            draw.rectangle((x0, y0, x0 + w, y0 + h), fill=color_rgb)
        else:
            draw.line((x0, y0, x0 + w, y0 + h), fill=color_rgb, width=max(1, size // 32))
    return np.asarray(image).copy()


@cache
def _noise_tile(size: int) -> np.ndarray:
    """A fixed tile of uniform integers in [0, 12]: 2S rows of 2S RGB pixels, flattened to ``(2S, 6S)``."""
    return np.random.default_rng(size).integers(0, 13, size=(2 * size, 6 * size), dtype=np.uint8)


def _erode(mask: np.ndarray, steps: int) -> np.ndarray:
    """Binary erosion with a 3x3 cross, `steps` times (pixels outside the canvas count as False)."""
    eroded = mask
    for _ in range(steps):
        padded = np.pad(eroded, 1, constant_values=False)
        eroded = padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return eroded
