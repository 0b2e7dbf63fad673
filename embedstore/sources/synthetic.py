"""The synthetic "shapes world": seeded datasets of coloured, textured shapes for offline tests and demos.

Spec: ``synthetic:VARIANT?n=N&seed=S&size=PX&format=jpeg|png|webp`` (defaults n=1000, seed=0, size=64,
format=jpeg). Classes are the eight shape kinds of `shapes.SHAPE_CLASSES`; colour is an attribute.
Every class has its own fill texture (`shapes.CLASS_TEXTURES`), so texture is a learnable cue.

Variants:

- ``shapes``: in-distribution (ID) images: one textured shape of a palette colour, slightly rotated,
  fully visible, on a plain background.
- ``shapes-v2``: the same distribution from a different random stream (ImageNet-V2-style re-draw).
- ``shapes-sketch``: outline drawings in black ink on paper (a style shift, like ImageNet-Sketch).
- ``shapes-ood``: shapes that are not classes (`shapes.OOD_SHAPES`); ``label`` is None, annotation
  ``shape`` names the drawn kind; `classnames` are still the ID classes (the label space OOD scores use).
- ``shapes-cue-conflict``: the shape of one class filled with the texture of a class drawn uniformly
  from all classes (so, as in model-vs-human's 1,280 images, some have shape == texture; analyses drop
  those). ``label`` is the shape class; annotations ``shape`` and ``texture`` hold class names.
- ``shapes-x``: ID images with one to three ImageNet-X factors each (`imagenet_x.FACTORS` names):
  annotation ``top`` is the first (most salient) factor, ``multi`` all active factors, comma-joined in
  FACTORS order. ``person_blocking`` has no counterpart here and is never active.
- ``shapes-captions``: ID images with five captions each, task "retrieval", no labels.

Every variant annotates ``shape``, ``color`` and ``background``, and ``texture`` when a class texture
is drawn. Rows are independent: row ``i`` depends only on (variant, seed, i, size), so any row can be
generated alone, in any order, on any worker.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from PIL import Image

from embedstore.errors import DatasetError
from embedstore.sources.base import Dataset, EncodedSample, Sample
from embedstore.sources.imagenet_x import FACTORS
from embedstore.sources.shapes import (
    BACKGROUNDS,
    CLASS_TEXTURES,
    COLORS,
    OOD_SHAPES,
    PAPER,
    SHAPE_CLASSES,
    SKETCH_INK,
    UNUSUAL_COLORS,
    Drawn,
    Fill,
    Placement,
    Scene,
    render,
)
from embedstore.sources.spec import int_option
from embedstore.sources.templates import default_templates

#: Bump when a change to the generator changes any image, so fingerprints change with it.
GENERATOR_VERSION = 1
#: Variant -> random stream id (variants never share random numbers).
VARIANTS = {
    "shapes": 0,
    "shapes-v2": 1,
    "shapes-sketch": 2,
    "shapes-ood": 3,
    "shapes-cue-conflict": 4,
    "shapes-x": 5,
    "shapes-captions": 6,
}
FORMATS = {
    "jpeg": ("JPEG", {"quality": 90}),
    "png": ("PNG", {"compress_level": 1}),
    "webp": ("WEBP", {"lossless": True}),
}
OPTIONS = {"n", "seed", "size", "format"}
GENERATED_FACTORS = tuple(factor for factor in FACTORS if factor != "person_blocking")
#: Factor pairs that cannot both apply to one image.
_EXCLUSIVE = (
    {"smaller", "larger"},
    {"darker", "brighter"},
    {"style", "pattern"},
    {"style", "texture"},
    {"style", "color"},
    {"pattern", "texture"},
    {"multiple_objects", "larger"},
    {"multiple_objects", "partial_view"},
)
_COLOR_NAMES = tuple(COLORS)
_BACKGROUND_NAMES = tuple(BACKGROUNDS)
_POSITIONS = (("top left", "top", "top right"), ("left", "center", "right"), ("bottom left", "bottom", "bottom right"))


@dataclass(frozen=True)
class GeneratedRow:
    """A generated row's description: what to draw and what the dataset records about it."""

    scene: Scene
    label: int | None
    captions: tuple[str, ...]
    annotations: dict[str, str]


