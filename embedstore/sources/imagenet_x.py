"""ImageNet-X factor annotations (facebookresearch/imagenetx, Idrissi et al. 2022) joined onto samples.

The annotations are licensed CC-BY-NC 4.0 (non-commercial); embedstore ships none of them. They come
either from the ``imagenet-x`` package (``imagenet_x=package``; installed separately, imported only
when asked for) or from a folder holding the package's annotation files (``imagenet_x=DIR``):
``imagenet_x_{split}_{top,multi}_factor.jsonl`` (one JSON object per image: ``file_name``, ``class``,
one 0/1 key per factor, ...) and ``prototypical_paths.csv`` (column ``file_name``).

Samples are joined by file name: the base name of their locator (``ILSVRC2012_val_00004487.JPEG``).
Joined samples get the annotations ``top`` (the single most salient factor of the "top" file) and
``multi`` (every factor of the "multi" file, comma-joined in `FACTORS` order; may be empty). As in
imagenetx's ``load_annotations``, the 3,000 prototype images are left unannotated unless
``imagenet_x_prototypes=keep``, which annotates them and flags them ``prototype=1``, so that ``eval
factors`` can still leave them out (its default) or keep them (``--keep-prototypes``).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from embedstore.analysis.factors import IMAGENET_X_FACTORS
from embedstore.errors import DatasetError
from embedstore.sources.base import Sample

#: The 16 ImageNet-X factors in imagenetx's order (``imagenet_x/utils.py FACTORS``), defined once.
FACTORS = IMAGENET_X_FACTORS
SPLITS = ("val", "train")
PROTOTYPES_FILE = "prototypical_paths.csv"


def annotation_folder(source: str) -> Path:
    """The folder of the annotation files: the installed package's (``package``) or a given folder."""
    if source != "package":
        folder = Path(source)
        if not folder.is_dir():
            raise DatasetError(f"ImageNet-X annotation folder {source!r} does not exist")
        return folder
    try:
        import imagenet_x.annotations
    except ImportError:
        raise DatasetError(
            "imagenet_x=package needs the 'imagenet-x' package (pip install imagenet-x), or pass imagenet_x=DIR"
        ) from None
    from importlib import resources

    return Path(str(resources.files(imagenet_x.annotations)))


def load_factor_annotations(
    source: str, split: str = "val", keep_prototypes: bool = False
) -> dict[str, dict[str, str]]:
    """File name -> ``{"top": factor, "multi": "f1,f2,..."}`` for every annotated image of a split; the
    prototype images are left out, or kept with ``"prototype": "1"`` when ``keep_prototypes`` (without a
    prototype list in the folder, nothing is flagged)."""
    if split not in SPLITS:
        raise DatasetError(f"ImageNet-X split {split!r} is not one of {', '.join(SPLITS)}")
    folder = annotation_folder(source)
    top = _read_factor_file(folder / f"imagenet_x_{split}_top_factor.jsonl")
    multi = _read_factor_file(folder / f"imagenet_x_{split}_multi_factor.jsonl")
    listed = folder / PROTOTYPES_FILE
    prototypes = _read_prototypes(listed) if listed.is_file() or not keep_prototypes else set()  # keep: optional
    annotations: dict[str, dict[str, str]] = {}
    for file_name in top.keys() | multi.keys():
        if file_name in prototypes and not keep_prototypes:
            continue
        entry = {"prototype": "1"} if file_name in prototypes else {}
        if file_name in top:
            if len(top[file_name]) != 1:
                raise DatasetError(
                    f"ImageNet-X top-factor file: {file_name!r} has {len(top[file_name])} factors, expected 1"
                )
            entry["top"] = top[file_name][0]
        if file_name in multi:
            entry["multi"] = ",".join(multi[file_name])
        annotations[file_name] = entry
    return annotations


def attach_factor_annotations(
    samples: Sequence[Sample], annotations: dict[str, dict[str, str]], source: str
) -> tuple[Sample, ...]:
    """Samples with ImageNet-X ``top``/``multi`` annotations joined by the base name of their locator."""
    joined = []
    matched = 0
    for sample in samples:
        file_name = os.path.basename(sample.locator.rsplit(":", 1)[-1])
        entry = annotations.get(file_name)
        if entry is None:
            joined.append(sample)
            continue
        clash = set(entry) & set(sample.annotations)
        if clash:
            raise DatasetError(
                f"sample {sample.key!r} already has an annotation {sorted(clash)[0]!r}; cannot add ImageNet-X factors"
            )
        matched += 1
        joined.append(replace(sample, annotations={**sample.annotations, **entry}))
    if matched == 0:
        raise DatasetError(
            f"no sample file name matches an ImageNet-X annotation from {source!r} (join by file name, e.g. ILSVRC2012_val_00000001.JPEG)"
        )
    return tuple(joined)


def factor_matrix(annotations: Iterable[Mapping[str, str]], which: str = "multi") -> tuple[np.ndarray, np.ndarray]:
    """Per-sample factor indicators from ``top``/``multi`` annotations.

    `annotations` are the samples' annotation mappings in row order. Returns ``(factors, annotated)``: a bool ``[N, 16]`` matrix in `FACTORS` order, and a bool ``[N]``
    mask of samples that carry the annotation at all (unannotated rows are all False in `factors`).
    """
    if which not in ("top", "multi"):
        raise ValueError(f"which must be 'top' or 'multi', got {which!r}")
    column = {factor: index for index, factor in enumerate(FACTORS)}
    rows = []
    annotated = []
    for entry in annotations:
        value = entry.get(which)
        flags = np.zeros(len(FACTORS), dtype=bool)
        if value is not None:
            for factor in filter(None, str(value).split(",")):
                if factor not in column:
                    raise DatasetError(f"unknown ImageNet-X factor {factor!r} in a {which!r} annotation")
                flags[column[factor]] = True
        rows.append(flags)
        annotated.append(value is not None)
    matrix = np.stack(rows) if rows else np.zeros((0, len(FACTORS)), dtype=bool)
    return matrix, np.asarray(annotated, dtype=bool)


def _read_factor_file(path: Path) -> dict[str, list[str]]:
    """File name -> active factors (in FACTORS order) of one imagenetx jsonl file."""
    if not path.is_file():
        raise DatasetError(f"ImageNet-X annotation file {str(path)!r} does not exist")
    factors_of: dict[str, list[str]] = {}
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                file_name = record["file_name"]
                active = [factor for factor in FACTORS if int(record.get(factor, 0)) == 1]
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise DatasetError(
                    f"ImageNet-X annotation file {str(path)!r} line {line_number}: malformed record ({exc})"
                ) from None
            factors_of[file_name] = active
    return factors_of


def _read_prototypes(path: Path) -> set[str]:
    if not path.is_file():
        raise DatasetError(
            f"ImageNet-X prototype list {str(path)!r} does not exist (pass imagenet_x_prototypes=keep to skip it)"
        )
    with path.open(encoding="utf-8", newline="") as handle:
        return {row["file_name"] for row in csv.DictReader(handle)}
