"""The batched decode path (`embedstore.extract.batched`) and what the GPU path's workers hand over
(`decode.gpu_decodable`, `reader.PackedBytes`), run on the CPU."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from embedstore.extract.batched import decode_jpegs, preprocess_batch
from embedstore.extract.decode import BadImage, DecodeOptions, gpu_decodable
from embedstore.extract.reader import PackedBytes, PackedPixels, cpu_decoded
from embedstore.models.preprocess import PreprocessConfig

CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
SHORTEST = PreprocessConfig((32, 32), (32, 32), "shortest", "bicubic", CLIP_MEAN, CLIP_STD)
LONGEST = PreprocessConfig((32, 32), (32, 32), "longest", "bicubic", CLIP_MEAN, CLIP_STD, fill=(10, 20, 30))


def _photo(height: int, width: int, seed: int) -> torch.Tensor:
    """A smooth-ish uint8 [3, H, W] image whose bottom and right edges are bright (so blending in
    padding would show)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = 120 + 100 * np.sin(x / 7.0 + seed) * np.cos(y / 5.0)
    image = np.stack([base, base[::-1], 255 - base]) + rng.normal(0, 8, (3, height, width))
    image[:, -3:, :] = 250
    image[:, :, -3:] = 250
    return torch.from_numpy(np.clip(image, 0, 255).astype(np.uint8))


def _jpeg(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", **options)
    return buffer.getvalue()


@pytest.mark.parametrize("config", [SHORTEST, LONGEST], ids=["shortest", "longest"])
def test_an_image_comes_out_the_same_whatever_shares_its_batch(config):
    small, big = _photo(61, 93, 0), _photo(120, 160, 1)
    alone = preprocess_batch([small], config)
    beside_a_bigger_one = preprocess_batch([big, small], config)[1]
    difference = (alone[0] - beside_a_bigger_one).abs()
    if config.resize_mode == "shortest":
        assert difference.max() < 1e-4
    else:  # a letterbox's border pixels may take a sample from past the image's edge
        assert difference.max() < 1e-4 or np.mean(difference.numpy() < 1e-4) > 0.95


def test_one_size_batches_take_the_unpadded_path_with_the_same_result():
    images = [_photo(40, 56, seed) for seed in range(3)]
    together = preprocess_batch(images, SHORTEST)
    one_by_one = torch.cat([preprocess_batch([image], SHORTEST) for image in images])
    mixed = preprocess_batch([*images, _photo(80, 80, 9)], SHORTEST)[:3]
    assert torch.allclose(together, one_by_one) and torch.allclose(together, mixed, atol=1e-4)


def test_the_letterbox_is_filled_with_the_pad_colour():
    wide = _photo(20, 80, 0)  # fits as 8 x 32: rows outside the middle 8 are padding
    out = preprocess_batch([wide], LONGEST)[0]
    mean = torch.tensor(CLIP_MEAN).view(3, 1) * 255
    std = torch.tensor(CLIP_STD).view(3, 1) * 255
    fill = (torch.tensor([10.0, 20.0, 30.0]).view(3, 1) - mean) / std
    assert torch.allclose(out[:, 0, :], fill.expand(3, 32)) and torch.allclose(out[:, -1, :], fill.expand(3, 32))
    assert not torch.allclose(out[:, 16, :], fill.expand(3, 32))


def test_an_empty_batch_is_an_empty_tensor_on_the_asked_device():
    out = preprocess_batch([], SHORTEST, torch.device("cpu"))
    assert out.shape == (0, 3, 32, 32) and out.dtype == torch.float32 and out.device.type == "cpu"


def test_decode_jpegs_takes_bytes_or_tensor_views_and_gives_none_only_for_the_corrupt_one():
    rng = np.random.default_rng(0)
    files = [_jpeg(Image.fromarray(rng.integers(0, 255, (24 + i, 30, 3), dtype=np.uint8))) for i in range(3)]
    corrupt = b"\xff\xd8\xff" + b"\x00" * 50
    packed = PackedBytes.pack([files[0], corrupt, files[1], files[2]])
    assert [bytes(packed[i].numpy()) for i in range(len(packed))] == [files[0], corrupt, files[1], files[2]]
    from_views = decode_jpegs([packed[i] for i in range(len(packed))], "cpu")
    from_bytes = decode_jpegs([files[0], files[1], files[2]], "cpu")
    assert from_views[1] is None
    for view_result, bytes_result in zip([from_views[0], from_views[2], from_views[3]], from_bytes, strict=True):
        assert torch.equal(view_result, bytes_result)
    assert [t.shape[1] for t in from_bytes] == [24, 25, 26]


def test_packing_nothing_gives_an_empty_pack():
    packed = PackedBytes.pack([])
    assert len(packed) == 0 and packed.data.numel() == 0


def test_only_complete_colour_or_grey_jpegs_go_to_the_gpu_decoder():
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8))
    good = _jpeg(rgb)
    options = DecodeOptions()
    assert gpu_decodable(good, options)
    assert gpu_decodable(_jpeg(rgb, progressive=True), options)
    assert gpu_decodable(_jpeg(rgb.convert("L")), options)
    assert gpu_decodable(good + b"\0" * 16, options)  # zero padding after the end marker
    assert not gpu_decodable(_jpeg(rgb.convert("CMYK")), options)  # PIL converts CMYK the libraries' way
    assert not gpu_decodable(good[: len(good) // 2], options)  # truncated: PIL records it as bad
    assert not gpu_decodable(b"\xff\xd8\xff not really a jpeg", options)
    png = io.BytesIO()
    rgb.save(png, "PNG")
    assert not gpu_decodable(png.getvalue(), options)
    with pytest.raises(BadImage, match="pixel limit"):
        gpu_decodable(good, DecodeOptions(pixel_limit=40 * 50 - 1))


@pytest.mark.parametrize("permille", [0, 1, 250, 333, 999, 1000])
def test_the_cpu_decode_share_takes_exactly_its_rows_of_any_thousand_spread_evenly(permille):
    taken = np.array([cpu_decoded(row, permille) for row in range(5000)])
    windows = np.convolve(taken, np.ones(1000, dtype=int), mode="valid")
    assert (windows == permille).all()
    if 0 < permille < 1000:
        gaps = np.diff(np.flatnonzero(taken))
        assert gaps.max() - gaps.min() <= 1  # evenly spread, not one block


def test_packed_pixels_come_back_as_the_images_in_channels_first_views():
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in ((5, 7), (9, 4), (1, 1))]
    packed = PackedPixels.pack(images)
    assert len(packed) == 3 and packed.data.numel() == sum(a.size for a in images)
    for got, want in zip(packed.images(torch.device("cpu")), images, strict=True):
        assert torch.equal(got, torch.from_numpy(want).permute(2, 0, 1))
    empty = PackedPixels.pack([])
    assert len(empty) == 0 and empty.images(torch.device("cpu")) == [] and empty.pin_memory() is empty
