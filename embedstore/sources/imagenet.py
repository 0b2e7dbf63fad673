"""ImageNet-1k label space: WNIDs in index order, human class names, prompt templates, named subsets.

The lists ship as package data (``embedstore/sources/data/``) so that opening a dataset does not
import open_clip (several seconds). They were generated offline from installed packages and a test
checks them against their sources:

- ``imagenet_wnids.txt``: timm ``timm/data/_info/imagenet_synsets.txt`` (the 1000 WNIDs, sorted, which
  is the ImageNet-1k index order).
- ``imagenet_r_wnids.txt`` / ``imagenet_a_wnids.txt``: timm ``imagenet_r_synsets.txt`` /
  ``imagenet_a_synsets.txt`` (the 200 classes of ImageNet-R and of ImageNet-A).
- ``imagenet_classnames.txt``: open_clip ``IMAGENET_CLASSNAMES`` (OpenAI's curated names).
- ``openai_imagenet_templates.txt`` / ``simple_imagenet_templates.txt``: open_clip
  ``OPENAI_IMAGENET_TEMPLATES`` (80) and ``SIMPLE_IMAGENET_TEMPLATES`` (7), each lambda applied to
  ``"{c}"``, i.e. in CLIP_benchmark's ``{c}`` placeholder form.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

NUM_IMAGENET_CLASSES = 1000
_WNID = re.compile(r"n\d{8}")

#: Named class subsets accepted by the ``subset=`` option, mapped to their WNID list file.
NAMED_SUBSETS = {"imagenet-r": "imagenet_r_wnids.txt", "imagenet-a": "imagenet_a_wnids.txt"}


def _data_lines(filename: str) -> tuple[str, ...]:
    text = resources.files("embedstore.sources").joinpath("data", filename).read_text(encoding="utf-8")
    return tuple(line for line in (raw.strip() for raw in text.splitlines()) if line)


@cache
def imagenet_wnids() -> tuple[str, ...]:
    """The 1000 ImageNet-1k WNIDs in class-index order."""
    return _data_lines("imagenet_wnids.txt")


@cache
def imagenet_wnid_index() -> dict[str, int]:
    """WNID -> ImageNet-1k class index."""
    return {wnid: index for index, wnid in enumerate(imagenet_wnids())}


@cache
def imagenet_classnames() -> tuple[str, ...]:
    """open_clip's ``IMAGENET_CLASSNAMES``: 1000 human-readable names in class-index order."""
    return _data_lines("imagenet_classnames.txt")


@cache
def openai_imagenet_templates() -> tuple[str, ...]:
    """The 80 OpenAI ImageNet prompt templates with a ``{c}`` placeholder."""
    return _data_lines("openai_imagenet_templates.txt")


@cache
def simple_imagenet_templates() -> tuple[str, ...]:
    """The 7-template subset of the OpenAI ImageNet templates (open_clip ``SIMPLE_IMAGENET_TEMPLATES``)."""
    return _data_lines("simple_imagenet_templates.txt")


@cache
def named_subset_indices(name: str) -> tuple[int, ...]:
    """ImageNet-1k indices of a named subset (``imagenet-r``, ``imagenet-a``), ascending."""
    index = imagenet_wnid_index()
    return tuple(sorted(index[wnid] for wnid in _data_lines(NAMED_SUBSETS[name])))


def is_wnid(text: str) -> bool:
    """Whether `text` looks like a WordNet id (``n`` followed by 8 digits)."""
    return _WNID.fullmatch(text) is not None


def all_imagenet_wnids(entries: list[str]) -> bool:
    """Whether every entry is one of the 1000 ImageNet-1k WNIDs (and there is at least one)."""
    index = imagenet_wnid_index()
    return bool(entries) and all(entry in index for entry in entries)
