"""The extraction engine: plan -> reader -> decode -> per-config preprocess -> every model -> writer.

One pass per dataset: each image is read and decoded once and fed to every model of the plan that
still misses its chunk. Arrays written per (model, dataset):

- ``image_emb [N, D]``: ``encode_image`` as the encoder returns it (CLIP: the projected embedding;
  timm classifiers: pre-logit features), in the plan's dtype.
- ``logits [N, C]`` float32: a classifier's head; for CLIP models the zero-shot logits under the
  dataset's ``default`` prompt set, ``logit_scale * cos(image_emb, w_c) (+ logit_bias)`` with
  ``w_c = normalize(mean_t normalize(text_emb[c, t]))``, computed from the arrays *as stored* so
  that analyses recomputing them from the store get the same numbers.
- ``text_emb [C, T, D]`` (CLIP, datasets with classes): every template of the dataset, raw.
- ``caption_emb [M, D]`` (CLIP, caption datasets): every caption, raw.

Resume: progress is per chunk (``StoreArray`` done-markers); chunks already done are skipped, and a
chunk is only ever written whole, so a run killed at any moment and restarted ends bit-identical to
an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

import embedstore
from embedstore.errors import DatasetError, EmbedstoreError, StoreError
from embedstore.extract.decode import DecodeOptions
from embedstore.extract.distributed import Ranks, ranks_from_env
from embedstore.extract.plan import DatasetPlan, Plan
from embedstore.extract.reader import PreparedBatch, batch_tasks, iterate_prepared
from embedstore.extract.text import encode_class_templates, encode_texts
from embedstore.extract.writer import ChunkAssembler, ChunkWriter
from embedstore.store import Store, hash_object
from embedstore.store.arrays import StoreArray
from embedstore.store.locks import dataset_locks

EXTRACTOR_VERSION = 1  # bump when a change alters what is written for the same inputs
TEXT_CHUNK_ROWS = 256

Log = Callable[[str], None]


@dataclass
class ArrayReport:
    dataset: str
    model: str
    name: str
    rows_total: int
    rows_written: int
    status: str


@dataclass
class ExtractionReport:
    arrays: list[ArrayReport] = field(default_factory=list)
    bad_samples: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    images: int = 0
    #: "<model> on <dataset>": images/s after the model's warm-up (`_ModelJob.images_per_s`).
    model_images_per_s: dict[str, float] = field(default_factory=dict)
    #: "<model> on <dataset>": every second the model spent encoding in the pass, warm-up included.
    model_encode_seconds: dict[str, float] = field(default_factory=dict)
    device: str = "cpu"
    precision: str = "fp32"
    decode: str = "cpu"
    workers: int = 0
    rank: int = 0
    world: int = 1

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    precision: str
    decode: str
    workers: int

    @property
    def pass_threads(self) -> int:
        """torch's CPU threads in this process during a pass. On a GPU one: the process computes nothing
        on the CPU there (it launches GPU work and hands batches on), and the cores are the reader
        workers'. The H200 figures of the default settings were measured this way; the thread count's
        own effect was not separated from warm-up effects (one run per setting)."""
        return 1 if self.device.type == "cuda" else torch.get_num_threads()


def resolve_runtime(plan: Plan, ranks: Ranks, log: Log) -> Runtime:
    """Device, precision and decode path; every automatic choice is said out loud."""
    settings = plan.settings
    if settings.device == "auto":
        if torch.cuda.is_available():
            device = torch.device("cuda")
        else:
            device = torch.device("cpu")
            log("no CUDA device found: extracting on the CPU (weights in fp32, PIL decoding)")
    else:
        device = torch.device(settings.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise EmbedstoreError(f"--device {settings.device} was asked for but CUDA is not available here")
    if device.type == "cuda" and device.index is None:
        # an explicit index: the decoding thread sets its device (a new thread starts on GPU 0),
        # and under torchrun plain "cuda" means this rank's GPU
        device = torch.device("cuda", ranks.local_rank if ranks.world > 1 else 0)
    precision = settings.precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    decode = settings.decode
    if decode == "auto":
        decode = "gpu" if device.type == "cuda" else "cpu"
    elif decode == "gpu" and device.type != "cuda":
        log(f"--decode gpu on {device}: the batched decode path (torchvision decode_jpeg, roi_align resize) "
            "runs on the CPU; embeddings differ slightly from --decode cpu")  # fmt: skip
    if decode == "cpu" and settings.cpu_decode_share:
        log(f"--cpu-decode-share {settings.cpu_decode_share} does nothing with --decode cpu: every image is "
            "PIL-decoded in the workers already")  # fmt: skip
    return Runtime(device, precision, decode, settings.resolved_workers(decode, cores_per_rank(ranks)))


def cores_per_rank(ranks: Ranks) -> int | None:
    """The CPU cores this process may run on (its affinity mask), shared among the ranks torchrun
    started on this node (``LOCAL_WORLD_SIZE``); None when unknown."""
    try:
        cores: int | None = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count()
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if ranks.world > 1 else 1
    return None if cores is None else max(1, cores // max(1, local_ranks))


@functools.cache
def _versions() -> dict[str, str]:
    """The library versions recorded with every array (read once a process: parsing package metadata
    costs milliseconds a call)."""
    out = {"embedstore": embedstore.__version__}
    for package in ("torch", "torchvision", "open_clip_torch", "timm", "pillow", "zarr", "numpy"):
        try:
            out[package] = importlib_metadata.version(package)
        except importlib_metadata.PackageNotFoundError:
            pass
    return out


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def zeroshot_weights(text_emb: np.ndarray, template_indices: Sequence[int]) -> np.ndarray:
    """``[C, D]`` float32: ``w_c = normalize(mean_{t in S} normalize(e_{c,t}))`` (open_clip's
    ``build_zero_shot_classifier``; CLIP_benchmark)."""
    text = torch.from_numpy(np.asarray(text_emb, dtype=np.float32)[:, list(template_indices)])
    return _normalize(_normalize(text).mean(dim=1)).numpy()


class _ModelJob:
    """One model's arrays on one dataset and what it still has to do."""

    def __init__(self, adapter, store_dtype: str):
        self.adapter = adapter
        self.store_dtype = store_dtype
        self.image: StoreArray | None = None
        self.logits: StoreArray | None = None
        self.has_logits = False
        self.assemblers: list[tuple[ChunkAssembler, str]] = []
        self.done: dict[str, set[int]] = {}  # array name -> chunks written before this run
        self.missing: set[int] = set()  # chunks this rank encodes
        self.classifier: torch.Tensor | None = None  # [D, C] zero-shot weights for CLIP logits
        self.encode_seconds = 0.0
        self.rows_encoded = 0
        # Rows whose compute encode_seconds holds: on the CPU once encoded, on a GPU (asynchronous) once
        # their copy to the host has been waited for.
        self.rows_timed = 0
        # encode_seconds and rows_timed when the first batch reached the host: its lazy initialisation
        # and one-time allocations are left out of the model's images/s.
        self.warmup: tuple[float, int] | None = None

    @property
    def model_id(self) -> str:
        return self.adapter.model_id

    @property
    def images_per_s(self) -> float | None:
        """Model-only images/s of the pass after its warm-up: the rows timed and encode time from the
        moment the first batch reached the host (on the CPU the batch encoded behind it counts as warm-up
        too, on a GPU only the first); the whole pass's rate when nothing was timed after that."""
        if not self.encode_seconds:
            return None
        if self.warmup is not None:
            warm_seconds, warm_rows = self.warmup
            if self.rows_timed > warm_rows and self.encode_seconds > warm_seconds:
                return (self.rows_timed - warm_rows) / (self.encode_seconds - warm_seconds)
        return self.rows_timed / self.encode_seconds

    def encode(self, pixels: torch.Tensor) -> _EncodedBatch:
        """Start encoding one prepared batch: image embeddings (store dtype) and logits (float32),
        copied to the host asynchronously on CUDA; `_EncodedBatch.to_host` waits for them."""
        adapter = self.adapter
        start = time.perf_counter()
        with torch.inference_mode():
            features = adapter.encode_image(pixels)
            if adapter.kind == "classifier":
                logits = adapter.classify(features).float() if self.has_logits else None
            elif self.classifier is not None:
                stored = features.to(getattr(torch, self.store_dtype)).float()
                logits = adapter.logit_scale * (_normalize(stored) @ self.classifier.to(stored.device))
                if adapter.logit_bias is not None:
                    logits = logits + adapter.logit_bias
            else:
                logits = None
            image = features.float().to(getattr(torch, self.store_dtype))
            host_logits = None if logits is None else _start_host_copy(logits)
            encoded = _EncodedBatch(self, _start_host_copy(image), host_logits, image.device)
        self.encode_seconds += time.perf_counter() - start
        self.rows_encoded += len(image)
        if encoded.copied is None:  # computed already (CPU); on a GPU, timed when its copy is waited for
            self.rows_timed += len(image)
        return encoded


