"""Zero-shot image-text retrieval: recall@K in both directions, exact or through an approximate index.

Definitions (CLIP_benchmark ``metrics/zeroshot_retrieval.py``; Radford et al. 2021):

- Image and caption embeddings are L2-normalised; the score of a (caption, image) pair is their cosine.
- ``image_retrieval_recall@K`` (text -> image): the fraction of captions whose image is among the K
  best-scoring images.
- ``text_retrieval_recall@K`` (image -> text): the fraction of images with at least one of their
  captions among the K best-scoring captions.

A query is a hit when ANY of its positives is in its top K (CLIP_benchmark computes
``true positives in top K / positives`` per query and binarises it with ``> 0``).

Ties (exact search): each query orders the gallery by descending score and equal scores by ascending
gallery index (a stable sort); its rank is the 0-based position of its first positive in that order,
and it is a hit at K when ``rank < K``. CLIP_benchmark uses ``torch.topk``, whose choice among equal
scores is unspecified (on CPU it returned indices 3 and 5 from the tied 1, 2, 3, 5 of one row), so the
two can differ only on a query whose best positive ties in score with the item at its K-th place; real
float embeddings essentially never tie.

Images without any caption are distractors: they stay in the gallery of text -> image retrieval and
are left out of the image -> text queries (their recall is undefined); ``n_text_retrieval_queries``
counts the images evaluated. (CLIP_benchmark never has such images; it would score them 0/0 = NaN,
which its ``> 0`` turns into a miss.)

Exact search scores one block of queries at a time (``[block, gallery]`` float32, about 32 MiB), never
the whole ``[queries, gallery]`` matrix. Approximate search (``search="ivf"``/``"hnsw"`` or an
:class:`~embedstore.index.IndexSpec`) builds an :mod:`embedstore.index` index over each gallery and
reads hits from its top ``max(ks)`` ids; it also reports ``index_recall_vs_exact``, the mean over
queries of ``|approximate top-10 ∩ exact top-10| / 10`` (FAISS's 10-intersection measure, the
recall@10 of ANN-benchmarks; top ``min(10, gallery)`` for smaller galleries). ``search="flat"`` is
exact search through the index backends (FAISS, GPU where present): ties then follow the backend.
:func:`retrieval_recall_through` computes the same through indexes the caller already has (saved ones).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from embedstore.errors import AnalysisError
from embedstore.index import INDEX_KINDS, IndexSpec, NNIndex, build_index_from_spec
from embedstore.index.spec import positive_int
from embedstore.index.vectors import as_row_matrix, prepared_rows, rows_within_budget

DEFAULT_KS = (1, 5, 10)
EXACT = "exact"
# Depth at which an approximate index is compared with exact search.
INDEX_RECALL_DEPTH = 10
TIE_RULE = "equal scores ordered by ascending gallery index; hit at K when first positive's rank < K"
_SCORE_BLOCK_BYTES = 32 * 2**20
_OVERLAP_BLOCK_ROWS = 65536
IMAGE_RETRIEVAL = "image_retrieval"  # text -> image
TEXT_RETRIEVAL = "text_retrieval"  # image -> text
_GALLERY = {IMAGE_RETRIEVAL: "images", TEXT_RETRIEVAL: "captions"}  # what each direction searches


@dataclass(frozen=True)
class RetrievalResult:
    """Recall@K in both directions, with how it was searched.

    ``metrics`` maps ``"image_retrieval_recall@K"`` and ``"text_retrieval_recall@K"`` (CLIP_benchmark's
    keys) to fractions in [0, 1], for ``ks`` (sorted, without repeats). ``search`` is "exact" or the
    index kind; ``backend`` what ran it ("numpy" for exact). ``index_params`` maps
    "image_retrieval"/"text_retrieval" to the resolved parameters of the index built over that
    direction's gallery ({} for exact); ``index_recall_vs_exact`` maps them to the index's
    10-recall@10 against exact search (ivf and hnsw only, else None). The exact search also
    returns each query's rank: ``image_retrieval_rank`` [n_captions] (0-based rank of the caption's
    image) and ``text_retrieval_rank`` [n_images] (rank of the image's first caption, -1 for images
    without captions); both are None for index searches.
    """

    metrics: dict[str, float]
    ks: tuple[int, ...]
    n_images: int
    n_captions: int
    n_text_retrieval_queries: int
    search: str
    backend: str
    index_params: dict[str, dict[str, Any]]
    index_recall_vs_exact: dict[str, float] | None
    image_retrieval_rank: np.ndarray | None
    text_retrieval_rank: np.ndarray | None

    def params(self) -> dict[str, Any]:
        """The conventions and settings behind these numbers, to record with them."""
        params: dict[str, Any] = {
            "score": "cosine of L2-normalised embeddings",
            "hit": "any positive among the top K",
            "ks": list(self.ks),
            "search": self.search,
            "backend": self.backend,
            "n_images": self.n_images,
            "n_captions": self.n_captions,
            "n_text_retrieval_queries": self.n_text_retrieval_queries,
        }
        if self.index_params:
            params["index_params"] = self.index_params
        if self.search == EXACT:
            params["ties"] = TIE_RULE
        return params


def retrieval_recall(
    image_emb: object,
    caption_emb: object,
    caption_image: object,
    ks: Iterable[int] = DEFAULT_KS,
    search: str | IndexSpec = EXACT,
    *,
    device: str = "auto",
    batch_size: int | None = None,
    seed: int = 0,
) -> RetrievalResult:
    """Text -> image and image -> text recall@K of ``image_emb`` [n_images, D] and ``caption_emb``
    [n_captions, D], where ``caption_image[t]`` is the row of caption ``t``'s image.

    ``search`` is "exact" (blocked numpy search, the tie rule of the module docstring), or "flat",
    "ivf", "hnsw" or an :class:`IndexSpec` (which must be cosine: ``metric="ip"``,
    ``normalize=True``) for search through :mod:`embedstore.index` on ``device``. ``batch_size`` is
    the number of queries scored at once in exact search (default: a ~32 MiB score block); ``seed``
    fixes IVF training. Any K above the number of images or of captions raises AnalysisError.
    """
    images, captions, owner, ks = _checked_inputs(image_emb, caption_emb, caption_image, ks)
    spec = _search_spec(search)
    if batch_size is not None:
        batch_size = positive_int("batch_size", batch_size)
    if spec is None:
        return _exact_recall(images, captions, owner, ks, batch_size)
    indexes = {
        IMAGE_RETRIEVAL: build_index_from_spec(images, spec, device=device, seed=seed),
        TEXT_RETRIEVAL: build_index_from_spec(captions, spec, device=device, seed=seed),
    }
    return _recall_through(images, captions, owner, ks, indexes, device)


def _exact_recall(
    images: np.ndarray,
    captions: np.ndarray,
    owner: np.ndarray,
    ks: tuple[int, ...],
    batch_size: int | None,
) -> RetrievalResult:
    images = prepared_rows(images, True, "image_emb")
    captions = prepared_rows(captions, True, "caption_emb")
    captioned = np.unique(owner)  # images with at least one caption: the image -> text queries
    image_rank = _ranks_of_the_one_positive(captions, owner, images, batch_size)
    text_rank = np.full(images.shape[0], -1, dtype=np.int64)
    text_rank[captioned] = _first_positive_ranks(images[captioned], captioned, captions, owner, batch_size)
    metrics = {}
    for k in ks:
        metrics[f"{IMAGE_RETRIEVAL}_recall@{k}"] = float(np.mean(image_rank < k))
        metrics[f"{TEXT_RETRIEVAL}_recall@{k}"] = float(np.mean(text_rank[captioned] < k))
    return RetrievalResult(
        metrics=metrics,
        ks=ks,
        n_images=images.shape[0],
        n_captions=captions.shape[0],
        n_text_retrieval_queries=int(captioned.size),
        search=EXACT,
        backend="numpy",
        index_params={},
        index_recall_vs_exact=None,
        image_retrieval_rank=image_rank,
        text_retrieval_rank=text_rank,
    )


def retrieval_recall_through(
    image_emb: object,
    caption_emb: object,
    caption_image: object,
    indexes: Mapping[str, NNIndex],
    ks: Iterable[int] = DEFAULT_KS,
    *,
    device: str = "auto",
) -> RetrievalResult:
    """Recall@K as :func:`retrieval_recall` computes it, searched through given indexes (e.g. saved
    by ``embedstore index build`` and loaded): ``indexes["image_retrieval"]`` over the rows of
    ``image_emb`` and ``indexes["text_retrieval"]`` over those of ``caption_emb``, both cosine
    (``metric="ip"``, ``normalize=True``). ``device`` runs the exact search that
    ``index_recall_vs_exact`` compares an ivf or hnsw index with."""
    images, captions, owner, ks = _checked_inputs(image_emb, caption_emb, caption_image, ks)
    galleries = {IMAGE_RETRIEVAL: images, TEXT_RETRIEVAL: captions}
    for direction, gallery in galleries.items():
        if direction not in indexes:
            raise AnalysisError(f"indexes needs an {direction!r} index (over the {_GALLERY[direction]})")
        index = indexes[direction]
        _search_spec(index.spec)
        if index.n != gallery.shape[0] or index.dim != gallery.shape[1]:
            raise AnalysisError(
                f"the {direction} index holds {index.n} x {index.dim} vectors but the {_GALLERY[direction]} are "
                f"{gallery.shape[0]} x {gallery.shape[1]}"
            )
    return _recall_through(images, captions, owner, ks, indexes, device)


def _checked_inputs(
    image_emb: object, caption_emb: object, caption_image: object, ks: Iterable[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, ...]]:
    images = as_row_matrix(image_emb, "image_emb")
    captions = as_row_matrix(caption_emb, "caption_emb")
    if images.shape[1] != captions.shape[1]:
        raise AnalysisError(f"image_emb has dimension {images.shape[1]} but caption_emb has {captions.shape[1]}")
    owner = _caption_owners(caption_image, n_captions=captions.shape[0], n_images=images.shape[0])
    return images, captions, owner, _checked_ks(ks, n_images=images.shape[0], n_captions=captions.shape[0])


def _recall_through(
    images: np.ndarray,
    captions: np.ndarray,
    owner: np.ndarray,
    ks: tuple[int, ...],
    indexes: Mapping[str, NNIndex],
    device: str,
) -> RetrievalResult:
    captioned = np.unique(owner)
    image_ids = np.arange(images.shape[0])
    searches = {  # direction -> (queries, each query's image, gallery, each gallery row's image)
        IMAGE_RETRIEVAL: (captions, owner, images, image_ids),
        TEXT_RETRIEVAL: (images[captioned], captioned, captions, owner),
    }
    by_direction = {
        direction: _index_search(indexes[direction], queries, query_label, gallery, gallery_label, ks, device)
        for direction, (queries, query_label, gallery, gallery_label) in searches.items()
    }
    metrics = {
        f"{direction}_recall@{k}": by_direction[direction].recalls[k]
        for k in ks
        for direction in (IMAGE_RETRIEVAL, TEXT_RETRIEVAL)
    }
    kinds = {index.spec.kind for index in indexes.values()}
    overlap = {d: o.recall_vs_exact for d, o in by_direction.items() if o.recall_vs_exact is not None}
    return RetrievalResult(
        metrics=metrics,
        ks=ks,
        n_images=images.shape[0],
        n_captions=captions.shape[0],
        n_text_retrieval_queries=int(captioned.size),
        search="+".join(sorted(kinds)),
        backend="+".join(dict.fromkeys(outcome.backend for outcome in by_direction.values())),
        index_params={direction: outcome.params for direction, outcome in by_direction.items()},
        index_recall_vs_exact=overlap or None,
        image_retrieval_rank=None,
        text_retrieval_rank=None,
    )


def _caption_owners(caption_image: object, *, n_captions: int, n_images: int) -> np.ndarray:
    owner = np.asarray(caption_image)
    if owner.ndim != 1 or owner.shape[0] != n_captions:
        raise AnalysisError(f"caption_image must have one entry per caption ({n_captions}), got shape {owner.shape}")
    if not np.issubdtype(owner.dtype, np.integer):
        raise AnalysisError(f"caption_image must hold integer image rows, got dtype {owner.dtype}")
    outside = (owner < 0) | (owner >= n_images)
    if outside.any():
        row = int(np.flatnonzero(outside)[0])
        raise AnalysisError(f"caption_image row {row} is {int(owner[row])}, not an image row in [0, {n_images})")
    return owner.astype(np.int64, copy=False)


def _checked_ks(ks: Iterable[int], *, n_images: int, n_captions: int) -> tuple[int, ...]:
    values = tuple(ks)
    if not values:
        raise AnalysisError("ks is empty: give at least one K for recall@K")
    unique = tuple(sorted({positive_int("each of ks", k) for k in values}))
    if unique[-1] > n_images:
        raise AnalysisError(f"recall@{unique[-1]} needs at least {unique[-1]} images; there are {n_images}")
    if unique[-1] > n_captions:
        raise AnalysisError(f"recall@{unique[-1]} needs at least {unique[-1]} captions; there are {n_captions}")
    return unique


def _search_spec(search: str | IndexSpec) -> IndexSpec | None:
    """None for exact search, else the cosine index spec to search with."""
    if isinstance(search, IndexSpec):
        if search.metric != "ip" or not search.normalize:
            raise AnalysisError(
                "search spec must score cosines (metric='ip', normalize=True), "
                f"got metric={search.metric!r}, normalize={search.normalize}"
            )
        return search
    if search == EXACT:
        return None
    if search in INDEX_KINDS:
        return IndexSpec(kind=search)
    raise AnalysisError(f"search must be 'exact', one of {', '.join(INDEX_KINDS)} or an IndexSpec, got {search!r}")


def _ranks_of_the_one_positive(
    queries: np.ndarray, positive_row: np.ndarray, gallery: np.ndarray, batch_size: int | None
) -> np.ndarray:
    """:func:`_first_positive_ranks` when each query has exactly one positive, gallery row ``positive_row``.

    With ``s`` the positive's score, the rank is ``#(score > s)`` plus the rows before the positive that
    tie with it: ``#(score >= s) - #(score == s)`` for every query, and the tied rows before the
    positive are counted only in the (rare) rows where something other than the positive ties with it.
    """
    if batch_size is None:
        batch_size = rows_within_budget(4 * gallery.shape[0], _SCORE_BLOCK_BYTES, queries.shape[0])
    ranks = np.empty(queries.shape[0], dtype=np.int64)
    for start in range(0, queries.shape[0], batch_size):
        stop = min(start + batch_size, queries.shape[0])
        scores = queries[start:stop] @ gallery.T
        positive = positive_row[start:stop]
        best = scores[np.arange(stop - start), positive][:, None]
        tied = np.count_nonzero(scores == best, axis=1)
        batch_ranks = np.count_nonzero(scores >= best, axis=1) - tied
        for row in np.flatnonzero(tied > 1):
            batch_ranks[row] += np.count_nonzero(scores[row, : positive[row]] == best[row])
        ranks[start:stop] = batch_ranks
    return ranks


def _first_positive_ranks(
    queries: np.ndarray,
    query_label: np.ndarray,
    gallery: np.ndarray,
    gallery_label: np.ndarray,
    batch_size: int | None,
) -> np.ndarray:
    """0-based rank of each query's first positive (gallery rows whose label equals the query's).

    The gallery is ordered by descending ``query . row`` and ties by ascending row index, so the
    rank counts rows scoring above the best positive, plus rows scoring equal to it that come
    before the lowest-index positive at that score. Every query must have a positive.
    """
    if batch_size is None:
        batch_size = rows_within_budget(4 * gallery.shape[0], _SCORE_BLOCK_BYTES, queries.shape[0])
    columns = np.arange(gallery.shape[0])
    ranks = np.empty(queries.shape[0], dtype=np.int64)
    for start in range(0, queries.shape[0], batch_size):
        stop = start + batch_size
        scores = queries[start:stop] @ gallery.T
        positive = gallery_label[None, :] == query_label[start:stop, None]
        best = np.where(positive, scores, -np.inf).max(axis=1, keepdims=True)
        at_best = scores == best
        first_positive_at_best = np.argmax(positive & at_best, axis=1)[:, None]
        ahead = (scores > best) | (at_best & (columns[None, :] < first_positive_at_best))
        ranks[start:stop] = ahead.sum(axis=1)
    return ranks


@dataclass(frozen=True)
class _IndexSearchOutcome:
    recalls: dict[int, float]
    recall_vs_exact: float | None  # None for flat
    backend: str
    params: dict[str, Any]  # the built index's resolved parameters


def _index_search(
    index: NNIndex,
    queries: np.ndarray,
    query_label: np.ndarray,
    gallery: np.ndarray,
    gallery_label: np.ndarray,
    ks: tuple[int, ...],
    device: str,
) -> _IndexSearchOutcome:
    """Recall@K per K read from the top ids of ``index`` (over ``gallery``), and (ivf, hnsw) the
    index's 10-recall@10 against exact flat search."""
    overlap_depth = min(INDEX_RECALL_DEPTH, gallery.shape[0])
    _, ids = index.search(queries, max(ks[-1], overlap_depth))
    found_label = np.where(ids >= 0, gallery_label[np.maximum(ids, 0)], -1)
    hit = found_label == query_label[:, None]
    recalls = {k: float(hit[:, :k].any(axis=1).mean()) for k in ks}
    recall_vs_exact = None
    if index.spec.kind != "flat":
        exact = build_index_from_spec(gallery, IndexSpec(kind="flat"), device=device)
        _, exact_ids = exact.search(queries, overlap_depth)
        recall_vs_exact = _mean_overlap(ids[:, :overlap_depth], exact_ids)
    return _IndexSearchOutcome(recalls, recall_vs_exact, index.backend, index.spec.params())


def _mean_overlap(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean over rows of ``|found ∩ exact| / width`` (ids of -1 never count)."""
    shared = 0
    for start in range(0, found.shape[0], _OVERLAP_BLOCK_ROWS):
        a = found[start : start + _OVERLAP_BLOCK_ROWS]
        b = exact[start : start + _OVERLAP_BLOCK_ROWS]
        shared += int(((a[:, :, None] == b[:, None, :]) & (a[:, :, None] >= 0)).any(axis=2).sum())
    return shared / exact.size
