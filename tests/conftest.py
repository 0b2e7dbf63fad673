"""Shared fixtures. Every test runs offline: no hub, no downloads."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("EMBEDSTORE_LOCK_TIMEOUT", "20")

import pytest  # noqa: E402

from embedstore.store import Store  # noqa: E402

FINGERPRINTS = {"dataset": "d" * 64, "model": "m" * 64, "settings": "s" * 64}


@pytest.fixture
def store(tmp_path) -> Store:
    return Store.create(tmp_path / "store")
