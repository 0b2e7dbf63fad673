"""FAISS indexes (flat, IVF, HNSW) on the CPU or a GPU: build, search, read and write.

Building adds prepared rows a block at a time, so the float32 copy never exceeds one block beyond
what the index itself holds. IVF trains k-means on at most 256 points per cell (FAISS's own
``max_points_per_centroid``), drawn without replacement with ``seed``; the k-means seed is ``seed``
too, so a build is reproducible. On a GPU, IVF trains with a GPU quantizer and then moves the whole
index; HNSW has no GPU implementation in FAISS and is never sent here with ``on_gpu``.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from embedstore.errors import AnalysisError
from embedstore.index.backends import import_faiss
from embedstore.index.spec import IndexSpec
from embedstore.index.vectors import iter_prepared_blocks, prepared_rows

_ADD_BLOCK_ROWS = 65536
_TRAIN_POINTS_PER_CELL = 256
_MAX_BATCH_ROWS = 16384
_GPU_DEVICE = 0
# FAISS GPU kernels select at most this many neighbours per query (GPU_MAX_SELECTION_K).
GPU_MAX_K = 2048


def _faiss() -> ModuleType:
    faiss = import_faiss()
    if faiss is None:  # callers select a faiss backend only when faiss imports
        raise RuntimeError("faiss backend selected without faiss installed")
    return faiss


def _faiss_metric(faiss: ModuleType, metric: str) -> int:
    return faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2


def _empty_cpu_index(faiss: ModuleType, spec: IndexSpec, dim: int) -> Any:
    metric = _faiss_metric(faiss, spec.metric)
    if spec.kind == "flat":
        return faiss.IndexFlat(dim, metric)
    if spec.kind == "ivf":
        return faiss.IndexIVFFlat(faiss.IndexFlat(dim, metric), dim, spec.nlist, metric)
    index = faiss.IndexHNSWFlat(dim, spec.hnsw_m, metric)
    index.hnsw.efConstruction = spec.ef_construction
    return index


def _apply_search_params(faiss: ModuleType, index: Any, spec: IndexSpec) -> None:
    """Set nprobe / efSearch on a CPU index (a GPU copy inherits them)."""
    if spec.kind == "ivf":
        faiss.extract_index_ivf(index).nprobe = spec.nprobe
    elif spec.kind == "hnsw":
        index.hnsw.efSearch = spec.ef_search


def _training_rows(matrix: np.ndarray, spec: IndexSpec, seed: int) -> np.ndarray:
    n = matrix.shape[0]
    wanted = min(n, _TRAIN_POINTS_PER_CELL * spec.nlist)
    if wanted == n:
        return prepared_rows(matrix, spec.normalize, "vectors")
    rows = np.sort(np.random.default_rng(seed).choice(n, size=wanted, replace=False))
    return prepared_rows(matrix[rows], spec.normalize, "vectors (training sample)")


class FaissSearcher:
    """A built FAISS index, on the CPU or on GPU 0."""

    payload = "faiss"

    def __init__(self, index: Any, spec: IndexSpec, gpu_resources: Any | None = None) -> None:
        self._index = index
        self._spec = spec
        self._gpu_resources = gpu_resources  # must outlive the GPU index
        self.backend = "faiss-gpu" if gpu_resources is not None else "faiss-cpu"
        self._nbytes: int | None = None

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self._gpu_resources is not None and k > GPU_MAX_K:
            raise AnalysisError(f"k={k} exceeds the {GPU_MAX_K} neighbours FAISS GPU indexes return; use device='cpu'")
        distances, ids = self._index.search(queries, k)
        scores = distances if self._spec.metric == "ip" else -distances
        scores = scores.astype(np.float32, copy=False)
        scores[ids < 0] = -np.inf  # FAISS pads with id -1 when fewer than k results were found
        return scores, ids.astype(np.int64, copy=False)

    def default_batch_rows(self) -> int:
        return _MAX_BATCH_ROWS

    def apply_search_params(self, spec: IndexSpec) -> None:
        """Switch to ``spec``'s nprobe / efSearch (the built structure is unchanged)."""
        faiss = _faiss()
        if self._gpu_resources is not None and spec.kind == "ivf":
            faiss.GpuParameterSpace().set_index_parameter(self._index, "nprobe", spec.nprobe)
        else:
            _apply_search_params(faiss, self._index, spec)
        self._spec = spec

    def _cpu_index(self) -> Any:
        if self._gpu_resources is None:
            return self._index
        return _faiss().index_gpu_to_cpu(self._index)

    def nbytes(self) -> int:
        """Size of the serialised index (vectors, lists, graph), computed once."""
        if self._nbytes is None:
            self._nbytes = int(_faiss().serialize_index(self._cpu_index()).nbytes)
        return self._nbytes

    def write(self, path: Path) -> None:
        _faiss().write_index(self._cpu_index(), str(path))


