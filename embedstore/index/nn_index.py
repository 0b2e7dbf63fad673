"""Nearest-neighbour indexes over embedding rows: build one, search it, save it, load it back.

>>> index = build_index(image_emb, kind="hnsw", ef_search=128)      # doctest: +SKIP
>>> scores, ids = index.search(caption_emb, k=10)                   # doctest: +SKIP
>>> index.save("coco_images.index"); load_index("coco_images.index", image_emb)   # doctest: +SKIP

Every backend (see :mod:`embedstore.index.backends`) answers the same way: ``scores`` float32
``[n_queries, k]`` in descending order (similarities, see :mod:`embedstore.index.spec`) and ``ids``
int64 row numbers of the indexed array. An approximate index that finds fewer than ``k`` results
for a query pads with id ``-1`` and score ``-inf``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Protocol

import numpy as np

import embedstore
from embedstore.errors import AnalysisError, FingerprintMismatch, StoreError
from embedstore.index import backends
from embedstore.index.faiss_search import (
    build_faiss_searcher,
    flat_searcher_from_rows,
    read_faiss_searcher,
    read_flat_rows,
)
from embedstore.index.numpy_search import NumpyFlatSearcher, read_npy_payload
from embedstore.index.sidecar import IndexSidecar, array_fingerprint, sidecar_path, write_atomically
from embedstore.index.spec import (
    DEFAULT_EF_CONSTRUCTION,
    DEFAULT_EF_SEARCH,
    DEFAULT_HNSW_M,
    IndexSpec,
    positive_int,
)
from embedstore.index.vectors import as_row_matrix, prepared_rows


class Searcher(Protocol):
    """What each backend implements; ``queries`` arrive prepared (float32, normalised if asked)."""

    backend: str
    payload: str

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...

    def default_batch_rows(self) -> int: ...

    def apply_search_params(self, spec: IndexSpec) -> None: ...

    def nbytes(self) -> int: ...

    def write(self, path: Path) -> None: ...


class NNIndex:
    """An index over ``n`` vectors of dimension ``dim``, searchable in batches of queries.

    ``backend`` names what runs the search ("faiss-gpu", "torch-cuda", "faiss-cpu" or "numpy");
    ``backend_note`` says why each preferred backend was passed over (None when none was).
    ``source_fingerprint`` identifies the array it was built from (:func:`array_fingerprint`).
    """

    def __init__(
        self,
        searcher: Searcher,
        spec: IndexSpec,
        *,
        dim: int,
        n: int,
        source_fingerprint: str,
        backend_note: str | None = None,
    ) -> None:
        self._searcher = searcher
        self.spec = spec
        self.dim = dim
        self.n = n
        self.source_fingerprint = source_fingerprint
        self.backend_note = backend_note

    @property
    def backend(self) -> str:
        return self._searcher.backend

    @property
    def nbytes(self) -> int:
        """Bytes the index holds (vectors, inverted lists, graph links)."""
        return self._searcher.nbytes()

    def __repr__(self) -> str:
        return f"NNIndex(kind={self.spec.kind!r}, n={self.n}, dim={self.dim}, backend={self.backend!r})"

    def search(self, queries: object, k: int, batch_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best-scoring indexed rows for each query row: ``(scores, ids)``, each
        ``[n_queries, k]``. Queries are normalised like the index when ``spec.normalize``; they are
        searched ``batch_size`` at a time (default: the backend's, which bounds the score block)."""
        matrix = as_row_matrix(queries, "queries")
        if matrix.shape[1] != self.dim:
            raise AnalysisError(f"queries have dimension {matrix.shape[1]}, the index has {self.dim}")
        k = positive_int("k", k)
        if k > self.n:
            raise AnalysisError(f"k={k} exceeds the {self.n} vectors in the index")
        if batch_size is None:
            batch_size = self._searcher.default_batch_rows()
        batch_size = positive_int("batch_size", batch_size)
        n_queries = matrix.shape[0]
        scores = np.empty((n_queries, k), dtype=np.float32)
        ids = np.empty((n_queries, k), dtype=np.int64)
        for start in range(0, n_queries, batch_size):
            stop = min(start + batch_size, n_queries)
            block = prepared_rows(matrix, self.spec.normalize, "queries", start, stop)
            scores[start:stop], ids[start:stop] = self._searcher.search(block, k)
        return scores, ids

    def set_search_params(self, *, nprobe: int | None = None, ef_search: int | None = None) -> None:
        """Change how widely an ivf (``nprobe``) or hnsw (``ef_search``) index searches, without
        rebuilding; the new values are what :meth:`save` records."""
        changes: dict[str, int] = {}
        if nprobe is not None:
            if self.spec.kind != "ivf":
                raise AnalysisError(f"nprobe applies to ivf indexes, this one is {self.spec.kind!r}")
            changes["nprobe"] = nprobe
        if ef_search is not None:
            if self.spec.kind != "hnsw":
                raise AnalysisError(f"ef_search applies to hnsw indexes, this one is {self.spec.kind!r}")
            changes["ef_search"] = ef_search
        spec = replace(self.spec, **changes)
        self._searcher.apply_search_params(spec)
        self.spec = spec

    def save(self, path: str | Path) -> Path:
        """Write the index to ``path`` and its sidecar to ``path.json``; returns ``path``."""
        path = Path(path)
        if path.is_dir():
            raise StoreError(f"cannot save an index to {path}: it is a directory")
        path.parent.mkdir(parents=True, exist_ok=True)
        sidecar = IndexSidecar(
            payload=self._searcher.payload,
            spec=self.spec,
            dim=self.dim,
            n=self.n,
            source_fingerprint=self.source_fingerprint,
            built_with=self.backend,
            versions=_library_versions(self._searcher.payload),
        )
        # The old sidecar goes first: stopped between the two writes, the new index has no sidecar (not
        # listed, not loaded; `embedstore gc` removes it) rather than an old one that misdescribes it.
        sidecar_path(path).unlink(missing_ok=True)
        write_atomically(path, self._searcher.write)
        write_atomically(sidecar_path(path), lambda p: p.write_text(sidecar.to_json()))
        return path


