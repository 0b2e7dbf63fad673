"""Caption sets for image-text retrieval: images with one or more captions each (task "retrieval").

Two forms:

- a WebDataset root (``captions:DIR`` or ``captions:DIR#split``): CLIP_benchmark's retrieval layout,
  every sample with a ``txt`` member holding its captions joined with ``\\n``;
- a manifest (``captions:FILE.csv|.parquet|.jsonl``) with the columns of `manifest` plus either
  ``captions`` (one row per image: a list in Parquet/JSONL, or text that is a JSON list or the
  captions joined with ``\\n``) or ``caption`` (one caption per row, one row per (image, caption)
  pair). Rows with the same path are one image whose captions are those of all its rows, in row
  order; its other cells come from its first row. ``caption_column=`` picks another list column.

Labels are optional: caption-only samples have ``label=None``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from embedstore.errors import DatasetError
from embedstore.sources.base import Dataset
from embedstore.sources.files import FileStorage
from embedstore.sources.manifest import OPTIONS as MANIFEST_OPTIONS
from embedstore.sources.manifest import Record, load_records
from embedstore.sources.tables import Table, read_table
from embedstore.sources.wds import DEFAULT_SPLIT, load_wds

OPTIONS = MANIFEST_OPTIONS | {"caption_column", "split"}
LIST_COLUMN = "captions"
PAIR_COLUMN = "caption"


def open_captions(name: str, spec: str, path: str, options: Mapping[str, Any]) -> Dataset:
    """Register a caption set from a WebDataset root (a folder) or a caption manifest (a file)."""
    if os.path.isdir(path):
        return _open_wds_captions(name, spec, path, options)
    if not os.path.exists(path):
        raise DatasetError(f"caption set {path!r} does not exist (give a WebDataset folder or a caption manifest)")
    if "split" in options:
        raise DatasetError(f"caption manifest {path!r}: a split applies only to WebDataset roots")
    return _open_manifest_captions(name, spec, path, options)


def _open_wds_captions(name: str, spec: str, path: str, options: Mapping[str, Any]) -> Dataset:
    manifest_only = sorted(set(options) & (OPTIONS - {"split"}))
    if manifest_only:
        raise DatasetError(
            f"option {manifest_only[0]!r} applies to caption manifests, not to the WebDataset root {path!r}"
        )
    loaded = load_wds(path, str(options.get("split", DEFAULT_SPLIT)), captions_required=True)
    return Dataset(
        name=name,
        kind="captions",
        spec=spec,
        root=loaded.root,
        samples=loaded.samples,
        classnames=loaded.space.classnames,
        templates=loaded.templates,
        task="retrieval",
        class_subset=loaded.space.class_subset,
        storage=loaded.storage,
    )


def _open_manifest_captions(name: str, spec: str, path: str, options: Mapping[str, Any]) -> Dataset:
    manifest_path = os.path.abspath(path)
    table = read_table(manifest_path)
    caption_column = _caption_column(table, options, manifest_path)
    path_column = str(options.get("path_column", "path"))
    if path_column not in table.columns:
        raise DatasetError(
            f"manifest {manifest_path!r} has no path column {path_column!r} (columns: {', '.join(table.columns)})"
        )
    records = _records(table, manifest_path, path_column, caption_column)
    loaded = load_records(manifest_path, table, records, options, reserved={caption_column})
    return Dataset(
        name=name,
        kind="captions",
        spec=spec,
        root=loaded.root,
        samples=loaded.samples,
        classnames=loaded.space.classnames,
        templates=loaded.templates,
        task="retrieval",
        class_subset=loaded.space.class_subset,
        storage=FileStorage(loaded.root),
    )


def _caption_column(table: Table, options: Mapping[str, Any], manifest_path: str) -> str:
    if "caption_column" in options:
        column = str(options["caption_column"])
        if column not in table.columns:
            raise DatasetError(f"manifest {manifest_path!r} has no caption column {column!r}")
        return column
    for column in (LIST_COLUMN, PAIR_COLUMN):
        if column in table.columns:
            return column
    raise DatasetError(f"manifest {manifest_path!r} has neither a {LIST_COLUMN!r} nor a {PAIR_COLUMN!r} column")


def _records(table: Table, manifest_path: str, path_column: str, column: str) -> list[Record]:
    """One record per distinct path: the captions of all its rows, the cells of its first row.

    A cell of the ``caption`` column is one caption, verbatim; a cell of any other caption column is
    parsed by `parse_captions`.
    """
    first: dict[Any, tuple[int, dict[str, Any]]] = {}
    captions: dict[Any, list[str]] = {}
    for number, cells in enumerate(table.rows, start=1):
        where = f"manifest {manifest_path!r} row {number}"
        if column == PAIR_COLUMN:
            caption = cells.get(column)
            if not isinstance(caption, str) or not caption.strip():
                raise DatasetError(f"{where}: empty caption")
            row_captions: tuple[str, ...] = (caption,)
        else:
            row_captions = parse_captions(cells.get(column), where)
        image = cells.get(path_column)
        if image not in first:
            first[image] = (number, cells)
            captions[image] = []
        captions[image].extend(row_captions)
    return [Record(number, cells, tuple(captions[image])) for image, (number, cells) in first.items()]


def parse_captions(value: Any, where: str) -> tuple[str, ...]:
    """Captions from a cell: a list, text holding a JSON list, or text with one caption per line."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{where}: captions look like a JSON list but do not parse ({exc.msg})") from None
    if isinstance(value, str):
        captions = tuple(line for line in value.splitlines() if line.strip())
    elif isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value):
        captions = tuple(item for item in value if item.strip())
    elif value is None:
        captions = ()
    else:
        raise DatasetError(f"{where}: captions must be text or a list of text, got {type(value).__name__}")
    if not captions:
        raise DatasetError(f"{where}: image has no captions")
    return captions
