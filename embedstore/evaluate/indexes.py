"""Nearest-neighbour indexes of store arrays, saved beside the store: build, find, load, list.

An index of array ``A`` (``image_emb``, ``caption_emb``, any ``[rows, dim]`` array) of model M on
dataset D is two files (the layout of :meth:`embedstore.index.NNIndex.save`)::

    STORE/indexes/<D>/<M>/<A>.<kind>.faiss        a FAISS index file (``.npy`` when the numpy or
                                                   torch backend built it: the prepared rows)
    STORE/indexes/<D>/<M>/<A>.<kind>.faiss.json   sidecar: spec, size, source fingerprint, builder

``<D>`` and ``<M>`` are the store's folder names for them (``path_component``). There is one index per
(dataset, model, array, kind): building again replaces it. No catalog table records indexes; the
files are the record and :func:`list_saved_indexes` finds them.

Conventions:

- Every index is cosine: inner product of L2-normalised rows (FAISS ``IndexFlatIP`` /
  ``IndexIVFFlat`` / ``IndexHNSWFlat`` with ``METRIC_INNER_PRODUCT``).
- An index covers the array's *usable* rows, in row order (:func:`gallery_rows`): the samples not
  listed in ``bad_samples`` (their arrays hold zeros), and for ``caption_emb`` the captions of those
  samples. Index id ``i`` is array row ``Gallery.rows[i]``.
- The sidecar's ``source_fingerprint`` is :func:`embedstore.index.array_fingerprint` of those rows as
  stored. An index whose fingerprint differs from the current rows is **stale** (the array was
  re-extracted, or more samples turned out bad) and is refused with
  :class:`~embedstore.errors.FingerprintMismatch`, never used. Checking reads the whole array once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from embedstore.errors import AnalysisError, FingerprintMismatch, StoreError
from embedstore.evaluate.common import read_finite, usable_rows
from embedstore.index import INDEX_KINDS, IndexSpec, NNIndex, array_fingerprint, build_index_from_spec, load_index
from embedstore.index.sidecar import PAYLOADS, IndexSidecar, sidecar_path
from embedstore.index.spec import DEFAULT_EF_CONSTRUCTION, DEFAULT_EF_SEARCH, DEFAULT_HNSW_M
from embedstore.store import Store
from embedstore.store.store import path_component

INDEXES_DIR = "indexes"
IMAGE_ARRAY = "image_emb"
CAPTION_ARRAY = "caption_emb"
#: The payload file each backend writes (``NNIndex.save``): FAISS backends a FAISS index file, the
#: exact numpy and torch backends the prepared rows as ``.npy``. Payload names are the file suffixes.
_PAYLOAD_OF_BACKEND = {"faiss-gpu": "faiss", "faiss-cpu": "faiss", "torch-cuda": "npy", "numpy": "npy"}
# Status of a listed index.
CURRENT, STALE, NO_ARRAY, UNCHECKED, UNREADABLE = "current", "stale", "no array", "unchecked", "unreadable"


def gallery_rows(store: Store, dataset: str, array: str) -> np.ndarray:
    """The array rows an index of ``array`` covers, ascending: decodable samples, or for
    ``caption_emb`` the captions of decodable samples."""
    samples = usable_rows(store, dataset, labelled=False)
    if array != CAPTION_ARRAY:
        return samples
    captions = store.caption_table(dataset)
    return captions["row"][np.isin(captions["sample_row"], samples)]


@dataclass(frozen=True)
class Gallery:
    """The usable rows of one array: ``vectors[i]`` is array row ``rows[i]`` (values as stored)."""

    dataset: str
    model: str
    array: str
    rows: np.ndarray
    vectors: np.ndarray

    @cached_property
    def fingerprint(self) -> str:
        """What an index built from these rows records as its source (``array_fingerprint``)."""
        return array_fingerprint(self.vectors)

    def describe(self) -> str:
        return f"{self.array} of model {self.model} on dataset {self.dataset}"


def read_gallery(store: Store, dataset: str, model: str, array: str) -> Gallery:
    """An array's usable rows (:func:`gallery_rows`); NaN/inf rows and non-matrix arrays are refused."""
    shape = store.array(dataset, model, array).shape  # a missing array is named, with the ones there are
    if len(shape) != 2:
        listed = "x".join(map(str, shape))
        raise AnalysisError(f"{array} of model {model} on dataset {dataset} is {listed}, not a [rows, dim] matrix")
    rows = gallery_rows(store, dataset, array)
    if not len(rows):
        raise AnalysisError(f"dataset {dataset} has no decodable rows for {array}")
    vectors = read_finite(store, dataset, model, array, None if len(rows) == shape[0] else rows)
    return Gallery(dataset, model, array, rows, vectors)


def index_folder(store: Store, dataset: str, model: str) -> Path:
    return store.path / INDEXES_DIR / path_component(dataset) / path_component(model)


def index_path(store: Store, dataset: str, model: str, array: str, kind: str, payload: str) -> Path:
    """``STORE/indexes/<dataset>/<model>/<array>.<kind>.<payload>`` (payload "faiss" or "npy")."""
    return index_folder(store, dataset, model) / f"{array}.{kind}.{payload}"