def build_index(
    vectors: object,
    kind: str = "flat",
    *,
    metric: str = "ip",
    normalize: bool = True,
    nlist: int | None = None,
    nprobe: int | None = None,
    hnsw_m: int = DEFAULT_HNSW_M,
    ef_search: int = DEFAULT_EF_SEARCH,
    ef_construction: int = DEFAULT_EF_CONSTRUCTION,
    device: str = "auto",
    backend: str = "auto",
    seed: int = 0,
) -> NNIndex:
    """Index the rows of ``vectors`` ``[n, dim]`` (any float or int dtype; indexed as float32).

    ``kind``/``metric``/parameters are those of :class:`IndexSpec` (``metric="ip"`` with
    ``normalize=True`` is cosine; flat is exact, FAISS ``IndexFlatIP`` on normalised rows).
    ``device`` ("auto", "cpu", "cuda") and ``backend`` choose the implementation as described in
    :mod:`embedstore.index.backends`; ``seed`` fixes the IVF training sample and k-means.
    """
    spec = IndexSpec(
        kind=kind,
        metric=metric,
        normalize=normalize,
        nlist=nlist,
        nprobe=nprobe,
        hnsw_m=hnsw_m,
        ef_search=ef_search,
        ef_construction=ef_construction,
    )
    return build_index_from_spec(vectors, spec, device=device, backend=backend, seed=seed)


def build_index_from_spec(
    vectors: object, spec: IndexSpec, *, device: str = "auto", backend: str = "auto", seed: int = 0
) -> NNIndex:
    """:func:`build_index` with the kind and parameters given as an :class:`IndexSpec`."""
    matrix = as_row_matrix(vectors, "vectors")
    n, dim = matrix.shape
    spec = spec.resolved(n)
    choice = backends.select_backend(spec.kind, device, backend)
    searcher = _BUILDERS[choice.name](matrix, spec, seed)
    return NNIndex(
        searcher,
        spec,
        dim=dim,
        n=n,
        source_fingerprint=array_fingerprint(matrix),
        backend_note=choice.note,
    )


