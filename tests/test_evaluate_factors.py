"""eval factors: per-factor accuracy, error ratio and effective robustness on shapes-x, checked by hand."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from imported_classifiers import import_predictions
from scipy import stats

from embedstore.analysis.factors import IMAGENET_X_FACTORS, STUDY_DEFAULT_FACTORS
from embedstore.errors import AnalysisError
from embedstore.evaluate.factors import run_factors
from embedstore.store import Store
from embedstore_cli.eval_factors import factors_command

DATASET = "shapes-x"
HIT_RATES = {"import:f-a": 0.2, "import:f-b": 0.4, "import:f-c": 0.6, "import:f-d": 0.8}


def _predictions(labels: np.ndarray, hit_rate: float, seed: int) -> np.ndarray:
    hits = np.random.default_rng(seed).random(len(labels)) < hit_rate
    return np.where(hits, labels, (labels + 3) % 8)


@pytest.fixture(scope="module")
def factor_template(tiny_store_template, tmp_path_factory):
    """The tiny store plus four imported classifiers on shapes-x right on about 20, 40, 60, 80% of rows."""
    path = tmp_path_factory.mktemp("factors") / "store"
    shutil.copytree(tiny_store_template, path)
    store = Store.open(path, readonly=False)
    labels = store.sample_table(DATASET)["label"]
    with store.session():
        for seed, (model, rate) in enumerate(HIT_RATES.items()):
            import_predictions(store, path.parent / "logits", model, DATASET, _predictions(labels, rate, seed))
    return path


@pytest.fixture
def factor_store(factor_template, tmp_path):
    shutil.copytree(factor_template, tmp_path / "store")
    return Store.open(tmp_path / "store", readonly=False)


def _correct(store: Store, model: str) -> np.ndarray:
    labels = store.sample_table(DATASET)["label"]
    logits = store.read_array(DATASET, model, "logits")
    return np.argmax(logits, axis=1) == labels


def _factor_sets(store: Store, mode: str) -> list[set[str]]:
    values = store.annotations(DATASET, mode)[mode]
    return [set(filter(None, values[row].split(","))) for row in range(len(values))]


@pytest.mark.parametrize("mode", ["top", "multi"])
def test_factor_accuracy_and_error_ratio_match_a_hand_count(factor_store, mode):
    report = run_factors(factor_store, ["import:*"], DATASET, mode=mode, factors=IMAGENET_X_FACTORS)
    factor_sets = _factor_sets(factor_store, mode)
    for model, table in report.tables.items():
        correct = _correct(factor_store, model)
        overall = correct.mean()
        assert table.overall_accuracy == pytest.approx(overall) and table.n_images == len(correct)
        for j, factor in enumerate(IMAGENET_X_FACTORS):
            carriers = np.array([factor in s for s in factor_sets])
            assert table.count[j] == carriers.sum()
            if carriers.any():
                assert table.accuracy[j] == pytest.approx(correct[carriers].mean())
                assert table.error_ratio[j] == pytest.approx((1 - correct[carriers].mean()) / (1 - overall))
            else:
                assert np.isnan(table.accuracy[j])
        present = [f for j, f in enumerate(IMAGENET_X_FACTORS) if table.count[j]]
        assert table.worst_factor == min(present, key=lambda f: table.accuracy[IMAGENET_X_FACTORS.index(f)])


def test_per_factor_effective_robustness_matches_a_direct_fit(factor_store):
    report = run_factors(factor_store, ["import:*"], DATASET, regressor="ols")
    assert report.robustness is not None and report.reference_models == sorted(HIT_RATES)
    tables = [report.tables[m] for m in report.robustness_models]
    overall = np.array([t.overall_accuracy for t in tables])
    clip = lambda a: np.clip(a, 1e-4, 1 - 1e-4)  # noqa: E731 (the documented clipping, written out)
    for j, factor in enumerate(report.tables["import:f-a"].factor_names):
        acc_f = np.array([t.accuracy[j] for t in tables])
        if np.isnan(acc_f).any():
            assert factor in report.robustness.skipped_factors
            continue
        line = stats.linregress(stats.norm.ppf(clip(overall)), stats.norm.ppf(clip(acc_f)))
        expected = 100 * (acc_f - stats.norm.cdf(line.slope * stats.norm.ppf(clip(overall)) + line.intercept))
        np.testing.assert_allclose(report.robustness.effective_robustness[:, j], expected, atol=1e-9)

    stored = {
        (r["model"], r["metric"]): r["value"]
        for r in factor_store.query("SELECT model, metric, value FROM results WHERE analysis = 'factors'")
    }
    assert stored[("import:f-b", "acc1")] == pytest.approx(report.tables["import:f-b"].overall_accuracy)
    assert stored[("import:f-b", "effective_robustness@factor:pose")] == pytest.approx(
        report.robustness.effective_robustness[1, 0]
    )
    assert stored[(None, "slope@factor:pose")] == pytest.approx(report.robustness.trends["pose"].a)
    params = json.loads(
        factor_store.query("SELECT params FROM results WHERE analysis = 'factors' LIMIT 1")[0]["params"]
    )
    assert params["factors"] == list(STUDY_DEFAULT_FACTORS) and params["prototypes"] == "drop"
    assert params["mode"] == "top" and params["reference_models"] == sorted(HIT_RATES)


def test_prototypes_are_dropped_unless_kept(factor_store):
    with factor_store.catalog.write() as con:
        con.executemany("INSERT INTO annotations VALUES (?, ?, 'prototype', '1')", [(DATASET, r) for r in (0, 1, 2)])
    dropped = run_factors(factor_store, ["import:f-a"], DATASET)
    kept = run_factors(factor_store, ["import:f-a"], DATASET, keep_prototypes=True)
    assert (dropped.tables["import:f-a"].n_images, dropped.tables["import:f-a"].n_prototypes_dropped) == (29, 3)
    assert (kept.tables["import:f-a"].n_images, kept.tables["import:f-a"].n_prototypes_dropped) == (32, 0)
    assert dropped.tables["import:f-a"].overall_accuracy == pytest.approx(
        _correct(factor_store, "import:f-a")[3:].mean()
    )


def test_effective_robustness_needs_three_reference_models(factor_store):
    two = run_factors(factor_store, ["import:f-a", "import:f-b"], DATASET)
    assert two.robustness is None and "at least 3" in two.robustness_note
    assert two.tables["import:f-a"].n_images == 32  # the factor tables are still there
    with pytest.raises(AnalysisError, match="selects 2 model"):
        run_factors(factor_store, ["import:*"], DATASET, reference="model_id IN ('import:f-a', 'import:f-b')")


def test_selected_models_with_one_accuracy_leave_out_the_line_but_a_reference_must_fit(factor_store, tmp_path):
    labels = factor_store.sample_table(DATASET)["label"]
    for model in ("import:same-1", "import:same-2", "import:same-3"):  # right on the same rows: no spread
        import_predictions(factor_store, tmp_path / "same", model, DATASET, _predictions(labels, 0.5, seed=7))
    report = run_factors(factor_store, ["import:same-*"], DATASET)
    assert report.robustness is None and "no line through the selected models" in report.robustness_note
    assert len(report.tables) == 3  # the factor tables are still written
    with pytest.raises(AnalysisError, match="every reference model has the same accuracy"):
        run_factors(factor_store, ["import:same-*"], DATASET, reference="model_id LIKE 'import:same-%'")


def test_reference_models_are_fitted_on_but_not_reported(factor_store):
    report = run_factors(factor_store, ["import:f-a"], DATASET, reference="model_id LIKE 'import:f-%'")
    assert list(report.tables) == ["import:f-a"] and report.robustness is not None
    assert report.robustness_models[0] == "import:f-a" and len(report.robustness_models) == 4
    models = {r["model"] for r in factor_store.query("SELECT DISTINCT model FROM results WHERE analysis = 'factors'")}
    assert models == {"import:f-a", None}


def test_datasets_without_factor_annotations_and_unknown_factors_are_errors(factor_store):
    with pytest.raises(AnalysisError, match="no 'top' factor annotations"):
        run_factors(factor_store, ["import:*"], "shapes")
    with pytest.raises(AnalysisError, match=r"unknown ImageNet-X factor\(s\) 'hue'"):
        run_factors(factor_store, ["import:*"], DATASET, factors=["pose", "hue"])


def test_cli_table_and_json(factor_store):
    runner = CliRunner()
    args = ["--store", str(factor_store.path), "--model", "import:*", "--dataset", DATASET, "--factors", "pose,shape"]
    table = runner.invoke(factors_command, args)
    assert table.exit_code == 0, table.output
    assert "worst_factor" in table.output and "import:f-d" in table.output
    as_json = runner.invoke(factors_command, [*args, "--mode", "multi", "--json"])
    assert as_json.exit_code == 0, as_json.output
    payload = json.loads(as_json.output)
    assert payload["params"]["mode"] == "multi" and set(payload["models"][0]["factors"]) == {"pose", "shape"}
    assert set(payload["trends"]) <= {"pose", "shape"}
    error = runner.invoke(
        factors_command, ["--store", str(factor_store.path), "--model", "import:*", "--dataset", "shapes"]
    )
    assert error.exit_code == 1 and error.output.startswith("Error: dataset shapes has no 'top' factor annotations")
