"""Reading and decoding: a stream of prepared batches, one pass over a dataset.

The unit of work is a *batch task*: rows ``[start, stop)`` inside one chunk (batches never cross a
chunk boundary, so a resumed run forms exactly the batches an uninterrupted run forms). A task reads
its samples' encoded bytes (each file opened once), decodes each image once, and prepares it once per
distinct preprocessing config: models whose configs are equal share the prepared tensor.

CPU path: PIL decode + each config's own library PIL transform, in ``workers`` processes
(``torch.utils.data.DataLoader``). GPU path: the worker reads bytes and packs the JPEGs the GPU decoder
may take (``decode.gpu_decodable``) into one tensor, PIL-decoding the other files (and the rows of the
``cpu_decode_share``, see ``cpu_decoded``) into another; a decoding thread of the main process decodes
the JPEGs in one batched call on the GPU, uploads the PIL-decoded pixels in one copy (pinned by the
loader), and resizes/crops/normalises the batch there (``embedstore.extract.batched``), on its own CUDA
stream and up to two batches ahead of the encoders (``prefetched``).
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from embedstore.extract.batched import decode_jpegs, preprocess_batch
from embedstore.extract.decode import BadImage, DecodeOptions, decode_rgb, gpu_decodable
from embedstore.models.preprocess import PreprocessConfig


@dataclass(frozen=True)
class BatchTask:
    chunk: int
    start: int
    stop: int


@dataclass
class PreparedBatch:
    """Rows ``start:stop`` ready for the encoders. ``pixels[config]`` holds one tensor per
    preprocessing config with a row for every *good* sample (``good_rows``, ascending)."""

    task: BatchTask
    good_rows: np.ndarray
    pixels: dict[PreprocessConfig, torch.Tensor]
    bad: list[tuple[int, str]] = field(default_factory=list)


def batch_tasks(n_rows: int, chunk_rows: int, batch_size: int, chunks: Sequence[int]) -> list[BatchTask]:
    """Batch tasks covering the given chunks, each at most ``batch_size`` rows, never crossing a chunk."""
    tasks = []
    for chunk in chunks:
        start, stop = chunk * chunk_rows, min((chunk + 1) * chunk_rows, n_rows)
        for a in range(start, stop, batch_size):
            tasks.append(BatchTask(chunk, a, min(a + batch_size, stop)))
    return tasks


class _CpuTasks(TorchDataset):
    """Each item is one batch task read, decoded and preprocessed (PIL) for every config."""

    def __init__(self, dataset, tasks, transforms: Mapping[PreprocessConfig, Callable], options: DecodeOptions):
        self.dataset, self.tasks, self.transforms, self.options = dataset, tasks, dict(transforms), options

    def __len__(self) -> int:
        return len(self.tasks)

    def __getitem__(self, index: int) -> PreparedBatch:
        if torch.utils.data.get_worker_info() is None:
            # In the main process (workers=0) torch's intra-op threads make the small per-image
            # tensor ops of a PIL transform ~10x slower (measured: 129 vs 13 ms an image); the
            # DataLoader's workers already run with one thread.
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                return self._prepare(index)
            finally:
                torch.set_num_threads(threads)
        return self._prepare(index)

    def _prepare(self, index: int) -> PreparedBatch:
        task = self.tasks[index]
        good, bad, per_config = [], [], {c: [] for c in self.transforms}
        for sample in self.dataset.iter_encoded(task.start, task.stop):
            if sample.data is None:
                bad.append((sample.row, sample.error or "unreadable"))
                continue
            try:
                image = decode_rgb(sample.data, self.options)
            except BadImage as exc:
                bad.append((sample.row, str(exc)))
                continue
            good.append(sample.row)
            for config, transform in self.transforms.items():
                per_config[config].append(transform(image))
        pixels = {c: torch.stack(t) if t else torch.empty((0, 3, *c.size)) for c, t in per_config.items()}
        return PreparedBatch(task, np.asarray(good, dtype=np.int64), pixels, bad)


@dataclass
class PackedBytes:
    """Encoded files packed into one uint8 tensor (DataLoader workers hand tensors over through
    shared memory, where a list of ``bytes`` would be pickled through a pipe); item ``i`` is a view."""

    data: torch.Tensor
    ends: list[int]

    @classmethod
    def pack(cls, parts: Sequence[bytes]) -> PackedBytes:
        ends = np.cumsum([len(p) for p in parts], dtype=np.int64).tolist()
        data = torch.empty(ends[-1] if ends else 0, dtype=torch.uint8)
        _copy_into(data, parts, ends)
        return cls(data, ends)

    def __len__(self) -> int:
        return len(self.ends)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.data[(self.ends[i - 1] if i else 0) : self.ends[i]]


def _copy_into(data: torch.Tensor, parts: Sequence[bytes | np.ndarray], ends: Sequence[int]) -> None:
    """Copy ``parts`` back to back into the flat uint8 ``data`` (one copy each)."""
    flat, start = data.numpy(), 0
    for part, end in zip(parts, ends, strict=True):
        flat[start:end] = np.frombuffer(part, dtype=np.uint8) if isinstance(part, bytes) else part.reshape(-1)
        start = end


@dataclass
class PackedPixels:
    """Decoded 8-bit RGB images (``[H, W, 3]`` each, any sizes) packed into one flat uint8 tensor, so that
    a batch's PIL-decoded images cross from a worker in one shared-memory tensor, are pinned once and
    go to the GPU in one copy. ``images()`` gives ``[3, H, W]`` views of (a copy of) it on a device."""

    data: torch.Tensor
    shapes: list[tuple[int, int]]

    @classmethod
    def pack(cls, images: Sequence[np.ndarray]) -> PackedPixels:
        ends = np.cumsum([a.size for a in images], dtype=np.int64).tolist()
        data = torch.empty(ends[-1] if ends else 0, dtype=torch.uint8)
        _copy_into(data, images, ends)
        return cls(data, [a.shape[:2] for a in images])

    def __len__(self) -> int:
        return len(self.shapes)

    def pin_memory(self) -> PackedPixels:
        return PackedPixels(self.data.pin_memory(), self.shapes) if len(self.data) else self

    def images(self, device: torch.device) -> list[torch.Tensor]:
        """The images as ``[3, H, W]`` views (channels-last strides) of one copy on ``device``;
        from pinned memory the copy does not block the host."""
        data = self.data.to(device, non_blocking=self.data.is_pinned())
        out, start = [], 0
        for height, width in self.shapes:
            stop = start + height * width * 3
            out.append(data[start:stop].view(height, width, 3).permute(2, 0, 1))
            start = stop
        return out


def cpu_decoded(row: int, share_permille: int) -> bool:
    """Whether ``row`` is one of the rows the GPU path leaves to PIL in the workers (the
    ``cpu_decode_share``, ``share_permille`` of every 1000 rows): row r is when
    ``floor((r + 1) k / 1000) > floor(r k / 1000)``, k = ``share_permille``. Exactly k rows of any 1000
    consecutive ones, spread evenly, and fixed by the row number alone, so that a resumed run, or
    another rank, decodes every row the way an uninterrupted run does. Balancing the GPU's JPEG
    decoder against idle CPU cores this way follows DALI's ``hw_decoder_load`` split."""
    return ((row + 1) * share_permille) // 1000 > (row * share_permille) // 1000


