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

import functools
from collections.abc import Sequence

import torch
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.ops import roi_align

from embedstore.models.preprocess import PreprocessConfig

#: Pixels (per channel) one padded sub-batch may hold: bounds memory when image sizes vary.
SUB_BATCH_PIXELS = 64 * 1024 * 1024


def decode_jpegs(files: Sequence[torch.Tensor | bytes], device: torch.device | str) -> list[torch.Tensor | None]:
    """Decode JPEG files (uint8 CPU tensors or bytes) to uint8 ``[3, H, W]`` tensors on ``device``;
    None where decoding failed (the caller falls back to PIL for those). One batched call; one call
    per image only when the batch contains an image the decoder rejects."""
    tensors = [f if isinstance(f, torch.Tensor) else torch.frombuffer(bytearray(f), dtype=torch.uint8) for f in files]
    if not tensors:
        return []
    device = torch.device(device)
    if device.type == "cuda":
        # torchvision allocates the outputs on this thread's current stream but nvJPEG writes them on
        # a stream of its own that does not wait for this one: memory this stream freed while its
        # kernels were still queued could be overwritten under them. Drain the stream first (the
        # call blocks the host on its own stream anyway).
        torch.cuda.current_stream(device).synchronize()
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


def preprocess_batch(
    images: Sequence[torch.Tensor], config: PreprocessConfig, device: torch.device | str | None = None
) -> torch.Tensor:
    """uint8 ``[3, H_i, W_i]`` images (any sizes, on ``device``, by default the images' own) ->
    normalised float32 ``[B, 3, h, w]``. Images of a padded sub-batch are padded by repeating their
    last row and column, so that the resample at their bottom and right edges does not blend in
    padding: an image's result does not depend on the other images of its batch (but for the
    border pixels of a letterbox, ``resize_mode="longest"``). Nothing here waits for the device:
    the small index tensors go up from pinned memory."""
    device = torch.device(device) if device is not None else images[0].device if images else torch.device("cpu")
    if not images:
        return torch.empty((0, 3, *config.size), dtype=torch.float32, device=device)
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
        sizes = [tuple(images[i].shape[1:]) for i in members]
        if all(size == (max_h, max_w) for size in sizes):  # one size (a resized dataset): no padding
            padded = torch.stack([images[i] for i in members]).float()
        else:
            padded = torch.empty((len(members), 3, max_h, max_w), dtype=torch.float32, device=device)
            for j, (i, (h, w)) in enumerate(zip(members, sizes, strict=True)):
                padded[j, :, :h, :w] = images[i]
                padded[j, :, h:, :w] = padded[j, :, h - 1 : h, :w]
                padded[j, :, :, w:] = padded[j, :, :, w - 1 : w]
        boxes = crop_boxes(sizes, config)
        rois = torch.cat([torch.arange(len(members), dtype=torch.float32)[:, None], boxes], dim=1)
        crops = roi_align(
            padded, _upload(rois, device), output_size=config.size, spatial_scale=1.0, sampling_ratio=-1, aligned=True
        )
        if config.resize_mode == "longest":
            crops = _fill_outside(crops, sizes, boxes, config)
        out[_upload(torch.tensor(members), device)] = crops
        start = stop
    mean, std = _normalisation(config, device)
    return (out.clamp_(0, 255) - mean) / std


def _upload(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small CPU tensor on ``device`` without blocking the host (a copy from pageable memory would
    wait for the stream)."""
    return tensor.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else tensor


@functools.lru_cache(maxsize=64)
def _normalisation(config: PreprocessConfig, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``mean * 255`` and ``std * 255`` as ``[1, 3, 1, 1]`` on ``device`` (made once)."""
    mean = torch.tensor(config.mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(config.std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    return mean.to(device), std.to(device)


def _fill_outside(
    crops: torch.Tensor, sizes: Sequence[tuple[int, int]], boxes: torch.Tensor, config: PreprocessConfig
) -> torch.Tensor:
    """Paint output pixels whose centre falls outside the source image with the pad colour
    (``boxes`` on the CPU; the masks are made there and uploaded together)."""
    out_h, out_w = config.size
    masks = []
    for j, (h, w) in enumerate(sizes):
        x0, y0, x1, y1 = boxes[j].tolist()
        xs = x0 + (torch.arange(out_w) + 0.5) * (x1 - x0) / out_w
        ys = y0 + (torch.arange(out_h) + 0.5) * (y1 - y0) / out_h
        masks.append(((ys >= 0) & (ys < h))[:, None] & ((xs >= 0) & (xs < w))[None, :])
    inside = _upload(torch.stack(masks)[:, None], crops.device)
    fill = _upload(torch.tensor(config.fill, dtype=crops.dtype).view(1, 3, 1, 1), crops.device)
    return torch.where(inside, crops, fill)
