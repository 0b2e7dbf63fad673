"""Shape bias: 16-category mapping, 1000->16 aggregation, shape==texture drop, direct 16-way decisions."""

from __future__ import annotations

import numpy as np
import pytest

from embedstore.analysis.shape_bias import (
    HUMAN_CATEGORIES,
    HUMAN_CATEGORY_IMAGENET_INDICES,
    category_decisions,
    imagenet_probabilities_to_16,
    parse_cue_conflict_filename,
    shape_bias,
)
from embedstore.errors import AnalysisError


def test_categories_and_index_lists_match_model_vs_human() -> None:
    assert tuple(sorted(HUMAN_CATEGORIES)) == HUMAN_CATEGORIES and len(HUMAN_CATEGORIES) == 16
    assert tuple(HUMAN_CATEGORY_IMAGENET_INDICES) == HUMAN_CATEGORIES
    sizes = {name: len(indices) for name, indices in HUMAN_CATEGORY_IMAGENET_INDICES.items()}
    assert sizes == {
        "airplane": 1, "bear": 4, "bicycle": 2, "bird": 49, "boat": 5, "bottle": 7, "car": 3, "cat": 6,
        "chair": 4, "clock": 3, "dog": 109, "elephant": 2, "keyboard": 2, "knife": 1, "oven": 1, "truck": 8,
    }  # fmt: skip
    every = [index for indices in HUMAN_CATEGORY_IMAGENET_INDICES.values() for index in indices]
    assert len(every) == len(set(every)) == 207 and min(every) >= 0 and max(every) < 1000
    assert HUMAN_CATEGORY_IMAGENET_INDICES["knife"] == (499,)
    assert HUMAN_CATEGORY_IMAGENET_INDICES["truck"] == (555, 569, 656, 675, 717, 734, 864, 867)


def test_1000_to_16_averages_probabilities_over_each_category() -> None:
    probs = np.zeros((2, 1000))
    probs[0, 499] = 0.3  # knife: one index, mean 0.3
    probs[0, 294] = 0.8  # bear: four indices, mean 0.2
    probs[0, 152] = 0.2 - 1e-9  # dog: 109 indices, tiny mean
    probs[1, [281, 282, 283]] = 0.3  # cat: six indices, mean 0.15
    probs[1, 404] = 0.1  # airplane: 0.1
    aggregated = imagenet_probabilities_to_16(probs)
    col = {name: k for k, name in enumerate(HUMAN_CATEGORIES)}
    assert aggregated.shape == (2, 16)
    assert aggregated[0, col["knife"]] == pytest.approx(0.3)
    assert aggregated[0, col["bear"]] == pytest.approx(0.2)
    assert aggregated[0, col["dog"]] == pytest.approx((0.2 - 1e-9) / 109)
    assert aggregated[1, col["cat"]] == pytest.approx(0.15)
    decisions = category_decisions(aggregated)
    assert [HUMAN_CATEGORIES[k] for k in decisions] == ["knife", "cat"]


def test_mean_aggregation_differs_from_sum_on_large_categories() -> None:
    probs = np.zeros((1, 1000))
    probs[0, 152:192] = 0.02  # 40 dog classes hold 0.8 in total, mean 0.8/109
    probs[0, 404] = 0.05  # airplane alone
    decision = category_decisions(imagenet_probabilities_to_16(probs))[0]
    assert HUMAN_CATEGORIES[decision] == "airplane"


def test_shape_bias_drops_shape_equal_texture_and_ignores_other_decisions() -> None:
    shape = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    texture = np.array([1, 2, 0, 3, 3, 2, 0, 3])
    # images 5 and 7 have shape == texture and are dropped whatever the decision
    pred = np.array([0, 2, 0, 1, 9, 2, 0, 3])
    result = shape_bias(pred, shape, texture)
    # conflicting images 0..4 and 6: shape hits at 0, 3; texture hits at 1, 2, 6; image 4 matches neither
    assert (result.n_used, result.n_dropped_same) == (6, 2)
    assert result.shape_bias == pytest.approx(2 / 5)
    assert result.shape_match_rate == pytest.approx(2 / 8)
    assert result.texture_match_rate == pytest.approx(3 / 8)


def test_shape_bias_accepts_category_names_and_nan_without_hits() -> None:
    result = shape_bias(["cat", "dog"], ["cat", "dog"], ["bird", "bird"])
    assert result.shape_bias == 1.0
    nothing = shape_bias(["oven", "oven"], ["cat", "dog"], ["bird", "bird"])
    assert np.isnan(nothing.shape_bias) and nothing.shape_match_rate == 0.0


def test_direct_16_way_logits_for_clip() -> None:
    logits = np.array([[0.1, 0.9, 0.2], [2.0, 1.0, 3.0], [1.0, 1.0, 0.0]])
    assert category_decisions(logits).tolist() == [1, 2, 0]
    result = shape_bias(category_decisions(logits), [1, 0, 2], [0, 2, 0])
    assert result.shape_bias == pytest.approx(1 / 3)


def test_parse_cue_conflict_filename() -> None:
    assert parse_cue_conflict_filename("dog10-bird2.png") == ("dog", "bird")
    assert parse_cue_conflict_filename("cue-conflict/airplane/0001_airplane1-bicycle2.png") == ("airplane", "bicycle")
    with pytest.raises(AnalysisError, match="file_name"):
        parse_cue_conflict_filename("dog.png")


def test_bad_inputs() -> None:
    with pytest.raises(AnalysisError, match=r"\[N, 1000\]"):
        imagenet_probabilities_to_16(np.zeros((2, 16)))
    with pytest.raises(AnalysisError, match="softmax"):
        imagenet_probabilities_to_16(np.full((1, 1000), 5.0))
    with pytest.raises(AnalysisError, match="has no ImageNet indices"):
        imagenet_probabilities_to_16(np.zeros((1, 1000)), categories=["zebra"])
    with pytest.raises(AnalysisError, match="scores"):
        category_decisions(np.zeros(4))
    with pytest.raises(AnalysisError, match="has 2 images"):
        shape_bias([0, 1], [0, 1, 2], [1, 2, 0])
    with pytest.raises(AnalysisError, match="no images"):
        shape_bias([], [], [])
