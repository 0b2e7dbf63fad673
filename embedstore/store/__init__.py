"""The store: a DuckDB catalog and Zarr v3 arrays in one directory (see ``store.py``)."""

from embedstore.store.arrays import StoreArray
from embedstore.store.fingerprint import canonical_json, hash_object
from embedstore.store.store import DEFAULT_PROMPT_SET, ArrayInfo, ResultRow, Store, stored_model_id

__all__ = [
    "Store",
    "StoreArray",
    "ArrayInfo",
    "ResultRow",
    "DEFAULT_PROMPT_SET",
    "canonical_json",
    "hash_object",
    "stored_model_id",
]
