"""Linear probes on cached image embeddings: train on one dataset, score its held-out rows and shifts.

`run_probe` splits the training dataset's usable labelled rows with ``numpy.random.default_rng(seed)``:
a random ``split`` fraction is the fitting pool and the rest the test rows; ``val_fraction`` of the
pool is held out to choose the regularisation C, and the probe is refitted on the whole pool
(``refit_on="train+val"``) or on the rest of it (``"train"``). The probe itself
(L2-normalised features, multinomial logistic regression, C grid, tie rule) is
`embedstore.analysis.probe.linear_probe`. With ``split=1`` every row is fitted on and only the
``eval_datasets`` are scored.

Evaluation datasets must share the training dataset's label space: the same class names in the same
order, or a class subset of it (ImageNet-R/A under an ImageNet-trained probe). For a subset, labels
are mapped to the training classes (``class_subset[label]``) and the probe's outputs are sliced to the
subset's classes before the argmax, as imagenet-testbed's ``class_sublist`` slices logits and as
zero-shot, calibration and OOD score such sets (recorded as ``label_space`` in the params).

Results (analysis ``probe``, ``dataset`` = the training dataset): ``acc1`` (test rows),
``acc1@eval:D`` per evaluation dataset, ``val_acc1`` and ``best_c``, ``val_acc1@c:C`` for each C
tried, ``n_train``, ``n_val``, ``n_test``, ``n_classes``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from embedstore.analysis.probe import DEFAULT_CS, REFIT_SPLITS, ProbeResult, linear_probe
from embedstore.errors import AnalysisError
from embedstore.evaluate.common import (
    drop_unfinished,
    has_labelled_classes,
    labels_of,
    named_explicitly,
    read_finite,
    resolve_datasets,
    resolve_models,
    stores_results_together,
    usable_rows,
)
from embedstore.evaluate.robustness import drop_unscorable
from embedstore.store import Store

ANALYSIS = "probe"
SAME_CLASSES = "same classes"
SUBSET_MAPPED = "class subset mapped to the training classes; decisions over the subset's classes"


@dataclass(frozen=True)
class ProbeSettings:
    """Every choice of a probe run (see `run_probe`); validated on construction."""

    split: float = 0.5
    seed: int = 0
    val_fraction: float = 0.2
    cs: tuple[float, ...] = DEFAULT_CS
    refit_on: str = "train+val"
    max_iter: int = 1000

    def __post_init__(self) -> None:
        if not 0.0 < self.split <= 1.0:
            raise AnalysisError(f"split: the fraction of rows to fit on must lie in (0, 1], got {self.split!r}")
        if not 0.0 < self.val_fraction < 1.0:
            raise AnalysisError(f"val_fraction: must lie strictly between 0 and 1, got {self.val_fraction!r}")
        if self.refit_on not in REFIT_SPLITS:
            raise AnalysisError(f"refit_on: {self.refit_on!r} is not one of {', '.join(REFIT_SPLITS)}")

    def params(self, eval_label_spaces: dict[str, str]) -> dict[str, Any]:
        return {
            "split": self.split,
            "seed": self.seed,
            "val_fraction": self.val_fraction,
            "cs": list(self.cs),
            "refit_on": self.refit_on,
            "max_iter": self.max_iter,
            "features": "image_emb, L2-normalised",
            "classifier": "sklearn LogisticRegression (lbfgs, L2)",
            "eval_datasets": list(eval_label_spaces),
            "label_space": eval_label_spaces,
        }


@dataclass(frozen=True)
class RowSplit:
    """Dataset rows of the probe's train, validation and test parts (disjoint)."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def split_rows(rows: np.ndarray, split: float, val_fraction: float, seed: int) -> RowSplit:
    """Shuffle ``rows`` with ``default_rng(seed)``; the first ``round(split * n)`` are the fitting pool,
    of which the first ``max(1, round(val_fraction * pool))`` validate; the rest of ``rows`` test."""
    order = np.random.default_rng(seed).permutation(np.asarray(rows))
    n_pool = int(round(split * len(order)))
    n_val = max(1, int(round(val_fraction * n_pool)))
    if n_pool - n_val < 1:
        raise AnalysisError(
            f"--split {split:g} and --val-fraction {val_fraction:g} of {len(order)} rows leave no training row"
        )
    if split < 1.0 and n_pool == len(order):
        raise AnalysisError(f"--split {split:g} of {len(order)} rows leaves no test row; lower --split")
    pool = order[:n_pool]
    return RowSplit(train=np.sort(pool[n_val:]), val=np.sort(pool[:n_val]), test=np.sort(order[n_pool:]))


