"""Effective robustness across models: accuracies from the store, a trend over a reference group.

For an in-distribution dataset X and each shifted dataset Y, `run_robustness` fits
``T(acc_Y) = a * T(acc_X) + b`` over a reference group of models and reports, for every selected
model, ``ER = 100 * (acc_Y - T^-1(a * T(acc_X) + b))`` in percentage points (Taori et al. 2020;
imagenet-testbed; the formulas and their conventions live in `embedstore.analysis.robustness`).

Where the numbers come from (recorded with every result):

- Accuracy is top-1 (acc1) on the dataset's usable labelled rows. It is read from the catalog when a
  ``results`` row of analysis ``zeroshot``, metric ``acc1`` exists for the same model and dataset
  (for CLIP models: with ``params.prompt_set`` equal to the prompt set asked for and its current
  templates) whose run scored as many rows (``n``) as the dataset has usable rows now (bad samples
  recorded since change them); the most recent such row wins. Otherwise it is computed now from the
  cached arrays with `embedstore.evaluate.common.eval_data` (CLIP: zero-shot under the prompt set;
  classifiers and imported models: head logits). Each model's per-dataset rows say which (``acc1_id_source``,
  ``acc1_shift_source``: ``results`` or ``computed``).
- The reference group is a SQL boolean expression over the ``models`` table (e.g.
  ``group_label = 'ImageNet classifier'``), evaluated as ``SELECT model_id FROM models WHERE (expr)``
  on the store's read-only sandboxed connection; without one, the selected models are the reference.
  Both the expression and the resolved model list are stored in the params.
- Accuracies of exactly 0 or 1 are clipped to ``[clip_eps, 1 - clip_eps]`` inside T only (T is
  infinite there); the measured accuracy enters ER unclipped.

Results (analysis ``robustness``, ``dataset`` = the shifted dataset, ``params.id_dataset`` = X):
per model ``effective_robustness`` (percentage points), ``acc1_id``, ``acc1_shift``,
``predicted_acc1_shift`` (fractions) and, with a bootstrap, ``effective_robustness_ci_low/high``;
per shifted dataset one row set with ``model`` NULL holding the line (``slope``, ``intercept``,
``r2_transformed``, ``spearman``, ``n_reference_models``) and the per-group statistics of the
selected models (``slope@group:G``, ``intercept@group:G``, ``r2@group:G``, ``spearman@group:G``,
``n_models@group:G``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import duckdb
import numpy as np

from embedstore.analysis.robustness import (
    DEFAULT_CLIP_EPS,
    DEFAULT_HUBER_EPSILON,
    EFFECTIVE_ROBUSTNESS_UNIT,
    MIN_MODELS_FOR_TREND,
    REGRESSORS,
    TRANSFORMS,
    GroupStatistics,
    LinearTrend,
    TrendBand,
    bootstrap_trend_band,
    effective_robustness,
    fit_linear_trend,
    group_statistics,
    min_resamples,
)
from embedstore.analysis.zeroshot import acc1
from embedstore.errors import AnalysisError, StoreError
from embedstore.evaluate.common import (
    eval_data,
    has_labelled_classes,
    head_fits,
    model_kind,
    named_explicitly,
    resolve_datasets,
    resolve_models,
    stores_results_together,
    unfinished_arrays,
    usable_rows,
)
from embedstore.store import Store

ANALYSIS = "robustness"
DEFAULT_GROUP_BY = "group_label"
NO_GROUP = "(none)"
"""Group name of models whose ``--group-by`` column is NULL."""

ACCURACY_FROM_RESULTS = "results"
ACCURACY_COMPUTED = "computed"


# -- model selection shared by the cross-model runners (factors, shape_bias, probe) --------------------


def check_model_filter(expression: str) -> str:
    """The expression, stripped, if it is one SQL expression; else an `AnalysisError`.

    Refused: an empty expression, ``;`` outside string literals, comments, and parentheses that do
    not balance (which could close the ``WHERE (...)`` it is put in). Tokens come from DuckDB's own
    tokenizer, so a ``;`` inside a quoted string is fine.
    """
    text = expression.strip()
    if not text:
        raise AnalysisError("reference: the model filter is empty; give a SQL condition such as \"kind = 'clip'\"")
    tokens = duckdb.tokenize(text)
    ends = [start for start, _ in tokens[1:]] + [len(text)]
    depth = 0
    for (start, kind), end in zip(tokens, ends):
        if kind == duckdb.token_type.comment:
            raise AnalysisError(f"reference: {text!r} contains a SQL comment; give a single condition")
        if kind != duckdb.token_type.operator:
            continue
        for char in text[start:end]:
            if char == ";":
                raise AnalysisError(f"reference: {text!r} contains ';'; give a single condition, not statements")
            depth += {"(": 1, ")": -1}.get(char, 0)
            if depth < 0:
                raise AnalysisError(f"reference: {text!r} closes a parenthesis it did not open")
    if depth:
        raise AnalysisError(f"reference: {text!r} leaves {depth} parenthesis(es) open")
    return text


def select_models_where(store: Store, expression: str) -> list[str]:
    """Model ids of ``SELECT model_id FROM models WHERE (expression)``, sorted, run sandboxed and read-only.

    The expression may use every column of ``models`` (kind, family, backbone, train_data, train_size,
    fine_tuned, loss, group_label, params, ...) and DuckDB's JSON operators on ``metadata``. The
    sandboxed connection cannot be opened while ``store.session()`` holds one, so call this outside
    a session (the runners do).
    """
    condition = check_model_filter(expression)
    try:
        table = store.sql(f"SELECT model_id FROM models WHERE ({condition}\n) ORDER BY model_id")
    except StoreError as exc:
        if not str(exc).startswith("SQL error"):  # the catalog could not be opened: not the condition's fault
            raise
        raise AnalysisError(f"reference: {condition!r} is not a valid condition on the models table ({exc})") from None
    return [str(model) for model in table.column("model_id").to_pylist()]


def model_column_values(store: Store, models: Sequence[str], column: str) -> dict[str, Any]:
    """``{model: value of column}`` from the ``models`` table; ``column`` must be one of its columns."""
    columns = [row["column_name"] for row in store.query("SELECT column_name FROM (DESCRIBE models)")]
    if column not in columns:
        raise AnalysisError(f"--group-by: {column!r} is not a column of the models table ({', '.join(columns)})")
    rows = store.query(f'SELECT model_id, "{column}" AS value FROM models')
    values = {row["model_id"]: row["value"] for row in rows}
    return {model: values.get(model) for model in models}


# -- accuracies ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MeasuredAccuracy:
    """Top-1 accuracy (fraction) of a model on a dataset and where it came from (`ACCURACY_FROM_RESULTS`
    or `ACCURACY_COMPUTED`)."""

    value: float
    source: str


def stored_zeroshot_acc1(store: Store, model: str, dataset: str, prompt_set: str) -> float | None:
    """The most recent ``zeroshot``/``acc1`` result of (model, dataset) for ``prompt_set``, or None.

    A CLIP model's row must name the prompt set (``params.prompt_set``) and, when it records its
    ``templates``, the set's current templates (a redefined set does not reuse old numbers); a
    classifier's row is one without a prompt set, as `embedstore.evaluate.zeroshot` writes them."""
    clip = model_kind(store, model) == "clip"
    if clip and prompt_set not in store.prompt_sets(dataset):
        return None
    wanted_set = prompt_set if clip else None
    wanted_templates = store.prompt_set(dataset, prompt_set) if clip else None
    usable = len(usable_rows(store, dataset))
    for row in _zeroshot_acc1_rows(store, model, dataset):
        params = json.loads(row["params"]) if isinstance(row["params"], str) else (row["params"] or {})
        same_rows = row["n"] == usable  # bad samples recorded since the row was written change the rows
        if (
            same_rows
            and params.get("prompt_set") == wanted_set
            and params.get("templates", wanted_templates) == wanted_templates
        ):
            return float(row["value"])
    return None


