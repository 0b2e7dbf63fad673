"""Advisory locks that keep two extractions off one dataset of a store.

An extraction holds ``STORE/.extract-<dataset>.lock`` (an exclusive ``flock``) for every dataset of
its plan, from before it registers them until it ends. A second extraction of any of those datasets
into the same store refuses at once, naming the holder (pid, host, start time); extractions of
different datasets into one store run side by side, their catalog writes serialised by DuckDB's
lock (``embedstore.store.catalog``). The operating system drops a lock when its process ends, also
by ``kill -9``, so a crashed extraction never blocks its own restart (its lock file stays behind,
harmless); a finished one removes its lock file. Under torchrun rank 0 holds the locks for every rank.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path

from embedstore.errors import StoreError
from embedstore.store.store import path_component


def lock_path(store_path: Path, dataset: str) -> Path:
    return Path(store_path) / f".extract-{path_component(dataset)}.lock"


@contextlib.contextmanager
def extraction_locks(store_path: Path, datasets: Sequence[str]) -> Iterator[None]:
    """Hold the extraction lock of each dataset (taken in name order) for the block; StoreError
    naming the holder when another process holds one."""
    with contextlib.ExitStack() as held:
        for dataset in sorted(set(datasets)):
            held.enter_context(_locked(lock_path(store_path, dataset), dataset, store_path))
        yield


@contextlib.contextmanager
def _locked(path: Path, dataset: str, store_path: Path) -> Iterator[None]:
    fd = _open_locked(path, dataset, store_path)
    try:
        stamp = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": _dt.datetime.now().isoformat(" ", "seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(stamp).encode(), 0)
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # removed while still held: see _open_locked
        os.close(fd)  # closing the file drops the lock


def _open_locked(path: Path, dataset: str, store_path: Path) -> int:
    """A descriptor of ``path`` holding its exclusive lock. The holder removes the file when it is
    done, so a process that opened it just before then may lock a file no longer at ``path``: the
    lock counts only when the locked file is still the one at ``path``, else it is opened again."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise StoreError(
                f"dataset {dataset} of store {store_path} is being extracted by {holder}; "
                f"wait for it to finish (its work is resumed, not redone), or extract another dataset"
            ) from None
        try:
            current = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            return fd
        os.close(fd)


def _holder(fd: int) -> str:
    """Who holds the lock, as its holder wrote it."""
    try:
        stamp = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"process {stamp['pid']} on {stamp['host']} (started {stamp['started']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"
