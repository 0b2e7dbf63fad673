"""The GPU path's decoding thread (`embedstore.extract.reader.prefetched`): order kept, at most
`depth` batches ahead, errors raised in the consumer, and an early stop ends the thread. Run on the
CPU; the CUDA stream and event hand-over's order is checked with torch.cuda's stream API replaced
by a recorder (the real thing runs on a GPU in benchmarks/extract.py)."""

from __future__ import annotations

import contextlib
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


class _RecordingCuda:
    """Stands in for ``torch.cuda`` in `prefetched`: records the stream and event calls (validating
    device arguments with torch's own parser, as the real calls do) so that the CUDA hand-over's
    order can be checked on a CPU."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        recorder = self

        class Stream:
            def __init__(self, device=None) -> None:
                torch.cuda._utils._get_device_index(device, optional=True)
                self.name = "side"
                recorder.calls.append(("Stream", threading.current_thread().name))

            def wait_event(self, event) -> None:
                recorder.calls.append(("wait_event", self.name, event.batch, threading.current_thread().name))

        class Event:
            def record(self, stream) -> None:
                self.batch = recorder.produced[-1]
                recorder.calls.append(("record", stream.name, self.batch, threading.current_thread().name))

        self.Stream, self.Event = Stream, Event
        self.current = Stream()
        self.current.name = "current"
        self.calls.clear()
        self.produced: list[int] = []

    def set_device(self, device) -> None:
        self.calls.append(("set_device", torch.cuda._utils._get_device_index(device), threading.current_thread().name))

    def current_device(self) -> int:
        return 0

    def current_stream(self, device=None):
        torch.cuda._utils._get_device_index(device, optional=True)
        return self.current

    def stream(self, stream):
        return contextlib.nullcontext()


@pytest.mark.parametrize(("device", "index"), [(torch.device("cuda", 1), 1), (torch.device("cuda"), 0)])
def test_on_cuda_each_batch_is_handed_over_with_an_event_the_consumer_stream_waits_on(monkeypatch, device, index):
    fake = _RecordingCuda()
    monkeypatch.setattr(torch, "cuda", _CudaModule(fake))
    produced = fake.produced
    seen = []
    for batch in prefetched(_batches(3, produced), device):
        fake.calls.append(("yield", batch.task.start))
        seen.append(batch.task.start)
    assert seen == [0, 1, 2]
    decode = "embedstore-decode"
    assert fake.calls[0] == ("Stream", "MainThread")
    assert fake.calls[1] == ("set_device", index, decode)  # by index, in the decoding thread, first
    for i in range(3):  # recorded on the side stream after the batch was made, waited on before it is used
        record = fake.calls.index(("record", "side", i, decode))
        wait = fake.calls.index(("wait_event", "current", i, "MainThread"))
        assert record < wait < fake.calls.index(("yield", i))


class _CudaModule:
    """``torch.cuda`` with the stream/event API replaced by a recorder and the rest left as it is."""

    def __init__(self, fake: _RecordingCuda) -> None:
        self._fake = fake

    def __getattr__(self, name: str):
        if name in ("Stream", "Event", "set_device", "current_device", "current_stream", "stream"):
            return getattr(self._fake, name)
        return getattr(_REAL_CUDA, name)


_REAL_CUDA = torch.cuda


def _fake_cuda_events(monkeypatch, record, synchronize) -> None:
    """torch.cuda with an event API that calls ``record(stream)`` and ``synchronize()``; the current
    stream of a device is the string "stream of <device>"."""

    class Event:
        def record(self, stream) -> None:
            record(stream)

        def synchronize(self) -> None:
            synchronize()

    class Cuda:
        def __getattr__(self, name):
            return getattr(_REAL_CUDA, name)

        @staticmethod
        def current_stream(device):
            return f"stream of {device}"

    Cuda.Event = Event
    monkeypatch.setattr(torch, "cuda", Cuda())


def _bare_job(rows_encoded: int = 0):
    """A `runner._ModelJob` with only its timing counters, as `_EncodedBatch` uses them."""
    from embedstore.extract import runner

    job = runner._ModelJob.__new__(runner._ModelJob)
    job.encode_seconds, job.rows_encoded, job.rows_timed, job.warmup = 0.0, rows_encoded, 0, None
    return job


def test_encoded_outputs_on_cuda_are_read_only_after_their_copy_event(monkeypatch):
    """`runner._EncodedBatch`: the host copies of a GPU batch are read only once the event recorded
    after them has completed (here torch.cuda's event API is a recorder; the tensors are CPU ones)."""
    from embedstore.extract import runner

    calls: list[str] = []
    _fake_cuda_events(monkeypatch, lambda stream: calls.append(f"record on {stream}"),
                      lambda: calls.append("synchronize"))  # fmt: skip
    job = _bare_job(rows_encoded=2)
    image, logits = torch.ones(2, 4, dtype=torch.float16), torch.zeros(2, 3)
    encoded = runner._EncodedBatch(job, image, logits, torch.device("cuda", 1))
    assert calls == ["record on stream of cuda:1"]
    host_image, host_logits = encoded.to_host()
    assert calls == ["record on stream of cuda:1", "synchronize"]
    assert host_image.dtype == np.float16 and host_logits.shape == (2, 3)


def test_a_gpu_models_images_per_s_counts_rows_once_their_compute_was_waited_for(monkeypatch):
    """`runner._ModelJob.images_per_s` on a GPU: a batch's compute shows in the wait for its copy, so its
    rows count from then on; the first batch (lazy initialisation) is left out, the second is not."""
    import time

    from embedstore.extract import runner

    waits = iter([0.5, 0.1, 0.1, 0.1])  # the first batch's wait holds its warm-up
    _fake_cuda_events(monkeypatch, lambda stream: None, lambda: time.sleep(next(waits)))
    job = _bare_job()

    def launch() -> runner._EncodedBatch:  # what `_ModelJob.encode` does on a GPU: launch, time later
        job.rows_encoded += 4
        return runner._EncodedBatch(job, torch.ones(4, 2), None, torch.device("cuda", 0))

    first, second = launch(), launch()  # one batch in flight, as in the pass
    first.to_host()
    third = launch()
    second.to_host()
    fourth = launch()
    third.to_host()
    fourth.to_host()
    assert job.rows_timed == job.rows_encoded == 16
    assert job.images_per_s == pytest.approx(12 / 0.3, rel=0.15)  # 3 batches of 4 after the warm-up, 0.1 s each