def _start_host_copy(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` on the host: from a GPU a non-blocking copy into pinned memory (torch pins the
    destination of a non-blocking device-to-host copy), complete once the stream passes the event
    `_EncodedBatch` records; on the CPU the tensor itself."""
    return tensor.to("cpu", non_blocking=True) if tensor.is_cuda else tensor


class _EncodedBatch:
    """One model's outputs of one batch on their way to the host. The pass keeps one batch in flight:
    it launches batch i on the GPU before waiting for batch i-1's copies, so the GPU never idles
    while the host waits for a device-to-host copy."""

    def __init__(self, job: _ModelJob, image: torch.Tensor, logits: torch.Tensor | None, device: torch.device):
        self.job, self.image, self.logits = job, image, logits
        self.copied = None
        if device.type == "cuda":  # the copies were queued on this device's current stream
            self.copied = torch.cuda.Event()
            self.copied.record(torch.cuda.current_stream(device))

    def to_host(self) -> tuple[np.ndarray, np.ndarray | None]:
        if self.copied is not None:
            start = time.perf_counter()
            self.copied.synchronize()
            self.job.encode_seconds += time.perf_counter() - start
            self.job.rows_timed += len(self.image)
        if self.job.warmup is None:
            self.job.warmup = (self.job.encode_seconds, self.job.rows_timed)
        return self.image.numpy(), None if self.logits is None else self.logits.numpy()


def run_extraction(store: Store, plan: Plan, *, log: Log = print, progress: bool = True) -> ExtractionReport:
    """Run a plan into a store. Everything a user can get wrong (a missing dataset root, unknown
    model, missing weights, a changed dataset, another extraction of the same dataset running)
    fails here before any encoding starts, and a refused registration writes nothing."""
    from embedstore.models import load_model

    settings = plan.settings
    ranks = ranks_from_env(use_cuda=settings.device != "cpu" and torch.cuda.is_available())
    runtime = resolve_runtime(plan, ranks, log if ranks.is_main else (lambda _msg: None))
    report = ExtractionReport(device=str(runtime.device), precision=runtime.precision, decode=runtime.decode,
                              workers=runtime.workers)  # fmt: skip
    started = time.perf_counter()

    with _dataset_locks(store, plan, ranks):
        datasets = [(d, _open_planned(d)) for d in plan.datasets]
        adapters = []
        for model_plan in plan.models:
            adapter = load_model(model_plan.id, device=str(runtime.device), precision=runtime.precision)
            if model_plan.metadata:
                from embedstore.models import apply_overrides

                adapter.metadata = apply_overrides(adapter.metadata, dict(model_plan.metadata))
            adapters.append(adapter)

        if ranks.is_main:
            with store.transaction():  # every model and dataset registered, or none
                _register(store, adapters, datasets, log)
        ranks.barrier()

        for _, dataset in datasets:
            _extract_dataset(store, dataset, adapters, plan, runtime, ranks, report, log, progress)

    report.images = int(ranks.total(report.images))
    report.seconds = time.perf_counter() - started
    report.rank, report.world = ranks.rank, ranks.world
    return report


def _open_planned(planned: DatasetPlan):
    """Open a plan's dataset; an error in a plan file's entry (a bad option, a missing root) names it."""
    from embedstore.sources import open_dataset

    try:
        return open_dataset(planned.name, planned.source, **dict(planned.options))
    except DatasetError as exc:
        if planned.origin is None:
            raise
        raise DatasetError(f"{planned.origin}: {exc}") from None


def run_extraction_at(
    path: str | os.PathLike, plan: Plan, *, log: Log = print, progress: bool = True
) -> ExtractionReport:
    """`run_extraction` into the store at ``path``, creating the store when there is none. A store
    created here is removed again when the run fails before any array was written (a mistyped
    dataset root or missing weights leave no empty store behind). Under torchrun the store must
    exist: ranks cannot agree on who creates it."""
    path = Path(path)
    created = not Store.exists(path)
    if created:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise StoreError(f"no store at {path}: under torchrun, create it first with `embedstore init`")
        existed = path.exists()
        Store.create(path)
        log(f"created store {path}")
    store = Store.open(path, readonly=False)
    try:
        return run_extraction(store, plan, log=log, progress=progress)
    except BaseException:
        if created and not store.list_arrays():
            _remove_new_store(path, keep_folder=existed)
            log(f"removed the store {path} created for this run: nothing was written")
        raise


def _remove_new_store(path: Path, *, keep_folder: bool) -> None:
    if not keep_folder:
        shutil.rmtree(path, ignore_errors=True)
        return
    for child in path.iterdir():  # the folder was there (empty) before the store was made in it
        shutil.rmtree(child) if child.is_dir() else child.unlink()


@contextlib.contextmanager
def _dataset_locks(store: Store, plan: Plan, ranks: Ranks) -> Iterator[None]:
    """Rank 0 holds the plan's dataset locks (`embedstore.store.locks`) for every rank; a refusal
    is raised on every rank, so that none waits at a barrier rank 0 never reaches."""
    with contextlib.ExitStack() as held:
        refusal = None
        if ranks.is_main:
            try:
                held.enter_context(
                    dataset_locks(store.path, [d.name for d in plan.datasets], doing="embedstore extract")
                )
            except StoreError as exc:
                refusal = str(exc)
        refusal = ranks.broadcast(refusal)
        if refusal is not None:
            raise StoreError(refusal)
        yield


def _register(store: Store, adapters, datasets, log: Log) -> None:
    for adapter in adapters:
        info = adapter.describe()
        info["group_label"] = info.get("group")
        store.register_model(info)
    for dataset_plan, dataset in datasets:
        if not store.register_dataset(dataset):  # registered before: its templates stay as they were
            unseen = _unknown_templates(store, dataset.name, dataset.templates)
            if unseen:
                log(f"{dataset.name}: already registered with {len(store.templates(dataset.name))} templates; "
                    f"extract does not add the {len(unseen)} other template(s) its source names (e.g. {unseen[0]!r}): add them with "
                    f"`embedstore prompts add --dataset {dataset.name} --name NAME --file TEMPLATES.txt`")  # fmt: skip
        for name, templates in dataset_plan.prompt_sets.items():
            _refuse_unencoded_templates(store, dataset.name, name, templates)
            store.add_prompt_set(dataset.name, name, templates)


def _refuse_unencoded_templates(store: Store, dataset: str, prompt_set: str, templates: Sequence[str]) -> None:
    """A plan's prompt set may add templates only while the dataset has no text embeddings: once
    ``text_emb`` exists, its template axis is fixed, and `embedstore prompts add` extends it."""
    new = _unknown_templates(store, dataset, templates)
    if new and store.list_arrays(dataset, None, "text_emb"):
        raise EmbedstoreError(
            f"dataset {dataset}: the plan's prompt set {prompt_set!r} names {len(new)} template(s) its stored "
            f"text embeddings lack (e.g. {new[0]!r}); add them with `embedstore prompts add --dataset {dataset} "
            f"--name {prompt_set} --file TEMPLATES.txt` (it encodes only those), or leave them out of the plan"
        )


