"""ImageNet-X factor analysis: accuracy and error ratio per factor of variation.

ImageNet-X (Idrissi et al. 2023, facebookresearch/imagenetx, package ``imagenet-x``) annotates ImageNet
images with 16 factors (pose, background, ...). Conventions followed here (``imagenet_x/aggregate.py``
and ``imagenet_x/utils.py``):

- Annotation modes: ``"top"`` gives each annotated image exactly one factor (the most salient);
  ``"multi"`` gives it every factor that applies (zero or more).
- Prototype images (``prototypical_paths.csv``, 3,000 in val) are dropped by default, as
  ``load_annotations(filter_prototypes=True)`` does.
- ``acc_f = #(correct and f) / #f`` over the annotated images carrying factor f;
  the overall accuracy ``acc`` is the mean of ``correct`` over all annotated images kept (images
  without any factor in "multi" mode count there too);
  ``error_ratio_f = (1 - acc_f) / (1 - acc)``; above 1 means f is harder than average.
  When ``acc == 1`` every error ratio is undefined and is NaN; a factor with no image has NaN
  accuracy and error ratio. ``worst_factor`` is the reported factor of lowest accuracy.
- "Correct" is whatever the caller decides (top-1 == label, ImageNet-X's ``class`` error type, is
  the usual choice).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from embedstore.analysis.robustness import (
    DEFAULT_CLIP_EPS,
    DEFAULT_HUBER_EPSILON,
    LinearTrend,
    effective_robustness,
    fit_linear_trend,
)
from embedstore.errors import AnalysisError

IMAGENET_X_FACTORS: tuple[str, ...] = (
    "pose",
    "background",
    "pattern",
    "color",
    "smaller",
    "shape",
    "partial_view",
    "subcategory",
    "texture",
    "larger",
    "darker",
    "object_blocking",
    "person_blocking",
    "style",
    "brighter",
    "multiple_objects",
)
"""The 16 factors in ImageNet-X's order (``imagenet_x.utils.FACTORS``)."""

STUDY_DEFAULT_FACTORS: tuple[str, ...] = IMAGENET_X_FACTORS[:10]
"""The ten most frequent "top" factors: the default subset for the study's factor tables."""

ANNOTATION_MODES = ("top", "multi")


@dataclass(frozen=True)
class FactorAnnotations:
    """Factor labels of the annotated samples of a dataset.

    ``rows[i]`` is the sample index (row of the dataset's arrays) that ``matrix[i]`` describes;
    samples without an annotation are absent. ``matrix`` is [len(rows), len(factor_names)] bool.
    """

    rows: np.ndarray
    matrix: np.ndarray
    factor_names: tuple[str, ...]
    mode: str


@dataclass(frozen=True)
class FactorAccuracyTable:
    """Per-factor accuracy of one model (see the module doc for the formulas).

    Arrays are aligned with ``factor_names`` (the reported factors). ``n_images`` counts the
    annotated images kept after prototype filtering; ``n_prototypes_dropped`` those removed.
    """

    factor_names: tuple[str, ...]
    accuracy: np.ndarray
    count: np.ndarray
    error_ratio: np.ndarray
    overall_accuracy: float
    worst_factor: str | None
    n_images: int
    n_prototypes_dropped: int
    mode: str


@dataclass(frozen=True)
class FactorRobustness:
    """Effective robustness of each factor's accuracy against overall accuracy, across models.

    ``trends[f]`` is the line ``T(acc_f) = a * T(acc) + b`` over the reference models;
    ``effective_robustness[m, j]`` is model m's effective robustness on factor ``factor_names[j]``
    in percentage points (NaN for skipped factors, which had no image).
    """

    factor_names: tuple[str, ...]
    trends: dict[str, LinearTrend]
    effective_robustness: np.ndarray
    skipped_factors: tuple[str, ...]


def normalize_factor_name(name: str) -> str:
    """Canonical spelling: lower case, spaces and hyphens as underscores ("Partial view" -> "partial_view")."""
    return "_".join(name.strip().lower().replace("-", " ").split())


