"""Calibration of classifier outputs: ECE, adaptive ECE, MCE, NLL, Brier, reliability diagrams,
and temperature scaling fitted on a held-out split.

Conventions (recorded with every result):

- Confidence is the top-1 softmax probability and a sample is correct when the top-1 class equals its
  label (as in torchmetrics' ``multiclass_calibration_error`` and Guo et al. 2017).
- Equal-width bins: ``n_bins`` (default 15) bins over [0, 1] with edges ``linspace(0, 1, n_bins + 1)``.
  Bin ``b`` holds confidences in ``[edge_b, edge_{b+1})`` (left-closed, torchmetrics' ``bucketize(...,
  right=True) - 1`` rule); the last bin is closed on both sides, so a confidence of exactly 1.0 lands in
  it. torchmetrics instead puts exactly-1.0 confidences in a 16th overflow slot, so the two agree to
  float rounding whenever no confidence equals 1.0 exactly. Guo et al.'s reference uses ``(lo, hi]``.
- ECE = ``sum_b (n_b / N) * |acc_b - conf_b|`` over non-empty bins; MCE = ``max_b |acc_b - conf_b|``
  over non-empty bins.
- Brier score = ``mean_i sum_c (p_ic - onehot_ic)^2``, Brier's (1950) multi-class form, in [0, 2]
  (not divided by the number of classes).
- Temperature scaling (Guo et al. 2017): one scalar ``T > 0``, probabilities ``softmax(logits / T)``,
  ``T`` minimises the NLL on rows disjoint from the evaluated rows. It never changes the argmax, so
  accuracy is unchanged. For CLIP, logits are ``logit_scale * cos``, so ``T`` is relative to the
  model's own scale.

All functions are pure: numpy arrays in, numbers, arrays or frozen dataclasses out. Inputs are
computed in float64 whatever their stored dtype (the store keeps float16).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize_scalar

from embedstore.errors import AnalysisError

DEFAULT_N_BINS = 15
DEFAULT_TEMPERATURE_BOUNDS = (0.05, 20.0)
# Rows of a probability matrix must sum to 1 within this tolerance (float16 storage rounds to ~1e-3).
_ROW_SUM_TOLERANCE = 1e-3


@dataclass(frozen=True)
class ReliabilityDiagram:
    """Per-bin data of a reliability diagram over equal-width confidence bins.

    ``bin_edges`` has ``n_bins + 1`` entries; ``counts``, ``mean_confidence`` and ``accuracy`` have
    ``n_bins``. Bin ``b`` is ``[bin_edges[b], bin_edges[b + 1])``, the last one closed at 1.0.
    ``mean_confidence`` and ``accuracy`` are NaN for empty bins.
    """

    bin_edges: np.ndarray
    counts: np.ndarray
    mean_confidence: np.ndarray
    accuracy: np.ndarray


@dataclass(frozen=True)
class CalibrationResult:
    """Calibration metrics of one set of logits under one temperature.

    ``acc`` is top-1 accuracy in [0, 1]; ``ece``/``mce`` use ``n_bins`` equal-width bins,
    ``adaptive_ece`` ``n_bins`` equal-mass bins; ``nll`` is the mean negative log-likelihood in nats;
    ``brier`` is the mean over samples of the sum over classes of squared errors, in [0, 2].
    ``temperature`` is the ``T`` the logits were divided by (1.0 means unscaled); ``reliability`` the
    equal-width bins ``ece`` and ``mce`` were read from.
    """

    acc: float
    ece: float
    adaptive_ece: float
    mce: float
    nll: float
    brier: float
    n: int
    temperature: float
    n_bins: int
    reliability: ReliabilityDiagram = field(compare=False, repr=False)


@dataclass(frozen=True)
class TemperatureScalingReport:
    """A temperature fitted on one split and the metrics of each evaluated set before and after it.

    ``before[name]`` is evaluated at ``T = 1`` and ``after[name]`` at ``T = temperature``; both have
    the same keys, in the order the evaluated sets were given.
    """

    temperature: float
    fit_n: int
    before: dict[str, CalibrationResult]
    after: dict[str, CalibrationResult]


# ---------------------------------------------------------------------------------------------------
# Validation


def _check_logits(logits: np.ndarray, name: str = "logits") -> np.ndarray:
    array = np.asarray(logits)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise AnalysisError(f"{name} must be a non-empty [N, C] array, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise AnalysisError(f"{name} must hold real numbers, got dtype {array.dtype}")
    array = array.astype(np.float64, copy=False)
    finite_rows = np.isfinite(array).all(axis=1)
    if not finite_rows.all():
        row = int(np.flatnonzero(~finite_rows)[0])
        raise AnalysisError(f"{name} row {row} holds a NaN or infinite value")
    return array


def _check_probabilities(probs: np.ndarray, name: str = "probs") -> np.ndarray:
    array = _check_logits(probs, name)
    if array.min() < 0.0 or array.max() > 1.0:
        raise AnalysisError(
            f"{name} must hold probabilities in [0, 1] (found {array.min():.4g}..{array.max():.4g}); "
            "pass softmax outputs, or logits to evaluate_calibration"
        )
    row_sums = array.sum(axis=1)
    bad_rows = np.abs(row_sums - 1.0) > _ROW_SUM_TOLERANCE
    if bad_rows.any():
        row = int(np.flatnonzero(bad_rows)[0])
        raise AnalysisError(f"{name} row {row} sums to {row_sums[row]:.6g}, not 1: pass softmax probabilities")
    return array


def _check_labels(labels: np.ndarray, n_rows: int, n_classes: int, name: str = "labels") -> np.ndarray:
    array = np.asarray(labels)
    if array.ndim != 1 or array.shape[0] != n_rows:
        raise AnalysisError(f"{name} must be a 1-D array of {n_rows} class indices, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        raise AnalysisError(f"{name} must hold integer class indices, got dtype {array.dtype}")
    out_of_range = (array < 0) | (array >= n_classes)
    if out_of_range.any():
        row = int(np.flatnonzero(out_of_range)[0])
        raise AnalysisError(f"{name} row {row} is {int(array[row])}, outside the class range [0, {n_classes})")
    return array.astype(np.int64, copy=False)


def _check_n_bins(n_bins: int) -> None:
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise AnalysisError(f"n_bins must be a positive integer, got {n_bins!r}")


def _check_temperature(temperature: float) -> float:
    value = float(temperature)
    if not np.isfinite(value) or value <= 0.0:
        raise AnalysisError(f"temperature must be a finite number > 0, got {temperature!r}")
    return value


# ---------------------------------------------------------------------------------------------------
# Binning


def _confidence_and_correct(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top-1 confidence and whether the top-1 class equals the label (first maximum on ties)."""
    predictions = probs.argmax(axis=1)
    confidence = probs[np.arange(probs.shape[0]), predictions]
    return confidence, (predictions == labels).astype(np.float64)


