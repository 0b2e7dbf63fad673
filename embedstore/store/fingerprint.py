"""Fingerprints: short, stable hashes that identify what an array was computed from.

An array is identified by three fingerprints: the dataset's (its ordered sample list), the model's
(weights hash, or architecture + tag + library version) and the extraction settings' (precision,
preprocessing, decode path, ...). Parameters of analyses are hashed the same way for ``results``.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace, so equal objects give equal text."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str, allow_nan=True)


def hash_object(obj: Any) -> str:
    """sha256 hex digest of ``canonical_json(obj)``."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


FINGERPRINT_KINDS = ("dataset", "model", "settings")


def describe_mismatch(array: str, stored: dict[str, str], given: dict[str, str]) -> str | None:
    """One line naming which fingerprints of ``array`` changed, or None when all agree."""
    changed = [k for k in FINGERPRINT_KINDS if stored.get(k) != given.get(k)]
    if not changed:
        return None
    what = {
        "dataset": "the dataset changed (its sample list, files or classes differ)",
        "model": "the model changed (different weights, tag or library version)",
        "settings": "the extraction settings changed (precision, preprocessing, decode path, ...)",
    }
    details = "; ".join(f"{what[k]}: stored {stored.get(k, '?')[:12]}, now {given.get(k, '?')[:12]}" for k in changed)
    return (
        f"array {array} was written with other inputs and cannot be resumed: {details}. "
        f"Delete it with `embedstore rm` or write to another store"
    )
