"""What every analysis runner shares: choosing models and datasets, and reading their cached arrays.

The runners in ``embedstore.evaluate`` feed the pure functions of ``embedstore.analysis`` from the
store and write what they return to the catalog's ``results``. No encoder is loaded here.

Conventions:

- Rows listed in ``bad_samples`` (undecodable images, left as zeros in the arrays) are left out of
  every evaluation; ``EvalData.rows`` says which rows were used.
- Labels are in the dataset's own class space. A dataset with a ``class_subset`` (e.g. ImageNet-R's 200
  of 1000 classes) is scored on a classifier's logits *sliced* to those columns (imagenet-testbed's
  ``class_sublist``); CLIP models are scored against the dataset's own class names.
- CLIP logits are recomputed from the cached embeddings for any prompt set:
  ``logit_scale * cos(image_emb, w_c) (+ logit_bias)``, ``w_c = normalize(mean_t normalize(e_{c,t}))``.
"""

from __future__ import annotations

import fnmatch
import functools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from embedstore.analysis.zeroshot import classifier_weights, zeroshot_cosines
from embedstore.errors import AnalysisError
from embedstore.store import DEFAULT_PROMPT_SET, Store, stored_model_id

T = TypeVar("T")


def _expand(patterns: Sequence[str], known: Sequence[str], what: str, store: Store) -> list[str]:
    if not patterns:
        raise AnalysisError(f"name at least one {what} (glob patterns such as 'openclip:*' work)")
    chosen: list[str] = []
    for pattern in patterns:
        hits = [k for k in known if fnmatch.fnmatchcase(k, pattern)] if any(c in pattern for c in "*?[") else (
            [pattern] if pattern in known else [])  # fmt: skip
        if not hits:
            listing = ", ".join(known[:8]) + (" ..." if len(known) > 8 else "")
            raise AnalysisError(f"no {what} in store {store.path} matches {pattern!r}; it has: {listing or 'none'}")
        chosen.extend(h for h in hits if h not in chosen)
    return chosen


def resolve_models(store: Store, patterns: Sequence[str]) -> list[str]:
    """Model ids matching exact ids or glob patterns, in order of first match; an unmatched pattern is an error."""
    known = [r["model_id"] for r in store.query("SELECT model_id FROM models ORDER BY model_id")]
    return _expand([stored_model_id(p) for p in patterns], known, "model", store)


def resolve_datasets(store: Store, patterns: Sequence[str]) -> list[str]:
    known = [r["name"] for r in store.query("SELECT name FROM datasets ORDER BY name")]
    return _expand(patterns, known, "dataset", store)


def prompt_option(store: Store, models: Sequence[str], prompt_set: str | None) -> str:
    """The prompt set CLIP models are scored with: ``prompt_set`` as given (``--prompts``), else
    ``default``. Given while no selected model is a CLIP model it would change nothing, so it is refused."""
    if prompt_set is None:
        return DEFAULT_PROMPT_SET
    if not any(model_kind(store, model) == "clip" for model in resolve_models(store, models)):
        raise AnalysisError("--prompts chooses the prompt set of CLIP models, and no selected model is one "
                            "(classifiers are scored on their head logits)")  # fmt: skip
    return prompt_set


def named_explicitly(name: str, patterns: Sequence[str]) -> bool:
    """True when ``name`` was asked for by its exact name rather than only matched by a glob: pairs
    that do not fit an analysis are errors when named, and skipped when a glob swept them in."""
    return name in patterns or name in (stored_model_id(p) for p in patterns)


def model_kind(store: Store, model: str) -> str:
    return store.model_info(model)["kind"]


def head_fits(store: Store, model: str, dataset: str) -> bool:
    """Whether the model's predictions can be scored on the dataset's classes: always for CLIP models
    (zero-shot over the dataset's class names), else when cached logits exist and either match the
    number of classes or hold every column of the dataset's class subset (`head_mismatch`)."""
    if model_kind(store, model) == "clip":
        return True
    arrays = store.list_arrays(dataset, model, "logits")
    return bool(arrays) and head_mismatch(arrays[0].shape[-1], store.dataset_info(dataset)) is None


