"""Tests of embedstore.analysis.calibration: agreement with torchmetrics, hand examples, temperature scaling."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax

from embedstore.analysis.calibration import (
    adaptive_calibration_error,
    brier_score,
    evaluate_calibration,
    expected_calibration_error,
    fit_temperature,
    maximum_calibration_error,
    negative_log_likelihood,
    reliability_diagram,
    split_calibration_rows,
    temperature_scaling_report,
)
from embedstore.errors import AnalysisError


def _random_probabilities(seed: int, n: int = 2000, n_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=3.0, size=(n, n_classes))
    labels = rng.integers(0, n_classes, size=n)
    # Make the top class right more often than chance so bins hold a mix of right and wrong.
    labels[: n // 2] = logits[: n // 2].argmax(axis=1)
    return softmax(logits, axis=1).astype(np.float32), labels


def _labels_drawn_from(logits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One label per row drawn from softmax(logits): a perfectly calibrated model at T = 1."""
    probs = softmax(logits, axis=1)
    cumulative = probs.cumsum(axis=1)
    draws = rng.random((logits.shape[0], 1))
    return np.minimum((draws > cumulative).sum(axis=1), logits.shape[1] - 1)


# --- agreement with torchmetrics -------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("norm", ["l1", "max"])
def test_ece_and_mce_match_torchmetrics(seed: int, norm: str) -> None:
    torch = pytest.importorskip("torch")
    functional = pytest.importorskip("torchmetrics.functional.classification")
    probs, labels = _random_probabilities(seed)
    expected = functional.multiclass_calibration_error(
        torch.from_numpy(probs), torch.from_numpy(labels), num_classes=probs.shape[1], n_bins=15, norm=norm
    ).item()
    ours = expected_calibration_error if norm == "l1" else maximum_calibration_error
    assert ours(probs, labels, n_bins=15) == pytest.approx(expected, abs=1e-6)


def test_confidence_on_a_bin_edge_goes_to_the_upper_bin_as_in_torchmetrics() -> None:
    torch = pytest.importorskip("torch")
    functional = pytest.importorskip("torchmetrics.functional.classification")
    # Top-1 confidences 0.5 and 0.75 sit exactly on edges of 4 bins: [0.5, 0.75) and [0.75, 1].
    probs = np.array([[0.5, 0.5], [0.75, 0.25], [0.25, 0.75], [0.6, 0.4]], dtype=np.float32)
    labels = np.array([1, 0, 0, 0])
    diagram = reliability_diagram(probs, labels, n_bins=4)
    np.testing.assert_array_equal(diagram.counts, [0, 0, 2, 2])
    expected = functional.multiclass_calibration_error(
        torch.from_numpy(probs), torch.from_numpy(labels), num_classes=2, n_bins=4, norm="l1"
    ).item()
    assert expected_calibration_error(probs, labels, n_bins=4) == pytest.approx(expected, abs=1e-6)


def test_confidence_of_exactly_one_is_folded_into_the_last_bin() -> None:
    probs = np.array([[1.0, 0.0], [0.95, 0.05], [0.2, 0.8]])
    labels = np.array([0, 1, 1])
    diagram = reliability_diagram(probs, labels, n_bins=10)
    assert diagram.counts[-1] == 2
    assert diagram.mean_confidence[-1] == pytest.approx(0.975)
    assert diagram.accuracy[-1] == pytest.approx(0.5)
    # ECE = (2/3)|0.5 - 0.975| + (1/3)|1 - 0.8|
    assert expected_calibration_error(probs, labels, n_bins=10) == pytest.approx((2 * 0.475 + 0.2) / 3)


# --- hand examples ---------------------------------------------------------------------------------