def factor_annotations_from_strings(
    annotations: Sequence[str | None],
    mode: str = "top",
    factor_names: Sequence[str] = IMAGENET_X_FACTORS,
) -> FactorAnnotations:
    """Build the factor matrix from one annotation string per sample.

    ``annotations[i]`` is None for a sample without annotation (it is left out). Otherwise in
    ``"top"`` mode it is one factor name; in ``"multi"`` mode a comma-separated list of factor
    names, possibly empty (an annotated image with no factor). Names are matched after
    `normalize_factor_name`, so "partial view" and "partial_view" are the same factor.
    """
    _check_mode(mode)
    names = _validate_factor_names(factor_names)
    column = {name: j for j, name in enumerate(names)}
    rows: list[int] = []
    matrix_rows: list[np.ndarray] = []
    for index, text in enumerate(annotations):
        if text is None:
            continue
        if not isinstance(text, str):
            raise AnalysisError(f"annotations[{index}]: expected a string or None, got {type(text).__name__}")
        parts = [normalize_factor_name(part) for part in text.split(",")] if text.strip() else []
        if mode == "top" and len(parts) != 1:
            raise AnalysisError(f"annotations[{index}]: 'top' mode takes exactly one factor per image, got {text!r}")
        flags = np.zeros(len(names), dtype=bool)
        for part in parts:
            if part not in column:
                raise AnalysisError(f"annotations[{index}]: unknown factor {part!r}")
            flags[column[part]] = True
        rows.append(index)
        matrix_rows.append(flags)
    if not rows:
        raise AnalysisError("annotations: the dataset has no factor annotations")
    return FactorAnnotations(
        rows=np.asarray(rows, dtype=np.int64),
        matrix=np.stack(matrix_rows),
        factor_names=names,
        mode=mode,
    )


def factor_accuracy(
    correct: Sequence[bool] | np.ndarray,
    factor_matrix: np.ndarray,
    factor_names: Sequence[str] = IMAGENET_X_FACTORS,
    mode: str = "top",
    *,
    is_prototype: Sequence[bool] | np.ndarray | None = None,
    drop_prototypes: bool = True,
    factors: Sequence[str] | None = None,
) -> FactorAccuracyTable:
    """Per-factor accuracy, count and error ratio of one model on the annotated images.

    ``correct[i]`` says whether the model got annotated image i right and ``factor_matrix[i, j]``
    whether it carries factor ``factor_names[j]`` (rows: annotated images only, e.g.
    ``correct_all[annotations.rows]`` and ``annotations.matrix``). In ``"top"`` mode every row must
    carry exactly one factor. With ``drop_prototypes`` (the ImageNet-X default) ``is_prototype``
    must flag the prototype images, which are removed before anything is counted; pass
    ``drop_prototypes=False`` to keep every image. ``factors`` selects the reported factors
    (default: all of ``factor_names``; `STUDY_DEFAULT_FACTORS` for the study's ten); the overall
    accuracy always covers every kept image.
    """
    _check_mode(mode)
    names = _validate_factor_names(factor_names)
    hits = _as_bool_vector(correct, "correct")
    matrix = np.asarray(factor_matrix)
    if matrix.ndim != 2 or matrix.shape != (hits.size, len(names)):
        raise AnalysisError(
            f"factor_matrix: expected shape ({hits.size}, {len(names)}) to match correct and "
            f"factor_names, got {matrix.shape}"
        )
    if matrix.dtype != np.bool_:
        if not np.isin(matrix, (0, 1)).all():
            raise AnalysisError("factor_matrix: entries must be 0/1 or boolean")
        matrix = matrix.astype(bool)
    if mode == "top":
        per_row = matrix.sum(axis=1)
        if np.any(per_row != 1):
            bad = int(np.flatnonzero(per_row != 1)[0])
            raise AnalysisError(
                f"factor_matrix: row {bad} has {int(per_row[bad])} factors, 'top' mode takes exactly one"
            )
    keep = _kept_rows(hits.size, is_prototype, drop_prototypes)
    hits, matrix = hits[keep], matrix[keep]
    if hits.size == 0:
        raise AnalysisError("correct: no annotated image is left after prototype filtering")

    reported = _select_factors(names, factors)
    columns = matrix[:, [names.index(name) for name in reported]]
    count = columns.sum(axis=0).astype(np.int64)
    correct_count = (columns & hits[:, None]).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.where(count > 0, correct_count / np.maximum(count, 1), np.nan)
    overall = float(hits.mean())
    error_ratio = (1.0 - accuracy) / (1.0 - overall) if overall < 1.0 else np.full(len(reported), np.nan)
    return FactorAccuracyTable(
        factor_names=reported,
        accuracy=accuracy,
        count=count,
        error_ratio=error_ratio,
        overall_accuracy=overall,
        worst_factor=reported[int(np.nanargmin(accuracy))] if np.any(count > 0) else None,
        n_images=int(hits.size),
        n_prototypes_dropped=int(keep.size - keep.sum()),
        mode=mode,
    )


