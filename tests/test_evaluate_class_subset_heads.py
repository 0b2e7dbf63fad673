"""Classifier heads on a class-subset dataset: a head must hold every column of the subset.

A 1000-way head scored on ImageNet-R's 200 classes is sliced to those columns; a head narrower than
the highest column cannot be scored. Named exactly, such a classifier is one error naming it; swept
in by a glob, it is skipped and the others are scored (it was an IndexError or an error that named
no model).
"""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from embedstore.errors import AnalysisError
from embedstore.evaluate.calibration import run_calibration
from embedstore.evaluate.ood import run_ood
from embedstore.evaluate.zeroshot import run_zeroshot
from embedstore.store import Store
from embedstore_cli.main import cli
from tests.imported_classifiers import import_rows, register_rows_only_dataset

SUBSET = [1, 4, 12]
N = 60


@pytest.fixture()
def store(tmp_path) -> Store:
    store = Store.create(tmp_path / "store")
    rng = np.random.default_rng(0)
    labels = rng.integers(0, len(SUBSET), N)
    register_rows_only_dataset(store, "sub", ["a", "b", "c"], labels.tolist(), class_subset=SUBSET)
    register_rows_only_dataset(store, "far", ["a", "b", "c"], [-1] * N)
    wide = rng.standard_normal((N, 20)).astype(np.float32)
    wide[np.arange(N), np.asarray(SUBSET)[labels]] += 4.0
    wide[:, 0] += 100.0  # a column outside the subset: counted only if slicing were skipped
    import_rows(store, tmp_path / "in", "imp:wide", "sub", "logits", wide)
    import_rows(store, tmp_path / "in", "imp:narrow", "sub", "logits", rng.standard_normal((N, 8)).astype(np.float32))
    import_rows(store, tmp_path / "in", "imp:narrow", "far", "logits", rng.standard_normal((N, 8)).astype(np.float32))
    return store


def test_a_glob_skips_a_head_narrower_than_the_subset_and_scores_the_others(store) -> None:
    skipped: dict[str, str] = {}
    rows = run_zeroshot(store, ["imp:*"], ["sub", "fa*"], skipped=skipped)
    assert [r.model for r in rows] == ["imp:wide"] and rows[0].result.acc1 > 0.9
    assert skipped == {"far": "no labelled, decodable rows (an OOD set?): zero-shot classification needs labels",
                       "imp:narrow": "its head does not fit the classes of sub"}  # fmt: skip
    skipped = {}
    runs = run_calibration(store, ["imp:*"], ["sub"], skipped=skipped)
    assert [r.model for r in runs] == ["imp:wide"]
    assert skipped == {"imp:narrow": "its head does not fit the classes of sub"}
    out = CliRunner().invoke(
        cli, ["eval", "zeroshot", "--store", str(store.path), "--model", "imp:*", "--dataset", "sub"]
    )
    assert out.exit_code == 0 and "skipped imp:narrow: its head does not fit the classes of sub\n" in out.output


def test_a_named_head_narrower_than_the_subset_is_one_error_naming_it(store) -> None:
    message = "classifier imp:narrow has 8 outputs but dataset sub's class subset names column 12"
    with pytest.raises(AnalysisError, match=message):
        run_zeroshot(store, ["imp:narrow"], ["sub"])
    with pytest.raises(AnalysisError, match=message):
        run_calibration(store, ["imp:narrow"], ["sub"])
    with pytest.raises(AnalysisError, match="logits of model imp:narrow have 8 outputs but ID dataset sub's class"):
        run_ood(store, ["imp:narrow"], "sub", ["far"], ["msp"])
    assert not store.query("SELECT * FROM results")