def _unknown_templates(store: Store, dataset: str, templates: Sequence[str]) -> list[str]:
    """The templates not (yet) in the dataset's template list, in order."""
    known = set(store.templates(dataset))
    return [t for t in templates if t not in known]


def _settings_fingerprint(runtime: Runtime, plan: Plan, adapter, **extra: Any) -> tuple[str, dict[str, Any]]:
    settings = {
        "extractor": EXTRACTOR_VERSION,
        "precision": runtime.precision,
        "decode": runtime.decode,
        "pixel_limit": plan.settings.pixel_limit,
        "preprocess": dataclasses.asdict(adapter.preprocess),
        **extra,
    }
    if runtime.decode == "gpu" and plan.settings.cpu_decode_share and extra.get("kind") in ("image", "logits"):
        # which rows PIL decodes moves their pixels by a few levels (absent when 0: older runs resume)
        settings["cpu_decode_share"] = plan.settings.cpu_decode_share
    return hash_object(settings), settings


def _open_array(store: Store, ranks: Ranks, dataset, adapter, name: str, shape, dtype: str, chunk_rows: int,
                settings_fp: str, settings: dict[str, Any], plan: Plan, runtime: Runtime) -> StoreArray:  # fmt: skip
    fingerprints = {"dataset": dataset.fingerprint(), "model": adapter.fingerprint, "settings": settings_fp}
    # Recorded, not fingerprinted: they may change between a run and its resume, and the batch size and
    # CPU thread count can move float results in their last bits (README, "Resume").
    recorded = dict(
        settings, batch_size=plan.settings.batch_size, device=str(runtime.device), workers=runtime.workers,
        cpu_threads=runtime.pass_threads,
    )  # fmt: skip
    return store.open_array_writer(
        dataset.name, adapter.model_id, name, shape=shape, dtype=dtype, chunk_rows=chunk_rows,
        fingerprints=fingerprints, settings=recorded, versions=_versions(),
        compression=plan.settings.compression, register=ranks.is_main,
    )  # fmt: skip