@dataclass(frozen=True)
class ShapesWorld:
    """One variant of the shapes world at one seed and image size; rows are generated on demand."""

    variant: str
    seed: int
    size: int = 64
    image_format: str = "jpeg"

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise DatasetError(f"unknown synthetic variant {self.variant!r} (known: {', '.join(VARIANTS)})")
        if self.image_format not in FORMATS:
            raise DatasetError(f"unknown synthetic image format {self.image_format!r} (known: {', '.join(FORMATS)})")

    @property
    def classnames(self) -> list[str]:
        return [] if self.variant == "shapes-captions" else list(SHAPE_CLASSES)

    def describe(self, row: int) -> GeneratedRow:
        """The row's scene, label, captions and annotations (no pixels are drawn)."""
        rng = np.random.default_rng([GENERATOR_VERSION, VARIANTS[self.variant], self.seed, row])
        return _DESCRIBERS[self.variant](rng, self.size)

    def image(self, row: int) -> np.ndarray:
        """The row's pixels, ``(size, size, 3)`` uint8 RGB."""
        return render(self.describe(row).scene)

    def encode(self, row: int) -> bytes:
        """The row's image encoded in `image_format`."""
        pil_format, params = FORMATS[self.image_format]
        buffer = io.BytesIO()
        Image.fromarray(self.image(row)).save(buffer, format=pil_format, **params)
        return buffer.getvalue()


@dataclass(frozen=True)
class SyntheticStorage:
    """Bytes generated from a `ShapesWorld` row by row."""

    world: ShapesWorld
    n: int

    def iter_encoded(self, samples: Sequence[Sample], start: int, stop: int) -> Iterator[EncodedSample]:
        for row in range(start, stop):
            yield EncodedSample(row, self.world.encode(row), None)

    def content_stamps(self, samples: Sequence[Sample]) -> Iterable[Any]:
        return [None] * len(samples)

    def identity(self) -> Mapping[str, Any]:
        return {
            "generator": "shapes-world",
            "version": GENERATOR_VERSION,
            "variant": self.world.variant,
            "seed": self.world.seed,
            "n": self.n,
            "size": self.world.size,
            "format": self.world.image_format,
        }


def open_synthetic(name: str, spec: str, path: str, options: Mapping[str, Any]) -> Dataset:
    """Register a shapes-world variant (`path` is the variant name); rows are described, not drawn."""
    world = ShapesWorld(
        variant=path,
        seed=int_option(options, "seed", 0, minimum=0),
        size=int_option(options, "size", 64, minimum=16, maximum=1024),
        image_format=str(options.get("format", "jpeg")).lower(),
    )
    n = int_option(options, "n", 1000, minimum=1, maximum=10_000_000)
    samples = []
    for row in range(n):
        described = world.describe(row)
        samples.append(
            Sample(
                row=row,
                key=f"s{row:07d}",
                label=described.label,
                locator=f"synthetic:{row}",
                captions=described.captions,
                annotations=described.annotations,
            )
        )
    return Dataset(
        name=name,
        kind="synthetic",
        spec=spec,
        root=None,
        samples=tuple(samples),
        classnames=world.classnames,
        templates=default_templates(False),
        task="retrieval" if world.variant == "shapes-captions" else "classification",
        class_subset=None,
        storage=SyntheticStorage(world, n),
    )


@dataclass(frozen=True)
class _Draw:
    """The random draws every variant starts from, always taken in the same order."""

    shape: int
    color: str
    background: str
    radius: float
    angle: float
    cx: float
    cy: float
    period: float
    phase: float
    noise_seed: int


def _base_draw(rng: np.random.Generator, size: int) -> _Draw:
    u = rng.random(9)
    radius = float(0.22 + 0.10 * u[3]) * size
    margin = radius + 1.0
    return _Draw(
        shape=int(u[0] * len(SHAPE_CLASSES)),
        color=_COLOR_NAMES[int(u[1] * len(_COLOR_NAMES))],
        background=_BACKGROUND_NAMES[int(u[2] * len(_BACKGROUND_NAMES))],
        radius=radius,
        angle=float(-15.0 + 30.0 * u[4]),
        cx=float(margin + (size - 2 * margin) * u[5]),
        cy=float(margin + (size - 2 * margin) * u[6]),
        period=float(0.11 + 0.04 * u[7]) * size,
        phase=float(16.0 * u[8]),
        noise_seed=int(rng.integers(2**31)),
    )


