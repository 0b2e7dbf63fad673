"""WebDataset shards in CLIP_benchmark's ``wds/<name>`` layout, read with the stdlib `tarfile`.

Layout (CLIP_benchmark ``datasets/builder.py`` ``build_wds_dataset``, writer
``webdataset_builder.convert_dataset``)::

    ROOT/classnames.txt                          one class name per line (required for classification)
    ROOT/zeroshot_classification_templates.txt   one template per line with {c} (optional)
    ROOT/dataset_type.txt                        optional: "retrieval" | "multilabel" (default classification)
    ROOT/<split>/nshards.txt                     number of shards (required)
    ROOT/<split>/0.tar ... <split>/<N-1>.tar

A sample is the run of consecutive tar members sharing a key (webdataset's rule: the key is the member
name up to the first dot of its base name, the rest is the lower-cased extension); CLIP_benchmark
writes keys ``s%07d``. The image is the first of the ``webp``, ``png``, ``jpg``, ``jpeg`` members; the
label is the integer text of ``cls`` (``-1`` means no label); captions are the lines of ``txt``
(CLIP_benchmark joins them with ``\\n``). Multilabel datasets (``npy`` targets) are not supported.

Opening scans every shard's headers once and remembers each image member's offset and size, so
`TarStorage.iter_encoded` opens each shard once and reads only the members asked for. A shard that
changed on disk since then yields per-sample errors instead of wrong bytes.
"""

from __future__ import annotations

import os
import re
import tarfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np

from embedstore.errors import DatasetError
from embedstore.sources.base import Dataset, EncodedSample, Sample
from embedstore.sources.classes import CLASSNAMES_FILE, ClassSpace, class_space, read_list_file
from embedstore.sources.files import existing_root
from embedstore.sources.formats import WDS_IMAGE_EXTENSIONS
from embedstore.sources.templates import templates_in_folder

OPTIONS = {"split"}
DEFAULT_SPLIT = "test"
DATASET_TYPE_FILE = "dataset_type.txt"
NSHARDS_FILE = "nshards.txt"
NO_LABEL = -1
_KEY_AND_EXTENSION = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")


@dataclass(frozen=True)
class ShardStamp:
    """A shard's path relative to the root and its size and mtime when the dataset was opened."""

    locator: str
    size: int
    mtime_ns: int


@dataclass(frozen=True, eq=False)
class TarStorage:
    """Image members inside tar shards: per row, the shard index, data offset and byte size."""

    root: str
    shards: tuple[ShardStamp, ...]
    shard_index: np.ndarray = field(repr=False)
    offsets: np.ndarray = field(repr=False)
    sizes: np.ndarray = field(repr=False)

    def iter_encoded(self, samples: Sequence[Sample], start: int, stop: int) -> Iterator[EncodedSample]:
        row = start
        while row < stop:
            shard = int(self.shard_index[row])
            end = row
            while end < stop and self.shard_index[end] == shard:
                end += 1
            yield from self._read_run(samples, shard, row, end)
            row = end

    def _read_run(self, samples: Sequence[Sample], shard: int, start: int, stop: int) -> Iterator[EncodedSample]:
        """Rows ``start..stop-1``, all in `shard`: one open, then a seek and a read per member."""
        handle, problem = self._open_unchanged(self.shards[shard])
        if handle is None:
            yield from self._errors(start, stop, problem)
            return
        with handle:
            for row in range(start, stop):
                size = int(self.sizes[row])
                try:
                    handle.seek(int(self.offsets[row]))
                    data = handle.read(size)
                except OSError as exc:
                    yield EncodedSample(row, None, f"tar member {samples[row].locator!r} unreadable: {exc.strerror}")
                    continue
                if len(data) != size:
                    yield EncodedSample(row, None, f"tar member {samples[row].locator!r} is truncated")
                elif not data:
                    yield EncodedSample(row, None, f"tar member {samples[row].locator!r} is empty")
                else:
                    yield EncodedSample(row, data, None)

    def _open_unchanged(self, stamp: ShardStamp) -> tuple[BinaryIO | None, str]:
        """The shard opened for reading, or None and why: it is gone, unreadable, or changed since
        the dataset was opened (then the remembered member offsets may be wrong)."""
        path = os.path.join(self.root, stamp.locator)
        try:
            stat = os.stat(path)
            if (stat.st_size, stat.st_mtime_ns) != (stamp.size, stamp.mtime_ns):
                return None, f"shard {stamp.locator!r} changed since the dataset was opened"
            return open(path, "rb"), ""
        except OSError as exc:
            return None, f"shard {stamp.locator!r} cannot be opened: {exc.strerror or exc}"

    @staticmethod
    def _errors(start: int, stop: int, reason: str) -> Iterator[EncodedSample]:
        for row in range(start, stop):
            yield EncodedSample(row, None, reason)

    def content_stamps(self, samples: Sequence[Sample]) -> Iterable[Any]:
        current = []
        for stamp in self.shards:
            try:
                stat = os.stat(os.path.join(self.root, stamp.locator))
                current.append([stat.st_size, stat.st_mtime_ns])
            except OSError:
                current.append("missing")
        for row in range(len(samples)):
            yield [int(self.sizes[row]), current[int(self.shard_index[row])]]

    def identity(self) -> Mapping[str, Any]:
        return {}


