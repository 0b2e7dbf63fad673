"""Resources: a full disk, a locked catalog, and two extractions into one store at once.

- Disk full: ``ENOSPC`` is injected into the Zarr store's writes (a torn chunk file, then the error;
  or the error on a done-marker). The extraction stops with one line naming the chunk and the
  reason, `embedstore ls` tells the truth, and a second run resumes to the bytes of an
  uninterrupted run.
- Locked catalog: `embedstore ls` answers, truthfully and never going backwards, all through a real
  extraction; against a lock held past ``EMBEDSTORE_LOCK_TIMEOUT`` it fails with one clear line
  (``tests/test_store_concurrency.py`` checks the same at the ``Store``/``Catalog`` level).
- Two extractions: a second extraction of a dataset that is being extracted refuses at once, naming
  the holder's pid (``embedstore/store/locks.py``); extractions of different datasets into one
  store run side by side.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import zarr.storage
from click.testing import CliRunner
from reliability_support import TINY_CLIP, TINY_TIMM, extract_argv

from embedstore.store import Store
from embedstore.store.locks import lock_path
from embedstore_cli.extract_command import extract_command
from embedstore_cli.store_commands import ls_command

CLIP_ID = "openclip:embedstore-tiny@random:0"
DATASET = "shapes=synthetic:shapes?n=24&seed=5&size=32"
SETTINGS = ("--chunk-rows", "4", "--batch-size", "4", "--dtype", "float32")


def _extract(store: Path, *models: str) -> object:
    argv = extract_argv(store, models or (TINY_CLIP,), (DATASET,), *SETTINGS)
    return CliRunner().invoke(extract_command, argv)


def _ls(store: Path, **env: str) -> tuple[int, str]:
    result = CliRunner().invoke(ls_command, ["--store", str(store), "--json"], env=env or None)
    return result.exit_code, result.output


def _verified_rows(store: Store) -> dict[tuple[str, str, str], int]:
    """Rows of each array whose chunks are marked done and pass their CRC."""
    out = {}
    for info in store.list_arrays():
        array = store.array(info.dataset, info.model, info.name)
        assert all(array.verify_chunk(c) for c in array.done_chunks())
        out[(info.dataset, info.model, info.name)] = array.rows_done()
    return out


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    path = tmp_path_factory.mktemp("uninterrupted") / "store"
    result = _extract(path)
    assert result.exit_code == 0, result.output
    store = Store.open(path)
    return {(a.dataset, a.model, a.name): store.read_array(a.dataset, a.model, a.name) for a in store.list_arrays()}


@pytest.mark.parametrize("victim", ["chunk", "marker"])
def test_a_full_disk_stops_with_one_line_and_the_store_resumes(tmp_path, monkeypatch, uninterrupted, victim):
    original = zarr.storage.LocalStore.set
    writes = {"n": 0}
    folder = "/c/" if victim == "chunk" else "/done/"

    async def full_after_three(self, key, value):
        if folder in key and "/image_emb/" in key:
            writes["n"] += 1
            if writes["n"] > 3:
                path = Path(self.root) / key
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(value.to_bytes()[: len(value) // 2])  # what a full disk leaves: a torn file
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return await original(self, key, value)

    monkeypatch.setattr(zarr.storage.LocalStore, "set", full_after_three)
    path = tmp_path / "store"
    failed = _extract(path)
    assert failed.exit_code == 1 and "Traceback" not in failed.output, failed.output
    errors = [line for line in failed.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, failed.output
    assert "cannot write chunk 3 of shapes/" in errors[0] and "No space left on device" in errors[0]
    assert "run again to resume" in errors[0]

    code, output = _ls(path)
    assert code == 0, output
    listed = {(a["dataset"], a["model"], a["name"]): a["rows_done"] for a in json.loads(output)["arrays"]}
    assert listed[("shapes", CLIP_ID, "image_emb")] == 12, "three chunks of four rows were written and marked"
    assert listed == _verified_rows(Store.open(path))

    monkeypatch.setattr(zarr.storage.LocalStore, "set", original)  # space freed
    resumed = _extract(path)
    assert resumed.exit_code == 0, resumed.output
    store = Store.open(path)
    for key, expected in uninterrupted.items():
        assert store.read_array(*key).tobytes() == expected.tobytes(), key
    assert all(a.status == "complete" for a in store.list_arrays())


def _running(pid: int) -> bool:
    """True while process ``pid`` runs (an ended child stays a zombie until the server reaps it)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return not stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