@dataclass(frozen=True)
class ProbeRow:
    model: str
    dataset: str
    split: RowSplit
    result: ProbeResult

    def as_dict(self) -> dict[str, Any]:
        accuracies = {f"acc1@{name}": value for name, value in self.result.accuracies.items()}
        return {
            "model": self.model,
            "dataset": self.dataset,
            "best_C": self.result.best_C,
            "val_acc1": self.result.val_accuracy,
            "n_train": len(self.split.train),
            "n_val": len(self.split.val),
            "n_test": len(self.split.test),
            **accuracies,
        }


@dataclass(frozen=True)
class ProbeReport:
    rows: list[ProbeRow]
    eval_datasets: list[str]
    skipped: dict[str, str]
    """Models a glob matched that lack image embeddings on a dataset, with the reason."""
    skipped_datasets: dict[str, str] = field(default_factory=dict)
    """Datasets an ``--eval`` glob matched that a probe cannot score, with the reason."""


def eval_labels(store: Store, train_dataset: str, dataset: str, rows: np.ndarray) -> tuple[np.ndarray, str]:
    """Labels of ``rows`` of an evaluation dataset in the training dataset's class space, and how they map."""
    train = store.dataset_info(train_dataset)
    info = store.dataset_info(dataset)
    labels = labels_of(store, dataset)[rows]
    if info["classnames"] == train["classnames"] and info["class_subset"] == train["class_subset"]:
        return labels, SAME_CLASSES
    subset = info["class_subset"]
    if subset is not None and train["class_subset"] is None and max(subset) < len(train["classnames"]):
        return np.asarray(subset, dtype=np.int64)[labels], SUBSET_MAPPED
    raise AnalysisError(
        f"--eval: dataset {dataset}'s classes are not those of training dataset {train_dataset} (nor a class subset "
        f"of them); a probe can only score datasets in its training label space"
    )


def evaluation_datasets(
    store: Store, train_dataset: str, patterns: Sequence[str], skipped: dict[str, str]
) -> dict[str, tuple[np.ndarray, np.ndarray, str]]:
    """``{dataset: (rows, labels in the training class space, how they map)}`` of the ``--eval``
    datasets. One that cannot be scored (the training dataset itself, no labelled rows, another label
    space) is an error when named exactly and skipped, with the reason in ``skipped``, when a glob
    matched it."""
    chosen = {}
    for name in resolve_datasets(store, patterns) if patterns else []:
        named = named_explicitly(name, patterns)
        if name == train_dataset:
            if named:
                raise AnalysisError(f"--eval: {name} is the training dataset; its held-out rows are always scored")
            skipped[name] = "the training dataset (--train); its held-out rows are scored as acc1"
            continue
        if not has_labelled_classes(store, name, named=named, needed_for="a probe's evaluation", skipped=skipped):
            continue
        rows = usable_rows(store, name)
        try:
            chosen[name] = (rows, *eval_labels(store, train_dataset, name, rows))
        except AnalysisError as error:
            if named:
                raise
            skipped[name] = str(error).removeprefix("--eval: ")
    return chosen


