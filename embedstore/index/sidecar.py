"""The JSON sidecar written beside a saved index, and the fingerprint of the array it was built from.

An index saved at ``PATH`` is two files: ``PATH`` (the payload: a FAISS index file, or an ``.npy``
array of the prepared rows for the numpy/torch backends) and ``PATH.json``::

    {"format": 1, "payload": "faiss", "dim": 512, "n": 100000,
     "spec": {"kind": "hnsw", "metric": "ip", "normalize": true, "hnsw_m": 32, ...},
     "source_fingerprint": "sha256:…", "built_with": "faiss-cpu", "versions": {...}}

The sidecar is written last, each file atomically, so a sidecar only exists beside a whole payload.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embedstore.errors import AnalysisError, StoreError
from embedstore.index.spec import IndexSpec

SIDECAR_SUFFIX = ".json"
SIDECAR_FORMAT = 1
PAYLOADS = ("faiss", "npy")
_FINGERPRINT_ROWS = 65536


def array_fingerprint(matrix: np.ndarray) -> str:
    """``"sha256:<hex>"`` of the array's dtype, shape and row-major bytes, as given (before any cast
    or normalisation), hashed a block of rows at a time."""
    digest = hashlib.sha256(f"{matrix.dtype.str}|{tuple(matrix.shape)}|".encode())
    for start in range(0, matrix.shape[0], _FINGERPRINT_ROWS):
        digest.update(np.ascontiguousarray(matrix[start : start + _FINGERPRINT_ROWS]).data)
    return f"sha256:{digest.hexdigest()}"


def sidecar_path(index_path: Path) -> Path:
    """``PATH.json`` for an index saved at ``PATH``."""
    return index_path.with_name(index_path.name + SIDECAR_SUFFIX)


@dataclass(frozen=True)
class IndexSidecar:
    """What a saved index is: payload format, resolved spec, size, source fingerprint, builder."""

    payload: str
    spec: IndexSpec
    dim: int
    n: int
    source_fingerprint: str
    built_with: str
    versions: dict[str, str]

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": SIDECAR_FORMAT,
                "payload": self.payload,
                "dim": self.dim,
                "n": self.n,
                "spec": self.spec.to_dict(),
                "source_fingerprint": self.source_fingerprint,
                "built_with": self.built_with,
                "versions": self.versions,
            },
            indent=2,
            sort_keys=True,
        )

    @classmethod
    def read(cls, path: Path) -> IndexSidecar:
        """Parse the sidecar at ``path``; a missing or malformed one raises :class:`StoreError`."""
        if not path.is_file():
            raise StoreError(f"index sidecar {path} not found (an index is saved as PATH and PATH.json)")
        try:
            fields: dict[str, Any] = json.loads(path.read_text())
            if fields["format"] != SIDECAR_FORMAT:
                raise StoreError(f"index sidecar {path} has format {fields['format']}, expected {SIDECAR_FORMAT}")
            if fields["payload"] not in PAYLOADS:
                raise StoreError(f"index sidecar {path} names unknown payload {fields['payload']!r}")
            return cls(
                payload=fields["payload"],
                spec=IndexSpec.from_dict(fields["spec"]),
                dim=int(fields["dim"]),
                n=int(fields["n"]),
                source_fingerprint=str(fields["source_fingerprint"]),
                built_with=str(fields["built_with"]),
                versions=dict(fields["versions"]),
            )
        except StoreError:
            raise
        except AnalysisError as exc:  # a spec field out of range or unknown
            raise StoreError(f"index sidecar {path} has an invalid spec: {exc}") from exc
        except (ValueError, KeyError, TypeError) as exc:  # JSONDecodeError is a ValueError
            raise StoreError(f"index sidecar {path} is malformed: {exc!r}") from exc


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write`` on a temporary name beside ``path``, then rename it onto ``path``."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
