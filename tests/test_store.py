"""Store: catalog schema, chunk-exact array writes, reads, fingerprints, results."""

from __future__ import annotations

import numpy as np
import pytest

from embedstore.errors import FingerprintMismatch, StoreError
from embedstore.store import Store
from embedstore.store.catalog import SCHEMA_VERSION
from embedstore.store.store import path_component

FINGERPRINTS = {"dataset": "d" * 64, "model": "m" * 64, "settings": "s" * 64}
TABLES = {"meta", "models", "datasets", "samples", "captions", "annotations", "templates", "prompt_sets", "arrays",
          "bad_samples", "results"}  # fmt: skip


def _writer(store, shape=(10, 4), dtype="float16", chunk_rows=4, fingerprints=FINGERPRINTS, name="image_emb"):
    return store.open_array_writer("ds", "openclip:m@random", name, shape=shape, dtype=dtype, chunk_rows=chunk_rows,
                                   fingerprints=fingerprints)  # fmt: skip


def test_create_makes_every_table_with_schema_version(store):
    tables = {r["table_name"] for r in store.query("SELECT table_name FROM information_schema.tables")}
    assert TABLES <= tables
    assert store.meta()["schema_version"] == str(SCHEMA_VERSION)
    assert (store.path / "arrays.zarr" / "zarr.json").is_file()


def test_create_refuses_existing_store(store):
    with pytest.raises(StoreError, match="already holds a store"):
        Store.create(store.path)


def test_open_missing_store_names_the_path(tmp_path):
    with pytest.raises(StoreError, match="no store at .*nowhere"):
        Store.open(tmp_path / "nowhere")


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64", "int32", "int64", "uint8", "bool"])
def test_round_trip_every_dtype(store, dtype):
    rng = np.random.default_rng(0)
    data = (rng.standard_normal((10, 3)) * 50).astype(dtype)
    arr = _writer(store, shape=data.shape, dtype=dtype)
    for i in arr.missing_chunks():
        a, b = arr.chunk_bounds(i)
        arr.write_chunk(i, data[a:b])
    store.update_array_progress("ds", "openclip:m@random", "image_emb")
    out = store.read_array("ds", "openclip:m@random", "image_emb")
    assert out.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(out, data)


def test_three_dimensional_text_array_round_trip(store):
    data = np.random.default_rng(1).standard_normal((5, 3, 8)).astype("float32")
    arr = _writer(store, shape=data.shape, dtype="float32", chunk_rows=2, name="text_emb")
    for i in range(arr.n_chunks):
        a, b = arr.chunk_bounds(i)
        arr.write_chunk(i, data[a:b])
    with pytest.raises(StoreError, match="its writer has not finished it"):  # every row written, not yet finished
        store.read_array("ds", "openclip:m@random", "text_emb")
    assert store.array_progress(store.list_arrays("ds", "openclip:m@random", "text_emb")[0]) == (5, "partial")
    store.update_array_progress("ds", "openclip:m@random", "text_emb")
    np.testing.assert_array_equal(store.read_array("ds", "openclip:m@random", "text_emb"), data)


def test_a_complete_array_removed_while_a_reader_holds_it_is_an_error_not_zeros(store):
    arr = _writer(store)
    for i in range(arr.n_chunks):
        a, b = arr.chunk_bounds(i)
        arr.write_chunk(i, np.ones((b - a, 4)))
    info = store.update_array_progress("ds", "openclip:m@random", "image_emb")
    reader = store._readable_array("ds", "openclip:m@random", "image_emb", allow_partial=False)
    store.arrays.delete_array(info.path)  # another process's `rm`, or a rewrite by `prompts add`
    with pytest.raises(
        StoreError, match="chunk 0 has lost its done-marker and file .* is missing .was the array removed"
    ):
        reader.read()


def test_chunks_are_exact_and_written_once(store):
    arr = _writer(store)
    assert arr.n_chunks == 3 and arr.chunk_bounds(2) == (8, 10)
    with pytest.raises(StoreError, match="needs shape"):
        arr.write_chunk(0, np.zeros((3, 4)))
    with pytest.raises(StoreError, match="needs shape"):
        arr.write_chunk(2, np.zeros((4, 4)))
    arr.write_chunk(1, np.ones((4, 4)))
    with pytest.raises(StoreError, match="already written"):
        arr.write_chunk(1, np.ones((4, 4)))
    assert arr.done_chunks() == {1} and arr.missing_chunks() == [0, 2]
    assert arr.rows_done() == 4 and arr.verify_chunk(1)