def factor_effective_robustness(
    tables: Sequence[FactorAccuracyTable],
    reference: Sequence[bool] | np.ndarray | None = None,
    transform: str = "probit",
    regressor: str = "huber",
    *,
    eps: float = DEFAULT_CLIP_EPS,
    huber_epsilon: float = DEFAULT_HUBER_EPSILON,
) -> FactorRobustness:
    """Across models, fit each factor's accuracy against overall accuracy and measure the residual.

    ``tables[m]`` is model m's `factor_accuracy` table (all over the same images and factors).
    For each factor f, `robustness.fit_linear_trend` fits ``T(acc_f) = a * T(acc) + b`` over the
    models flagged in ``reference`` (default: all), and `robustness.effective_robustness` gives
    every model's distance above that line in percentage points. Factors without any image are
    skipped and listed in ``skipped_factors``.
    """
    if len(tables) == 0:
        raise AnalysisError("tables: no model's factor table was given")
    names = tables[0].factor_names
    for m, table in enumerate(tables):
        if table.factor_names != names or table.mode != tables[0].mode:
            raise AnalysisError(f"tables[{m}]: reports other factors or another mode than tables[0]")
    overall = np.array([table.overall_accuracy for table in tables])
    per_factor = np.stack([table.accuracy for table in tables])
    chosen = _reference_mask(reference, len(tables))

    trends: dict[str, LinearTrend] = {}
    er = np.full(per_factor.shape, np.nan)
    skipped: list[str] = []
    for j, name in enumerate(names):
        if np.any(np.isnan(per_factor[:, j])):
            skipped.append(name)
            continue
        trend = fit_linear_trend(
            overall[chosen], per_factor[chosen, j], transform, regressor, eps=eps, huber_epsilon=huber_epsilon
        )
        trends[name] = trend
        er[:, j] = effective_robustness(trend, overall, per_factor[:, j])
    return FactorRobustness(factor_names=names, trends=trends, effective_robustness=er, skipped_factors=tuple(skipped))


def _check_mode(mode: str) -> None:
    if mode not in ANNOTATION_MODES:
        raise AnalysisError(f"mode: {mode!r} is not one of {', '.join(ANNOTATION_MODES)}")


def _validate_factor_names(factor_names: Sequence[str]) -> tuple[str, ...]:
    names = tuple(normalize_factor_name(name) for name in factor_names)
    if not names:
        raise AnalysisError("factor_names: no factor given")
    if len(set(names)) != len(names):
        raise AnalysisError(f"factor_names: contains duplicates: {', '.join(names)}")
    return names


def _select_factors(names: tuple[str, ...], factors: Sequence[str] | None) -> tuple[str, ...]:
    if factors is None:
        return names
    reported = _validate_factor_names(factors)
    unknown = [name for name in reported if name not in names]
    if unknown:
        raise AnalysisError(f"factors: {', '.join(unknown)} not among factor_names")
    return reported


def _as_bool_vector(values: Sequence[bool] | np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise AnalysisError(f"{name}: expected a 1-D array, got shape {array.shape}")
    if array.dtype != np.bool_:
        if array.size and not np.isin(array, (0, 1)).all():
            raise AnalysisError(f"{name}: entries must be 0/1 or boolean")
        array = array.astype(bool)
    return array


def _kept_rows(n: int, is_prototype: Sequence[bool] | np.ndarray | None, drop_prototypes: bool) -> np.ndarray:
    if not drop_prototypes:
        return np.ones(n, dtype=bool)
    if is_prototype is None:
        raise AnalysisError(
            "is_prototype: prototype filtering is on (the ImageNet-X default) but no prototype flags "
            "were given; pass is_prototype or drop_prototypes=False"
        )
    flags = _as_bool_vector(is_prototype, "is_prototype")
    if flags.size != n:
        raise AnalysisError(f"is_prototype: has {flags.size} entries but correct has {n}")
    return ~flags


def _reference_mask(reference: Sequence[bool] | np.ndarray | None, n_models: int) -> np.ndarray:
    if reference is None:
        return np.ones(n_models, dtype=bool)
    mask = _as_bool_vector(reference, "reference")
    if mask.size != n_models:
        raise AnalysisError(f"reference: has {mask.size} entries but {n_models} tables were given")
    return mask