def test_reliability_diagram_hand_example() -> None:
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.45, 0.55]])
    labels = np.array([0, 1, 1, 0])
    diagram = reliability_diagram(probs, labels, n_bins=5)
    np.testing.assert_allclose(diagram.bin_edges, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    np.testing.assert_array_equal(diagram.counts, [0, 0, 1, 1, 2])
    np.testing.assert_allclose(diagram.mean_confidence[2:], [0.55, 0.7, 0.85])
    np.testing.assert_allclose(diagram.accuracy[2:], [0.0, 1.0, 0.5])
    assert np.isnan(diagram.mean_confidence[:2]).all() and np.isnan(diagram.accuracy[:2]).all()
    assert expected_calibration_error(probs, labels, n_bins=5) == pytest.approx((0.55 + 0.3 + 2 * 0.35) / 4)
    assert maximum_calibration_error(probs, labels, n_bins=5) == pytest.approx(0.55)


def test_adaptive_ece_uses_equal_mass_bins() -> None:
    # Sorted confidences 0.55, 0.7, 0.8, 0.9 (correct: no, yes, no, yes) in 2 bins of 2 samples.
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.45, 0.55]])
    labels = np.array([0, 1, 1, 0])
    expected = 0.5 * abs(0.5 - 0.625) + 0.5 * abs(0.5 - 0.85)
    assert adaptive_calibration_error(probs, labels, n_bins=2) == pytest.approx(expected)
    # One sample per bin: the mean absolute gap between confidence and correctness.
    assert adaptive_calibration_error(probs, labels, n_bins=4) == pytest.approx((0.55 + 0.3 + 0.8 + 0.1) / 4)


def test_adaptive_ece_with_more_bins_than_samples_skips_empty_bins() -> None:
    probs = np.array([[0.9, 0.1], [0.3, 0.7]])
    labels = np.array([0, 0])
    assert adaptive_calibration_error(probs, labels, n_bins=15) == pytest.approx((0.1 + 0.7) / 2)


def test_brier_score_sums_over_classes() -> None:
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    labels = np.array([0, 0])
    first = 0.3**2 + 0.2**2 + 0.1**2
    second = 0.9**2 + 0.1**2 + 0.8**2
    assert brier_score(probs, labels) == pytest.approx((first + second) / 2)
    assert brier_score(np.eye(3), np.array([0, 1, 2])) == 0.0
    assert brier_score(np.eye(3), np.array([1, 2, 0])) == pytest.approx(2.0)


def test_nll_is_stable_for_huge_logits() -> None:
    logits = np.array([[1000.0, 0.0], [0.0, 1000.0]])
    labels = np.array([0, 0])
    assert negative_log_likelihood(logits, labels) == pytest.approx(500.0)
    assert negative_log_likelihood(np.zeros((3, 4)), np.array([0, 1, 2])) == pytest.approx(np.log(4))
    assert negative_log_likelihood(logits, labels, temperature=10.0) == pytest.approx(50.0)


def test_evaluate_calibration_agrees_with_the_single_metrics() -> None:
    rng = np.random.default_rng(5)
    logits = rng.normal(scale=2.0, size=(300, 6)).astype(np.float16)
    labels = rng.integers(0, 6, size=300)
    result = evaluate_calibration(logits, labels, temperature=2.0)
    probs = softmax(logits.astype(np.float64) / 2.0, axis=1)
    assert result.n == 300 and result.n_bins == 15 and result.temperature == 2.0
    assert result.acc == pytest.approx(np.mean(logits.argmax(axis=1) == labels))
    assert result.ece == pytest.approx(expected_calibration_error(probs, labels))
    assert result.adaptive_ece == pytest.approx(adaptive_calibration_error(probs, labels))
    assert result.mce == pytest.approx(maximum_calibration_error(probs, labels))
    assert result.brier == pytest.approx(brier_score(probs, labels))
    assert result.nll == pytest.approx(negative_log_likelihood(logits, labels, temperature=2.0))
    assert evaluate_calibration(logits, labels).temperature == 1.0


# --- temperature scaling ---------------------------------------------------------------------------


@pytest.mark.parametrize("true_temperature", [0.5, 2.5])
def test_fit_temperature_recovers_a_known_temperature(true_temperature: float) -> None:
    rng = np.random.default_rng(11)
    calibrated_logits = rng.normal(scale=2.0, size=(8000, 10))
    labels = _labels_drawn_from(calibrated_logits, rng)
    # A model whose logits are T_true times the calibrated ones needs T = T_true to be calibrated.
    fitted = fit_temperature(calibrated_logits * true_temperature, labels)
    assert fitted == pytest.approx(true_temperature, rel=0.05)


def test_fitted_temperature_minimises_nll() -> None:
    rng = np.random.default_rng(3)
    logits = rng.normal(scale=4.0, size=(1000, 5))
    labels = _labels_drawn_from(logits / 3.0, rng)
    fitted = fit_temperature(logits, labels)
    best = negative_log_likelihood(logits, labels, temperature=fitted)
    for nearby in (fitted * 0.9, fitted * 1.1, 1.0):
        assert best <= negative_log_likelihood(logits, labels, temperature=nearby)