def saved_index_path(store: Store, dataset: str, model: str, array: str, kind: str) -> Path | None:
    """Where the saved ``kind`` index of an array is, or None when there is none."""
    for payload in PAYLOADS:
        path = index_path(store, dataset, model, array, kind, payload)
        if sidecar_path(path).is_file():
            return path
    return None


def load_saved_index(store: Store, gallery: Gallery, kind: str, *, device: str = "auto") -> tuple[NNIndex, Path] | None:
    """The saved ``kind`` index of ``gallery``'s array and its path, checked against the current
    rows; None when none is saved. A stale one raises :class:`FingerprintMismatch`."""
    path = saved_index_path(store, gallery.dataset, gallery.model, gallery.array, kind)
    if path is None:
        return None
    try:
        index = load_index(path, fingerprint=gallery.fingerprint, device=device)
    except FingerprintMismatch:
        raise FingerprintMismatch(
            f"the saved {kind} index of {gallery.describe()} ({path}) is stale: the array changed after it was "
            f"built; rebuild it with `embedstore index build --model {gallery.model} --dataset {gallery.dataset} "
            f"--array {gallery.array} --kind {kind}`"
        ) from None
    if index.spec.metric != "ip" or not index.spec.normalize:
        raise StoreError(f"index {path} does not score cosines (metric {index.spec.metric!r}); rebuild it")
    return index, path


@dataclass(frozen=True)
class IndexRequest:
    """How to search a gallery through an index: its ``kind`` and, when given, its parameters.

    ``None`` means "the saved value, or the default when building". A saved index of the kind is used
    when ``use_saved`` (:meth:`index_for`): the search-time ``nprobe`` / ``ef_search`` are applied to
    it, while a build-time parameter (``nlist``, ``hnsw_m``, ``ef_construction``) that differs from
    the saved one is an error (rebuild it, or pass ``use_saved=False`` for an index built in memory).
    ``seed`` fixes IVF training; ``device`` is "auto", "cpu" or "cuda" (:mod:`embedstore.index.backends`).
    """

    kind: str
    nlist: int | None = None
    nprobe: int | None = None
    hnsw_m: int | None = None
    ef_search: int | None = None
    ef_construction: int | None = None
    use_saved: bool = True
    device: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in INDEX_KINDS:
            raise AnalysisError(f"index kind must be one of {', '.join(INDEX_KINDS)}, got {self.kind!r}")
        for name in self._given():
            if name not in _PARAMETERS_OF_KIND[self.kind]:
                raise AnalysisError(f"{name} applies to {_KIND_OF_PARAMETER[name]} indexes, not {self.kind}")
        self.spec()  # parameters out of range fail here, before any array is read

    def _given(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in _KIND_OF_PARAMETER if getattr(self, name) is not None}

    def spec(self) -> IndexSpec:
        """The cosine spec to build with (unset parameters at their defaults)."""
        return IndexSpec(
            kind=self.kind,
            nlist=self.nlist,
            nprobe=self.nprobe,
            hnsw_m=DEFAULT_HNSW_M if self.hnsw_m is None else self.hnsw_m,
            ef_search=DEFAULT_EF_SEARCH if self.ef_search is None else self.ef_search,
            ef_construction=DEFAULT_EF_CONSTRUCTION if self.ef_construction is None else self.ef_construction,
        )

    def index_for(self, store: Store, gallery: Gallery) -> tuple[NNIndex, Path | None]:
        """The index to search ``gallery`` with: the saved one (adjusted, see the class docstring)
        and its path, or one built in memory and None."""
        saved = load_saved_index(store, gallery, self.kind, device=self.device) if self.use_saved else None
        if saved is None:
            return build_index_from_spec(gallery.vectors, self.spec(), device=self.device, seed=self.seed), None
        index, path = saved
        for name in ("nlist", "hnsw_m", "ef_construction"):
            wanted, built = getattr(self, name), getattr(index.spec, name)
            if wanted is not None and wanted != built:
                flag = f"--{name.replace('_', '-')}"
                raise AnalysisError(
                    f"the saved {self.kind} index of {gallery.describe()} was built with {flag} {built}, not {wanted}; "
                    f"rebuild it with `embedstore index build`, or leave it out with --no-saved-index"
                )
        index.set_search_params(nprobe=self.nprobe, ef_search=self.ef_search)
        return index, path


_PARAMETERS_OF_KIND = {"flat": (), "ivf": ("nlist", "nprobe"), "hnsw": ("hnsw_m", "ef_search", "ef_construction")}
_KIND_OF_PARAMETER = {name: kind for kind, names in _PARAMETERS_OF_KIND.items() for name in names}


def index_kind_of(parameter: str) -> str:
    """The index kind an `IndexRequest` parameter (``nlist``, ``hnsw_m``, ...) applies to."""
    return _KIND_OF_PARAMETER[parameter]


