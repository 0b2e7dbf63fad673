"""Fingerprints: short, stable hashes that identify what an array was computed from.

An array is identified by three fingerprints: the dataset's (its ordered sample list), the model's
(weights hash, or architecture + tag + library version) and the extraction settings' (precision,
preprocessing, decode path, ...). Parameters of analyses are hashed the same way for ``results``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace, so equal objects give equal text."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str, allow_nan=True)


def hash_object(obj: Any) -> str:
    """sha256 hex digest of ``canonical_json(obj)``."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


FINGERPRINT_KINDS = ("dataset", "model", "settings")


#: Settings recorded with an extracted array that do not change what is written (not fingerprinted).
RUN_ONLY_SETTINGS = frozenset({"batch_size", "device", "workers", "cpu_threads"})


def describe_mismatch(
    array: str,
    stored: dict[str, str],
    given: dict[str, str],
    stored_settings: Mapping[str, Any] | None = None,
    given_settings: Mapping[str, Any] | None = None,
) -> str | None:
    """One line naming which fingerprints of ``array`` changed, or None when all agree. With the
    recorded settings of both sides, a settings change names the settings that differ."""
    changed = [k for k in FINGERPRINT_KINDS if stored.get(k) != given.get(k)]
    if not changed:
        return None
    settings_change = "the extraction settings changed (precision, preprocessing, decode path, ...)"
    if stored_settings is not None and given_settings is not None:
        keys = [k for k in sorted(set(stored_settings) | set(given_settings))
                if k not in RUN_ONLY_SETTINGS
                and canonical_json(stored_settings.get(k)) != canonical_json(given_settings.get(k))]  # fmt: skip
        if keys:
            settings_change = "the extraction settings changed (" + ", ".join(
                f"{k}: {stored_settings.get(k)!r} -> {given_settings.get(k)!r}" for k in keys[:3]) + ")"  # fmt: skip
    what = {
        "dataset": "the dataset changed (its sample list, files or classes differ)",
        "model": "the model changed (different weights, tag or library version)",
        "settings": settings_change,
    }
    details = "; ".join(f"{what[k]}: stored {stored.get(k, '?')[:12]}, now {given.get(k, '?')[:12]}" for k in changed)
    return (
        f"array {array} was written with other inputs and cannot be resumed: {details}. "
        f"Delete it with `embedstore rm` or write to another store"
    )