def _equal_width_bins(confidence: np.ndarray, correct: np.ndarray, n_bins: int) -> ReliabilityDiagram:
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # Left-closed bins as torch.bucketize(right=True) - 1; 1.0 is folded into the last bin.
    bin_index = np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, n_bins - 1)
    counts = np.bincount(bin_index, minlength=n_bins)
    confidence_sums = np.bincount(bin_index, weights=confidence, minlength=n_bins)
    correct_sums = np.bincount(bin_index, weights=correct, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.where(counts > 0, confidence_sums / counts, np.nan)
        accuracy = np.where(counts > 0, correct_sums / counts, np.nan)
    return ReliabilityDiagram(edges, counts, mean_confidence, accuracy)


def _weighted_gap(counts: np.ndarray, mean_confidence: np.ndarray, accuracy: np.ndarray) -> float:
    filled = counts > 0
    weights = counts[filled] / counts.sum()
    return float(np.sum(weights * np.abs(accuracy[filled] - mean_confidence[filled])))


def _max_gap(counts: np.ndarray, mean_confidence: np.ndarray, accuracy: np.ndarray) -> float:
    filled = counts > 0
    return float(np.max(np.abs(accuracy[filled] - mean_confidence[filled])))


def _adaptive_ece_from_confidence(confidence: np.ndarray, correct: np.ndarray, n_bins: int) -> float:
    order = np.argsort(confidence, kind="stable")
    groups = [group for group in np.array_split(order, n_bins) if group.size > 0]
    counts = np.array([group.size for group in groups])
    mean_confidence = np.array([confidence[group].mean() for group in groups])
    accuracy = np.array([correct[group].mean() for group in groups])
    return _weighted_gap(counts, mean_confidence, accuracy)


# ---------------------------------------------------------------------------------------------------
# Metrics on probabilities


def reliability_diagram(probs: np.ndarray, labels: np.ndarray, n_bins: int = DEFAULT_N_BINS) -> ReliabilityDiagram:
    """Per-bin counts, mean top-1 confidence and accuracy over ``n_bins`` equal-width bins.

    Bins are ``[k/n_bins, (k+1)/n_bins)`` for ``k < n_bins - 1`` and ``[1 - 1/n_bins, 1]`` for the last;
    ``probs`` is ``[N, C]`` softmax probabilities, ``labels`` ``[N]`` class indices.
    """
    probs = _check_probabilities(probs)
    labels = _check_labels(labels, probs.shape[0], probs.shape[1])
    _check_n_bins(n_bins)
    confidence, correct = _confidence_and_correct(probs, labels)
    return _equal_width_bins(confidence, correct, int(n_bins))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = DEFAULT_N_BINS) -> float:
    """Expected calibration error ``sum_b (n_b/N) |acc_b - conf_b|`` over equal-width top-1 confidence bins.

    Bins are left-closed ``[k/n_bins, (k+1)/n_bins)``, the last one closed at 1.0. This equals
    torchmetrics' ``multiclass_calibration_error(probs, labels, num_classes, n_bins, norm="l1")`` up to
    float rounding when no confidence is exactly 1.0 (torchmetrics counts those in an extra bin).
    ``probs`` is ``[N, C]`` softmax probabilities (logits are rejected, not silently softmaxed).
    """
    diagram = reliability_diagram(probs, labels, n_bins)
    return _weighted_gap(diagram.counts, diagram.mean_confidence, diagram.accuracy)