@dataclass
class _EncodedTask:
    task: BatchTask
    jpeg: PackedBytes  # the files the GPU decodes (`decode.gpu_decodable`)
    jpeg_rows: list[int]
    decoded: PackedPixels  # the others, PIL-decoded in the worker
    decoded_rows: list[int]
    bad: list[tuple[int, str]]

    def pin_memory(self) -> _EncodedTask:
        """Called by the DataLoader's pinning thread: pins the decoded pixels (what goes to the GPU
        as it is); nvJPEG stages the encoded files itself."""
        return replace(self, decoded=self.decoded.pin_memory())


class _BytesTasks(TorchDataset):
    """Each item is one batch task's bytes; files the GPU decoder should not take, and the rows of the
    CPU's decode share, are PIL-decoded here."""

    def __init__(self, dataset, tasks, options: DecodeOptions, cpu_share_permille: int = 0):
        self.dataset, self.tasks, self.options = dataset, tasks, options
        self.cpu_share_permille = cpu_share_permille

    def __len__(self) -> int:
        return len(self.tasks)

    def __getitem__(self, index: int) -> _EncodedTask:
        task = self.tasks[index]
        jpeg, jpeg_rows, decoded, decoded_rows, bad = [], [], [], [], []
        for sample in self.dataset.iter_encoded(task.start, task.stop):
            if sample.data is None:
                bad.append((sample.row, sample.error or "unreadable"))
                continue
            try:
                if gpu_decodable(sample.data, self.options) and not cpu_decoded(sample.row, self.cpu_share_permille):
                    jpeg.append(sample.data)
                    jpeg_rows.append(sample.row)
                else:
                    decoded.append(np.asarray(decode_rgb(sample.data, self.options), dtype=np.uint8))
                    decoded_rows.append(sample.row)
            except BadImage as exc:
                bad.append((sample.row, str(exc)))
        return _EncodedTask(task, PackedBytes.pack(jpeg), jpeg_rows, PackedPixels.pack(decoded), decoded_rows, bad)