def _zeroshot_acc1_rows(store: Store, model: str, dataset: str) -> list[dict]:
    """The stored ``zeroshot``/``acc1`` rows (value, params, and ``n``: the rows that run scored) of
    (model, dataset), newest first. Inside a catalog snapshot all pairs' rows are read in one query
    and kept (a study asks for thousands)."""
    sql = (
        "SELECT a.model, a.dataset, a.value, a.params, n.value AS n FROM results a LEFT JOIN results n "
        "ON n.analysis = 'zeroshot' AND n.metric = 'n' AND n.model = a.model AND n.dataset = a.dataset "
        "AND n.params_hash = a.params_hash AND n.created = a.created "
        "WHERE a.analysis = 'zeroshot' AND a.metric = 'acc1' AND a.value IS NOT NULL"
    )
    if not store.catalog.remembering:
        return store.query(sql + " AND a.model = ? AND a.dataset = ? ORDER BY a.created DESC", [model, dataset])

    def by_pair() -> dict[tuple[str, str], list[dict]]:
        pairs: dict[tuple[str, str], list[dict]] = {}
        for row in store.query(sql + " ORDER BY a.created DESC"):
            pairs.setdefault((row["model"], row["dataset"]), []).append(row)
        return pairs

    return store.catalog.remembered("zeroshot acc1 by pair", by_pair).get((model, dataset), [])


