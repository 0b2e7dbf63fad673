"""Zero-shot accuracy from the cache: any prompt set, any template subset, class-subset datasets.

CLIP models: the classifier ``w_c = normalize(mean_{t in S} normalize(e_{c,t}))`` is built from the
cached ``text_emb`` for the chosen templates S and images are scored block by block
(``embedstore.analysis.zeroshot``). Classifiers: their cached head logits, sliced to the dataset's class
subset. Rows in ``bad_samples`` are left out. Results: ``acc1``, ``acc5`` (NaN with fewer than 5
classes), ``mean_per_class_recall`` (balanced accuracy, CLIP_benchmark's definition) and ``n``;
optionally ``acc1@class:<j>`` per class.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from embedstore.analysis.zeroshot import ZeroShotResult, evaluate_logits, evaluate_zeroshot
from embedstore.errors import AnalysisError
from embedstore.evaluate.common import (
    check_templates_encoded,
    classifier_logits,
    has_labelled_classes,
    head_fits,
    labels_of,
    model_kind,
    named_explicitly,
    note_skipped,
    prompt_indices,
    read_finite,
    resolve_datasets,
    resolve_models,
    skips_unfinished,
    stores_results_together,
    usable_rows,
)
from embedstore.store import Store


@dataclass(frozen=True)
class ZeroShotRow:
    model: str
    dataset: str
    prompt_set: str | None
    result: ZeroShotResult

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "dataset": self.dataset,
            "prompts": self.prompt_set or "-",
            **self.result.metrics(),
        }


def zeroshot_result(store: Store, model: str, dataset: str, templates: Sequence[int] | None = None) -> ZeroShotResult:
    """Metrics of one model on one dataset's usable rows (``templates``: indices, default = the
    ``default`` prompt set; ignored for classifiers)."""
    rows = usable_rows(store, dataset)
    labels = labels_of(store, dataset)[rows]
    if model_kind(store, model) == "clip":
        image = read_finite(store, dataset, model, "image_emb", rows)  # a NaN is named by its dataset row
        text = read_finite(store, dataset, model, "text_emb")
        indices = list(templates) if templates is not None else prompt_indices(store, dataset, "default")
        check_templates_encoded(text, indices, model, dataset)
        return evaluate_zeroshot(image, text, labels, template_indices=indices)
    return evaluate_logits(classifier_logits(store, model, dataset, rows), labels)


@stores_results_together
def run_zeroshot(
    store: Store,
    models: Sequence[str],
    datasets: Sequence[str],
    *,
    prompt_set: str | None = None,
    templates: Sequence[int] | None = None,
    per_class: bool = False,
    skipped: dict[str, str] | None = None,
) -> list[ZeroShotRow]:
    """Evaluate every (model, dataset) pair (ids or glob patterns) and record the results.

    CLIP models are scored under ``prompt_set`` (None: ``default``) or explicit template indices
    (``templates``, given instead of a prompt set). Either one given when no CLIP model is selected
    is an error, as is an unknown prompt set or template index. Pairs whose arrays do not exist are
    errors naming the missing array. What a glob matched that cannot be scored is skipped: a dataset
    without classes or labelled rows, CLIP models on a dataset without the prompt set, a classifier
    whose head does not fit, a pair whose extraction has not finished; the reasons go into ``skipped``
    when given. A run that scores nothing is an error giving each reason."""
    if prompt_set is not None and templates is not None:
        raise AnalysisError("give --prompts or --templates, not both")
    selected = resolve_models(store, models)
    clip_models = [m for m in selected if model_kind(store, m) == "clip"]
    option = "--prompts" if prompt_set is not None else "--templates" if templates is not None else None
    if option and not clip_models:
        raise AnalysisError(f"{option} chooses the prompts of CLIP models, and none is selected (classifiers are "
                            "scored on their head logits)")  # fmt: skip
    rows = []
    skipped = {} if skipped is None else skipped
    unfit: dict[str, list[str]] = {}  # classifiers a glob matched: the datasets their heads do not fit
    for dataset in resolve_datasets(store, datasets):
        named_dataset = named_explicitly(dataset, datasets)
        if not has_labelled_classes(store, dataset, named=named_dataset, needed_for="zero-shot classification",
                                    skipped=skipped):  # fmt: skip
            continue
        clip_indices = None
        if (
            clip_models
            and templates is None
            and not named_dataset
            and prompt_set not in (None, *store.prompt_sets(dataset))
        ):
            skipped[dataset] = f"prompt set {prompt_set!r} is not defined for it (CLIP models not scored there)"
        elif clip_models:
            clip_indices = _clip_templates(store, dataset, prompt_set, templates)
        for model in selected:
            clip = model in clip_models
            if clip and clip_indices is None:
                continue
            if skips_unfinished(store, model, dataset, named_dataset and named_explicitly(model, models), skipped):
                continue
            if not clip and not named_explicitly(model, models) and not head_fits(store, model, dataset):
                unfit.setdefault(model, []).append(dataset)
                continue
            indices = clip_indices if clip else None
            result = zeroshot_result(store, model, dataset, indices)
            label = ("custom" if templates is not None else prompt_set or "default") if clip else None
            params = {
                "logits": "zero-shot" if clip else "classifier head",
                "prompt_set": label,
                "templates": indices,
                "class_subset": store.dataset_info(dataset)["class_subset"] is not None,
                "rows": "all decodable labelled rows",
            }
            metrics: list[tuple[str, Any]] = list(result.metrics().items())
            if per_class:
                metrics += [
                    (f"acc1@class:{j}", float(a)) for j, a in enumerate(result.per_class_accuracy) if np.isfinite(a)
                ]
            store.put_results("zeroshot", metrics, params=params, model=model, dataset=dataset)
            rows.append(ZeroShotRow(model, dataset, label, result))
    for model, names in unfit.items():
        note_skipped(skipped, model, f"its head does not fit the classes of {', '.join(names)}")
    if not rows:
        reasons = "; ".join(f"{name}: {reason}" for name, reason in skipped.items())
        raise AnalysisError(f"no model and dataset selected can be scored ({reasons})")
    return rows


def _clip_templates(store: Store, dataset: str, prompt_set: str | None, templates: Sequence[int] | None) -> list[int]:
    """The template indices CLIP models are scored with on ``dataset``, checked against its templates."""
    if templates is None:
        return store.prompt_set(dataset, prompt_set or "default")
    indices = [int(t) for t in templates]
    n_templates = len(store.templates(dataset))
    if not indices:
        raise AnalysisError("--templates names no template index")
    outside = [t for t in indices if not 0 <= t < n_templates]
    if outside:
        raise AnalysisError(f"--templates: {outside[0]} is not a template index of dataset {dataset}, which has "
                            f"{n_templates} templates (0 to {n_templates - 1})")  # fmt: skip
    repeated = [t for i, t in enumerate(indices) if t in indices[:i]]
    if repeated:
        raise AnalysisError(f"--templates repeats template {repeated[0]} (it would weigh twice in the ensemble)")
    return indices