def _write_all(array: StoreArray, data: np.ndarray) -> None:
    for chunk in array.missing_chunks():
        a, b = array.chunk_bounds(chunk)
        array.write_chunk(chunk, data[a:b])


def _text_array(store: Store, dataset, adapter, plan: Plan, runtime: Runtime, ranks: Ranks, log: Log, name: str,
                shape: tuple[int, ...], chunk_rows: int, kind: str, encode: Callable[[], np.ndarray]) -> ArrayReport:  # fmt: skip
    """Create or reopen one text array (rank 0 only) and write it whole with ``encode()`` unless it
    is complete. The catalog work holds one connection; the encoding runs without it."""
    dtype = plan.settings.dtype
    fp, settings = _settings_fingerprint(runtime, plan, adapter, kind=kind, dtype=dtype)
    with store.session():
        array = _open_array(store, ranks, dataset, adapter, name, shape, dtype, chunk_rows, fp, settings, plan, runtime)
        complete = not array.missing_chunks()
        if complete:  # already written; record it (a killed run may have written it unrecorded)
            info = store.update_array_progress(dataset.name, adapter.model_id, name)
    if complete:
        return ArrayReport(dataset.name, adapter.model_id, name, info.rows_total, info.rows_done, info.status)
    start = time.perf_counter()
    values = encode()
    _write_all(array, values.astype(dtype))
    seconds = time.perf_counter() - start
    rows = int(np.prod(values.shape[:-1]))
    info = store.update_array_progress(dataset.name, adapter.model_id, name, seconds=seconds,
                                       rows_per_s=rows / max(seconds, 1e-9))  # fmt: skip
    log(f"  {adapter.model_id}: {name} {list(shape)} ({rows} texts) in {seconds:.1f} s")
    return ArrayReport(dataset.name, adapter.model_id, name, info.rows_total, info.rows_done, info.status)


