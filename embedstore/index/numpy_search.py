"""Exact (flat) search in numpy: a BLAS matrix product per block of queries, then ``argpartition``.

Used when faiss is not installed, or when asked for by name (``backend="numpy"``). Among scores tied
at the k-th place, which ids are returned is unspecified (as with FAISS and ``torch.topk``); the k
returned are ordered by descending score, then ascending id.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from embedstore.index.spec import IndexSpec
from embedstore.index.vectors import rows_within_budget

# Bytes of the [queries, gallery] float32 score block computed at once.
SCORE_BLOCK_BYTES = 256 * 2**20
_MAX_BATCH_ROWS = 65536


def similarity_block(
    queries: np.ndarray, gallery: np.ndarray, metric: str, gallery_sq_norms: np.ndarray | None = None
) -> np.ndarray:
    """Scores ``[len(queries), len(gallery)]``, larger = closer: ``q . g`` for "ip",
    ``-||q - g||^2 = 2 q.g - ||q||^2 - ||g||^2`` for "l2"."""
    scores = queries @ gallery.T
    if metric == "l2":
        if gallery_sq_norms is None:
            gallery_sq_norms = np.einsum("ij,ij->i", gallery, gallery)
        scores *= 2
        scores -= np.einsum("ij,ij->i", queries, queries)[:, None]
        scores -= gallery_sq_norms[None, :]
    return scores


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest entries of each row and their column ids, by descending score then id."""
    if k < scores.shape[1]:
        ids = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        ids = np.broadcast_to(np.arange(scores.shape[1]), scores.shape).copy()
    ids.sort(axis=1)
    values = np.take_along_axis(scores, ids, axis=1)
    order = np.argsort(-values, axis=1, kind="stable")
    return np.take_along_axis(values, order, axis=1), np.take_along_axis(ids, order, axis=1)


class NumpyFlatSearcher:
    """Exhaustive search over prepared float32 gallery rows, held in host memory."""

    backend = "numpy"
    payload = "npy"

    def __init__(self, gallery: np.ndarray, metric: str) -> None:
        self._gallery = gallery
        self._metric = metric
        self._sq_norms = np.einsum("ij,ij->i", gallery, gallery) if metric == "l2" else None

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores = similarity_block(queries, self._gallery, self._metric, self._sq_norms)
        values, ids = top_k(scores, k)
        return values.astype(np.float32, copy=False), ids.astype(np.int64, copy=False)

    def default_batch_rows(self) -> int:
        return rows_within_budget(4 * self._gallery.shape[0], SCORE_BLOCK_BYTES, _MAX_BATCH_ROWS)

    def apply_search_params(self, spec: IndexSpec) -> None:
        """Exact search has no search-time parameters."""

    def nbytes(self) -> int:
        return int(self._gallery.nbytes)

    def gallery_vectors(self) -> np.ndarray:
        return self._gallery

    def write(self, path: Path) -> None:
        with open(path, "wb") as file:
            np.save(file, self._gallery, allow_pickle=False)


def read_npy_payload(path: Path) -> np.ndarray:
    """The prepared gallery rows a ``npy`` payload holds."""
    with open(path, "rb") as file:
        return np.load(file, allow_pickle=False)