def measured_acc1(store: Store, model: str, dataset: str, prompt_set: str) -> MeasuredAccuracy:
    """acc1 of a model on a dataset: a stored zero-shot result when there is one, else computed now."""
    stored = stored_zeroshot_acc1(store, model, dataset, prompt_set)
    if stored is not None:
        return MeasuredAccuracy(stored, ACCURACY_FROM_RESULTS)
    data = eval_data(store, model, dataset, prompt_set)
    return MeasuredAccuracy(acc1(data.logits, data.labels), ACCURACY_COMPUTED)


class AccuracyTable:
    """acc1 per (model, dataset), each measured once per run (see `measured_acc1`)."""

    def __init__(self, store: Store, prompt_set: str):
        self.store = store
        self.prompt_set = prompt_set
        self._cache: dict[tuple[str, str], MeasuredAccuracy] = {}

    def get(self, model: str, dataset: str) -> MeasuredAccuracy:
        key = (model, dataset)
        if key not in self._cache:
            self._cache[key] = measured_acc1(self.store, model, dataset, self.prompt_set)
        return self._cache[key]

    def values(self, models: Sequence[str], dataset: str) -> np.ndarray:
        return np.array([self.get(model, dataset).value for model in models], dtype=np.float64)

    def available(self, model: str, datasets: Sequence[str]) -> bool:
        """Whether acc1 can be had on every dataset: stored, or computable (`head_fits`; a CLIP model
        needs the prompt set defined on the dataset; an unfinished extraction cannot be read yet)."""
        return all(self._stored(model, dataset) or self._computable(model, dataset) for dataset in datasets)

    def _stored(self, model: str, dataset: str) -> bool:
        """Whether acc1 is known or stored; a stored one is kept, so `get` does not look it up again."""
        if (model, dataset) not in self._cache:
            stored = stored_zeroshot_acc1(self.store, model, dataset, self.prompt_set)
            if stored is None:
                return False
            self._cache[(model, dataset)] = MeasuredAccuracy(stored, ACCURACY_FROM_RESULTS)
        return True

    def _computable(self, model: str, dataset: str) -> bool:
        return (
            head_fits(self.store, model, dataset)
            and self._prompts_defined(model, dataset)
            and unfinished_arrays(self.store, model, dataset) is None
        )

    def _prompts_defined(self, model: str, dataset: str) -> bool:
        return model_kind(self.store, model) != "clip" or self.prompt_set in self.store.prompt_sets(dataset)


# -- the runner ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelRobustness:
    """One model on one shift. Accuracies are fractions; ER and its bootstrap interval percentage points."""

    model: str
    acc1_id: float
    acc1_shift: float
    predicted_acc1_shift: float
    effective_robustness: float
    in_reference: bool
    acc1_id_source: str
    acc1_shift_source: str
    effective_robustness_ci_low: float | None = None
    effective_robustness_ci_high: float | None = None


@dataclass(frozen=True)
class ShiftRobustness:
    """The trend fitted for one shifted dataset, every selected model's ER, and per-group statistics."""

    shifted: str
    trend: LinearTrend
    models: list[ModelRobustness]
    groups: dict[Hashable, GroupStatistics]
    band: TrendBand | None = None


