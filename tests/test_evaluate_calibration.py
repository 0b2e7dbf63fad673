"""`embedstore eval calibration`: the runner on the tiny store (results, params, temperature protocols,
class subsets, bad input) and the click command."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from store_support import put_array

from embedstore.analysis.calibration import (
    evaluate_calibration,
    fit_temperature,
    negative_log_likelihood,
    reliability_diagram,
)
from embedstore.errors import AnalysisError
from embedstore.evaluate.calibration import run_calibration
from embedstore.evaluate.common import eval_data
from embedstore.sources import open_dataset
from embedstore_cli.eval_calibration import calibration_command

CLIP = "openclip:embedstore-tiny@random:0"
CLASSIFIER = "timm:test_vit@random:0"


def _results(store, **where) -> dict[str, float]:
    sql = "SELECT metric, value FROM results WHERE analysis = 'calibration'"
    params = []
    for column, value in where.items():
        sql += f" AND {column} = ?"
        params.append(value)
    return {r["metric"]: r["value"] for r in store.query(sql, params)}


def _invoke(store, *args: str):
    return CliRunner().invoke(calibration_command, ["--store", str(store.path), *args])


def test_results_land_in_the_catalog_with_every_parameter(tiny_store) -> None:
    (run,) = run_calibration(tiny_store, [CLIP], ["shapes"])
    stored = _results(tiny_store, model=CLIP, dataset="shapes")
    data = eval_data(tiny_store, CLIP, "shapes")
    held_out = np.isin(data.rows, run.eval_rows)
    expected = evaluate_calibration(data.logits[held_out], data.labels[held_out])
    for metric in ("ece", "adaptive_ece", "mce", "nll", "brier"):
        assert stored[metric] == pytest.approx(getattr(expected, metric), abs=1e-9)
        assert stored[metric + "_scaled"] == pytest.approx(getattr(run.after, metric), abs=1e-9)
    assert stored["acc1"] == pytest.approx(expected.acc)
    assert stored["temperature"] == pytest.approx(run.temperature)
    assert (stored["n"], stored["fit_n"]) == (32, 32)

    for suffix, temperature in (("", 1.0), ("_scaled", run.temperature)):
        counts = [stored[f"reliability_count{suffix}@bin:{b}"] for b in range(15)]
        assert sum(counts) == 32
        from scipy.special import softmax

        diagram = reliability_diagram(softmax(data.logits[held_out] / temperature, axis=1), data.labels[held_out])
        for b in np.flatnonzero(diagram.counts):
            assert stored[f"reliability_acc{suffix}@bin:{b}"] == pytest.approx(diagram.accuracy[b])
            assert stored[f"reliability_conf{suffix}@bin:{b}"] == pytest.approx(diagram.mean_confidence[b])
        for b in np.flatnonzero(diagram.counts == 0):
            assert f"reliability_acc{suffix}@bin:{b}" not in stored

    (row,) = tiny_store.query("SELECT DISTINCT params FROM results WHERE analysis = 'calibration'")
    assert json.loads(row["params"]) == {
        "logits": "zero-shot", "prompt_set": "default", "class_subset": False, "fit_dataset": "shapes",
        "fit_split": 0.5, "seed": 0, "n_bins": 15, "temperature_bounds": [0.05, 20.0],
    }  # fmt: skip


def test_rerun_replaces_rows_and_other_parameters_add_rows(tiny_store) -> None:
    def count() -> int:
        return tiny_store.query("SELECT count(*) AS n FROM results WHERE analysis = 'calibration'")[0]["n"]

    run_calibration(tiny_store, [CLIP], ["shapes"])
    first = count()
    run_calibration(tiny_store, [CLIP], ["shapes"])
    assert count() == first
    run_calibration(tiny_store, [CLIP], ["shapes"], seed=1)
    hashes = tiny_store.query("SELECT count(DISTINCT params_hash) AS n FROM results WHERE analysis = 'calibration'")
    assert hashes[0]["n"] == 2 and count() > first


@pytest.mark.parametrize("model", [CLIP, "openclip:embedstore-tiny@random:1"])
def test_temperature_keeps_accuracy_and_does_not_raise_the_fit_nll(tiny_store, model: str) -> None:
    for run in run_calibration(tiny_store, [model], ["shapes", "shapes-v2", "shapes-sketch"], seed=3):
        assert run.after.acc == run.before.acc
        data = eval_data(tiny_store, model, run.dataset)
        fit = np.isin(data.rows, run.fit_rows)
        assert not np.intersect1d(run.fit_rows, run.eval_rows).size
        assert np.array_equal(np.union1d(run.fit_rows, run.eval_rows), data.rows)
        fitted = negative_log_likelihood(data.logits[fit], data.labels[fit], run.temperature)
        assert fitted <= negative_log_likelihood(data.logits[fit], data.labels[fit], 1.0) + 1e-12


def test_calibrate_on_applies_one_temperature_fitted_on_all_of_that_dataset(tiny_store) -> None:
    runs = run_calibration(tiny_store, [CLIP], ["shapes-v2", "shapes-sketch"], calibrate_on="shapes")
    reference = eval_data(tiny_store, CLIP, "shapes")
    expected = fit_temperature(reference.logits, reference.labels)
    assert [r.dataset for r in runs] == ["shapes-v2", "shapes-sketch"]
    for run in runs:
        assert run.temperature == pytest.approx(expected, rel=1e-9)
        assert (run.fit_n, run.before.n) == (64, 32)
        stored = _results(tiny_store, model=CLIP, dataset=run.dataset)
        assert stored["temperature"] == pytest.approx(expected, rel=1e-9)
        assert stored["acc1"] == run.before.acc == run.after.acc


def test_calibrate_on_with_a_split_reports_the_held_out_rows_of_that_dataset(tiny_store) -> None:
    own, shifted = run_calibration(tiny_store, [CLIP], ["shapes", "shapes-v2"], calibrate_on="shapes", split=0.25)
    assert own.temperature == shifted.temperature
    assert (own.fit_n, own.before.n, shifted.before.n) == (16, 48, 32)
    assert not np.intersect1d(own.fit_rows, own.eval_rows).size
    assert own.params["fit_split"] == shifted.params["fit_split"] == 0.25


def test_calibrate_on_a_reported_dataset_without_a_split_is_refused(tiny_store) -> None:
    with pytest.raises(AnalysisError, match="also the --calibrate-on dataset"):
        run_calibration(tiny_store, [CLIP], ["shapes", "shapes-v2"], calibrate_on="shapes")
    assert not _results(tiny_store)


def test_a_class_subset_dataset_is_scored_on_the_sliced_head_logits(tiny_store, tmp_path) -> None:
    subset = [3, 17, 42, 99, 150, 420, 777, 999]
    (tmp_path / "subset.txt").write_text("\n".join(map(str, subset)) + "\n")
    tiny_store.register_dataset(
        open_dataset("shapes-sub", "synthetic:shapes?n=40&seed=5", subset=str(tmp_path / "subset.txt"))
    )
    head = np.random.default_rng(0).normal(scale=4.0, size=(40, 1000)).astype(np.float32)
    put_array(tiny_store, "shapes-sub", CLASSIFIER, "logits", head)

    (run,) = run_calibration(tiny_store, [CLASSIFIER], ["shapes-sub"])
    labels = tiny_store.sample_table("shapes-sub")["label"]
    held_out = run.eval_rows
    expected = evaluate_calibration(head[held_out][:, subset], labels[held_out])
    assert run.before.acc == pytest.approx(expected.acc)
    assert run.before.nll == pytest.approx(expected.nll, rel=1e-6)
    assert run.params["logits"] == "classifier head" and run.params["class_subset"] is True
    assert run.params["prompt_set"] is None


def test_globs_skip_datasets_and_heads_that_do_not_fit_while_exact_names_are_errors(tiny_store) -> None:
    runs = run_calibration(tiny_store, ["*"], ["shapes*"])
    assert {r.model for r in runs} == {CLIP, "openclip:embedstore-tiny@random:1"}  # the 1000-way head does not fit
    assert {r.dataset for r in runs} == {"shapes", "shapes-v2", "shapes-sketch", "shapes-cue-conflict", "shapes-x"}
    with pytest.raises(AnalysisError, match="shapes-captions has no classes"):
        run_calibration(tiny_store, [CLIP], ["shapes", "shapes-captions"])
    with pytest.raises(AnalysisError, match="no model among timm:test_vit@random:0 can be calibrated"):
        run_calibration(tiny_store, ["timm:*"], ["shapes*"])


def test_command_prints_a_table_and_json(tiny_store) -> None:
    table = _invoke(tiny_store, "--model", "openclip:*", "--dataset", "shapes", "--dataset", "shapes-v?")
    assert table.exit_code == 0, table.output
    lines = table.output.splitlines()
    assert lines[0].split()[:4] == ["model", "dataset", "fit_on", "temperature"]
    assert sum(line.startswith("openclip:") for line in lines) == 4

    result = _invoke(tiny_store, "--model", CLIP, "--calibrate-on", "shapes", "--dataset", "shapes-sketch", "--json")
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert row["fit_on"] == "shapes" and row["params"]["fit_split"] is None
    assert sum(row["reliability"]["after"]["count"]) == row["n"] == 32


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", CLASSIFIER, "--dataset", "shapes"], "has 1000 outputs but dataset shapes has 8 classes"),
        (["--model", CLIP, "--dataset", "shapes", "--calibrate-on", "shapes"], "also the --calibrate-on dataset"),
        (["--model", CLIP, "--dataset", "nope"], "no dataset in store"),
        (["--model", CLIP, "--dataset", "shapes", "--prompts", "nope"], "prompt set 'nope' is not defined"),
    ],
)
def test_bad_input_is_one_line_through_the_command(tiny_store, args: list[str], message: str) -> None:
    result = _invoke(tiny_store, *args)
    assert result.exit_code == 1
    assert message in result.output and result.output.count("\n") == 1, result.output


def test_out_of_range_options_are_usage_errors_naming_the_option(tiny_store) -> None:
    for args, option in ((["--split", "1.5"], "--split"), (["--bins", "0"], "--bins"), (["--bins", "1001"], "--bins")):
        result = _invoke(tiny_store, "--model", CLIP, "--dataset", "shapes", *args)
        assert result.exit_code == 2 and f"Invalid value for '{option}'" in result.output, result.output


def test_nan_in_an_embedding_is_one_line_naming_the_row(tiny_store) -> None:
    image = tiny_store.read_array("shapes-v2", CLIP, "image_emb")
    image[7, 3] = np.nan
    put_array(tiny_store, "shapes-v2", CLIP, "image_emb", image)
    result = _invoke(tiny_store, "--model", CLIP, "--dataset", "shapes-v2")
    assert result.exit_code == 1
    assert "image_emb of model openclip:embedstore-tiny@random:0 on dataset shapes-v2: row 7" in result.output
    assert result.output.count("\n") == 1
