"""Effective robustness: accuracy under shift beyond what in-distribution accuracy predicts.

Following Taori et al. 2020 ("Measuring robustness to natural distribution shifts") and
imagenet-testbed (`plotting/plotter.py`), accuracies of a reference group of models are put on a
transformed axis T (probit or logit), a line ``T(acc_y) = a * T(acc_x) + b`` is fitted across those
models, and a model's effective robustness is how far its shifted accuracy lies above that line::

    ER = acc_y - T^-1(a * T(acc_x) + b)

Conventions of this module (record them with every result, see `LinearTrend.params`):

- Accuracies come in as fractions in [0, 1] (not percentages). Effective robustness comes out in
  **percentage points** (imagenet-testbed's unit): ``ER = 100 * (acc_y - predicted_acc_y)``.
- T is `probit` (the standard normal quantile ``scipy.stats.norm.ppf``, computed as
  ``scipy.special.ndtri``; the "accuracy on the line" convention and our default) or `logit`
  (``log(p / (1 - p))``, imagenet-testbed's plotting default).
- T is infinite at 0 and 1, so accuracies are clipped to ``[eps, 1 - eps]`` before transforming, with
  ``eps = DEFAULT_CLIP_EPS = 1e-4`` unless given (one error in 10,000 images, below the resolution of
  every dataset the study uses except ImageNet-val's 50,000). Only T's argument is clipped: the
  ``acc_y`` term of ER is the accuracy as measured.
- The regressor is ordinary least squares (`ols`, as ``scipy.stats.linregress`` in imagenet-testbed)
  or Huber (`huber`, ``sklearn.linear_model.HuberRegressor`` with ``epsilon = 1.35``, the value that
  keeps 95% efficiency under Gaussian noise, and no L2 penalty); Huber is our default because one
  unusual reference model should not tilt the line.
- R^2 is the coefficient of determination of the fitted line in the transformed space,
  ``1 - SS_res / SS_tot`` (for OLS this equals the squared Pearson r of the transformed accuracies;
  for Huber it can be lower, even negative). Spearman's rho is computed on the raw accuracies
  (T is monotone, so it is the same on either axis).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import special

from embedstore.errors import AnalysisError

DEFAULT_CLIP_EPS = 1e-4
"""Accuracies are clipped to [eps, 1 - eps] before the probit/logit transform (both are infinite at 0 and 1)."""

DEFAULT_HUBER_EPSILON = 1.35
"""sklearn's HuberRegressor threshold: residuals beyond 1.35 scale units are weighted linearly, not squared."""

EFFECTIVE_ROBUSTNESS_UNIT = "percentage points"
"""Unit of every effective-robustness value this module returns."""

MIN_MODELS_FOR_TREND = 3
"""A line through fewer models has no residual to judge it by: fitting refuses below this."""

TRANSFORMS = ("probit", "logit")
REGRESSORS = ("ols", "huber")

_FORWARD: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "probit": special.ndtri,  # the standard normal quantile, = scipy.stats.norm.ppf
    "logit": special.logit,
}
_INVERSE: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "probit": special.ndtr,  # the standard normal CDF, = scipy.stats.norm.cdf
    "logit": special.expit,
}


@dataclass(frozen=True)
class LinearTrend:
    """A line ``T(acc_y) = a * T(acc_x) + b`` fitted over a reference group of models.

    ``r2`` is measured in the transformed space; ``spearman`` on the raw accuracies; both are NaN
    when the reference models' ``acc_y`` is constant. ``huber_epsilon`` is None for OLS.
    """

    a: float
    b: float
    transform: str
    regressor: str
    r2: float
    spearman: float
    n: int
    clip_eps: float = DEFAULT_CLIP_EPS
    huber_epsilon: float | None = None

    def predict(self, acc_x: Sequence[float] | np.ndarray) -> np.ndarray:
        """Accuracy (fraction) the line predicts on the y axis: ``T^-1(a * T(clip(acc_x)) + b)``."""
        x = _validate_accuracies(acc_x, "acc_x")
        z = self.a * transform_accuracy(x, self.transform, eps=self.clip_eps) + self.b
        return inverse_transform_accuracy(z, self.transform)

    def params(self) -> dict[str, object]:
        """Everything needed to reproduce or report the fit, as plain values (for results' params)."""
        return {
            "transform": self.transform,
            "regressor": self.regressor,
            "clip_eps": self.clip_eps,
            "huber_epsilon": self.huber_epsilon,
            "slope": self.a,
            "intercept": self.b,
            "r2_transformed": self.r2,
            "spearman": self.spearman,
            "n_models": self.n,
            "effective_robustness_unit": EFFECTIVE_ROBUSTNESS_UNIT,
        }