def _extract_text(
    store: Store, dataset, adapter, plan: Plan, runtime: Runtime, ranks: Ranks, log: Log, report: ExtractionReport
) -> np.ndarray | None:
    """text_emb and caption_emb of one CLIP model (rank 0 encodes, the others read); returns the
    zero-shot classifier's text embeddings as stored, or None when the dataset has no classes."""
    text_emb = None
    batch_size = plan.settings.batch_size
    if dataset.classnames:
        # The template list is not in the fingerprint: it only grows (`embedstore prompts add` appends
        # templates and their embeddings) and the T axis of the shape is checked on reopening.
        templates = store.templates(dataset.name)
        held = store.list_arrays(dataset.name, adapter.model_id, "text_emb")
        if held and held[0].status == "complete" and held[0].shape[1] < len(templates):
            raise StoreError(  # templates were added since (prompts add --model for other models, or stopped)
                f"text_emb of {adapter.model_id} on {dataset.name} encodes {held[0].shape[1]} templates and the "
                f"dataset now has {len(templates)}: encode the new ones with `embedstore prompts add --dataset "
                f"{dataset.name} --model {adapter.model_id}` and the templates, then extract"
            )
        if ranks.is_main:
            report.arrays.append(_text_array(
                store, dataset, adapter, plan, runtime, ranks, log, "text_emb",
                (len(dataset.classnames), len(templates), adapter.embed_dim), TEXT_CHUNK_ROWS, "text",
                lambda: encode_class_templates(adapter, dataset.classnames, templates, batch_size)))  # fmt: skip
        ranks.barrier()
        text_emb = store.read_array(dataset.name, adapter.model_id, "text_emb")
    captions = [text for sample in dataset.samples for text in sample.captions]
    if captions:
        if ranks.is_main:
            report.arrays.append(_text_array(
                store, dataset, adapter, plan, runtime, ranks, log, "caption_emb",
                (len(captions), adapter.embed_dim), plan.settings.chunk_rows, "captions",
                lambda: encode_texts(adapter, captions, batch_size)))  # fmt: skip
        ranks.barrier()
    return text_emb


