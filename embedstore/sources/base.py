"""The dataset model every reader produces: samples (rows), encoded bytes, and a content fingerprint.

A `Dataset` is metadata (name, kind, class names, templates, class subset) plus an ordered tuple of
`Sample`s plus a `Storage` that knows how to fetch each sample's encoded bytes. Row ``i`` of every
array the store holds for a dataset is ``dataset.samples[i]``. Images are never decoded here: the
extractor decodes (once, for every model) what `Dataset.iter_encoded` yields.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

KINDS = ("imagefolder", "manifest", "wds", "captions", "synthetic")
TASKS = ("classification", "retrieval")


@dataclass(frozen=True, slots=True)
class Sample:
    """One row of a dataset.

    `label` indexes `Dataset.classnames`; it is None for caption-only samples and for unlabelled
    (out-of-distribution) images. `locator` says where the bytes are: a path relative to the dataset
    root (``"cls/img1.jpg"``), ``"<split>/<i>.tar:<member>"`` for WebDataset shards, or
    ``"synthetic:<row>"``. `annotations` holds further per-sample labels (manifest columns,
    ImageNet-X factors, shape/texture classes of cue-conflict images, ...), all as strings.
    """

    row: int
    key: str
    label: int | None
    locator: str
    captions: tuple[str, ...] = ()
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class EncodedSample:
    """The encoded (still compressed) image bytes of one row, or the reason they could not be read."""

    row: int
    data: bytes | None
    error: str | None


class Storage(Protocol):
    """Where a dataset's bytes live. Implementations are stateless, picklable and thread-safe."""

    def iter_encoded(self, samples: Sequence[Sample], start: int, stop: int) -> Iterator[EncodedSample]:
        """Yield rows ``start..stop-1`` in order; a per-sample failure yields an error, never raises."""
        ...

    def content_stamps(self, samples: Sequence[Sample]) -> Iterable[Any]:
        """One JSON-serialisable stamp per sample that changes when its bytes on disk change."""
        ...

    def identity(self) -> Mapping[str, Any]:
        """Storage-wide parameters that determine the bytes (generator parameters); {} for files."""
        ...


@dataclass(frozen=True, eq=False)
class Dataset:
    """A registered dataset: ordered samples, their class space and how to read their bytes.

    `spec` is the ``"KIND:PATH"`` text the dataset was opened from (without ``NAME=``); `root` the
    absolute dataset root (None for synthetic data). `class_subset` lists, for each of `classnames`,
    its index in the label space of the models the dataset is evaluated with (ImageNet-R/A: 200 of
    ImageNet's 1000 indices, imagenet-testbed's ``class_sublist``), or is None when the dataset's
    classes are the models' classes.
    """

    name: str
    kind: str
    spec: str
    root: str | None
    samples: tuple[Sample, ...]
    classnames: list[str]
    templates: list[str]
    task: str
    class_subset: list[int] | None
    storage: Storage = field(repr=False)

    def __len__(self) -> int:
        return len(self.samples)

    def iter_encoded(self, start: int, stop: int) -> Iterator[EncodedSample]:
        """Encoded bytes of rows ``start..stop-1`` in row order; each underlying file is opened once.

        A sample that cannot be read (file gone, unreadable, truncated tar member, ...) yields an
        `EncodedSample` with ``data=None`` and the reason in ``error``; this never raises for it.
        """
        if not 0 <= start <= stop <= len(self.samples):
            raise IndexError(f"row range {start}..{stop} is outside 0..{len(self.samples)} of dataset {self.name!r}")
        return self.storage.iter_encoded(self.samples, start, stop)

    def fingerprint(self) -> str:
        """sha256 hex digest identifying the dataset's content, recomputed from disk on every call.

        Hashed, in order: the storage identity (generator parameters for synthetic data), the class
        names, the class subset, then per sample its key, label, locator, captions and content stamp
        (byte size and mtime_ns for a file; member size and the shard's size and mtime_ns for a tar
        member). Annotations, templates, the dataset name and the root path are not part of it: they
        do not change any cached array, and a moved dataset keeps its fingerprint.
        """
        digest = hashlib.sha256()
        header = {
            "identity": dict(self.storage.identity()),
            "classnames": list(self.classnames),
            "class_subset": None if self.class_subset is None else list(self.class_subset),
        }
        digest.update(_canonical_json(header))
        for sample, stamp in zip(self.samples, self.storage.content_stamps(self.samples), strict=True):
            record = [sample.key, sample.label, sample.locator, list(sample.captions), stamp]
            digest.update(_canonical_json(record))
        return digest.hexdigest()


def _canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8") + b"\n"