def maximum_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = DEFAULT_N_BINS) -> float:
    """Maximum calibration error ``max_b |acc_b - conf_b|`` over the non-empty equal-width bins.

    Same bins as :func:`expected_calibration_error`; torchmetrics' ``norm="max"``.
    """
    diagram = reliability_diagram(probs, labels, n_bins)
    return _max_gap(diagram.counts, diagram.mean_confidence, diagram.accuracy)


def adaptive_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = DEFAULT_N_BINS) -> float:
    """Adaptive (equal-mass) ECE: ``sum_b (n_b/N) |acc_b - conf_b|`` over bins of equal sample count.

    Samples are sorted by top-1 confidence (stable sort) and cut into ``n_bins`` contiguous groups
    whose sizes differ by at most one (``numpy.array_split``); equal confidences may straddle two groups.
    Top-label equal-mass binning as in Nixon et al. 2019 ("Measuring Calibration in Deep Learning").
    """
    probs = _check_probabilities(probs)
    labels = _check_labels(labels, probs.shape[0], probs.shape[1])
    _check_n_bins(n_bins)
    confidence, correct = _confidence_and_correct(probs, labels)
    return _adaptive_ece_from_confidence(confidence, correct, int(n_bins))


def brier_score(probs: np.ndarray, labels: np.ndarray) -> float:
    """Multi-class Brier score ``mean_i sum_c (p_ic - 1[c == y_i])^2``, in [0, 2] (Brier 1950).

    Summed over classes, not averaged, so it does not shrink as the number of classes grows.
    """
    probs = _check_probabilities(probs)
    labels = _check_labels(labels, probs.shape[0], probs.shape[1])
    return _brier_from_probabilities(probs, labels)


def _brier_from_probabilities(probs: np.ndarray, labels: np.ndarray) -> float:
    rows = np.arange(probs.shape[0])
    squared = np.sum(probs**2, axis=1) - 2.0 * probs[rows, labels] + 1.0
    return float(np.mean(squared))


# ---------------------------------------------------------------------------------------------------
# Metrics on logits


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood ``-mean_i log softmax(z_i / T)[y_i]`` in nats, via a stable log-softmax."""
    logits = _check_logits(logits)
    labels = _check_labels(labels, logits.shape[0], logits.shape[1])
    return _nll(logits, labels, _check_temperature(temperature))


def _nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    return _nll_of_temperature(logits, labels)(temperature)


def _nll_of_temperature(logits: np.ndarray, labels: np.ndarray) -> Callable[[float], float]:
    """``T -> NLL`` with what does not depend on ``T`` computed once (a fit evaluates it ~10 times):
    ``log softmax(z / T)_y = (z_y - m) / T - log sum_c exp((z_c - m) / T)`` with ``m = max_c z_c``
    (``T > 0`` keeps the maximum in place, and every exponent is <= 0)."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    label_shifted = shifted[np.arange(logits.shape[0]), labels]

    def nll(temperature: float) -> float:
        return float(np.mean(np.log(np.exp(shifted / temperature).sum(axis=1)) - label_shifted / temperature))

    return nll