@stores_results_together
def run_probe(
    store: Store,
    models: Sequence[str],
    train_dataset: str,
    eval_datasets: Sequence[str] = (),
    *,
    split: float = 0.5,
    seed: int = 0,
    val_fraction: float = 0.2,
    cs: Sequence[float] = DEFAULT_CS,
    refit_on: str = "train+val",
) -> ProbeReport:
    """Train a linear probe per model (ids or globs) on ``train_dataset`` and score its test rows and
    every evaluation dataset (names or globs). Results are written to the catalog and returned."""
    settings = ProbeSettings(split, seed, val_fraction, tuple(float(c) for c in cs), refit_on)
    with store.session():
        has_labelled_classes(store, train_dataset, named=True, needed_for="a probe")
        skipped_datasets: dict[str, str] = {}
        eval_targets = evaluation_datasets(store, train_dataset, eval_datasets, skipped_datasets)
        evaluated = list(eval_targets)
        if settings.split == 1.0 and not evaluated:
            raise AnalysisError("split: with split=1 every row is fitted on, so name at least one dataset to evaluate")
        parts = split_rows(usable_rows(store, train_dataset), settings.split, settings.val_fraction, settings.seed)
        labels = labels_of(store, train_dataset)
        _check_training_classes(train_dataset, labels[parts.train], settings)
        params = settings.params({name: how for name, (_, _, how) in eval_targets.items()})
        subsets = {
            name: store.dataset_info(name)["class_subset"] for name, (_, _, how) in eval_targets.items()
            if how == SUBSET_MAPPED
        }  # fmt: skip
        datasets = [train_dataset, *evaluated]
        skipped: dict[str, str] = {}
        chosen = drop_unscorable(
            drop_unfinished(store, resolve_models(store, models), models, datasets, skipped), models,
            lambda m: all(store.list_arrays(d, m, "image_emb") for d in datasets),
            f"no image_emb on {', '.join(datasets)}", skipped,
        )  # fmt: skip
        report = ProbeReport([], evaluated, skipped, skipped_datasets)
        for model in chosen:
            features = read_finite(store, train_dataset, model, "image_emb")
            eval_sets = {train_dataset: (features[parts.test], labels[parts.test])} if len(parts.test) else {}
            for name, (rows, targets, _) in eval_targets.items():
                eval_sets[name] = (read_finite(store, name, model, "image_emb", rows), targets)
            result = linear_probe(
                features[parts.train], labels[parts.train], features[parts.val], labels[parts.val], eval_sets,
                settings.cs, settings.seed, refit_on=settings.refit_on, max_iter=settings.max_iter,
                eval_class_subsets=subsets,
            )  # fmt: skip
            row = ProbeRow(model, train_dataset, parts, result)
            store.put_results(ANALYSIS, _metrics(row), params=params, model=model, dataset=train_dataset)
            report.rows.append(row)
    return report


def _check_training_classes(dataset: str, train_labels: np.ndarray, settings: ProbeSettings) -> None:
    """A probe needs two classes among the rows it is fitted on; a small --split or a large
    --val-fraction can leave fewer."""
    n_classes = np.unique(train_labels).size
    if n_classes < 2:
        raise AnalysisError(
            f"--split {settings.split:g} and --val-fraction {settings.val_fraction:g} leave {len(train_labels)} "
            f"training row(s) of {dataset} holding {n_classes} class; a probe needs at least two classes"
        )


def _metrics(row: ProbeRow) -> list[tuple[str, Any]]:
    result = row.result
    metrics: list[tuple[str, Any]] = []
    for name, accuracy in result.accuracies.items():
        metrics.append(("acc1" if name == row.dataset else f"acc1@eval:{name}", accuracy))
    metrics += [("val_acc1", result.val_accuracy), ("best_c", result.best_C)]
    metrics += [(f"val_acc1@c:{c:g}", accuracy) for c, accuracy in result.val_accuracy_by_C.items()]
    metrics += [
        ("n_train", len(row.split.train)),
        ("n_val", len(row.split.val)),
        ("n_test", len(row.split.test)),
        ("n_classes", result.n_classes),
    ]
    return metrics