@dataclass(frozen=True)
class TrendBand:
    """Pointwise bootstrap confidence band of a linear trend, in accuracy fractions.

    ``center`` is the line fitted on all models; ``lower``/``upper`` the ``(1 - level) / 2`` and
    ``1 - (1 - level) / 2`` quantiles of the bootstrapped lines at each ``grid`` point.
    ``n_boot_used`` excludes resamples whose ``acc_x`` had a single distinct value (no line).
    """

    grid: np.ndarray
    center: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    level: float
    n_boot: int
    n_boot_used: int
    seed: int


@dataclass(frozen=True)
class GroupStatistics:
    """Per-group fit of acc_y on acc_x (see `fit_linear_trend`); NaN fields for groups under 3 models."""

    group: Hashable
    n: int
    slope: float
    intercept: float
    r2: float
    spearman: float


def transform_accuracy(
    acc: Sequence[float] | np.ndarray, transform: str = "probit", *, eps: float = DEFAULT_CLIP_EPS
) -> np.ndarray:
    """T(acc) for accuracies in [0, 1], after clipping to ``[eps, 1 - eps]`` (see the module doc)."""
    forward = _FORWARD.get(transform)
    if forward is None:
        raise AnalysisError(f"transform: {transform!r} is not one of {', '.join(TRANSFORMS)}")
    _validate_eps(eps)
    return forward(np.clip(np.asarray(acc, dtype=np.float64), eps, 1.0 - eps))


def inverse_transform_accuracy(z: Sequence[float] | np.ndarray, transform: str = "probit") -> np.ndarray:
    """T^-1(z): the accuracy fraction whose transform is z (normal CDF for probit, sigmoid for logit)."""
    inverse = _INVERSE.get(transform)
    if inverse is None:
        raise AnalysisError(f"transform: {transform!r} is not one of {', '.join(TRANSFORMS)}")
    return inverse(np.asarray(z, dtype=np.float64))


def fit_linear_trend(
    acc_x: Sequence[float] | np.ndarray,
    acc_y: Sequence[float] | np.ndarray,
    transform: str = "probit",
    regressor: str = "huber",
    *,
    eps: float = DEFAULT_CLIP_EPS,
    huber_epsilon: float = DEFAULT_HUBER_EPSILON,
) -> LinearTrend:
    """Fit ``T(acc_y) = a * T(acc_x) + b`` over the reference models (one entry per model).

    ``acc_x`` is typically in-distribution accuracy (ImageNet val) and ``acc_y`` accuracy under a
    shift, both fractions in [0, 1]. Needs at least `MIN_MODELS_FOR_TREND` models and two distinct
    ``acc_x`` values. Returns slope ``a``, intercept ``b``, R^2 in the transformed space and
    Spearman's rho of (acc_x, acc_y).
    """
    x, y = _validate_pair(acc_x, acc_y)
    _check_regressor(regressor)
    if x.size < MIN_MODELS_FOR_TREND:
        raise AnalysisError(f"acc_x: a trend needs at least {MIN_MODELS_FOR_TREND} reference models, got {x.size}")
    if np.ptp(x) == 0.0:
        raise AnalysisError("acc_x: every reference model has the same accuracy, so no line can be fitted")
    if regressor == "huber":
        _validate_huber_epsilon(huber_epsilon)
    tx = transform_accuracy(x, transform, eps=eps)
    if np.ptp(tx) == 0.0:
        raise AnalysisError(
            f"acc_x: every reference model's accuracy is within eps={eps:g} of the same bound (0 or 1), where "
            f"the transform clips, so no line can be fitted"
        )
    ty = transform_accuracy(y, transform, eps=eps)
    a, b = _FIT[regressor](tx, ty, huber_epsilon)
    return LinearTrend(
        a=a,
        b=b,
        transform=transform,
        regressor=regressor,
        r2=_r_squared(tx, ty, a, b),
        spearman=_spearman(x, y),
        n=int(x.size),
        clip_eps=eps,
        huber_epsilon=huber_epsilon if regressor == "huber" else None,
    )


def effective_robustness(
    trend: LinearTrend, acc_x: Sequence[float] | np.ndarray, acc_y: Sequence[float] | np.ndarray
) -> np.ndarray:
    """Effective robustness in **percentage points**: ``100 * (acc_y - trend.predict(acc_x))``.

    Positive means the model is more accurate under the shift than its in-distribution accuracy
    predicts from the reference group's line (Taori et al. 2020; imagenet-testbed).
    """
    x, y = _validate_pair(acc_x, acc_y)
    return 100.0 * (y - trend.predict(x))


