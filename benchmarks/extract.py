"""Extraction throughput: ``run_extraction`` end to end against the encoders alone, and CLIP_benchmark.

    python benchmarks/extract.py                       # CPU: 64 images ViT-B-32, 8 for the five-model pass
    python benchmarks/extract.py --gpu-quick           # H200: 8,192 / 4,096 images, < ~5 min with model builds
    python benchmarks/extract.py --device cuda --n 50000 --five-n 20000

Data: synthetic photo-like 500x375 JPEGs (quality 90, ~100 KB: a two-colour gradient, a low-frequency
colour field, random filled shapes, a 2-px luma texture and pixel noise), written to a temporary
image folder. Each image's largest shape is a circle, square or triangle, and that shape is its
class folder, so zero-shot logits exist. All models are random-init (``@random``, seed 0): speed
does not depend on the weights.

Measured, at the precision and device the extractor picks (``auto``: bf16 weights on a GPU, fp32 on
the CPU) and its batching (``batch_size`` rows per batch, batches never cross a chunk):

- **end to end**: ``embedstore.extract.runner.run_extraction`` into a temporary store. The headline
  images/s is the image *pass* (read, decode, preprocess, encode every model, write), from the
  reader's first batch to the writer's last chunk; ``run_s`` adds the fixed costs (model builds,
  text embeddings, catalog). The pass is instrumented from outside the library (the runner's
  ``iterate_prepared`` and ``ChunkWriter`` are wrapped for the run): the main thread's time is split
  into waiting on the reader (not synchronised per batch, which would undo the overlap of the
  decoding thread, the encoders and the asynchronous copies), encoding (the runner's own per-model
  timers: launching, plus waiting for each batch's outputs to reach the host), draining the writer at
  the end, and the rest.
- **model only**: ``adapter.encode_image`` on the already-preprocessed batches (same count, same
  batches, already on the device), timed after one warm-up batch, synchronised at the end.
- **where the time goes**: the reader alone (``iterate_prepared`` with the run's workers) and, in
  one process on a sample, JPEG decode vs resize/crop/normalise per image.
- **CLIP_benchmark**: its ``run_classification`` loop (``torch.autocast`` as its ``--amp`` default
  on a GPU; off on the CPU, where autocast would mean bf16, so both sides run fp32) over the loader
  its CLI builds (batch 64, 4 workers, the model's PIL transform, ``torchvision`` ``ImageFolder`` as
  its ``build_dataset`` uses for folder datasets). A fp32 open_clip model, as its loader makes.
- **decode paths**: the same ViT-B-32 extraction with CPU (PIL) and batched (GPU) decoding: per-image
  cosine of the two stored embeddings (mean, min; next to the mean cosine between *different*
  images, for scale, since random-init towers map all images close together), agreement of the
  zero-shot argmax over the 3 shape classes, agreement of each image's nearest neighbour among the
  other images, and the mean / max absolute difference of the preprocessed pixels in 8-bit levels.

Targets (an H200-class GPU): ViT-B-32 >= 10,000 img/s end to end; the five-model pass (ViT-B-32,
ViT-B-16, ViT-L-14, RN50, ConvNeXt-B) <= 1.15x the sum of its five model-only times. Results go to
``benchmarks/results/extract_cpu.json`` or ``extract_<gpu name>.json``; a target that is missed or
cannot be measured here says so, with the breakdown above.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import os
import re
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_info  # noqa: E402

from embedstore.extract import runner  # noqa: E402
from embedstore.extract.batched import decode_jpegs, preprocess_batch  # noqa: E402
from embedstore.extract.decode import DecodeOptions, decode_rgb  # noqa: E402
from embedstore.extract.distributed import Ranks  # noqa: E402
from embedstore.extract.plan import DatasetPlan, ModelPlan, Plan, Settings, plan_from_args  # noqa: E402
from embedstore.extract.reader import BatchTask, batch_tasks, iterate_prepared  # noqa: E402
from embedstore.models import load_model, parse_model_id  # noqa: E402
from embedstore.models.preprocess import PreprocessConfig  # noqa: E402
from embedstore.sources import open_dataset  # noqa: E402
from embedstore.store import Store  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
VIT_B_32 = "openclip:ViT-B-32@random"
FIVE_MODELS = (
    "openclip:ViT-B-32@random",
    "openclip:ViT-B-16@random",
    "openclip:ViT-L-14@random",
    "openclip:RN50@random",
    "openclip:convnext_base@random",  # ConvNeXt-B in open_clip's naming
)
E2E_TARGET_IMAGES_PER_S = 10_000
FIVE_MODEL_TARGET_RATIO = 1.15
CLIP_BENCHMARK_BATCH, CLIP_BENCHMARK_WORKERS = 64, 4  # clip_benchmark/cli.py defaults

WIDTH, HEIGHT, JPEG_QUALITY = 500, 375, 90
SHAPE_CLASSES = ("circle", "square", "triangle")
SPLIT_SAMPLE_CPU = 256  # images timed one by one for PIL decode vs transform
SPLIT_SAMPLE_BATCHES = 8  # batches timed for batched decode vs preprocess
DATA_CONTENT = ("gradient + low-frequency colour field + filled shapes + 2-px luma texture + pixel noise; "
                "class = kind of the largest shape")  # fmt: skip
DEFINITIONS = {
    "end_to_end.images_per_s": "images / pass_s; pass = from asking the reader for batches (its workers' "
    "start included) to the writer's last chunk",
    "end_to_end.first_batch_s": "from asking the reader for batches to the first batch reaching the main thread",
    "end_to_end.steady_images_per_s": "images / (pass end - the first batch's arrival): the pass without the "
    "reader's start-up latency (workers starting, the first batch read and decoded), which a short "
    "benchmark set magnifies; every image's encoding and writing is inside the window",
    "end_to_end.run_s": "the whole run_extraction call: the pass + model builds, text embeddings, catalog",
    "end_to_end.pass_s": "includes each freshly built model's first call (model_only excludes its warm-up batch): "
    "on a set of one or two batches that first call weighs heavily",
    "end_to_end.main_thread_s": "the pass split on the main thread (waiting_on_reader synchronises on a GPU)",
    "model_only": "encode_image on already-prepared batches on the device, after a warm-up batch",
    "pass_vs_model_only_sum": "pass_s / the sum of the plan's model-only seconds",
    "encode_in_pass_vs_model_only": "the runner's own encode time in the pass / the sum of model-only seconds",
}


# -- data ------------------------------------------------------------------------------------------


def _draw_shape(draw: ImageDraw.ImageDraw, kind: str, x: float, y: float, r: float, angle: float,
                colour: tuple[int, ...]) -> None:  # fmt: skip
    if kind == "circle":
        draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)
        return
    corners = 4 if kind == "square" else 3
    points = [(x + r * np.cos(angle + 2 * np.pi * k / corners), y + r * np.sin(angle + 2 * np.pi * k / corners))
              for k in range(corners)]  # fmt: skip
    draw.polygon(points, fill=colour)


def render_photo(seed: int, index: int) -> tuple[str, bytes]:
    """One photo-like JPEG and its class (the shape kind of its largest shape); a pure function of
    ``(seed, index)``."""
    rng = np.random.default_rng([seed, index])
    c0, c1 = rng.uniform(0, 255, (2, 3)).astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * np.arange(WIDTH, dtype=np.float32)[None, :] / WIDTH
            + np.sin(angle) * np.arange(HEIGHT, dtype=np.float32)[:, None] / HEIGHT)  # fmt: skip
    ramp = (ramp - ramp.min()) / (ramp.max() - ramp.min())
    field_ = Image.fromarray(rng.uniform(0, 255, (6, 8, 3)).astype(np.uint8)).resize((WIDTH, HEIGHT), Image.BICUBIC)
    base = 0.7 * (c0 * (1 - ramp[..., None]) + c1 * ramp[..., None]) + 0.3 * np.asarray(field_, dtype=np.float32)
    image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(2, 6))):  # distractors
        kind = SHAPE_CLASSES[int(rng.integers(len(SHAPE_CLASSES)))]
        _draw_shape(draw, kind, *rng.uniform((0, 0, 12), (WIDTH, HEIGHT, 45)), rng.uniform(0, 6.3),
                    tuple(int(v) for v in rng.uniform(0, 255, 3)))  # fmt: skip
    label = SHAPE_CLASSES[index % len(SHAPE_CLASSES)]
    _draw_shape(draw, label, *rng.uniform((150, 120, 70), (350, 255, 110)), rng.uniform(0, 6.3),
                tuple(int(v) for v in rng.uniform(0, 255, 3)))  # fmt: skip
    pixels = np.asarray(image.filter(ImageFilter.GaussianBlur(1.0)), dtype=np.float32)
    texture = rng.normal(128, 64, (HEIGHT // 2, WIDTH // 2)).clip(0, 255).astype(np.uint8)
    texture = np.asarray(Image.fromarray(texture).resize((WIDTH, HEIGHT), Image.BILINEAR), dtype=np.float32) - 128
    luma = 20 / 64 * texture + 16 * rng.standard_normal((HEIGHT, WIDTH), dtype=np.float32)
    pixels += luma[..., None] + 4 * rng.standard_normal((HEIGHT, WIDTH, 3), dtype=np.float32)
    out = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=JPEG_QUALITY)
    return label, out.getvalue()


def _write_photos(args: tuple[str, int, range]) -> int:
    root, seed, indices = args
    written = 0
    for index in indices:
        label, data = render_photo(seed, index)
        path = Path(root) / label / f"{index:07d}.jpg"
        path.write_bytes(data)
        written += len(data)
    return written


def write_image_folder(root: Path, n: int, seed: int, processes: int) -> dict[str, Any]:
    """``root/<shape>/<index>.jpg`` for ``n`` photos, rendered in ``processes`` processes."""
    for label in SHAPE_CLASSES:
        (root / label).mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    step = max(1, -(-n // (processes * 4)))
    jobs = [(str(root), seed, range(a, min(a + step, n))) for a in range(0, n, step)]
    if processes > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(processes) as pool:
            total = sum(pool.map(_write_photos, jobs))
    else:
        total = sum(map(_write_photos, jobs))
    return {"images": n, "mean_kb": round(total / n / 1e3, 1), "width": WIDTH, "height": HEIGHT,
            "jpeg_quality": JPEG_QUALITY, "classes": list(SHAPE_CLASSES), "seed": seed,
            "render_s": round(time.perf_counter() - start, 2)}  # fmt: skip


def subset_folder(root: Path, dest: Path, n: int) -> Path:
    """A symlink farm of the first ``n`` images of ``root`` (by index), same class folders."""
    files = sorted(root.glob("*/*.jpg"), key=lambda p: p.name)[:n]
    for path in files:
        (dest / path.parent.name).mkdir(parents=True, exist_ok=True)
        (dest / path.parent.name / path.name).symlink_to(path)
    return dest


# -- timing helpers --------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rate(images: int, seconds: float) -> float | None:
    return round(images / seconds, 2) if seconds > 0 else None


@dataclass
class PassTimings:
    """The main thread's time in one extraction pass, measured from outside the runner."""

    start: float = 0.0
    end: float = 0.0
    first_batch_at: float = 0.0  # when the first prepared batch reached the main thread
    reader_wait_s: float = 0.0
    batches: int = 0
    writer_drain_s: float = 0.0
    writer_busy_s: float = 0.0


