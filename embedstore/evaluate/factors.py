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
    normalize_factor_name,
)
from embedstore.analysis.robustness import (
    DEFAULT_CLIP_EPS,
    DEFAULT_HUBER_EPSILON,
    EFFECTIVE_ROBUSTNESS_UNIT,
    MIN_MODELS_FOR_TREND,
)
from embedstore.errors import AnalysisError
from embedstore.evaluate.common import drop_unfinished, eval_data, head_fits, resolve_models, stores_results_together
from embedstore.evaluate.robustness import drop_unscorable, select_models_where
from embedstore.store import Store

ANALYSIS = "factors"
PROTOTYPE_ANNOTATION = "prototype"
_TRUE_FLAGS = {"1", "true", "yes"}


@dataclass(frozen=True)
class FactorSettings:
    """Every choice of a factor run (see `run_factors`); factor names are normalised and checked."""

    mode: str = "top"
    factors: tuple[str, ...] = STUDY_DEFAULT_FACTORS
    keep_prototypes: bool = False
    prompt_set: str = "default"
    reference: str | None = None
    transform: str = "probit"
    regressor: str = "huber"
    clip_eps: float = DEFAULT_CLIP_EPS

    def __post_init__(self) -> None:
        if self.mode not in ANNOTATION_MODES:
            raise AnalysisError(f"mode: {self.mode!r} is not one of {', '.join(ANNOTATION_MODES)}")
        names = tuple(normalize_factor_name(name) for name in self.factors)
        unknown = [name for name in names if name not in IMAGENET_X_FACTORS]
        if not names:
            raise AnalysisError("factors: no factor given")
        if unknown:
            raise AnalysisError(
                f"factors: unknown ImageNet-X factor(s) {', '.join(map(repr, unknown))} "
                f"(known: {', '.join(IMAGENET_X_FACTORS)})"
            )
        object.__setattr__(self, "factors", names)

    def params(self, reference_models: Sequence[str]) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "factors": list(self.factors),
            "prototypes": "keep" if self.keep_prototypes else "drop",
            "prompt_set": self.prompt_set,
            "correct": "top-1 == label",
            "transform": self.transform,
            "regressor": self.regressor,
            "clip_eps": self.clip_eps,
            "huber_epsilon": DEFAULT_HUBER_EPSILON if self.regressor == "huber" else None,
            "reference": self.reference,
            "reference_models": sorted(reference_models),
            "unit": EFFECTIVE_ROBUSTNESS_UNIT,
        }


@dataclass(frozen=True)
class FactorReport:
    """Per-model factor tables of the selected models and, when fitted, per-factor effective robustness.

    ``robustness.effective_robustness`` rows follow ``robustness_models`` (selected models first, then
    reference models that were not selected); ``robustness_note`` says why it is None when it is."""

    dataset: str
    settings: FactorSettings
    models: list[str]
    tables: dict[str, FactorAccuracyTable]
    robustness: FactorRobustness | None
    robustness_models: list[str]
    reference_models: list[str]
    robustness_note: str | None
    params: dict[str, Any]
    skipped: dict[str, str]
    """Models matched by a glob or the reference condition but left out, with the reason."""


@dataclass(frozen=True)
class DatasetFactors:
    """A dataset's factor annotation strings (``{row: "f1,f2"}``) and prototype flags (``{row: bool}``)."""

    dataset: str
    n_samples: int
    annotations: dict[int, str]
    prototypes: dict[int, bool]

    @classmethod
    def read(cls, store: Store, dataset: str, mode: str) -> DatasetFactors:
        n_samples = int(store.dataset_info(dataset)["n_samples"])
        annotations = store.annotations(dataset, mode).get(mode, {})
        if not annotations:
            have = ", ".join(sorted(store.annotations(dataset))) or "none"
            raise AnalysisError(
                f"dataset {dataset} has no {mode!r} factor annotations (it has: {have}); register an ImageNet "
                f"dataset with imagenet_x=package|DIR, or use a dataset such as synthetic:shapes-x"
            )
        flags = store.annotations(dataset, PROTOTYPE_ANNOTATION).get(PROTOTYPE_ANNOTATION, {})
        prototypes = {row: str(value).strip().lower() in _TRUE_FLAGS for row, value in flags.items()}
        return cls(dataset, n_samples, annotations, prototypes)


