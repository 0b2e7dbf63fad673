"""`read_finite`: NaN, infinite and (image_emb) all-zero rows are refused with the dataset row, in every
float dtype a store keeps, whether all rows or some are read."""

from __future__ import annotations

import numpy as np
import pytest
from store_support import put_array

from embedstore.errors import AnalysisError
from embedstore.evaluate.common import read_finite
from embedstore.sources import open_dataset


@pytest.fixture
def store(store):
    store.register_dataset(open_dataset("shapes", "synthetic:shapes?n=8&seed=0"))
    store.register_model({"model_id": "m", "kind": "clip", "fingerprint": "m"})
    return store


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize(("bad", "message"), [(np.nan, "holds NaN or infinite"), (-np.inf, "holds NaN or infinite"),
                                              (0.0, "is all zeros but is not in bad_samples")])  # fmt: skip
def test_a_bad_row_is_named_by_its_dataset_row(store, dtype, bad, message) -> None:
    values = np.random.default_rng(0).standard_normal((8, 4)).astype(dtype)
    values[5] = 1.0
    values[5, 2 if bad != 0.0 else slice(None)] = bad
    put_array(store, "shapes", "m", "image_emb", values)
    with pytest.raises(AnalysisError, match=f"image_emb of model m on dataset shapes: row 5 {message}"):
        read_finite(store, "shapes", "m", "image_emb")
    with pytest.raises(AnalysisError, match=f"row 5 {message}"):  # the dataset row, not the position (1)
        read_finite(store, "shapes", "m", "image_emb", np.array([2, 5, 7]))
    np.testing.assert_array_equal(read_finite(store, "shapes", "m", "image_emb", np.array([0, 7])), values[[0, 7]])
    if bad == 0.0:  # a zero row listed in bad_samples is an undecodable image's: left for the caller to drop
        store.record_bad_samples("shapes", [(5, None, "truncated")])
        assert read_finite(store, "shapes", "m", "image_emb").shape == (8, 4)


def test_zero_rows_of_other_arrays_and_negative_zero_are_values(store) -> None:
    logits = np.zeros((8, 3), dtype=np.float32)
    logits[1] = -0.0
    put_array(store, "shapes", "m", "logits", logits)
    assert read_finite(store, "shapes", "m", "logits").shape == (8, 3)  # a head may output zeros