def _lock_holder(store: Path) -> int | None:
    """The pid written in the lock file of dataset 'shapes', while that process runs."""
    try:
        pid = json.loads(lock_path(store, "shapes").read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return None
    return pid if _running(pid) else None


def test_ls_answers_all_through_an_extraction(extraction_server, tmp_path):
    path = tmp_path / "store"
    Store.create(path)
    child = extraction_server.start(extract_argv(path, (TINY_CLIP, TINY_TIMM), (DATASET,), *SETTINGS))
    answers = []
    while _running(child.pid):
        code, output = _ls(path)
        assert code == 0, output
        answers.append({(a["model"], a["name"]): a["rows_done"] for a in json.loads(output)["arrays"]})
        time.sleep(0.05)
    assert extraction_server.wait(child) == 0, child.output()
    assert len(answers) >= 3, "ls should have answered several times during the extraction"
    for before, after in zip(answers, answers[1:]):
        assert all(after.get(key, 0) >= rows for key, rows in before.items()), "progress went backwards"
    code, output = _ls(path)
    assert [a["status"] for a in json.loads(output)["arrays"]] == ["complete"] * 5


HOLDER = textwrap.dedent(
    """
    import sys, time, duckdb
    con = duckdb.connect(sys.argv[1])
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    """
)


def test_ls_against_a_lock_held_too_long_fails_with_one_line(tmp_path):
    path = tmp_path / "store"
    Store.create(path)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path / "catalog.duckdb"), "30"],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, output = _ls(path, EMBEDSTORE_LOCK_TIMEOUT="0.5")
    finally:
        holder.kill()
        holder.wait()
    assert code == 1 and len(output.strip().splitlines()) == 1, output
    assert f"is locked by another process writing to it (process {holder.pid}); gave up after" in output
    assert "EMBEDSTORE_LOCK_TIMEOUT" in output
    assert _ls(path)[0] == 0


def test_a_second_extraction_of_a_dataset_refuses_naming_the_first(extraction_server, tmp_path):
    path = tmp_path / "store"
    Store.create(path)
    argv = extract_argv(path, (TINY_CLIP, TINY_TIMM), ("shapes=synthetic:shapes?n=64&seed=5&size=32",), *SETTINGS)
    first = extraction_server.start(argv)
    deadline = time.monotonic() + 120
    while _lock_holder(path) != first.pid and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _lock_holder(path) == first.pid, first.output()
    code, output = extraction_server.run(argv)
    assert code == 1, output
    refusal = [line for line in output.splitlines() if line.startswith("Error:")]
    assert (
        len(refusal) == 1 and f"dataset shapes of store {path} is being written by process {first.pid}" in refusal[0]
    )
    assert extraction_server.wait(first) == 0, first.output()
    store = Store.open(path)
    assert all(a.status == "complete" for a in store.list_arrays()) and len(store.list_arrays()) == 5
    assert _verified_rows(store) == {(a.dataset, a.model, a.name): a.rows_total for a in store.list_arrays()}
    code, output = extraction_server.run(argv)
    assert code == 0 and "every array is complete; nothing to do" in output, output


def test_extractions_of_different_datasets_run_side_by_side(extraction_server, tmp_path):
    path = tmp_path / "store"
    Store.create(path)
    models = (TINY_CLIP, TINY_TIMM)
    first = extraction_server.start(extract_argv(path, models, (DATASET,), *SETTINGS))
    second = extraction_server.start(extract_argv(path, models, ("other=synthetic:shapes-v2?n=16&seed=1",), *SETTINGS))
    assert extraction_server.wait(second) == 0, second.output()
    assert extraction_server.wait(first) == 0, first.output()
    store = Store.open(path)
    infos = store.list_arrays()
    assert {a.dataset for a in infos} == {"shapes", "other"} and len(infos) == 10
    assert all(a.status == "complete" for a in infos)
    assert _verified_rows(store) == {(a.dataset, a.model, a.name): a.rows_total for a in infos}
    assert len(store.query("SELECT * FROM models")) == 2
    rows = store.query('SELECT dataset, count(*) AS n, count(DISTINCT "row") AS d FROM samples GROUP BY 1 ORDER BY 1')
    assert rows == [{"dataset": "other", "n": 16, "d": 16}, {"dataset": "shapes", "n": 24, "d": 24}]
    np.testing.assert_array_equal(store.sample_table("shapes")["row"], np.arange(24))