def _to_gpu(faiss: ModuleType, cpu_index: Any) -> tuple[Any, Any]:
    resources = faiss.StandardGpuResources()
    return faiss.index_cpu_to_gpu(resources, _GPU_DEVICE, cpu_index), resources


def build_faiss_searcher(matrix: np.ndarray, spec: IndexSpec, *, on_gpu: bool, seed: int) -> FaissSearcher:
    """Train (ivf) and fill a ``spec.kind`` index with the rows of ``matrix``."""
    faiss = _faiss()
    index = _empty_cpu_index(faiss, spec, matrix.shape[1])
    _apply_search_params(faiss, index, spec)
    if spec.kind == "ivf":
        index.cp.seed = seed
        if on_gpu:
            quantizer_resources = faiss.StandardGpuResources()
            index.clustering_index = faiss.index_cpu_to_gpu(
                quantizer_resources, _GPU_DEVICE, faiss.IndexFlatL2(matrix.shape[1])
            )
        index.train(_training_rows(matrix, spec, seed))
        if on_gpu:
            index.clustering_index = None  # the GPU quantizer served training only
    resources = None
    if on_gpu:
        index, resources = _to_gpu(faiss, index)
    for block in iter_prepared_blocks(matrix, spec.normalize, "vectors", _ADD_BLOCK_ROWS):
        index.add(block)
    return FaissSearcher(index, spec, resources)


def read_faiss_searcher(path: Path, spec: IndexSpec, *, on_gpu: bool, shape: tuple[int, int]) -> FaissSearcher:
    """A FAISS index written by :meth:`FaissSearcher.write`, with ``spec``'s search parameters; it
    must hold ``shape`` = (rows, dim) as its sidecar says."""
    faiss = _faiss()
    index = faiss.read_index(str(path))
    if (index.ntotal, index.d) != tuple(shape):
        raise ValueError(f"it holds {index.ntotal}x{index.d} vectors, its sidecar says {shape[0]}x{shape[1]}")
    _apply_search_params(faiss, index, spec)
    if not on_gpu:
        return FaissSearcher(index, spec)
    gpu_index, resources = _to_gpu(faiss, index)
    return FaissSearcher(gpu_index, spec, resources)


def flat_searcher_from_rows(gallery: np.ndarray, spec: IndexSpec, *, on_gpu: bool) -> FaissSearcher:
    """A flat FAISS index over already-prepared rows (an ``npy`` payload loaded into FAISS)."""
    faiss = _faiss()
    index = _empty_cpu_index(faiss, spec, gallery.shape[1])
    resources = None
    if on_gpu:
        index, resources = _to_gpu(faiss, index)
    index.add(gallery)
    return FaissSearcher(index, spec, resources)


def read_flat_rows(path: Path) -> np.ndarray:
    """The prepared rows stored in a flat FAISS index file (for the numpy and torch backends)."""
    index = _faiss().read_index(str(path))
    return index.reconstruct_n(0, index.ntotal)