def test_fit_temperature_stops_at_a_bound() -> None:
    logits = np.array([[5.0, 0.0], [0.0, 5.0]])
    labels = np.array([0, 1])
    assert fit_temperature(logits, labels, bounds=(0.5, 2.0)) == pytest.approx(0.5, abs=1e-4)


def test_temperature_scaling_report_keeps_accuracy_and_improves_nll() -> None:
    rng = np.random.default_rng(21)
    calibrated = rng.normal(scale=2.0, size=(3000, 8))
    labels = _labels_drawn_from(calibrated, rng)
    overconfident = calibrated * 3.0
    fit_rows, eval_rows = split_calibration_rows(3000, 0.5, seed=0)
    shifted = rng.normal(scale=2.0, size=(500, 8))
    shifted_labels = _labels_drawn_from(shifted, rng)
    report = temperature_scaling_report(
        overconfident[fit_rows],
        labels[fit_rows],
        {"id": (overconfident[eval_rows], labels[eval_rows]), "shifted": (shifted * 3.0, shifted_labels)},
        fit_rows=fit_rows,
        eval_rows={"id": eval_rows},
    )
    assert report.temperature == pytest.approx(3.0, rel=0.1)
    assert report.fit_n == fit_rows.size
    assert list(report.before) == list(report.after) == ["id", "shifted"]
    for name in ("id", "shifted"):
        assert report.after[name].acc == report.before[name].acc
        assert report.after[name].nll < report.before[name].nll
        assert report.after[name].ece < report.before[name].ece
        assert report.before[name].temperature == 1.0
        assert report.after[name].temperature == report.temperature


def test_split_calibration_rows_is_seeded_and_disjoint() -> None:
    fit_rows, eval_rows = split_calibration_rows(101, 0.3, seed=7)
    assert fit_rows.size == 30 and eval_rows.size == 71
    assert np.intersect1d(fit_rows, eval_rows).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([fit_rows, eval_rows])), np.arange(101))
    again_fit, again_eval = split_calibration_rows(101, 0.3, seed=7)
    np.testing.assert_array_equal(fit_rows, again_fit)
    np.testing.assert_array_equal(eval_rows, again_eval)
    other_fit, _ = split_calibration_rows(101, 0.3, seed=8)
    assert not np.array_equal(fit_rows, other_fit)


# --- bad input -------------------------------------------------------------------------------------


def test_nan_or_infinite_logits_are_rejected_naming_the_row() -> None:
    logits = np.zeros((4, 3))
    logits[2, 1] = np.nan
    with pytest.raises(AnalysisError, match="row 2"):
        evaluate_calibration(logits, np.zeros(4, dtype=int))
    logits[2, 1] = np.inf
    with pytest.raises(AnalysisError, match="row 2"):
        fit_temperature(logits, np.zeros(4, dtype=int))


@pytest.mark.parametrize("bad_label", [-1, 3])
def test_labels_out_of_range_are_rejected(bad_label: int) -> None:
    with pytest.raises(AnalysisError, match=r"labels row 1 .* outside the class range \[0, 3\)"):
        evaluate_calibration(np.zeros((2, 3)), np.array([0, bad_label]))


@pytest.mark.parametrize(
    ("labels", "message"),
    [(np.array([0.0, 1.0]), "integer"), (np.array([0, 1, 1]), "shape"), (np.array([[0, 1]]), "shape")],
)
def test_malformed_labels_are_rejected(labels: np.ndarray, message: str) -> None:
    with pytest.raises(AnalysisError, match=message):
        negative_log_likelihood(np.zeros((2, 3)), labels)


@pytest.mark.parametrize("logits", [np.zeros(5), np.zeros((0, 3)), np.array([["a", "b"]])])
def test_malformed_logits_are_rejected(logits: np.ndarray) -> None:
    with pytest.raises(AnalysisError, match="logits"):
        evaluate_calibration(logits, np.zeros(len(logits), dtype=int))


def test_logits_passed_as_probabilities_are_rejected() -> None:
    with pytest.raises(AnalysisError, match=r"probabilities in \[0, 1\]"):
        expected_calibration_error(np.array([[3.0, -1.0]]), np.array([0]))
    with pytest.raises(AnalysisError, match="row 1 sums to"):
        brier_score(np.array([[0.5, 0.5], [0.5, 0.4]]), np.array([0, 1]))


