"""Retrieval recall@K: hand-built ranks, ties, several captions per image, CLIP_benchmark parity,
approximate search through IVF/HNSW indexes, and the errors a caller can cause."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from clip_benchmark.metrics.zeroshot_retrieval import batchify, recall_at_k

from embedstore.analysis.retrieval import retrieval_recall, retrieval_recall_through
from embedstore.errors import AnalysisError
from embedstore.index import IndexSpec, build_index, build_index_from_spec

# 3 images (basis vectors) and 6 captions, 2 per image, with hand-computed ranks:
# text -> image ranks [0, 1, 0, 1, 1, 2]; image -> text ranks [0, 0, 1] (caption 3 outscores image 2's own).
IMAGES = np.eye(3, dtype=np.float32)
CAPTIONS = np.array(
    [
        [1.0, 0.0, 0.0],  # image 0, rank 0
        [0.6, 0.8, 0.0],  # image 0, rank 1 (image 1 scores 0.8)
        [0.0, 1.0, 0.0],  # image 1, rank 0
        [0.1, 0.2, 0.9],  # image 1, rank 1 (image 2 scores higher)
        [0.9, 0.1, 0.3],  # image 2, rank 1 (image 0 scores higher)
        [0.8, 0.1, 0.05],  # image 2, rank 2
    ],
    dtype=np.float32,
)
CAPTION_IMAGE = np.array([0, 0, 1, 1, 2, 2])


def _random_retrieval_set(seed: int, n_images: int = 120, dim: int = 24, noise: float = 1.2):
    """Images, captions (1 to 5 per image, shuffled) that resemble their image plus noise, owners."""
    rng = np.random.default_rng(seed)
    per_image = rng.integers(1, 6, size=n_images)
    owner = np.repeat(np.arange(n_images), per_image)
    rng.shuffle(owner)
    images = rng.standard_normal((n_images, dim)).astype(np.float32)
    captions = (images[owner] + noise * rng.standard_normal((owner.size, dim))).astype(np.float32)
    return images, captions, owner


def _clip_benchmark_metrics(images, captions, owner, ks) -> dict[str, float]:
    """CLIP_benchmark's own computation: normalised scores, positive-pair matrix, batchify(recall_at_k)."""
    image_t = torch.nn.functional.normalize(torch.from_numpy(images), dim=-1)
    caption_t = torch.nn.functional.normalize(torch.from_numpy(captions), dim=-1)
    scores = caption_t @ image_t.T
    positive_pairs = torch.zeros_like(scores, dtype=torch.bool)
    positive_pairs[torch.arange(len(scores)), torch.from_numpy(owner)] = True
    metrics = {}
    for k in ks:
        image_hits = batchify(recall_at_k, scores, positive_pairs, 32, "cpu", k=k) > 0
        text_hits = batchify(recall_at_k, scores.T, positive_pairs.T, 32, "cpu", k=k) > 0
        metrics[f"image_retrieval_recall@{k}"] = image_hits.float().mean().item()
        metrics[f"text_retrieval_recall@{k}"] = text_hits.float().mean().item()
    return metrics


def _stable_sort_rank(scores_row: np.ndarray, positives: np.ndarray) -> int:
    """Reference tie rule: position of the first positive after a stable sort by descending score."""
    order = np.argsort(-scores_row, kind="stable")
    return int(np.flatnonzero(np.isin(order, positives))[0])


def test_hand_built_ranks_and_recalls():
    result = retrieval_recall(IMAGES, CAPTIONS, CAPTION_IMAGE, ks=(1, 2, 3))
    np.testing.assert_array_equal(result.image_retrieval_rank, [0, 1, 0, 1, 1, 2])
    np.testing.assert_array_equal(result.text_retrieval_rank, [0, 0, 1])
    assert result.metrics == pytest.approx(
        {
            "image_retrieval_recall@1": 2 / 6,
            "image_retrieval_recall@2": 5 / 6,
            "image_retrieval_recall@3": 1.0,
            "text_retrieval_recall@1": 2 / 3,
            "text_retrieval_recall@2": 1.0,
            "text_retrieval_recall@3": 1.0,
        }
    )
    assert result.search == "exact" and result.backend == "numpy"
    assert result.n_images == 3 and result.n_captions == 6 and result.n_text_retrieval_queries == 3
    assert result.params()["ties"].startswith("equal scores ordered by ascending gallery index")


def test_scores_are_cosines_so_embedding_scale_does_not_matter():
    scaled_images = IMAGES * np.array([[3.0], [0.5], [7.0]], dtype=np.float32)
    scaled = retrieval_recall(scaled_images, 10 * CAPTIONS, CAPTION_IMAGE, ks=(1, 2))
    plain = retrieval_recall(IMAGES, CAPTIONS, CAPTION_IMAGE, ks=(1, 2))
    assert scaled.metrics == plain.metrics