@contextlib.contextmanager
def instrumented_runner() -> Iterator[PassTimings]:
    """Wrap the runner's ``iterate_prepared`` (time the main thread waits for each batch) and
    ``ChunkWriter`` (the final drain, the writer thread's busy time) for one run. Nothing is
    synchronised per batch: that would serialise the decoding thread, the encoders and the
    asynchronous copies that the pass overlaps."""
    timings = PassTimings()
    original_iterate, original_writer = runner.iterate_prepared, runner.ChunkWriter

    def timed_iterate(*args: Any, **kwargs: Any) -> Iterator[Any]:
        timings.start = time.perf_counter()
        batches = original_iterate(*args, **kwargs)
        while True:
            waited = time.perf_counter()
            try:
                batch = next(batches)
            except StopIteration:
                timings.reader_wait_s += time.perf_counter() - waited
                return
            timings.reader_wait_s += time.perf_counter() - waited
            if not timings.batches:
                timings.first_batch_at = time.perf_counter()
            timings.batches += 1
            yield batch

    class RecordingWriter(original_writer):  # type: ignore[misc, valid-type]
        def close(self) -> None:
            drain = time.perf_counter()
            super().close()
            timings.end = time.perf_counter()
            timings.writer_drain_s += timings.end - drain
            timings.writer_busy_s += self.seconds_writing

    runner.iterate_prepared, runner.ChunkWriter = timed_iterate, RecordingWriter
    try:
        yield timings
    finally:
        runner.iterate_prepared, runner.ChunkWriter = original_iterate, original_writer