def _log_softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    """``log softmax(logits / T)`` row by row, stable (the row maximum subtracted first)."""
    scaled = logits / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    scaled -= np.log(np.exp(scaled).sum(axis=1, keepdims=True))
    return scaled


def evaluate_calibration(
    logits: np.ndarray,
    labels: np.ndarray,
    temperature: float | None = None,
    n_bins: int = DEFAULT_N_BINS,
) -> CalibrationResult:
    """Accuracy, ECE, adaptive ECE, MCE, NLL and Brier of ``softmax(logits / T)``.

    ``temperature=None`` means ``T = 1`` (the logits as given). Bins as in
    :func:`expected_calibration_error`; all metrics are computed on the same ``[N, C]`` logits.
    """
    logits = _check_logits(logits)
    labels = _check_labels(labels, logits.shape[0], logits.shape[1])
    _check_n_bins(n_bins)
    scale = 1.0 if temperature is None else _check_temperature(temperature)
    return _evaluate(logits, labels, scale, int(n_bins))


def _evaluate(logits: np.ndarray, labels: np.ndarray, temperature: float, n_bins: int) -> CalibrationResult:
    log_probs = _log_softmax(logits, temperature)
    probs = np.exp(log_probs)
    # The prediction is the logits' argmax, the same at every T > 0: the probabilities' argmax could
    # move to another class when exp rounds a near tie to an exact one.
    predictions = logits.argmax(axis=1)
    confidence = probs[np.arange(logits.shape[0]), predictions]
    correct = (predictions == labels).astype(np.float64)
    diagram = _equal_width_bins(confidence, correct, n_bins)
    return CalibrationResult(
        acc=float(correct.mean()),
        ece=_weighted_gap(diagram.counts, diagram.mean_confidence, diagram.accuracy),
        adaptive_ece=_adaptive_ece_from_confidence(confidence, correct, n_bins),
        mce=_max_gap(diagram.counts, diagram.mean_confidence, diagram.accuracy),
        nll=float(-np.mean(log_probs[np.arange(logits.shape[0]), labels])),
        brier=_brier_from_probabilities(probs, labels),
        n=int(logits.shape[0]),
        temperature=temperature,
        n_bins=n_bins,
        reliability=diagram,
    )


# ---------------------------------------------------------------------------------------------------
# Temperature scaling


def fit_temperature(
    logits: np.ndarray,
    labels: np.ndarray,
    bounds: tuple[float, float] = DEFAULT_TEMPERATURE_BOUNDS,
) -> float:
    """The scalar ``T`` in ``bounds`` that minimises the NLL of ``softmax(logits / T)`` (Guo et al. 2017).

    A bounded 1-D search (``scipy.optimize.minimize_scalar(method="bounded")``) over ``log T``, which
    replaces Guo et al.'s LBFGS on ``T`` and cannot step to ``T <= 0``. Fit it on rows disjoint from the
    evaluated ones (see :func:`split_calibration_rows`). A result at a bound means the optimum lies
    outside ``bounds``.
    """
    logits = _check_logits(logits)
    labels = _check_labels(labels, logits.shape[0], logits.shape[1])
    low, high = _check_bounds(bounds)
    return _fit_temperature(logits, labels, low, high)


def _check_bounds(bounds: tuple[float, float]) -> tuple[float, float]:
    low, high = (float(bound) for bound in bounds)
    if not (np.isfinite(low) and np.isfinite(high) and 0.0 < low < high):
        raise AnalysisError(f"bounds must be two finite numbers 0 < low < high, got {bounds!r}")
    return low, high


def _fit_temperature(logits: np.ndarray, labels: np.ndarray, low: float, high: float) -> float:
    nll = _nll_of_temperature(logits, labels)
    result = minimize_scalar(
        lambda log_t: nll(float(np.exp(log_t))),
        bounds=(np.log(low), np.log(high)),
        method="bounded",
        options={"xatol": 1e-5},
    )
    return float(np.clip(np.exp(result.x), low, high))


