"""Which implementation runs a search: the one place that probes for faiss, FAISS GPUs and CUDA.

Preference order with ``device="auto"`` (``"cuda"`` keeps the first two, ``"cpu"`` the last two):

1. ``faiss-gpu``  -- faiss is installed and ``faiss.get_num_gpus() > 0``; flat and ivf (FAISS has no
   GPU HNSW).
2. ``torch-cuda`` -- exact (flat) search as a torch matrix product + ``topk`` on the GPU, when
   ``torch.cuda.is_available()``.
3. ``faiss-cpu``  -- faiss is installed; every kind.
4. ``numpy``      -- exact (flat) search with BLAS + ``argpartition``; needs nothing beyond numpy.

The choice and the reason each better backend was passed over are returned together, so an index
always records what ran (``NNIndex.backend`` / ``NNIndex.backend_note``).
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from types import ModuleType

from embedstore.errors import AnalysisError

BACKENDS = ("faiss-gpu", "torch-cuda", "faiss-cpu", "numpy")
DEVICES = ("auto", "cpu", "cuda")
_DEVICE_BACKENDS = {
    "auto": BACKENDS,
    "cuda": ("faiss-gpu", "torch-cuda"),
    "cpu": ("faiss-cpu", "numpy"),
}
_FLAT_ONLY = ("torch-cuda", "numpy")


@dataclass(frozen=True)
class BackendChoice:
    """The backend that will run, and why each preferred one was not used (None when none was passed
    over, i.e. the first preference ran or the caller named the backend)."""

    name: str
    note: str | None = None


@functools.cache
def import_faiss() -> ModuleType | None:
    """The ``faiss`` module, or None when neither faiss-cpu nor faiss-gpu is installed."""
    try:
        return importlib.import_module("faiss")
    except ImportError:
        return None


@functools.cache
def faiss_gpu_count() -> int:
    """GPUs faiss can use (0 for faiss-cpu builds or when faiss is missing)."""
    faiss = import_faiss()
    if faiss is None or not hasattr(faiss, "get_num_gpus"):
        return 0
    return int(faiss.get_num_gpus())


@functools.cache
def torch_cuda_available() -> bool:
    """Whether torch is installed and sees a CUDA device."""
    try:
        torch = importlib.import_module("torch")
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def unusable_reason(backend: str, kind: str) -> str | None:
    """Why ``backend`` cannot build a ``kind`` index on this machine, or None when it can."""
    if backend in _FLAT_ONLY and kind != "flat":
        return f"{backend} does exact (flat) search only"
    if backend in ("faiss-gpu", "faiss-cpu") and import_faiss() is None:
        return "faiss is not installed (pip install faiss-cpu, or faiss-gpu)"
    if backend == "faiss-gpu":
        if kind == "hnsw":
            return "FAISS has no GPU HNSW index"
        if faiss_gpu_count() == 0:
            return "faiss sees no GPU (faiss.get_num_gpus() == 0)"
    if backend == "torch-cuda" and not torch_cuda_available():
        return "torch.cuda is not available"
    return None


def select_backend(kind: str, device: str = "auto", backend: str = "auto") -> BackendChoice:
    """The backend for a ``kind`` index on ``device``; ``backend`` other than "auto" forces one.

    A forced backend that cannot run, or a device none of whose backends can run, raises
    :class:`AnalysisError` listing every reason.
    """
    if device not in DEVICES:
        raise AnalysisError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if backend != "auto":
        if backend not in BACKENDS:
            raise AnalysisError(f"backend must be 'auto' or one of {', '.join(BACKENDS)}, got {backend!r}")
        if backend not in _DEVICE_BACKENDS[device]:
            raise AnalysisError(f"backend {backend!r} does not run on device {device!r}")
        reason = unusable_reason(backend, kind)
        if reason is not None:
            raise AnalysisError(f"backend {backend!r} cannot build a {kind!r} index: {reason}")
        return BackendChoice(backend)
    passed_over: list[str] = []
    for candidate in _DEVICE_BACKENDS[device]:
        reason = unusable_reason(candidate, kind)
        if reason is None:
            return BackendChoice(candidate, "; ".join(passed_over) or None)
        passed_over.append(f"{candidate}: {reason}")
    raise AnalysisError(f"no backend can build a {kind!r} index on device {device!r} ({'; '.join(passed_over)})")
