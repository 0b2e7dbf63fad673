"""From the catalog to the figures' plain data: which result rows each figure reads, and how.

`ReportData.load` reads the ``results``, ``models``, ``datasets``, ``arrays`` and ``meta`` tables once;
the ``*_data`` functions below turn them into the dataclasses of `embedstore.report.figures`, each
wrapped in a `Sourced` that also carries the result rows it used (the provenance the HTML report
prints) and notes on what was left out. A figure whose rows are missing raises `MissingData`.

Reading rules (stated in the report too):

- One value per (model, dataset, metric): among the rows of the analysis whose params match the
  figure's filters, the most recent (``created``) wins.
- Rows of CLIP models are read under one prompt set (``params.prompt_set``, "default" unless chosen);
  rows without one (classifiers, feature-based OOD scores) always qualify.
- Zero-shot accuracy is ``zeroshot``/``acc1``; when a (model, dataset) has no such row, the accuracy the
  ``robustness`` analysis recorded for it (``acc1_shift``, or ``acc1_id`` with ``params.id_dataset``)
  is used. Values are fractions in [0, 1].
- The ID (reference) dataset is ``--id-dataset`` or, in this order, the ``params.id_dataset`` of
  ``robustness`` results, the ``dataset`` of ``ood`` results (their ID set), the
  ``params.fit_dataset`` of ``calibration`` runs fitted on another dataset (``--calibrate-on``), each
  the value held by the most models, or the classification dataset with zero-shot accuracy for the
  most models (then the most samples).
- The OOD figure shows one score and one list of OOD sets (``params.ood_datasets``): those of the
  most models; models whose runs averaged over other sets are left out, with a note.
- Shifted datasets are the other classification datasets with accuracies, less those used as OOD
  sets, cue-conflict sets (``shape_bias``) and ImageNet-X sets (``factors``).
- Model group and training data come from the ``models`` table (``group_label``, ``train_data``);
  empty ones show as `NO_GROUP` / `NO_TRAIN_DATA`.

Metric names read (the runners' naming convention) are the module constants below.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from embedstore.analysis.calibration import ReliabilityDiagram
from embedstore.analysis.factors import IMAGENET_X_FACTORS
from embedstore.errors import AnalysisError
from embedstore.evaluate.common import resolve_datasets, resolve_models
from embedstore.report.figures import (
    NO_GROUP,
    NO_TRAIN_DATA,
    BeforeAfterPanel,
    BeforeAfterPoint,
    ModelPoint,
    ModelValue,
    PromptSetAccuracy,
    ReliabilityPanel,
    ScatterPanel,
    TemplateAccuracy,
    ValuePanel,
)
from embedstore.store import Store, hash_object

ANALYSES = ("zeroshot", "prompts", "calibration", "ood", "retrieval", "robustness", "factors", "shape_bias", "probe")
"""Values of ``results.analysis`` (the runners' naming convention), in the order the report shows them."""

# Metric names read from ``results``: one place to change if a runner renames one.
ACC1 = "acc1"
ROBUSTNESS_ACC1_ID = "acc1_id"
ROBUSTNESS_ACC1_SHIFT = "acc1_shift"
TEMPLATE_ACC1 = "acc1@template:"
SET_ACC1 = "acc1@set:"
FACTOR_ACC1 = "acc1@factor:"
SHAPE_BIAS = "shape_bias"
OOD_METRICS = ("auroc", "fpr95")  # unsuffixed = the mean over the OOD sets; "<m>@ood:<set>" per set
OOD_SET = "@ood:"
ECE, NLL = "ece", "nll"
SCALED = "_scaled"  # calibration metric at the fitted temperature: "ece_scaled", "nll_scaled"
TEMPERATURE = "temperature"
RELIABILITY = ("reliability_count", "reliability_conf", "reliability_acc")  # + optional SCALED, then "@bin:<b>"
RETRIEVAL_DIRECTIONS = {"image_retrieval": "image retrieval (text \u2192 image)",
                        "text_retrieval": "text retrieval (image \u2192 text)"}  # fmt: skip


class MissingData(AnalysisError):
    """The catalog holds no result rows (or too few) for a figure; the message says which and how to get them."""


@dataclass(frozen=True)
class StoredResult:
    """One row of the catalog's ``results`` table, params decoded."""

    model: str | None
    dataset: str | None
    analysis: str
    metric: str
    value: float | None
    value_text: str | None
    params: dict[str, Any]
    params_hash: str
    version: str
    created: _dt.datetime


@dataclass(frozen=True)
class ModelLabel:
    """How a model is drawn: ``group`` picks its colour, ``train_data`` its marker."""

    model: str
    kind: str
    group: str
    train_data: str


@dataclass(frozen=True)
class ReportSelection:
    """What a report or plot covers. Empty ``models``/``datasets`` mean all; patterns may be globs.

    ``ood_score=None`` picks the score evaluated for the most models; ``ood_positive`` the FPR@95
    convention to show ("id": ID positive, MCM; "ood": OpenOOD's); ``recall_k`` the K of retrieval recall.
    """

    models: tuple[str, ...] = ()
    datasets: tuple[str, ...] = ()
    id_dataset: str | None = None
    prompt_set: str = "default"
    ood_score: str | None = None
    ood_positive: str = "id"
    recall_k: int = 5
    max_reliability_models: int = 8


@dataclass(frozen=True)
class Sourced:
    """A figure's input (``data``), the result rows it was built from, notes on what was left out, and
    ``subject``: what the figure is about in a few words (a dataset name), for its title."""

    data: Any
    sources: tuple[StoredResult, ...]
    notes: tuple[str, ...] = ()
    subject: str = ""


@dataclass(frozen=True)
class ReportData:
    """What the report reads from one store, loaded once (see the module doc for the rules)."""

    store_path: str
    meta: dict[str, str]
    selection: ReportSelection
    models: dict[str, ModelLabel]
    model_rows: tuple[dict[str, Any], ...]
    datasets: dict[str, dict[str, Any]]
    arrays: tuple[dict[str, Any], ...]
    results: tuple[StoredResult, ...]
    id_dataset: str | None
    id_dataset_reason: str
    by_analysis: dict[str, tuple[StoredResult, ...]] = field(repr=False)

    @classmethod
    def load(cls, store: Store, selection: ReportSelection | None = None) -> ReportData:
        """Read the catalog; ``selection``'s model and dataset patterns must each match something, and a
        prompt set or OOD score it names must occur in the store."""
        selection = selection or ReportSelection()
        models = resolve_models(store, selection.models) if selection.models else None
        datasets = resolve_datasets(store, selection.datasets) if selection.datasets else None
        if selection.prompt_set != "default":  # a defined set, or a label results carry ("custom")
            known = {r["name"] for r in store.query("SELECT DISTINCT name FROM prompt_sets")} | {
                r["p"] for r in store.query("SELECT DISTINCT json_extract_string(params, '$.prompt_set') AS p "
                                            "FROM results") if r["p"]}  # fmt: skip
            if selection.prompt_set not in known:
                raise AnalysisError(f"prompt set {selection.prompt_set!r} is defined on no dataset of store "
                                    f"{store.path} and no result uses it; known: {', '.join(sorted(known)) or 'none'}")  # fmt: skip
        model_rows = tuple(store.query("SELECT * FROM models ORDER BY model_id"))
        dataset_rows = {r["name"]: r for r in store.query("SELECT * FROM datasets ORDER BY name")}
        every = [_stored_result(r) for r in store.query("SELECT * FROM results ORDER BY created, analysis, metric")]
        if selection.ood_score is not None:
            scores = {str(r.params.get("score")) for r in every if r.analysis == "ood" and r.params.get("score")}
            if selection.ood_score not in scores:
                raise AnalysisError(f"OOD score {selection.ood_score!r}: no ood result of store {store.path} uses it; "
                                    f"stored scores: {', '.join(sorted(scores)) or 'none'}")  # fmt: skip
        id_dataset, reason = choose_id_dataset(every, dataset_rows, selection)
        keep_datasets = None if datasets is None else set(datasets) | ({id_dataset} if id_dataset else set())
        results = tuple(
            r
            for r in every
            if (models is None or r.model is None or r.model in models)
            and (keep_datasets is None or r.dataset is None or r.dataset in keep_datasets)
        )
        arrays = tuple(
            store.query(
                "SELECT dataset, model, name, shape, dtype, status, rows_done, rows_total, settings_fingerprint, "
                "versions, updated FROM arrays ORDER BY dataset, model, name"
            )
        )
        by_analysis: dict[str, list[StoredResult]] = {}
        for row in results:
            by_analysis.setdefault(row.analysis, []).append(row)
        return cls(
            store_path=str(store.path),
            meta=store.meta(),
            selection=selection,
            models={r["model_id"]: _model_label(r) for r in model_rows},
            model_rows=model_rows,
            datasets=dataset_rows,
            arrays=arrays,
            results=results,
            id_dataset=id_dataset,
            id_dataset_reason=reason,
            by_analysis={k: tuple(v) for k, v in by_analysis.items()},
        )

    def rows(self, analysis: str) -> tuple[StoredResult, ...]:
        return self.by_analysis.get(analysis, ())

    def label(self, model: str) -> ModelLabel:
        """The model's group and training data (an unregistered model gets the 'unknown' labels)."""
        return self.models.get(model) or ModelLabel(model, "unknown", NO_GROUP, NO_TRAIN_DATA)

    def latest(
        self,
        analysis: str,
        metric: str | Callable[[str], bool],
        where: Mapping[str, Iterable[Any]] | None = None,
    ) -> dict[tuple[str | None, str | None, str], StoredResult]:
        """``{(model, dataset, metric): row}``: the most recent row of each key among the ``analysis`` rows
        whose metric is ``metric`` (or passes it, when a predicate), whose value is a finite number and
        whose params hold one of the allowed values for every key of ``where`` (a missing param counts as None)."""
        accept = (lambda m: m == metric) if isinstance(metric, str) else metric
        chosen: dict[tuple[str | None, str | None, str], StoredResult] = {}
        for row in self._matching(analysis, where):  # ordered by creation: later rows overwrite earlier ones
            if accept(row.metric):
                chosen[(row.model, row.dataset, row.metric)] = row
        return chosen

    def latest_runs(
        self, analysis: str, where: Mapping[str, Iterable[Any]] | None = None
    ) -> dict[tuple[str, str | None], dict[str, StoredResult]]:
        """``{(model, dataset): {metric: row}}`` of each pair's most recent run: the rows of the one
        parameter set (``params_hash``) written last, among the rows `latest` would consider. Use it where
        a figure combines several metrics of one run (bins of a reliability diagram, factor and overall
        accuracy), so that two runs with other parameters are never mixed."""
        matching = [row for row in self._matching(analysis, where) if row.model is not None]
        newest = {(row.model, row.dataset): row.params_hash for row in matching}  # the last written wins
        runs: dict[tuple[str, str | None], dict[str, StoredResult]] = {}
        for row in matching:
            if newest[(row.model, row.dataset)] == row.params_hash:
                runs.setdefault((row.model, row.dataset), {})[row.metric] = row
        return runs

    def _matching(self, analysis: str, where: Mapping[str, Iterable[Any]] | None) -> Iterable[StoredResult]:
        """Rows of ``analysis`` with a finite value whose params pass ``where`` (see `latest`)."""
        allowed = {k: set(v) for k, v in (where or {}).items()}
        for row in self.rows(analysis):
            if row.value is None or not math.isfinite(row.value):
                continue
            if all(_hashable(row.params.get(k)) in values for k, values in allowed.items()):
                yield row

    def fingerprint(self) -> str:
        """sha256 over the fingerprints of every dataset and model and the settings fingerprint and
        status of every array: equal for two stores holding the same extracted content."""
        return hash_object(
            {
                "datasets": {name: row["fingerprint"] for name, row in self.datasets.items()},
                "models": {row["model_id"]: row["fingerprint"] for row in self.model_rows},
                "arrays": [
                    [a["dataset"], a["model"], a["name"], a["settings_fingerprint"], a["status"]] for a in self.arrays
                ],
            }
        )


def _hashable(value: Any) -> Any:
    return json.dumps(value, sort_keys=True) if isinstance(value, (list, dict)) else value


def _stored_result(row: Mapping[str, Any]) -> StoredResult:
    params = row["params"]
    return StoredResult(
        model=row["model"],
        dataset=row["dataset"],
        analysis=row["analysis"],
        metric=row["metric"],
        value=None if row["value"] is None else float(row["value"]),
        value_text=row["value_text"],
        params=json.loads(params) if isinstance(params, str) else dict(params or {}),
        params_hash=row["params_hash"],
        version=row["version"],
        created=row["created"],
    )


def _model_label(row: Mapping[str, Any]) -> ModelLabel:
    return ModelLabel(row["model_id"], row["kind"], row["group_label"] or NO_GROUP, row["train_data"] or NO_TRAIN_DATA)


# ---------------------------------------------------------------------------------------------------
# Which dataset is ID, which are shifts


def choose_id_dataset(
    results: Sequence[StoredResult], datasets: Mapping[str, Mapping[str, Any]], selection: ReportSelection
) -> tuple[str | None, str]:
    """``(ID dataset, how it was chosen)`` by the rule in the module doc; (None, why) when nothing fits."""
    if selection.id_dataset is not None:
        if selection.id_dataset not in datasets:
            known = ", ".join(sorted(datasets)) or "none"
            raise AnalysisError(
                f"--id-dataset {selection.id_dataset!r} is not a dataset of this store; it has: {known}"
            )
        return selection.id_dataset, "given with --id-dataset"
    candidates: tuple[tuple[str, Callable[[StoredResult], Any], str], ...] = (
        ("robustness", lambda r: r.params.get("id_dataset"), "params.id_dataset of the robustness results"),
        ("ood", lambda r: r.dataset, "the ID dataset of the ood results"),
        ("calibration", _calibrated_on, "params.fit_dataset of the calibration results (--calibrate-on)"),
    )
    for analysis, pick, reason in candidates:
        counts = _models_per_value((r for r in results if r.analysis == analysis and pick(r) in datasets), pick)
        if counts:
            return _most_common(counts), reason
    zeroshot = [r for r in results if r.analysis == "zeroshot" and r.metric == ACC1 and r.dataset in datasets]
    counts = _models_per_value(zeroshot, lambda r: r.dataset)
    if counts:
        best = max(counts, key=lambda d: (counts[d], datasets[d]["n_samples"], d))
        return best, "the dataset with zero-shot accuracy for the most models"
    return None, "no robustness, ood, calibration or zeroshot results name one"


def _calibrated_on(row: StoredResult) -> str | None:
    """The dataset a calibration run fitted its temperature on when that is not the evaluated dataset
    (``--calibrate-on``); a split run fits on the evaluated dataset itself, which says nothing of ID."""
    fitted = row.params.get("fit_dataset")
    return fitted if fitted != row.dataset else None


def _models_per_value(rows: Iterable[StoredResult], pick: Callable[[StoredResult], Any]) -> Counter:
    """``Counter({pick(row): number of models whose rows have it})``: models count once however many
    metrics, bins or reruns they stored."""
    return Counter(value for value, _ in {(_hashable(pick(r)), r.model) for r in rows if r.model is not None})


def _most_common(counts: Counter) -> Any:
    return max(counts, key=lambda k: (counts[k], str(k)))


def special_datasets(data: ReportData) -> dict[str, str]:
    """``{dataset: role}`` of datasets that are not distribution shifts of the ID dataset. A dataset
    used as an OOD set counts as one only when no model has a zero-shot accuracy on it: a labelled
    shift that also served once as OOD data stays a shift."""
    roles: dict[str, str] = {}
    scored = {row.dataset for row in data.rows("zeroshot") if row.metric == ACC1}
    for row in data.rows("ood"):
        names = list(row.params.get("ood_datasets") or [])
        if OOD_SET in row.metric:
            names.append(row.metric.split(OOD_SET, 1)[1])
        roles.update((name, "OOD set") for name in names if name not in scored)
    for analysis, role in (
        ("shape_bias", "cue-conflict set"),
        ("factors", "ImageNet-X set"),
        ("retrieval", "retrieval set"),
    ):
        for row in data.rows(analysis):
            if row.dataset is not None:
                roles[row.dataset] = role
    for name, info in data.datasets.items():
        if info["task"] != "classification":
            roles.setdefault(name, f"{info['task']} dataset")
    return roles


# ---------------------------------------------------------------------------------------------------
# Accuracies


def prompt_filter(data: ReportData) -> dict[str, tuple[str | None, ...]]:
    """The ``where`` of `ReportData.latest` keeping rows of the chosen prompt set and rows without one
    (classifiers, feature-based scores)."""
    return {"prompt_set": (data.selection.prompt_set, None)}


def accuracies(data: ReportData, dataset: str) -> dict[str, StoredResult]:
    """``{model: row}`` of top-1 accuracy on ``dataset`` by the rule in the module doc."""
    found: dict[str, StoredResult] = {}
    where = prompt_filter(data)
    recorded = [
        row
        for metric in (ROBUSTNESS_ACC1_ID, ROBUSTNESS_ACC1_SHIFT)
        for (model, ds, _), row in data.latest("robustness", metric, where).items()
        if model is not None and (row.params.get("id_dataset") if metric == ROBUSTNESS_ACC1_ID else ds) == dataset
    ]
    for row in sorted(recorded, key=lambda r: r.created):  # the most recent of a model's rows wins
        found[row.model] = row  # type: ignore[index]
    for (model, ds, _), row in data.latest("zeroshot", ACC1, where).items():
        if model is not None and ds == dataset:
            found[model] = row  # zero-shot rows take precedence
    return found


def _require_id(data: ReportData, figure: str) -> str:
    if data.id_dataset is None:
        raise MissingData(
            f"{figure}: no ID dataset ({data.id_dataset_reason}); give --id-dataset or run `embedstore eval zeroshot`"
        )
    return data.id_dataset


def _point(data: ReportData, model: str, x: float, y: float) -> ModelPoint:
    label = data.label(model)
    return ModelPoint(model, label.group, label.train_data, x, y)


def _value(data: ReportData, model: str, value: float) -> ModelValue:
    label = data.label(model)
    return ModelValue(model, label.group, label.train_data, value)


def _models_order(models: Iterable[str], data: ReportData) -> list[str]:
    return sorted(models, key=lambda m: (data.label(m).group, m))


def _round_robin_by_group(models: Iterable[str], data: ReportData) -> list[str]:
    """Models ordered so that any prefix takes them in turn from each group (groups and models by name)."""
    by_group: dict[str, list[str]] = {}
    for model in _models_order(models, data):
        by_group.setdefault(data.label(model).group, []).append(model)
    queues = list(by_group.values())
    order: list[str] = []
    while any(queues):
        order += [queue.pop(0) for queue in queues if queue]
    return order


# ---------------------------------------------------------------------------------------------------
# Fig. 1 type: accuracy on the line (and per ImageNet-X factor)


def accuracy_on_the_line_data(data: ReportData) -> Sourced:
    """One `ScatterPanel` per shifted dataset (ID accuracy on x, shifted on y), plus the mean over
    shifts for models evaluated on every shift when there are two or more."""
    id_dataset = _require_id(data, "accuracy on the line")
    reference = accuracies(data, id_dataset)
    if not reference:
        raise MissingData(
            f"accuracy on the line: no acc1 on the ID dataset {id_dataset}; run `embedstore eval zeroshot`"
        )
    roles = special_datasets(data)
    shifts = {}
    for name in sorted(data.datasets):
        if name == id_dataset or name in roles:
            continue
        shifted = {m: r for m, r in accuracies(data, name).items() if m in reference}
        if shifted:
            shifts[name] = shifted
    if not shifts:
        raise MissingData(
            f"accuracy on the line: no shifted dataset has acc1 for a model that also has acc1 on {id_dataset}"
        )
    x_label = f"{id_dataset} top-1 accuracy (%, probit scale)"
    panels, sources = [], list(reference.values())
    for name, shifted in shifts.items():
        points = tuple(_point(data, m, reference[m].value, r.value) for m, r in sorted(shifted.items()))
        panels.append(ScatterPanel(name, x_label, f"{name} top-1 accuracy (%, probit scale)", points))
        sources += shifted.values()
    notes = [f"ID dataset: {id_dataset} ({data.id_dataset_reason})"]
    if len(shifts) >= 2:
        complete = [m for m in reference if all(m in s for s in shifts.values())]
        if complete:
            mean = tuple(
                _point(data, m, reference[m].value, float(np.mean([s[m].value for s in shifts.values()])))
                for m in sorted(complete)
            )
            panels.insert(0, ScatterPanel(f"mean over {len(shifts)} shifts", x_label,
                                          "mean shifted top-1 accuracy (%, probit scale)", mean))  # fmt: skip
            notes.append(f"the mean panel holds the {len(complete)} model(s) evaluated on all of: {', '.join(shifts)}")
    left_out = sorted(set(data.datasets) - set(shifts) - {id_dataset})
    if left_out:
        notes.append(
            "not plotted as shifts: " + ", ".join(f"{d} ({roles.get(d, 'no acc1 results')})" for d in left_out)
        )
    return Sourced(panels, tuple(sources), tuple(notes), f"ID dataset {id_dataset}")


def factor_accuracy_data(data: ReportData) -> Sourced:
    """One `ScatterPanel` per ImageNet-X factor: overall accuracy on the annotated images (x, the
    ``factors`` analysis' ``acc1``) against accuracy on the images with that factor (y,
    ``acc1@factor:<f>``), both from each model's latest factors run on the dataset most models have."""
    runs = {k: m for k, m in data.latest_runs("factors", prompt_filter(data)).items() if ACC1 in m}
    if not runs:
        raise MissingData(f"factor accuracy: no factors results with {ACC1}; run the factors analysis")
    dataset = _most_common(Counter(d for _, d in runs))
    factors: dict[str, dict[str, tuple[StoredResult, StoredResult]]] = {}
    for (model, ds), metrics in runs.items():
        for metric, row in metrics.items():
            if ds == dataset and metric.startswith(FACTOR_ACC1):
                factors.setdefault(metric[len(FACTOR_ACC1) :], {})[model] = (metrics[ACC1], row)
    if not factors:
        raise MissingData(f"factor accuracy: no {FACTOR_ACC1}<factor> results on {dataset}")
    order = {name: i for i, name in enumerate(IMAGENET_X_FACTORS)}
    panels, sources = [], []
    for factor in sorted(factors, key=lambda f: (order.get(f, len(order)), f)):
        pairs = factors[factor]
        points = tuple(_point(data, m, overall.value, row.value) for m, (overall, row) in sorted(pairs.items()))
        panels.append(ScatterPanel(f"factor: {factor}", f"{dataset} top-1 accuracy, all annotated images (%, probit)",
                                   f"top-1 accuracy on images with {factor} (%, probit)", points))  # fmt: skip
        sources += [row for pair in pairs.values() for row in pair]
    return Sourced(panels, tuple(sources), (f"ImageNet-X dataset: {dataset}",), dataset)


# ---------------------------------------------------------------------------------------------------
# Fig. 2 type: shape bias


def shape_bias_data(data: ReportData) -> Sourced:
    """One `ValuePanel` per cue-conflict dataset with each model's ``shape_bias``."""
    rows = {k: r for k, r in data.latest("shape_bias", SHAPE_BIAS, prompt_filter(data)).items() if k[0] is not None}
    if not rows:
        raise MissingData(f"shape bias: no shape_bias results with metric {SHAPE_BIAS}; run the shape-bias analysis")
    panels = []
    for dataset in sorted({d for _, d, _ in rows}):
        values = tuple(
            _value(data, m, r.value) for (m, d, _), r in sorted(rows.items(), key=lambda kv: str(kv[0])) if d == dataset
        )
        panels.append(ValuePanel(dataset, "shape bias = shape / (shape + texture) decisions", values))
    return Sourced(panels, tuple(rows.values()), _mixed_routes(rows))


def _mixed_routes(rows: Mapping[tuple[str | None, str | None, str], StoredResult]) -> tuple[str, ...]:
    """A note per cue-conflict dataset whose models were decided by more than one route (each model's
    latest run counts: e.g. some CLIP models over the 16 categories, others over ImageNet's 1000)."""
    routes: dict[str, dict[str, int]] = {}
    for (_, dataset, _), row in rows.items():
        route = str(row.params.get("decisions") or "route not recorded")
        counts = routes.setdefault(str(dataset), {})
        counts[route] = counts.get(route, 0) + 1
    return tuple(
        f"{dataset} mixes decision routes: "
        + "; ".join(f"{n} model(s) by {route}" for route, n in sorted(counts.items()))
        for dataset, counts in sorted(routes.items())
        if len(counts) > 1
    )


# ---------------------------------------------------------------------------------------------------
# Fig. 4 type: OOD detection against ID accuracy


def ood_data(data: ReportData) -> Sourced:
    """Panels of AUROC and FPR@95 (the unsuffixed metrics: means over the OOD sets) against accuracy on
    the ID dataset, for one score (``selection.ood_score``, else the score evaluated for the most
    models) and the FPR@95 convention ``selection.ood_positive``."""
    positive = data.selection.ood_positive
    candidates = [r for r in data.rows("ood") if r.model is not None and r.params.get("positive", positive) == positive]
    if not candidates:
        raise MissingData(f"OOD detection: no ood results with positive={positive!r}; run `embedstore eval ood`")
    score = data.selection.ood_score or _most_common(
        Counter(s for _, s in {(r.model, r.params.get("score")) for r in candidates})
    )
    scored = [r for r in candidates if r.params.get("score") == score]
    if not scored:
        raise MissingData(f"OOD detection: no ood results for score {score!r} with positive={positive!r}")
    id_dataset = data.selection.id_dataset or _most_common(_models_per_value(scored, lambda r: r.dataset))
    on_id = [r for r in scored if r.dataset == id_dataset]
    if not on_id:
        raise MissingData(f"OOD detection: no {score} ood results with ID dataset {id_dataset}")
    lists = _models_per_value(on_id, lambda r: r.params.get("ood_datasets"))
    ood_sets = _most_common(lists)  # means over other lists of OOD sets are not comparable: one list a figure
    reference = accuracies(data, id_dataset)
    labels = {
        "auroc": "AUROC (%)",
        "fpr95": "FPR@95 (%): OOD accepted at 95% ID TPR"
        if positive == "id"
        else "FPR@95 (%): ID flagged at 95% OOD TPR",
    }
    where = {**prompt_filter(data), "positive": (positive, None), "score": (score,), "ood_datasets": (ood_sets,)}
    panels, sources = [], []
    for metric in OOD_METRICS:
        rows = {
            m: r for (m, d, _), r in data.latest("ood", metric, where).items() if d == id_dataset and m in reference
        }
        if not rows:
            continue
        sets = sorted({name for r in rows.values() for name in r.params.get("ood_datasets") or []})
        points = tuple(_point(data, m, reference[m].value, r.value) for m, r in sorted(rows.items()))
        panels.append(ScatterPanel(f"{labels[metric].split(' ')[0]} of {score}, mean over {', '.join(sets) or 'OOD sets'}",
                                   f"{id_dataset} (ID) top-1 accuracy (%)", labels[metric], points))  # fmt: skip
        sources += list(rows.values()) + [reference[m] for m in rows]
    if not panels:
        raise MissingData(
            f"OOD detection: no model has both {score} ood results and acc1 on the ID dataset {id_dataset}"
        )
    notes = [f"ID dataset {id_dataset}; score {score}; FPR@95 with positive={positive!r}"]
    if len(lists) > 1:
        chosen = {r.model for r in on_id if _hashable(r.params.get("ood_datasets")) == ood_sets}
        left_out = sorted({str(r.model) for r in on_id} - {str(m) for m in chosen})
        notes.append(f"{len(left_out)} model(s) whose runs all averaged over other OOD sets are left out "
                     f"(a mean over other sets is not comparable): {', '.join(left_out)}")  # fmt: skip
    others = sorted({str(r.params.get("score")) for r in candidates} - {str(score)})
    if others:
        notes.append(f"other scores in the catalog (choose one with --ood-score): {', '.join(others)}")
    return Sourced(panels, tuple(sources), tuple(notes), f"ID {id_dataset}, score {score}")


# ---------------------------------------------------------------------------------------------------
# Fig. 5 type: calibration before and after temperature scaling; reliability diagrams


def _calibration_datasets(data: ReportData) -> list[str]:
    names = sorted({r.dataset for r in data.rows("calibration") if r.dataset is not None and r.model is not None})
    return sorted(names, key=lambda d: (d != data.id_dataset, d))


def calibration_data(data: ReportData) -> Sourced:
    """For each calibrated dataset (ID first): ECE and NLL against accuracy, at T = 1 (``ece``, ``nll``)
    and at the fitted temperature (``ece_scaled``, ``nll_scaled``); accuracy is the run's ``acc1``."""
    datasets = _calibration_datasets(data)
    if not datasets:
        raise MissingData("calibration: no calibration results; run `embedstore eval calibration`")
    runs = data.latest_runs("calibration", prompt_filter(data))
    panels, sources = [], []
    for dataset in datasets:
        models = sorted(m for m, d in runs if d == dataset)
        for metric in (ECE, NLL):
            points, used = [], []
            for model in models:
                run = runs[(model, dataset)]
                if all(name in run for name in (ACC1, metric, metric + SCALED)):
                    acc, before, after = run[ACC1], run[metric], run[metric + SCALED]
                    label = data.label(model)
                    points.append(
                        BeforeAfterPoint(model, label.group, label.train_data, acc.value, before.value, after.value)
                    )
                    used += [acc, before, after]
            if not points:
                continue
            if metric == ECE:
                n_bins = sorted({str(r.params.get("n_bins", "?")) for r in used if r.metric == ECE})
                y_label, percent = f"ECE (%), {'/'.join(n_bins)} equal-width bins", True
            else:
                y_label, percent = "NLL (nats)", False
            panels.append(BeforeAfterPanel(f"{dataset}: {metric.upper()}", f"{dataset} top-1 accuracy (%)", y_label,
                                           percent, tuple(points)))  # fmt: skip
            sources += used
    if not panels:
        raise MissingData(
            f"calibration: no model has {ACC1}, {ECE}/{NLL} and {ECE}{SCALED}/{NLL}{SCALED} in its results"
        )
    return Sourced(
        panels, tuple(sources), ("hollow markers: T = 1; filled: the fitted temperature (see params.fit_dataset)",)
    )


_BIN_METRIC = re.compile(r"^(?P<name>reliability_(?:count|conf|acc))(?P<scaled>_scaled)?@bin:(?P<bin>\d+)$")


def reliability_data(data: ReportData) -> Sourced:
    """Reliability diagrams (at T = 1 and at the fitted T) of up to ``max_reliability_models`` models on
    one calibrated dataset (the ID dataset when it was calibrated), from the stored per-bin rows."""
    datasets = _calibration_datasets(data)
    if not datasets:
        raise MissingData("reliability diagrams: no calibration results; run `embedstore eval calibration`")
    dataset = datasets[0]
    runs = {m: run for (m, d), run in data.latest_runs("calibration", prompt_filter(data)).items() if d == dataset}
    models = _round_robin_by_group([m for m, run in runs.items() if any(_BIN_METRIC.match(k) for k in run)], data)
    if not models:
        raise MissingData(f"reliability diagrams: no reliability_*@bin:<b> rows for dataset {dataset}")
    limit = data.selection.max_reliability_models
    panels, sources = [], []
    for model in models[:limit]:
        rows = {metric: row for metric, row in runs[model].items() if _BIN_METRIC.match(metric)}
        before = _diagram(rows, scaled=False)
        if before is None:
            continue
        fitted = runs[model].get(TEMPERATURE)
        panels.append(ReliabilityPanel(f"{model}\n{dataset}", before, _diagram(rows, scaled=True),
                                       None if fitted is None else fitted.value))  # fmt: skip
        sources += list(rows.values()) + ([fitted] if fitted else [])
    if not panels:
        raise MissingData(f"reliability diagrams: no reliability_count@bin:<b> rows at T = 1 for dataset {dataset}")
    notes = [f"dataset {dataset}; bins as stored by the calibration analysis (rows held out from the fit)"]
    if len(models) > limit:
        notes.append(f"{len(models) - limit} more model(s) not drawn (taken in turn from each group, by name)")
    return Sourced(panels, tuple(sources), tuple(notes), dataset)


def _diagram(rows: Mapping[str, StoredResult], *, scaled: bool) -> ReliabilityDiagram | None:
    """A `ReliabilityDiagram` from ``reliability_{count,conf,acc}[_scaled]@bin:<b>`` rows (None if absent).
    The bin count is that of the params (``n_bins``), else one more than the highest bin stored."""
    values: dict[str, dict[int, float]] = {name: {} for name in RELIABILITY}
    n_bins = 0
    for metric, row in rows.items():
        match = _BIN_METRIC.match(metric)
        if match and bool(match["scaled"]) == scaled:
            values[match["name"]][int(match["bin"])] = row.value
            n_bins = max(n_bins, int(row.params.get("n_bins") or 0), int(match["bin"]) + 1)
    if not values["reliability_count"]:
        return None
    counts = np.array([values["reliability_count"].get(b, 0.0) for b in range(n_bins)])
    return ReliabilityDiagram(
        bin_edges=np.linspace(0.0, 1.0, n_bins + 1),
        counts=counts.astype(np.int64),
        mean_confidence=np.array([values["reliability_conf"].get(b, np.nan) for b in range(n_bins)]),
        accuracy=np.array([values["reliability_acc"].get(b, np.nan) for b in range(n_bins)]),
    )


# ---------------------------------------------------------------------------------------------------
# Prompts


def _prompt_dataset(data: ReportData, prefix: str) -> str:
    names = Counter(r.dataset for r in data.rows("prompts") if r.model is not None and r.metric.startswith(prefix))
    if not names:
        raise MissingData(f"prompts: no prompts results with {prefix}<...>; run `embedstore prompts ablate`")
    return data.id_dataset if data.id_dataset in names else _most_common(names)


def template_accuracy_data(data: ReportData) -> Sourced:
    """Each template's accuracy alone (``acc1@template:<i>``) for every CLIP model on one dataset (the
    ID dataset when it has them); template texts from the rows' ``params.templates``."""
    dataset = _prompt_dataset(data, TEMPLATE_ACC1)
    rows = {k: r for k, r in data.latest("prompts", lambda m: m.startswith(TEMPLATE_ACC1)).items() if k[1] == dataset}
    by_template: dict[int, list[StoredResult]] = {}
    texts: dict[int, str] = {}
    for (_, _, metric), row in sorted(rows.items(), key=lambda kv: str(kv[0])):
        index = int(metric[len(TEMPLATE_ACC1) :])
        by_template.setdefault(index, []).append(row)
        templates = row.params.get("templates") or []
        if index < len(templates):
            texts[index] = templates[index]
    entries = [
        TemplateAccuracy(i, texts.get(i, f"template {i}"), tuple(r.value for r in by_template[i]))
        for i in sorted(by_template)
    ]
    n_models = len({k[0] for k in rows})
    return Sourced(entries, tuple(rows.values()), (f"dataset {dataset}; {n_models} CLIP model(s)",), dataset)


def prompt_set_data(data: ReportData) -> Sourced:
    """Each model's accuracy under each prompt set (``acc1@set:<name>``) on one dataset."""
    dataset = _prompt_dataset(data, SET_ACC1)
    rows = {k: r for k, r in data.latest("prompts", lambda m: m.startswith(SET_ACC1)).items() if k[1] == dataset}
    by_model: dict[str, dict[str, float]] = {}
    for (model, _, metric), row in rows.items():
        by_model.setdefault(model, {})[metric[len(SET_ACC1) :]] = row.value
    entries = [PromptSetAccuracy(m, data.label(m).group, by_model[m]) for m in _models_order(by_model, data)]
    return Sourced(entries, tuple(rows.values()), (f"dataset {dataset}",), dataset)


# ---------------------------------------------------------------------------------------------------
# Retrieval against zero-shot accuracy


def retrieval_data(data: ReportData) -> Sourced:
    """Recall@K in both directions (``image_retrieval_recall@K``, ``text_retrieval_recall@K``) on each
    retrieval dataset against zero-shot accuracy on the ID dataset."""
    id_dataset = _require_id(data, "retrieval against zero-shot accuracy")
    k = data.selection.recall_k
    reference = accuracies(data, id_dataset)
    panels, sources = [], []
    for direction, description in RETRIEVAL_DIRECTIONS.items():
        metric = f"{direction}_recall@{k}"
        latest = data.latest("retrieval", metric)
        for dataset in sorted({d for m, d, _ in latest if m is not None}):
            rows = {m: r for (m, d, _), r in latest.items() if d == dataset and m in reference}
            if not rows:
                continue
            points = tuple(_point(data, m, reference[m].value, r.value) for m, r in sorted(rows.items()))
            panels.append(ScatterPanel(f"{dataset}: {description}", f"{id_dataset} zero-shot top-1 accuracy (%)",
                                       f"recall@{k} (%)", points))  # fmt: skip
            sources += list(rows.values()) + [reference[m] for m in rows]
    if not panels:
        raise MissingData(
            f"retrieval: no retrieval results with *_retrieval_recall@{k} for a model with acc1 on {id_dataset}; "
            "run the retrieval analysis (or choose another K)"
        )
    return Sourced(panels, tuple(sources), (f"K = {k}; accuracy on {id_dataset}",), f"K = {k}")
