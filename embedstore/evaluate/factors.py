"""ImageNet-X-style factor analysis of models on any dataset whose samples carry factor annotations.

A dataset qualifies when its samples have a ``top`` annotation (one factor per image) and/or a
``multi`` annotation (comma-separated factors, possibly empty), with ImageNet-X factor names:
ImageNet val joined with ImageNet-X (``imagenet_x=...`` when registering) or the synthetic
``shapes-x``. `run_factors` computes, per model, the top-1 accuracy on the images carrying each
factor, the error ratio ``(1 - acc_f) / (1 - acc)`` and the worst factor
(`embedstore.analysis.factors`, after facebookresearch/imagenetx), then fits each factor's accuracy
against overall accuracy across models and reports every model's per-factor effective robustness.

Conventions (all recorded in the results' params):

- "Correct" is top-1 == label on the dataset's own classes: CLIP zero-shot under the prompt set,
  classifier head logits otherwise (`embedstore.evaluate.common.eval_data`); rows listed in
  ``bad_samples`` are left out before anything is counted.
- Prototypes: a sample whose ``prototype`` annotation is ``1``/``true``/``yes`` is a prototype
  image and is dropped unless ``keep_prototypes``. ImageNet-X datasets registered with the default
  ``imagenet_x_prototypes=drop`` already carry no factor annotation on their prototypes, so those
  never reach the analysis either way; ``n_prototypes_dropped`` counts what was dropped here.
- Reported factors default to `STUDY_DEFAULT_FACTORS` (the ten most frequent "top" factors).
- Per-factor effective robustness uses `embedstore.analysis.robustness` (T = probit or logit, Huber
  or OLS) over the reference models (a condition on ``models``, default: the selected models); it
  needs at least 3 reference models. Without an explicit reference and with fewer selected models it
  is left out (the report says so); with an explicit reference, too few models is an error.

Results (analysis ``factors``, per model and dataset): ``acc1`` (all kept annotated images),
``acc1@factor:F``, ``error_ratio@factor:F``, ``n_images@factor:F``, ``worst_factor`` (text),
``n_images``, ``n_prototypes_dropped`` and, when fitted, ``effective_robustness@factor:F``
(percentage points); with ``model`` NULL, each factor's line ``slope@factor:F``,
``intercept@factor:F``, ``r2@factor:F``, ``spearman@factor:F``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from embedstore.analysis.factors import (
    ANNOTATION_MODES,
    IMAGENET_X_FACTORS,
    STUDY_DEFAULT_FACTORS,
    FactorAccuracyTable,
    FactorRobustness,
    factor_accuracy,
    factor_annotations_from_strings,
    factor_effective_robustness,
)
from embedstore.analysis.robustness import (
    DEFAULT_CLIP_EPS,
    DEFAULT_HUBER_EPSILON,
    EFFECTIVE_ROBUSTNESS_UNIT,
    MIN_MODELS_FOR_TREND,
)
from embedstore.errors import AnalysisError
from embedstore.evaluate.common import eval_data, resolve_models
from embedstore.evaluate.robustness import select_models_where
from embedstore.store import Store

ANALYSIS = "factors"
PROTOTYPE_ANNOTATION = "prototype"
_TRUE_FLAGS = {"1", "true", "yes"}


@dataclass(frozen=True)
class FactorReport:
    """Per-model factor tables of the selected models and, when fitted, per-factor effective robustness.

    ``robustness.effective_robustness`` rows follow ``robustness_models`` (selected models first, then
    reference models that were not selected); ``robustness_note`` says why it is None when it is."""

    dataset: str
    mode: str
    models: list[str]
    tables: dict[str, FactorAccuracyTable]
    robustness: FactorRobustness | None
    robustness_models: list[str]
    reference_models: list[str]
    robustness_note: str | None
    params: dict[str, Any]


def run_factors(
    store: Store,
    models: Sequence[str],
    dataset: str,
    *,
    mode: str = "top",
    factors: Sequence[str] | None = STUDY_DEFAULT_FACTORS,
    keep_prototypes: bool = False,
    prompt_set: str = "default",
    reference: str | None = None,
    transform: str = "probit",
    regressor: str = "huber",
    clip_eps: float = DEFAULT_CLIP_EPS,
) -> FactorReport:
    """Per-factor accuracy, error ratio and worst factor of each model, plus per-factor effective robustness.

    ``factors=None`` reports all 16 ImageNet-X factors. Results are written to the catalog (see the
    module doc) and returned.
    """
    if mode not in ANNOTATION_MODES:
        raise AnalysisError(f"mode: {mode!r} is not one of {', '.join(ANNOTATION_MODES)}")
    selected = resolve_models(store, models)
    annotations = _factor_annotations(store, dataset, mode)
    prototypes = _prototype_flags(store, dataset)
    reported = tuple(factors) if factors is not None else IMAGENET_X_FACTORS
    reference_models = select_models_where(store, reference) if reference is not None else list(selected)
    everyone = selected + [m for m in reference_models if m not in selected]

    tables = {
        model: _factor_table(store, model, dataset, annotations, prototypes, mode, reported, keep_prototypes,
                             prompt_set)
        for model in everyone
    }  # fmt: skip
    params: dict[str, Any] = {
        "mode": mode,
        "factors": list(tables[everyone[0]].factor_names),
        "prototypes": "keep" if keep_prototypes else "drop",
        "prompt_set": prompt_set,
        "correct": "top-1 == label",
        "transform": transform,
        "regressor": regressor,
        "clip_eps": clip_eps,
        "huber_epsilon": DEFAULT_HUBER_EPSILON if regressor == "huber" else None,
        "reference": reference,
        "reference_models": sorted(reference_models),
        "unit": EFFECTIVE_ROBUSTNESS_UNIT,
    }
    robustness, note = None, None
    if len(reference_models) >= MIN_MODELS_FOR_TREND:
        in_reference = set(reference_models)
        try:
            robustness = factor_effective_robustness(
                [tables[m] for m in everyone], [m in in_reference for m in everyone], transform, regressor,
                eps=clip_eps,
            )  # fmt: skip
        except AnalysisError as exc:
            raise AnalysisError(f"per-factor effective robustness on {dataset}: {exc}") from None
    elif reference is not None:
        raise AnalysisError(
            f"reference: {reference!r} selects {len(reference_models)} model(s); a per-factor effective-robustness "
            f"line needs at least {MIN_MODELS_FOR_TREND}"
        )
    else:
        note = (
            f"per-factor effective robustness left out: {len(selected)} model(s) selected and no reference "
            f"condition; a line needs at least {MIN_MODELS_FOR_TREND}"
        )
    report = FactorReport(dataset, mode, selected, {m: tables[m] for m in selected}, robustness, everyone,
                          sorted(reference_models), note, params)  # fmt: skip
    _write(store, report)
    return report


def _factor_annotations(store: Store, dataset: str, mode: str) -> dict[int, str]:
    values = store.annotations(dataset, mode).get(mode, {})
    if not values:
        have = ", ".join(sorted(store.annotations(dataset))) or "none"
        raise AnalysisError(
            f"dataset {dataset} has no {mode!r} factor annotations (it has: {have}); register an ImageNet "
            f"dataset with imagenet_x=package|DIR, or use a dataset such as synthetic:shapes-x"
        )
    return values


def _prototype_flags(store: Store, dataset: str) -> dict[int, bool]:
    values = store.annotations(dataset, PROTOTYPE_ANNOTATION).get(PROTOTYPE_ANNOTATION, {})
    return {row: str(value).strip().lower() in _TRUE_FLAGS for row, value in values.items()}


def _factor_table(
    store: Store,
    model: str,
    dataset: str,
    annotations: dict[int, str],
    prototypes: dict[int, bool],
    mode: str,
    reported: tuple[str, ...],
    keep_prototypes: bool,
    prompt_set: str,
) -> FactorAccuracyTable:
    data = eval_data(store, model, dataset, prompt_set)
    correct_of_row = dict(zip(data.rows.tolist(), (np.argmax(data.logits, axis=1) == data.labels).tolist()))
    n_rows = int(store.dataset_info(dataset)["n_samples"])
    # Only rows that were evaluated (usable, labelled) take part; the others count as unannotated.
    strings = [annotations.get(row) if row in correct_of_row else None for row in range(n_rows)]
    try:
        factor_rows = factor_annotations_from_strings(strings, mode, IMAGENET_X_FACTORS)
    except AnalysisError as exc:
        raise AnalysisError(f"dataset {dataset}: {exc}") from None
    correct = np.array([correct_of_row[row] for row in factor_rows.rows.tolist()], dtype=bool)
    is_prototype = np.array([prototypes.get(row, False) for row in factor_rows.rows.tolist()], dtype=bool)
    return factor_accuracy(
        correct, factor_rows.matrix, factor_rows.factor_names, mode,
        is_prototype=is_prototype, drop_prototypes=not keep_prototypes, factors=reported,
    )  # fmt: skip


def _write(store: Store, report: FactorReport) -> None:
    er_index = {model: i for i, model in enumerate(report.robustness_models)}
    for model, table in report.tables.items():
        metrics: list[tuple[str, Any]] = [
            ("acc1", table.overall_accuracy),
            ("n_images", table.n_images),
            ("n_prototypes_dropped", table.n_prototypes_dropped),
        ]
        if table.worst_factor is not None:
            metrics.append(("worst_factor", table.worst_factor))
        for j, name in enumerate(table.factor_names):
            metrics += [
                (f"acc1@factor:{name}", _finite_or_none(table.accuracy[j])),
                (f"error_ratio@factor:{name}", _finite_or_none(table.error_ratio[j])),
                (f"n_images@factor:{name}", int(table.count[j])),
            ]
            if report.robustness is not None and name in report.robustness.trends:
                er = report.robustness.effective_robustness[er_index[model], j]
                metrics.append((f"effective_robustness@factor:{name}", float(er)))
        store.put_results(ANALYSIS, metrics, params=report.params, model=model, dataset=report.dataset)
    if report.robustness is not None:
        lines: list[tuple[str, Any]] = []
        for name, trend in report.robustness.trends.items():
            lines += [
                (f"slope@factor:{name}", trend.a),
                (f"intercept@factor:{name}", trend.b),
                (f"r2@factor:{name}", _finite_or_none(trend.r2)),
                (f"spearman@factor:{name}", _finite_or_none(trend.spearman)),
            ]
        params = {**report.params, "models": sorted(report.models)}
        store.put_results(ANALYSIS, lines, params=params, model=None, dataset=report.dataset)


def _finite_or_none(value: float) -> float | None:
    return None if math.isnan(value) else float(value)
