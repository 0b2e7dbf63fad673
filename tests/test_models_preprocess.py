"""PreprocessConfig describes the libraries' eval transforms exactly: replaying a config with plain
PIL operations gives the same tensor as open_clip's / timm's own transform."""

from __future__ import annotations

import numpy as np
import pytest
import timm.data
import torch
import torchvision.transforms.functional as TF
from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image

from embedstore.errors import ModelError
from embedstore.models import PreprocessConfig, load_model
from embedstore.models.preprocess import from_openclip, from_timm

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
# (height, width): sizes whose scaled sides are whole numbers for every config below, so the
# libraries' rounding rules (truncate vs round) agree and the comparison can be exact.
_SHAPES = [(48, 96), (96, 48), (64, 64), (40, 40)]


def replay(cfg: PreprocessConfig, image: Image.Image) -> torch.Tensor:
    """The three steps of PreprocessConfig's docstring, written with PIL only."""
    image = image.convert("RGB")
    w, h = image.size
    rh, rw = cfg.resize
    if cfg.resize_mode == "squash":
        new_h, new_w = rh, rw
    else:
        scale = (max if cfg.resize_mode == "shortest" else min)(rh / h, rw / w)
        new_h, new_w = round(h * scale), round(w * scale)
    image = image.resize((new_w, new_h), _RESAMPLE[cfg.interpolation])
    th, tw = cfg.size
    canvas = Image.new("RGB", (max(tw, new_w), max(th, new_h)), cfg.fill)
    canvas.paste(image, ((canvas.width - new_w) // 2, (canvas.height - new_h) // 2))
    top, left = round((canvas.height - th) / 2), round((canvas.width - tw) / 2)
    cropped = canvas.crop((left, top, left + tw, top + th))
    return TF.normalize(TF.to_tensor(cropped), cfg.mean, cfg.std)


def images() -> list[Image.Image]:
    rng = np.random.default_rng(2)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in _SHAPES]


def openclip_cfg(**changes) -> dict:
    cfg = {"size": 32, "mode": "RGB", "mean": (0.48, 0.45, 0.40), "std": (0.26, 0.26, 0.27),
           "interpolation": "bicubic", "resize_mode": "shortest", "fill_color": 0}  # fmt: skip
    return {**cfg, **changes}


@pytest.mark.parametrize(
    "cfg",
    [
        openclip_cfg(),
        openclip_cfg(interpolation="bilinear"),
        openclip_cfg(resize_mode="squash"),
        openclip_cfg(resize_mode="longest", fill_color=128),
        openclip_cfg(size=(32, 48), interpolation="bilinear"),  # non-square shortest: bicubic regardless
    ],
)
def test_openclip_config_replays_open_clips_transform(cfg: dict) -> None:
    described = from_openclip(cfg)
    transform = image_transform_v2(PreprocessCfg(**cfg), is_train=False)
    for image in images():
        assert torch.equal(replay(described, image), transform(image))


def timm_cfg(**changes) -> dict:
    cfg = {"input_size": (3, 32, 32), "interpolation": "bicubic", "mean": (0.5, 0.4, 0.3),
           "std": (0.2, 0.25, 0.3), "crop_pct": 0.8, "crop_mode": "center"}  # fmt: skip
    return {**cfg, **changes}


@pytest.mark.parametrize(
    "cfg",
    [
        timm_cfg(),
        timm_cfg(interpolation="bilinear"),
        timm_cfg(crop_mode="squash"),
        timm_cfg(crop_mode="border"),
        timm_cfg(crop_pct=1.0),
    ],
)
def test_timm_config_replays_timms_transform(cfg: dict) -> None:
    described = from_timm(cfg)
    assert described.resize == (int(32 / cfg["crop_pct"]),) * 2
    transform = timm.data.create_transform(**cfg, is_training=False)
    for image in images():
        assert torch.equal(replay(described, image), transform(image))


def test_border_mode_pads_with_the_mean_colour() -> None:
    described = from_timm(timm_cfg(crop_mode="border"))
    assert described.resize_mode == "longest" and described.fill == (128, 102, 76)


def test_configs_are_hashable_and_shared_by_equal_models() -> None:
    a = load_model("openclip:embedstore-tiny@random:0").preprocess
    b = load_model("openclip:embedstore-tiny@random:1").preprocess
    c = load_model("timm:test_vit@random").preprocess
    assert a == b and hash(a) == hash(b)
    assert len({a, b, c}) == 2


def test_unknown_modes_are_refused() -> None:
    with pytest.raises(ModelError, match="resize_mode 'stretch'"):
        PreprocessConfig((32, 32), (32, 32), "stretch", "bicubic", (0.5,) * 3, (0.5,) * 3)
    with pytest.raises(ModelError, match="crop_mode 'random'"):
        from_timm(timm_cfg(crop_mode="random"))
