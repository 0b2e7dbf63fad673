"""Merging one store into another (``embedstore merge``): arrays extracted on several machines, or by
several people, end up in one store to analyse together.

What is copied from the source store, for the models and datasets chosen (globs; all by default):

- every **complete** array (its extraction finished: the catalog says so and every chunk is marked),
  byte for byte (its Zarr metadata, chunks and chunk markers), so the copy reads back bit-identical;
  unfinished arrays stay behind (finish their extraction first);
- the catalog rows those arrays need and the destination lacks: the ``models`` rows, and whole
  datasets (``datasets``, ``samples``, ``captions``, ``annotations``, ``templates``, ``prompt_sets``,
  ``bad_samples``);
- for datasets both stores hold, the source's named prompt sets that the destination lacks, and its
  ``bad_samples`` rows that the destination lacks when image arrays of the dataset (``image_emb``,
  ``logits``) are copied (their rows of those images are zeros);
- ``results`` rows of the copied arrays' (model, dataset) pairs whose (model, dataset, analysis,
  params) the destination lacks;
- the indexes saved from the copied arrays (``embedstore index build``), after the catalog rows. An
  index records the rows it was built from: where the destination's bad samples leave other rows
  of the array usable, it is reported stale on use, as any index whose array changed.

Refused before anything is written, naming the reason: a dataset both stores hold with different
fingerprints; ``text_emb`` of a dataset whose template lists differ (its template axis would not
line up), unless the destination holds no ``text_emb`` of that dataset and its list is the start of
the source's: the source's further templates are then appended to it; a model both hold with
different weights; an array both hold that is not the same complete array (same fingerprints) in the
destination. An array the destination already holds complete with the same fingerprints is skipped.

A dataset's fingerprint covers its files' sizes and modification times, so the same images copied to
another machine without their times differ. ``trust_rows`` (``--trust-rows``) accepts such a dataset
when its classes and rows (keys, labels, locators, captions) agree in both catalogs: the user vouches
that the image bytes are the same. Its copied arrays take the destination's dataset fingerprint.

The destination's catalog rows are written in one transaction after the array copies; when anything
fails, the copies are removed again and the destination's catalog is as it was (a merge killed
outright can leave unregistered array files, which a later merge of the same arrays replaces). The
destination's extraction locks of the datasets written are held throughout, so a merge and an
extraction of one dataset never overlap.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa

from embedstore.errors import StoreError
from embedstore.evaluate.indexes import index_path, saved_index_path
from embedstore.index import INDEX_KINDS
from embedstore.index.sidecar import sidecar_path, write_atomically
from embedstore.store import ArrayInfo, Store, stored_model_id
from embedstore.store.locks import dataset_locks
from embedstore.store.store import arrow_table, insert_arrow, same_result_key

#: Arrays with a row per image: the ones a bad sample leaves a zero row in.
IMAGE_ROW_ARRAYS = ("image_emb", "logits")
#: Per-dataset catalog tables copied with a dataset the destination lacks.
DATASET_TABLES = ("datasets", "samples", "captions", "annotations", "templates", "prompt_sets", "bad_samples")


@dataclass
class MergePlan:
    """What a merge copies (``arrays``) and leaves (``skipped``: each array with the reason)."""

    arrays: list[ArrayInfo] = field(default_factory=list)
    skipped: list[tuple[ArrayInfo, str]] = field(default_factory=list)
    new_models: list[str] = field(default_factory=list)
    new_datasets: list[str] = field(default_factory=list)
    shared_datasets: list[str] = field(default_factory=list)
    relabelled: dict[str, str] = field(default_factory=dict)
    """Shared datasets accepted by ``trust_rows``: name -> the destination's dataset fingerprint."""
    indexes: list[tuple[Path, Path]] = field(default_factory=list)
    """Saved indexes of the copied arrays: (file in the source, file in the destination)."""
    adopted_templates: dict[str, list[str]] = field(default_factory=dict)
    """Shared datasets whose template list the destination extends to the source's (`_check_templates`)."""
    bytes: int = 0


@dataclass(frozen=True)
class MergeReport:
    plan: MergePlan
    results: int
    bad_samples: int
    prompt_sets: int


def _label(info: ArrayInfo) -> str:
    return f"{info.dataset}/{info.model}/{info.name}"


def _chosen(value: str, patterns: Sequence[str]) -> bool:
    return not patterns or any(fnmatch.fnmatchcase(value, p) for p in patterns)