@stores_results_together
def run_factors(
    store: Store,
    models: Sequence[str],
    dataset: str,
    *,
    mode: str = "top",
    factors: Sequence[str] = STUDY_DEFAULT_FACTORS,
    keep_prototypes: bool = False,
    prompt_set: str = "default",
    reference: str | None = None,
    transform: str = "probit",
    regressor: str = "huber",
    clip_eps: float = DEFAULT_CLIP_EPS,
) -> FactorReport:
    """Per-factor accuracy, error ratio and worst factor of each model, plus per-factor effective robustness.

    ``factors`` are the reported factors (`IMAGENET_X_FACTORS` for all 16). Models (ids or globs)
    are scored on ``dataset``; reference models the ``reference`` condition selects are scored too
    (for the fit) but reported only when selected. Results are written to the catalog (see the
    module doc) and returned.
    """
    settings = FactorSettings(mode, tuple(factors), keep_prototypes, prompt_set, reference, transform, regressor,
                              clip_eps)  # fmt: skip
    # The sandboxed filter query opens its own connection, so it runs before the session holds one.
    chosen_reference = None if reference is None else select_models_where(store, reference)
    with store.session():
        skipped: dict[str, str] = {}
        reason = f"its logits do not fit the classes of {dataset}"

        def scorable(model: str) -> bool:
            return head_fits(store, model, dataset)

        ready = drop_unfinished(store, resolve_models(store, models), models, [dataset], skipped)
        selected = drop_unscorable(ready, models, scorable, reason, skipped)
        if chosen_reference is None:
            reference_models = list(selected)
        else:
            ready = drop_unfinished(store, chosen_reference, None, [dataset], skipped)
            reference_models = drop_unscorable(ready, None, scorable, reason, skipped)
        everyone = selected + [m for m in reference_models if m not in selected]
        factor_rows = DatasetFactors.read(store, dataset, mode)
        tables = {model: _factor_table(store, model, factor_rows, settings) for model in everyone}
        robustness, note = _factor_robustness(settings, dataset, selected, reference_models, everyone, tables)
        report = FactorReport(dataset, settings, selected, {m: tables[m] for m in selected}, robustness, everyone,
                              sorted(reference_models), note, settings.params(reference_models), skipped)  # fmt: skip
        _write(store, report)
    return report


def _factor_table(
    store: Store, model: str, factor_rows: DatasetFactors, settings: FactorSettings
) -> FactorAccuracyTable:
    data = eval_data(store, model, factor_rows.dataset, settings.prompt_set)
    correct_of_row = dict(zip(data.rows.tolist(), (np.argmax(data.logits, axis=1) == data.labels).tolist()))
    # Only evaluated rows (decodable, labelled) take part: the others are passed as unannotated.
    strings = [
        factor_rows.annotations.get(row) if row in correct_of_row else None for row in range(factor_rows.n_samples)
    ]
    try:
        annotated = factor_annotations_from_strings(strings, settings.mode, IMAGENET_X_FACTORS)
    except AnalysisError as exc:
        raise AnalysisError(f"dataset {factor_rows.dataset}: {exc}") from None
    rows = annotated.rows.tolist()
    return factor_accuracy(
        np.array([correct_of_row[row] for row in rows], dtype=bool),
        annotated.matrix,
        annotated.factor_names,
        settings.mode,
        is_prototype=np.array([factor_rows.prototypes.get(row, False) for row in rows], dtype=bool),
        drop_prototypes=not settings.keep_prototypes,
        factors=settings.factors,
    )


def _factor_robustness(
    settings: FactorSettings,
    dataset: str,
    selected: list[str],
    reference_models: list[str],
    everyone: list[str],
    tables: dict[str, FactorAccuracyTable],
) -> tuple[FactorRobustness | None, str | None]:
    """Per-factor effective robustness over the reference models, or (None, why) when there is no
    ``--reference`` and the selected models cannot make a line (too few, or no spread of accuracy);
    with a ``--reference`` that cannot, an error."""
    if len(reference_models) < MIN_MODELS_FOR_TREND:
        if settings.reference is not None:
            raise AnalysisError(
                f"reference: {settings.reference!r} selects {len(reference_models)} model(s); a per-factor "
                f"effective-robustness line needs at least {MIN_MODELS_FOR_TREND}"
            )
        return None, (
            f"per-factor effective robustness left out: {len(selected)} model(s) selected and no reference "
            f"condition; a line needs at least {MIN_MODELS_FOR_TREND}"
        )
    in_reference = set(reference_models)
    try:
        robustness = factor_effective_robustness(
            [tables[m] for m in everyone], [m in in_reference for m in everyone], settings.transform,
            settings.regressor, eps=settings.clip_eps,
        )  # fmt: skip
    except AnalysisError as exc:
        if settings.reference is not None:
            raise AnalysisError(f"per-factor effective robustness on {dataset}: {exc}") from None
        return None, f"per-factor effective robustness left out: no line through the selected models ({exc})"
    return robustness, None


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
