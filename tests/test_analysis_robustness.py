"""Effective robustness: line fits under probit/logit, Huber vs OLS, clipping, bootstrap, groups."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import special, stats

from embedstore.analysis.robustness import (
    DEFAULT_CLIP_EPS,
    EFFECTIVE_ROBUSTNESS_UNIT,
    average_ranks,
    bootstrap_trend_band,
    effective_robustness,
    fit_linear_trend,
    group_statistics,
    inverse_transform_accuracy,
    min_resamples,
    spearman_rho,
    transform_accuracy,
)
from embedstore.errors import AnalysisError

FORWARD = {"probit": stats.norm.ppf, "logit": special.logit}
INVERSE = {"probit": stats.norm.cdf, "logit": special.expit}


def _on_line(acc_x: np.ndarray, a: float, b: float, transform: str) -> np.ndarray:
    return INVERSE[transform](a * FORWARD[transform](acc_x) + b)


@pytest.mark.parametrize("transform", ["probit", "logit"])
@pytest.mark.parametrize("regressor", ["ols", "huber"])
def test_fit_recovers_known_line(transform: str, regressor: str) -> None:
    acc_x = np.linspace(0.3, 0.85, 9)
    acc_y = _on_line(acc_x, 0.8, -0.4, transform)
    trend = fit_linear_trend(acc_x, acc_y, transform=transform, regressor=regressor)
    assert trend.a == pytest.approx(0.8, abs=1e-6)
    assert trend.b == pytest.approx(-0.4, abs=1e-6)
    assert trend.r2 == pytest.approx(1.0, abs=1e-9)
    assert trend.spearman == pytest.approx(1.0)
    assert (trend.n, trend.transform, trend.regressor) == (9, transform, regressor)
    assert trend.huber_epsilon == (1.35 if regressor == "huber" else None)


def test_ols_matches_scipy_linregress() -> None:
    rng = np.random.default_rng(1)
    acc_x = rng.uniform(0.4, 0.9, 20)
    acc_y = np.clip(acc_x - 0.2 + rng.normal(0, 0.03, 20), 0.01, 0.99)
    trend = fit_linear_trend(acc_x, acc_y, transform="logit", regressor="ols")
    reference = stats.linregress(special.logit(acc_x), special.logit(acc_y))
    assert trend.a == pytest.approx(reference.slope, rel=1e-10)
    assert trend.b == pytest.approx(reference.intercept, rel=1e-10)
    assert trend.r2 == pytest.approx(reference.rvalue**2, rel=1e-10)


def test_huber_resists_one_outlier_model_and_ols_does_not() -> None:
    acc_x = np.linspace(0.4, 0.8, 10)
    acc_y = _on_line(acc_x, 1.0, -0.5, "probit")
    acc_y[-1] = 0.95  # one model far above the line, at the end where it has most leverage
    ols = fit_linear_trend(acc_x, acc_y, regressor="ols")
    huber = fit_linear_trend(acc_x, acc_y, regressor="huber")
    assert abs(huber.a - 1.0) < 0.02 and abs(huber.b + 0.5) < 0.02
    assert abs(ols.a - 1.0) > 0.2
    assert huber.r2 < ols.r2  # Huber does not minimise squared residuals


def test_spearman_rho_equals_scipy_with_ties() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        x = rng.integers(0, 4, size=12).astype(float)  # many ties
        y = np.round(rng.normal(size=12), 1)
        if np.ptp(x) and np.ptp(y):
            assert spearman_rho(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    np.testing.assert_array_equal(average_ranks(np.array([3.0, 1.0, 3.0, 2.0, 3.0])), [4.0, 1.0, 4.0, 2.0, 4.0])


def test_r2_and_spearman_on_known_data() -> None:
    acc_x = np.array([0.2, 0.4, 0.6, 0.8])
    acc_y = np.array([0.3, 0.2, 0.5, 0.4])
    trend = fit_linear_trend(acc_x, acc_y, transform="probit", regressor="ols")
    tx, ty = stats.norm.ppf(acc_x), stats.norm.ppf(acc_y)
    residual = ty - (trend.a * tx + trend.b)
    assert trend.r2 == pytest.approx(1 - np.sum(residual**2) / np.sum((ty - ty.mean()) ** 2))
    assert trend.r2 == pytest.approx(np.corrcoef(tx, ty)[0, 1] ** 2)
    # ranks x = 1,2,3,4 and y = 2,1,4,3: d^2 sums to 4, rho = 1 - 6*4/(4*15) = 0.6
    assert trend.spearman == pytest.approx(0.6)


def test_effective_robustness_in_percentage_points() -> None:
    acc_x = np.array([0.5, 0.6, 0.7, 0.8])
    acc_y = _on_line(acc_x, 1.2, -0.3, "logit")
    trend = fit_linear_trend(acc_x, acc_y, transform="logit", regressor="ols")
    above = np.array([0.7])
    expected_line = special.expit(1.2 * special.logit(0.7) - 0.3)
    er = effective_robustness(trend, above, expected_line + np.array([0.05]))
    assert er == pytest.approx([5.0])
    assert effective_robustness(trend, acc_x, acc_y) == pytest.approx(np.zeros(4), abs=1e-9)
    assert EFFECTIVE_ROBUSTNESS_UNIT == "percentage points"
    assert trend.params()["effective_robustness_unit"] == "percentage points"


@pytest.mark.parametrize("transform", ["probit", "logit"])
def test_clipping_at_zero_and_one_is_finite_and_documented(transform: str) -> None:
    z = transform_accuracy(np.array([0.0, 1.0]), transform)
    assert np.all(np.isfinite(z))
    assert inverse_transform_accuracy(z, transform) == pytest.approx([DEFAULT_CLIP_EPS, 1 - DEFAULT_CLIP_EPS])
    trend = fit_linear_trend([0.0, 0.5, 0.7, 1.0], [0.0, 0.3, 0.5, 1.0], transform=transform, regressor="ols")
    assert np.isfinite(trend.a) and np.isfinite(trend.b)
    assert trend.clip_eps == DEFAULT_CLIP_EPS and trend.params()["clip_eps"] == DEFAULT_CLIP_EPS
    assert np.all(np.isfinite(effective_robustness(trend, [0.0, 1.0], [0.0, 1.0])))


def test_custom_eps_is_recorded_and_used() -> None:
    trend = fit_linear_trend([0.0, 0.5, 0.9], [0.1, 0.4, 0.8], regressor="ols", eps=1e-2)
    assert trend.clip_eps == 1e-2
    assert transform_accuracy([0.0], eps=1e-2) == pytest.approx(stats.norm.ppf([1e-2]))


def test_bootstrap_band_contains_line_and_is_reproducible() -> None:
    rng = np.random.default_rng(3)
    acc_x = rng.uniform(0.4, 0.85, 15)
    acc_y = np.clip(_on_line(acc_x, 0.9, -0.3, "probit") + rng.normal(0, 0.02, 15), 0.01, 0.99)
    grid = np.linspace(0.45, 0.8, 5)
    band = bootstrap_trend_band(acc_x, acc_y, grid, n_boot=200, seed=7, regressor="ols")
    again = bootstrap_trend_band(acc_x, acc_y, grid, n_boot=200, seed=7, regressor="ols")
    assert np.array_equal(band.lower, again.lower) and np.array_equal(band.upper, again.upper)
    assert np.all(band.lower <= band.center) and np.all(band.center <= band.upper)
    assert np.all(band.upper - band.lower > 0) and np.all(band.upper - band.lower < 0.1)
    assert band.n_boot == 200 and 0 < band.n_boot_used <= 200 and band.level == 0.95
    wider = bootstrap_trend_band(acc_x, acc_y, grid, n_boot=201, seed=7, level=0.99, regressor="ols")
    assert np.all(wider.upper - wider.lower >= band.upper - band.lower)


def test_bootstrap_band_with_huber_runs() -> None:
    acc_x = np.linspace(0.4, 0.8, 6)
    acc_y = _on_line(acc_x, 1.0, -0.2, "probit") + np.array([0.01, -0.01, 0.0, 0.01, -0.01, 0.0])
    band = bootstrap_trend_band(acc_x, acc_y, [0.5, 0.7], n_boot=41, seed=0, regressor="huber")
    assert np.all(band.lower <= band.upper)


def test_group_statistics_per_group() -> None:
    acc_x = np.array([0.5, 0.6, 0.7, 0.8, 0.5, 0.6, 0.7, 0.9, 0.6])
    acc_y = np.concatenate([_on_line(acc_x[:4], 1.0, -0.5, "probit"), np.array([0.5, 0.3, 0.4, 0.2]), np.array([0.4])])
    groups = ["laion"] * 4 + ["openai"] * 4 + ["tiny"]
    summary = group_statistics(acc_x, acc_y, groups, regressor="ols")
    assert list(summary) == ["laion", "openai", "tiny"]
    assert summary["laion"].slope == pytest.approx(1.0) and summary["laion"].r2 == pytest.approx(1.0)
    assert summary["laion"].spearman == pytest.approx(1.0) and summary["laion"].n == 4
    # openai: x ranks 1,2,3,4 and y ranks 4,2,3,1 -> rho = 1 - 6*(9+0+0+9)/(4*15) = -0.8
    assert summary["openai"].spearman == pytest.approx(-0.8)
    assert summary["tiny"].n == 1 and np.isnan(summary["tiny"].slope) and np.isnan(summary["tiny"].r2)


def test_constant_target_gives_nan_r2_and_spearman() -> None:
    trend = fit_linear_trend([0.5, 0.6, 0.7], [0.4, 0.4, 0.4], regressor="ols")
    assert trend.a == pytest.approx(0.0, abs=1e-12)
    assert np.isnan(trend.r2) and np.isnan(trend.spearman)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"acc_x": [0.5, 0.6], "acc_y": [0.4, 0.5]}, "at least 3"),
        ({"acc_x": [0.5, 0.5, 0.5], "acc_y": [0.4, 0.5, 0.6]}, "same accuracy"),
        ({"acc_x": [0.99995, 0.99998, 1.0], "acc_y": [0.4, 0.5, 0.6]}, "within eps=0.0001 of the same bound"),
        ({"acc_x": [50.0, 60.0, 70.0], "acc_y": [0.4, 0.5, 0.6]}, "percentages"),
        ({"acc_x": [0.5, float("nan"), 0.7], "acc_y": [0.4, 0.5, 0.6]}, "NaN"),
        ({"acc_x": [0.5, 0.6, 0.7], "acc_y": [0.4, 0.5]}, "acc_y: has 2 models"),
        ({"acc_x": [0.5, 0.6, 0.7], "acc_y": [0.4, 0.5, 0.6], "transform": "arcsin"}, "transform"),
        ({"acc_x": [0.5, 0.6, 0.7], "acc_y": [0.4, 0.5, 0.6], "regressor": "ransac"}, "regressor"),
        ({"acc_x": [0.5, 0.6, 0.7], "acc_y": [0.4, 0.5, 0.6], "eps": 0.0}, "eps"),
        ({"acc_x": [0.5, 0.6, 0.7], "acc_y": [0.4, 0.5, 0.6], "huber_epsilon": 0.5}, "huber_epsilon"),
        ({"acc_x": [[0.5, 0.6, 0.7]], "acc_y": [[0.4, 0.5, 0.6]]}, "1-D"),
    ],
)
def test_fit_rejects_bad_input(kwargs: dict, message: str) -> None:
    with pytest.raises(AnalysisError, match=message):
        fit_linear_trend(**kwargs)


def test_bootstrap_and_groups_reject_bad_input() -> None:
    acc = [0.5, 0.6, 0.7]
    with pytest.raises(AnalysisError, match="n_boot"):
        bootstrap_trend_band(acc, acc, [0.5], n_boot=0)
    # with fewer resamples a bound is the most extreme bootstrapped line
    assert (min_resamples(0.95), min_resamples(0.9), min_resamples(0.99)) == (41, 22, 201)
    for level in (0.9, 0.95, 0.99):
        fewest, tail = min_resamples(level), (1 - level) / 2
        ranks = np.arange(fewest)
        assert (
            np.quantile(ranks, tail, method="lower") > 0 and np.quantile(ranks, 1 - tail, method="higher") < fewest - 1
        )
        assert np.quantile(ranks[:-1], tail, method="lower") == 0  # one resample fewer: the extreme line
    with pytest.raises(AnalysisError, match=r"n_boot: a 95% band needs at least 41 resamples .* got 40"):
        bootstrap_trend_band(acc, acc, [0.5], n_boot=40)
    with pytest.raises(AnalysisError, match="level"):
        bootstrap_trend_band(acc, acc, [0.5], level=1.0)
    with pytest.raises(AnalysisError, match="grid"):
        bootstrap_trend_band(acc, acc, [1.5])
    with pytest.raises(AnalysisError, match="groups"):
        group_statistics(acc, acc, ["a", "b"])
