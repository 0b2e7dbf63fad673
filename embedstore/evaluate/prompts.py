"""Prompt experiments from the cache: per-template accuracy, prompt-set comparison, greedy selection,
and adding templates (which encodes their text only, never an image).

Results (analysis ``"prompts"``): ``acc1@template:<i>`` (each template alone), ``acc1@set:<name>`` (each
prompt set's ensemble), and for a selection ``select_acc1@step:<k>`` / ``report_acc1@step:<k>`` with
the chosen order in the parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from embedstore.analysis.prompts import (
    evaluate_template_sets,
    greedy_template_selection,
    per_template_accuracy,
    split_rows,
    validate_templates,
)
from embedstore.errors import AnalysisError
from embedstore.evaluate.common import (
    check_templates_encoded,
    has_labelled_classes,
    labels_of,
    model_kind,
    named_explicitly,
    resolve_datasets,
    resolve_models,
    skips_unfinished,
    stores_results_together,
    usable_rows,
)
from embedstore.store import Store
from embedstore.store.locks import dataset_locks
from embedstore.store.store import check_prompt_set_name


def _clip_arrays(store: Store, model: str, dataset: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    if model_kind(store, model) != "clip":
        raise AnalysisError(f"model {model} is not a CLIP model: prompt experiments need text embeddings")
    rows = usable_rows(store, dataset)
    image = store.read_array(dataset, model, "image_emb", rows=rows)
    text = store.read_array(dataset, model, "text_emb")
    return rows, image, text, labels_of(store, dataset)[rows]


@dataclass(frozen=True)
class AblationRow:
    model: str
    dataset: str
    per_template: list[tuple[int, str, float]]  # (index, template, acc1)
    per_set: dict[str, dict[str, float]]


@stores_results_together
def run_ablation(
    store: Store, models: Sequence[str], datasets: Sequence[str], skipped: dict[str, str] | None = None
) -> list[AblationRow]:
    """Each template alone and each prompt set's ensemble, for every CLIP model and dataset. What a
    glob matched that cannot be scored (a dataset without labelled classes, an unfinished extraction)
    is left out, with the reason put in ``skipped`` when given."""
    out = []
    for dataset in resolve_datasets(store, datasets):
        named_dataset = named_explicitly(dataset, datasets)
        if not has_labelled_classes(store, dataset, named=named_dataset, needed_for="a template ablation",
                                    skipped=skipped):  # fmt: skip
            continue  # a caption or OOD set a glob swept in
        templates = store.templates(dataset)
        sets = store.prompt_sets(dataset)
        for model in resolve_models(store, models):
            if model_kind(store, model) != "clip":
                continue
            if skips_unfinished(store, model, dataset, named_dataset and named_explicitly(model, models), skipped):
                continue
            _, image, text, labels = _clip_arrays(store, model, dataset)
            for indices in sets.values():
                check_templates_encoded(text, indices, model, dataset)
            single = per_template_accuracy(image, text, labels)
            by_set = {name: r.metrics() for name, r in evaluate_template_sets(image, text, labels, sets).items()}
            metrics = [(f"acc1@template:{i}", float(a)) for i, a in enumerate(single)]
            metrics += [(f"acc1@set:{name}", m["acc1"]) for name, m in by_set.items()]
            store.put_results("prompts", metrics, params={"experiment": "ablation", "templates": templates, "sets": sets},
                              model=model, dataset=dataset)  # fmt: skip
            out.append(AblationRow(model, dataset, [(i, templates[i], float(a)) for i, a in enumerate(single)], by_set))
    if not out:
        raise AnalysisError("none of the chosen models is a CLIP model with text embeddings")
    return out


@dataclass(frozen=True)
class SelectionRow:
    model: str
    dataset: str
    order: list[int]
    templates: list[str]
    select_acc: list[float]
    report_acc: list[float]
    saved_as: str | None
    best_prefix: int  # templates in the prefix with the best selection-split acc1 (what save_as keeps)
    replaced: int | None = None  # templates of the prompt set save_as replaced (None: new or unchanged)


@stores_results_together
def run_selection(
    store: Store, model: str, dataset: str, *, fraction: float = 0.5, seed: int = 0,
    max_templates: int | None = None, save_as: str | None = None,
) -> SelectionRow:  # fmt: skip
    """Greedy forward selection of templates on a seeded ``fraction`` of the rows, reported on the rest
    (OpenAI's procedure for its 7 ImageNet templates). ``save_as`` stores the best prefix on the
    selection rows as a prompt set."""
    if save_as is not None:
        check_prompt_set_name(save_as)  # before the selection runs
    matched = resolve_models(store, [model])
    if len(matched) != 1:
        raise AnalysisError(f"--model {model!r} matches {len(matched)} models ({', '.join(matched)}): select one")
    (model,) = matched
    has_labelled_classes(store, dataset, named=True, needed_for="template selection")
    rows, image, text, labels = _clip_arrays(store, model, dataset)
    _check_selection_options(len(rows), text.shape[1], fraction, max_templates)
    select, report = split_rows(len(rows), fraction, seed)
    result = greedy_template_selection(image, text, labels, select, report, max_templates=max_templates)
    templates = store.templates(dataset)
    best = int(np.argmax(result.select_acc)) + 1
    replaced = None
    if save_as is not None:
        replaced = define_prompt_set(store, dataset, save_as, [templates[i] for i in result.order[:best]])[1]
    params = {"experiment": "greedy-selection", "fraction": fraction, "seed": seed, "max_templates": max_templates,
              "order": list(map(int, result.order)), "best_prefix": best, "saved_as": save_as}  # fmt: skip
    metrics = [(f"select_acc1@step:{k + 1}", float(a)) for k, a in enumerate(result.select_acc)]
    metrics += [(f"report_acc1@step:{k + 1}", float(a)) for k, a in enumerate(result.report_acc)]
    store.put_results("prompts", metrics, params=params, model=model, dataset=dataset)
    return SelectionRow(model, dataset, list(map(int, result.order)), [templates[i] for i in result.order],
                        list(map(float, result.select_acc)), list(map(float, result.report_acc)), save_as, best,
                        replaced)  # fmt: skip


def _check_selection_options(n_rows: int, n_templates: int, fraction: float, max_templates: int | None) -> None:
    """``--split`` must leave rows on both sides, ``--max-templates`` lie within the encoded templates."""
    if not 0 < round(fraction * n_rows) < n_rows:
        raise AnalysisError(f"--split {fraction:g} of {n_rows} labelled rows leaves one side of the split empty")
    if max_templates is not None and not 1 <= max_templates <= n_templates:
        raise AnalysisError(f"--max-templates must lie between 1 and the {n_templates} templates, got {max_templates}")


def define_prompt_set(store: Store, dataset: str, name: str, templates: Sequence[str]) -> tuple[list[int], int | None]:
    """Define prompt set ``name`` of ``dataset`` (`Store.add_prompt_set`): its template indices, and how
    many templates the set it replaced had (None when the name is new or its templates are unchanged),
    so that callers can say that, e.g., every evaluation using the ``default`` set now changes."""
    previous = store.prompt_sets(dataset).get(name)
    indices = store.add_prompt_set(dataset, name, templates)
    return indices, None if previous is None or previous == indices else len(previous)


@dataclass(frozen=True)
class AddedTemplates:
    dataset: str
    prompt_set: str
    indices: list[int]
    new_templates: list[str]
    encoded_for: list[str]
    replaced: int | None = None
    """Templates of the prompt set this one replaced (None when the name was new or its templates are unchanged)."""
    skipped: dict[str, str] = field(default_factory=dict)
    """Models a ``--model`` glob matched that cannot be encoded for (not CLIP, no text_emb), with the reason."""


def add_templates(
    store: Store, dataset: str, name: str, templates: Sequence[str], *, models: Sequence[str] | None = None,
    device: str = "cpu", batch_size: int = 256, log: Callable[[str], None] = lambda _m: None,
) -> AddedTemplates:  # fmt: skip
    """Define prompt set ``name`` of ``dataset`` and encode the templates new to it for every CLIP model
    that has ``text_emb`` on it (or ``models``): only the text tower runs, images are never touched.
    A model whose weights differ from the stored fingerprint is refused. The dataset's lock is held
    throughout (`embedstore.store.locks`): no extraction, import or other ``prompts add`` writes its
    ``text_emb`` meanwhile."""
    templates = validate_templates(list(templates))
    check_prompt_set_name(name)
    info = store.dataset_info(dataset)
    with dataset_locks(store.path, [dataset], doing="embedstore prompts add"):
        return _add_templates(store, dataset, info, name, templates, models, device, batch_size, log)


def _add_templates(
    store: Store, dataset: str, info: dict, name: str, templates: list[str], models: Sequence[str] | None,
    device: str, batch_size: int, log: Callable[[str], None],
) -> AddedTemplates:  # fmt: skip
    from embedstore.extract.text import encode_class_templates
    from embedstore.models import load_model

    before = store.templates(dataset)
    new = [t for t in dict.fromkeys(templates) if t not in before]
    with_text = [a.model for a in store.list_arrays(dataset=dataset, name="text_emb")]
    skipped: dict[str, str] = {}
    chosen = _models_to_encode(store, dataset, models, with_text, skipped) if models else with_text
    adapters = {}
    for model in chosen:  # load (and check) every model before anything is written
        adapter = load_model(model, device=device, precision="fp32")
        if adapter.fingerprint != store.model_info(model)["fingerprint"]:
            raise AnalysisError(f"the weights of {model} differ from the ones its arrays were extracted with")
        adapters[model] = adapter
    target = before + new  # the dataset's template list once the set is added
    encoded = {}
    for model, adapter in adapters.items():  # encode first: nothing changes if a model fails
        old = store.read_array(dataset, model, "text_emb")
        todo = target[old.shape[1] :]  # also finishes an add that was interrupted for this model
        if todo:
            encoded[model] = (
                old,
                todo,
                encode_class_templates(adapter, info["classnames"], todo, batch_size).astype(old.dtype),
            )
    indices, replaced = define_prompt_set(store, dataset, name, templates)
    for model, (old, todo, added) in encoded.items():
        settings = store.list_arrays(dataset, model, "text_emb")[0].settings
        history = list(settings.get("added_templates", [])) + [
            {"from": old.shape[1], "to": old.shape[1] + len(todo), "precision": "fp32", "device": device}
        ]
        store.rewrite_array(dataset, model, "text_emb", np.concatenate([old, added], axis=1),
                            settings_update={"added_templates": history})  # fmt: skip
        log(f"{model}: encoded {len(todo)} new template(s) x {len(info['classnames'])} classes")
    return AddedTemplates(dataset, name, indices, new, list(encoded), replaced, skipped)


def _models_to_encode(
    store: Store, dataset: str, patterns: Sequence[str], with_text: list[str], skipped: dict[str, str]
) -> list[str]:
    """The ``--model`` models: one that is no CLIP model or has no ``text_emb`` on the dataset is an
    error when named exactly and skipped, with the reason, when a glob matched it."""
    chosen = []
    for model in resolve_models(store, patterns):
        kind = model_kind(store, model)
        if kind != "clip":
            reason = f"{'a classifier' if kind == 'classifier' else f'a {kind} model'}, with no text embeddings"
            problem = f"model {model} is {reason}: prompt sets apply to CLIP models"
        elif model not in with_text:
            reason = f"no text_emb on dataset {dataset}"
            problem = f"model {model} has {reason}: extract it on that dataset first"
        else:
            chosen.append(model)
            continue
        if named_explicitly(model, patterns):
            raise AnalysisError(problem)
        skipped[model] = reason
    if not chosen:
        first, reason = next(iter(skipped.items()))
        others = f" (and {len(skipped) - 1} more)" if len(skipped) > 1 else ""
        raise AnalysisError(f"--model {' '.join(patterns)} matches no CLIP model with text_emb on dataset {dataset}: "
                            f"{first}: {reason}{others}; prompt sets apply to CLIP models")  # fmt: skip
    return chosen


def prompt_set_table(store: Store, dataset: str) -> dict[str, list[str]]:
    """``{prompt set: its templates}`` of a dataset (an unknown dataset is an error naming it)."""
    store.dataset_info(dataset)
    templates = store.templates(dataset)
    return {name: [templates[i] for i in idx] for name, idx in store.prompt_sets(dataset).items()}


def as_dicts(rows: Sequence[Any]) -> list[dict[str, Any]]:
    return [dict(r.__dict__) for r in rows]
