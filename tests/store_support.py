"""Test helper: write chosen values straight into a store as a complete array, without any encoder."""

from __future__ import annotations

import numpy as np

from embedstore.store import Store


def put_array(store: Store, dataset: str, model: str, name: str, data: np.ndarray) -> None:
    """Write ``data`` as the complete array ``name`` of (model, dataset), one chunk, replacing an existing one."""
    store.delete_arrays(dataset, model, name)
    fingerprints = {"dataset": store.dataset_info(dataset)["fingerprint"],
                    "model": store.model_info(model)["fingerprint"], "settings": "test"}  # fmt: skip
    array = store.open_array_writer(dataset, model, name, shape=data.shape, dtype=str(data.dtype),
                                    chunk_rows=len(data), fingerprints=fingerprints)  # fmt: skip
    array.write_chunk(0, data)
    store.update_array_progress(dataset, model, name)
