"""Write any dataset to disk as an image folder, a manifest, or CLIP_benchmark's WebDataset layout.

The encoded bytes are copied as they are (never re-encoded), so reading the written dataset back
gives byte-identical images. `write_dataset` returns the spec text that opens the result.

Layouts:

- ``imagefolder``: ``OUT/<classname>/<key>.<ext>``, plus ``OUT/classes.txt`` (class order) and
  ``OUT/templates.txt``; the returned spec passes both as options. Needs a label for every sample;
  captions and annotations are not kept.
- ``manifest-csv`` / ``manifest-jsonl`` / ``manifest-parquet``: ``OUT/manifest.<ext>`` with columns
  ``key``, ``path`` (``images/<key>.<ext>``), ``label`` (index; empty/null when None), ``captions``
  (JSON list in CSV, a list otherwise; only when some sample has captions) and one column per
  annotation; ``OUT/classnames.txt`` and ``OUT/zeroshot_classification_templates.txt`` beside it.
- ``wds``: exactly what CLIP_benchmark's ``webdataset_builder.convert_dataset`` /
  ``convert_retrieval_dataset`` write: ``OUT/<split>/{0..N-1}.tar`` with at most `shard_size` samples
  (and about `shard_bytes` bytes) each, ``OUT/<split>/nshards.txt``, ``OUT/classnames.txt``,
  ``OUT/zeroshot_classification_templates.txt`` or, for retrieval, ``OUT/dataset_type.txt``. Sample
  ``i`` has key ``s%07d`` and members ``<ext>`` (the image), ``cls`` (the label as text; ``-1`` for
  None, embedstore's convention) or ``txt`` (captions joined with ``\\n``, newlines inside a caption
  escaped as ``\\\\n``). Tar headers follow webdataset's ``TarWriter`` (USTAR, mode 0o444, owner
  ``bigdata``) with a fixed mtime of 0 so that the shards are reproducible. Annotations are not kept.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import tarfile
from collections.abc import Iterator
from typing import Any

from embedstore.errors import DatasetError
from embedstore.sources.base import Dataset, Sample
from embedstore.sources.classes import CLASSNAMES_FILE
from embedstore.sources.formats import sniff_image_format
from embedstore.sources.templates import TEMPLATES_FILE

LAYOUTS = ("imagefolder", "manifest-csv", "manifest-jsonl", "manifest-parquet", "wds")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
_CHUNK_ROWS = 256


def write_dataset(
    dataset: Dataset,
    out_dir: str | os.PathLike[str],
    layout: str,
    *,
    shard_size: int = 10_000,
    shard_bytes: int = 1_000_000_000,
    split: str = "test",
) -> str:
    """Write `dataset` to `out_dir` in `layout`; return the spec text that opens what was written."""
    if layout not in LAYOUTS:
        raise DatasetError(f"unknown layout {layout!r} (known: {', '.join(LAYOUTS)})")
    if shard_size < 1:
        raise DatasetError(f"shard_size must be >= 1, got {shard_size}")
    out = os.path.abspath(os.fspath(out_dir))
    os.makedirs(out, exist_ok=True)
    if layout == "imagefolder":
        return _write_imagefolder(dataset, out)
    if layout == "wds":
        return _write_wds(dataset, out, split, shard_size, shard_bytes)
    return _write_manifest(dataset, out, layout.removeprefix("manifest-"))


def _encoded(dataset: Dataset) -> Iterator[tuple[Sample, bytes, str]]:
    """Every sample with its bytes and their file extension; DatasetError for an unreadable one."""
    for start in range(0, len(dataset), _CHUNK_ROWS):
        for encoded in dataset.iter_encoded(start, min(start + _CHUNK_ROWS, len(dataset))):
            sample = dataset.samples[encoded.row]
            if encoded.data is None:
                raise DatasetError(f"cannot write sample {sample.key!r}: {encoded.error}")
            extension = sniff_image_format(encoded.data)
            if extension is None:
                raise DatasetError(f"cannot write sample {sample.key!r}: bytes are not a known image format")
            yield sample, encoded.data, extension


def _file_stem(key: str, used: dict[str, str]) -> str:
    stem = _UNSAFE.sub("_", key)
    if stem in used and used[stem] != key:
        raise DatasetError(f"keys {used[stem]!r} and {key!r} map to the same file name {stem!r}")
    used[stem] = key
    return stem


def _write_lines(path: str, lines: list[str]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("".join(f"{line}\n" for line in lines))


def _write_imagefolder(dataset: Dataset, out: str) -> str:
    if dataset.task != "classification":
        raise DatasetError(
            f"dataset {dataset.name!r} is a {dataset.task} dataset; the imagefolder layout holds only labelled images"
        )
    for classname in dataset.classnames:
        if not classname or classname.startswith(".") or "/" in classname or os.sep in classname:
            raise DatasetError(f"class name {classname!r} cannot be a folder name")
    used: dict[str, str] = {}
    for sample, data, extension in _encoded(dataset):
        if sample.label is None:
            raise DatasetError(f"sample {sample.key!r} has no label; the imagefolder layout needs one")
        folder = os.path.join(out, dataset.classnames[sample.label])
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f"{_file_stem(sample.key, used)}.{extension}"), "wb") as handle:
            handle.write(data)
    for classname in dataset.classnames:
        os.makedirs(os.path.join(out, classname), exist_ok=True)
    classes_path = os.path.join(out, "classes.txt")
    templates_path = os.path.join(out, "templates.txt")
    _write_lines(classes_path, dataset.classnames)
    _write_lines(templates_path, dataset.templates)
    return f"imagefolder:{out}?classes={classes_path}&templates={templates_path}"


def _write_manifest(dataset: Dataset, out: str, table_format: str) -> str:
    images = os.path.join(out, "images")
    os.makedirs(images, exist_ok=True)
    with_captions = any(sample.captions for sample in dataset.samples)
    annotation_columns = list(dict.fromkeys(key for sample in dataset.samples for key in sample.annotations))
    reserved = {"key", "path", "label", "captions"} & set(annotation_columns)
    if reserved:
        raise DatasetError(f"annotation {sorted(reserved)[0]!r} clashes with a manifest column name")
    used: dict[str, str] = {}
    rows: list[dict[str, Any]] = []
    for sample, data, extension in _encoded(dataset):
        relative = f"images/{_file_stem(sample.key, used)}.{extension}"
        with open(os.path.join(out, relative), "wb") as handle:
            handle.write(data)
        row: dict[str, Any] = {"key": sample.key, "path": relative, "label": sample.label}
        if with_captions:
            row["captions"] = list(sample.captions)
        for column in annotation_columns:
            row[column] = sample.annotations.get(column)
        rows.append(row)
    columns = ["key", "path", "label"] + (["captions"] if with_captions else []) + annotation_columns
    manifest_path = os.path.join(out, f"manifest.{table_format}")
    _TABLE_WRITERS[table_format](manifest_path, columns, rows)
    if dataset.classnames:
        _write_lines(os.path.join(out, CLASSNAMES_FILE), dataset.classnames)
    _write_lines(os.path.join(out, TEMPLATES_FILE), dataset.templates)
    kind = "captions" if dataset.task == "retrieval" else "manifest"
    return f"{kind}:{manifest_path}"


def _write_csv(path: str, columns: list[str], rows: list[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            cells = dict(row)
            if "captions" in cells:
                cells["captions"] = json.dumps(cells["captions"], ensure_ascii=False)
            writer.writerow({key: ("" if value is None else value) for key, value in cells.items()})


def _write_jsonl(path: str, columns: list[str], rows: list[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps({column: row.get(column) for column in columns}, ensure_ascii=False) + "\n")


def _write_parquet(path: str, columns: list[str], rows: list[dict[str, Any]]) -> None:
    import pyarrow
    import pyarrow.parquet

    types = {
        "key": pyarrow.string(),
        "path": pyarrow.string(),
        "label": pyarrow.int64(),
        "captions": pyarrow.list_(pyarrow.string()),
    }
    schema = pyarrow.schema([(column, types.get(column, pyarrow.string())) for column in columns])
    pyarrow.parquet.write_table(pyarrow.Table.from_pylist(rows, schema=schema), path)


_TABLE_WRITERS = {"csv": _write_csv, "jsonl": _write_jsonl, "parquet": _write_parquet}


def _write_wds(dataset: Dataset, out: str, split: str, shard_size: int, shard_bytes: int) -> str:
    retrieval = dataset.task == "retrieval"
    if retrieval:
        _write_lines(os.path.join(out, "dataset_type.txt"), ["retrieval"])
    else:
        _write_lines(os.path.join(out, CLASSNAMES_FILE), dataset.classnames)
        _write_lines(os.path.join(out, TEMPLATES_FILE), dataset.templates)
    os.makedirs(os.path.join(out, split), exist_ok=True)
    writer = _ShardWriter(os.path.join(out, split), shard_size, shard_bytes)
    try:
        for sample, data, extension in _encoded(dataset):
            members: dict[str, bytes] = {extension: data}
            if retrieval:
                members["txt"] = "\n".join(caption.replace("\n", r"\n") for caption in sample.captions).encode("utf-8")
            else:
                members["cls"] = str(-1 if sample.label is None else sample.label).encode("ascii")
            writer.write(f"s{sample.row:07d}", members)
    finally:
        shards = writer.close()
    _write_lines(os.path.join(out, split, "nshards.txt"), [str(shards)])
    kind = "captions" if retrieval else "wds"
    return f"{kind}:{out}#{split}"


class _ShardWriter:
    """Numbered tar shards with webdataset's rule: start a new shard once the current one holds
    `max_count` samples or `max_bytes` bytes of member data (so at least one shard, maybe empty)."""

    def __init__(self, folder: str, max_count: int, max_bytes: int) -> None:
        self.folder = folder
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.shards = 0
        self.count = 0
        self.size = 0
        self.archive: tarfile.TarFile | None = None
        self._next_shard()

    def _next_shard(self) -> None:
        if self.archive is not None:
            self.archive.close()
        self.archive = tarfile.open(
            os.path.join(self.folder, f"{self.shards}.tar"), mode="w", format=tarfile.USTAR_FORMAT
        )
        self.shards += 1
        self.count = 0
        self.size = 0

    def write(self, key: str, members: dict[str, bytes]) -> None:
        if self.count >= self.max_count or self.size >= self.max_bytes:
            self._next_shard()
        assert self.archive is not None
        for extension in sorted(members):
            data = members[extension]
            info = tarfile.TarInfo(f"{key}.{extension}")
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o444
            info.uname = info.gname = "bigdata"
            self.archive.addfile(info, io.BytesIO(data))
            self.size += len(data)
        self.count += 1

    def close(self) -> int:
        if self.archive is not None:
            self.archive.close()
            self.archive = None
        return self.shards