# -- measurements ----------------------------------------------------------------------------------


def all_tasks(n: int, settings: Settings) -> list[BatchTask]:
    chunks = range(-(-n // settings.chunk_rows))
    return batch_tasks(n, settings.chunk_rows, settings.batch_size, list(chunks))


def read_alone(dataset, transforms: dict, decode: str, device: torch.device,
               settings: Settings) -> tuple[dict[str, Any], dict[PreprocessConfig, list[torch.Tensor]]]:  # fmt: skip
    """The reader by itself (``iterate_prepared`` with the run's workers and batches): seconds, and
    the prepared batches per preprocessing config, moved to ``device`` (the CPU path yields them on
    the CPU) for the model-only runs."""
    pixels: dict[PreprocessConfig, list[torch.Tensor]] = {c: [] for c in transforms}
    workers = settings.resolved_workers(decode, runner.cores_per_rank(Ranks()))
    threads = torch.get_num_threads()
    torch.set_num_threads(1 if device.type == "cuda" else threads)  # as the runner's pass (Runtime.pass_threads)
    start = time.perf_counter()
    try:
        for batch in iterate_prepared(dataset, all_tasks(len(dataset), settings), transforms, decode=decode,
                                      device=device, workers=workers, options=DecodeOptions(settings.pixel_limit)):  # fmt: skip
            for config, tensor in batch.pixels.items():
                pixels[config].append(tensor)
        _sync(device)
    finally:
        torch.set_num_threads(threads)
    seconds = time.perf_counter() - start
    pixels = {c: [t.to(device) for t in batches] for c, batches in pixels.items()}
    _sync(device)
    info = {"decode": decode, "workers": workers, "seconds": round(seconds, 3),
            "images_per_s": _rate(len(dataset), seconds), "configs": len(transforms)}  # fmt: skip
    return info, pixels


def decode_vs_preprocess(dataset, config: PreprocessConfig, transform, decode: str, device: torch.device,
                         settings: Settings) -> dict[str, Any]:  # fmt: skip
    """Per-image milliseconds of decoding and of resize/crop/normalise, in this one process on a
    sample: PIL + the library transform one image at a time (``cpu``), or one batched
    ``decode_jpegs`` and one ``preprocess_batch`` per batch, each synchronised (``gpu``)."""
    options = DecodeOptions(settings.pixel_limit)
    if decode == "cpu":
        data = [s.data for s in dataset.iter_encoded(0, min(len(dataset), SPLIT_SAMPLE_CPU))]
        decode_s = preprocess_s = 0.0
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as in a DataLoader worker (torch sets 1 thread there)
        try:
            for blob in data:
                t0 = time.perf_counter()
                image = decode_rgb(blob, options)
                t1 = time.perf_counter()
                transform(image)
                decode_s, preprocess_s = decode_s + t1 - t0, preprocess_s + time.perf_counter() - t1
        finally:
            torch.set_num_threads(threads)
        images, mode = len(data), "PIL decode + the library's PIL transform, one image at a time, 1 torch thread"
    else:
        count = min(len(dataset), SPLIT_SAMPLE_BATCHES * settings.batch_size)
        data = [s.data for s in dataset.iter_encoded(0, count)]
        groups = [data[a : a + settings.batch_size] for a in range(0, count, settings.batch_size)]
        preprocess_batch(decode_jpegs(groups[0], device), config)  # warm-up (decoder initialisation)
        _sync(device)
        decode_s = preprocess_s = 0.0
        for group in groups:
            t0 = time.perf_counter()
            decoded = decode_jpegs(group, device)
            _sync(device)
            t1 = time.perf_counter()
            preprocess_batch(decoded, config)
            _sync(device)
            decode_s, preprocess_s = decode_s + t1 - t0, preprocess_s + time.perf_counter() - t1
        images, mode = count, f"batched decode_jpegs + preprocess_batch on {device}, batches of {settings.batch_size}"
    return {"images": images, "how": mode, "decode_ms_per_image": round(1e3 * decode_s / images, 3),
            "preprocess_ms_per_image": round(1e3 * preprocess_s / images, 3)}  # fmt: skip


def model_only(adapter, batches: Sequence[torch.Tensor], device: torch.device) -> dict[str, Any]:
    """``encode_image`` over prepared batches already on the device, after one warm-up batch."""
    adapter.encode_image(batches[0])
    _sync(device)
    start = time.perf_counter()
    for batch in batches:
        adapter.encode_image(batch)
    _sync(device)
    seconds = time.perf_counter() - start
    images = sum(len(b) for b in batches)
    return {"images": images, "seconds": round(seconds, 3), "images_per_s": _rate(images, seconds)}


def end_to_end(store_path: Path, models: Sequence[str], dataset_spec: str, settings: dict[str, Any]) -> dict[str, Any]:
    """One ``run_extraction`` into a new store, with the pass's main-thread breakdown."""
    store = Store.create(store_path)
    plan = plan_from_args(list(models), [dataset_spec], **settings)
    with instrumented_runner() as timings:
        report = runner.run_extraction(store, plan, log=lambda _msg: None, progress=False)
    images = report.images
    pass_s = timings.end - timings.start
    encode_s = {key.split(" on ")[0]: seconds for key, seconds in report.model_encode_seconds.items()}
    encode_total = sum(encode_s.values())
    other = pass_s - timings.reader_wait_s - encode_total - timings.writer_drain_s
    return {
        "images": images,
        "decode": report.decode,
        "precision": report.precision,
        "device": report.device,
        "pass_s": round(pass_s, 3),
        "images_per_s": _rate(images, pass_s),
        "first_batch_s": round(timings.first_batch_at - timings.start, 3),
        "steady_images_per_s": _rate(images, timings.end - timings.first_batch_at),
        "run_s": round(report.seconds, 3),
        "setup_s": round(report.seconds - pass_s, 3),
        "main_thread_s": {
            "waiting_on_reader": round(timings.reader_wait_s, 3),
            "encoding": round(encode_total, 3),
            "draining_writer": round(timings.writer_drain_s, 3),
            "other": round(other, 3),
        },
        "encode_s_per_model": {m: round(s, 3) for m, s in encode_s.items()},
        "writer_thread_busy_s": round(timings.writer_busy_s, 3),
        "batches": timings.batches,
        "bad_samples": sum(report.bad_samples.values()),
    }


@dataclass
class PlanBench:
    """What one plan's measurements share: the dataset, its preprocessing and where runs go."""

    label: str
    models: Sequence[str]
    root: Path
    settings: Settings
    runtime: runner.Runtime
    work: Path
    transforms: dict[PreprocessConfig, Any] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)

    @property
    def source(self) -> str:
        return f"imagefolder:{self.root}"

    @functools.cached_property
    def dataset(self):
        return open_dataset(self.label, self.source)

    def read(self, decode: str) -> dict[PreprocessConfig, list[torch.Tensor]]:
        """The reader alone and decode vs preprocess on one decode path; the prepared batches."""
        device = self.runtime.device
        info, pixels = read_alone(self.dataset, self.transforms, decode, device, self.settings)
        self.results.setdefault("reader_alone", {})[decode] = info
        config, transform = next(iter(self.transforms.items()))
        split = decode_vs_preprocess(self.dataset, config, transform, decode, device, self.settings)
        self.results.setdefault("decode_vs_preprocess", {})[decode] = split
        return pixels

    def run(self, decode: str) -> None:
        """``run_extraction`` end to end on one decode path, into its own store."""
        settings, runtime = self.settings, self.runtime
        plan_settings = {"device": str(runtime.device), "precision": runtime.precision, "decode": decode,
                         "batch_size": settings.batch_size, "workers": settings.workers,
                         "chunk_rows": settings.chunk_rows}  # fmt: skip
        spec = f"{self.label}={self.source}"
        result = end_to_end(self.store_path(decode), self.models, spec, plan_settings)
        self.results.setdefault("end_to_end", {})[decode] = result

    def store_path(self, decode: str) -> Path:
        return self.work / f"store-{self.label}-{decode}"


def measure_plan(bench: PlanBench) -> dict[PreprocessConfig, list[torch.Tensor]]:
    """On the runtime's decode path: the reader alone, decode vs preprocess, each model alone, then
    end to end (models run alone first, so the end-to-end pass does not pay one-off kernel loading).
    Returns the prepared batches."""
    device, decode = bench.runtime.device, bench.runtime.decode
    adapters = [load_model(m, device=str(device), precision=bench.runtime.precision) for m in bench.models]
    bench.transforms = {a.preprocess: a.pil_transform for a in adapters}
    bench.results.update(images=len(bench.dataset), models=list(bench.models), preprocess_configs=len(bench.transforms))
    pixels = bench.read(decode)
    only = {a.model_id: model_only(a, pixels[a.preprocess], device) for a in adapters}  # canonical ids, as the runner's
    del adapters
    if device.type == "cuda":
        torch.cuda.empty_cache()
    bench.results["model_only"] = only
    bench.results["model_only_sum_s"] = total = round(sum(r["seconds"] for r in only.values()), 3)
    bench.run(decode)
    main = bench.results["end_to_end"][decode]
    bench.results["pass_vs_model_only_sum"] = round(main["pass_s"] / total, 3)
    bench.results["encode_in_pass_vs_model_only"] = round(main["main_thread_s"]["encoding"] / total, 3)
    return pixels


def clip_benchmark_pipeline(root: Path, arch: str, device: torch.device) -> dict[str, Any]:
    """CLIP_benchmark's zero-shot image loop over the loader its CLI builds (see the module docstring)."""
    import open_clip
    import torchvision

    amp = device.type == "cuda"
    try:
        from clip_benchmark.metrics.zeroshot_classification import run_classification, zero_shot_classifier

        label = ("clip_benchmark.metrics.zeroshot_classification.run_classification + zero_shot_classifier, "
                 "DataLoader as clip_benchmark/cli.py builds it")  # fmt: skip
    except ImportError as exc:
        return {"status": f"clip_benchmark's metrics do not import here ({exc}); not measured"}
    try:
        import clip_benchmark.datasets.builder  # noqa: F401

        builder = "importable (not used: it has no plain image-folder dataset name)"
    except ImportError as exc:
        builder = f"not importable ({exc}); the dataset is built as it builds folder datasets"
    torch.manual_seed(0)
    model, _, transform = open_clip.create_model_and_transforms(arch, pretrained=None)
    model = model.to(device).eval()
    tokenizer = open_clip.get_tokenizer(arch)
    dataset = torchvision.datasets.ImageFolder(str(root), transform=transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=CLIP_BENCHMARK_BATCH, shuffle=False,
                                         num_workers=CLIP_BENCHMARK_WORKERS)  # fmt: skip
    with contextlib.redirect_stderr(io.StringIO()):  # its tqdm progress bars
        classifier = zero_shot_classifier(
            model, tokenizer, dataset.classes, ["a photo of a {c}."], device.type, amp=amp
        )
        start = time.perf_counter()
        logits, _ = run_classification(model, classifier, loader, device.type, amp=amp)
        _sync(device)
        seconds = time.perf_counter() - start
    return {"pipeline": label, "build_dataset": builder, "dataset": "torchvision.datasets.ImageFolder + open_clip PIL transform",
            "batch_size": CLIP_BENCHMARK_BATCH, "workers": CLIP_BENCHMARK_WORKERS,
            "precision": "fp32 weights + torch.autocast (CLIP_benchmark's --amp default)" if amp
            else "fp32 (autocast off: on the CPU it would run bf16)",
            "images": len(logits), "seconds": round(seconds, 3), "images_per_s": _rate(len(logits), seconds),
            "includes": "DataLoader start-up, PIL decode + transform, encode_image, logits to the CPU"}  # fmt: skip


def decode_path_agreement(bench: PlanBench, config: PreprocessConfig,
                          pixels: dict[str, list[torch.Tensor]]) -> dict[str, Any]:  # fmt: skip
    """How far the batched decode path moves pixels, embeddings and predictions from the PIL path
    (``bench`` has run end to end on both paths; ``pixels`` are each path's prepared batches)."""
    reference, other = "cpu", "gpu"
    model = bench.models[0]
    model_id, label = str(parse_model_id(model)), bench.label
    emb, top1 = {}, {}
    for decode in (reference, other):
        store = Store.open(bench.store_path(decode))
        emb[decode] = store.read_array(label, model_id, "image_emb").astype(np.float32)
        top1[decode] = store.read_array(label, model_id, "logits").argmax(axis=1)
    unit = {d: e / np.linalg.norm(e, axis=1, keepdims=True) for d, e in emb.items()}
    same_image = np.sum(unit[reference] * unit[other], axis=1)
    gram = unit[reference] @ unit[reference].T
    n = len(gram)
    between = (gram.sum() - np.trace(gram)) / (n * (n - 1)) if n > 1 else float("nan")
    neighbours = {}
    for decode, u in unit.items():
        g = u @ u.T
        np.fill_diagonal(g, -np.inf)
        neighbours[decode] = g.argmax(axis=1)
    scale = torch.tensor(config.std).view(1, 3, 1, 1) * 255.0
    abs_sum, abs_max, count = 0.0, 0.0, 0
    for a, b in zip(pixels[reference], pixels[other], strict=True):
        diff = (a.float().cpu() - b.float().cpu()).abs() * scale
        abs_sum, abs_max, count = abs_sum + float(diff.sum()), max(abs_max, float(diff.max())), count + diff.numel()
    return {
        "reference": f"decode={reference} (PIL + the library transform)",
        "compared": f"decode={other} (batched decode_jpegs + roi_align resample)",
        "model": model,
        "images": n,
        "embedding_cosine_same_image": {
            "mean": round(float(same_image.mean()), 6),
            "min": round(float(same_image.min()), 6),
        },
        "embedding_cosine_between_different_images_reference_path": round(float(between), 6),
        "zero_shot_top1_agreement": round(float(np.mean(top1[reference] == top1[other])), 4),
        "zero_shot": f"argmax of the stored logits over {len(SHAPE_CLASSES)} shape classes (generic templates)",
        "nearest_neighbour_agreement": round(float(np.mean(neighbours[reference] == neighbours[other])), 4),
        "nearest_neighbour": "each image's most cosine-similar other image is the same under both paths",
        "pixel_abs_diff_8bit": {"mean": round(abs_sum / count, 3), "max": round(abs_max, 2)},
        "pixel_diff": "preprocessed tensors of the two readers, |a - b| * std * 255 (8-bit levels)",
    }


# -- verdicts and report -----------------------------------------------------------------------------


def _largest_share(e2e: dict[str, Any]) -> str:
    parts = e2e["main_thread_s"]
    total = max(e2e["pass_s"], 1e-9)
    ranked = sorted(parts.items(), key=lambda kv: -kv[1])
    return ", ".join(f"{name} {100 * s / total:.0f}%" for name, s in ranked)


def _where_the_time_goes(result: dict[str, Any], decode: str) -> dict[str, Any]:
    e2e = result["end_to_end"][decode]
    reader_s = result["reader_alone"][decode]["seconds"]
    return {
        "pass_s": e2e["pass_s"],
        "pass_main_thread_share": _largest_share(e2e),
        "reader_alone_s": reader_s,
        "model_only_sum_s": result["model_only_sum_s"],
        "serial_estimate_s": round(reader_s + result["model_only_sum_s"], 3),
        "serial_estimate": "reader alone + models alone: a pass near it overlaps nothing, near the larger of the two overlaps fully",
        "decode_vs_preprocess": result["decode_vs_preprocess"][decode],
        "encode_in_pass_s_per_model": e2e["encode_s_per_model"],
        "model_only_s_per_model": {m: r["seconds"] for m, r in result["model_only"].items()},
        "writer_thread_busy_s": e2e["writer_thread_busy_s"],
    }


def target_verdicts(device: torch.device, gpu: str | None, decode: str, single: dict[str, Any],
                    five: dict[str, Any] | None) -> dict[str, Any]:  # fmt: skip
    """Each target: met / missed on a GPU (saying which), else not measurable here; with the breakdown."""
    on_gpu = device.type == "cuda"
    h200 = bool(gpu and "H200" in gpu.upper())
    scope = ("measured on the target hardware" if h200 else
             f"measured on {gpu} (the targets are stated for an H200-class GPU)" if on_gpu else
             "no GPU here: the figures are CPU figures on a small set, for reference")  # fmt: skip
    measured = single["end_to_end"][decode]["images_per_s"]
    out: dict[str, Any] = {
        "vit_b_32_end_to_end": {
            "target": f">= {E2E_TARGET_IMAGES_PER_S:,} img/s end to end (the image pass) on an H200-class GPU",
            "measured_images_per_s": measured,
            "steady_images_per_s": single["end_to_end"][decode].get("steady_images_per_s"),
            "status": ("met" if measured and measured >= E2E_TARGET_IMAGES_PER_S else "missed") if on_gpu
            else "not measurable here",
            "scope": scope,
            "where_the_time_goes": _where_the_time_goes(single, decode),
        }
    }  # fmt: skip
    if five is not None:
        ratio = five["pass_vs_model_only_sum"]
        out["five_model_pass"] = {
            "target": f"pass wall time <= {FIVE_MODEL_TARGET_RATIO}x the sum of the five model-only times (H200-class GPU)",
            "ratio": ratio,
            "status": ("met" if ratio <= FIVE_MODEL_TARGET_RATIO else "missed") if on_gpu else "not measurable here",
            "scope": scope,
            "where_the_time_goes": _where_the_time_goes(five, decode),
        }
    return out


def print_tables(single: dict[str, Any], five: dict[str, Any] | None, clip_bench: dict[str, Any],
                 agreement: dict[str, Any], verdicts: dict[str, Any]) -> None:  # fmt: skip
    def rate(value) -> str:
        return f"{value:10.1f}" if value is not None else f"{'-':>10}"

    for name, result in (("ViT-B-32", single), ("five-model plan", five)):
        if result is None:
            continue
        print(f"\n{name}: {result['images']} images")
        print(f"{'':34}{'img/s':>10}{'s':>9}")
        for decode, e2e in result["end_to_end"].items():
            print(f"{'end to end, decode=' + decode:34}{rate(e2e['images_per_s'])}{e2e['pass_s']:9.2f}"
                  f"   (run incl. builds {e2e['run_s']:.1f} s; main thread: {_largest_share(e2e)})")  # fmt: skip
            print(
                f"{'  from the first batch on':34}{rate(e2e['steady_images_per_s'])}"
                f"{e2e['pass_s'] - e2e['first_batch_s']:9.2f}   (first batch after {e2e['first_batch_s']:.2f} s)"
            )
        for decode, info in result["reader_alone"].items():
            split = result["decode_vs_preprocess"][decode]
            print(f"{'reader alone, decode=' + decode:34}{rate(info['images_per_s'])}{info['seconds']:9.2f}"
                  f"   (one process: decode {split['decode_ms_per_image']:.2f} ms/img, "
                  f"preprocess {split['preprocess_ms_per_image']:.2f} ms/img)")  # fmt: skip
        for model, r in result["model_only"].items():
            print(f"{'model only ' + model.split(':')[1].split('@')[0]:34}{rate(r['images_per_s'])}{r['seconds']:9.2f}")
        if len(result["model_only"]) > 1:
            print(f"{'sum of model-only times':34}{'':>10}{result['model_only_sum_s']:9.2f}"
                  f"   pass / sum = {result['pass_vs_model_only_sum']:.3f}")  # fmt: skip
    if "images_per_s" in clip_bench:
        print(f"\n{'CLIP_benchmark loop (ViT-B-32)':34}{rate(clip_bench['images_per_s'])}{clip_bench['seconds']:9.2f}")
    else:
        print(f"\nCLIP_benchmark: {clip_bench['status']}")
    a = agreement
    if "status" in a:
        print(f"\ndecode paths: {a['status']}")
    else:
        same = a["embedding_cosine_same_image"]
        print(f"\ndecode paths ({a['images']} images): cosine same image mean {same['mean']:.5f} min {same['min']:.5f} "
              f"(different images: {a['embedding_cosine_between_different_images_reference_path']:.5f}); "
              f"zero-shot top-1 agreement {a['zero_shot_top1_agreement']:.3f}; nearest-neighbour agreement "
              f"{a['nearest_neighbour_agreement']:.3f}; pixels |diff| mean {a['pixel_abs_diff_8bit']['mean']:.2f} "
              f"max {a['pixel_abs_diff_8bit']['max']:.1f} levels")  # fmt: skip
    for name, v in verdicts.items():
        shown = v.get("measured_images_per_s", v.get("ratio"))
        print(f"target {name}: {v['status']} (measured {shown}; {v['scope']})")


def _other_path_agreement(bench: PlanBench, config: PreprocessConfig, main_pixels: list[torch.Tensor],
                          other: str) -> dict[str, Any]:  # fmt: skip
    """Run the other decode path (reader alone and end to end) and compare it with the main one."""
    other_pixels = bench.read(other)[config]
    bench.run(other)
    return decode_path_agreement(bench, config, {bench.runtime.decode: main_pixels, other: other_pixels})


def attempt(what: str, measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """An optional measurement: its result, or the one-line reason it failed (the rest still runs)."""
    try:
        return measure()
    except Exception as exc:  # noqa: BLE001 - recorded in the JSON and printed, then the benchmark goes on
        reason = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        print(f"{what}: {reason}", file=sys.stderr)
        return {"status": reason}


def _shm_gib() -> float | None:
    """Size of /dev/shm, where DataLoader workers hand batches over (a small one breaks them)."""
    try:
        return round(shutil.disk_usage("/dev/shm").total / 2**30, 2)
    except OSError:
        return None


def _gpu_slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, help="images for ViT-B-32 (default 64; 8192 with --gpu-quick)")
    parser.add_argument("--five-n", type=int, help="images for the five-model pass (default 8; 4096 with --gpu-quick)")
    parser.add_argument(
        "--device", default=None, help="auto | cpu | cuda | cuda:N (default auto; cuda with --gpu-quick)"
    )
    parser.add_argument(
        "--decode",
        default="auto",
        choices=("auto", "cpu", "gpu"),
        help="the main decode path (auto: gpu on a GPU); the other path is run for the comparison",
    )
    parser.add_argument("--batch-size", type=int, default=Settings.batch_size)
    parser.add_argument("--workers", type=lambda v: v if v == "auto" else int(v), default=Settings.workers,
                        help="reader processes (default auto, as the extractor resolves it)")
    parser.add_argument("--skip-five", action="store_true", help="skip the five-model pass")
    parser.add_argument("--skip-clip-benchmark", action="store_true")
    parser.add_argument(
        "--gpu-quick",
        action="store_true",
        help="preset for an H200 within ~5 min: --device cuda --n 8192 --five-n 4096",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, help="default results/extract_cpu.json or extract_<gpu>.json")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore", message="This DataLoader will create")  # 4 workers on a small box is the point
    n = args.n or (8192 if args.gpu_quick else 64)
    five_n = min(args.five_n or (4096 if args.gpu_quick else 8), n)
    device_arg = args.device or ("cuda" if args.gpu_quick else "auto")

    settings = Settings(batch_size=args.batch_size, workers=args.workers, device=device_arg, decode=args.decode)
    # the runner's own choice of device, precision and decode path (the dataset is not opened here)
    probe = Plan((ModelPlan(VIT_B_32),), (DatasetPlan("probe", "imagefolder:."),), settings)
    runtime = runner.resolve_runtime(probe, Ranks(), log=lambda _msg: None)
    other = "cpu" if runtime.decode == "gpu" else "gpu"
    gpu = torch.cuda.get_device_name(runtime.device) if runtime.device.type == "cuda" else None
    load_before = os.getloadavg()
    started = time.perf_counter()

    output = args.output or RESULTS / (f"extract_{_gpu_slug(gpu)}.json" if gpu else "extract_cpu.json")
    report: dict[str, Any] = {
        "benchmark": "extract",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "complete": False,
        "settings": {
            "device": str(runtime.device),
            "precision": runtime.precision,
            "decode": runtime.decode,
            "compared_decode": other,
            "batch_size": settings.batch_size,
            "workers": runtime.workers,
            "compared_workers": settings.resolved_workers(other, runner.cores_per_rank(Ranks())),
            "chunk_rows": settings.chunk_rows,
            "dtype": settings.dtype,
            "compression": settings.compression,
            "weights": "random init (@random, seed 0)",
            "torch_threads": torch.get_num_threads(),
            "dev_shm_gib": _shm_gib(),
        },
        "definitions": DEFINITIONS,
        "targets": None,
    }

    def save(**sections: Any) -> None:
        """Write what is measured so far (a run cut short still leaves its results)."""
        report.update(sections, total_s=round(time.perf_counter() - started, 1),
                      load_average_before_after=[list(load_before), list(os.getloadavg())])  # fmt: skip
        report["busy_machine"] = max(load_before[0], os.getloadavg()[0]) > (os.cpu_count() or 1)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps({**report, "machine": machine_info()}, indent=2) + "\n")

    with tempfile.TemporaryDirectory(prefix="embedstore-bench-") as tmp:
        work = Path(tmp)
        data = write_image_folder(work / "images", n, args.seed, processes=os.cpu_count() or 1)
        data.update(five_model_images=None if args.skip_five else five_n, content=DATA_CONTENT)
        print(f"{n} JPEGs {WIDTH}x{HEIGHT} q{JPEG_QUALITY}, mean {data['mean_kb']} KB, rendered in {data['render_s']} s; "
              f"device {runtime.device}, precision {runtime.precision}, decode {runtime.decode} (+ {other} for the comparison)")  # fmt: skip
        single = PlanBench("bench", [VIT_B_32], work / "images", settings, runtime, work)
        pixels = measure_plan(single)
        save(data=data, vit_b_32=single.results)
        config, main_pixels = next(iter(pixels.items()))
        del pixels
        compare = functools.partial(_other_path_agreement, single, config, main_pixels, other)
        agreement = attempt(f"decode={other} path", compare)
        del main_pixels, compare
        save(vit_b_32=single.results, decode_agreement=agreement)
        clip_bench = {"status": "skipped (--skip-clip-benchmark)"}
        if not args.skip_clip_benchmark:
            clip_bench = attempt(
                "CLIP_benchmark", lambda: clip_benchmark_pipeline(work / "images", "ViT-B-32", runtime.device)
            )
        save(clip_benchmark=clip_bench)
        five = None
        if not args.skip_five:
            subset = subset_folder(work / "images", work / "images-five", five_n)
            five = PlanBench("five", FIVE_MODELS, subset, settings, runtime, work)
            measure_plan(five)
            five = five.results

    verdicts = target_verdicts(runtime.device, gpu, runtime.decode, single.results, five)
    print_tables(single.results, five, clip_bench, agreement, verdicts)
    report["complete"] = True
    save(five_model=five, targets=verdicts)
    print(f"wrote {output} ({report['total_s']} s)")


if __name__ == "__main__":
    main()
