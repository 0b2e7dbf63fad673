"""eval robustness: effective robustness over a reference group, from the tiny store plus imported models."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from imported_classifiers import add_classifier
from scipy import stats

from embedstore.errors import AnalysisError, EmbedstoreError
from embedstore.evaluate.robustness import check_model_filter, run_robustness, select_models_where
from embedstore.evaluate.zeroshot import run_zeroshot, zeroshot_result
from embedstore.store import Store
from embedstore_cli.eval_robustness import robustness_command

CLIP = "openclip:embedstore-tiny@random:0"
# (acc on shapes [64 rows], acc on shapes-v2 [32 rows]): five "ImageNet classifiers" near a line ...
REFERENCE = {
    "import:ref-a": (16 / 64, 6 / 32),
    "import:ref-b": (24 / 64, 9 / 32),
    "import:ref-c": (32 / 64, 13 / 32),
    "import:ref-d": (40 / 64, 18 / 32),
    "import:ref-e": (48 / 64, 21 / 32),
}
# ... and one "robust" model well above it
ROBUST = ("import:robust", (32 / 64, 24 / 32))
REFERENCE_FILTER = "group_label = 'ImageNet classifier'"


@pytest.fixture(scope="module")
def study_template(tiny_store_template, tmp_path_factory):
    """The tiny store plus six imported classifiers with chosen accuracies (built once per module)."""
    path = tmp_path_factory.mktemp("robustness") / "store"
    shutil.copytree(tiny_store_template, path)
    store = Store.open(path, readonly=False)
    with store.session():
        for model, (acc_id, acc_shift), group in [*((m, a, "ImageNet classifier") for m, a in REFERENCE.items()),
                                                  (*ROBUST, "robust")]:  # fmt: skip
            add_classifier(store, path.parent / "logits", model, {"shapes": acc_id, "shapes-v2": acc_shift}, group)
    return path


@pytest.fixture
def study_store(study_template, tmp_path):
    shutil.copytree(study_template, tmp_path / "store")
    return Store.open(tmp_path / "store", readonly=False)


def _probit_ols_er(acc_x: float, acc_y: float) -> float:
    """imagenet-testbed's recipe, written out: linregress on probit accuracies of the reference models."""
    ref = np.array(list(REFERENCE.values()))
    fit = stats.linregress(stats.norm.ppf(ref[:, 0]), stats.norm.ppf(ref[:, 1]))
    return 100.0 * (acc_y - stats.norm.cdf(fit.slope * stats.norm.ppf(acc_x) + fit.intercept))


def test_effective_robustness_matches_a_direct_probit_ols_fit(study_store):
    report = run_robustness(
        study_store, ["import:*", CLIP], "shapes", ["shapes-v2"], reference=REFERENCE_FILTER, regressor="ols"
    )
    assert report.reference_models == sorted(REFERENCE)
    (shift,) = report.shifts
    ref = np.array(list(REFERENCE.values()))
    line = stats.linregress(stats.norm.ppf(ref[:, 0]), stats.norm.ppf(ref[:, 1]))
    assert shift.trend.a == pytest.approx(line.slope, rel=1e-10)
    assert shift.trend.r2 == pytest.approx(line.rvalue**2, rel=1e-10)
    by_model = {row.model: row for row in shift.models}
    assert set(by_model) == {*REFERENCE, ROBUST[0], CLIP}
    for model, (acc_id, acc_shift) in [*REFERENCE.items(), ROBUST]:
        row = by_model[model]
        assert (row.acc1_id, row.acc1_shift) == (acc_id, acc_shift)
        assert row.effective_robustness == pytest.approx(_probit_ols_er(acc_id, acc_shift), abs=1e-9)
        assert row.in_reference == (model in REFERENCE)
        assert (row.acc1_id_source, row.acc1_shift_source) == ("computed", "computed")
    assert by_model[ROBUST[0]].effective_robustness > 20.0  # 75% observed where the line predicts ~43%

    stored = study_store.query(
        "SELECT model, metric, value, value_text, params FROM results WHERE analysis = 'robustness' "
        "AND dataset = 'shapes-v2'"
    )
    er = {r["model"]: r["value"] for r in stored if r["metric"] == "effective_robustness"}
    assert er == pytest.approx({row.model: row.effective_robustness for row in shift.models})
    params = json.loads(stored[0]["params"])
    assert params["id_dataset"] == "shapes" and params["transform"] == "probit" and params["regressor"] == "ols"
    assert params["reference"] == REFERENCE_FILTER and params["reference_models"] == sorted(REFERENCE)
    summary = {r["metric"]: r["value"] for r in stored if r["model"] is None}
    assert summary["slope"] == pytest.approx(line.slope) and summary["n_reference_models"] == 5
    sources = {r["value_text"] for r in stored if r["metric"] == "acc1_id_source"}
    assert sources == {"computed"}