def split_calibration_rows(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded disjoint split of rows ``0..n-1`` into ``(fit_rows, eval_rows)``, each sorted.

    ``fit_rows`` holds ``round(fraction * n)`` rows drawn by ``numpy.random.default_rng(seed)``;
    ``eval_rows`` holds the rest. Both must be non-empty.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
        raise AnalysisError(f"n must be an integer >= 2 to split rows, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise AnalysisError(f"seed must be an integer so that the split is reproducible, got {seed!r}")
    if not 0.0 < float(fraction) < 1.0:
        raise AnalysisError(f"fraction must lie strictly between 0 and 1, got {fraction!r}")
    n_fit = round(float(fraction) * int(n))
    if n_fit == 0 or n_fit == n:
        raise AnalysisError(f"fraction={fraction} of n={n} rows leaves the fit or the eval split empty")
    permutation = np.random.default_rng(seed).permutation(int(n))
    return np.sort(permutation[:n_fit]), np.sort(permutation[n_fit:])


def _check_disjoint_rows(
    fit_rows: np.ndarray,
    n_fit: int,
    eval_rows: Mapping[str, np.ndarray],
    eval_sets: Mapping[str, tuple[np.ndarray, np.ndarray]],
) -> None:
    fit = np.asarray(fit_rows)
    if fit.shape != (n_fit,):
        raise AnalysisError(f"fit_rows has shape {fit.shape}, but fit_logits has {n_fit} rows")
    for name, rows in eval_rows.items():
        if name not in eval_sets:
            raise AnalysisError(f"eval_rows names {name!r}, which is not an eval set")
        rows = np.asarray(rows)
        n_eval = eval_sets[name][0].shape[0]
        if rows.shape != (n_eval,):
            raise AnalysisError(f"eval_rows[{name!r}] has shape {rows.shape}, but its logits have {n_eval} rows")
        shared = np.intersect1d(fit, rows)
        if shared.size:
            raise AnalysisError(
                f"eval set {name!r} shares {shared.size} rows with the fit rows (first: row {int(shared[0])}); "
                "temperature must be fitted on held-out rows"
            )


def temperature_scaling_report(
    fit_logits: np.ndarray,
    fit_labels: np.ndarray,
    eval_sets: Mapping[str, tuple[np.ndarray, np.ndarray]],
    *,
    fit_rows: np.ndarray | None = None,
    eval_rows: Mapping[str, np.ndarray] | None = None,
    bounds: tuple[float, float] = DEFAULT_TEMPERATURE_BOUNDS,
    n_bins: int = DEFAULT_N_BINS,
) -> TemperatureScalingReport:
    """Fit ``T`` on ``(fit_logits, fit_labels)`` and evaluate each eval set before (T=1) and after (T).

    ``eval_sets`` maps a name to ``(logits, labels)``; the study fits on an ImageNet split and evaluates
    the rest of ImageNet and the shifted sets. When an eval set is drawn from the same dataset as the
    fit rows, pass the dataset row indices: ``fit_rows`` and ``eval_rows[name]``; any shared row is an
    error. Accuracy is the same before and after: predictions are the logits' argmax at every ``T``.
    """
    if not eval_sets:
        raise AnalysisError("eval_sets is empty: give at least one (logits, labels) set to evaluate")
    _check_n_bins(n_bins)
    low, high = _check_bounds(bounds)
    fit_logits = _check_logits(fit_logits, "fit_logits")
    fit_labels = _check_labels(fit_labels, fit_logits.shape[0], fit_logits.shape[1], "fit_labels")
    checked_sets: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, (logits, labels) in eval_sets.items():
        logits = _check_logits(logits, f"eval_sets[{name!r}] logits")
        labels = _check_labels(labels, logits.shape[0], logits.shape[1], f"eval_sets[{name!r}] labels")
        checked_sets[name] = (logits, labels)
    if (fit_rows is None) != (eval_rows is None):
        raise AnalysisError("fit_rows and eval_rows must be given together to check that they are disjoint")
    if fit_rows is not None and eval_rows is not None:
        _check_disjoint_rows(fit_rows, fit_logits.shape[0], eval_rows, checked_sets)

    temperature = _fit_temperature(fit_logits, fit_labels, low, high)
    before: dict[str, CalibrationResult] = {}
    after: dict[str, CalibrationResult] = {}
    for name, (logits, labels) in checked_sets.items():
        before[name] = _evaluate(logits, labels, 1.0, int(n_bins))
        after[name] = _evaluate(logits, labels, temperature, int(n_bins))
    return TemperatureScalingReport(temperature=temperature, fit_n=int(fit_logits.shape[0]), before=before, after=after)