@dataclass(frozen=True)
class RobustnessSettings:
    """Every choice of a robustness run (see `run_robustness`); validated on construction."""

    transform: str = "probit"
    regressor: str = "huber"
    prompt_set: str = "default"
    reference: str | None = None
    group_by: str = DEFAULT_GROUP_BY
    bootstrap: int = 0
    seed: int = 0
    level: float = 0.95
    clip_eps: float = DEFAULT_CLIP_EPS

    def __post_init__(self) -> None:
        if self.transform not in TRANSFORMS:
            raise AnalysisError(f"transform: {self.transform!r} is not one of {', '.join(TRANSFORMS)}")
        if self.regressor not in REGRESSORS:
            raise AnalysisError(f"regressor: {self.regressor!r} is not one of {', '.join(REGRESSORS)}")
        fewest = min_resamples(self.level)
        if self.bootstrap < 0 or 0 < self.bootstrap < fewest:
            raise AnalysisError(f"bootstrap: the number of resamples must be 0 (none) or at least {fewest} for a "
                                f"{100 * self.level:g}% band, got {self.bootstrap}")  # fmt: skip

    def params(self, id_dataset: str, reference_models: Sequence[str]) -> dict[str, Any]:
        """The params stored with every per-model row (``group_by`` only concerns the summary rows)."""
        return {
            "id_dataset": id_dataset,
            "metric": "acc1",
            "prompt_set": self.prompt_set,
            "transform": self.transform,
            "regressor": self.regressor,
            "clip_eps": self.clip_eps,
            "huber_epsilon": DEFAULT_HUBER_EPSILON if self.regressor == "huber" else None,
            "reference": self.reference,
            "reference_models": sorted(reference_models),
            "bootstrap": self.bootstrap,
            "bootstrap_seed": self.seed if self.bootstrap else None,
            "bootstrap_level": self.level if self.bootstrap else None,
            "unit": EFFECTIVE_ROBUSTNESS_UNIT,
        }


@dataclass(frozen=True)
class RobustnessReport:
    id_dataset: str
    settings: RobustnessSettings
    reference_models: list[str]
    params: dict[str, Any]
    skipped: dict[str, str]
    """Models matched by a glob or the reference condition but left out, with the reason."""
    skipped_datasets: dict[str, str] = field(default_factory=dict)
    """Datasets a ``--shifted`` glob matched but that cannot be a shift (the ID dataset, no labels), with the reason."""
    shifts: list[ShiftRobustness] = field(default_factory=list)


@stores_results_together
def run_robustness(
    store: Store,
    models: Sequence[str],
    id_dataset: str,
    shifted: Sequence[str],
    *,
    reference: str | None = None,
    transform: str = "probit",
    regressor: str = "huber",
    prompt_set: str = "default",
    group_by: str = DEFAULT_GROUP_BY,
    bootstrap: int = 0,
    seed: int = 0,
    level: float = 0.95,
    clip_eps: float = DEFAULT_CLIP_EPS,
) -> RobustnessReport:
    """Effective robustness of the selected models (ids or globs) on each shifted dataset (names or globs).

    The line of each shift is fitted over the ``reference`` models (a condition on ``models``;
    default: the selected models) with `transform` (probit|logit) and `regressor` (huber|ols).
    ``bootstrap > 0`` adds a pointwise ``level`` band from that many resamples of the reference
    models (seeded). ``group_by`` names the ``models`` column grouping the selected models for
    per-group statistics. Results are written to the catalog (see the module doc) and returned.
    """
    settings = RobustnessSettings(transform, regressor, prompt_set, reference, group_by, bootstrap, seed, level,
                                  clip_eps)  # fmt: skip
    # The sandboxed filter query opens its own connection, so it runs before the session holds one.
    reference_models = None if reference is None else select_models_where(store, reference)
    with store.session():
        selected = resolve_models(store, models)
        store.dataset_info(id_dataset)
        has_labelled_classes(store, id_dataset, named=True, needed_for="effective robustness")
        accuracies = AccuracyTable(store, prompt_set)
        skipped_datasets: dict[str, str] = {}
        clip_prompts = prompt_set if any(model_kind(store, m) == "clip" for m in selected) else None
        shifted_names = _shifted_datasets(store, id_dataset, shifted, skipped_datasets, clip_prompts,
                                          lambda d: any(accuracies.available(m, [d]) for m in selected))  # fmt: skip
        skipped: dict[str, str] = {}
        datasets = [id_dataset, *shifted_names]
        reason = (
            f"no acc1 on {', '.join(datasets)}: no stored zero-shot result, and its arrays give none (logits that "
            f"do not fit the classes, or an extraction not finished)"
        )

        def scorable(model: str) -> bool:
            return accuracies.available(model, datasets)

        selected = drop_unscorable(selected, models, scorable, reason, skipped)
        if reference_models is None:
            reference_models = selected
        else:
            reference_models = drop_unscorable(reference_models, None, scorable, reason, skipped)
        _check_enough_reference_models(reference, selected, reference_models, skipped)
        groups = model_column_values(store, selected, group_by)
        group_labels = [NO_GROUP if groups[m] is None else str(groups[m]) for m in selected]
        params = settings.params(id_dataset, reference_models)
        summary_params = {**params, "models": sorted(selected), "group_by": group_by}
        report = RobustnessReport(id_dataset, settings, sorted(reference_models), params, skipped, skipped_datasets)
        for dataset in shifted_names:
            shift = _one_shift(accuracies, settings, selected, reference_models, id_dataset, dataset, group_labels)
            _write_shift(store, shift, params, summary_params)
            report.shifts.append(shift)
    return report