def plan_merge(
    destination: Store, source: Store, models: Sequence[str] = (), datasets: Sequence[str] = (),
    *, trust_rows: bool = False,
) -> MergePlan:  # fmt: skip
    """What merging ``source`` into ``destination`` would do; StoreError for anything refused."""
    if destination.path.resolve() == source.path.resolve():
        raise StoreError(f"{source.path} is the destination store itself")
    models = [stored_model_id(m) for m in models]  # X@random is stored as X@random:0
    candidates = [
        info for info in source.list_arrays() if _chosen(info.model, models) and _chosen(info.dataset, datasets)
    ]
    if not candidates:
        held = sorted({f"{i.model} on {i.dataset}" for i in source.list_arrays()})
        raise StoreError(f"no array of {source.path} matches the given --model/--dataset; it holds: "
                         f"{', '.join(held[:8]) or 'no arrays'}" + (" ..." if len(held) > 8 else ""))  # fmt: skip
    plan = MergePlan()
    checked_datasets: set[str] = set()
    checked_models: set[str] = set()
    for info in candidates:
        unfinished = _unfinished(source, info)
        if unfinished:
            plan.skipped.append((info, unfinished))
            continue
        if info.dataset not in checked_datasets:
            _check_dataset(destination, source, info.dataset, plan, trust_rows)
            checked_datasets.add(info.dataset)
        if info.model not in checked_models:
            _check_model(destination, source, info.model, plan)
            checked_models.add(info.model)
        if info.name == "text_emb" and info.dataset in plan.shared_datasets:
            _check_templates(destination, source, info.dataset, plan)
        present = destination.list_arrays(info.dataset, info.model, info.name)
        if present:
            ours = present[0]
            if ours.fingerprints != info.fingerprints or destination.array_progress(ours)[1] != "complete":
                raise StoreError(
                    f"{destination.path} already holds {_label(info)}, not the same complete array "
                    f"(different fingerprints or unfinished): `embedstore rm` it there first to take the copy"
                )
            plan.skipped.append((info, "already in the destination"))
            missing = [
                pair for pair in _saved_indexes(destination, source, info) if not sidecar_path(pair[1]).is_file()
            ]
            if missing and _same_chunks(destination, ours, source, info):
                plan.indexes += missing  # saved indexes an earlier, interrupted merge did not get to copy
            continue
        plan.arrays.append(info)
        plan.bytes += source.arrays.tree_bytes(info.path)
        plan.indexes += _saved_indexes(destination, source, info)
    return plan


def _saved_indexes(destination: Store, source: Store, info: ArrayInfo) -> list[tuple[Path, Path]]:
    """The source's saved indexes of an array, with where the copies go (the sidecar travels beside)."""
    pairs = []
    for kind in INDEX_KINDS:
        found = saved_index_path(source, info.dataset, info.model, info.name, kind)
        if found is not None and found.is_file():
            payload = found.name.rsplit(".", 1)[1]
            pairs.append((found, index_path(destination, info.dataset, info.model, info.name, kind, payload)))
    return pairs


def _same_chunks(destination: Store, ours: ArrayInfo, source: Store, theirs: ArrayInfo) -> bool:
    """Whether two arrays with the same fingerprints also hold the same bytes (their chunk markers'
    CRC-32s agree): extractions with equal fingerprints can differ in the last bits (batch size, thread
    count, device), and an index of the one is stale for the other."""
    mine, other = destination.arrays.open_array(ours.path), source.arrays.open_array(theirs.path)
    return mine.chunk_rows == other.chunk_rows and mine.chunk_crcs() == other.chunk_crcs()


def _copy_saved_indexes(plan: MergePlan) -> None:
    """Copy each saved index, then its sidecar, each through a temporary name: an index is listed and
    loaded through its sidecar, so a copy cut short is never taken for an index."""
    for found, target in plan.indexes:
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(target, lambda path, source=found: shutil.copyfile(source, path))
        write_atomically(sidecar_path(target), lambda path, source=sidecar_path(found): shutil.copyfile(source, path))


def _check_templates(destination: Store, source: Store, dataset: str, plan: MergePlan) -> None:
    """``text_emb`` of a shared dataset needs one template list in both stores. When the destination
    holds no ``text_emb`` of the dataset and its list is the start of the source's, it takes the
    source's (the templates after its own are appended, so every template index stored in the
    destination, in prompt sets and results alike, keeps its meaning); else refused."""
    ours, theirs = destination.templates(dataset), source.templates(dataset)
    if ours == theirs or dataset in plan.adopted_templates:
        return
    prefix = theirs[: len(ours)] == ours
    if prefix and not destination.list_arrays(dataset, name="text_emb"):
        plan.adopted_templates[dataset] = theirs
        return
    why = (
        f"it holds text_emb of dataset {dataset} for other models" if prefix
        else f"its list is not the start of {source.path}'s, so its template indices would change meaning"
    )  # fmt: skip
    raise StoreError(
        f"dataset {dataset} has {len(theirs)} templates in {source.path} and {len(ours)} in {destination.path}, "
        f"not the same list, and {destination.path} cannot take the source's list: {why}. text_emb's template "
        f"axis would not line up (`embedstore prompts add` can make them equal, or leave text_emb out with "
        f"--dataset/--model)"
    )


