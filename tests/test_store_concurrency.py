"""A reader in one process answers while a writer in another process writes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest

from embedstore.errors import StoreError
from embedstore.store import Store
from embedstore.store.catalog import Catalog

WRITER = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from embedstore.store import Store
    store = Store.open(sys.argv[1], readonly=False)
    fp = {"dataset": "d", "model": "m", "settings": "s"}
    arr = store.open_array_writer("ds", "m", "image_emb", shape=(4000, 8), dtype="float16", chunk_rows=100,
                                  fingerprints=fp)
    print("ready", flush=True)
    for i in range(arr.n_chunks):
        arr.write_chunk(i, np.full((100, 8), i, dtype="float16"))
        store.update_array_progress("ds", "m", "image_emb")
        store.put_results("progress", [("chunks", float(i))], params={"i": i})
    """
)


def test_reader_answers_while_another_process_writes(store):
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(store.path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        seen = []
        while proc.poll() is None:
            reader = Store.open(store.path)  # read-only
            info = reader.list_arrays()[0]
            done, status = reader.array_progress(info)
            seen.append(done)
            reader.sql("SELECT count(*) FROM results")
        assert proc.wait() == 0
    finally:
        proc.kill()
    assert len(seen) >= 3, "the reader should have answered several times during the write"
    assert seen == sorted(seen), "progress seen by the reader never goes backwards"
    final = Store.open(store.path)
    assert final.list_arrays()[0].status == "complete"
    assert final.read_array("ds", "m", "image_emb")[::100, 0].tolist() == list(range(40))


HOLDER = textwrap.dedent(
    """
    import sys, time, duckdb
    con = duckdb.connect(sys.argv[1])
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    con.close()
    """
)


def test_reader_retries_then_reports_a_held_lock(store):
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(store.path / "catalog.duckdb"), "5"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "locked"
        catalog = Catalog(store.path / "catalog.duckdb", readonly=True, lock_timeout=0.5)
        start = time.monotonic()
        with pytest.raises(StoreError, match="locked by another process"):
            catalog.meta()
        assert 0.4 < time.monotonic() - start < 3
    finally:
        proc.kill()
        proc.wait()