def _shifted_datasets(
    store: Store,
    id_dataset: str,
    patterns: Sequence[str],
    skipped: dict[str, str],
    clip_prompts: str | None,
    scorable: Callable[[str], bool],
) -> list[str]:
    """The ``--shifted`` datasets. One that cannot be a shift (the ID dataset; no labelled classes, as a
    caption or OOD set; without the prompt set ``clip_prompts`` that the selected CLIP models are
    scored with) is an error when named exactly; one a glob matched is skipped, with the reason, also
    when no selected model has an accuracy on it (``scorable``)."""
    chosen = []
    for name in resolve_datasets(store, patterns):
        named = named_explicitly(name, patterns)
        if name == id_dataset:
            if named:
                raise AnalysisError(f"--shifted: {name} is the in-distribution dataset (--id); name shifted ones")
            skipped[name] = "the in-distribution dataset (--id)"
        elif not has_labelled_classes(store, name, named=named, needed_for="effective robustness", skipped=skipped):
            continue
        elif clip_prompts is not None and clip_prompts not in store.prompt_sets(name):
            if named:
                store.prompt_set(name, clip_prompts)  # the store's error, naming the sets it has
            skipped[name] = f"prompt set {clip_prompts!r} is not defined for it (the CLIP models are scored with it)"
        elif named or scorable(name):
            chosen.append(name)
        else:
            skipped[name] = "no selected model has acc1 on it (no stored zero-shot result or logits that fit)"
    if not chosen:
        reasons = "; ".join(f"{name}: {reason}" for name, reason in skipped.items())
        raise AnalysisError(f"--shifted: no dataset matching {' '.join(patterns)} can be a shift ({reasons})")
    return chosen


def drop_unscorable(
    candidates: Sequence[str],
    patterns: Sequence[str] | None,
    scorable: Callable[[str], bool],
    reason: str,
    skipped: dict[str, str],
) -> list[str]:
    """The candidates for which ``scorable(model)`` holds, in order. Models swept in by a glob or by a
    reference condition (``patterns`` None) that are not scorable are left out and noted in
    ``skipped`` with ``reason``; a model named exactly is kept, so that scoring it fails with the cause."""
    kept = []
    for model in candidates:
        if (patterns is not None and named_explicitly(model, patterns)) or scorable(model):
            kept.append(model)
        else:
            skipped[model] = reason
    return kept


def _check_enough_reference_models(
    reference: str | None, selected: list[str], reference_models: list[str], skipped: dict[str, str]
) -> None:
    if len(reference_models) >= MIN_MODELS_FOR_TREND:
        return
    left_out = (
        f" ({len(skipped)} more matched but have no acc1 on every dataset: {', '.join(skipped)})" if skipped else ""
    )
    if reference is not None:
        raise AnalysisError(
            f"reference: {reference!r} selects {len(reference_models)} usable model(s){left_out}; an "
            f"effective-robustness line needs at least {MIN_MODELS_FOR_TREND}"
        )
    raise AnalysisError(
        f"models: {len(selected)} usable model(s) selected{left_out} and no reference condition, so they are "
        f"the reference group; an effective-robustness line needs at least {MIN_MODELS_FOR_TREND}"
    )


