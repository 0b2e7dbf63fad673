"""`embedstore gc` (embedstore.sweep): leftovers no catalog row points to are found, listed by a dry
run, removed by a real one, and nothing registered or being written is touched."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from store_support import put_array

from embedstore.errors import StoreError
from embedstore.evaluate.indexes import build_saved_index, list_saved_indexes
from embedstore.index.spec import IndexSpec
from embedstore.sources import open_dataset
from embedstore.store import Store
from embedstore.store.locks import dataset_locks, folder_lock_path
from embedstore.sweep import sweep_store
from embedstore_cli.main import cli


@pytest.fixture
def littered(store: Store) -> Store:
    """A store with two registered arrays and one leftover of each kind."""
    store.register_dataset(open_dataset("shapes", "synthetic:shapes?n=8&seed=0"))
    rng = np.random.default_rng(0)
    for model in ("m1", "m2"):
        store.register_model({"model_id": model, "kind": "clip", "fingerprint": model})
        put_array(store, "shapes", model, "image_emb", rng.normal(size=(8, 4)).astype(np.float32))
    arrays = store.arrays
    arrays.copy_tree_from(arrays, "shapes/m1/image_emb", "shapes/m1/image_emb~0badf00d")  # a cut-short rewrite
    arrays.copy_tree_from(arrays, "shapes/m1/image_emb", "gone/m9/image_emb")  # a killed merge's copy
    build_saved_index(store, "shapes", "m2", "image_emb", IndexSpec(kind="flat"), device="cpu")
    store.delete_arrays("shapes", "m2", "image_emb")  # leaves its model folder and its saved index
    folder_lock_path(store.path, "shapes").write_text('{"pid": 1, "host": "gone", "started": "then"}')
    for folder in ("", "shapes", "shapes/m1"):  # files a file browser leaves behind are not ours
        (store.path / "arrays.zarr" / folder / ".DS_Store").write_bytes(b"x")
    return store


def test_a_dry_run_lists_every_leftover_and_removes_nothing(littered):
    files_before = sorted(p for p in littered.path.rglob("*"))
    sweep = sweep_store(littered, dry_run=True)
    found = sorted((x.kind, x.path.removesuffix(".faiss").removesuffix(".npy")) for x in sweep.leftovers)
    assert found == [
        ("array", "gone/m9/image_emb"),
        ("array", "shapes/m1/image_emb~0badf00d"),
        ("empty folder", "gone"),
        ("empty folder", "gone/m9"),
        ("empty folder", "shapes/m2"),
        ("lock file", ".extract-shapes.lock"),
        ("saved index", "indexes/shapes/m2/image_emb.flat"),  # .faiss or .npy, as the backend saved it
    ]
    assert sweep.bytes > 8 * 4 * 4 and not sweep.skipped
    assert sorted(p for p in littered.path.rglob("*")) == files_before
    assert sweep.bytes == sweep_store(littered).bytes  # what a dry run adds up is what a real run frees


def test_gc_removes_the_leftovers_and_keeps_what_the_catalog_names(littered):
    kept = littered.read_array("shapes", "m1", "image_emb")
    sweep = sweep_store(littered)
    assert len(sweep.leftovers) == 7
    root = littered.path / "arrays.zarr"
    assert sorted(p.name for p in root.iterdir()) == [".DS_Store", "shapes", "zarr.json"]
    assert sorted(p.name for p in (root / "shapes").iterdir()) == [".DS_Store", "m1", "zarr.json"]
    assert sorted(p.name for p in (root / "shapes" / "m1").iterdir()) == [".DS_Store", "image_emb", "zarr.json"]
    assert list_saved_indexes(littered) == [] and not [p for p in (littered.path / "indexes").rglob("*") if p.is_file()]
    assert not list(littered.path.glob(".extract-*.lock"))
    np.testing.assert_array_equal(littered.read_array("shapes", "m1", "image_emb"), kept)
    assert sweep_store(littered).leftovers == []  # nothing left the second time


def test_a_dataset_being_written_is_skipped_naming_its_writer(littered):
    with dataset_locks(littered.path, ["shapes"], doing="embedstore extract"):
        for dry_run in (True, False):
            sweep = sweep_store(littered, dry_run=dry_run)
            assert "embedstore extract" in sweep.skipped["shapes"]
            assert {x.path for x in sweep.leftovers} == {"gone", "gone/m9", "gone/m9/image_emb"}
        assert (littered.path / "arrays.zarr" / "shapes" / "m1" / "image_emb~0badf00d").is_dir()


def test_gc_command_dry_run_then_json(littered):
    runner = CliRunner()
    dry = runner.invoke(cli, ["gc", "--store", str(littered.path), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "shapes/m1/image_emb~0badf00d" in dry.output and "would remove 7 leftover(s)" in dry.output
    done = runner.invoke(cli, ["gc", "--store", str(littered.path), "--json"])
    assert done.exit_code == 0, done.output
    report = json.loads(done.output)
    assert report["dry_run"] is False and len(report["leftovers"]) == 7 and report["skipped"] == {}
    again = runner.invoke(cli, ["gc", "--store", str(littered.path)])
    assert again.exit_code == 0 and "removed 0 leftover(s), 0.0 MiB" in again.output


def test_an_error_while_sweeping_is_raised_as_itself_and_releases_the_lock(littered, monkeypatch):
    def unreadable(path):
        raise StoreError(f"cannot read {path}")

    monkeypatch.setattr(littered.arrays, "tree_bytes", unreadable)
    with pytest.raises(StoreError, match="cannot read gone/m9/image_emb"):
        sweep_store(littered)
    with dataset_locks(littered.path, ["gone"], doing="embedstore extract"):  # released: taken again at once
        pass


def test_unfinished_index_writes_are_removed_once_their_writer_is_gone(littered):
    import os
    import time

    build_saved_index(littered, "shapes", "m1", "image_emb", IndexSpec(kind="flat"), device="cpu")
    folder = next(p.parent for p in (littered.path / "indexes").rglob("image_emb.flat.*.json") if "m1" in str(p))
    dead = folder / ".image_emb.ivf.faiss.99999999.tmp"  # a build killed while writing
    running = folder / f".image_emb.hnsw.faiss.{os.getpid()}.tmp"  # a build writing now
    old = folder / "image_emb.ivf.faiss"  # an index whose sidecar never came (stopped between the two)
    fresh = folder / "image_emb.hnsw.npy"  # a build about to write its sidecar
    for path in (dead, running, old, fresh):
        path.write_bytes(b"faiss")
    hours_ago = time.time() - 7200
    for path in (dead, running, old):
        os.utime(path, (hours_ago, hours_ago))
    young = folder / ".image_emb.flat.faiss.99999998.tmp"  # another host's writer, say: given time
    young.write_bytes(b"faiss")
    found = {x.path.rsplit("/", 1)[1] for x in sweep_store(littered).leftovers if x.kind == "unfinished index write"}
    assert found == {dead.name, old.name}
    assert not dead.exists() and not old.exists() and running.exists() and fresh.exists() and young.exists()
    assert [s.kind for s in list_saved_indexes(littered)] == ["flat"]  # the finished index stays