@dataclass(frozen=True)
class LoadedWds:
    """What a WebDataset root yields before it becomes a `Dataset`."""

    root: str
    task: str
    samples: tuple[Sample, ...]
    space: ClassSpace
    templates: list[str]
    storage: TarStorage


def open_wds(name: str, spec: str, path: str, options: Mapping[str, Any]) -> Dataset:
    """Register a CLIP_benchmark WebDataset root; every check happens here, before any image is read."""
    loaded = load_wds(path, str(options.get("split", DEFAULT_SPLIT)), captions_required=False)
    return Dataset(
        name=name,
        kind="wds",
        spec=spec,
        root=loaded.root,
        samples=loaded.samples,
        classnames=loaded.space.classnames,
        templates=loaded.templates,
        task=loaded.task,
        class_subset=loaded.space.class_subset,
        storage=loaded.storage,
    )


def load_wds(path: str, split: str, *, captions_required: bool) -> LoadedWds:
    """Scan a WebDataset root's split. With `captions_required` every sample needs a ``txt`` member."""
    root = existing_root(path)
    task = _dataset_task(root)
    if captions_required:
        task = "retrieval"
    classnames_path = os.path.join(root, CLASSNAMES_FILE)
    if os.path.exists(classnames_path):
        space = class_space(read_list_file(classnames_path, "class names"))
    elif task == "classification":
        raise DatasetError(f"webdataset root {root!r} has no {CLASSNAMES_FILE} (required for classification)")
    else:
        space = class_space([])
    shards = _shard_locators(root, split)
    stamps: list[ShardStamp] = []
    samples: list[Sample] = []
    shard_index: list[int] = []
    offsets: list[int] = []
    sizes: list[int] = []
    first_shard_of_key: dict[str, str] = {}
    for number, locator in enumerate(shards):
        shard_path = os.path.join(root, locator)
        stat = os.stat(shard_path)
        stamps.append(ShardStamp(locator, stat.st_size, stat.st_mtime_ns))
        for entry in _scan_shard(shard_path, locator, stat.st_size):
            if entry.key in first_shard_of_key:
                raise DatasetError(
                    f"shard {locator!r}: duplicate sample key {entry.key!r} (first in {first_shard_of_key[entry.key]!r})"
                )
            first_shard_of_key[entry.key] = locator
            image = entry.image_member(locator)
            samples.append(
                Sample(
                    row=len(samples),
                    key=entry.key,
                    label=entry.label(locator, space, required=task == "classification"),
                    locator=f"{locator}:{image.name}",
                    captions=entry.captions(locator, required=task == "retrieval"),
                )
            )
            shard_index.append(number)
            offsets.append(image.offset_data)
            sizes.append(image.size)
    if not samples:
        raise DatasetError(f"webdataset root {root!r} split {split!r} has no samples")
    storage = TarStorage(
        root=root,
        shards=tuple(stamps),
        shard_index=np.asarray(shard_index, dtype=np.int64),
        offsets=np.asarray(offsets, dtype=np.int64),
        sizes=np.asarray(sizes, dtype=np.int64),
    )
    return LoadedWds(root, task, tuple(samples), space, templates_in_folder(root, space.imagenet_like), storage)


def _dataset_task(root: str) -> str:
    type_path = os.path.join(root, DATASET_TYPE_FILE)
    if not os.path.exists(type_path):
        return "classification"
    dataset_type = " ".join(read_list_file(type_path, "dataset type")).strip().lower()
    if dataset_type in ("classification", "retrieval"):
        return dataset_type
    if dataset_type == "multilabel":
        raise DatasetError(f"{type_path!r}: multilabel webdatasets are not supported")
    raise DatasetError(f"{type_path!r}: unknown dataset type {dataset_type!r} (expected retrieval or multilabel)")


