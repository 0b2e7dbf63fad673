"""ImageNet-X factor accuracy, error ratios, top vs multi annotations, prototype filtering."""

from __future__ import annotations

import numpy as np
import pytest

from embedstore.analysis.factors import (
    IMAGENET_X_FACTORS,
    STUDY_DEFAULT_FACTORS,
    factor_accuracy,
    factor_annotations_from_strings,
    factor_effective_robustness,
    normalize_factor_name,
)
from embedstore.errors import AnalysisError

NAMES = ("pose", "background", "color")


def test_factor_list_matches_imagenet_x() -> None:
    assert len(IMAGENET_X_FACTORS) == 16 and len(set(IMAGENET_X_FACTORS)) == 16
    assert IMAGENET_X_FACTORS[:4] == ("pose", "background", "pattern", "color")
    assert IMAGENET_X_FACTORS[-3:] == ("style", "brighter", "multiple_objects")
    assert {"partial_view", "object_blocking", "person_blocking"} <= set(IMAGENET_X_FACTORS)
    assert IMAGENET_X_FACTORS[:10] == STUDY_DEFAULT_FACTORS
    assert normalize_factor_name(" Partial view ") == "partial_view"
    assert normalize_factor_name("multiple-objects") == "multiple_objects"


def test_error_ratios_on_hand_built_table() -> None:
    # 8 images, top mode: pose x3 (2 right), background x3 (1 right), color x2 (2 right)
    factor_of = ["pose", "pose", "pose", "background", "background", "background", "color", "color"]
    correct = np.array([1, 1, 0, 1, 0, 0, 1, 1], dtype=bool)
    annotations = factor_annotations_from_strings(factor_of, "top", NAMES)
    table = factor_accuracy(correct, annotations.matrix, NAMES, "top", drop_prototypes=False)
    assert table.overall_accuracy == pytest.approx(5 / 8)
    assert table.count.tolist() == [3, 3, 2]
    assert table.accuracy == pytest.approx([2 / 3, 1 / 3, 1.0])
    # (1 - acc_f) / (1 - 5/8)
    assert table.error_ratio == pytest.approx([(1 / 3) / (3 / 8), (2 / 3) / (3 / 8), 0.0])
    assert table.worst_factor == "background"
    assert (table.n_images, table.n_prototypes_dropped, table.mode) == (8, 0, "top")


def test_perfect_model_has_nan_error_ratio() -> None:
    annotations = factor_annotations_from_strings(["pose", "color", "color"], "top", NAMES)
    table = factor_accuracy([True, True, True], annotations.matrix, NAMES, "top", drop_prototypes=False)
    assert table.overall_accuracy == 1.0
    assert np.all(np.isnan(table.error_ratio))
    assert table.count.tolist() == [1, 0, 2] and np.isnan(table.accuracy[1])


def test_multi_mode_counts_every_factor_and_images_without_factor() -> None:
    strings = ["pose, background", "background", "", "color,pose", None]
    annotations = factor_annotations_from_strings(strings, "multi", NAMES)
    assert annotations.rows.tolist() == [0, 1, 2, 3]  # the None sample is unannotated
    assert annotations.matrix.tolist() == [
        [True, True, False],
        [False, True, False],
        [False, False, False],
        [True, False, True],
    ]
    correct_all = np.array([True, False, False, True, True])
    table = factor_accuracy(correct_all[annotations.rows], annotations.matrix, NAMES, "multi", drop_prototypes=False)
    assert table.count.tolist() == [2, 2, 1]
    assert table.accuracy == pytest.approx([1.0, 0.5, 1.0])
    assert table.overall_accuracy == pytest.approx(0.5)  # the factor-less image counts in the average


def test_top_mode_rejects_several_factors_per_image() -> None:
    with pytest.raises(AnalysisError, match=r"annotations\[0\].*exactly one"):
        factor_annotations_from_strings(["pose,color"], "top", NAMES)
    matrix = np.array([[1, 1, 0], [0, 1, 0]], dtype=bool)
    with pytest.raises(AnalysisError, match="row 0 has 2 factors"):
        factor_accuracy([True, False], matrix, NAMES, "top", drop_prototypes=False)
    table = factor_accuracy([True, False], matrix, NAMES, "multi", drop_prototypes=False)
    assert table.count.tolist() == [1, 2, 0]