def _pil_to_tensor(image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def _unbatched(item):
    return item


def iterate_prepared(
    dataset,
    tasks: Sequence[BatchTask],
    transforms: Mapping[PreprocessConfig, Callable],
    *,
    decode: str,
    device: torch.device,
    workers: int,
    options: DecodeOptions,
    cpu_share_permille: int = 0,
) -> Iterator[PreparedBatch]:
    """Prepared batches in task order. ``decode="cpu"``: PIL + library transforms in the workers;
    ``decode="gpu"``: batched decode and preprocessing on ``device``, but for the rows ``cpu_decoded``
    leaves to PIL in the workers (``cpu_share_permille`` of every 1000)."""
    if decode == "cpu":
        source = _CpuTasks(dataset, tasks, transforms, options)
    else:
        source = _BytesTasks(dataset, tasks, options, cpu_share_permille)
    loader = DataLoader(
        source,
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        collate_fn=_unbatched,
        prefetch_factor=4 if workers else None,
        persistent_workers=False,
        pin_memory=decode == "gpu" and device.type == "cuda",
    )
    if decode == "cpu":
        yield from loader
        return
    configs = list(transforms)
    with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
        items = iter(loader)  # the loader's pinning thread pins for the device current here: this one
    yield from prefetched((_finish_on_device(item, configs, device, options) for item in items), device)


_END = object()


@dataclass
class _Failed:
    error: BaseException


def prefetched(batches: Iterator[PreparedBatch], device: torch.device, depth: int = 2) -> Iterator[PreparedBatch]:
    """``batches`` in order, produced up to ``depth`` ahead by a background thread.

    On CUDA the thread works on a side stream, so the next batch's decoding and preprocessing
    kernels (and nvJPEG's host-side work) overlap the encoders running on the current stream; each
    batch is handed over with an event the current stream waits on, and its tensors are marked as
    used there (``record_stream``) so the caching allocator does not reuse them early. An error in
    the thread is raised here; closing this generator early stops the thread after its batch.
    """
    handoff: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    side = torch.cuda.Stream(device) if device.type == "cuda" else None
    # the caller's device index (a plain "cuda" is the caller's current device), set in the thread
    device_index = (device.index if device.index is not None else torch.cuda.current_device()) if side else None

    def put(item) -> bool:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            if side is not None:
                # a new thread's current device is GPU 0: without this, leaving the stream context
                # below would touch (and create a context on) GPU 0 for a rank using another GPU
                torch.cuda.set_device(device_index)
            with torch.cuda.stream(side) if side is not None else contextlib.nullcontext():
                for batch in batches:
                    ready = None
                    if side is not None:
                        ready = torch.cuda.Event()
                        ready.record(side)
                    if not put((batch, ready)):
                        return
        except BaseException as exc:  # noqa: BLE001 - re-raised in the consuming thread
            put(_Failed(exc))
            return
        put(_END)

    thread = threading.Thread(target=produce, name="embedstore-decode", daemon=True)
    thread.start()
    try:
        while True:
            item = handoff.get()
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.error
            batch, ready = item
            if ready is not None:
                current = torch.cuda.current_stream(device)
                current.wait_event(ready)
                for tensor in batch.pixels.values():
                    if tensor.is_cuda:
                        tensor.record_stream(current)
            yield batch
    finally:
        stop.set()
        thread.join()


def _finish_on_device(
    item: _EncodedTask, configs: Sequence[PreprocessConfig], device: torch.device, options: DecodeOptions
) -> PreparedBatch:
    images: dict[int, torch.Tensor] = {}
    bad = list(item.bad)
    files = [item.jpeg[i] for i in range(len(item.jpeg))]
    for row, data, image in zip(item.jpeg_rows, files, decode_jpegs(files, device), strict=True):
        if image is None:  # the GPU decoder refused it: PIL decides
            try:
                image = _pil_to_tensor(decode_rgb(data.numpy().tobytes(), options)).to(device)
            except BadImage as exc:
                bad.append((row, str(exc)))
                continue
        images[row] = image
    for row, image in zip(item.decoded_rows, item.decoded.images(device), strict=True):
        images[row] = image
    rows = sorted(images)
    ordered = [images[r] for r in rows]
    pixels = {config: preprocess_batch(ordered, config, device) for config in configs}
    return PreparedBatch(item.task, np.asarray(rows, dtype=np.int64), pixels, sorted(bad))
