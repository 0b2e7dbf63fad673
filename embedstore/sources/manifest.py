"""Manifests: a table (CSV/TSV, Parquet, JSONL) with one image per row.

Columns (names configurable with ``path_column=``, ``label_column=``, ``key_column=``):

- ``path`` (required): the image path relative to the manifest's folder, which is the dataset root.
  After normalising ``..`` and resolving symlinks it must stay inside the root; an absolute path is
  accepted only when it is inside the root. Every listed file must exist when the dataset is opened.
- ``label`` (optional): an integer index into the class list, or a class name (or WNID); an integer
  is always read as an index. A missing cell, an empty cell or ``-1`` means "no label" (OOD images).
- ``key`` (optional): the sample key; without it the key is the normalised path. Keys must be unique.
- every other column becomes a per-sample annotation (strings; non-string values as JSON).

The class list comes from ``classes=FILE``, else ``classnames.txt`` next to the manifest, else the
sorted distinct class names used as labels. WNID class lists map to ImageNet names and a class
subset (`classes.class_space`). Templates come from ``zeroshot_classification_templates.txt`` next to
the manifest when present (CLIP_benchmark's file name).
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from embedstore.errors import DatasetError
from embedstore.sources.base import Dataset, Sample
from embedstore.sources.classes import CLASSNAMES_FILE, ClassSpace, class_space, index_by_name, read_list_file
from embedstore.sources.files import FileStorage, RootGuard
from embedstore.sources.tables import Table, read_table
from embedstore.sources.templates import templates_in_folder

OPTIONS = {"classes", "path_column", "label_column", "key_column"}
NO_LABEL = -1
_INTEGER = re.compile(r"-?\d+")


@dataclass(frozen=True)
class Record:
    """One image of a manifest: its first table row number, cells and captions (caption manifests)."""

    number: int
    cells: dict[str, Any]
    captions: tuple[str, ...] = ()


@dataclass(frozen=True)
class LoadedManifest:
    """What a manifest yields before it becomes a `Dataset`."""

    root: str
    samples: tuple[Sample, ...]
    space: ClassSpace
    templates: list[str]


def open_manifest(name: str, spec: str, path: str, options: Mapping[str, Any]) -> Dataset:
    """Register a one-image-per-row manifest; every check happens here, before any image is read."""
    manifest_path = os.path.abspath(path)
    table = read_table(manifest_path)
    records = [Record(number, cells) for number, cells in enumerate(table.rows, start=1)]
    loaded = load_records(manifest_path, table, records, options, reserved=set())
    return Dataset(
        name=name,
        kind="manifest",
        spec=spec,
        root=loaded.root,
        samples=loaded.samples,
        classnames=loaded.space.classnames,
        templates=loaded.templates,
        task="classification",
        class_subset=loaded.space.class_subset,
        storage=FileStorage(loaded.root),
    )


def load_records(
    manifest_path: str,
    table: Table,
    records: list[Record],
    options: Mapping[str, Any],
    reserved: set[str],
) -> LoadedManifest:
    """Validate the records of a manifest (paths, keys, labels) and turn them into samples.

    `reserved` names further columns that are not annotations (the caption column of caption sets).
    """
    root = os.path.dirname(manifest_path)
    path_column = str(options.get("path_column", "path"))
    label_column = str(options.get("label_column", "label"))
    key_column = str(options.get("key_column", "key"))
    if path_column not in table.columns:
        raise DatasetError(
            f"manifest {manifest_path!r} has no path column {path_column!r} (columns: {', '.join(table.columns)})"
        )
    if "key_column" in options and key_column not in table.columns:
        raise DatasetError(f"manifest {manifest_path!r} has no key column {key_column!r}")
    if "label_column" in options and label_column not in table.columns:
        raise DatasetError(f"manifest {manifest_path!r} has no label column {label_column!r}")
    annotation_columns = [c for c in table.columns if c not in {path_column, label_column, key_column, *reserved}]
    raw_labels = [record.cells.get(label_column) for record in records]
    space, class_source = _manifest_class_space(manifest_path, options, raw_labels)
    labels = _LabelParser(space, class_source)

    guard = RootGuard.of(root)
    samples: list[Sample] = []
    first_row_of_key: dict[str, int] = {}
    for record, raw_label in zip(records, raw_labels):
        where = f"manifest {manifest_path!r} row {record.number}"
        locator = _locate(guard, record.cells.get(path_column), where)
        key = locator if key_column not in table.columns else _key(record.cells.get(key_column), where)
        if key in first_row_of_key:
            raise DatasetError(f"{where}: duplicate key {key!r} (first at row {first_row_of_key[key]})")
        first_row_of_key[key] = record.number
        samples.append(
            Sample(
                row=len(samples),
                key=key,
                label=labels.parse(raw_label, where),
                locator=locator,
                captions=record.captions,
                annotations=_annotations(record.cells, annotation_columns),
            )
        )
    return LoadedManifest(
        root=root, samples=tuple(samples), space=space, templates=templates_in_folder(root, space.imagenet_like)
    )


def _locate(guard: RootGuard, value: Any, where: str) -> str:
    """The locator of a path cell: inside the root, and an existing regular file."""
    if not isinstance(value, str) or not value.strip():
        raise DatasetError(f"{where}: empty or non-text path {value!r}")
    locator = guard.locator(value)
    if locator is None:
        raise DatasetError(f"{where}: path {value!r} escapes the dataset root {guard.root!r}")
    try:
        mode = os.stat(os.path.join(guard.root, locator)).st_mode
    except FileNotFoundError:
        raise DatasetError(f"{where}: file {value!r} does not exist") from None
    except OSError as exc:
        raise DatasetError(f"{where}: file {value!r} cannot be accessed ({exc.strerror or exc})") from None
    if not stat.S_ISREG(mode):
        raise DatasetError(f"{where}: {value!r} is not a file")
    return locator


def _key(value: Any, where: str) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise DatasetError(f"{where}: empty key")
    return value if isinstance(value, str) else json.dumps(value)


def _annotations(cells: Mapping[str, Any], columns: list[str]) -> dict[str, str]:
    annotations = {}
    for column in columns:
        value = cells.get(column)
        if value is None:
            continue
        annotations[column] = value if isinstance(value, str) else json.dumps(value)
    return annotations


def _manifest_class_space(
    manifest_path: str, options: Mapping[str, Any], raw_labels: list[Any]
) -> tuple[ClassSpace, str]:
    """The class space and a description of where it came from (for error messages)."""
    if "classes" in options:
        entries = read_list_file(options["classes"], "classes")
        return class_space(entries), f"{len(entries)} classes in {os.fspath(options['classes'])!r}"
    sibling = os.path.join(os.path.dirname(manifest_path), CLASSNAMES_FILE)
    if os.path.exists(sibling):
        entries = read_list_file(sibling, "class names")
        return class_space(entries), f"{len(entries)} classes in {sibling!r}"
    names = sorted({label.strip() for label in raw_labels if isinstance(label, str) and not _is_integer_text(label)})
    return class_space(names), f"{len(names)} class names used as labels"


def _is_integer_text(text: str) -> bool:
    return _INTEGER.fullmatch(text.strip()) is not None


class _LabelParser:
    """Turns a label cell into an index of `space`: integers are indices, text is a class id or name."""

    def __init__(self, space: ClassSpace, source: str) -> None:
        self.space = space
        self.by_id = space.index_of()
        self.by_name = index_by_name(space.classnames)
        self.source = source

    def parse(self, value: Any, where: str) -> int | None:
        if value is None:
            return None
        if isinstance(value, bool):
            raise DatasetError(f"{where}: label {value!r} is neither a class index nor a class name")
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, str) and _is_integer_text(value):
            value = int(value)
        if isinstance(value, int):
            return self._index(value, where)
        if isinstance(value, str):
            return self._name(value.strip(), where)
        raise DatasetError(f"{where}: label {value!r} is neither a class index nor a class name")

    def _index(self, value: int, where: str) -> int | None:
        if value == NO_LABEL:
            return None
        if not self.space.ids:
            raise DatasetError(
                f"{where}: integer label {value} but no class list (add {CLASSNAMES_FILE} next to the manifest or pass classes=FILE)"
            )
        if not 0 <= value < len(self.space.ids):
            raise DatasetError(f"{where}: label {value} is outside the class list ({self.source})")
        return value

    def _name(self, value: str, where: str) -> int:
        for mapping in (self.by_id, self.by_name):
            if value in mapping:
                index = mapping[value]
                if index is None:
                    raise DatasetError(f"{where}: label {value!r} names more than one class; use integer labels")
                return index
        raise DatasetError(f"{where}: label {value!r} is not in the class list ({self.source})")
