"""Nearest images of one model's cached ``image_emb``: for an image of the dataset (by row or key) or
for a free-text query encoded with the model's text tower.

- Scores are cosines (inner products of L2-normalised embeddings), best first.
- The gallery is the dataset's decodable images (rows in ``bad_samples`` are left out). An image
  query is never its own neighbour: its row is dropped from its results (other rows with the same
  embedding stay).
- Search: the array's saved index (``embedstore index build``) when there is one and ``index`` is
  "auto" (with several kinds saved, the first of flat, ivf, hnsw), or the saved index of a named kind;
  exact search ("exact", or "auto" with none saved) otherwise. A stale saved index is refused.
- A text query loads the model (text tower only, fp32) and refuses weights whose fingerprint differs
  from the stored one; no image is encoded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embedstore.errors import AnalysisError
from embedstore.evaluate.indexes import IMAGE_ARRAY, Gallery, load_saved_index, read_gallery
from embedstore.index import INDEX_KINDS, NNIndex, build_index
from embedstore.index.spec import positive_int
from embedstore.store import Store

EXACT = "exact"
AUTO = "auto"
SEARCHES = (AUTO, EXACT, *INDEX_KINDS)
DEFAULT_K = 10


@dataclass(frozen=True)
class NeighborQuery:
    """Exactly one of: a dataset ``row``, a sample ``key``, or a free ``text``."""

    row: int | None = None
    key: str | None = None
    text: str | None = None

    def __post_init__(self) -> None:
        given = [name for name in ("row", "key", "text") if getattr(self, name) is not None]
        if len(given) != 1:
            raise AnalysisError(f"give exactly one query (a row, a key or a text), got {', '.join(given) or 'none'}")
        if self.text is not None and not self.text.strip():
            raise AnalysisError("the text query is empty")
        if self.row is not None and (isinstance(self.row, bool) or not isinstance(self.row, (int, np.integer))):
            raise AnalysisError(f"row must be an integer, got {self.row!r}")


@dataclass(frozen=True)
class Neighbor:
    rank: int  # 1 = nearest
    row: int
    key: str
    label: str | None  # class name; None for unlabelled samples
    score: float  # cosine


@dataclass(frozen=True)
class NeighborsResult:
    model: str
    dataset: str
    query: str  # "row 3 (key 'k3')" or "text 'a dog'"
    search: str  # "exact" or the saved index kind
    index_file: str | None  # saved index searched, relative to the store
    backend: str
    neighbors: list[Neighbor]

    def as_dict(self) -> dict[str, Any]:
        return {**{k: v for k, v in self.__dict__.items() if k != "neighbors"},
                "neighbors": [n.__dict__ for n in self.neighbors]}  # fmt: skip


def find_neighbors(
    store: Store,
    model: str,
    dataset: str,
    query: NeighborQuery,
    *,
    k: int = DEFAULT_K,
    index: str = AUTO,
    device: str = "cpu",
) -> NeighborsResult:
    """The ``k`` nearest images of ``dataset`` to ``query`` in ``model``'s ``image_emb`` (see the
    module docstring); ``model`` may be a glob matching one model (``Store.model_with_array``); ``index`` is one of "auto", "exact", "flat", "ivf", "hnsw"; ``device`` ("cpu"
    or "cuda") runs the text tower and the search."""
    k = positive_int("k", k)
    if index not in SEARCHES:
        raise AnalysisError(f"index must be one of {', '.join(SEARCHES)}, got {index!r}")
    store.dataset_info(dataset)
    model = store.model_with_array(dataset, model, IMAGE_ARRAY)
    store.model_info(model)
    samples = store.sample_table(dataset)
    gallery = read_gallery(store, dataset, model, IMAGE_ARRAY)
    own_row, description = _query_row(store, dataset, samples, query)
    limit = len(gallery.rows) - (own_row is not None)
    if k > limit:
        raise AnalysisError(f"k={k} exceeds the {limit} other decodable images of dataset {dataset}")
    vectors = (
        _encode_text(store, model, query.text, device, gallery.vectors.shape[1])
        if own_row is None
        else gallery.vectors[np.searchsorted(gallery.rows, own_row)][None, :]
    )
    searcher, path = _searcher(store, gallery, index, device)
    scores, ids = searcher.search(vectors, k + (own_row is not None))
    found = [(int(gallery.rows[i]), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0]
    found = [(row, score) for row, score in found if row != own_row][:k]
    classnames = store.dataset_info(dataset)["classnames"]
    neighbors = [
        Neighbor(rank, row, str(samples["key"][row]), _classname(classnames, int(samples["label"][row])), score)
        for rank, (row, score) in enumerate(found, start=1)
    ]
    return NeighborsResult(
        model=model,
        dataset=dataset,
        query=description,
        search=EXACT if path is None else searcher.spec.kind,
        index_file=None if path is None else str(path.relative_to(store.path)),
        backend=searcher.backend,
        neighbors=neighbors,
    )


def _query_row(
    store: Store, dataset: str, samples: dict[str, np.ndarray], query: NeighborQuery
) -> tuple[int | None, str]:
    """The dataset row of an image query (None for text) and a description of the query."""
    if query.text is not None:
        return None, f"text {query.text!r}"
    if query.key is not None:
        matches = np.flatnonzero(samples["key"] == query.key)
        if not len(matches):
            raise AnalysisError(f"dataset {dataset} has no sample with key {query.key!r}")
        row = int(matches[0])
    else:
        row = int(query.row)
        if not 0 <= row < len(samples["row"]):
            raise AnalysisError(f"row {row} is not a row of dataset {dataset} (rows 0..{len(samples['row']) - 1})")
    if row in store.bad_rows(dataset):
        raise AnalysisError(f"row {row} of dataset {dataset} is an undecodable sample (bad_samples): no embedding")
    return row, f"row {row} (key {samples['key'][row]!r})"


def _encode_text(store: Store, model: str, text: str, device: str, width: int) -> np.ndarray:
    """``[1, D]`` text embedding of ``text`` from the model's text tower, after checking that its
    weights are the ones the store's arrays were extracted with."""
    import torch

    from embedstore.models import load_model

    info = store.model_info(model)
    if info["kind"] != "clip":
        raise AnalysisError(f"model {model} is a {info['kind']} model: a text query needs a CLIP model's text tower")
    adapter = load_model(model, device=device, precision="fp32")
    if adapter.fingerprint != info["fingerprint"]:
        raise AnalysisError(f"the weights of {model} differ from the ones its arrays were extracted with")
    with torch.inference_mode():
        embedding = adapter.encode_text(adapter.tokenize([text])).float().cpu().numpy()
    if embedding.shape[1] != width:
        raise AnalysisError(f"model {model} encodes text to width {embedding.shape[1]}, its image_emb has {width}")
    return embedding


def _searcher(store: Store, gallery: Gallery, index: str, device: str) -> tuple[NNIndex, Path | None]:
    """The index to search and the saved file it came from (None for exact search in memory)."""
    if index != EXACT:
        kinds = INDEX_KINDS if index == AUTO else (index,)
        for kind in kinds:
            saved = load_saved_index(store, gallery, kind, device=device)
            if saved is not None:
                return saved
        if index != AUTO:
            raise AnalysisError(
                f"no saved {index} index of {gallery.describe()}; build one with `embedstore index build "
                f"--model {gallery.model} --dataset {gallery.dataset} --kind {index}`, or search exactly"
            )
    return build_index(gallery.vectors, "flat", device=device), None


def _classname(classnames: list[str], label: int) -> str | None:
    return classnames[label] if 0 <= label < len(classnames) else None
