"""Shapes-world images as training tensors, preprocessed by a model's own eval transform.

The demo trains on generated data only (`embedstore.sources.synthetic`): the images are read through
the dataset's ``iter_encoded`` (the bytes the extractor would read), decoded with PIL and passed
through ``ModelAdapter.pil_transform``, so training sees exactly the pixels extraction will feed.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from embedstore.errors import DatasetError
from embedstore.sources import open_dataset


@dataclass(frozen=True)
class ShapesTensors:
    """``n`` generated images of one shapes-world variant.

    ``pixels`` ``[n, 3, H, W]`` are float16 (a 160-px timm input is 300 KB per image in float32;
    training casts each batch to float32). ``labels`` ``[n]`` index ``classnames`` (None for the
    unlabelled caption variant); ``captions`` holds each image's captions (empty tuples for labelled
    variants); ``templates`` are the dataset's zero-shot templates (``{c}`` placeholders).
    """

    spec: str
    pixels: torch.Tensor
    labels: torch.Tensor | None
    captions: tuple[tuple[str, ...], ...]
    classnames: list[str]
    templates: list[str]

    def __len__(self) -> int:
        return int(self.pixels.shape[0])


def shapes_spec(variant: str, n: int, seed: int) -> str:
    """The synthetic dataset spec of ``n`` images of ``variant`` drawn from random stream ``seed``."""
    return f"synthetic:{variant}?n={n}&seed={seed}"


def load_shapes(variant: str, n: int, seed: int, transform: Callable[[Any], torch.Tensor]) -> ShapesTensors:
    """Generate, encode, decode and ``transform`` the rows ``0..n-1`` of ``shapes_spec(variant, n, seed)``."""
    spec = shapes_spec(variant, n, seed)
    dataset = open_dataset(variant, spec)
    pixels = []
    for encoded in dataset.iter_encoded(0, len(dataset)):
        if encoded.data is None:
            raise DatasetError(f"{spec}: row {encoded.row} could not be generated ({encoded.error})")
        with Image.open(io.BytesIO(encoded.data)) as image:
            pixels.append(transform(image.convert("RGB")).to(torch.float16))
    labelled = dataset.task == "classification"
    return ShapesTensors(
        spec=spec,
        pixels=torch.stack(pixels),
        labels=torch.tensor([s.label for s in dataset.samples]) if labelled else None,
        captions=tuple(tuple(s.captions) for s in dataset.samples),
        classnames=list(dataset.classnames),
        templates=list(dataset.templates),
    )
