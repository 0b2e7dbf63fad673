"""Checking row-vector matrices and turning them into the float32 (optionally L2-normalised) rows
that every search backend consumes, a block of rows at a time so memory stays bounded."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from embedstore.errors import AnalysisError


def as_row_matrix(vectors: object, name: str) -> np.ndarray:
    """``vectors`` as a non-empty 2-D numeric array ``[rows, dim]`` (not copied, not cast)."""
    matrix = np.asarray(vectors)
    if matrix.ndim != 2:
        raise AnalysisError(f"{name} must be a 2-D array [rows, dim], got shape {matrix.shape}")
    if matrix.shape[0] == 0 or matrix.shape[1] == 0:
        raise AnalysisError(f"{name} is empty (shape {matrix.shape})")
    if not (np.issubdtype(matrix.dtype, np.floating) or np.issubdtype(matrix.dtype, np.integer)):
        raise AnalysisError(f"{name} must hold numbers, got dtype {matrix.dtype}")
    return matrix


def prepared_rows(
    matrix: np.ndarray, normalize: bool, name: str, start: int = 0, stop: int | None = None
) -> np.ndarray:
    """Rows ``start:stop`` of ``matrix`` as a new C-contiguous float32 array, divided by their L2 norm
    when ``normalize``. A non-finite row, or a zero row to normalise, raises naming its row index."""
    block = np.array(matrix[start:stop], dtype=np.float32, order="C", copy=True)
    finite = np.isfinite(block).all(axis=1)
    if not finite.all():
        row = start + int(np.flatnonzero(~finite)[0])
        raise AnalysisError(f"{name} row {row} is not finite (NaN or inf)")
    if normalize:
        norms = np.linalg.norm(block, axis=1)
        if not norms.all():
            row = start + int(np.flatnonzero(norms == 0)[0])
            raise AnalysisError(f"{name} row {row} has zero norm and cannot be L2-normalised")
        block /= norms[:, None]
    return block


def iter_prepared_blocks(matrix: np.ndarray, normalize: bool, name: str, rows_per_block: int) -> Iterator[np.ndarray]:
    """:func:`prepared_rows` over consecutive blocks of ``rows_per_block`` rows."""
    for start in range(0, matrix.shape[0], rows_per_block):
        yield prepared_rows(matrix, normalize, name, start, start + rows_per_block)


def rows_within_budget(row_bytes: int, budget_bytes: int, limit: int) -> int:
    """How many rows of ``row_bytes`` fit in ``budget_bytes``: at least 1, at most ``limit``."""
    return max(1, min(limit, budget_bytes // max(1, row_bytes)))