def test_partial_array_is_refused_unless_asked(store):
    arr = _writer(store)
    arr.write_chunk(0, np.ones((4, 4)))
    info = store.update_array_progress("ds", "openclip:m@random", "image_emb")
    assert (info.rows_done, info.status) == (4, "partial")
    with pytest.raises(StoreError, match="incomplete .4/10 rows"):
        store.read_array("ds", "openclip:m@random", "image_emb")
    out = store.read_array("ds", "openclip:m@random", "image_emb", allow_partial=True)
    assert out[:4].sum() == 16 and out[4:].sum() == 0


def test_progress_recount_without_change_writes_nothing(store):
    arr = _writer(store)
    arr.write_chunk(0, np.ones((4, 4)))
    updated = "SELECT updated FROM arrays WHERE name = 'image_emb'"
    store.update_array_progress("ds", "openclip:m@random", "image_emb")
    first = store.query(updated)[0]["updated"]
    again = store.update_array_progress("ds", "openclip:m@random", "image_emb")
    assert store.query(updated)[0]["updated"] == first and (again.rows_done, again.status) == (4, "partial")
    store.update_array_progress("ds", "openclip:m@random", "image_emb", seconds=2.5)
    assert store.query(updated)[0]["updated"] > first
    arr.write_chunk(1, np.ones((4, 4)))
    assert store.update_array_progress("ds", "openclip:m@random", "image_emb").rows_done == 8


@pytest.mark.parametrize("compression", ["none", "blosc-lz4", "zstd"])
def test_reads_rows_by_slice_and_index_list(store, compression):
    data = np.arange(40, dtype="float32").reshape(10, 4)
    arr = store.open_array_writer("ds", "m", "image_emb", shape=data.shape, dtype="float32", chunk_rows=4,
                                  fingerprints=FINGERPRINTS, compression=compression)  # fmt: skip
    for i in range(arr.n_chunks):
        a, b = arr.chunk_bounds(i)
        arr.write_chunk(i, data[a:b])
    for rows in [slice(None), slice(3, 7), slice(4, 8), slice(9, 10), slice(5, 5), slice(0, 10, 2)]:
        np.testing.assert_array_equal(arr.read(rows), data[rows])
        np.testing.assert_array_equal(arr.read(rows), arr.zarr[rows])
    # dense index lists take the span read, sparse ones Zarr's selection: both in the order asked
    for rows in [[9, 0, 5], [0, 1, 2, 4, 5, 6, 7], [3, 4, 5, 6], [6, 5, 5, 4], [0, 9], [2]]:
        np.testing.assert_array_equal(arr.read(rows), data[rows])
        np.testing.assert_array_equal(
            arr.read(np.asarray(rows)), arr.zarr.get_orthogonal_selection((rows, slice(None)))
        )
    assert arr.read([]).shape == (0, 4)
    with pytest.raises(StoreError, match="out of range"):
        arr.read([10])


@pytest.mark.parametrize("compression", ["none", "blosc-lz4", "zstd"])
@pytest.mark.parametrize("damage", ["cut short", "deleted"])
def test_a_damaged_chunk_is_refused_never_read_as_zeros_or_stale_bytes(store, compression, damage):
    data = np.arange(40, dtype="float32").reshape(10, 4) + 1
    arr = store.open_array_writer("ds", "m", "image_emb", shape=data.shape, dtype="float32", chunk_rows=4,
                                  fingerprints=FINGERPRINTS, compression=compression)  # fmt: skip
    for i in range(arr.n_chunks):
        a, b = arr.chunk_bounds(i)
        arr.write_chunk(i, data[a:b])
    store.update_array_progress("ds", "m", "image_emb")
    np.testing.assert_array_equal(arr.read(), data)  # leaves the previous read's bytes in the scratch buffer
    chunk = store.path / "arrays.zarr" / arr.path / "c" / "1" / "0"
    if damage == "cut short":
        chunk.write_bytes(chunk.read_bytes()[:20])
    else:
        chunk.unlink()
    for rows in (None, slice(4, 6), slice(0, 10, 2), [5], [0, 9, 5], [4, 5, 6]):
        with pytest.raises(StoreError, match=r"array ds/m.* is damaged: .*embedstore verify"):
            arr.read(rows)
    with pytest.raises(
        StoreError, match="^image_emb of model m on dataset ds is damaged: chunk 1 is marked done but its file c/1/0 "
    ):
        store.read_array("ds", "m", "image_emb")
    np.testing.assert_array_equal(arr.read([0, 9, 1]), data[[0, 9, 1]])  # the other chunks still read
    assert [arr.verify_chunk(i) for i in range(3)] == [True, False, True]


def test_chunks_not_written_yet_read_as_zeros(store):
    arr = _writer(store, dtype="float32")
    arr.write_chunk(2, np.ones((2, 4)))
    assert arr.read().sum() == 8 and arr.read([0, 9]).sum() == 4 and arr.read([1, 2, 3]).sum() == 0
    # a chunk file being written (or cut short) without its marker is not done yet: zeros, not an error
    (store.path / "arrays.zarr" / arr.path / "c" / "1").mkdir()
    (store.path / "arrays.zarr" / arr.path / "c" / "1" / "0").write_bytes(b"\x00" * 17)
    assert arr.read().sum() == 8 and arr.read(slice(4, 8)).sum() == 0