@pytest.mark.parametrize("n_bins", [0, -3, 2.5, True])
def test_bad_bin_counts_are_rejected(n_bins: object) -> None:
    with pytest.raises(AnalysisError, match="n_bins"):
        reliability_diagram(np.array([[0.5, 0.5]]), np.array([0]), n_bins=n_bins)  # type: ignore[arg-type]


@pytest.mark.parametrize("temperature", [0.0, -1.0, np.nan])
def test_bad_temperatures_are_rejected(temperature: float) -> None:
    with pytest.raises(AnalysisError, match="temperature"):
        evaluate_calibration(np.zeros((2, 2)), np.array([0, 1]), temperature=temperature)


@pytest.mark.parametrize("bounds", [(0.0, 10.0), (5.0, 1.0), (1.0, np.inf)])
def test_bad_temperature_bounds_are_rejected(bounds: tuple[float, float]) -> None:
    with pytest.raises(AnalysisError, match="bounds"):
        fit_temperature(np.zeros((2, 2)), np.array([0, 1]), bounds=bounds)


@pytest.mark.parametrize(
    ("n", "fraction", "seed", "message"),
    [
        (10, 0.0, 0, "fraction"),
        (10, 1.0, 0, "fraction"),
        (1, 0.5, 0, "n must"),
        (3, 0.1, 0, "empty"),
        (10, 0.5, None, "seed"),
    ],
)
def test_bad_splits_are_rejected(n: int, fraction: float, seed: int, message: str) -> None:
    with pytest.raises(AnalysisError, match=message):
        split_calibration_rows(n, fraction, seed=seed)


def test_overlapping_fit_and_eval_rows_are_rejected() -> None:
    logits = np.random.default_rng(0).normal(size=(10, 3))
    labels = np.arange(10) % 3
    fit_rows, eval_rows = np.arange(0, 6), np.arange(5, 10)
    with pytest.raises(AnalysisError, match=r"'val' shares 1 rows with the fit rows .*row 5"):
        temperature_scaling_report(
            logits[fit_rows],
            labels[fit_rows],
            {"val": (logits[eval_rows], labels[eval_rows])},
            fit_rows=fit_rows,
            eval_rows={"val": eval_rows},
        )


def test_report_rejects_inconsistent_row_arguments() -> None:
    logits, labels = np.zeros((4, 2)), np.array([0, 1, 0, 1])
    with pytest.raises(AnalysisError, match="together"):
        temperature_scaling_report(logits, labels, {"a": (logits, labels)}, fit_rows=np.arange(4))
    with pytest.raises(AnalysisError, match="not an eval set"):
        temperature_scaling_report(
            logits, labels, {"a": (logits, labels)}, fit_rows=np.arange(4), eval_rows={"b": np.arange(4, 8)}
        )
    with pytest.raises(AnalysisError, match="fit_rows has shape"):
        temperature_scaling_report(
            logits, labels, {"a": (logits, labels)}, fit_rows=np.arange(3), eval_rows={"a": np.arange(4, 8)}
        )
    with pytest.raises(AnalysisError, match="empty"):
        temperature_scaling_report(logits, labels, {})


def test_a_temperature_keeps_the_prediction_of_a_near_tie() -> None:
    # Logits one float64 step (2.2e-16) apart: at T = 1 their probabilities differ, at any T > ~4.2 the
    # difference falls below exp's rounding and the probabilities tie; the prediction stays class 1.
    logits = np.array([[1.0, np.nextafter(1.0, 2.0)], [0.0, 3.0]])
    labels = np.array([1, 1])
    report = temperature_scaling_report(logits, labels, {"tie": (logits, labels)}, bounds=(5.0, 6.0))
    assert report.before["tie"].acc == report.after["tie"].acc == 1.0
    assert report.temperature == pytest.approx(5.0, abs=1e-3)  # all right: the sharpest T allowed
    assert report.after["tie"].ece == pytest.approx(1.0 - np.mean([0.5, softmax([0.0, 3.0 / 5.0])[1]]), abs=1e-4)


def test_report_names_the_eval_set_with_bad_logits() -> None:
    logits, labels = np.zeros((4, 2)), np.array([0, 1, 0, 1])
    bad = logits.copy()
    bad[3, 0] = np.nan
    with pytest.raises(AnalysisError, match=r"eval_sets\['shifted'\] logits row 3"):
        temperature_scaling_report(logits, labels, {"shifted": (bad, labels)})
