"""What a nearest-neighbour index is: its kind, its metric and its tuning parameters.

Kinds (all FAISS index families; Johnson, Douze & Jégou, "Billion-scale similarity search with GPUs",
2019):

- ``flat``: exhaustive (exact) search, FAISS ``IndexFlat``. With ``metric="ip"`` and
  ``normalize=True`` this is exact cosine search (``IndexFlatIP`` on L2-normalised vectors).
- ``ivf``: inverted file (Jégou et al. 2011): k-means into ``nlist`` cells, a query scans the
  ``nprobe`` nearest cells exhaustively (FAISS ``IndexIVFFlat``). ``nprobe == nlist`` is exact.
- ``hnsw``: hierarchical navigable small-world graph (Malkov & Yashunin 2018), ``hnsw_m`` links per
  node, beam widths ``ef_construction`` (build) and ``ef_search`` (query) (FAISS ``IndexHNSWFlat``).

Scores are similarities, larger first: the inner product for ``metric="ip"`` (the cosine when
``normalize=True``), the negative squared L2 distance for ``metric="l2"``.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, replace
from typing import Any

from embedstore.errors import AnalysisError

INDEX_KINDS = ("flat", "ivf", "hnsw")
METRICS = ("ip", "l2")

# FAISS's guidance: nlist ~ 4*sqrt(n) cells, and k-means wants >= 39 training points per cell.
_NLIST_PER_SQRT_N = 4
_MIN_POINTS_PER_CELL = 39
# Cells scanned per query when nprobe is not given (clipped to nlist).
DEFAULT_NPROBE = 32
DEFAULT_HNSW_M = 32
DEFAULT_EF_SEARCH = 128
DEFAULT_EF_CONSTRUCTION = 100


def default_nlist(n: int) -> int:
    """``round(4 * sqrt(n))`` cells, at most ``n // 39`` so every cell has training points, at least 1."""
    return max(1, min(round(_NLIST_PER_SQRT_N * math.sqrt(n)), n // _MIN_POINTS_PER_CELL))


@dataclass(frozen=True)
class IndexSpec:
    """Kind, metric and parameters of an index; ``None`` for ``nlist``/``nprobe`` means "pick for n".

    Only the parameters of the chosen ``kind`` matter (``nlist``/``nprobe`` for ``ivf``; ``hnsw_m``,
    ``ef_search``, ``ef_construction`` for ``hnsw``); :meth:`params` lists exactly those.
    """

    kind: str = "flat"
    metric: str = "ip"
    normalize: bool = True
    nlist: int | None = None
    nprobe: int | None = None
    hnsw_m: int = DEFAULT_HNSW_M
    ef_search: int = DEFAULT_EF_SEARCH
    ef_construction: int = DEFAULT_EF_CONSTRUCTION

    def __post_init__(self) -> None:
        if self.kind not in INDEX_KINDS:
            raise AnalysisError(f"kind must be one of {', '.join(INDEX_KINDS)}, got {self.kind!r}")
        if self.metric not in METRICS:
            raise AnalysisError(f"metric must be one of {', '.join(METRICS)}, got {self.metric!r}")
        # Numpy integers are stored as plain ints so the spec stays JSON-ready (frozen: setattr).
        for name in ("hnsw_m", "ef_search", "ef_construction"):
            object.__setattr__(self, name, positive_int(name, getattr(self, name)))
        for name in ("nlist", "nprobe"):  # None: chosen for the index size by resolved()
            if getattr(self, name) is not None:
                object.__setattr__(self, name, positive_int(name, getattr(self, name)))
        object.__setattr__(self, "normalize", bool(self.normalize))
        if self.nlist is not None and self.nprobe is not None and self.nprobe > self.nlist:
            raise AnalysisError(f"nprobe ({self.nprobe}) cannot exceed nlist ({self.nlist})")

    def resolved(self, n: int) -> IndexSpec:
        """This spec with ``nlist``/``nprobe`` fixed for an index over ``n`` vectors.

        ``nlist`` defaults to :func:`default_nlist`; ``nprobe`` to ``min(32, nlist)``. An explicit
        ``nlist`` larger than ``n`` is an error (k-means needs a point per cell).
        """
        if self.kind != "ivf":
            return self
        nlist = default_nlist(n) if self.nlist is None else self.nlist
        if nlist > n:
            raise AnalysisError(f"nlist ({nlist}) cannot exceed the number of vectors ({n})")
        nprobe = min(DEFAULT_NPROBE, nlist) if self.nprobe is None else self.nprobe
        if nprobe > nlist:
            raise AnalysisError(f"nprobe ({nprobe}) cannot exceed nlist ({nlist})")
        return replace(self, nlist=nlist, nprobe=nprobe)

    def params(self) -> dict[str, Any]:
        """The parameters that apply to this kind, e.g. ``{"nlist": 40, "nprobe": 8}`` for ivf."""
        if self.kind == "ivf":
            return {"nlist": self.nlist, "nprobe": self.nprobe}
        if self.kind == "hnsw":
            return {
                "hnsw_m": self.hnsw_m,
                "ef_search": self.ef_search,
                "ef_construction": self.ef_construction,
            }
        return {}

    def to_dict(self) -> dict[str, Any]:
        """Every field, as JSON-ready values."""
        return asdict(self)

    @classmethod
    def from_dict(cls, fields: dict[str, Any]) -> IndexSpec:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        unknown = sorted(set(fields) - set(cls.__dataclass_fields__))
        if unknown:
            raise AnalysisError(f"unknown index spec field(s): {', '.join(unknown)}")
        return cls(**fields)


def positive_int(name: str, value: object) -> int:
    """``value`` as an ``int`` when it is a positive integer (numpy integers too, not bools)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise AnalysisError(f"{name} must be a positive integer, got {value!r}")
    return int(value)
