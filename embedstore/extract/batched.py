"""The batched decode path: JPEG decode and resize/crop/normalise for a whole batch at once.

Meant for the GPU (``torchvision.io.decode_jpeg(device="cuda")`` decodes a list of JPEGs in one call),
and written so that it runs on the CPU too, which is how the tests check it.

Resize + centre crop is done for the whole batch by one ``torchvision.ops.roi_align`` call: for each
image, the crop window of ``PreprocessConfig`` is mapped back to a box in source pixels, and
``roi_align`` (``aligned=True``, adaptive sampling ratio ``ceil(box / output)``) averages
bilinear samples over each output pixel's footprint. That is an area-averaged bilinear resample, not
PIL's bicubic with antialiasing, so embeddings move slightly from the CPU path; ``benchmarks/extract.py``
and ``tests/test_extract.py::test_gpu_decode_path_stays_close_to_the_cpu_path`` measure how far.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.ops import roi_align

from embedstore.models.preprocess import PreprocessConfig

#: Pixels (per channel) one padded sub-batch may hold: bounds memory when image sizes vary.
SUB_BATCH_PIXELS = 64 * 1024 * 1024


def decode_jpegs(data: Sequence[bytes], device: torch.device | str) -> list[torch.Tensor | None]:
    """Decode JPEG bytes to uint8 ``[3, H, W]`` tensors on ``device``; None where decoding failed
    (the caller falls back to PIL for those). One batched call; one call per image only when the
    batch contains an image the decoder rejects."""
    tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in data]
    if not tensors:
        return []
    with warnings.catch_warnings():
        # torchvision 0.29 deprecates its decoders in favour of TorchCodec; they still work
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return list(decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:
            out: list[torch.Tensor | None] = []
            for tensor in tensors:
                try:
                    out.append(decode_jpeg(tensor, mode=ImageReadMode.RGB, device=device))
                except RuntimeError:
                    out.append(None)
            return out


def crop_boxes(sizes: Sequence[tuple[int, int]], config: PreprocessConfig) -> torch.Tensor:
    """``[B, 4]`` boxes ``(x0, y0, x1, y1)`` in source pixel coordinates (pixel i spans [i, i+1))
    of the region each image's output crop covers, following ``PreprocessConfig``'s resize rule."""
    (out_h, out_w), (resize_h, resize_w) = config.size, config.resize
    boxes = []
    for height, width in sizes:
        if config.resize_mode == "squash":
            scale_y, scale_x = resize_h / height, resize_w / width
        else:
            pick = max if config.resize_mode == "shortest" else min
            scale_y = scale_x = pick(resize_h / height, resize_w / width)
        box_w, box_h = out_w / scale_x, out_h / scale_y
        x0, y0 = (width - box_w) / 2, (height - box_h) / 2
        boxes.append((x0, y0, x0 + box_w, y0 + box_h))
    return torch.tensor(boxes, dtype=torch.float32)


def preprocess_batch(images: Sequence[torch.Tensor], config: PreprocessConfig) -> torch.Tensor:
    """uint8 ``[3, H_i, W_i]`` images (any sizes, one device) -> normalised float32 ``[B, 3, h, w]``."""
    if not images:
        return torch.empty((0, 3, *config.size), dtype=torch.float32)
    device = images[0].device
    order = sorted(range(len(images)), key=lambda i: (images[i].shape[1], images[i].shape[2]))
    out = torch.empty((len(images), 3, *config.size), dtype=torch.float32, device=device)
    start = 0
    while start < len(order):
        stop, max_h, max_w = start, 0, 0
        while stop < len(order):
            _, h, w = images[order[stop]].shape
            if stop > start and (stop - start + 1) * max(max_h, h) * max(max_w, w) > SUB_BATCH_PIXELS:
                break
            max_h, max_w, stop = max(max_h, h), max(max_w, w), stop + 1
        members = order[start:stop]
        padded = torch.zeros((len(members), 3, max_h, max_w), dtype=torch.float32, device=device)
        sizes = []
        for j, i in enumerate(members):
            _, h, w = images[i].shape
            padded[j, :, :h, :w] = images[i]
            sizes.append((h, w))
        boxes = crop_boxes(sizes, config).to(device)
        rois = torch.cat([torch.arange(len(members), device=device, dtype=torch.float32)[:, None], boxes], dim=1)
        crops = roi_align(padded, rois, output_size=config.size, spatial_scale=1.0, sampling_ratio=-1, aligned=True)
        if config.resize_mode == "longest":
            crops = _fill_outside(crops, sizes, boxes, config)
        out[torch.tensor(members, device=device)] = crops
        start = stop
    mean = torch.tensor(config.mean, device=device).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(config.std, device=device).view(1, 3, 1, 1) * 255.0
    return (out.clamp_(0, 255) - mean) / std


def _fill_outside(
    crops: torch.Tensor, sizes: Sequence[tuple[int, int]], boxes: torch.Tensor, config: PreprocessConfig
) -> torch.Tensor:
    """Paint output pixels whose centre falls outside the source image with the pad colour."""
    out_h, out_w = config.size
    fill = torch.tensor(config.fill, dtype=crops.dtype, device=crops.device).view(3, 1, 1)
    for j, (h, w) in enumerate(sizes):
        x0, y0, x1, y1 = boxes[j].tolist()
        xs = x0 + (torch.arange(out_w, device=crops.device) + 0.5) * (x1 - x0) / out_w
        ys = y0 + (torch.arange(out_h, device=crops.device) + 0.5) * (y1 - y0) / out_h
        inside = ((ys >= 0) & (ys < h))[:, None] & ((xs >= 0) & (xs < w))[None, :]
        crops[j] = torch.where(inside, crops[j], fill)
    return crops
