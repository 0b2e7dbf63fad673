"""Remote and large: arrays on an fsspec URL through the extractor, dask views, and an analysis over an
array bigger than the memory it is allowed.

- ``memory://`` arrays (any fsspec URL goes the same way through ``zarr.storage.FsspecStore``):
  extraction, `embedstore ls`, reads, a failed write and its resume all end with the bytes a local
  store gets. ``file://`` URLs are local folders.
- ``Store.create`` never deletes what an arrays location already holds: it refuses a non-empty one.
- ``Store.dask_array``: a lazy dask array with one block per chunk (dask is optional: without it the
  call fails with the package to install).
- Out of core: a child process whose address space is capped (``RLIMIT_AS``) 64 MiB above what it
  uses after its imports cannot read a 128 MiB array whole, and still evaluates zero-shot accuracy
  over it chunk by chunk, to the count the parent computes.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
import uuid

import numpy as np
import pytest
import zarr.storage
from click.testing import CliRunner
from reliability_support import QUIET, TINY_CLIP, TINY_TIMM

from embedstore.errors import StoreError
from embedstore.extract.plan import plan_from_args
from embedstore.extract.runner import run_extraction
from embedstore.store import Store
from embedstore_cli.store_commands import ls_command

DATASET = "shapes=synthetic:shapes?n=20&seed=9&size=32"
SETTINGS = {"workers": 0, "chunk_rows": 4, "batch_size": 4}


def _plan():
    return plan_from_args([TINY_CLIP, TINY_TIMM], [DATASET], **SETTINGS)


def _arrays(store: Store) -> dict:
    return {(a.dataset, a.model, a.name): store.read_array(a.dataset, a.model, a.name) for a in store.list_arrays()}


@pytest.fixture(scope="module")
def local(tmp_path_factory) -> dict:
    store = Store.create(tmp_path_factory.mktemp("local") / "store")
    run_extraction(store, _plan(), **QUIET)
    return _arrays(store)


def test_memory_url_arrays_extract_resume_and_read_like_a_local_store(tmp_path, monkeypatch, local):
    url = f"memory://embedstore-{uuid.uuid4().hex}/arrays"
    store = Store.create(tmp_path / "store", arrays_url=url)
    assert store.arrays.local_root is None, "memory:// must go through fsspec"

    original = zarr.storage.FsspecStore.set
    writes = {"n": 0}

    async def full_after_five(self, key, value):
        if "/c/" in key:
            writes["n"] += 1
            if writes["n"] > 5:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), key)
        return await original(self, key, value)

    monkeypatch.setattr(zarr.storage.FsspecStore, "set", full_after_five)
    with pytest.raises(StoreError, match=rf"cannot write chunk \d+ of shapes/.* in {url}: No space left on device"):
        run_extraction(store, _plan(), **QUIET)
    monkeypatch.setattr(zarr.storage.FsspecStore, "set", original)

    partial = Store.open(store.path)
    progress = {(a.model, a.name): partial.array_progress(a) for a in partial.list_arrays()}
    assert 0 < sum(done for done, _ in progress.values()) < sum(a.rows_total for a in partial.list_arrays())
    for info in partial.list_arrays():
        array = partial.array(info.dataset, info.model, info.name)
        assert all(array.verify_chunk(c) for c in array.done_chunks())

    run_extraction(Store.open(store.path, readonly=False), _plan(), **QUIET)
    reopened = Store.open(store.path)
    arrays = _arrays(reopened)
    assert set(arrays) == set(local)
    for key, expected in local.items():
        assert arrays[key].tobytes() == expected.tobytes(), key
    some = reopened.read_array("shapes", "timm:test_vit@random:0", "image_emb", rows=[19, 0, 7])
    assert some.tobytes() == local[("shapes", "timm:test_vit@random:0", "image_emb")][[19, 0, 7]].tobytes()

    result = CliRunner().invoke(ls_command, ["--store", str(store.path), "--json"])
    assert result.exit_code == 0, result.output
    assert {a["status"] for a in json.loads(result.output)["arrays"]} == {"complete"}
    messages: list[str] = []
    run_extraction(Store.open(store.path, readonly=False), _plan(), log=messages.append, progress=False)
    assert "shapes: every array is complete; nothing to do" in messages


def test_a_remote_chunk_file_gone_is_an_error_not_zeros(tmp_path):
    from zarr.core.sync import sync

    store = Store.create(tmp_path / "store", arrays_url=f"memory://embedstore-{uuid.uuid4().hex}/arrays")
    run_extraction(store, plan_from_args([TINY_CLIP], [DATASET], **SETTINGS), **QUIET)
    model = "openclip:embedstore-tiny@random:0"
    array = store.array("shapes", model, "image_emb")
    key = f"{array.path}/{array._chunk_key(2)}"
    sync(store.arrays.kv.delete(key))
    with pytest.raises(StoreError, match=r"is damaged: chunk 2 is marked done but its file .* is missing"):
        store.read_array("shapes", model, "image_emb")
    with pytest.raises(StoreError, match="chunk 2 is marked done"):
        store.read_array("shapes", model, "image_emb", rows=[0, 9])  # row 9 is in chunk 2
    assert store.read_array("shapes", model, "image_emb", rows=[0, 13]).shape[0] == 2  # chunks 0 and 3 are whole
    assert store.array("shapes", model, "image_emb").read(slice(0, 16, 12)).shape[0] == 2  # rows 0 and 12 too
    assert not store.array("shapes", model, "image_emb").verify_chunk(2)


def test_file_url_arrays_are_a_local_folder(tmp_path, local):
    store = Store.create(tmp_path / "store", arrays_url=f"file://{tmp_path / 'elsewhere'}")
    run_extraction(store, _plan(), **QUIET)
    assert store.arrays.local_root == tmp_path / "elsewhere"
    assert (tmp_path / "elsewhere" / "shapes").is_dir() and not (tmp_path / "store" / "arrays.zarr").exists()
    arrays = _arrays(Store.open(store.path))
    assert all(arrays[key].tobytes() == expected.tobytes() for key, expected in local.items())


def test_create_refuses_an_arrays_location_that_holds_anything(tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    with pytest.raises(StoreError, match=r"arrays location .*precious is not empty"):
        Store.create(tmp_path / "store", arrays_url=str(precious))
    assert (precious / "thesis.tex").read_text() == "years of work"
    url = f"memory://embedstore-{uuid.uuid4().hex}/arrays"
    Store.create(tmp_path / "first", arrays_url=url)
    with pytest.raises(StoreError, match="is not empty"):
        Store.create(tmp_path / "second", arrays_url=url)
    assert Store.open(tmp_path / "first").arrays.entries() == ["zarr.json"]


def test_a_relative_arrays_folder_is_read_from_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match=f"arrays location {tmp_path / 'taken'} is not empty"):
        Store.create("store", arrays_url="taken")
    assert not (tmp_path / "store").exists() and (tmp_path / "taken" / "notes.txt").read_text() == "mine"
    outside = Store.create("store", arrays_url="arrays-elsewhere")
    assert outside.meta()["arrays"] == str(tmp_path / "arrays-elsewhere")
    assert outside.arrays.local_root == tmp_path / "arrays-elsewhere" and (tmp_path / "arrays-elsewhere").is_dir()
    inside = Store.create("second", arrays_url="second/../second/vectors")
    assert inside.meta()["arrays"] == "vectors"  # inside the store's folder: moves with it
    monkeypatch.chdir(tmp_path / "taken")
    assert Store.open(tmp_path / "second").arrays.local_root == tmp_path / "second" / "vectors"
    with pytest.raises(StoreError, match="is the store folder itself"):
        Store.create(tmp_path / "third", arrays_url=str(tmp_path / "third"))


def test_dask_array_has_a_block_per_chunk_or_names_the_package(tmp_path):
    store = Store.create(tmp_path / "store")
    fingerprints = {"dataset": "d", "model": "m", "settings": "s"}
    data = np.random.default_rng(0).standard_normal((10, 3)).astype("float32")
    array = store.open_array_writer("ds", "m", "image_emb", shape=(10, 3), dtype="float32", chunk_rows=4,
                                    fingerprints=fingerprints)  # fmt: skip
    for chunk in (0, 1):
        array.write_chunk(chunk, data[4 * chunk : 4 * chunk + 4])
    with pytest.raises(StoreError, match=r"incomplete \(8/10 rows\)"):
        store.dask_array("ds", "m", "image_emb")
    array.write_chunk(2, data[8:])
    store.update_array_progress("ds", "m", "image_emb")  # what the writer does once every chunk is written
    try:
        import dask  # noqa: F401
    except ImportError:
        with pytest.raises(StoreError, match=r"needs dask: pip install 'dask\[array\]'"):
            store.dask_array("ds", "m", "image_emb")
        return
    lazy = store.dask_array("ds", "m", "image_emb")
    assert lazy.chunks == ((4, 4, 2), (3,))
    np.testing.assert_array_equal(lazy.compute(), data)
    np.testing.assert_allclose((lazy**2).sum(axis=1).compute(), (data**2).sum(axis=1), rtol=1e-6)
    for key in (store.path / "arrays.zarr" / array.path / "c").rglob("*"):  # chunk 1's file goes missing
        if key.is_file() and key.relative_to(store.path / "arrays.zarr" / array.path / "c").parts[0] == "1":
            key.unlink()
    lazy = store.dask_array("ds", "m", "image_emb")
    assert lazy[:4].sum().compute() == pytest.approx(data[:4].sum(), rel=1e-5)  # blocks not touched still read
    with pytest.raises(StoreError, match="chunk 1 is marked done but its file .* is missing"):
        lazy.sum().compute()  # never zeros


N_ROWS, DIM, CLASSES, CHUNK_ROWS = 131_072, 512, 10, 8192  # 128 MiB of float16 in 16 chunks
BUDGET = 64 << 20

OUT_OF_CORE = textwrap.dedent(
    """
    import json, re, resource, sys
    import numpy as np
    from embedstore.store import Store

    store_path, weights_path, budget = sys.argv[1], sys.argv[2], int(sys.argv[3])
    array = Store.open(store_path).array("big", "m", "image_emb")  # catalog work before the cap
    weights = np.load(weights_path, allow_pickle=False)
    used = int(re.search(r"VmSize:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (used + budget, used + budget))
    try:
        array.read()
        whole = "read"
    except MemoryError:
        whole = "MemoryError"
    correct = 0
    for start in range(0, array.shape[0], array.chunk_rows):
        block = array.read(slice(start, start + array.chunk_rows)).astype(np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        predicted = (block @ weights.T).argmax(axis=1)
        correct += int((predicted == np.arange(start, start + len(block)) % weights.shape[0]).sum())
    print(json.dumps({"whole": whole, "correct": correct}))
    """
)


def test_zero_shot_over_an_array_bigger_than_the_memory_allowed(tmp_path):
    rng = np.random.default_rng(0)
    weights = rng.standard_normal((CLASSES, DIM)).astype(np.float32)
    weights /= np.linalg.norm(weights, axis=1, keepdims=True)
    np.save(tmp_path / "weights.npy", weights)
    store = Store.create(tmp_path / "store")
    array = store.open_array_writer("big", "m", "image_emb", shape=(N_ROWS, DIM), dtype="float16",
                                    chunk_rows=CHUNK_ROWS, fingerprints={"dataset": "d", "model": "m", "settings": "s"})  # fmt: skip
    expected = 0
    for chunk in range(array.n_chunks):
        a, b = array.chunk_bounds(chunk)
        labels = np.arange(a, b) % CLASSES
        block = (weights[labels] * 0.9 + rng.standard_normal((b - a, DIM), dtype=np.float32) * 0.4).astype(np.float16)
        array.write_chunk(chunk, block)
        as_read = block.astype(np.float32)
        as_read /= np.linalg.norm(as_read, axis=1, keepdims=True)
        expected += int(((as_read @ weights.T).argmax(axis=1) == labels).sum())
    store.update_array_progress("big", "m", "image_emb")
    assert N_ROWS * DIM * 2 >= 2 * BUDGET and 0.5 * N_ROWS < expected < N_ROWS

    child = subprocess.run(
        [sys.executable, "-c", OUT_OF_CORE, str(store.path), str(tmp_path / "weights.npy"), str(BUDGET)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert child.returncode == 0, child.stderr[-3000:]
    assert json.loads(child.stdout) == {"whole": "MemoryError", "correct": expected}
