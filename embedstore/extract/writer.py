"""Assembling encoder outputs into whole chunks and writing them off the encoding thread.

``ChunkAssembler`` collects each array's rows batch by batch; when every row of a chunk has arrived
the chunk goes to the ``ChunkWriter`` queue, whose thread writes it (Zarr write, fsync, done-marker with
the chunk's bad rows). The encoder never waits on the disk unless the queue is full (bounded memory).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from embedstore.store.arrays import StoreArray


@dataclass
class _PendingChunk:
    data: np.ndarray
    filled: int = 0
    bad: dict[int, str] = field(default_factory=dict)


class ChunkAssembler:
    """Buffers of partially filled chunks of one array."""

    def __init__(self, array: StoreArray, on_complete: Callable[[StoreArray, int, np.ndarray, dict[int, str]], None]):
        self.array = array
        self.on_complete = on_complete
        self.pending: dict[int, _PendingChunk] = {}

    def add(self, chunk: int, start: int, stop: int, good_rows: np.ndarray, values: np.ndarray | None,
            bad: list[tuple[int, str]]) -> None:  # fmt: skip
        """Rows ``start:stop`` of chunk ``chunk``: ``values[i]`` belongs to row ``good_rows[i]``; the
        bad rows stay zero and are listed in the chunk's marker."""
        a, b = self.array.chunk_bounds(chunk)
        pending = self.pending.get(chunk)
        if pending is None:
            pending = self.pending[chunk] = _PendingChunk(np.zeros((b - a,) + self.array.shape[1:], self.array.dtype))
        if values is not None and len(good_rows):
            pending.data[good_rows - a] = values
        pending.bad.update((int(r), reason) for r, reason in bad)
        pending.filled += stop - start
        if pending.filled == b - a:
            del self.pending[chunk]
            self.on_complete(self.array, chunk, pending.data, pending.bad)


class ChunkWriter:
    """A background thread writing finished chunks in order of arrival."""

    def __init__(self, max_pending: int = 8):
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None
        self.seconds_writing = 0.0
        self.chunks_written = 0
        self._thread = threading.Thread(target=self._run, name="embedstore-writer", daemon=True)
        self._thread.start()

    def submit(self, array: StoreArray, chunk: int, data: np.ndarray, bad: dict[int, str]) -> None:
        self._raise_if_failed()
        self._queue.put((array, chunk, data, bad))

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._error is not None:
                continue
            array, chunk, data, bad = item
            start = time.perf_counter()
            try:
                array.write_chunk(chunk, data, extra={"bad": sorted([r, why] for r, why in bad.items())})
            except BaseException as exc:  # noqa: BLE001 - re-raised in the encoding thread
                self._error = exc
            self.seconds_writing += time.perf_counter() - start
            self.chunks_written += 1

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        """Wait until every submitted chunk is written; re-raise a write error."""
        self._queue.put(None)
        self._thread.join()
        self._raise_if_failed()
