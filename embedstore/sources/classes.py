"""Class spaces: the ids a dataset labels with, their display names and their place in a model's label space.

A class list may name classes directly (``cat``, ``dog``) or by ImageNet WNID (``n01440764``). When every
entry is an ImageNet-1k WNID, display names come from open_clip's ``IMAGENET_CLASSNAMES`` and the
dataset's `class_subset` is the entries' ImageNet indices (None when the entries are exactly the 1000
classes in index order), so ImageNet-R/A folders of 200 WNIDs slice 1000-way logits as imagenet-testbed's
``class_sublist`` does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from embedstore.errors import DatasetError
from embedstore.sources import imagenet

#: CLIP_benchmark's file name for a class list (next to a manifest, or at a WebDataset root).
CLASSNAMES_FILE = "classnames.txt"


@dataclass(frozen=True)
class ClassSpace:
    """`ids` are what labels, folders or manifest cells name; `classnames` what prompts say."""

    ids: list[str]
    classnames: list[str]
    class_subset: list[int] | None
    imagenet_like: bool

    def index_of(self) -> dict[str, int | None]:
        """Class id -> label index; None for an id listed more than once."""
        return index_by_name(self.ids)


def index_by_name(names: list[str]) -> dict[str, int | None]:
    """Name -> position; None for a name listed more than once (ImageNet's names hold two "missile"s)."""
    mapping: dict[str, int | None] = {}
    for index, name in enumerate(names):
        mapping[name] = None if name in mapping else index
    return mapping


def read_list_file(path: str | os.PathLike[str], what: str) -> list[str]:
    """Non-empty, stripped lines of a text file; DatasetError naming the file when it cannot be read."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DatasetError(f"{what} file {os.fspath(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{what} file {os.fspath(path)!r} cannot be read ({exc})") from None
    lines = [line.strip() for line in text.splitlines()]
    entries = [line for line in lines if line]
    if not entries:
        raise DatasetError(f"{what} file {os.fspath(path)!r} is empty")
    return entries


def class_space(entries: list[str]) -> ClassSpace:
    """The class space of an ordered class list; ImageNet WNIDs map to names and a class subset."""
    if imagenet.all_imagenet_wnids(entries):
        return imagenet_class_space([imagenet.imagenet_wnid_index()[wnid] for wnid in entries], ids=entries)
    return ClassSpace(ids=list(entries), classnames=list(entries), class_subset=None, imagenet_like=False)


def imagenet_class_space(indices: list[int], ids: list[str]) -> ClassSpace:
    """Classes given by ImageNet-1k indices, named with open_clip's ``IMAGENET_CLASSNAMES``."""
    names = imagenet.imagenet_classnames()
    subset = None if indices == list(range(imagenet.NUM_IMAGENET_CLASSES)) else list(indices)
    return ClassSpace(ids=list(ids), classnames=[names[i] for i in indices], class_subset=subset, imagenet_like=True)


def parse_subset(value: str, num_classes: int, source: str) -> list[int]:
    """Class subset from the ``subset=`` option: ``imagenet-r``, ``imagenet-a`` or a file of indices.

    The subset must give one model-label index per dataset class, in the dataset's class order.
    """
    if value in imagenet.NAMED_SUBSETS:
        indices = list(imagenet.named_subset_indices(value))
    else:
        lines = read_list_file(value, "class subset")
        try:
            indices = [int(line) for line in lines]
        except ValueError:
            bad = next(line for line in lines if not line.lstrip("-").isdigit())
            raise DatasetError(f"class subset file {value!r}: {bad!r} is not an integer index") from None
        if any(index < 0 for index in indices):
            raise DatasetError(f"class subset file {value!r}: indices must be >= 0")
    if len(indices) != num_classes:
        raise DatasetError(
            f"{source}: class subset {value!r} has {len(indices)} indices but the dataset has {num_classes} classes"
        )
    if len(set(indices)) != len(indices):
        raise DatasetError(f"{source}: class subset {value!r} repeats an index")
    return indices