def min_resamples(level: float) -> int:
    """The fewest bootstrap resamples for which neither bound of the band is an extreme line: with B
    lines, ``method="lower"`` at ``tail = (1 - level) / 2`` takes line ``floor(tail (B - 1))``, which is past
    the lowest one once ``B >= 1 / tail + 1`` (41 at 95%), and ``"higher"`` at ``1 - tail`` likewise."""
    tail = (1.0 - level) / 2.0
    fewest = math.ceil(1.0 / tail)  # then past any float rounding of the positions numpy computes
    while math.floor(tail * (fewest - 1)) < 1 or math.ceil((1.0 - tail) * (fewest - 1)) > fewest - 2:
        fewest += 1
    return fewest


def bootstrap_trend_band(
    acc_x: Sequence[float] | np.ndarray,
    acc_y: Sequence[float] | np.ndarray,
    grid: Sequence[float] | np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    *,
    transform: str = "probit",
    regressor: str = "huber",
    eps: float = DEFAULT_CLIP_EPS,
    huber_epsilon: float = DEFAULT_HUBER_EPSILON,
) -> TrendBand:
    """Pointwise confidence band of the trend line at the accuracies ``grid`` (fractions).

    As imagenet-testbed's ``get_bootstrap_cis``: resample the reference models with replacement
    ``n_boot`` times (``numpy.random.default_rng(seed)``), refit the line in the transformed space,
    evaluate it at ``T(grid)``, and take the lower quantile with numpy's ``method="lower"`` and the
    upper with ``method="higher"`` (so each bound is one of the bootstrapped lines), then map back
    with T^-1. ``n_boot`` must reach `min_resamples` (41 at 95%): with fewer, a bound would be the most
    extreme line. Resamples with one distinct ``acc_x`` are skipped and counted out of ``n_boot_used``.
    """
    x, y = _validate_pair(acc_x, acc_y)
    points = _validate_accuracies(grid, "grid")
    if not 0.0 < level < 1.0:
        raise AnalysisError(f"level: must lie strictly between 0 and 1, got {level!r}")
    fewest = min_resamples(level)
    if not isinstance(n_boot, (int, np.integer)) or n_boot < fewest:
        raise AnalysisError(f"n_boot: a {100 * level:g}% band needs at least {fewest} resamples (so that neither "
                            f"bound is the most extreme line), got {n_boot!r}")  # fmt: skip
    center_trend = fit_linear_trend(x, y, transform, regressor, eps=eps, huber_epsilon=huber_epsilon)
    tx = transform_accuracy(x, transform, eps=eps)
    ty = transform_accuracy(y, transform, eps=eps)
    t_grid = transform_accuracy(points, transform, eps=eps)

    rng = np.random.default_rng(seed)
    draws = rng.integers(0, x.size, size=(n_boot, x.size))
    usable = np.ptp(tx[draws], axis=1) > 0.0
    lines = np.array([_FIT[regressor](tx[idx], ty[idx], huber_epsilon) for idx in draws[usable]])
    if lines.shape[0] < fewest:
        raise AnalysisError(f"acc_x: only {lines.shape[0]} of {n_boot} bootstrap resamples had two distinct "
                            f"accuracies, fewer than the {fewest} a {100 * level:g}% band needs; add reference models")  # fmt: skip
    z = lines[:, :1] * t_grid[None, :] + lines[:, 1:]
    tail = (1.0 - level) / 2.0
    return TrendBand(
        grid=points,
        center=center_trend.predict(points),
        lower=inverse_transform_accuracy(np.quantile(z, tail, axis=0, method="lower"), transform),
        upper=inverse_transform_accuracy(np.quantile(z, 1.0 - tail, axis=0, method="higher"), transform),
        level=float(level),
        n_boot=int(n_boot),
        n_boot_used=int(lines.shape[0]),
        seed=int(seed),
    )


def group_statistics(
    acc_x: Sequence[float] | np.ndarray,
    acc_y: Sequence[float] | np.ndarray,
    groups: Sequence[Hashable],
    transform: str = "probit",
    regressor: str = "huber",
    *,
    eps: float = DEFAULT_CLIP_EPS,
    huber_epsilon: float = DEFAULT_HUBER_EPSILON,
) -> dict[Hashable, GroupStatistics]:
    """Fit a separate trend within each group of models and report its slope, R^2 and Spearman rho.

    ``groups[i]`` names model i's group (training data, architecture family, ...). Groups are
    returned in order of first appearance. A group of fewer than `MIN_MODELS_FOR_TREND` models, or
    whose ``acc_x`` is constant, gets NaN slope/intercept/R^2 (and NaN Spearman when it cannot be
    ranked) instead of failing the whole summary; its ``n`` says why.
    """
    x, y = _validate_pair(acc_x, acc_y)
    labels = list(groups)
    if len(labels) != x.size:
        raise AnalysisError(f"groups: has {len(labels)} entries but acc_x has {x.size} models")
    members: dict[Hashable, list[int]] = {}
    for index, label in enumerate(labels):
        members.setdefault(label, []).append(index)
    summary: dict[Hashable, GroupStatistics] = {}
    for label, index_list in members.items():
        gx, gy = x[index_list], y[index_list]
        if gx.size >= MIN_MODELS_FOR_TREND and np.ptp(gx) > 0.0:
            trend = fit_linear_trend(gx, gy, transform, regressor, eps=eps, huber_epsilon=huber_epsilon)
            slope, intercept, r2 = trend.a, trend.b, trend.r2
        else:
            slope = intercept = r2 = float("nan")
        spearman = _spearman(gx, gy) if gx.size >= 2 else float("nan")
        summary[label] = GroupStatistics(label, int(gx.size), slope, intercept, r2, spearman)
    return summary


