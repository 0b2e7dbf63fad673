"""Shared fixtures. Every test runs offline: no hub, no downloads."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("EMBEDSTORE_LOCK_TIMEOUT", "20")

import pytest  # noqa: E402

try:  # FAISS's OpenMP threads oversubscribe a small CI box; tests search tiny galleries
    import faiss  # noqa: E402

    faiss.omp_set_num_threads(1)
except ImportError:
    pass

from embedstore.store import Store  # noqa: E402


@pytest.fixture
def store(tmp_path) -> Store:
    return Store.create(tmp_path / "store")


TINY_MODELS = ("openclip:embedstore-tiny@random", "openclip:embedstore-tiny@random:1", "timm:test_vit@random")
TINY_DATASETS = (
    "shapes=synthetic:shapes?n=64&seed=0",
    "shapes-v2=synthetic:shapes-v2?n=32&seed=0",
    "shapes-sketch=synthetic:shapes-sketch?n=32&seed=0",
    "shapes-ood=synthetic:shapes-ood?n=32&seed=0",
    "shapes-cue-conflict=synthetic:shapes-cue-conflict?n=32&seed=0",
    "shapes-x=synthetic:shapes-x?n=32&seed=0",
    "shapes-captions=synthetic:shapes-captions?n=24&seed=0",
)


@pytest.fixture(scope="session")
def tiny_store_template(tmp_path_factory):
    """A store with every tiny model extracted on every shapes-world variant (built once per session).
    Model ids as stored: 'openclip:embedstore-tiny@random:0', 'openclip:embedstore-tiny@random:1',
    'timm:test_vit@random:0' (random weights: accuracies are near chance)."""
    from embedstore.extract.plan import plan_from_args
    from embedstore.extract.runner import run_extraction

    path = tmp_path_factory.mktemp("tiny") / "store"
    store = Store.create(path)
    plan = plan_from_args(list(TINY_MODELS), list(TINY_DATASETS), workers=0, chunk_rows=32, batch_size=32)
    run_extraction(store, plan, log=lambda msg: None, progress=False)
    return path


@pytest.fixture
def tiny_store(tiny_store_template, tmp_path) -> Store:
    """A writable copy of ``tiny_store_template`` for one test."""
    import shutil

    path = tmp_path / "tiny-store"
    shutil.copytree(tiny_store_template, path)
    return Store.open(path, readonly=False)