def test_prototype_filter_is_default_and_drops_flagged_images() -> None:
    annotations = factor_annotations_from_strings(["pose", "pose", "color", "color"], "top", NAMES)
    correct = np.array([False, True, True, False])
    prototypes = np.array([True, False, False, False])
    table = factor_accuracy(correct, annotations.matrix, NAMES, "top", is_prototype=prototypes)
    assert table.n_images == 3 and table.n_prototypes_dropped == 1
    assert table.count.tolist() == [1, 0, 2]
    assert table.accuracy[0] == 1.0 and table.overall_accuracy == pytest.approx(2 / 3)
    kept = factor_accuracy(correct, annotations.matrix, NAMES, "top", is_prototype=prototypes, drop_prototypes=False)
    assert kept.n_images == 4 and kept.accuracy[0] == 0.5
    with pytest.raises(AnalysisError, match="is_prototype"):
        factor_accuracy(correct, annotations.matrix, NAMES, "top")


def test_reported_subset_keeps_overall_accuracy_over_all_images() -> None:
    annotations = factor_annotations_from_strings(["pose", "background", "color"], "top", NAMES)
    table = factor_accuracy(
        [True, False, False], annotations.matrix, NAMES, "top", drop_prototypes=False, factors=["color", "pose"]
    )
    assert table.factor_names == ("color", "pose")
    assert table.accuracy.tolist() == [0.0, 1.0]
    assert table.overall_accuracy == pytest.approx(1 / 3)
    assert table.worst_factor == "color"


def test_factor_effective_robustness_across_models() -> None:
    rng = np.random.default_rng(0)
    n = 400
    factor_of = rng.choice(NAMES, size=n)
    annotations = factor_annotations_from_strings(list(factor_of), "top", NAMES)
    tables = []
    for skill in np.linspace(0.3, 0.9, 6):
        correct = rng.random(n) < skill
        correct[factor_of == "color"] &= rng.random(int(np.sum(factor_of == "color"))) < 0.9
        tables.append(factor_accuracy(correct, annotations.matrix, NAMES, "top", drop_prototypes=False))
    result = factor_effective_robustness(tables, regressor="ols")
    assert set(result.trends) == set(NAMES) and result.skipped_factors == ()
    assert result.effective_robustness.shape == (6, 3)
    assert all(trend.n == 6 and trend.r2 > 0.8 for trend in result.trends.values())
    # OLS residuals in transformed space sum to zero, so ER straddles zero for every factor
    assert np.all(result.effective_robustness.min(axis=0) < 0) and np.all(result.effective_robustness.max(axis=0) > 0)
    only_three = factor_effective_robustness(tables, reference=[True, True, True, False, False, False], regressor="ols")
    assert only_three.trends["pose"].n == 3


def test_factor_effective_robustness_skips_empty_factors() -> None:
    annotations = factor_annotations_from_strings(["pose", "pose", "color", "color"], "top", NAMES)
    tables = [
        factor_accuracy(c, annotations.matrix, NAMES, "top", drop_prototypes=False)
        for c in ([1, 0, 1, 0], [1, 1, 1, 0], [1, 1, 1, 1], [0, 0, 1, 0])
    ]
    result = factor_effective_robustness(tables, regressor="ols")
    assert result.skipped_factors == ("background",)
    assert np.all(np.isnan(result.effective_robustness[:, 1]))


@pytest.mark.parametrize(
    ("strings", "mode", "message"),
    [
        ([None, None], "top", "no factor annotations"),
        (["pose", "glare"], "top", r"annotations\[1\]: unknown factor 'glare'"),
        ([""], "top", "exactly one"),
        (["pose"], "several", "mode"),
        ([3], "top", "expected a string"),
    ],
)
def test_annotation_parsing_rejects_bad_input(strings: list, mode: str, message: str) -> None:
    with pytest.raises(AnalysisError, match=message):
        factor_annotations_from_strings(strings, mode, NAMES)


def test_factor_accuracy_rejects_bad_input() -> None:
    matrix = np.eye(3, dtype=bool)
    with pytest.raises(AnalysisError, match="factor_matrix: expected shape"):
        factor_accuracy([True, False], matrix, NAMES, drop_prototypes=False)
    with pytest.raises(AnalysisError, match="factors: glare"):
        factor_accuracy([True, False, True], matrix, NAMES, drop_prototypes=False, factors=["glare"])
    with pytest.raises(AnalysisError, match="correct: entries"):
        factor_accuracy([2, 0, 1], matrix, NAMES, drop_prototypes=False)
    with pytest.raises(AnalysisError, match="duplicates"):
        factor_accuracy([True, False, True], matrix, ("pose", "Pose", "color"), drop_prototypes=False)
    with pytest.raises(AnalysisError, match="no annotated image"):
        factor_accuracy([True], np.array([[True, False, False]]), NAMES, is_prototype=[True])
    with pytest.raises(AnalysisError, match="tables"):
        factor_effective_robustness([])