def unfinished_arrays(store: Store, model: str, dataset: str, names: Sequence[str] | None = None) -> str | None:
    """Why a (model, dataset) pair cannot be scored yet, or None: an array its scores read (``names``;
    by default, CLIP: ``image_emb`` and ``text_emb``; others: ``logits``) exists but its writer has not
    finished it (an extraction of the dataset is running, or was stopped). Missing arrays are not this
    function's concern: reading one names it."""
    if names is None:
        names = ("image_emb", "text_emb") if model_kind(store, model) == "clip" else ("logits",)
    for name in names:
        for info in store.list_arrays(dataset, model, name):
            if info.status != "complete":
                return (
                    f"its {name} on {dataset} is not finished ({info.rows_done}/{info.rows_total} rows as last "
                    f"recorded): its extraction is running or was stopped"
                )
    return None


def skips_unfinished(
    store: Store,
    model: str,
    dataset: str,
    named: bool,
    skipped: dict[str, str] | None = None,
    names: Sequence[str] | None = None,
) -> bool:
    """True when a pair a glob matched (``named``: both model and dataset were named exactly) has an
    unfinished array (`unfinished_arrays`, among ``names``): it is left out, with the reason put in
    ``skipped`` under the model. A pair named exactly is kept, so that reading it fails with the cause."""
    if named:
        return False
    reason = unfinished_arrays(store, model, dataset, names)
    if reason is not None and skipped is not None:
        note_skipped(skipped, model, reason)
    return reason is not None


def note_skipped(skipped: dict[str, str], name: str, reason: str) -> None:
    """Record why ``name`` was left out, after any reason already recorded for it."""
    skipped[name] = f"{skipped[name]}; {reason}" if name in skipped else reason


def drop_unfinished(
    store: Store,
    models: Sequence[str],
    patterns: Sequence[str] | None,
    datasets: Sequence[str],
    skipped: dict[str, str],
) -> list[str]:
    """The models with no unfinished array on any of ``datasets`` (`unfinished_arrays`), in order;
    those left out are noted in ``skipped``. A model named exactly in ``patterns`` is kept (reading
    it fails with the cause); ``patterns`` None: every model was chosen by a condition, not named."""
    return [
        model
        for model in models
        if not any(
            skips_unfinished(store, model, dataset, patterns is not None and named_explicitly(model, patterns), skipped)
            for dataset in datasets
        )
    ]


def head_mismatch(outputs: int, dataset_info: dict[str, Any]) -> str | None:
    """Why a classifier head of ``outputs`` logits cannot be scored on a dataset, or None when it can:
    a dataset with a ``class_subset`` slices the head to those columns, so each must be below
    ``outputs``; one without must have exactly as many classes as the head has outputs."""
    subset, n_classes = dataset_info["class_subset"], len(dataset_info["classnames"])
    if subset is not None:
        if max(subset) < outputs:
            return None
        return f"has {outputs} outputs but dataset {dataset_info['name']}'s class subset names column {max(subset)}"
    if outputs == n_classes:
        return None
    return (
        f"has {outputs} outputs but dataset {dataset_info['name']} has {n_classes} classes and declares no class subset"
    )


def classifier_logits(store: Store, model: str, dataset: str, rows: np.ndarray) -> np.ndarray:
    """A classifier's cached head logits on ``rows``, in the dataset's class space: sliced to its class
    subset when it declares one. A head that does not cover the classes is an error naming the model."""
    info = store.dataset_info(dataset)
    arrays = store.list_arrays(dataset, model, "logits")
    if arrays:
        problem = head_mismatch(arrays[0].shape[-1], info)
        if problem is not None:
            raise AnalysisError(f"classifier {model} {problem}: its head cannot be scored on this dataset")
    logits = read_finite(store, dataset, model, "logits", rows)  # a missing array is named here
    return logits if info["class_subset"] is None else logits[:, info["class_subset"]]


@dataclass(frozen=True)
class EvalData:
    """One (model, dataset)'s scores over the rows used: ``logits [n, C]`` and ``labels [n]`` (dataset
    class space), ``rows`` (dataset rows), plus how the logits were made."""

    model: str
    dataset: str
    rows: np.ndarray
    labels: np.ndarray
    logits: np.ndarray
    cosines: np.ndarray | None  # raw cosines (CLIP only; MCM needs them)
    source: str  # "zero-shot" | "classifier head"
    prompt_set: str | None
    class_subset: list[int] | None

    def params(self) -> dict[str, Any]:
        return {"logits": self.source, "prompt_set": self.prompt_set, "class_subset": self.class_subset is not None}