def test_groups_get_their_own_statistics_and_small_groups_get_null(study_store):
    report = run_robustness(study_store, ["import:*"], "shapes", ["shapes-v2"], reference=REFERENCE_FILTER)
    groups = report.shifts[0].groups
    assert groups["ImageNet classifier"].n == 5 and groups["ImageNet classifier"].spearman == pytest.approx(1.0)
    assert groups["robust"].n == 1 and np.isnan(groups["robust"].slope)
    summary = {
        r["metric"]: r["value"]
        for r in study_store.query("SELECT metric, value FROM results WHERE analysis = 'robustness' AND model IS NULL")
    }
    assert summary["n_models@group:robust"] == 1 and summary["slope@group:robust"] is None
    assert summary["spearman@group:ImageNet classifier"] == pytest.approx(1.0)


def test_same_parameters_replace_rows_and_other_parameters_add_rows(study_store):
    def count() -> int:
        return study_store.query("SELECT count(*) AS n FROM results WHERE analysis = 'robustness'")[0]["n"]

    run_robustness(study_store, ["import:*"], "shapes", ["shapes-v2"], reference=REFERENCE_FILTER)
    first = count()
    run_robustness(study_store, ["import:*"], "shapes", ["shapes-v2"], reference=REFERENCE_FILTER)
    assert count() == first
    run_robustness(study_store, ["import:*"], "shapes", ["shapes-v2"], reference=REFERENCE_FILTER, transform="logit")
    assert count() == 2 * first


def test_stored_zeroshot_accuracy_is_used_for_the_same_prompt_set_only(study_store):
    study_store.put_results("zeroshot", [("acc1", 0.9), ("n", 64)], params={"prompt_set": "default"}, model=CLIP,
                            dataset="shapes")  # fmt: skip
    study_store.put_results("zeroshot", [("acc1", 0.1), ("n", 32)], params={"prompt_set": "other"}, model=CLIP,
                            dataset="shapes-v2")  # fmt: skip
    report = run_robustness(study_store, [CLIP], "shapes", ["shapes-v2"], reference=REFERENCE_FILTER)
    (row,) = report.shifts[0].models
    assert row.acc1_id == 0.9 and row.acc1_id_source == "results"
    assert row.acc1_shift_source == "computed" and row.acc1_shift != 0.1


def test_a_stored_accuracy_is_not_reused_once_bad_samples_change_the_rows(study_store):
    run_zeroshot(study_store, [CLIP], ["shapes", "shapes-v2"])
    study_store.record_bad_samples("shapes-v2", [(row, None, "truncated") for row in range(4)])
    report = run_robustness(study_store, [CLIP], "shapes", ["shapes-v2"], reference=REFERENCE_FILTER)
    (row,) = report.shifts[0].models
    assert row.acc1_id_source == "results"  # shapes still has the 64 rows its stored run scored
    assert row.acc1_shift_source == "computed"  # the stored run scored 32 rows; 28 are usable now
    assert row.acc1_shift == zeroshot_result(study_store, CLIP, "shapes-v2").acc1


def test_a_glob_skips_shifted_sets_without_the_prompt_set_and_a_named_one_fails(study_store):
    for dataset in ("shapes", "shapes-v2"):
        study_store.add_prompt_set(dataset, "two", study_store.templates(dataset)[:2])
    report = run_robustness(study_store, ["import:*", CLIP], "shapes", ["shapes-[vs]*"], reference=REFERENCE_FILTER,
                            prompt_set="two")  # fmt: skip
    assert [shift.shifted for shift in report.shifts] == ["shapes-v2"]
    assert report.skipped_datasets == {
        "shapes-sketch": "prompt set 'two' is not defined for it (the CLIP models are scored with it)"
    }
    with pytest.raises(EmbedstoreError, match="prompt set 'two' is not defined for dataset shapes-sketch"):
        run_robustness(study_store, ["import:*", CLIP], "shapes", ["shapes-sketch"], reference=REFERENCE_FILTER,
                       prompt_set="two")  # fmt: skip


