"""Resume after kill -9 is bit-identical; two torchrun ranks equal one process."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from embedstore.store import Store

MODELS = ["openclip:embedstore-tiny@random", "timm:test_vit@random"]
DATASET = "shapes=synthetic:shapes?n=96&seed=1"
ARGS = ["--workers", "0", "--chunk-rows", "8", "--batch-size", "4", "--no-progress"]


def _command(store: Path) -> list[str]:
    models = [a for m in MODELS for a in ("--model", m)]
    return [sys.executable, "-m", "embedstore_cli", "extract", "--store", str(store), *models, "--dataset", DATASET, *ARGS]


def _env() -> dict:
    return dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")


def _arrays(store_path: Path) -> dict[tuple[str, str, str], np.ndarray]:
    store = Store.open(store_path)
    return {(a.dataset, a.model, a.name): store.read_array(a.dataset, a.model, a.name) for a in store.list_arrays()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    path = tmp_path_factory.mktemp("ref") / "store"
    subprocess.run(_command(path), env=_env(), check=True, capture_output=True)
    return _arrays(path)


def _assert_identical(store_path: Path, reference: dict) -> None:
    arrays = _arrays(store_path)
    assert set(arrays) == set(reference)
    for key, value in reference.items():
        assert arrays[key].tobytes() == value.tobytes(), f"{key} differs from the uninterrupted run"
    store = Store.open(store_path)
    assert all(a.status == "complete" and a.rows_done == a.rows_total for a in store.list_arrays())


def test_killed_runs_resume_bit_identical(tmp_path, reference):
    rng = random.Random(7)
    store_path = tmp_path / "store"
    kills = 0
    for _attempt in range(8):
        proc = subprocess.Popen(_command(store_path), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(rng.uniform(2.0, 6.0))
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        if store_path.exists() and (store_path / "catalog.duckdb").exists():
            # the truth at every point: markers never claim more rows than the arrays hold
            store = Store.open(store_path)
            for info in store.list_arrays():
                done, _ = store.array_progress(info)
                arr = store.array(info.dataset, info.model, info.name)
                assert all(arr.verify_chunk(c) for c in arr.done_chunks())
                assert done == sum(b - a for a, b in map(arr.chunk_bounds, arr.done_chunks()))
    final = subprocess.run(_command(store_path), env=_env(), capture_output=True, text=True)
    assert final.returncode == 0, final.stderr
    assert kills >= 1, "the run finished before it could be killed: make the dataset larger"
    _assert_identical(store_path, reference)


def test_torchrun_two_ranks_equal_one_process(tmp_path, reference):
    store_path = tmp_path / "store"
    Store.create(store_path)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(29500 + os.getpid() % 1000), "-m", "embedstore_cli", *_command(store_path)[3:]]  # fmt: skip
    result = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_identical(store_path, reference)