def _unfinished(source: Store, info: ArrayInfo) -> str | None:
    """Why an array of the source is not ready to copy, or None. Its catalog status turns complete
    only when its extraction has finished (bad samples recorded); its files must hold every chunk."""
    where = f"in {source.path}"
    if info.status != "complete":
        done, _ = source.array_progress(info)
        return f"unfinished {where} ({done} of {info.rows_total} rows; its extraction has not ended)"
    if not source.arrays.exists(info.path):
        return f"its files are missing {where} (arrays at {source.arrays.location})"
    done = source.arrays.open_array(info.path).rows_done()
    if done != info.rows_total:
        return f"only {done} of its {info.rows_total} rows are marked written {where}"
    return None


def _check_dataset(destination: Store, source: Store, dataset: str, plan: MergePlan, trust_rows: bool) -> None:
    theirs = source.dataset_info(dataset)["fingerprint"]
    ours = destination.query("SELECT fingerprint FROM datasets WHERE name = ?", [dataset])
    if not ours:
        plan.new_datasets.append(dataset)
        return
    ours = ours[0]["fingerprint"]
    if ours != theirs:
        rows_agree = _rows_identity(destination, dataset) == _rows_identity(source, dataset)
        if not (trust_rows and rows_agree):
            differs = (
                f"dataset {dataset} differs between {source.path} and {destination.path} (fingerprint {theirs[:12]} "
                f"vs {ours[:12]})"
            )
            if not rows_agree:
                raise StoreError(f"{differs}: its classes or rows (keys, labels, files, captions) differ, so its "
                                 "arrays would not line up")  # fmt: skip
            raise StoreError(f"{differs}, though its classes and rows agree: the image files' sizes or modification "
                             "times differ (copies made without their times, e.g. not with rsync -a or cp -p, do); "
                             "if the images are the same, --trust-rows accepts it")  # fmt: skip
        plan.relabelled[dataset] = ours
    plan.shared_datasets.append(dataset)


def _rows_identity(store: Store, dataset: str) -> str:
    """A hash of what lines a dataset's arrays up, from the catalog: its classes, class subset and
    task, and per row its key, label, locator and captions (not the files' stamps)."""
    digest = hashlib.sha256()
    info = store.dataset_info(dataset)
    digest.update(json.dumps([info["classnames"], info["class_subset"], info["task"]], default=str).encode())
    with store.catalog.read() as con:
        for sql in ('SELECT "row", key, label, locator FROM samples WHERE dataset = ? ORDER BY "row"',
                    'SELECT "row", sample_row, text FROM captions WHERE dataset = ? ORDER BY "row"'):  # fmt: skip
            for row in con.execute(sql, [dataset]).fetchall():
                digest.update(json.dumps(row).encode())
    return digest.hexdigest()


def _check_model(destination: Store, source: Store, model: str, plan: MergePlan) -> None:
    theirs = source.model_info(model)
    ours = destination.query("SELECT fingerprint FROM models WHERE model_id = ?", [model])
    if not ours:
        plan.new_models.append(model)
    elif ours[0]["fingerprint"] != theirs["fingerprint"]:
        raise StoreError(
            f"model {model} has other weights in {source.path} than in {destination.path} (fingerprint "
            f"{theirs['fingerprint'][:12]} vs {ours[0]['fingerprint'][:12]}): merge it under another id"
        )


def merge_stores(
    destination: Store, source: Store, models: Sequence[str] = (), datasets: Sequence[str] = (),
    *, trust_rows: bool = False,
) -> MergeReport:  # fmt: skip
    """Copy ``source``'s complete arrays (and what they need) into ``destination`` (module doc)."""
    planned = {info.dataset for info in source.list_arrays() if _chosen(info.dataset, datasets)}
    with dataset_locks(destination.path, sorted(planned), doing="embedstore merge"):
        plan = plan_merge(destination, source, models, datasets, trust_rows=trust_rows)
        copied: list[str] = []
        try:
            for info in plan.arrays:
                path = destination.array_path(info.dataset, info.model, info.name)
                destination.arrays.delete_array(path)  # whatever an interrupted merge left there
                copied.append(path)
                destination.arrays.copy_tree_from(source.arrays, info.path, path)
            counts = _copy_catalog_rows(destination, source, plan)
        except BaseException:
            _remove_uncatalogued_copies(destination, copied)
            raise
        _copy_saved_indexes(plan)
    return MergeReport(plan, *counts)