def _textured(draw: _Draw, kind: str, texture_class: str, size: int) -> Scene:
    placement = Placement(draw.cx, draw.cy, draw.radius, draw.angle)
    fill = Fill(COLORS[draw.color], texture_class, draw.period, draw.phase)
    return Scene(size, BACKGROUNDS[draw.background], None, draw.noise_seed, (Drawn(kind, "", placement, fill),))


def _annotations(shape: str, texture: str | None, color: str, background: str) -> dict[str, str]:
    annotations = {"shape": shape, "color": color, "background": background}
    if texture is not None:
        annotations["texture"] = texture
    return annotations


def _describe_id(rng: np.random.Generator, size: int) -> GeneratedRow:
    draw = _base_draw(rng, size)
    shape = SHAPE_CLASSES[draw.shape]
    return GeneratedRow(
        _textured(draw, shape, shape, size), draw.shape, (), _annotations(shape, shape, draw.color, draw.background)
    )


def _describe_sketch(rng: np.random.Generator, size: int) -> GeneratedRow:
    draw = _base_draw(rng, size)
    shape = SHAPE_CLASSES[draw.shape]
    placement = Placement(draw.cx, draw.cy, draw.radius, draw.angle)
    scene = Scene(size, PAPER, None, draw.noise_seed, (Drawn(shape, "", placement, Fill(SKETCH_INK, None)),))
    return GeneratedRow(scene, draw.shape, (), {"shape": shape, "color": "black", "background": "paper"})


def _describe_ood(rng: np.random.Generator, size: int) -> GeneratedRow:
    draw = _base_draw(rng, size)
    kind = str(rng.choice(OOD_SHAPES))
    texture = SHAPE_CLASSES[int(rng.integers(len(SHAPE_CLASSES)))]
    return GeneratedRow(
        _textured(draw, kind, texture, size), None, (), _annotations(kind, texture, draw.color, draw.background)
    )


def _describe_cue_conflict(rng: np.random.Generator, size: int) -> GeneratedRow:
    draw = _base_draw(rng, size)
    shape = SHAPE_CLASSES[draw.shape]
    texture = SHAPE_CLASSES[int(rng.integers(len(SHAPE_CLASSES)))]
    return GeneratedRow(
        _textured(draw, shape, texture, size), draw.shape, (), _annotations(shape, texture, draw.color, draw.background)
    )


def _describe_captions(rng: np.random.Generator, size: int) -> GeneratedRow:
    draw = _base_draw(rng, size)
    shape = SHAPE_CLASSES[draw.shape]
    pattern = CLASS_TEXTURES[shape]
    relative = draw.radius / size
    scale = "small" if relative < 0.25 else "large" if relative > 0.29 else "medium-sized"
    position = _POSITIONS[min(2, int(3 * draw.cy / size))][min(2, int(3 * draw.cx / size))]
    captions = (
        f"a photo of a {draw.color} {shape}.",
        f"a {scale} {draw.color} {shape} on a {draw.background} background.",
        f"a {draw.color} {shape} filled with {pattern}.",
        f"a {shape} in the {position} of the image.",
        f"a {draw.color} {shape} with {pattern} in the {position}, on {draw.background}.",
    )
    return GeneratedRow(
        _textured(draw, shape, shape, size), None, captions, _annotations(shape, shape, draw.color, draw.background)
    )


def _sample_factors(rng: np.random.Generator) -> list[str]:
    """One to three compatible factors, in the order drawn (the first is the "top" factor)."""
    count = int(rng.choice([1, 2, 3], p=[0.6, 0.3, 0.1]))
    chosen: list[str] = []
    while len(chosen) < count:
        factor = str(rng.choice(GENERATED_FACTORS))
        if factor in chosen or any({factor, other} in _EXCLUSIVE for other in chosen):
            continue
        chosen.append(factor)
    return chosen


