"""The image preprocessing of an encoder, written as data a batched (GPU) preprocessor can replay.

open_clip's eval transform (``open_clip.transform.image_transform``, ``is_train=False``) and timm's
(``timm.data.transforms_factory.transforms_imagenet_eval``) are both one resize, one centred crop or pad,
and a per-channel normalisation. ``PreprocessConfig`` records exactly those parameters, so models whose
configs compare equal can share one preprocessed batch. The libraries' own PIL transforms stay the
reference (``ModelAdapter.pil_transform``); tests check that this description reproduces them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from embedstore.errors import ModelError

RESIZE_MODES = ("shortest", "longest", "squash")


@dataclass(frozen=True)
class PreprocessConfig:
    """Resize, centre crop (or pad), normalise; hashable.

    For an RGB image of height ``h`` and width ``w``, with ``(rh, rw) = resize``:

    1. Resize with ``interpolation`` (PIL resampling, as both libraries apply it to PIL images):
       - ``"shortest"``: keep the aspect ratio, scale by ``max(rh / h, rw / w)`` so the image covers
         ``resize`` (for a square ``resize`` this is "shortest side to ``rh``");
       - ``"longest"``: keep the aspect ratio, scale by ``min(rh / h, rw / w)`` so the image fits in ``resize``;
       - ``"squash"``: resize to exactly ``(rh, rw)``.
       The libraries round the scaled sides (torchvision truncates the long side of a square
       ``"shortest"`` resize; ``ResizeKeepRatio`` rounds), so a replay may differ by one pixel there.
    2. Centre-crop to ``size``; where the resized image is smaller than ``size`` (only possible with
       ``"longest"``) pad it symmetrically with ``fill`` (0-255 per channel).
    3. Scale to [0, 1] and normalise each channel: ``(x - mean) / std``.

    ``resize`` equals ``size`` for open_clip; for timm it is ``floor(size / crop_pct)``.
    """

    size: tuple[int, int]
    resize: tuple[int, int]
    resize_mode: str
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    fill: tuple[int, int, int] = (0, 0, 0)

    def __post_init__(self) -> None:
        if self.resize_mode not in RESIZE_MODES:
            raise ModelError(f"preprocess resize_mode {self.resize_mode!r} is not one of {RESIZE_MODES}")


def _pair(value: int | tuple[int, ...] | list[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    return (int(value[-2]), int(value[-1]))


def _triple(value: float | tuple[float, ...] | list[float]) -> tuple[float, float, float]:
    if isinstance(value, (int, float)):
        return (float(value),) * 3
    return tuple(float(v) for v in value)  # type: ignore[return-value]


def from_openclip(cfg: dict[str, Any]) -> PreprocessConfig:
    """Describe open_clip's eval transform for a model's ``model.visual.preprocess_cfg``.

    Mirrors ``image_transform(is_train=False)`` of open_clip 3.x, including its one quirk: a
    non-square ``"shortest"`` resize goes through ``ResizeKeepRatio`` with its default bicubic
    interpolation, whatever the config says.
    """
    size = _pair(cfg["size"])
    mode = cfg.get("resize_mode") or "shortest"
    interpolation = "bilinear" if cfg.get("interpolation") == "bilinear" else "bicubic"
    if mode == "shortest" and size[0] != size[1]:
        interpolation = "bicubic"
    fill = int(cfg.get("fill_color", 0))
    return PreprocessConfig(
        size=size,
        resize=size,
        resize_mode=mode,
        interpolation=interpolation,
        mean=_triple(cfg["mean"]),
        std=_triple(cfg["std"]),
        fill=(fill, fill, fill) if mode == "longest" else (0, 0, 0),
    )


_TIMM_CROP_MODES = {"center": "shortest", "squash": "squash", "border": "longest"}


def from_timm(data_config: dict[str, Any]) -> PreprocessConfig:
    """Describe timm's eval transform for ``timm.data.resolve_model_data_config(model)``.

    Mirrors ``transforms_imagenet_eval``: resize to ``floor(size / crop_pct)`` (crop_mode ``center``:
    shortest side; ``squash``: both sides; ``border``: longest side, then pad with ``round(255 * mean)``),
    then centre-crop to ``size``.
    """
    if data_config.get("crop_border_pixels"):
        raise ModelError("timm data configs with crop_border_pixels are not supported")
    size = _pair(data_config["input_size"])
    crop_pct = data_config.get("crop_pct") or 0.875  # timm's DEFAULT_CROP_PCT
    crop_mode = data_config.get("crop_mode") or "center"
    if crop_mode not in _TIMM_CROP_MODES:
        raise ModelError(f"timm crop_mode {crop_mode!r} is not one of {tuple(_TIMM_CROP_MODES)}")
    mean = _triple(data_config["mean"])
    mode = _TIMM_CROP_MODES[crop_mode]
    return PreprocessConfig(
        size=size,
        resize=(math.floor(size[0] / crop_pct), math.floor(size[1] / crop_pct)),
        resize_mode=mode,
        interpolation=str(data_config.get("interpolation") or "bilinear"),
        mean=mean,
        std=_triple(data_config["std"]),
        fill=tuple(round(255 * m) for m in mean) if mode == "longest" else (0, 0, 0),  # type: ignore[arg-type]
    )
