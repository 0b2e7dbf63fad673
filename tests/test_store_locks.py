"""Dataset locks (`embedstore.store.locks`): one holder per dataset, refusals name it, a finished
holder leaves no lock file, and a stale file (left by a killed run) blocks nobody."""

from __future__ import annotations

import os

import numpy as np
import pytest

from embedstore.errors import StoreError
from embedstore.store import locks as lock
from embedstore.store.locks import dataset_locks, lock_path


def test_a_held_dataset_is_refused_naming_the_holder_and_its_file_goes_when_released(tmp_path):
    with dataset_locks(tmp_path, ["b", "a"], doing="embedstore extract"):
        assert lock_path(tmp_path, "a").is_file() and lock_path(tmp_path, "b").is_file()
        with pytest.raises(
            StoreError,
            match=f"dataset a of store {tmp_path} is being written by process {os.getpid()} on .* \\(embedstore extract, started ",
        ):
            with dataset_locks(tmp_path, ["a"], doing="embedstore extract"):
                pass
        with dataset_locks(tmp_path, ["c"], doing="embedstore extract"):  # other datasets are free
            pass
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_stale_lock_file_blocks_nobody(tmp_path):
    lock_path(tmp_path, "a").write_text('{"pid": 1, "host": "gone", "started": "then"}')
    with dataset_locks(tmp_path, ["a"], doing="embedstore extract"):
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
    with dataset_locks(tmp_path, ["a"], doing="embedstore extract"):
        assert len(opened) == 2 and path.is_file()
        assert os.fstat(opened[1]).st_ino == os.stat(path).st_ino
    assert not path.exists()


def test_import_and_prompts_add_take_the_dataset_lock(tiny_store, tmp_path):
    """Every writer of a dataset's arrays holds its lock: with an extraction holding it, an import and a
    prompt addition are refused at once, naming the holder, and nothing is written."""
    from embedstore.evaluate.prompts import add_templates
    from embedstore.store.exchange import import_array

    keys = tiny_store.sample_table("shapes")["key"]
    np.save(tmp_path / "emb.npy", np.ones((len(keys), 4), dtype=np.float32))
    (tmp_path / "keys.txt").write_text("\n".join(keys) + "\n")
    arrays_before = len(tiny_store.list_arrays())
    with dataset_locks(tiny_store.path, ["shapes"], doing="embedstore extract"):
        with pytest.raises(StoreError, match="dataset shapes of store .* is being written by .*embedstore extract"):
            import_array(tiny_store, "shapes", "import:ones", "image_emb", tmp_path / "emb.npy",
                         keys_file=tmp_path / "keys.txt")  # fmt: skip
        with pytest.raises(StoreError, match="dataset shapes of store .* is being written by"):
            add_templates(tiny_store, "shapes", "extra", ["a photo of a {c}, again."])
    assert len(tiny_store.list_arrays()) == arrays_before and "extra" not in tiny_store.prompt_sets("shapes")
    assert not tiny_store.query("SELECT model_id FROM models WHERE model_id = 'import:ones'")