def test_accuracies_of_zero_and_one_are_clipped_inside_the_transform(study_store, tmp_path):
    with study_store.session():
        add_classifier(study_store, tmp_path / "logits", "import:perfect", {"shapes": 1.0, "shapes-v2": 1.0})
        add_classifier(study_store, tmp_path / "logits", "import:hopeless", {"shapes": 0.0, "shapes-v2": 0.0})
    report = run_robustness(
        study_store, ["import:perfect", "import:hopeless"], "shapes", ["shapes-v2"], reference=REFERENCE_FILTER
    )
    rows = {row.model: row for row in report.shifts[0].models}
    assert all(np.isfinite(row.effective_robustness) for row in rows.values())
    trend = report.shifts[0].trend
    expected = stats.norm.cdf(trend.a * stats.norm.ppf(1 - 1e-4) + trend.b)
    assert rows["import:perfect"].predicted_acc1_shift == pytest.approx(expected)
    assert rows["import:perfect"].effective_robustness == pytest.approx(100 * (1.0 - expected))


def test_bootstrap_band_is_seeded_and_brackets_the_interval(study_store):
    def band(seed: int) -> list[tuple[float, float]]:
        report = run_robustness(study_store, ["import:*"], "shapes", ["shapes-v2"], reference=REFERENCE_FILTER,
                                regressor="ols", bootstrap=50, seed=seed)  # fmt: skip
        return [(r.effective_robustness_ci_low, r.effective_robustness_ci_high) for r in report.shifts[0].models]

    first = band(0)
    assert band(0) == first
    assert all(low <= high for low, high in first)
    assert study_store.query(
        "SELECT count(*) AS n FROM results WHERE metric = 'effective_robustness_ci_low'"
    )[0]["n"] == len(REFERENCE) + 1  # fmt: skip


def test_too_few_models_for_a_line_is_a_clear_error(study_store):
    with pytest.raises(AnalysisError, match="at least 3"):
        run_robustness(study_store, ["openclip:*"], "shapes", ["shapes-v2"])
    with pytest.raises(AnalysisError, match="selects 1 usable model"):
        run_robustness(study_store, ["import:*"], "shapes", ["shapes-v2"], reference="group_label = 'robust'")


def test_a_glob_skips_classifiers_whose_head_does_not_fit_and_a_named_one_fails(study_store):
    timm = "timm:test_vit@random:0"  # a 1000-way head on the 8 shapes classes
    report = run_robustness(study_store, ["*"], "shapes", ["shapes-v2"], reference=REFERENCE_FILTER)
    assert list(report.skipped) == [timm]
    assert timm not in {row.model for row in report.shifts[0].models}
    with pytest.raises(AnalysisError, match="1000 outputs"):
        run_robustness(study_store, [timm], "shapes", ["shapes-v2"], reference=REFERENCE_FILTER)


def test_a_glob_skips_shifted_sets_without_labelled_classes_and_a_named_one_fails(study_store):
    swept = ["shapes-v2", "shapes-[oc][oa]*"]  # also sweeps in shapes-ood (no labels) and shapes-captions (no classes)
    report = run_robustness(study_store, ["import:*"], "shapes", swept, reference=REFERENCE_FILTER)
    assert [shift.shifted for shift in report.shifts] == ["shapes-v2"] and not report.skipped
    assert report.skipped_datasets == {
        "shapes-captions": "no classes (a retrieval dataset): effective robustness needs classes",
        "shapes-ood": "no labelled, decodable rows (an OOD set?): effective robustness needs labels",
    }
    with pytest.raises(AnalysisError, match="shapes-ood has no labelled, decodable rows"):
        run_robustness(study_store, ["import:*"], "shapes", ["shapes-ood"], reference=REFERENCE_FILTER)
    with pytest.raises(AnalysisError, match="shapes-captions has no classes"):
        run_robustness(study_store, ["import:*"], "shapes", ["shapes-captions"], reference=REFERENCE_FILTER)


