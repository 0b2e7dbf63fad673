"""Image files under a dataset root: containment checks, and reading their bytes as a `Storage`."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from embedstore.errors import DatasetError
from embedstore.sources.base import EncodedSample, Sample


def existing_root(path: str | os.PathLike[str], what: str = "dataset root") -> str:
    """Absolute path of an existing directory; DatasetError when it is missing or not a directory."""
    root = os.path.abspath(os.fspath(path))
    if not os.path.exists(root):
        raise DatasetError(f"{what} {root!r} does not exist")
    if not os.path.isdir(root):
        raise DatasetError(f"{what} {root!r} is not a directory")
    return root


@dataclass(frozen=True)
class RootGuard:
    """Turns paths given for a dataset into locators under its root, refusing those that leave it.

    Escaping means: after normalising ``..`` and resolving every symlink, the file is not inside the
    resolved root. The resolved root is computed once, so checking a million paths costs one
    ``realpath`` each.
    """

    root: str
    real_root: str

    @classmethod
    def of(cls, root: str) -> RootGuard:
        return cls(root, os.path.realpath(root))

    def locator(self, path: str) -> str | None:
        """`path` (relative to the root, or absolute) as a normalised ``/``-separated locator relative
        to the root, or None if it escapes. The locator keeps symlinks unresolved."""
        joined = os.path.normpath(os.path.join(self.root, path))
        relative = os.path.relpath(joined, self.root)
        if relative == os.pardir or relative.startswith(os.pardir + os.sep) or os.path.isabs(relative):
            return None
        if os.path.commonpath([self.real_root, os.path.realpath(joined)]) != self.real_root:
            return None
        return relative.replace(os.sep, "/")


@dataclass(frozen=True)
class FileStorage:
    """Samples whose locators are file paths relative to `root`."""

    root: str

    def path_of(self, sample: Sample) -> str:
        return os.path.join(self.root, *sample.locator.split("/"))

    def iter_encoded(self, samples: Sequence[Sample], start: int, stop: int) -> Iterator[EncodedSample]:
        for row in range(start, stop):
            yield self._read(samples[row])

    def _read(self, sample: Sample) -> EncodedSample:
        try:
            with open(self.path_of(sample), "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            return EncodedSample(sample.row, None, f"missing file {sample.locator!r}")
        except OSError as exc:
            return EncodedSample(sample.row, None, f"unreadable file {sample.locator!r}: {exc.strerror or exc}")
        if not data:
            return EncodedSample(sample.row, None, f"empty file {sample.locator!r}")
        return EncodedSample(sample.row, data, None)

    def content_stamps(self, samples: Sequence[Sample]) -> Iterable[Any]:
        for sample in samples:
            try:
                stat = os.stat(self.path_of(sample))
            except OSError:
                yield "missing"
            else:
                yield [stat.st_size, stat.st_mtime_ns]

    def identity(self) -> Mapping[str, Any]:
        return {}