def _fit_ols(tx: np.ndarray, ty: np.ndarray, _huber_epsilon: float) -> tuple[float, float]:
    x_centered = tx - tx.mean()
    slope = float(np.dot(x_centered, ty - ty.mean()) / np.dot(x_centered, x_centered))
    return slope, float(ty.mean() - slope * tx.mean())


def _fit_huber(tx: np.ndarray, ty: np.ndarray, huber_epsilon: float) -> tuple[float, float]:
    from sklearn.linear_model import HuberRegressor  # 1.5 s to import: only when asked for

    model = HuberRegressor(epsilon=huber_epsilon, alpha=0.0, max_iter=1000).fit(tx[:, None], ty)
    return float(model.coef_[0]), float(model.intercept_)


_FIT: dict[str, Callable[[np.ndarray, np.ndarray, float], tuple[float, float]]] = {
    "ols": _fit_ols,
    "huber": _fit_huber,
}


def _r_squared(tx: np.ndarray, ty: np.ndarray, a: float, b: float) -> float:
    total = float(np.sum((ty - ty.mean()) ** 2))
    if total == 0.0:
        return float("nan")
    return 1.0 - float(np.sum((ty - (a * tx + b)) ** 2)) / total


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    if np.ptp(x) == 0.0 or np.ptp(y) == 0.0:
        return float("nan")
    return spearman_rho(x, y)


def spearman_rho(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation: Pearson's r of the two samples' ranks, tied values sharing their
    mean rank (``scipy.stats.spearmanr``'s definition). NaN when either sample is constant."""
    rank_x, rank_y = average_ranks(np.asarray(x, dtype=float)), average_ranks(np.asarray(y, dtype=float))
    rank_x -= rank_x.mean()
    rank_y -= rank_y.mean()
    denominator = np.sqrt(np.dot(rank_x, rank_x) * np.dot(rank_y, rank_y))
    return float(np.dot(rank_x, rank_y) / denominator) if denominator > 0 else float("nan")


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of a 1-D sample, tied values sharing the mean of the ranks they span."""
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])  # first position of each run of ties
    sizes = np.diff(np.r_[starts, values.size])
    ranks = np.empty(values.size, dtype=float)
    ranks[order] = np.repeat(starts + (sizes + 1) / 2.0, sizes)
    return ranks


def _check_regressor(regressor: str) -> None:
    if regressor not in _FIT:
        raise AnalysisError(f"regressor: {regressor!r} is not one of {', '.join(REGRESSORS)}")


def _validate_eps(eps: float) -> None:
    if not 0.0 < eps < 0.5:
        raise AnalysisError(f"eps: the clipping margin must lie in (0, 0.5), got {eps!r}")


def _validate_huber_epsilon(huber_epsilon: float) -> None:
    if not huber_epsilon >= 1.0:
        raise AnalysisError(f"huber_epsilon: sklearn's HuberRegressor needs a value >= 1.0, got {huber_epsilon!r}")


def _validate_accuracies(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise AnalysisError(f"{name}: expected a non-empty 1-D array of accuracies, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise AnalysisError(f"{name}: contains NaN or infinite accuracies")
    if array.min() < 0.0 or array.max() > 1.0:
        raise AnalysisError(
            f"{name}: accuracies must be fractions in [0, 1], got values in "
            f"[{array.min():g}, {array.max():g}] (percentages? divide by 100)"
        )
    return array


def _validate_pair(
    acc_x: Sequence[float] | np.ndarray, acc_y: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    x = _validate_accuracies(acc_x, "acc_x")
    y = _validate_accuracies(acc_y, "acc_y")
    if x.shape != y.shape:
        raise AnalysisError(f"acc_y: has {y.size} models but acc_x has {x.size}")
    return x, y
