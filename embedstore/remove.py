"""Removing arrays so that they can be extracted again (``embedstore rm``).

Arrays of a dataset that an extraction is writing are not removed: the dataset's extraction lock
(`embedstore.store.locks`) is taken first, so ``rm`` refuses at once, naming the extraction, instead
of pulling arrays from under it. The indexes saved from a removed array (``embedstore index build``)
go with it. Results stay unless asked for: the result rows stored for a removed array's (model,
dataset) pair, which were computed from it or beside it, are counted, and deleted with ``results=True``.
Rows keyed to other pairs (an OOD run's rows sit under its ID dataset; robustness summaries under no
model) are never touched.
"""

from __future__ import annotations

from dataclasses import dataclass

from embedstore.evaluate.indexes import delete_saved_indexes
from embedstore.store import Store, stored_model_id
from embedstore.store.locks import dataset_locks


@dataclass(frozen=True)
class Removed:
    arrays: int
    saved_indexes: int
    results_deleted: int
    results_kept: int


def remove_arrays(
    store: Store, dataset: str | None = None, model: str | None = None, name: str | None = None,
    *, results: bool = False,
) -> Removed:  # fmt: skip
    """Delete the arrays matching every given filter (catalog rows, chunks and saved indexes), and
    with ``results`` the result rows of their (model, dataset) pairs. ``model`` is an exact id in either
    spelling of random weights (:func:`stored_model_id`)."""
    model = stored_model_id(model) if model is not None else None
    datasets = sorted({info.dataset for info in store.list_arrays(dataset, model, name)})
    with dataset_locks(store.path, datasets, doing="embedstore rm"):
        infos = store.list_arrays(dataset, model, name)
        pairs = sorted({(i.model, i.dataset) for i in infos})
        counted = store.count_results(pairs)
        # Results go first: a run stopped after them still lists the arrays, so running it again finishes.
        deleted = store.delete_results(pairs) if results else 0
        arrays = store.delete_arrays(dataset, model, name)
        indexes = sum(delete_saved_indexes(store, i.dataset, i.model, i.name) for i in infos)
    return Removed(arrays, indexes, results_deleted=deleted, results_kept=counted - deleted)


def remove_pair_results(store: Store, dataset: str, model: str) -> int:
    """Delete the result rows of one (model, dataset) pair that has no array left (its arrays were
    removed without ``--results``); returns how many."""
    model = stored_model_id(model)
    with dataset_locks(store.path, [dataset], doing="embedstore rm"):
        return store.delete_results([(model, dataset)])


def no_arrays_match(store: Store, **filters: str | None) -> str:
    """One line saying that no array matches the given filters, with what the store does hold for
    each of them (filters are exact names, not globs)."""
    given = {key: value for key, value in filters.items() if value is not None}
    flag = {"dataset": "--dataset", "model": "--model", "name": "--array"}
    asked = " ".join(f"{flag[key]} {value}" for key, value in given.items())
    held = []
    for key in given:
        values = sorted({getattr(info, key) for info in store.list_arrays()})
        listing = ", ".join(values[:8]) + (" ..." if len(values) > 8 else "")
        held.append(f"{flag[key]} values with arrays: {listing or 'none'}")
    return f"no array matches {asked} (exact names, not globs); " + "; ".join(held)
