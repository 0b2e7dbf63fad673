"""An extraction running (or stopped) on one dataset does not stop `--dataset '*'` analyses of the others.

A pair a glob matched whose arrays are not finished is skipped with the reason; a pair named exactly
is an error saying the array is incomplete or not finished.
"""

from __future__ import annotations

import pytest

from embedstore.errors import AnalysisError, StoreError
from embedstore.evaluate.calibration import run_calibration
from embedstore.evaluate.factors import run_factors
from embedstore.evaluate.ood import run_ood
from embedstore.evaluate.probe import run_probe
from embedstore.evaluate.prompts import run_ablation
from embedstore.evaluate.retrieval import run_retrieval
from embedstore.evaluate.robustness import run_robustness
from embedstore.evaluate.shape_bias import run_shape_bias
from embedstore.evaluate.zeroshot import run_zeroshot

CLIP0, CLIP1 = "openclip:embedstore-tiny@random:0", "openclip:embedstore-tiny@random:1"
STATES = {  # catalog row as left by an extraction: just begun (chunk not written), or every chunk written
    "begun": ("pending", 0, "is incomplete \\(0/32 rows\\)"),
    "written": ("partial", 0, "has every row written but its writer has not finished it"),
}


def _unfinish(store, dataset: str, model: str, name: str, state: str) -> None:
    status, rows_done, _ = STATES[state]
    info = store.list_arrays(dataset, model, name)[0]
    if state == "begun":
        for marker in (store.path / "arrays.zarr" / info.path / "done").iterdir():
            marker.unlink()
    with store.catalog.write() as con:
        con.execute("UPDATE arrays SET status = ?, rows_done = ? WHERE dataset = ? AND model = ? AND name = ?",
                    [status, rows_done, dataset, model, name])  # fmt: skip


@pytest.fixture(params=sorted(STATES))
def store(tiny_store, request):
    """The tiny store with CLIP1's image_emb on shapes-v2 as a running (or stopped) extraction leaves it."""
    _unfinish(tiny_store, "shapes-v2", CLIP1, "image_emb", request.param)
    tiny_store.state = request.param
    return tiny_store


def test_a_glob_skips_an_unfinished_pair_and_scores_the_rest(store) -> None:
    not_finished = "its image_emb on shapes-v2 is not finished (0/32 rows as last recorded)"
    skipped: dict[str, str] = {}
    rows = run_zeroshot(store, ["openclip:*"], ["shapes", "shapes-v2"], skipped=skipped)
    assert sorted((r.model, r.dataset) for r in rows) == [(CLIP0, "shapes"), (CLIP0, "shapes-v2"), (CLIP1, "shapes")]
    assert skipped[CLIP1].startswith(not_finished)
    skipped = {}
    runs = run_calibration(store, ["openclip:*"], ["shapes-v2"], skipped=skipped)
    assert [r.model for r in runs] == [CLIP0] and skipped[CLIP1].startswith(not_finished)
    skipped = {}
    assert [r.model for r in run_ablation(store, ["openclip:*"], ["shapes-v2"], skipped)] == [CLIP0]
    assert skipped[CLIP1].startswith(not_finished)
    skipped = {}
    runs = run_ood(store, ["openclip:*"], "shapes", ["shapes-v2"], ["msp"], skipped=skipped)
    assert {r.model for r in runs} == {CLIP0} and skipped[CLIP1].startswith(not_finished)
    report = run_probe(store, ["openclip:*"], "shapes", ["shapes-v2"])
    assert [row.model for row in report.rows] == [CLIP0] and report.skipped[CLIP1].startswith(not_finished)
    with pytest.raises(AnalysisError, match=f"have no acc1 on every dataset: {CLIP1}"):  # two models left: no line
        run_robustness(store, ["*"], "shapes", ["shapes-v2"])


def test_single_dataset_analyses_and_retrieval_skip_it_too(tiny_store) -> None:
    for dataset, name in (("shapes-cue-conflict", "image_emb"), ("shapes-x", "image_emb"),
                          ("shapes-captions", "caption_emb")):  # fmt: skip
        _unfinish(tiny_store, dataset, CLIP1, name, "written")
    bias = run_shape_bias(tiny_store, ["openclip:*"], "shapes-cue-conflict")
    assert [row.model for row in bias.rows] == [CLIP0] and "not finished" in bias.skipped[CLIP1]
    factors = run_factors(tiny_store, ["openclip:*"], "shapes-x")
    assert list(factors.tables) == [CLIP0] and "not finished" in factors.skipped[CLIP1]
    skipped: dict[str, str] = {}
    assert [row.model for row in run_retrieval(tiny_store, ["openclip:*"], ["shapes-captions"], skipped=skipped)] == [
        CLIP0
    ]
    assert list(skipped) == [CLIP1]
    assert skipped[CLIP1].startswith("its caption_emb on shapes-captions is not finished (")
    assert skipped[CLIP1].endswith("rows as last recorded): its extraction is running or was stopped")


def test_a_pair_named_exactly_is_an_error_saying_it_is_not_finished(store) -> None:
    message = "shapes-v2/.*/image_emb " + STATES[store.state][2]
    with pytest.raises(StoreError, match=message):
        run_zeroshot(store, [CLIP1], ["shapes-v2"])
    with pytest.raises(StoreError, match=message):
        run_calibration(store, [CLIP1], ["shapes-v2"])
    with pytest.raises(StoreError, match=message):
        run_ood(store, [CLIP1], "shapes", ["shapes-v2"], ["msp"])
