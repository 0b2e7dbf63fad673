"""Catalog.snapshot: an analysis's many small reads come from one in-memory copy of the catalog, no
file connection is opened for them, and writes still go to the file."""

from __future__ import annotations

import numpy as np
import pytest
from store_support import put_array

from embedstore.errors import StoreError
from embedstore.sources import open_dataset
from embedstore.store import Store


@pytest.fixture
def counted(store: Store, monkeypatch):
    opened: list[bool] = []
    connect = store.catalog._connect

    def counting(read_only, config=None):
        opened.append(read_only)
        return connect(read_only, config)

    monkeypatch.setattr(store.catalog, "_connect", counting)
    return store, opened


def test_reads_in_a_snapshot_open_no_file_connection(counted):
    store, opened = counted
    store.register_model({"model_id": "m", "kind": "clip", "fingerprint": "f"})
    opened.clear()
    with store.catalog.snapshot():
        assert len(opened) == 1  # the copy is taken through one read connection
        for _ in range(20):
            assert store.model_info("m")["fingerprint"] == "f"
        with store.session():  # a session inside reads from the snapshot too
            assert store.query("SELECT count(*) AS n FROM models")[0]["n"] == 1
        assert len(opened) == 1
        store.register_model({"model_id": "m2", "kind": "clip", "fingerprint": "g"})  # writes reach the file
        assert opened[-1] is False
        assert store.query("SELECT count(*) AS n FROM models")[0]["n"] == 1  # the snapshot is as it was
        with store.transaction():  # a transaction reads its own writes
            store.register_model({"model_id": "m3", "kind": "clip", "fingerprint": "h"})
            assert store.query("SELECT count(*) AS n FROM models")[0]["n"] == 3
    assert store.query("SELECT count(*) AS n FROM models")[0]["n"] == 3


def test_sandboxed_sql_never_reads_the_snapshot(counted):
    store, opened = counted
    with store.catalog.snapshot():
        store.register_model({"model_id": "late", "kind": "clip", "fingerprint": "f"})
        assert store.sql("SELECT model_id FROM models").column("model_id").to_pylist() == ["late"]


def test_a_snapshot_answers_a_repeated_read_once_and_hands_out_copies(store, monkeypatch):
    store.register_model({"model_id": "m", "kind": "clip", "fingerprint": "f"})
    store.register_dataset(open_dataset("ds", "synthetic:shapes?n=6&seed=1"))
    queries: list[str] = []
    with store.catalog.snapshot():
        real_read = store.catalog.read

        def counting_read(**kwargs):
            queries.append("read")
            return real_read(**kwargs)

        monkeypatch.setattr(store.catalog, "read", counting_read)
        first = store.model_info("m")
        first["kind"] = "changed by a caller"
        assert store.model_info("m")["kind"] == "clip" and len(queries) == 1
        table = store.sample_table("ds")
        assert len(table["label"]) == 6 and store.sample_table("ds") is not table
        with pytest.raises(ValueError, match="read-only"):
            table["label"][0] = 5  # what is remembered cannot be changed through a caller's copy
        reads = len(queries)
        store.sample_table("ds")
        assert len(queries) == reads
        with store.transaction():  # a transaction reads its own writes: nothing remembered there
            store.register_model({"model_id": "m", "kind": "classifier", "fingerprint": "f"})
            assert store.model_info("m")["kind"] == "classifier"
    monkeypatch.undo()
    assert store.model_info("m")["kind"] == "classifier"
    store.sample_table("ds")["label"][0] = 5  # outside a snapshot each call reads afresh, writable


def test_queries_are_remembered_by_the_exact_parameters(store):
    store.register_model({"model_id": "m", "kind": "clip", "fingerprint": "f"})
    sql = "SELECT count(*) AS n FROM models WHERE model_id IN (SELECT unnest(?::VARCHAR[]))"
    long_a, long_b = [f"x{i}" for i in range(2000)], [f"x{i}" for i in range(2000)]
    long_b[1000] = "m"  # equal to long_a but for one entry in the middle
    with store.catalog.snapshot():
        assert store.query(sql, [long_a])[0]["n"] == 0
        assert store.query(sql, [long_b])[0]["n"] == 1
        assert store.query("SELECT ? AS v", [1])[0]["v"] == 1 and store.query("SELECT ? AS v", [True])[0]["v"] is True


def test_named_parameters_are_not_remembered(store):
    with store.catalog.snapshot():
        assert store.query("SELECT $v AS v", {"v": 1})[0]["v"] == 1
        assert store.query("SELECT $v AS v", {"v": 2})[0]["v"] == 2


def test_an_array_removed_during_a_snapshot_is_not_read_as_zeros(store):
    """An opened array is kept for the snapshot only while its metadata file is the same one: removed
    (or written anew) by another process meanwhile, it is opened again, and a removed one is refused."""
    store.register_dataset(open_dataset("ds", "synthetic:shapes?n=6&seed=1"))
    store.register_model({"model_id": "m", "kind": "clip", "fingerprint": "f"})
    put_array(store, "ds", "m", "image_emb", np.ones((6, 4), dtype=np.float32))
    with store.catalog.snapshot():
        assert store.read_array("ds", "m", "image_emb").sum() == 24
        store.arrays.delete_array(store.list_arrays("ds", "m", "image_emb")[0].path)  # as `rm` elsewhere
        with pytest.raises(StoreError, match="does not exist"):
            store.read_array("ds", "m", "image_emb")