def _extract_dataset(store: Store, dataset, adapters, plan: Plan, runtime: Runtime, ranks: Ranks,
                     report: ExtractionReport, log: Log, progress: bool) -> None:  # fmt: skip
    settings = plan.settings
    n = len(dataset)
    log(f"{dataset.name}: {n} images, {len(dataset.classnames)} classes, {len(adapters)} model(s)")
    text_embs = {
        adapter.model_id: _extract_text(store, dataset, adapter, plan, runtime, ranks, log, report)
        for adapter in adapters
        if adapter.kind == "clip"
    }
    jobs = [_ModelJob(adapter, settings.dtype) for adapter in adapters]
    with store.session() if ranks.is_main else contextlib.nullcontext():  # one connection for every model's arrays
        for job in jobs:
            fp, recorded = _settings_fingerprint(runtime, plan, job.adapter, kind="image", dtype=settings.dtype)
            text_emb = text_embs.get(job.model_id)
            _open_image_arrays(store, dataset, job, text_emb, fp, recorded, plan, runtime, ranks)
    ranks.barrier()
    if not ranks.is_main:
        for job in jobs:
            job.image = store.arrays.open_array(store.array_path(dataset.name, job.model_id, "image_emb"))
            if job.has_logits:
                job.logits = store.arrays.open_array(store.array_path(dataset.name, job.model_id, "logits"))
    _run_pass(store, dataset, jobs, plan, runtime, ranks, report, log, progress)


def _open_image_arrays(store: Store, dataset, job: _ModelJob, text_emb, fp: str, recorded: dict, plan: Plan,
                       runtime: Runtime, ranks: Ranks) -> None:  # fmt: skip
    """image_emb and logits of one model: rank 0 creates (or checks and reopens) them; the other
    ranks open them after the barrier."""
    settings, adapter, n = plan.settings, job.adapter, len(dataset)
    if ranks.is_main:
        job.image = _open_array(store, ranks, dataset, adapter, "image_emb", (n, adapter.embed_dim), settings.dtype,
                                settings.chunk_rows, fp, recorded, plan, runtime)  # fmt: skip
    if adapter.kind == "classifier":
        n_classes = adapter.num_classes
    else:
        n_classes = len(dataset.classnames) if text_emb is not None else None
    if not n_classes:
        return
    default = store.prompt_set(dataset.name, "default") if adapter.kind == "clip" else None
    fp, recorded = _settings_fingerprint(runtime, plan, adapter, kind="logits", dtype="float32",
                                         image_dtype=settings.dtype, default_prompts=default)  # fmt: skip
    job.has_logits = True
    if ranks.is_main:
        job.logits = _open_array(store, ranks, dataset, adapter, "logits", (n, n_classes), "float32",
                                 settings.chunk_rows, fp, recorded, plan, runtime)  # fmt: skip
    if adapter.kind == "clip":
        job.classifier = torch.from_numpy(zeroshot_weights(text_emb, default).T.copy()).to(runtime.device)


