"""Exact (flat) search on a CUDA GPU with torch: one matrix product and ``torch.topk`` per block of
queries. Used for exact search when torch sees a GPU but faiss does not (e.g. faiss-cpu installed).

The gallery lives on the GPU in float32; products run in full float32 unless the caller enabled
TF32 globally. Ties at the k-th place follow ``torch.topk`` (unspecified).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from embedstore.index.spec import IndexSpec
from embedstore.index.vectors import rows_within_budget

SCORE_BLOCK_BYTES = 1024 * 2**20
_MAX_BATCH_ROWS = 65536


class TorchFlatSearcher:
    """Exhaustive search over prepared float32 gallery rows held on a torch device (``cuda``; the
    tests run the same code on ``cpu``)."""

    backend = "torch-cuda"
    payload = "npy"

    def __init__(self, gallery: np.ndarray, metric: str, device: str = "cuda") -> None:
        import torch

        self._torch = torch
        self._device = torch.device(device)
        self._metric = metric
        self._gallery = torch.from_numpy(gallery).to(self._device)
        self._sq_norms = (self._gallery * self._gallery).sum(dim=1) if metric == "l2" else None

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        torch = self._torch
        with torch.no_grad():
            q = torch.from_numpy(queries).to(self._device)
            scores = q @ self._gallery.T
            if self._metric == "l2":
                scores = 2 * scores - (q * q).sum(dim=1, keepdim=True) - self._sq_norms[None, :]
            values, ids = torch.topk(scores, k, dim=1, largest=True, sorted=True)
        return values.cpu().numpy().astype(np.float32, copy=False), ids.cpu().numpy().astype(np.int64)

    def default_batch_rows(self) -> int:
        return rows_within_budget(4 * self._gallery.shape[0], SCORE_BLOCK_BYTES, _MAX_BATCH_ROWS)

    def apply_search_params(self, spec: IndexSpec) -> None:
        """Exact search has no search-time parameters."""

    def nbytes(self) -> int:
        return int(self._gallery.numel() * self._gallery.element_size())

    def gallery_vectors(self) -> np.ndarray:
        return self._gallery.cpu().numpy()

    def write(self, path: Path) -> None:
        with open(path, "wb") as file:
            np.save(file, self.gallery_vectors(), allow_pickle=False)