def usable_rows(store: Store, dataset: str, *, labelled: bool = True) -> np.ndarray:
    """Rows not listed in ``bad_samples`` (and with a label, when ``labelled``)."""
    table = store.sample_table(dataset)
    keep = np.ones(len(table["row"]), dtype=bool)
    keep[store.bad_rows(dataset)] = False
    if labelled:
        keep &= table["label"] >= 0
    return np.flatnonzero(keep)


def stores_results_together(run: Callable[..., T]) -> Callable[..., T]:
    """Decorate an analysis runner whose first argument is the store: its ``put_results`` calls are
    written together when it returns, and none when it raises (`Store.results_together`), so a run
    that fails on its third (model, dataset) pair leaves no rows of the first two. Its catalog reads
    come from an in-memory snapshot taken when it starts (`Catalog.snapshot`)."""

    @functools.wraps(run)
    def wrapper(store: Store, *args: Any, **kwargs: Any) -> T:
        with store.results_together(), store.catalog.snapshot():  # results are written after the snapshot
            return run(store, *args, **kwargs)

    return wrapper


def has_labelled_classes(
    store: Store, dataset: str, *, named: bool, needed_for: str, skipped: dict[str, str] | None = None
) -> bool:
    """Whether ``dataset`` has classes and labelled, decodable rows, as accuracy-based analyses need.
    A dataset named exactly that has none is an error saying why (``needed_for``: the analysis); one
    a glob swept in is skipped (False), with the reason put in ``skipped`` when given."""
    info = store.dataset_info(dataset)
    if not info["classnames"]:
        problem = f"no classes (a {info['task']} dataset): {needed_for} needs classes"
    elif not len(usable_rows(store, dataset)):
        problem = f"no labelled, decodable rows (an OOD set?): {needed_for} needs labels"
    else:
        return True
    if named:
        raise AnalysisError(f"dataset {dataset} has {problem}")
    if skipped is not None:
        skipped[dataset] = problem
    return False


def labels_of(store: Store, dataset: str) -> np.ndarray:
    return store.sample_table(dataset)["label"]


def read_finite(store: Store, dataset: str, model: str, name: str, rows: np.ndarray | None = None) -> np.ndarray:
    """An array's ``rows`` (all when None), refusing NaN or infinite entries, and all-zero ``image_emb``
    rows of samples not listed in ``bad_samples`` (no cosine exists for them), with the dataset row."""
    values = (
        store.read_array(dataset, model, name) if rows is None else store.read_array(dataset, model, name, rows=rows)
    )
    largest, infinity = _largest_magnitude_bits(values)
    finite = largest < infinity
    if not finite.all():
        first = int(np.flatnonzero(~finite)[0])
        row = first if rows is None else int(np.asarray(rows)[first])
        raise AnalysisError(f"{name} of model {model} on dataset {dataset}: row {row} holds NaN or infinite values")
    if name == "image_emb":
        zero = largest == 0
        if zero.any():
            at = np.flatnonzero(zero) if rows is None else np.asarray(rows)[zero]
            unlisted = np.setdiff1d(at, store.bad_rows(dataset))
            if unlisted.size:
                raise AnalysisError(
                    f"{name} of model {model} on dataset {dataset}: row {int(unlisted[0])} is all zeros but is not "
                    f"in bad_samples, and no cosine exists for it (an undecodable image's row from an imported "
                    f".npy? import an .h5 or .parquet export, which flags such rows)"
                )
    return values


_MAGNITUDE_BITS = {  # float dtype -> (unsigned view, mask clearing the sign bit, bits of +inf)
    np.dtype(np.float16): (np.uint16, 0x7FFF, 0x7C00),
    np.dtype(np.float32): (np.uint32, 0x7FFFFFFF, 0x7F800000),
    np.dtype(np.float64): (np.uint64, 0x7FFFFFFFFFFFFFFF, 0x7FF0000000000000),
}


