"""`open_dataset`: one entry point from spec text to a validated `Dataset`.

Options come from the spec query (``?key=value&...``) and from keyword arguments (the same key in
both must agree). Each kind accepts its own options (see its module); every kind accepts:

- ``templates=openai|simple|default|FILE``: zero-shot templates (`templates.resolve_templates`);
- ``names=FILE``: display class names, one per class in label order (the count must match);
- ``subset=imagenet-r|imagenet-a|FILE``: the model-label index of each class (`classes.parse_subset`);
- ``imagenet_x=package|DIR`` with ``imagenet_x_split=val|train`` and ``imagenet_x_prototypes=drop|keep``:
  join ImageNet-X factor annotations by file name (`imagenet_x`).

All validation happens before `open_dataset` returns; no image is decoded.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from embedstore.errors import DatasetError
from embedstore.sources import captions, imagefolder, manifest, synthetic, wds
from embedstore.sources.base import Dataset, Sample
from embedstore.sources.classes import parse_subset, read_list_file
from embedstore.sources.imagenet_x import attach_factor_annotations, load_factor_annotations
from embedstore.sources.spec import check_allowed, merge_options, split_spec
from embedstore.sources.templates import resolve_templates

Opener = Callable[[str, str, str, Mapping[str, Any]], Dataset]

#: kind -> (opener, the options it accepts besides the common ones)
OPENERS: dict[str, tuple[Opener, set[str]]] = {
    "imagefolder": (imagefolder.open_imagefolder, imagefolder.OPTIONS),
    "manifest": (manifest.open_manifest, manifest.OPTIONS),
    "wds": (wds.open_wds, wds.OPTIONS),
    "captions": (captions.open_captions, captions.OPTIONS),
    "synthetic": (synthetic.open_synthetic, synthetic.OPTIONS),
}
COMMON_OPTIONS = {"templates", "names", "subset", "imagenet_x", "imagenet_x_split", "imagenet_x_prototypes"}
#: Kinds whose spec may carry a ``#split`` fragment.
SPLIT_KINDS = {"wds", "captions"}


def open_dataset(name: str, spec: str, **options: Any) -> Dataset:
    """Open and validate the dataset ``NAME=spec``; DatasetError (prefixed with the name) on bad input."""
    try:
        return _open(name, spec, options)
    except DatasetError as exc:
        raise DatasetError(f"dataset {name!r}: {exc}") from None


def _open(name: str, spec: str, keyword_options: Mapping[str, Any]) -> Dataset:
    parsed = split_spec(spec)
    options = merge_options(parsed.options, keyword_options, spec)
    if parsed.fragment is not None:
        if parsed.kind not in SPLIT_KINDS:
            raise DatasetError(
                f"dataset spec {spec!r}: a '#split' fragment applies only to {' and '.join(sorted(SPLIT_KINDS))} datasets"
            )
        options = merge_options({"split": parsed.fragment}, options, spec)
    opener, accepted = OPENERS[parsed.kind]
    check_allowed(options, accepted | COMMON_OPTIONS, parsed.kind)
    kind_options = {key: value for key, value in options.items() if key not in COMMON_OPTIONS}
    dataset = opener(name, spec, parsed.path, kind_options)
    return _apply_common_options(dataset, options)


def _apply_common_options(dataset: Dataset, options: Mapping[str, Any]) -> Dataset:
    changes: dict[str, Any] = {}
    if "templates" in options:
        changes["templates"] = resolve_templates(str(options["templates"]))
    if "names" in options:
        names = read_list_file(options["names"], "class names")
        if len(names) != len(dataset.classnames):
            raise DatasetError(
                f"class names file {str(options['names'])!r} has {len(names)} names but the dataset has {len(dataset.classnames)} classes"
            )
        changes["classnames"] = names
    if "subset" in options:
        changes["class_subset"] = parse_subset(str(options["subset"]), len(dataset.classnames), "subset option")
    if "imagenet_x" in options:
        changes["samples"] = _with_imagenet_x(dataset, options)
    elif "imagenet_x_split" in options or "imagenet_x_prototypes" in options:
        raise DatasetError("imagenet_x_split / imagenet_x_prototypes need imagenet_x=package|DIR")
    return replace(dataset, **changes) if changes else dataset


def _with_imagenet_x(dataset: Dataset, options: Mapping[str, Any]) -> tuple[Sample, ...]:
    source = str(options["imagenet_x"])
    prototypes = str(options.get("imagenet_x_prototypes", "drop"))
    if prototypes not in ("drop", "keep"):
        raise DatasetError(f"option imagenet_x_prototypes={prototypes!r} must be drop or keep")
    annotations = load_factor_annotations(
        source, str(options.get("imagenet_x_split", "val")), keep_prototypes=prototypes == "keep"
    )
    return attach_factor_annotations(dataset.samples, annotations, source)