@dataclass(frozen=True)
class SavedIndex:
    """One saved index as listed: what it indexes, where, its size and parameters, and its status
    ("current", "stale", "no array" when the array was deleted, "unchecked" when not verified)."""

    dataset: str
    model: str
    array: str
    kind: str
    path: Path
    n: int
    dim: int
    params: dict[str, Any]
    built_with: str
    file_bytes: int
    status: str
    seconds: float | None = None  # build time, for an index just built

    def as_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset, "model": self.model, "array": self.array, "kind": self.kind,
            "path": str(self.path), "n": self.n, "dim": self.dim, "params": self.params,
            "built_with": self.built_with, "file_bytes": self.file_bytes, "status": self.status,
            "seconds": self.seconds,
        }  # fmt: skip


def build_saved_index(
    store: Store,
    dataset: str,
    model: str,
    array: str = IMAGE_ARRAY,
    spec: IndexSpec | None = None,
    *,
    device: str = "auto",
    seed: int = 0,
) -> SavedIndex:
    """Build a cosine index of an array's usable rows and save it at :func:`index_path`, replacing
    any saved index of the same kind. ``model`` may be a glob matching one model holding the array
    (``Store.model_with_array``). ``spec`` gives the kind and parameters (default: ivf with
    parameters chosen for the size); it must be cosine (``metric="ip"``, ``normalize=True``)."""
    spec = spec or IndexSpec(kind="ivf")
    if spec.metric != "ip" or not spec.normalize:
        raise AnalysisError(f"saved indexes score cosines (metric='ip', normalize=True), got metric={spec.metric!r}")
    store.dataset_info(dataset)
    model = store.model_with_array(dataset, model, array)
    store.model_info(model)
    gallery = read_gallery(store, dataset, model, array)
    start = time.perf_counter()
    index = build_index_from_spec(gallery.vectors, spec, device=device, seed=seed)
    path = index_path(store, dataset, model, array, spec.kind, _PAYLOAD_OF_BACKEND[index.backend])
    for payload in PAYLOADS:  # one index per kind: drop one saved with the other payload
        other = index_path(store, dataset, model, array, spec.kind, payload)
        if other != path:
            sidecar_path(other).unlink(missing_ok=True)
            other.unlink(missing_ok=True)
    index.save(path)
    seconds = time.perf_counter() - start
    return SavedIndex(
        dataset, model, array, spec.kind, path, index.n, index.dim, index.spec.params(), index.backend,
        path.stat().st_size, CURRENT, seconds,
    )  # fmt: skip


def delete_saved_indexes(store: Store, dataset: str, model: str, array: str) -> int:
    """Delete every index saved from an array (each kind, each payload, with its sidecar); returns
    how many there were."""
    deleted = 0
    for kind in INDEX_KINDS:
        for payload in PAYLOADS:
            path = index_path(store, dataset, model, array, kind, payload)
            if sidecar_path(path).is_file() or path.is_file():
                deleted += 1
            path.unlink(missing_ok=True)
            sidecar_path(path).unlink(missing_ok=True)
    return deleted


def list_saved_indexes(store: Store, *, verify: bool = False) -> list[SavedIndex]:
    """Every index saved under ``STORE/indexes``, sorted by dataset, model, array, kind. With
    ``verify``, each is checked against its array's current rows (reads every indexed array) and
    loaded once (``unreadable`` when its file is damaged or does not match its sidecar). A sidecar that
    cannot be read is listed as ``unreadable`` whether or not ``verify``."""
    arrays = {(a.dataset, a.model, a.name) for a in store.list_arrays()}
    owners = {(path_component(d), path_component(m)): (d, m) for d, m, _ in arrays}
    found = []
    for sidecar_file in sorted((store.path / INDEXES_DIR).glob("*/*/*.json")):
        parts = sidecar_file.name.removesuffix(".json").rsplit(".", 2)
        if len(parts) != 3 or parts[2] not in PAYLOADS or parts[1] not in INDEX_KINDS:
            continue  # not a sidecar of ours
        array, kind, payload = parts
        folders = (sidecar_file.parent.parent.name, sidecar_file.parent.name)
        dataset, model = owners.get(folders, folders)
        path = sidecar_file.with_name(sidecar_file.name.removesuffix(".json"))
        size = path.stat().st_size if path.is_file() else 0
        try:
            sidecar = IndexSidecar.read(sidecar_file)
        except StoreError:  # one damaged sidecar is listed as such, not the end of the listing
            found.append(SavedIndex(dataset, model, array, kind, path, 0, 0, {}, "", size, UNREADABLE))
            continue
        if (dataset, model, array) not in arrays:
            status = NO_ARRAY
        elif verify:
            current = read_gallery(store, dataset, model, array).fingerprint
            status = CURRENT if current == sidecar.source_fingerprint else STALE
            try:
                load_index(path, device="cpu")
            except StoreError:
                status = UNREADABLE
        else:
            status = UNCHECKED
        found.append(SavedIndex(dataset, model, array, kind, path, sidecar.n, sidecar.dim, sidecar.spec.params(),
                                sidecar.built_with, size, status))  # fmt: skip
    return sorted(found, key=lambda s: (s.dataset, s.model, s.array, s.kind))