def load_index(
    path: str | Path,
    vectors: object | None = None,
    *,
    fingerprint: str | None = None,
    device: str = "auto",
    backend: str = "auto",
) -> NNIndex:
    """Load an index saved by :meth:`NNIndex.save`.

    Pass the array it should index as ``vectors`` (or its :func:`array_fingerprint` as
    ``fingerprint``) to have it checked: an index built from a different array raises
    :class:`FingerprintMismatch`. ``device``/``backend`` choose where it runs, as for building;
    the search parameters are the saved ones.
    """
    path = Path(path)
    sidecar = IndexSidecar.read(sidecar_path(path))
    if not path.is_file():
        raise StoreError(f"index file {path} not found beside its sidecar {sidecar_path(path)}")
    if vectors is not None:
        matrix = as_row_matrix(vectors, "vectors")
        if matrix.shape != (sidecar.n, sidecar.dim):
            raise FingerprintMismatch(
                f"index {path} was built from a {sidecar.n}x{sidecar.dim} array, "
                f"not the given {matrix.shape[0]}x{matrix.shape[1]} one; rebuild it"
            )
        fingerprint = array_fingerprint(matrix) if fingerprint is None else fingerprint
    if fingerprint is not None and fingerprint != sidecar.source_fingerprint:
        raise FingerprintMismatch(
            f"index {path} was built from array {sidecar.source_fingerprint[:19]}, "
            f"not from the given array {fingerprint[:19]}; rebuild it"
        )
    if sidecar.payload == "faiss" and backends.import_faiss() is None:
        raise StoreError(f"index {path} is a FAISS index file and faiss is not installed (pip install faiss-cpu)")
    choice = backends.select_backend(sidecar.spec.kind, device, backend)
    try:
        searcher = _load_searcher(choice.name, sidecar, path)
    except (RuntimeError, ValueError, OSError, EOFError) as exc:  # FAISS raises RuntimeError on a bad file
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StoreError(
            f"index {path} cannot be read ({first_line}); rebuild it with `embedstore index build`"
        ) from None
    return NNIndex(
        searcher,
        sidecar.spec,
        dim=sidecar.dim,
        n=sidecar.n,
        source_fingerprint=sidecar.source_fingerprint,
        backend_note=choice.note,
    )


def _build_numpy(matrix: np.ndarray, spec: IndexSpec, seed: int) -> Searcher:
    return NumpyFlatSearcher(prepared_rows(matrix, spec.normalize, "vectors"), spec.metric)


def _build_torch_cuda(matrix: np.ndarray, spec: IndexSpec, seed: int) -> Searcher:
    from embedstore.index.torch_search import TorchFlatSearcher

    return TorchFlatSearcher(prepared_rows(matrix, spec.normalize, "vectors"), spec.metric)


def _build_faiss_cpu(matrix: np.ndarray, spec: IndexSpec, seed: int) -> Searcher:
    return build_faiss_searcher(matrix, spec, on_gpu=False, seed=seed)


def _build_faiss_gpu(matrix: np.ndarray, spec: IndexSpec, seed: int) -> Searcher:
    return build_faiss_searcher(matrix, spec, on_gpu=True, seed=seed)


_BUILDERS: dict[str, Callable[[np.ndarray, IndexSpec, int], Searcher]] = {
    "numpy": _build_numpy,
    "torch-cuda": _build_torch_cuda,
    "faiss-cpu": _build_faiss_cpu,
    "faiss-gpu": _build_faiss_gpu,
}


def _load_searcher(backend: str, sidecar: IndexSidecar, path: Path) -> Searcher:
    """The ``backend`` searcher over a saved payload (numpy/torch only ever load flat indexes)."""
    spec, shape = sidecar.spec, (sidecar.n, sidecar.dim)
    if backend in ("faiss-cpu", "faiss-gpu"):
        on_gpu = backend == "faiss-gpu"
        if sidecar.payload == "faiss":
            return read_faiss_searcher(path, spec, on_gpu=on_gpu, shape=shape)
        return flat_searcher_from_rows(_checked(read_npy_payload(path), shape), spec, on_gpu=on_gpu)
    rows = _checked(read_npy_payload(path) if sidecar.payload == "npy" else read_flat_rows(path), shape)
    if backend == "numpy":
        return NumpyFlatSearcher(rows, spec.metric)
    from embedstore.index.torch_search import TorchFlatSearcher

    return TorchFlatSearcher(rows, spec.metric)


def _checked(rows: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if rows.shape != tuple(shape):
        raise ValueError(f"it holds an array of shape {rows.shape}, its sidecar says {shape[0]}x{shape[1]}")
    return rows


def _library_versions(payload: str) -> dict[str, str]:
    versions = {"embedstore": embedstore.__version__, "numpy": np.__version__}
    faiss = backends.import_faiss()
    if payload == "faiss" and faiss is not None:
        versions["faiss"] = faiss.__version__
    return versions
