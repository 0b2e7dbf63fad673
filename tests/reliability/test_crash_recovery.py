"""Crash: an extraction killed with SIGKILL at ten moments resumes to the bytes of an uninterrupted run.

``tests/test_extract_resume.py`` kills a subprocess at random seconds. This file adds the moments a
timer rarely hits, named by the test hook ``EMBEDSTORE_TEST_CRASH_AT`` (``embedstore/store/crashpoints.py``):
inside ``Store.create``, inside catalog transactions (registration, array rows, progress), and between
a chunk's bytes and its done-marker; and kills timed by the store's own progress (after a drawn number
of further chunks), so that they land while chunks are being written. After every kill `embedstore ls`
must tell the truth (each array's rows done are exactly the rows of its chunks that verify and equal the
uninterrupted run's bytes; registration is all or nothing; no sample row is lost or duplicated), and the
final restart must end with every array and catalog row equal to the uninterrupted run's.

The extractions are real processes killed with SIGKILL, forked from a warm server
(``extraction_server.py``) so that twelve of them cost seconds, not minutes of imports.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from reliability_support import TINY_CLIP, TINY_TIMM, ExtractionServer, extract_argv

from embedstore.store import Store
from embedstore_cli.store_commands import ls_command

N_ROWS = 48
DATASET = f"shapes=synthetic:shapes?n={N_ROWS}&seed=2&size=32"
SETTINGS = ("--chunk-rows", "4", "--batch-size", "4")
#: (point, draw): where each of the ten kills lands, N or a fraction drawn from the range.
#: ``catalog-commit:1`` on a new store dies inside ``Store.create``. The next run commits the store's
#: creation, the registration, text_emb's array row and then its progress: ``catalog-commit:4`` dies
#: with text_emb written but not recorded. A later restart commits its registration, text_emb's
#: progress when it was not recorded yet (an unchanged recount commits nothing), then (after the
#: pass) four arrays' progress: once text_emb is recorded, N = 1 dies before the pass, N in 2..5
#: after it. ``chunk-write:N`` dies between the N-th chunk's bytes and its done-marker; ``progress``
#: kills once that many more chunks are marked done, plus up to 50 ms; ``time`` kills at that
#: fraction of the uninterrupted run's duration (or once half the remaining chunks are done, so that
#: a machine faster than during the reference run still leaves work for the kills after it).
SCHEDULE = (
    ("catalog-commit", (1, 1)),
    ("catalog-commit", (4, 4)),
    ("time", (0.05, 0.4)),
    ("chunk-write", (1, 3)),
    ("progress", (1, 3)),
    ("catalog-commit", (1, 1)),
    ("chunk-write", (1, 3)),
    ("progress", (1, 3)),
    ("chunk-write", (1, 3)),
    ("catalog-commit", (2, 5)),
)


@dataclass
class Reference:
    seconds: float
    markers: int
    models: set[str]
    arrays: dict[tuple[str, str, str], np.ndarray]
    catalog: dict[str, list]


def _argv(store: Path) -> list[str]:
    return extract_argv(store, (TINY_CLIP, TINY_TIMM), (DATASET,), *SETTINGS)


def _lasting_catalog(store: Store) -> dict[str, list]:
    """Catalog rows without times and durations, which differ between any two runs."""
    return {
        "models": store.query("SELECT model_id, kind, fingerprint, metadata FROM models ORDER BY 1"),
        "datasets": store.query("SELECT name, kind, spec, task, n_samples, classnames, fingerprint FROM datasets"),
        "samples": store.query('SELECT * FROM samples ORDER BY "row"'),
        "templates": store.query('SELECT * FROM templates ORDER BY "index"'),
        "prompt_sets": store.query("SELECT * FROM prompt_sets ORDER BY name, position"),
        "arrays": store.query(
            "SELECT dataset, model, name, path, shape, dtype, chunk_rows, rows_total, rows_done, status, "
            "dataset_fingerprint, model_fingerprint, settings_fingerprint, settings FROM arrays ORDER BY 1, 2, 3"
        ),
        "bad_samples": store.query("SELECT * FROM bad_samples"),
    }


@pytest.fixture(scope="module")
def reference(extraction_server: ExtractionServer, tmp_path_factory) -> Reference:
    path = tmp_path_factory.mktemp("uninterrupted") / "store"
    start = time.monotonic()
    code, output = extraction_server.run(_argv(path))
    assert code == 0, output
    seconds = time.monotonic() - start
    store = Store.open(path)
    arrays = {(a.dataset, a.model, a.name): store.read_array(a.dataset, a.model, a.name) for a in store.list_arrays()}
    models = {m["model_id"] for m in store.query("SELECT model_id FROM models")}
    return Reference(seconds, _markers(path), models, arrays, _lasting_catalog(store))


def _markers(path: Path) -> int:
    return sum(1 for _ in (path / "arrays.zarr").glob("*/*/*/done/*"))


def _unmarked_chunks(path: Path) -> int:
    """Chunk files on disk whose done-marker is missing: what a kill between the two leaves."""
    count = 0
    for array in (path / "arrays.zarr").glob("*/*/*"):
        written = {p.relative_to(array / "c").parts[0] for p in (array / "c").rglob("*") if p.is_file()}
        marked = {p.name for p in (array / "done").glob("*")}
        count += len(written - marked)
    return count


def _kill(server: ExtractionServer, path: Path, point: str, draw: tuple, rng: random.Random, reference: Reference):
    """Start a run into ``path`` and kill it as ``point`` says; returns (exit status, N or seconds drawn)."""
    if point in ("catalog-commit", "chunk-write"):
        n = rng.randint(*draw)
        child = server.start(_argv(path), env={"EMBEDSTORE_TEST_CRASH_AT": f"{point}:{n}"})
        return server.wait(child), n, child
    if point == "time":
        seconds = rng.uniform(*draw) * reference.seconds
        done = _markers(path) if path.exists() else 0
        halfway = done + (reference.markers - done) // 2
        child = server.start(_argv(path))
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and (not path.exists() or _markers(path) < halfway):
            time.sleep(0.005)
        child.kill()
        return server.wait(child), round(seconds, 2), child
    more = rng.randint(*draw)
    target = (_markers(path) if path.exists() else 0) + more
    child = server.start(_argv(path))
    deadline = time.monotonic() + 3 * reference.seconds
    while time.monotonic() < deadline and (not path.exists() or _markers(path) < target):
        time.sleep(0.005)
    time.sleep(rng.uniform(0, 0.05))
    child.kill()
    return server.wait(child), more, child


def _assert_ls_tells_the_truth(path: Path, reference: Reference) -> None:
    result = CliRunner().invoke(ls_command, ["--store", str(path), "--json"])
    if not (path / "catalog.duckdb").exists():
        assert result.exit_code == 1 and "no store at" in result.output, result.output
        return
    assert result.exit_code == 0, result.output
    listing = json.loads(result.output)
    store = Store.open(path)
    for entry in listing["arrays"]:
        key = (entry["dataset"], entry["model"], entry["name"])
        expected = reference.arrays[key]
        array = store.array(*key)
        rows = 0
        for chunk in sorted(array.done_chunks()):
            a, b = array.chunk_bounds(chunk)
            assert array.verify_chunk(chunk), f"{key} chunk {chunk} is marked done but fails its CRC"
            assert array.read(slice(a, b)).tobytes() == expected[a:b].tobytes(), f"{key} chunk {chunk} differs"
            rows += b - a
        assert entry["rows_done"] == rows, f"ls says {entry['rows_done']} rows of {key} are done; {rows} are"
        finished = store.list_arrays(*key)[0].status == "complete"  # only the writer finishes an array
        assert not finished or rows == entry["rows_total"], f"{key} is finished with {rows} rows done"
        assert entry["status"] == ("complete" if finished else "partial" if rows else "pending")
    registered = ({m["model_id"] for m in listing["models"]}, {d["name"] for d in listing["datasets"]})
    assert registered in [(set(), set()), (reference.models, {"shapes"})], f"half a registration: {registered}"
    if registered[1]:
        counts = store.query('SELECT count(*) AS n, count(DISTINCT "row") AS rows, max("row") AS last FROM samples')
        assert counts == [{"n": N_ROWS, "rows": N_ROWS, "last": N_ROWS - 1}], counts
    assert listing["bad_samples"] == []


def test_ten_kills_then_a_restart_equal_an_uninterrupted_run(extraction_server, reference, tmp_path):
    rng = random.Random(20240611)
    path = tmp_path / "store"
    history = []
    for point, draw in SCHEDULE:
        status, drawn, child = _kill(extraction_server, path, point, draw, rng, reference)
        history.append((point, drawn, status))
        if point != "time":
            assert status == -9, (
                f"the kill at {point} {drawn} did not land (exit {status}); kills so far {history}: {child.output()[-1500:]}"
            )
        else:
            assert status in (-9, 0), child.output()[-2000:]
        if point == "chunk-write":
            assert _unmarked_chunks(path) >= 1, "a kill between a chunk and its marker leaves an unmarked chunk"
        if point == "catalog-commit" and drawn == 1 and len(history) == 1:
            assert not (path / "catalog.duckdb").exists(), "a store whose creation was killed must not look created"
        _assert_ls_tells_the_truth(path, reference)
    assert sum(status == -9 for *_, status in history) >= 9, history

    code, output = extraction_server.run(_argv(path))
    assert code == 0, output
    store = Store.open(path)
    assert set(reference.arrays) == {(a.dataset, a.model, a.name) for a in store.list_arrays()}
    for key, expected in reference.arrays.items():
        assert store.read_array(*key).tobytes() == expected.tobytes(), f"{key} differs from the uninterrupted run"
    assert _lasting_catalog(store) == reference.catalog
    _assert_ls_tells_the_truth(path, reference)
