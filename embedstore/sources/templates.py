"""Zero-shot prompt templates in CLIP_benchmark's form: strings with a ``{c}`` class-name placeholder.

The ``templates=`` option of every dataset takes ``openai`` (open_clip's 80 OpenAI ImageNet
templates), ``simple`` (their 7-template subset), ``default`` (`GENERIC_TEMPLATES`) or a file with one
template per line. Without the option, ImageNet-like datasets (WNID classes or an ImageNet class
subset) get ``openai``, WebDataset roots their ``zeroshot_classification_templates.txt``, others
`GENERIC_TEMPLATES`.
"""

from __future__ import annotations

import os

from embedstore.errors import AnalysisError, DatasetError
from embedstore.sources import imagenet
from embedstore.sources.classes import read_list_file

#: CLIP_benchmark's file name for a dataset's templates (next to a manifest, or at a WebDataset root).
TEMPLATES_FILE = "zeroshot_classification_templates.txt"

#: Prompts for data that is not ImageNet-like: MCM's "a photo of a {c}" first, then a few of OpenAI's
#: generic ImageNet templates that carry no ImageNet-specific wording.
GENERIC_TEMPLATES = (
    "a photo of a {c}.",
    "a bad photo of a {c}.",
    "a photo of the small {c}.",
    "a photo of the large {c}.",
    "a close-up photo of a {c}.",
    "a bright photo of a {c}.",
    "a dark photo of a {c}.",
    "a drawing of a {c}.",
)


def named_templates(name: str) -> tuple[str, ...] | None:
    """Built-in template set by name (``openai``, ``simple``, ``default``); None for any other name."""
    if name == "openai":
        return imagenet.openai_imagenet_templates()
    if name == "simple":
        return imagenet.simple_imagenet_templates()
    if name == "default":
        return GENERIC_TEMPLATES
    return None


def resolve_templates(value: str) -> list[str]:
    """Templates from the ``templates=`` option: a built-in name or a file with one template per line."""
    named = named_templates(value)
    templates = list(named) if named is not None else read_list_file(value, "templates")
    check_templates(templates, value)
    return templates


def check_templates(templates: list[str], source: str) -> None:
    """Every template must format with exactly the ``{c}`` field (CLIP_benchmark formats with ``c=``):
    `embedstore.analysis.prompts.validate_templates`, its error naming ``source``."""
    from embedstore.analysis.prompts import validate_templates

    try:
        validate_templates(templates)
    except AnalysisError as exc:
        raise DatasetError(f"templates {source!r}: {exc}") from None


def default_templates(imagenet_like: bool) -> list[str]:
    """The OpenAI ImageNet templates for ImageNet-like classes, else `GENERIC_TEMPLATES`."""
    return list(imagenet.openai_imagenet_templates() if imagenet_like else GENERIC_TEMPLATES)


def templates_in_folder(folder: str, imagenet_like: bool) -> list[str]:
    """Templates from `TEMPLATES_FILE` in `folder` when it exists, else `default_templates`."""
    path = os.path.join(folder, TEMPLATES_FILE)
    if not os.path.exists(path):
        return default_templates(imagenet_like)
    templates = read_list_file(path, "templates")
    check_templates(templates, path)
    return templates