def test_in_distribution_dataset_is_an_error_when_named_as_a_shift_and_skipped_by_a_glob(study_store):
    with pytest.raises(AnalysisError, match=r"--shifted: shapes is the in-distribution dataset \(--id\)"):
        run_robustness(study_store, ["import:*"], "shapes", ["shapes", "shapes-v2"], reference=REFERENCE_FILTER)
    report = run_robustness(study_store, ["import:*"], "shapes", ["shape[s]", "shapes-v*"], reference=REFERENCE_FILTER)
    assert [shift.shifted for shift in report.shifts] == ["shapes-v2"]
    assert report.skipped_datasets == {"shapes": "the in-distribution dataset (--id)"}
    with pytest.raises(AnalysisError, match=r"no dataset matching shape\[s\] can be a shift \(shapes: the in-distrib"):
        run_robustness(study_store, ["import:*"], "shapes", ["shape[s]"], reference=REFERENCE_FILTER)
    result = CliRunner().invoke(robustness_command, ["--store", str(study_store.path), "--model", "import:*",
                                                     "--id", "shapes", "--shifted", "shapes*"])  # fmt: skip
    assert result.exit_code == 0, result.output
    no_logits = "no selected model has acc1 on it (no stored zero-shot result or logits that fit)"
    assert result.stderr.splitlines() == [
        "skipped shapes: the in-distribution dataset (--id)",
        "skipped shapes-captions: no classes (a retrieval dataset): effective robustness needs classes",
        f"skipped shapes-cue-conflict: {no_logits}",
        "skipped shapes-ood: no labelled, decodable rows (an OOD set?): effective robustness needs labels",
        f"skipped shapes-sketch: {no_logits}",
        f"skipped shapes-x: {no_logits}",
    ]
    assert "shapes-v2 vs shapes" in result.stdout


@pytest.mark.parametrize(
    "expression, reason",
    [
        ("kind = 'clip'; DROP TABLE models", "';'"),
        ("kind = 'clip') OR (true", "closes a parenthesis"),
        ("kind = 'clip' -- and more", "comment"),
        ("   ", "empty"),
    ],
)
def test_reference_filter_must_be_one_condition(expression, reason):
    with pytest.raises(AnalysisError, match=reason):
        check_model_filter(expression)


def test_reference_filter_allows_semicolons_in_strings_and_subqueries(study_store):
    assert check_model_filter("group_label = 'a;b'") == "group_label = 'a;b'"
    chosen = select_models_where(
        study_store, "model_id IN (SELECT model_id FROM models WHERE library = 'import') AND group_label <> 'robust'"
    )
    assert chosen == sorted(REFERENCE)
    with pytest.raises(AnalysisError, match="not a valid condition"):
        select_models_where(study_store, "no_such_column = 1")


def test_cli_prints_a_table_and_json(study_store):
    runner = CliRunner()
    args = ["--store", str(study_store.path), "--model", "import:*", "--id", "shapes", "--shifted", "shapes-v2",
            "--reference", REFERENCE_FILTER]  # fmt: skip
    table = runner.invoke(robustness_command, args)
    assert table.exit_code == 0, table.output
    assert "import:robust" in table.output and "over 5 reference models" in table.output
    header = next(line.split() for line in table.output.splitlines() if line.startswith("model "))
    assert header[-2:] == ["reference", "acc1_from"] and "ci_low" not in header
    banded = runner.invoke(robustness_command, [*args, "--bootstrap", "50"])
    assert banded.exit_code == 0, banded.output
    assert "note: shapes-v2: the 95% band resamples only 5 reference models, so it is coarse" in banded.stderr
    assert "e-1" not in banded.stdout  # no float noise such as -1.4e-15 printed as a bound
    as_json = runner.invoke(robustness_command, [*args, "--json", "--transform", "logit"])
    assert as_json.exit_code == 0, as_json.output
    payload = json.loads(as_json.output)
    assert payload["params"]["transform"] == "logit"
    assert {m["model"] for m in payload["shifts"][0]["models"]} == {*REFERENCE, ROBUST[0]}


def test_cli_user_errors_are_one_line(study_store):
    result = CliRunner().invoke(robustness_command, ["--store", str(study_store.path), "--model", "import:*",
                                                     "--id", "shapes", "--shifted", "shapes-v2",
                                                     "--reference", "1=1; DROP TABLE models"])  # fmt: skip
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "Error: reference: '1=1; DROP TABLE models' contains ';'; give a single condition, not statements"
    ]
    few = CliRunner().invoke(robustness_command, ["--store", str(study_store.path), "--model", "import:*", "--id",
                                                  "shapes", "--shifted", "shapes-v2", "--bootstrap", "1"])  # fmt: skip
    assert few.exit_code == 1 and few.output.strip().splitlines() == [
        "Error: bootstrap: the number of resamples must be 0 (none) or at least 41 for a 95% band, got 1"
    ]
