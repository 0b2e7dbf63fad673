"""The GPU path's decoding thread (`embedstore.extract.reader.prefetched`): order kept, at most
`depth` batches ahead, errors raised in the consumer, and an early stop ends the thread. Run on the
CPU (the CUDA stream and event hand-over is exercised on a GPU by benchmarks/extract.py)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from embedstore.extract.reader import BatchTask, PreparedBatch, prefetched

CPU = torch.device("cpu")


def _batches(n: int, produced: list[int], fail_at: int | None = None):
    for i in range(n):
        if i == fail_at:
            raise ValueError(f"batch {i} could not be decoded")
        produced.append(i)
        yield PreparedBatch(BatchTask(0, i, i + 1), np.array([i]), {"config": torch.full((1, 3), float(i))})


def _decode_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "embedstore-decode"]


def test_batches_arrive_in_order_and_whole():
    produced: list[int] = []
    out = list(prefetched(_batches(9, produced), CPU))
    assert [b.task.start for b in out] == list(range(9)) and produced == list(range(9))
    assert [float(b.pixels["config"][0, 0]) for b in out] == [float(i) for i in range(9)]
    assert not _decode_threads()


def test_the_thread_runs_at_most_depth_batches_ahead():
    produced: list[int] = []
    stream = prefetched(_batches(20, produced), CPU, depth=2)
    next(stream)
    time.sleep(0.2)
    # one handed over, two waiting in the queue, one made and waiting for room
    assert len(produced) <= 4
    stream.close()


def test_an_error_in_the_thread_is_raised_in_the_consumer_after_the_good_batches():
    produced: list[int] = []
    seen = []
    with pytest.raises(ValueError, match="batch 3 could not be decoded"):
        for batch in prefetched(_batches(6, produced, fail_at=3), CPU):
            seen.append(batch.task.start)
    assert seen == [0, 1, 2]
    assert not _decode_threads()


def test_stopping_early_ends_the_thread():
    produced: list[int] = []
    stream = prefetched(_batches(1000, produced), CPU)
    assert next(stream).task.start == 0
    stream.close()
    assert not _decode_threads() and len(produced) < 10