def _one_shift(
    accuracies: AccuracyTable,
    settings: RobustnessSettings,
    selected: list[str],
    reference_models: list[str],
    id_dataset: str,
    dataset: str,
    group_labels: list[str],
) -> ShiftRobustness:
    transform, regressor, eps = settings.transform, settings.regressor, settings.clip_eps
    ref_x = accuracies.values(reference_models, id_dataset)
    ref_y = accuracies.values(reference_models, dataset)
    trend = fit_linear_trend(ref_x, ref_y, transform, regressor, eps=eps)
    acc_x = accuracies.values(selected, id_dataset)
    acc_y = accuracies.values(selected, dataset)
    predicted = trend.predict(acc_x)
    er = effective_robustness(trend, acc_x, acc_y)
    band = None
    if settings.bootstrap:
        band = bootstrap_trend_band(
            ref_x, ref_y, acc_x, settings.bootstrap, settings.seed, settings.level,
            transform=transform, regressor=regressor, eps=eps,
        )  # fmt: skip
    reference_set = set(reference_models)
    rows = []
    for i, model in enumerate(selected):
        ci_low = ci_high = None
        if band is not None:  # a higher predicted line means a lower ER
            ci_low = float(100.0 * (acc_y[i] - band.upper[i]))
            ci_high = float(100.0 * (acc_y[i] - band.lower[i]))
        rows.append(
            ModelRobustness(
                model=model,
                acc1_id=float(acc_x[i]),
                acc1_shift=float(acc_y[i]),
                predicted_acc1_shift=float(predicted[i]),
                effective_robustness=float(er[i]),
                in_reference=model in reference_set,
                acc1_id_source=accuracies.get(model, id_dataset).source,
                acc1_shift_source=accuracies.get(model, dataset).source,
                effective_robustness_ci_low=ci_low,
                effective_robustness_ci_high=ci_high,
            )
        )
    stats = group_statistics(acc_x, acc_y, group_labels, transform, regressor, eps=eps)
    return ShiftRobustness(dataset, trend, rows, stats, band)


def _write_shift(store: Store, shift: ShiftRobustness, params: dict[str, Any], summary_params: dict[str, Any]) -> None:
    for row in shift.models:
        metrics: list[tuple[str, Any]] = [
            ("effective_robustness", row.effective_robustness),
            ("acc1_id", row.acc1_id),
            ("acc1_shift", row.acc1_shift),
            ("predicted_acc1_shift", row.predicted_acc1_shift),
            ("acc1_id_source", row.acc1_id_source),
            ("acc1_shift_source", row.acc1_shift_source),
        ]
        if row.effective_robustness_ci_low is not None:
            metrics += [
                ("effective_robustness_ci_low", row.effective_robustness_ci_low),
                ("effective_robustness_ci_high", row.effective_robustness_ci_high),
            ]
        store.put_results(ANALYSIS, metrics, params=params, model=row.model, dataset=shift.shifted)
    trend = shift.trend
    summary: list[tuple[str, Any]] = [
        ("slope", trend.a),
        ("intercept", trend.b),
        ("r2_transformed", _finite_or_none(trend.r2)),
        ("spearman", _finite_or_none(trend.spearman)),
        ("n_reference_models", trend.n),
    ]
    for label, group in shift.groups.items():
        summary += [
            (f"slope@group:{label}", _finite_or_none(group.slope)),
            (f"intercept@group:{label}", _finite_or_none(group.intercept)),
            (f"r2@group:{label}", _finite_or_none(group.r2)),
            (f"spearman@group:{label}", _finite_or_none(group.spearman)),
            (f"n_models@group:{label}", group.n),
        ]
    store.put_results(ANALYSIS, summary, params={**params, **summary_params}, model=None, dataset=shift.shifted)


def _finite_or_none(value: float) -> float | None:
    """NaN statistics (a group too small to fit, constant accuracies) are stored as NULL."""
    return None if math.isnan(value) else value
