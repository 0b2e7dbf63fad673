"""Test helpers: add 'imported' models with chosen outputs, and datasets known only by their rows.

A cross-model analysis needs more models than the tiny store's three random ones; importing a
logits (or embedding) array gives a model whose accuracy, shape or texture decisions are exactly
what a test wants, without any encoder.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from embedstore.sources.base import Dataset, Sample
from embedstore.store import Store
from embedstore.store.exchange import import_array


def import_predictions(store: Store, folder: Path, model: str, dataset: str, predictions: np.ndarray,
                       n_classes: int | None = None) -> None:  # fmt: skip
    """Import one-hot logits ``[N, n_classes]`` whose argmax is ``predictions`` as ``dataset/model/logits``."""
    width = n_classes or len(store.dataset_info(dataset)["classnames"])
    logits = np.eye(width, dtype=np.float32)[np.asarray(predictions, dtype=np.int64)]
    import_rows(store, folder, model, dataset, "logits", logits)


def predictions_with_accuracy(labels: np.ndarray, accuracy: float, n_classes: int) -> np.ndarray:
    """Predictions right on the first ``round(accuracy * N)`` rows and wrong (label + 1) on the others."""
    right = int(round(accuracy * len(labels)))
    predictions = (labels + 1) % n_classes
    predictions[:right] = labels[:right]
    return predictions


def add_classifier(store: Store, folder: Path, model: str, accuracies: Mapping[str, float],
                   group_label: str | None = None) -> None:  # fmt: skip
    """An imported classifier with the given acc1 on each dataset, and a ``group_label``."""
    for dataset, accuracy in accuracies.items():
        labels = store.sample_table(dataset)["label"]
        n_classes = len(store.dataset_info(dataset)["classnames"])
        import_predictions(store, folder, model, dataset, predictions_with_accuracy(labels, accuracy, n_classes))
    info = store.model_info(model)
    store.register_model({"model_id": model, "kind": info["kind"], "library": info["library"],
                          "fingerprint": info["fingerprint"], "group_label": group_label})  # fmt: skip


def import_rows(store: Store, folder: Path, model: str, dataset: str, name: str, values: np.ndarray) -> None:
    """Import ``values`` (one row per sample, in row order) as ``dataset/model/name``."""
    keys = [str(k) for k in store.sample_table(dataset)["key"]]
    folder.mkdir(parents=True, exist_ok=True)
    stem = folder / re.sub(r"[^A-Za-z0-9.-]+", "_", f"{model}--{dataset}--{name}")
    np.save(stem.with_suffix(".npy"), values)
    stem.with_suffix(".txt").write_text("\n".join(keys) + "\n")
    import_array(store, dataset, model, name, stem.with_suffix(".npy"), keys_file=stem.with_suffix(".txt"))


class _NoBytes:
    """Storage of a dataset registered for its rows only: analyses never read images."""

    def __init__(self, name: str):
        self.name = name

    def iter_encoded(self, samples, start, stop):
        raise AssertionError("no image is read by an analysis")

    def content_stamps(self, samples):
        return [None] * len(samples)

    def identity(self):
        return {"rows-only test dataset": self.name}


def register_rows_only_dataset(store: Store, name: str, classnames: list[str], labels: list[int],
                               locators: list[str] | None = None, class_subset: list[int] | None = None) -> None:  # fmt: skip
    """Register a classification dataset with the given labels (and locators) but no readable images."""
    samples = tuple(
        Sample(row=i, key=f"{name}-{i:04d}", label=label, locator=locators[i] if locators else f"{name}/{i}")
        for i, label in enumerate(labels)
    )
    store.register_dataset(
        Dataset(name=name, kind="manifest", spec=f"test:{name}", root=None, samples=samples, classnames=classnames,
                templates=["a photo of a {c}."], task="classification", class_subset=class_subset,
                storage=_NoBytes(name))
    )  # fmt: skip
