"""Finding and removing what no catalog row points to (``embedstore gc``).

A store is its catalog: an array folder, a saved index or a lock file that the catalog does not name
is never read, but it keeps its disk space. Such leftovers come from work that was cut short:

- ``array``: an array folder without an ``arrays`` row. A merge killed outright after copying
  (its catalog rows go in last), an extraction killed between creating an array and registering it,
  a ``prompts add`` killed between writing the new ``text_emb`` beside the old one and switching to
  it, or the old one after the switch when the deletion did not happen.
- ``empty folder``: a dataset or model folder of the arrays root holding no array (``rm`` leaves
  them; the next extraction makes them again).
- ``saved index``: an index saved under ``STORE/indexes`` whose array is no longer in the catalog
  (``embedstore index ls`` shows them as ``no array``), with its sidecar (their folders stay).
- ``lock file``: a dataset lock file (`embedstore.store.locks`) that no process holds, left by a
  holder that was killed.
- ``unfinished index write``: under ``STORE/indexes``, the temporary file of an ``index build`` or
  merge whose process is gone, or an index file without its sidecar (never listed nor loaded), once
  older than `UNFINISHED_INDEX_AGE` seconds (a running build writes the sidecar right after the index).

Every dataset folder is swept while holding that dataset's lock, and the catalog is read again
under it, so nothing an extraction, merge, import, ``rm`` or ``prompts add`` is writing is touched:
a folder whose lock another process holds is skipped and reported. A dry run takes no lock, but to
see whether a lock file is held it takes and drops a free one, so a writer starting at that instant
may be refused once. Files in the arrays tree (anything not a folder) are left alone.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from embedstore.errors import StoreError
from embedstore.evaluate.indexes import INDEXES_DIR, NO_ARRAY, list_saved_indexes
from embedstore.index.sidecar import PAYLOADS, sidecar_path
from embedstore.store import Store
from embedstore.store.locks import LOCK_PREFIX, LOCK_SUFFIX, folder_lock, folder_lock_path, lock_holder


@dataclass(frozen=True)
class Leftover:
    kind: str  # "array" | "empty folder" | "saved index" | "lock file" | "unfinished index write"
    path: str  # relative to the arrays root for arrays and folders, to the store for the others
    bytes: int


@dataclass
class Sweep:
    """What ``gc`` found (and removed, unless ``dry_run``), and the dataset folders it left alone."""

    dry_run: bool
    leftovers: list[Leftover] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # dataset folder -> why

    @property
    def bytes(self) -> int:
        return sum(leftover.bytes for leftover in self.leftovers)


def sweep_store(store: Store, *, dry_run: bool = False) -> Sweep:
    """Find every leftover of ``store`` (see the module docstring) and remove it unless ``dry_run``."""
    if not dry_run and store.readonly:
        raise StoreError(f"store at {store.path} was opened read-only; gc needs to write")
    sweep = Sweep(dry_run)
    for folder in _dataset_folders(store):
        with _folder_held(store, folder, sweep) as held:
            if held:
                _sweep_folder(store, folder, sweep)
    return sweep


def _dataset_folders(store: Store) -> list[str]:
    """Dataset folder names seen anywhere: the arrays root, the index folder, the lock files."""
    folders = set(_children(store, ""))
    indexes = store.path / INDEXES_DIR
    if indexes.is_dir():
        folders |= {p.name for p in indexes.iterdir() if p.is_dir()}
    for lock in store.path.glob(f"{LOCK_PREFIX}*{LOCK_SUFFIX}"):
        folders.add(lock.name.removeprefix(LOCK_PREFIX).removesuffix(LOCK_SUFFIX))
    return sorted(folders)


@contextlib.contextmanager
def _folder_held(store: Store, folder: str, sweep: Sweep) -> Iterator[bool]:
    """Hold the folder's dataset lock for the block (a dry run only checks that nobody holds it);
    yields False, recording why, when another process holds it. A lock file nobody held is a
    leftover: taking and releasing the lock removes it."""
    lock = folder_lock_path(store.path, folder)
    try:
        stale: Leftover | None = Leftover("lock file", lock.name, lock.stat().st_size)
    except FileNotFoundError:
        stale = None
    held = contextlib.ExitStack()
    if sweep.dry_run:
        holder = lock_holder(lock)
        if holder is not None:
            sweep.skipped[folder] = f"being written by {holder}"
            yield False
            return
    else:
        try:
            held.enter_context(folder_lock(store.path, folder, doing="embedstore gc"))
        except StoreError as refused:  # names the writer holding it
            sweep.skipped[folder] = str(refused)
            yield False
            return
    with held:  # an error while sweeping propagates as itself, the lock released
        sweep.leftovers += [stale] if stale else []
        yield True


def _sweep_folder(store: Store, folder: str, sweep: Sweep) -> None:
    registered = {info.path for info in store.list_arrays() if info.path.startswith(f"{folder}/")}
    kept_models = 0
    for model in _children(store, folder):
        kept_arrays = 0
        for name in _children(store, f"{folder}/{model}"):
            path = f"{folder}/{model}/{name}"
            if path in registered:
                kept_arrays += 1
            else:
                _remove_tree(store, sweep, "array", path)
        if kept_arrays:
            kept_models += 1
        else:
            _remove_tree(store, sweep, "empty folder", f"{folder}/{model}")
    if not kept_models and folder in store.arrays.entries():
        _remove_tree(store, sweep, "empty folder", folder)
    _sweep_indexes(store, folder, sweep)


def _children(store: Store, prefix: str) -> list[str]:
    """The folders under ``prefix`` of the arrays root (entries with entries of their own); files,
    such as the group metadata or a stray ``.DS_Store``, are not ours to judge and are left alone."""
    joined = f"{prefix}/" if prefix else ""
    return sorted(name for name in store.arrays.list_dir(prefix) if store.arrays.list_dir(joined + name))


def _remove_tree(store: Store, sweep: Sweep, kind: str, path: str) -> None:
    """Record (and unless a dry run, delete) ``path``; its bytes leave out the leftovers under it
    already recorded, so that a dry run adds up to what a real run frees."""
    counted = sum(x.bytes for x in sweep.leftovers if x.path.startswith(f"{path}/"))
    sweep.leftovers.append(Leftover(kind, path, store.arrays.tree_bytes(path) - (counted if sweep.dry_run else 0)))
    if not sweep.dry_run:
        store.arrays.delete_prefix(path)


UNFINISHED_INDEX_AGE = 600.0
"""Seconds after which an index file without a sidecar counts as left by a build that was stopped."""
_TEMPORARY = re.compile(r"^\..+\.(\d+)\.tmp$")  # `write_atomically`: .NAME.PID.tmp


def _unfinished_index_write(path: Path) -> bool:
    """A temporary file whose writer (the pid in its name) is not running on this host, or an index
    file (``.faiss`` / ``.npy``) without its sidecar; either older than `UNFINISHED_INDEX_AGE` (a
    writer on another host sharing the store, or a pid reused, is given that long)."""
    if time.time() - path.stat().st_mtime <= UNFINISHED_INDEX_AGE:
        return False
    temporary = _TEMPORARY.match(path.name)
    if temporary:
        return not _process_alive(int(temporary.group(1)))
    return path.suffix.lstrip(".") in PAYLOADS and not sidecar_path(path).is_file()


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _sweep_indexes(store: Store, folder: str, sweep: Sweep) -> None:
    base = store.path / INDEXES_DIR / folder
    if not base.is_dir():
        return
    for saved in list_saved_indexes(store):
        if saved.status != NO_ARRAY or saved.path.parent.parent != base:
            continue
        files = [f for f in (saved.path, sidecar_path(saved.path)) if f.is_file()]
        size = sum(f.stat().st_size for f in files)
        sweep.leftovers.append(Leftover("saved index", str(saved.path.relative_to(store.path)), size))
        if not sweep.dry_run:
            for f in files:
                f.unlink()
    for path in sorted(base.rglob("*")):
        if path.is_file() and _unfinished_index_write(path):
            sweep.leftovers.append(Leftover("unfinished index write", str(path.relative_to(store.path)),
                                            path.stat().st_size))  # fmt: skip
            if not sweep.dry_run:
                path.unlink(missing_ok=True)
    # Empty index folders stay: `index build` takes no dataset lock and may be about to write there.