def _largest_magnitude_bits(values: np.ndarray) -> tuple[np.ndarray, int]:
    """Per row, the largest ``|x|`` as IEEE bits, and the bits of +inf: a row is finite when its value
    is below the second, all zeros when it is 0. One integer pass over the rows (``np.isfinite`` plus
    ``any`` took 10 ms on 5,000 x 512 float16, this 0.4 ms). Other dtypes go through numpy's checks."""
    flat = np.ascontiguousarray(values).reshape(values.shape[0], -1)
    if flat.dtype in _MAGNITUDE_BITS and flat.shape[1]:
        unsigned, mask, infinity = _MAGNITUDE_BITS[flat.dtype]
        return np.max(flat.view(unsigned) & unsigned(mask), axis=1), infinity
    finite = np.isfinite(flat).all(axis=1)
    return np.where(finite, np.where(flat.any(axis=1), 1, 0), 2), 2


def check_templates_encoded(text: np.ndarray, indices: Sequence[int], model: str, dataset: str) -> None:
    """Every template index is one the model's ``text_emb [C, T, D]`` encodes: a prompt set can name a
    template that `prompts add --model` encoded for other models only."""
    beyond = [int(t) for t in indices if int(t) >= text.shape[1]]
    if beyond:
        raise AnalysisError(
            f"model {model}'s text_emb on dataset {dataset} encodes {text.shape[1]} templates, not template "
            f"{beyond[0]}: encode it with `embedstore prompts add --dataset {dataset} --model {model}` and the "
            f"prompt set's templates"
        )


def prompt_indices(store: Store, dataset: str, prompt_set: str | Sequence[int] | None) -> list[int]:
    if prompt_set is None:
        prompt_set = "default"
    if isinstance(prompt_set, str):
        return store.prompt_set(dataset, prompt_set)
    return list(prompt_set)


def clip_scores(
    store: Store, model: str, dataset: str, prompt_set: str | Sequence[int] | None = "default",
    rows: np.ndarray | None = None, *, classes_from: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """``(logits, cosines)`` of a CLIP model on ``rows`` of ``dataset`` under a prompt set, from cached
    embeddings. The classes (text embeddings and prompt set) are ``dataset``'s own, or those of
    ``classes_from`` (e.g. ImageNet's 1000 classes scored on another dataset's images)."""
    info = store.model_info(model)
    if info["kind"] != "clip":
        raise AnalysisError(f"model {model} is a {info['kind']} model: zero-shot scores need a CLIP model")
    text_dataset = classes_from or dataset
    text = read_finite(store, text_dataset, model, "text_emb")
    indices = prompt_indices(store, text_dataset, prompt_set)
    check_templates_encoded(text, indices, model, text_dataset)
    weights = classifier_weights(text, indices)
    image = read_finite(store, dataset, model, "image_emb", rows)
    cosines = zeroshot_cosines(image, weights)
    logits = float(info["logit_scale"]) * cosines
    if info["logit_bias"] is not None:
        logits = logits + float(info["logit_bias"])
    return logits.astype(np.float32), cosines.astype(np.float32)


def eval_data(store: Store, model: str, dataset: str, prompt_set: str | None = "default") -> EvalData:
    """Scores of a model on a dataset's usable labelled rows: zero-shot logits for CLIP models
    (under ``prompt_set``), head logits for classifiers (sliced to the dataset's class subset)."""
    with store.session():  # one catalog connection for the burst of lookups
        return _eval_data(store, model, dataset, prompt_set)


def _eval_data(store: Store, model: str, dataset: str, prompt_set: str | None) -> EvalData:
    info = store.dataset_info(dataset)
    rows = usable_rows(store, dataset)
    if not len(rows):
        raise AnalysisError(f"dataset {dataset} has no labelled, decodable rows to evaluate")
    labels = labels_of(store, dataset)[rows]
    subset = info["class_subset"]
    if model_kind(store, model) == "clip":
        logits, cosines = clip_scores(store, model, dataset, prompt_set, rows)
        return EvalData(model, dataset, rows, labels, logits, cosines, "zero-shot", prompt_set or "default", subset)
    logits = classifier_logits(store, model, dataset, rows).astype(np.float32)
    return EvalData(model, dataset, rows, labels, logits, None, "classifier head", None, subset)


def check_finite(array: np.ndarray, what: str) -> None:
    if not np.all(np.isfinite(array)):
        bad = int(np.argwhere(~np.isfinite(array))[0][0])
        raise AnalysisError(f"{what} holds NaN or infinite values (first at row {bad})")


def flatten_metrics(metrics: dict[str, Any]) -> Iterable[tuple[str, Any]]:
    """(metric, value) pairs of a flat dict, skipping None."""
    return [(k, v) for k, v in metrics.items() if v is not None]