def _remove_uncatalogued_copies(destination: Store, paths: Sequence[str]) -> None:
    """After a failed or interrupted merge, delete the copied arrays the destination's catalog does not
    list. A Ctrl-C that lands after the catalog commit keeps them: the catalog lists them as complete.
    When the catalog cannot be read, nothing is deleted (`embedstore gc` removes unlisted folders)."""
    try:
        listed = {row["path"] for row in destination.query("SELECT path FROM arrays")}
    except Exception:
        return
    for path in paths:
        if path not in listed:
            destination.arrays.delete_array(path)


def _copy_catalog_rows(destination: Store, source: Store, plan: MergePlan) -> tuple[int, int, int]:
    """Insert the plan's catalog rows in one transaction; returns (results, bad samples, prompt sets) added."""
    same_templates = [
        d
        for d in plan.shared_datasets
        if d in plan.adopted_templates or destination.templates(d) == source.templates(d)
    ]
    held_sets = {(r["dataset"], r["name"]) for r in destination.query("SELECT DISTINCT dataset, name FROM prompt_sets")}
    appended = []  # the source's templates after the destination's own (`_check_templates`)
    for dataset, theirs in plan.adopted_templates.items():
        appended += [(dataset, i, theirs[i]) for i in range(len(destination.templates(dataset)), len(theirs))]
    copied = {(i.dataset, i.model, i.name) for i in plan.arrays}
    pairs = {(i.model, i.dataset) for i in plan.arrays}
    tables: dict[str, pa.Table] = {}
    models = sorted({m for m, _ in pairs})
    with source.catalog.read() as con:

        def rows(table: str, column: str, values: list[str], keep: Callable[[dict], bool] | None = None) -> pa.Table:
            """``table``'s rows whose ``column`` is one of ``values`` (and that ``keep`` keeps)."""
            found = arrow_table(con, f"SELECT * FROM {table} WHERE list_contains(?::VARCHAR[], {column})", [values])
            if keep is None:
                return found
            return pa.Table.from_pylist([r for r in found.to_pylist() if keep(r)], schema=found.schema)

        for table in DATASET_TABLES:
            tables[table] = rows(table, "name" if table == "datasets" else "dataset", plan.new_datasets)
        tables["models"] = rows("models", "model_id", plan.new_models)
        tables["arrays"] = rows("arrays", "model", models, lambda r: (r["dataset"], r["model"], r["name"]) in copied)
        tables["results"] = rows("results", "model", models, lambda r: (r["model"], r["dataset"]) in pairs)
        # a shared dataset's bad rows come along with its copied image-row arrays (their zero rows), not otherwise
        copied_datasets = {i.dataset for i in plan.arrays if i.name in IMAGE_ROW_ARRAYS}
        shared_bad = rows("bad_samples", "dataset", [d for d in plan.shared_datasets if d in copied_datasets])
        shared_sets = rows(
            "prompt_sets", "dataset", same_templates, lambda r: (r["dataset"], r["name"]) not in held_sets
        )
    arrays = tables["arrays"]
    listed = arrays.to_pylist()
    paths = [destination.array_path(r["dataset"], r["model"], r["name"]) for r in listed]
    fingerprints = [plan.relabelled.get(r["dataset"], r["dataset_fingerprint"]) for r in listed]
    for column, values in (("path", paths), ("dataset_fingerprint", fingerprints)):
        arrays = arrays.set_column(arrays.schema.get_field_index(column), column, pa.array(values, pa.string()))
    tables["arrays"] = arrays
    with destination.catalog.write() as con:
        if appended:
            con.executemany("INSERT INTO templates VALUES (?, ?, ?)", appended)
        added = {table: _insert(con, table, tables[table]) for table in (*DATASET_TABLES, "models", "arrays")}
        new_rows_only = 'NOT EXISTS (SELECT 1 FROM bad_samples t WHERE t.dataset = i.dataset AND t."row" = i."row")'
        bad = added["bad_samples"] + _insert(con, "bad_samples", shared_bad, new_rows_only)
        _insert(con, "prompt_sets", shared_sets)
        results = _insert(con, "results", tables["results"],
                          f"NOT EXISTS (SELECT 1 FROM results t WHERE {same_result_key('t', 'i')})")  # fmt: skip
    copied_sets = [*tables["prompt_sets"].to_pylist(), *shared_sets.to_pylist()]
    return results, bad, len({(r["dataset"], r["name"]) for r in copied_sets})


def _insert(con, table: str, rows: pa.Table, condition: str | None = None) -> int:
    """Insert ``rows`` (a table of ``table``'s columns) where ``condition`` holds (alias ``i``)."""
    if not rows.num_rows:
        return 0
    try:
        return insert_arrow(con, table, rows, condition)
    except duckdb.Error as exc:  # e.g. another process registered the same model meanwhile
        raise StoreError(f"cannot add the merged {table} rows: {str(exc).splitlines()[0]}") from None
