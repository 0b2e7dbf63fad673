"""Extraction locks (`embedstore.extract.lock`): one holder per dataset, refusals name it, a finished
holder leaves no lock file, and a stale file (left by a killed run) blocks nobody."""

from __future__ import annotations

import os

import pytest

from embedstore.errors import StoreError
from embedstore.extract import lock
from embedstore.extract.lock import extraction_locks, lock_path


def test_a_held_dataset_is_refused_naming_the_holder_and_its_file_goes_when_released(tmp_path):
    with extraction_locks(tmp_path, ["b", "a"]):
        assert lock_path(tmp_path, "a").is_file() and lock_path(tmp_path, "b").is_file()
        with pytest.raises(StoreError, match=f"dataset a of store {tmp_path} is being extracted by process {os.getpid()}"):
            with extraction_locks(tmp_path, ["a"]):
                pass
        with extraction_locks(tmp_path, ["c"]):  # other datasets are free
            pass
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_stale_lock_file_blocks_nobody(tmp_path):
    lock_path(tmp_path, "a").write_text('{"pid": 1, "host": "gone", "started": "then"}')
    with extraction_locks(tmp_path, ["a"]):
        pass
    assert not lock_path(tmp_path, "a").exists()


def test_a_lock_taken_on_a_file_its_holder_just_removed_is_taken_again(tmp_path, monkeypatch):
    """The race the re-check closes: this process opens the lock file, its holder then removes it and
    lets go, so the lock this process gets is on a file no longer at the path; it opens the path again."""
    path = lock_path(tmp_path, "a")
    real_open = os.open
    opened: list[int] = []

    def open_then_lose_the_race(file, flags, mode=0o777):
        fd = real_open(file, flags, mode)
        if not opened:
            os.unlink(file)  # the old holder removes the file after this process opened it
        opened.append(fd)
        return fd

    monkeypatch.setattr(lock.os, "open", open_then_lose_the_race)
    with extraction_locks(tmp_path, ["a"]):
        assert len(opened) == 2 and path.is_file()
        assert os.fstat(opened[1]).st_ino == os.stat(path).st_ino
    assert not path.exists()