def test_ties_rank_lower_gallery_index_first():
    images = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=np.float32)  # images 0 and 1 tie
    captions = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=np.float32)  # captions 0 and 1 tie
    result = retrieval_recall(images, captions, np.array([0, 1, 2]), ks=(1, 2))
    # caption 1's image (row 1) ties with row 0, which comes first; likewise image 1's caption.
    np.testing.assert_array_equal(result.image_retrieval_rank, [0, 1, 0])
    np.testing.assert_array_equal(result.text_retrieval_rank, [0, 1, 0])
    assert result.metrics["image_retrieval_recall@1"] == pytest.approx(2 / 3)
    assert result.metrics["image_retrieval_recall@2"] == 1.0


def test_ranks_follow_the_stable_sort_rule_on_heavily_tied_data():
    rng = np.random.default_rng(3)
    images = rng.integers(-1, 2, size=(30, 3)).astype(np.float32)  # few distinct directions: many ties
    images[np.abs(images).sum(axis=1) == 0] = [1, 0, 0]
    owner = rng.integers(0, 30, size=70)
    captions = images[owner] + rng.integers(-1, 2, size=(70, 3)).astype(np.float32)
    captions[np.abs(captions).sum(axis=1) == 0] = [0, 1, 0]
    result = retrieval_recall(images, captions, owner, ks=(1, 5))
    image_n = images / np.linalg.norm(images, axis=1, keepdims=True)
    caption_n = captions / np.linalg.norm(captions, axis=1, keepdims=True)
    scores = caption_n @ image_n.T
    expected_image = [_stable_sort_rank(scores[t], [owner[t]]) for t in range(70)]
    expected_text = [
        _stable_sort_rank(scores[:, i], np.flatnonzero(owner == i)) if (owner == i).any() else -1 for i in range(30)
    ]
    np.testing.assert_array_equal(result.image_retrieval_rank, expected_image)
    np.testing.assert_array_equal(result.text_retrieval_rank, expected_text)


def test_text_retrieval_hits_when_any_of_several_captions_is_in_top_k():
    images = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=np.float32)
    captions = np.array(
        [[0.0, 1.0, 0.1], [0.1, 1.0, 0.0], [0.9, 0.0, 0.1], [0.0, 0.9, 0.0]], dtype=np.float32
    )  # image 0 owns captions 0 and 2; only caption 2 points at it
    result = retrieval_recall(images, captions, np.array([0, 1, 0, 1]), ks=(1,))
    np.testing.assert_array_equal(result.text_retrieval_rank, [0, 0])
    assert result.metrics["text_retrieval_recall@1"] == 1.0
    assert result.metrics["image_retrieval_recall@1"] == pytest.approx(3 / 4)


@pytest.mark.parametrize("seed", [0, 1])
def test_equals_clip_benchmark_recall_at_k_on_random_embeddings(seed):
    images, captions, owner = _random_retrieval_set(seed)
    ks = (1, 5, 10)
    result = retrieval_recall(images, captions, owner, ks=ks)
    reference = _clip_benchmark_metrics(images, captions, owner, ks)
    assert result.metrics.keys() == reference.keys()
    for key, value in reference.items():
        assert result.metrics[key] == pytest.approx(value, abs=1e-6), key
    assert 0 < result.metrics["image_retrieval_recall@1"] < result.metrics["image_retrieval_recall@10"] < 1


def test_block_size_does_not_change_ranks():
    images, captions, owner = _random_retrieval_set(4, n_images=50)
    whole = retrieval_recall(images, captions, owner)
    for batch_size in (1, 7, 1000):
        blocked = retrieval_recall(images, captions, owner, batch_size=batch_size)
        np.testing.assert_array_equal(blocked.image_retrieval_rank, whole.image_retrieval_rank)
        np.testing.assert_array_equal(blocked.text_retrieval_rank, whole.text_retrieval_rank)


def test_float16_embeddings_are_upcast_before_scoring():
    images, captions, owner = _random_retrieval_set(5, n_images=40)
    half = retrieval_recall(images.astype(np.float16), captions.astype(np.float16), owner)
    upcast = retrieval_recall(
        images.astype(np.float16).astype(np.float32), captions.astype(np.float16).astype(np.float32), owner
    )
    assert half.metrics == upcast.metrics


def test_images_without_captions_are_distractors_not_queries():
    images = np.array([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1]], dtype=np.float32)  # image 2 has no caption
    captions = np.array([[0.9, 0.1], [0.0, 1.0]], dtype=np.float32)  # caption 0 is image 2's direction
    result = retrieval_recall(images, captions, np.array([0, 1]), ks=(1, 2))
    assert result.n_text_retrieval_queries == 2
    np.testing.assert_array_equal(result.text_retrieval_rank, [0, 0, -1])
    np.testing.assert_array_equal(result.image_retrieval_rank, [1, 0])  # image 2 outscores image 0
    assert result.metrics["image_retrieval_recall@1"] == pytest.approx(0.5)
    assert result.metrics["text_retrieval_recall@1"] == 1.0


def test_flat_index_search_equals_exact_search():
    images, captions, owner = _random_retrieval_set(6)
    exact = retrieval_recall(images, captions, owner)
    flat = retrieval_recall(images, captions, owner, search="flat")
    assert flat.metrics == pytest.approx(exact.metrics)
    assert flat.index_recall_vs_exact is None and flat.search == "flat"
    assert flat.image_retrieval_rank is None


