"""An extraction running (or stopped) on one dataset does not stop `--dataset '*'` analyses of the others.

A pair a glob matched whose arrays are not finished is skipped with the reason; a pair named exactly
is an error saying the array is incomplete.
"""

from __future__ import annotations

import pytest

from embedstore.errors import AnalysisError, StoreError
from embedstore.evaluate.calibration import run_calibration
from embedstore.evaluate.prompts import run_ablation
from embedstore.evaluate.robustness import run_robustness
from embedstore.evaluate.zeroshot import run_zeroshot

CLIP0, CLIP1 = "openclip:embedstore-tiny@random:0", "openclip:embedstore-tiny@random:1"
NOT_FINISHED = "its image_emb on shapes-v2 is not finished (0/32 rows as last recorded)"


@pytest.fixture
def store(tiny_store):
    """The tiny store with CLIP1's image_emb on shapes-v2 as an extraction that has just begun leaves it:
    registered, its chunk not written yet."""
    info = tiny_store.list_arrays("shapes-v2", CLIP1, "image_emb")[0]
    (tiny_store.path / "arrays.zarr" / info.path / "done" / "0").unlink()
    with tiny_store.catalog.write() as con:
        con.execute(
            "UPDATE arrays SET status = 'pending', rows_done = 0 WHERE dataset = 'shapes-v2' AND model = ? "
            "AND name = 'image_emb'",
            [CLIP1],
        )
    return tiny_store


def test_a_glob_skips_an_unfinished_pair_and_scores_the_rest(store) -> None:
    skipped: dict[str, str] = {}
    rows = run_zeroshot(store, ["openclip:*"], ["shapes", "shapes-v2"], skipped=skipped)
    assert sorted((r.model, r.dataset) for r in rows) == [(CLIP0, "shapes"), (CLIP0, "shapes-v2"), (CLIP1, "shapes")]
    assert skipped[CLIP1].startswith(NOT_FINISHED)
    skipped = {}
    runs = run_calibration(store, ["openclip:*"], ["shapes-v2"], skipped=skipped)
    assert [r.model for r in runs] == [CLIP0] and skipped[CLIP1].startswith(NOT_FINISHED)
    skipped = {}
    assert [r.model for r in run_ablation(store, ["openclip:*"], ["shapes-v2"], skipped)] == [CLIP0]
    assert skipped[CLIP1].startswith(NOT_FINISHED)
    with pytest.raises(AnalysisError, match=f"have no acc1 on every dataset: {CLIP1}"):  # two models left: no line
        run_robustness(store, ["*"], "shapes", ["shapes-v2"])


def test_a_pair_named_exactly_is_an_error_saying_it_is_incomplete(store) -> None:
    with pytest.raises(StoreError, match=r"shapes-v2/.*/image_emb is incomplete \(0/32 rows\)"):
        run_zeroshot(store, [CLIP1], ["shapes-v2"])
    with pytest.raises(StoreError, match="is incomplete"):
        run_calibration(store, [CLIP1], ["shapes-v2"])