def _run_pass(store: Store, dataset, jobs: list[_ModelJob], plan: Plan, runtime: Runtime, ranks: Ranks,
              report: ExtractionReport, log: Log, progress: bool) -> None:  # fmt: skip
    """One pass over the dataset's missing chunks: read and decode each image once, feed every model."""
    settings, n = plan.settings, len(dataset)
    writer = ChunkWriter()
    missing_anywhere = False
    for job in jobs:
        for array, name in ((job.image, "image_emb"), (job.logits, "logits")):
            if array is not None:
                job.done[name] = array.done_chunks()
                job.assemblers.append((ChunkAssembler(array, writer.submit), name))
        missing = {c for c in range(job.image.n_chunks) if any(c not in done for done in job.done.values())}
        job.missing = {c for c in missing if ranks.owns(c)}
        missing_anywhere = missing_anywhere or bool(missing)
    chunks = sorted(set().union(*(job.missing for job in jobs))) if jobs else []
    tasks = batch_tasks(n, job.image.chunk_rows if jobs else settings.chunk_rows, settings.batch_size, chunks)
    transforms = {}
    for job in jobs:
        if job.missing:
            transforms.setdefault(job.adapter.preprocess, job.adapter.pil_transform)
    rows_todo = sum(t.stop - t.start for t in tasks)
    if not tasks:
        log(f"{dataset.name}: every array is complete; nothing to do" if not missing_anywhere else
            f"{dataset.name}: rank {ranks.rank} of {ranks.world} owns none of the chunks left to encode")  # fmt: skip
    bar = _progress_bar(rows_todo, f"{dataset.name}", progress and ranks.is_main and rows_todo > 0)
    threads = torch.get_num_threads()
    torch.set_num_threads(runtime.pass_threads)
    pass_start = time.perf_counter()
    batches = iterate_prepared(
        dataset, tasks, transforms, decode=runtime.decode, device=runtime.device, workers=runtime.workers,
        options=DecodeOptions(settings.pixel_limit), cpu_share_permille=settings.cpu_decode_permille,
    ) if tasks else ()  # fmt: skip
    in_flight: list[tuple[PreparedBatch, list[tuple[_ModelJob, _EncodedBatch | None]]]] = []
    try:
        for batch in batches:
            task = batch.task
            encoded = [(job, job.encode(batch.pixels[job.adapter.preprocess]) if len(batch.good_rows) else None)
                       for job in jobs if task.chunk in job.missing]  # fmt: skip
            in_flight.append((batch, encoded))
            if len(in_flight) > 1:
                _deliver(*in_flight.pop(0))
            bar.update(task.stop - task.start)
        while in_flight:
            _deliver(*in_flight.pop(0))
    finally:
        bar.close()
        writer.close()
        torch.set_num_threads(threads)
    pass_seconds = time.perf_counter() - pass_start
    report.images += rows_todo
    ranks.barrier()
    if ranks.is_main:
        with store.session():
            _finish_dataset(store, dataset, jobs, report, rows_todo, pass_seconds, log)


def _deliver(batch: PreparedBatch, encoded: list[tuple[_ModelJob, _EncodedBatch | None]]) -> None:
    """Hand one batch's outputs, once on the host, to each array's chunk assembler."""
    task = batch.task
    for job, outputs in encoded:
        image, logits = outputs.to_host() if outputs is not None else (None, None)
        for assembler, name in job.assemblers:
            if task.chunk in job.done[name]:
                continue
            values = image if name == "image_emb" else logits
            assembler.add(task.chunk, task.start, task.stop, batch.good_rows, values, batch.bad)


def _finish_dataset(
    store: Store, dataset, jobs, report: ExtractionReport, rows_todo: int, pass_seconds: float, log: Log
) -> None:
    bad: dict[int, str] = {}
    for job in jobs:
        for entries in job.image.marker_extras("bad").values():
            bad.update((int(r), reason) for r, reason in entries)
    keys = {s.row: s.key for s in dataset.samples} if bad else {}
    store.record_bad_samples(dataset.name, [(r, keys.get(r), why) for r, why in sorted(bad.items())])
    if bad:
        report.bad_samples[dataset.name] = len(bad)
        first = min(bad)
        log(
            f"{dataset.name}: {len(bad)} bad sample(s) recorded in bad_samples, e.g. row {first} ({keys.get(first)}): {bad[first]}"
        )
    for job in jobs:
        per_s = job.images_per_s
        if per_s:
            report.model_images_per_s[f"{job.model_id} on {dataset.name}"] = per_s
            report.model_encode_seconds[f"{job.model_id} on {dataset.name}"] = job.encode_seconds
        for array, name in ((job.image, "image_emb"), (job.logits, "logits")):
            if array is None:
                continue
            info = store.update_array_progress(dataset.name, job.model_id, name,
                                               seconds=job.encode_seconds if job.rows_encoded else None,
                                               rows_per_s=per_s)  # fmt: skip
            report.arrays.append(
                ArrayReport(dataset.name, job.model_id, name, info.rows_total, info.rows_done, info.status)
            )
    if rows_todo:
        log(
            f"{dataset.name}: {rows_todo} images in {pass_seconds:.1f} s ({rows_todo / max(pass_seconds, 1e-9):.0f} img/s end to end)"
        )


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(total: int, description: str, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit="img", unit_scale=True, dynamic_ncols=True)