def test_ivf_probing_every_cell_is_exact_and_reports_full_index_recall():
    images, captions, owner = _random_retrieval_set(7, n_images=200)
    exact = retrieval_recall(images, captions, owner)
    ivf = retrieval_recall(images, captions, owner, search=IndexSpec(kind="ivf", nlist=4, nprobe=4))
    assert ivf.metrics == pytest.approx(exact.metrics)
    assert ivf.index_recall_vs_exact == {"image_retrieval": 1.0, "text_retrieval": 1.0}
    assert ivf.index_params["image_retrieval"] == {"nlist": 4, "nprobe": 4}
    assert ivf.params()["index_params"]["text_retrieval"] == {"nlist": 4, "nprobe": 4}


def test_approximate_index_recall_is_reported_and_drops_with_stingy_parameters():
    images, captions, owner = _random_retrieval_set(8, n_images=300, dim=32)
    exact = retrieval_recall(images, captions, owner)
    hnsw = retrieval_recall(images, captions, owner, search=IndexSpec(kind="hnsw", ef_search=256))
    assert min(hnsw.index_recall_vs_exact.values()) >= 0.99
    for key, value in exact.metrics.items():
        assert hnsw.metrics[key] == pytest.approx(value, abs=0.01), key
    stingy = retrieval_recall(images, captions, owner, search=IndexSpec(kind="ivf", nlist=16, nprobe=1))
    assert stingy.index_recall_vs_exact["image_retrieval"] < 0.9
    assert set(stingy.metrics) == set(exact.metrics)


def test_given_indexes_give_what_building_them_gives():
    images, captions, owner = _random_retrieval_set(9, n_images=200)
    spec = IndexSpec(kind="ivf", nlist=8, nprobe=2)
    built = retrieval_recall(images, captions, owner, search=spec, seed=3)
    indexes = {
        "image_retrieval": build_index_from_spec(images, spec, seed=3),
        "text_retrieval": build_index_from_spec(captions, spec, seed=3),
    }
    given = retrieval_recall_through(images, captions, owner, indexes)
    assert given.metrics == built.metrics
    assert given.index_recall_vs_exact == built.index_recall_vs_exact and given.index_params == built.index_params
    mixed = retrieval_recall_through(images, captions, owner, {**indexes, "text_retrieval": build_index(captions, "flat")})
    assert mixed.search == "flat+ivf" and set(mixed.index_recall_vs_exact) == {"image_retrieval"}
    with pytest.raises(AnalysisError, match="the text_retrieval index holds 200 x 24 vectors but the captions are"):
        retrieval_recall_through(images, captions, owner, {**indexes, "text_retrieval": indexes["image_retrieval"]})
    with pytest.raises(AnalysisError, match="indexes needs an 'image_retrieval' index"):
        retrieval_recall_through(images, captions, owner, {"text_retrieval": indexes["text_retrieval"]})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ks": (1, 4)}, "recall@4 needs at least 4 images; there are 3"),
        ({"caption_image": np.array([0, 1, 2])}, "caption_image must have one entry per caption"),
        ({"caption_image": np.array([0, 0, 1, 1, 2, 3])}, "caption_image row 5 is 3"),
        ({"caption_image": np.array([0, 0, 1, 1, 2, -1])}, "caption_image row 5 is -1"),
        ({"caption_image": np.array([0.0, 0, 1, 1, 2, 2])}, "caption_image must hold integer"),
        ({"caption_emb": CAPTIONS[:, :2]}, "image_emb has dimension 3 but caption_emb has 2"),
        ({"image_emb": np.zeros((3, 3), dtype=np.float32)}, "image_emb row 0 has zero norm"),
        ({"caption_emb": np.where(CAPTIONS == 0.6, np.nan, CAPTIONS)}, "caption_emb row 1 is not finite"),
        ({"image_emb": IMAGES[0]}, "image_emb must be a 2-D array"),
        ({"ks": ()}, "ks is empty"),
        ({"ks": (0, 1)}, "each of ks must be a positive integer, got 0"),
        ({"search": "annoy"}, "search must be 'exact'"),
        ({"search": IndexSpec(kind="flat", normalize=False)}, "search spec must score cosines"),
        ({"batch_size": 0}, "batch_size must be a positive integer"),
    ],
)
def test_caller_errors_raise_one_clear_analysis_error(kwargs, message):
    arguments = {"image_emb": IMAGES, "caption_emb": CAPTIONS, "caption_image": CAPTION_IMAGE, "ks": (1,)}
    arguments.update(kwargs)
    with pytest.raises(AnalysisError, match=message.replace("(", r"\(").replace("[", r"\[")):
        retrieval_recall(**arguments)


def test_k_above_the_caption_gallery_is_an_error():
    images = np.eye(4, dtype=np.float32)
    with pytest.raises(AnalysisError, match="recall@3 needs at least 3 captions; there are 2"):
        retrieval_recall(images, images[:2], np.array([0, 1]), ks=(3,))
