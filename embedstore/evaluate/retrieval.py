"""Zero-shot image-text retrieval from the cache: recall@K both ways for every CLIP model on every
caption dataset, exact or through an approximate index (a saved one when there is one).

Inputs: ``image_emb`` and ``caption_emb`` of a (model, dataset) pair. Rows in ``bad_samples`` are left
out: their images leave the gallery and so do their captions (whose image cannot be retrieved).
Images without captions stay in the gallery as distractors. Metrics follow CLIP_benchmark
(``metrics/zeroshot_retrieval.py``, see :mod:`embedstore.analysis.retrieval`): cosine scores; a
query is a hit when any of its positives is in its top K.

- ``image_retrieval_recall@K``: text -> image, per caption.
- ``text_retrieval_recall@K``: image -> text, per image with at least one caption.
- with an index (``IndexRequest``): ``index_recall_vs_exact@image_retrieval`` and
  ``@text_retrieval``, the index's 10-recall@10 against exact search (ivf and hnsw).

Search: exact by default (ties: lower gallery row first). With an ``IndexRequest`` each direction's
gallery (images for image retrieval, captions for text retrieval) is searched through an index of
that kind: the one saved for the array by ``embedstore index build`` when its fingerprint matches
(a stale one is refused), else one built in memory (seeded).

Results (analysis ``"retrieval"``, one set per (model, dataset)): the metrics above; params: ks,
search kind, each direction's index parameters, backend, tie rule, row convention, the counts of
images / captions / image queries, the saved index files used and (for a built ivf) the seed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from embedstore.analysis.retrieval import (
    DEFAULT_KS,
    IMAGE_RETRIEVAL,
    TEXT_RETRIEVAL,
    RetrievalResult,
    retrieval_recall,
    retrieval_recall_through,
)
from embedstore.errors import AnalysisError
from embedstore.evaluate.common import (
    named_explicitly,
    resolve_datasets,
    resolve_models,
    skips_unfinished,
    stores_results_together,
)
from embedstore.evaluate.indexes import CAPTION_ARRAY, IMAGE_ARRAY, Gallery, IndexRequest, read_gallery
from embedstore.index.spec import positive_int
from embedstore.store import Store

ANALYSIS = "retrieval"
ROWS = "decodable images; captions of undecodable images left out; images without captions are distractors"
INDEX_TIES = "as the index backend orders equal scores"


@dataclass(frozen=True)
class RetrievalRow:
    """One (model, dataset) evaluation: the analysis result, and the saved index files searched
    (direction -> path relative to the store; empty when none was)."""

    model: str
    dataset: str
    result: RetrievalResult
    saved_indexes: dict[str, str]
    seed: int | None

    def params(self) -> dict[str, Any]:
        params = {**self.result.params(), "rows": ROWS, "saved_indexes": self.saved_indexes}
        if self.result.search != "exact":
            params["ties"] = INDEX_TIES
        if self.seed is not None:
            params["seed"] = self.seed
        return params

    def metric_rows(self) -> list[tuple[str, float]]:
        rows = list(self.result.metrics.items())
        for direction, recall in (self.result.index_recall_vs_exact or {}).items():
            rows.append((f"index_recall_vs_exact@{direction}", recall))
        return rows

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "dataset": self.dataset, "search": self.result.search,
                "backend": self.result.backend, "n_images": self.result.n_images,
                "n_captions": self.result.n_captions, **dict(self.metric_rows())}  # fmt: skip


@stores_results_together
def run_retrieval(
    store: Store,
    models: Sequence[str],
    datasets: Sequence[str],
    *,
    ks: Iterable[int] = DEFAULT_KS,
    index: IndexRequest | None = None,
    skipped: dict[str, str] | None = None,
) -> list[RetrievalRow]:
    """Recall@K of every model (ids or globs) on every caption dataset (names or globs), recorded in
    ``results``; ``index`` None searches exactly.

    A dataset without captions, or a model without ``caption_emb`` on a dataset, is an error when
    named exactly and skipped when only a glob matched it, as is a pair whose extraction has not
    finished (named in ``skipped`` when given). Results are written once every pair is computed, so a
    failure writes nothing."""
    ks = _checked_ks(ks)
    pairs = _pairs(store, models, datasets, {} if skipped is None else skipped)
    rows = [_evaluate(store, model, dataset, ks, index) for model, dataset in pairs]
    with store.session():
        for row in rows:
            store.put_results(ANALYSIS, row.metric_rows(), params=row.params(), model=row.model, dataset=row.dataset)
    return rows


def _checked_ks(ks: Iterable[int]) -> tuple[int, ...]:
    values = tuple(ks)
    if not values:
        raise AnalysisError("give at least one K for recall@K")
    return tuple(sorted({positive_int("K", k) for k in values}))


def _pairs(
    store: Store, models: Sequence[str], datasets: Sequence[str], skipped: dict[str, str]
) -> list[tuple[str, str]]:
    """The (model, dataset) pairs to evaluate, checked before any array is read."""
    with store.session():
        model_ids = resolve_models(store, models)
        pairs = []
        for dataset in resolve_datasets(store, datasets):
            if not store.dataset_info(dataset)["n_captions"]:
                if named_explicitly(dataset, datasets):
                    raise AnalysisError(f"dataset {dataset} has no captions: retrieval needs a caption dataset")
                continue
            with_captions = {a.model for a in store.list_arrays(dataset=dataset, name=CAPTION_ARRAY)}
            for model in model_ids:
                named = named_explicitly(model, models) and named_explicitly(dataset, datasets)
                if model in with_captions and not skips_unfinished(
                    store, model, dataset, named, skipped, names=(IMAGE_ARRAY, CAPTION_ARRAY)
                ):
                    pairs.append((model, dataset))
                elif named:
                    raise AnalysisError(
                        f"model {model} has no {CAPTION_ARRAY} on dataset {dataset}: retrieval needs a CLIP model "
                        f"extracted on it"
                    )
    if not pairs:
        raise AnalysisError(
            f"no model among {', '.join(model_ids)} has {CAPTION_ARRAY} on a caption dataset matching "
            f"{', '.join(datasets)}"
        )
    return pairs


def _evaluate(store: Store, model: str, dataset: str, ks: tuple[int, ...], index: IndexRequest | None) -> RetrievalRow:
    images = read_gallery(store, dataset, model, IMAGE_ARRAY)
    captions = read_gallery(store, dataset, model, CAPTION_ARRAY)
    if images.vectors.shape[1] != captions.vectors.shape[1]:
        raise AnalysisError(
            f"model {model} on dataset {dataset}: image_emb has width {images.vectors.shape[1]} but caption_emb "
            f"{captions.vectors.shape[1]}"
        )
    for gallery, what in ((images, "images"), (captions, "captions")):
        if ks[-1] > len(gallery.rows):
            raise AnalysisError(
                f"recall@{ks[-1]} needs at least {ks[-1]} {what}; dataset {dataset} has {len(gallery.rows)} usable {what}"
            )
    owner = _caption_owners(store, dataset, images, captions)
    if index is None:
        return RetrievalRow(model, dataset, retrieval_recall(images.vectors, captions.vectors, owner, ks), {}, None)
    by_direction = {
        IMAGE_RETRIEVAL: index.index_for(store, images),
        TEXT_RETRIEVAL: index.index_for(store, captions),
    }
    saved = {d: str(path.relative_to(store.path)) for d, (_, path) in by_direction.items() if path is not None}
    built_in_memory = len(saved) < len(by_direction)
    seed = index.seed if index.kind == "ivf" and built_in_memory else None
    if not saved:  # nothing saved: the analysis builds both indexes itself, as it would anyway
        result = retrieval_recall(images.vectors, captions.vectors, owner, ks, index.spec(), device=index.device,
                                  seed=index.seed)  # fmt: skip
    else:
        indexes = {direction: found for direction, (found, _) in by_direction.items()}
        result = retrieval_recall_through(images.vectors, captions.vectors, owner, indexes, ks, device=index.device)
    return RetrievalRow(model, dataset, result, saved, seed)


def _caption_owners(store: Store, dataset: str, images: Gallery, captions: Gallery) -> np.ndarray:
    """For each gallery caption, the position of its image in the image gallery."""
    sample_row = store.caption_table(dataset)["sample_row"][captions.rows]
    return np.searchsorted(images.rows, sample_row)