def _describe_factors(rng: np.random.Generator, size: int) -> GeneratedRow:
    draw = _base_draw(rng, size)
    factors = _sample_factors(rng)
    active = set(factors)
    shape = SHAPE_CLASSES[draw.shape]
    placement = _factor_placement(draw, active, rng, size)
    fill, color_name = _factor_fill(draw, shape, active, rng)
    variant = "sub" if "subcategory" in active else ""
    objects = [Drawn(shape, variant, placement, fill)]
    if "multiple_objects" in active:
        objects.append(Drawn(shape, variant, _second_placement(placement, rng, size), fill))
    scene = Scene(
        size=size,
        background=BACKGROUNDS[draw.background],
        clutter_seed=int(rng.integers(2**31)) if "background" in active else None,
        noise_seed=draw.noise_seed,
        objects=tuple(objects),
        occluder=_occluder(placement, rng) if "object_blocking" in active else None,
        gain=float(rng.uniform(0.3, 0.45)) if "darker" in active else 1.0,
        lift=float(rng.uniform(0.55, 0.7)) if "brighter" in active else 0.0,
    )
    background = "clutter" if "background" in active else draw.background
    annotations = _annotations(shape, shape if fill.texture == shape else None, color_name, background)
    annotations["top"] = factors[0]
    annotations["multi"] = ",".join(factor for factor in FACTORS if factor in active)
    return GeneratedRow(scene, draw.shape, (), annotations)


def _factor_placement(draw: _Draw, active: set[str], rng: np.random.Generator, size: int) -> Placement:
    """Size (smaller/larger/multiple_objects), position (partial_view), pose and shape factors."""
    radius = draw.radius
    if "smaller" in active:
        radius = float(rng.uniform(0.10, 0.15) * size)
    if "larger" in active:
        radius = float(rng.uniform(0.42, 0.50) * size)
    if "multiple_objects" in active:
        radius *= 0.7
    margin = radius + 1.0
    cx = float(np.clip(draw.cx, margin, size - margin)) if margin < size / 2 else size / 2
    cy = float(np.clip(draw.cy, margin, size - margin)) if margin < size / 2 else size / 2
    if "partial_view" in active:
        offset = float(rng.uniform(-0.1, 0.35)) * radius
        cx, cy = [(offset, cy), (size - offset, cy), (cx, offset), (cx, size - offset)][int(rng.integers(4))]
    angle = draw.angle
    if "pose" in active:
        angle += float(rng.choice([-1.0, 1.0])) * float(rng.uniform(35.0, 55.0))
    aspect = float(rng.uniform(0.5, 0.65)) if "shape" in active else 1.0
    return Placement(cx, cy, radius, angle, aspect)


def _factor_fill(draw: _Draw, shape: str, active: set[str], rng: np.random.Generator) -> tuple[Fill, str]:
    """Colour, texture, pattern and style factors; returns the fill and the colour's name."""
    color_name = str(rng.choice(list(UNUSUAL_COLORS))) if "color" in active else draw.color
    color = UNUSUAL_COLORS[color_name] if "color" in active else COLORS[color_name]
    period = draw.period * (float(rng.choice([0.4, 2.2])) if "texture" in active else 1.0)
    noise_seed = int(rng.integers(2**31))
    texture: str | None = "noise" if "pattern" in active else shape
    if "style" in active:
        texture = None
        color = (int(color[0] * 0.6), int(color[1] * 0.6), int(color[2] * 0.6))
    return Fill(color, texture, period, draw.phase, noise_seed), color_name


def _second_placement(main: Placement, rng: np.random.Generator, size: int) -> Placement:
    """A second, smaller instance in the other half of the image (the multiple_objects factor)."""
    radius = main.radius * float(rng.uniform(0.6, 0.9))
    if main.cx > size / 2:
        cx = float(rng.uniform(radius + 1, size / 2))
    else:
        cx = float(rng.uniform(size / 2, size - radius - 1))
    cy = float(rng.uniform(radius + 1, size - radius - 1))
    return replace(main, cx=cx, cy=cy, radius=radius)


def _occluder(main: Placement, rng: np.random.Generator) -> tuple[float, float, float, float]:
    """A grey rectangle of about the object's radius over part of it (the object_blocking factor)."""
    width, height = rng.uniform(0.8, 1.1, size=2) * main.radius
    x0 = main.cx + float(rng.uniform(-1.0, 0.1)) * main.radius
    y0 = main.cy + float(rng.uniform(-1.0, 0.1)) * main.radius
    return (x0, y0, x0 + float(width), y0 + float(height))


_DESCRIBERS = {
    "shapes": _describe_id,
    "shapes-v2": _describe_id,
    "shapes-sketch": _describe_sketch,
    "shapes-ood": _describe_ood,
    "shapes-cue-conflict": _describe_cue_conflict,
    "shapes-x": _describe_factors,
    "shapes-captions": _describe_captions,
}
