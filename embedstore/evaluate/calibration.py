"""Calibration from the cache: ECE, adaptive ECE, MCE, NLL, Brier and reliability-diagram bins, before
and after temperature scaling (``embedstore.analysis.calibration``).

Logits (``common.eval_data``): CLIP models are scored zero-shot, ``logit_scale * cos (+ logit_bias)``
under a prompt set; classifiers by their head logits, sliced to a class-subset dataset's columns.
Rows in ``bad_samples`` and unlabelled rows are left out. A dataset without classes or labelled rows
(a caption set, an OOD set) or a classifier whose head does not cover a dataset's classes is an error
when named exactly and skipped when only a glob matched it.

Where the temperature is fitted (Guo et al. 2017: one scalar ``T`` minimising the NLL on rows disjoint
from the evaluated ones), recorded as the params ``fit_dataset``, ``fit_split`` and ``seed``:

- ``split`` (the default, fraction 0.5, seed 0): each dataset on its own. ``T`` is fitted on a seeded
  fraction of its rows (``analysis.calibration.split_calibration_rows``) and every metric is
  reported on the remaining rows.
- ``calibrate_on=D0``: one ``T`` per model, fitted on all of D0's rows, applied to every dataset (the
  study fits on ImageNet and evaluates ImageNet-V2, -R, -A). D0 may itself be reported only together
  with ``split``: ``T`` is then fitted on the split of D0 and D0's held-out rows are reported.

Results (analysis ``"calibration"``, one set per (model, dataset)): ``acc1`` (unchanged by ``T``),
``n`` (rows reported), ``fit_n``, ``temperature``; ``ece``, ``adaptive_ece``, ``mce``, ``nll``,
``brier`` at ``T = 1`` and ``ece_scaled`` ... ``brier_scaled`` at the fitted ``T``; reliability bins
``reliability_count@bin:<b>``, ``reliability_conf@bin:<b>`` (mean top-1 confidence),
``reliability_acc@bin:<b>`` and their ``_scaled`` twins (``reliability_acc_scaled@bin:<b>``). Bin ``b``
of ``n_bins`` (15) is ``[b/n_bins, (b+1)/n_bins)``, the last one closed at 1; empty bins store only
their count.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from embedstore.analysis.calibration import (
    DEFAULT_N_BINS,
    DEFAULT_TEMPERATURE_BOUNDS,
    CalibrationResult,
    ReliabilityDiagram,
    split_calibration_rows,
    temperature_scaling_report,
)
from embedstore.errors import AnalysisError, EmbedstoreError
from embedstore.evaluate.common import (
    EvalData,
    eval_data,
    has_labelled_classes,
    head_fits,
    named_explicitly,
    resolve_datasets,
    resolve_models,
    skips_unfinished,
    stores_results_together,
)
from embedstore.store import Store

ANALYSIS = "calibration"
DEFAULT_SPLIT = 0.5
SCALED_SUFFIX = "_scaled"
_SUMMARY_METRICS = ("ece", "adaptive_ece", "mce", "nll", "brier")


@dataclass(frozen=True)
class FitSource:
    """Where ``T`` is fitted: ``dataset`` (None: each evaluated dataset itself), the fraction ``split``
    of its rows (None: all of them) drawn with ``seed`` (None when nothing is drawn)."""

    dataset: str | None
    split: float | None
    seed: int | None


@dataclass(frozen=True)
class CalibrationRun:
    """One model on one dataset: metrics at ``T = 1`` (``before``) and at the fitted ``T`` (``after``).

    ``fit_rows`` are rows of ``fit_dataset`` that ``T`` was fitted on; ``eval_rows`` the rows of
    ``dataset`` that were reported (disjoint from ``fit_rows`` when both come from one dataset).
    """

    model: str
    dataset: str
    fit_dataset: str
    temperature: float
    temperature_bounds: tuple[float, float]
    fit_rows: np.ndarray
    eval_rows: np.ndarray
    before: CalibrationResult
    after: CalibrationResult
    reliability_before: ReliabilityDiagram
    reliability_after: ReliabilityDiagram
    params: dict[str, Any]

    @property
    def temperature_at_bound(self) -> bool:
        """True when the fitted ``T`` sits on a search bound (the NLL optimum lies beyond it)."""
        return bool(np.isclose(self.temperature, self.temperature_bounds, rtol=1e-3).any())

    def summary(self) -> dict[str, Any]:
        """The headline numbers, for a table or JSON."""
        row: dict[str, Any] = {
            "model": self.model,
            "dataset": self.dataset,
            "fit_on": self.fit_dataset if self.params["fit_split"] is None else f"{self.fit_dataset} (split)",
            "temperature": self.temperature,
            "fit_n": self.fit_n,
            "n": self.before.n,
            "acc1": self.before.acc,
        }
        for name in _SUMMARY_METRICS:
            row[name] = getattr(self.before, name)
            row[name + SCALED_SUFFIX] = getattr(self.after, name)
        return row

    @property
    def fit_n(self) -> int:
        return int(self.fit_rows.size)

    def metric_rows(self) -> list[tuple[str, float]]:
        """``(metric, value)`` pairs as stored in ``results`` (see the module docstring)."""
        rows: list[tuple[str, float]] = [
            ("acc1", self.before.acc),
            ("n", float(self.before.n)),
            ("fit_n", float(self.fit_n)),
            ("temperature", self.temperature),
        ]
        for suffix, result, diagram in (
            ("", self.before, self.reliability_before),
            (SCALED_SUFFIX, self.after, self.reliability_after),
        ):
            rows += [(name + suffix, float(getattr(result, name))) for name in _SUMMARY_METRICS]
            for b, count in enumerate(diagram.counts):
                rows.append((f"reliability_count{suffix}@bin:{b}", float(count)))
                if count:
                    rows.append((f"reliability_conf{suffix}@bin:{b}", float(diagram.mean_confidence[b])))
                    rows.append((f"reliability_acc{suffix}@bin:{b}", float(diagram.accuracy[b])))
        return rows


def fit_source(calibrate_on: str | None, split: float | None, seed: int, datasets: Sequence[str]) -> FitSource:
    """Where ``T`` is fitted, checked against the evaluated ``datasets`` (see the module docstring)."""
    if calibrate_on is None:
        return FitSource(None, DEFAULT_SPLIT if split is None else float(split), int(seed))
    if split is None and calibrate_on in datasets:
        raise AnalysisError(
            f"dataset {calibrate_on} is also the --calibrate-on dataset: T fitted on all its rows cannot be "
            "evaluated on them; add --split to hold part of it out, or leave it out of --dataset"
        )
    return FitSource(calibrate_on, None if split is None else float(split), None if split is None else int(seed))


@stores_results_together
def run_calibration(
    store: Store,
    models: Sequence[str],
    datasets: Sequence[str],
    *,
    calibrate_on: str | None = None,
    split: float | None = None,
    seed: int = 0,
    prompt_set: str = "default",
    n_bins: int = DEFAULT_N_BINS,
    bounds: tuple[float, float] = DEFAULT_TEMPERATURE_BOUNDS,
    skipped: dict[str, str] | None = None,
) -> list[CalibrationRun]:
    """Calibrate every model (ids or globs) on every dataset (names or globs) and record the results.

    Without ``calibrate_on`` each dataset is split (``split`` defaults to 0.5): ``T`` is fitted on
    that seeded fraction and the rest is reported. With ``calibrate_on=D0``, ``T`` is fitted on all of
    D0 (or on its seeded ``split`` when given) and applied to every dataset. Re-running with the same
    parameters replaces a run's rows; other parameters add rows. What a glob matched that cannot be
    calibrated is left out, with the reason put in ``skipped`` when given.
    """
    skipped = {} if skipped is None else skipped
    with store.session():
        model_ids = resolve_models(store, models)
        dataset_names = resolve_datasets(store, datasets)
        source = fit_source(calibrate_on, split, seed, dataset_names)
        plan = _plan(store, model_ids, dataset_names, source, models, datasets, skipped)
    runs: list[CalibrationRun] = []
    for model, evaluated in plan.items():
        if source.dataset is None:
            for dataset in evaluated:
                runs += _calibrate_model(store, model, dataset, [dataset], source, prompt_set, n_bins, bounds)
        else:
            runs += _calibrate_model(store, model, source.dataset, evaluated, source, prompt_set, n_bins, bounds)
    with store.session():
        for run in runs:
            store.put_results(ANALYSIS, run.metric_rows(), params=run.params, model=run.model, dataset=run.dataset)
    return runs


def _plan(
    store: Store,
    model_ids: Sequence[str],
    dataset_names: Sequence[str],
    source: FitSource,
    model_patterns: Sequence[str],
    dataset_patterns: Sequence[str],
    skipped: dict[str, str],
) -> dict[str, list[str]]:
    """The datasets each model is calibrated on. A dataset with no classes or no labelled rows, or a
    classifier head that does not fit a dataset, is an error when named exactly and skipped, with the
    reason in ``skipped``, when only a glob matched it (``common.named_explicitly``); the
    ``calibrate_on`` dataset counts as named."""
    usable = [
        d
        for d in dataset_names
        if has_labelled_classes(
            store, d, named=named_explicitly(d, dataset_patterns), needed_for="calibration", skipped=skipped
        )  # fmt: skip
    ]
    if source.dataset is not None:
        has_labelled_classes(store, source.dataset, named=True, needed_for="calibration")
    plan = {}
    for model in model_ids:
        named = named_explicitly(model, model_patterns)
        if source.dataset is not None and not _fits_head(store, model, source.dataset, named):
            skipped[model] = f"its head does not fit the classes of {source.dataset} (--calibrate-on)"
            continue
        if source.dataset is not None and skips_unfinished(store, model, source.dataset, named, skipped):
            continue
        fitting = [d for d in usable if _fits_head(store, model, d, named)]
        if len(fitting) < len(usable):
            unfit = [d for d in usable if d not in fitting]
            skipped[model] = f"its head does not fit the classes of {', '.join(unfit)}"
        fitting = [
            d
            for d in fitting
            if not skips_unfinished(store, model, d, named and named_explicitly(d, dataset_patterns), skipped)
        ]
        if fitting:
            plan[model] = fitting
    if not plan:
        raise AnalysisError(
            f"no model among {', '.join(model_ids)} can be calibrated on {', '.join(dataset_names)} "
            "(datasets need classes and labelled rows; classifier heads need the dataset's classes or a class subset)"
        )
    return plan


def _fits_head(store: Store, model: str, dataset: str, named: bool) -> bool:
    """True for CLIP models; for a classifier, whether its head covers the dataset's classes.
    A classifier named exactly is kept so that ``eval_data`` reports the mismatch."""
    return named or head_fits(store, model, dataset)


def _calibrate_model(
    store: Store,
    model: str,
    fit_dataset: str,
    datasets: Sequence[str],
    source: FitSource,
    prompt_set: str,
    n_bins: int,
    bounds: tuple[float, float],
) -> list[CalibrationRun]:
    """Fit one ``T`` for ``model`` on ``fit_dataset`` and evaluate it on each of ``datasets``."""
    fit_data = _read(store, model, fit_dataset, prompt_set)
    if source.split is None or source.seed is None:
        fit_rows, held_out = fit_data.rows, None
        fit_logits, fit_labels = fit_data.logits, fit_data.labels
    else:
        with _prefixed_errors(f"dataset {fit_dataset} ({len(fit_data.rows)} labelled rows)"):
            fit_positions, held_positions = split_calibration_rows(len(fit_data.rows), source.split, source.seed)
        fit_rows, held_out = fit_data.rows[fit_positions], _subset(fit_data, held_positions)
        fit_logits, fit_labels = fit_data.logits[fit_positions], fit_data.labels[fit_positions]
    evaluated = {
        dataset: held_out if dataset == fit_dataset else _read(store, model, dataset, prompt_set)
        for dataset in datasets
    }
    same_dataset_rows = {fit_dataset: evaluated[fit_dataset].rows} if fit_dataset in evaluated else None
    with _prefixed_errors(f"model {model}, T fitted on {fit_dataset}"):
        report = temperature_scaling_report(
            fit_logits,
            fit_labels,
            {dataset: (data.logits, data.labels) for dataset, data in evaluated.items()},
            fit_rows=fit_rows if same_dataset_rows else None,
            eval_rows=same_dataset_rows,
            bounds=bounds,
            n_bins=n_bins,
        )
    runs = []
    for dataset, data in evaluated.items():
        params = {
            **data.params(),
            "fit_dataset": fit_dataset,
            "fit_split": source.split,
            "seed": source.seed,
            "n_bins": int(n_bins),
            "temperature_bounds": [float(b) for b in bounds],
        }
        runs.append(
            CalibrationRun(
                model=model,
                dataset=dataset,
                fit_dataset=fit_dataset,
                temperature=report.temperature,
                temperature_bounds=(float(bounds[0]), float(bounds[1])),
                fit_rows=fit_rows,
                eval_rows=data.rows,
                before=report.before[dataset],
                after=report.after[dataset],
                reliability_before=report.before[dataset].reliability,
                reliability_after=report.after[dataset].reliability,
                params=params,
            )
        )
    return runs


def _read(store: Store, model: str, dataset: str, prompt_set: str) -> EvalData:
    """``eval_data`` over one catalog connection (a burst of reads; nothing is computed while it is held)."""
    with store.session():
        return eval_data(store, model, dataset, prompt_set)


def _subset(data: EvalData, positions: np.ndarray) -> EvalData:
    """``data`` restricted to ``positions`` (indices into its rows)."""
    cosines = None if data.cosines is None else data.cosines[positions]
    return replace(data, rows=data.rows[positions], labels=data.labels[positions], logits=data.logits[positions],
                   cosines=cosines)  # fmt: skip


@contextmanager
def _prefixed_errors(context: str) -> Iterator[None]:
    """Re-raise an ``EmbedstoreError`` of the block as the same one-line error prefixed by ``context``."""
    try:
        yield
    except EmbedstoreError as error:
        raise type(error)(f"{context}: {error}") from None
