"""Advisory locks that keep two writers off one dataset of a store.

Whatever writes a dataset's arrays holds ``STORE/.extract-<dataset folder>.lock`` (an exclusive
``flock``) for that dataset while it works: an extraction for every dataset of its plan, from before
it registers them until it ends; ``merge``, ``rm``, ``import``, ``prompts add`` and ``gc`` for the
datasets they touch. A second writer of a held dataset refuses at once, naming the holder (what it
runs, pid, host, start time); writers of different datasets run side by side, their catalog writes
serialised by DuckDB's lock (``embedstore.store.catalog``). The operating system drops a lock when
its process ends, also by ``kill -9``, so a crashed holder never blocks its own restart (its lock
file stays behind, harmless, until the next holder or ``gc``); a finished one removes its lock file.
Under torchrun rank 0 holds the locks for every rank.
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

LOCK_PREFIX, LOCK_SUFFIX = ".extract-", ".lock"


def lock_path(store_path: Path, dataset: str) -> Path:
    return folder_lock_path(store_path, path_component(dataset))


def folder_lock_path(store_path: Path, folder: str) -> Path:
    """The lock of the dataset whose arrays live in folder ``folder`` of the arrays root."""
    return Path(store_path) / f"{LOCK_PREFIX}{folder}{LOCK_SUFFIX}"


@contextlib.contextmanager
def dataset_locks(store_path: Path, datasets: Sequence[str], *, doing: str) -> Iterator[None]:
    """Hold the lock of each dataset (taken in name order) for the block; ``doing`` (e.g.
    ``"embedstore extract"``) is shown to whoever is refused. StoreError naming the holder when
    another process holds one."""
    with contextlib.ExitStack() as held:
        for dataset in sorted(set(datasets)):
            held.enter_context(_locked(lock_path(store_path, dataset), f"dataset {dataset}", store_path, doing))
        yield


@contextlib.contextmanager
def folder_lock(store_path: Path, folder: str, *, doing: str) -> Iterator[None]:
    """The lock of the dataset stored in array folder ``folder`` (for ``gc``, which knows folders,
    not dataset names), as `dataset_locks`."""
    with _locked(folder_lock_path(store_path, folder), f"array folder {folder}", store_path, doing):
        yield


def lock_holder(path: Path) -> str | None:
    """Who holds the lock at ``path``, or None when no process does (or there is no file). Takes and
    drops the lock when it is free, so a writer starting at that instant may be refused once."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return _holder(fd)
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


@contextlib.contextmanager
def _locked(path: Path, what: str, store_path: Path, doing: str) -> Iterator[None]:
    fd = _open_locked(path, what, store_path)
    try:
        stamp = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": _dt.datetime.now().isoformat(" ", "seconds"),
            "doing": doing,
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(stamp).encode(), 0)
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # removed while still held: see _open_locked
        os.close(fd)  # closing the file drops the lock


def _open_locked(path: Path, what: str, store_path: Path) -> int:
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
                f"{what} of store {store_path} is being written by {holder}; wait for it to finish "
                f"(an interrupted extraction resumes its work, it does not redo it), or work on another dataset"
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
        doing = f"{stamp['doing']}, " if stamp.get("doing") else ""
        return f"process {stamp['pid']} on {stamp['host']} ({doing}started {stamp['started']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"
