"""The dataset spec grammar: ``NAME=KIND:PATH[?key=value&...][#fragment]``.

Examples: ``imnet=imagefolder:/data/val?classes=/data/wnids.txt``, ``cifar=wds:/data/wds_cifar10#test``,
``sh=synthetic:shapes?n=2000&seed=0``. The fragment (after the last ``#``) is the WebDataset split.
A PATH that itself contains ``?`` or ``#`` cannot be written in spec text; pass such values as keyword
options to `open_dataset` instead.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from embedstore.errors import DatasetError
from embedstore.sources.base import KINDS

DATASET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # also a folder of the store
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class ParsedSpec:
    """A ``KIND:PATH?query#fragment`` text split into its parts (query values stay strings)."""

    kind: str
    path: str
    options: dict[str, str]
    fragment: str | None


def parse_dataset_spec(text: str) -> tuple[str, str]:
    """Split ``"NAME=KIND:PATH"`` into ``(name, "KIND:PATH")``; raise DatasetError when malformed.

    NAME must start with a letter or digit and contain only letters, digits, ``_``, ``.`` and ``-``
    (it names a folder of the store).
    """
    name, sep, spec = text.partition("=")
    if not sep:
        raise DatasetError(f"dataset spec {text!r}: expected NAME=KIND:PATH (e.g. imnet=imagefolder:/data/val)")
    name = name.strip()
    if not DATASET_NAME.fullmatch(name):
        raise DatasetError(f"dataset spec {text!r}: name {name!r} must match [A-Za-z0-9][A-Za-z0-9_.-]*")
    split_spec(spec)
    return name, spec


def split_spec(spec: str) -> ParsedSpec:
    """Parse ``KIND:PATH[?query][#fragment]``; raise DatasetError for an unknown kind or a bad query."""
    kind, sep, rest = spec.partition(":")
    if not sep or kind not in KINDS:
        raise DatasetError(f"dataset spec {spec!r}: expected KIND:PATH with KIND one of {', '.join(KINDS)}")
    fragment = None
    if "#" in rest:
        rest, fragment = rest.rsplit("#", 1)
        if not fragment:
            raise DatasetError(f"dataset spec {spec!r}: empty fragment after '#'")
    path, _, query = rest.partition("?")
    if not path:
        raise DatasetError(f"dataset spec {spec!r}: empty PATH after {kind}:")
    options: dict[str, str] = {}
    for item in query.split("&") if query else []:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise DatasetError(f"dataset spec {spec!r}: query item {item!r} is not key=value")
        if key in options:
            raise DatasetError(f"dataset spec {spec!r}: option {key!r} given twice")
        options[key] = value
    return ParsedSpec(kind=kind, path=path, options=options, fragment=fragment)


def merge_options(spec_options: Mapping[str, str], keyword_options: Mapping[str, Any], spec: str) -> dict[str, Any]:
    """Options from the spec query plus keyword options; the same key in both with different values is an error."""
    merged: dict[str, Any] = dict(spec_options)
    for key, value in keyword_options.items():
        if value is None:
            continue
        if key in merged and str(merged[key]) != str(value):
            raise DatasetError(
                f"dataset spec {spec!r}: option {key!r} is {merged[key]!r} in the spec but {value!r} as a keyword"
            )
        merged[key] = value
    return merged


def check_allowed(options: Mapping[str, Any], allowed: set[str], kind: str) -> None:
    """Raise DatasetError naming the first option a reader of `kind` does not accept."""
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise DatasetError(
            f"option {unknown[0]!r} is not accepted by {kind} datasets (accepted: {', '.join(sorted(allowed))})"
        )


def int_option(options: Mapping[str, Any], key: str, default: int, *, minimum: int, maximum: int | None = None) -> int:
    """Read an integer option in [minimum, maximum]; raise DatasetError naming the option otherwise."""
    raw = options.get(key, default)
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise DatasetError(f"option {key}={raw!r} is not an integer") from None
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise DatasetError(f"option {key}={value} must be {bound}")
    return value


def bool_option(options: Mapping[str, Any], key: str, default: bool) -> bool:
    """Read a boolean option (true/false, yes/no, 1/0, on/off)."""
    raw = options.get(key, default)
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise DatasetError(f"option {key}={raw!r} is not a boolean (true/false)")
