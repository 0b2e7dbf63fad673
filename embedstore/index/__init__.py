"""Nearest-neighbour search over cached embeddings: exact (flat), IVF and HNSW indexes through FAISS
(GPU where present), a torch GPU and a numpy fallback for exact search, and persistence with a
fingerprinted JSON sidecar. faiss and torch are imported only when a backend needs them."""

from embedstore.index.backends import BACKENDS, DEVICES, BackendChoice, select_backend
from embedstore.index.nn_index import NNIndex, build_index, build_index_from_spec, load_index
from embedstore.index.sidecar import array_fingerprint
from embedstore.index.spec import INDEX_KINDS, METRICS, IndexSpec

__all__ = [
    "BACKENDS",
    "DEVICES",
    "INDEX_KINDS",
    "METRICS",
    "BackendChoice",
    "IndexSpec",
    "NNIndex",
    "array_fingerprint",
    "build_index",
    "build_index_from_spec",
    "load_index",
    "select_backend",
]