def test_torn_marker_counts_as_not_done(store):
    arr = _writer(store)
    arr.write_chunk(0, np.ones((4, 4)))
    marker = store.path / "arrays.zarr" / arr.path / "done" / "0"
    marker.write_bytes(b'{"rows": 4')  # a crash cut it short
    assert arr.done_chunks() == set()


@pytest.mark.parametrize("kind", ["dataset", "model", "settings"])
def test_reopen_with_changed_fingerprint_names_what_changed(store, kind):
    _writer(store).write_chunk(0, np.ones((4, 4)))
    changed = dict(FINGERPRINTS, **{kind: "x" * 64})
    with pytest.raises(FingerprintMismatch, match=f"the {kind} changed|extraction settings changed"):
        _writer(store, fingerprints=changed)
    assert _writer(store).done_chunks() == {0}  # the same fingerprints resume


def test_reopen_with_other_shape_is_refused(store):
    _writer(store)
    with pytest.raises(StoreError, match="exists with shape"):
        _writer(store, shape=(11, 4))


def test_model_ids_become_safe_distinct_folders():
    assert path_component("imagenet") == "imagenet"
    a, b = path_component("openclip:ViT-B-32.openai"), path_component("openclip_ViT-B-32.openai")
    assert a != b and "/" not in path_component("openclip:hf-hub:org/repo")


def test_results_replace_same_params_and_add_different(store):
    store.put_results("zeroshot", [("acc1", 0.5), ("note", "x")], params={"prompts": "default"}, model="m", dataset="d")
    store.put_results("zeroshot", [("acc1", 0.6)], params={"prompts": "default"}, model="m", dataset="d")
    store.put_results("zeroshot", [("acc1", 0.7)], params={"prompts": "other"}, model="m", dataset="d")
    rows = store.query("SELECT metric, value, params, params_hash, version, created FROM results ORDER BY value")
    assert [(r["metric"], r["value"]) for r in rows] == [("acc1", 0.6), ("acc1", 0.7)]
    assert rows[0]["params_hash"] != rows[1]["params_hash"] and '"prompts":"default"' in rows[0]["params"]


def test_results_written_together_replace_like_one_by_one(store):
    store.put_results("ood", [("auroc", 0.1)], params={"s": 1}, model=None, dataset="d")  # a NULL model is a key too
    store.put_results("ood", [("auroc", 0.2)], params={"s": 1}, model="m", dataset="d")
    with store.results_together():
        store.put_results("ood", [("auroc", 0.3)], params={"s": 1}, model=None, dataset="d")
        store.put_results("ood", [("auroc", 0.4), ("fpr95", 0.5)], params={"s": 2}, model="m", dataset="d")
        store.put_results("ood", [("auroc", 0.6)], params={"s": 2}, model="m", dataset="d")  # a repeat: the last wins
        assert store.query("SELECT count(*) AS n FROM results")[0]["n"] == 2  # nothing written yet
    rows = store.query("SELECT model, metric, value FROM results ORDER BY value")
    assert [(r["model"], r["metric"], r["value"]) for r in rows] == [("m", "auroc", 0.2), (None, "auroc", 0.3),
                                                                     ("m", "auroc", 0.6)]  # fmt: skip


def test_sql_refuses_writes_and_file_access(store):
    assert store.sql("SELECT count(*) AS n FROM arrays").to_pylist() == [{"n": 0}]
    for statement in ["INSERT INTO meta VALUES ('a', 'b')", "delete from results", "COPY meta TO '/tmp/x.csv'",
                      "ATTACH '/tmp/other.duckdb'", "SET enable_external_access = true",
                      "WITH x AS (SELECT 1) INSERT INTO meta VALUES ('a', 'b')"]:  # fmt: skip
        with pytest.raises(StoreError, match="refused"):
            store.sql(statement)
    with pytest.raises(StoreError, match="file system operations are disabled"):
        store.sql("SELECT * FROM read_csv('/etc/hostname')")


def test_readonly_store_refuses_writes(store):
    ro = Store.open(store.path)
    with pytest.raises(StoreError, match="read-only"):
        ro.put_results("x", [("a", 1.0)], params={})


def test_bad_samples_recorded(store):
    store.record_bad_samples("ds", [(3, "k3", "truncated JPEG"), (5, "k5", "zero-byte file")])
    store.record_bad_samples("ds", [(3, "k3", "truncated JPEG (again)")])
    assert list(store.bad_rows("ds")) == [3, 5]
