"""Checking that every array reads back as it was written (``embedstore verify``).

Each chunk of an array is written once, and its done-marker records the chunk's row count and the
CRC-32 of its bytes (`embedstore.store.arrays`). Verifying an array reads every done chunk and
compares its CRC with the marker's, and checks that the catalog's progress agrees with the
markers: a store copied in part, a chunk file cut short or changed on disk, or a marker lost is
found here, while a plain read refuses only the damage it can see without a CRC (a chunk file that
is missing, short or does not decode). Verifying reads the whole array.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass

from embedstore.errors import StoreError
from embedstore.store import ArrayInfo, Store, stored_model_id

OK, DAMAGED, UNREADABLE = "ok", "damaged", "unreadable"


@dataclass(frozen=True)
class ArrayCheck:
    """One array's verification. ``status``: "ok"; "damaged" (``bad_chunks`` do not read back with
    their marker's CRC, or chunks the catalog counts as done have no marker); "unreadable" (the
    array's metadata cannot be opened)."""

    dataset: str
    model: str
    name: str
    chunks_checked: int
    bad_chunks: tuple[int, ...]
    status: str
    detail: str = ""


def verify_arrays(
    store: Store,
    dataset: str | None = None,
    model: str | None = None,
    *,
    on_array: Callable[[ArrayInfo], None] | None = None,
) -> list[ArrayCheck]:
    """Verify every array whose dataset and model match the glob patterns ``dataset`` and ``model``
    (all arrays when None; either spelling of random weights, `stored_model_id`); ``on_array`` is called
    before each array is read."""
    model = stored_model_id(model) if model is not None else None
    infos = [
        info
        for info in store.list_arrays()
        if (dataset is None or fnmatch.fnmatchcase(info.dataset, dataset))
        and (model is None or fnmatch.fnmatchcase(info.model, model))
    ]
    checks = []
    for info in infos:
        if on_array is not None:
            on_array(info)
        checks.append(_verify_array(store, info))
    return checks


def _verify_array(store: Store, info: ArrayInfo) -> ArrayCheck:
    where = (info.dataset, info.model, info.name)
    try:
        array = store.array(*where)
        done = sorted(array.done_chunks())
    except StoreError as exc:
        return ArrayCheck(*where, 0, (), UNREADABLE, str(exc))
    bad = tuple(index for index in done if not array.verify_chunk(index))
    rows_marked = sum(b - a for a, b in map(array.chunk_bounds, done))
    details = []
    if bad:
        details.append(f"chunk(s) {', '.join(map(str, bad))} do not read back as written")
    if info.status == "complete" and rows_marked < info.rows_total:
        details.append(f"the catalog says complete but only {rows_marked} of {info.rows_total} rows are marked done")
    status = DAMAGED if details else OK
    return ArrayCheck(*where, len(done), bad, status, "; ".join(details))