def _shard_locators(root: str, split: str) -> list[str]:
    if not split or "/" in split or split in (".", ".."):
        raise DatasetError(f"webdataset root {root!r}: invalid split name {split!r}")
    nshards_path = os.path.join(root, split, NSHARDS_FILE)
    if not os.path.exists(nshards_path):
        raise DatasetError(f"webdataset root {root!r} has no {split}/{NSHARDS_FILE} (is {split!r} the right split?)")
    text = " ".join(read_list_file(nshards_path, "shard count"))
    try:
        count = int(text)
    except ValueError:
        raise DatasetError(f"{nshards_path!r}: {text!r} is not a shard count") from None
    if count < 1:
        raise DatasetError(f"{nshards_path!r}: shard count must be >= 1, got {count}")
    locators = [f"{split}/{index}.tar" for index in range(count)]
    for locator in locators:
        if not os.path.isfile(os.path.join(root, locator)):
            raise DatasetError(f"webdataset root {root!r}: shard {locator!r} is missing ({NSHARDS_FILE} says {count})")
    return locators


@dataclass
class _TarSample:
    """The members of one sample inside a shard, by extension, with the text of small members read."""

    key: str
    members: dict[str, tarfile.TarInfo]
    texts: dict[str, str]

    def image_member(self, locator: str) -> tarfile.TarInfo:
        for extension in WDS_IMAGE_EXTENSIONS:
            if extension in self.members:
                return self.members[extension]
        raise DatasetError(
            f"shard {locator!r}: sample {self.key!r} has no image member ({', '.join(WDS_IMAGE_EXTENSIONS)})"
        )

    def label(self, locator: str, space: ClassSpace, *, required: bool) -> int | None:
        if "cls" not in self.texts:
            if required:
                raise DatasetError(f"shard {locator!r}: sample {self.key!r} has no cls member")
            return None
        text = self.texts["cls"].strip()
        try:
            value = int(text)
        except ValueError:
            raise DatasetError(f"shard {locator!r}: sample {self.key!r} has a non-integer cls {text!r}") from None
        if value == NO_LABEL:
            return None
        if not 0 <= value < len(space.ids):
            raise DatasetError(
                f"shard {locator!r}: sample {self.key!r} label {value} is outside the class list ({len(space.ids)} classes in {CLASSNAMES_FILE})"
            )
        return value

    def captions(self, locator: str, *, required: bool) -> tuple[str, ...]:
        if "txt" not in self.texts:
            if required:
                raise DatasetError(f"shard {locator!r}: sample {self.key!r} has no txt member (captions)")
            return ()
        captions = tuple(self.texts["txt"].splitlines())
        if required and not captions:
            raise DatasetError(f"shard {locator!r}: sample {self.key!r} has an empty txt member")
        return captions


_TEXT_MEMBERS = ("cls", "txt")


def _scan_shard(path: str, locator: str, file_size: int) -> Iterator[_TarSample]:
    """Group a shard's members into samples, checking names and bounds; reads only cls/txt data."""
    try:
        with tarfile.open(path, mode="r:") as archive:
            current: _TarSample | None = None
            for member in archive:
                if not member.isfile():
                    continue
                key, extension = _split_member_name(member.name, locator)
                if member.offset_data + member.size > file_size:
                    raise DatasetError(f"shard {locator!r}: member {member.name!r} extends past the end of the file")
                if current is None or key != current.key:
                    if current is not None:
                        yield current
                    current = _TarSample(key, {}, {})
                if extension in current.members:
                    raise DatasetError(f"shard {locator!r}: sample {key!r} has two {extension!r} members")
                current.members[extension] = member
                if extension in _TEXT_MEMBERS:
                    current.texts[extension] = _read_text(archive, member, locator)
            if current is not None:
                yield current
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DatasetError(f"shard {locator!r} cannot be read as a tar file ({exc})") from None


def _split_member_name(name: str, locator: str) -> tuple[str, str]:
    parts = name.split("/")
    if name.startswith("/") or ".." in parts:
        raise DatasetError(f"shard {locator!r}: member name {name!r} escapes the shard")
    match = _KEY_AND_EXTENSION.match(name)
    if match is None:
        raise DatasetError(f"shard {locator!r}: member name {name!r} has no key.extension form")
    return match.group(1), match.group(2).lower()


def _read_text(archive: tarfile.TarFile, member: tarfile.TarInfo, locator: str) -> str:
    handle = archive.extractfile(member)
    if handle is None:
        raise DatasetError(f"shard {locator!r}: member {member.name!r} cannot be read")
    try:
        return handle.read().decode("utf-8")
    except UnicodeDecodeError:
        raise DatasetError(f"shard {locator!r}: member {member.name!r} is not UTF-8 text") from None
