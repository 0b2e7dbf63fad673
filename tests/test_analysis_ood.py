"""Tests of embedstore.analysis.ood: scores on hand examples, metrics against sklearn and OpenOOD's formula."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from embedstore.analysis import ood
from embedstore.analysis.ood import (
    energy,
    entropy_score,
    evaluate_ood,
    knn_score,
    mahalanobis_score,
    max_logit,
    mcm,
    msp,
    ood_metrics,
)
from embedstore.errors import AnalysisError


def _random_scores(seed: int, decimals: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    id_scores = rng.normal(1.0, 1.0, size=400)
    ood_scores = rng.normal(0.0, 1.0, size=300)
    if decimals is not None:  # coarse rounding makes many ties within and across the two sets
        id_scores, ood_scores = np.round(id_scores, decimals), np.round(ood_scores, decimals)
    return id_scores, ood_scores


def _openood_fpr95(id_scores: np.ndarray, ood_scores: np.ndarray) -> float:
    """OpenOOD's ``auc_and_fpr_recall``: OOD positive, ``roc_curve(ood, -conf)``, first tpr >= 0.95."""
    conf = np.concatenate([id_scores, ood_scores])
    is_ood = np.concatenate([np.zeros(id_scores.size), np.ones(ood_scores.size)])
    fpr, tpr, _ = roc_curve(is_ood, -conf)
    return float(fpr[np.argmax(tpr >= 0.95)])



def _openood_auprs(id_scores: np.ndarray, ood_scores: np.ndarray) -> tuple[float, float]:
    """OpenOOD's AUPR-In / AUPR-Out by brute force: (recall, precision) at every distinct threshold
    (accept score >= t), plus the point (0, 1), joined by trapezoids in order of recall."""

    def area(positives: np.ndarray, negatives: np.ndarray) -> float:
        points = [(0.0, 1.0)]
        for t in np.unique(np.concatenate([positives, negatives]))[::-1]:
            tp, fp = np.sum(positives >= t), np.sum(negatives >= t)
            points.append((tp / positives.size, tp / (tp + fp)))
        recall, precision = np.array(points).T
        return float(np.sum(np.diff(recall) * (precision[1:] + precision[:-1]) / 2))

    return area(id_scores, ood_scores), area(-ood_scores, -id_scores)

def _id_positive_fpr95_by_brute_force(id_scores: np.ndarray, ood_scores: np.ndarray) -> float:
    """Fraction of OOD >= t for the largest candidate t that keeps at least 95% of ID scores (>= t)."""
    candidates = np.unique(np.concatenate([id_scores, ood_scores]))
    keeping = [t for t in candidates if np.sum(id_scores >= t) >= 0.95 * id_scores.size]
    return float(np.mean(ood_scores >= max(keeping)))


def _clusters(seed: int, dims: int = 16) -> dict[str, np.ndarray]:
    """Two labelled ID Gaussian clusters and one OOD cluster, well separated in direction."""
    rng = np.random.default_rng(seed)
    centres = 3.0 * np.eye(dims)[:3]
    noise = 0.3

    def draw(centre: np.ndarray, n: int) -> np.ndarray:
        return centre + noise * rng.normal(size=(n, dims))

    train = np.concatenate([draw(centres[0], 100), draw(centres[1], 100)])
    return {
        "train": train,
        "train_labels": np.repeat([0, 1], 100),
        "id_test": np.concatenate([draw(centres[0], 40), draw(centres[1], 40)]),
        "ood_test": draw(centres[2], 60),
    }


# --- scores ----------------------------------------------------------------------------------------


def test_logit_scores_on_a_hand_example() -> None:
    logits = np.array([[2.0, 0.0], [0.0, 0.0]])
    np.testing.assert_allclose(msp(logits), [1 / (1 + np.exp(-2.0)), 0.5])
    np.testing.assert_allclose(max_logit(logits), [2.0, 0.0])
    np.testing.assert_allclose(energy(logits), [np.log(np.exp(2.0) + 1.0), np.log(2.0)])
    np.testing.assert_allclose(energy(logits, temperature=2.0), [2.0 * np.log(np.e + 1.0), 2.0 * np.log(2.0)])
    p = 1 / (1 + np.exp(-2.0))
    np.testing.assert_allclose(entropy_score(logits), [p * np.log(p) + (1 - p) * np.log(1 - p), -np.log(2.0)])


def test_logit_scores_are_stable_for_huge_logits() -> None:
    logits = np.array([[1000.0, 0.0, -1000.0]], dtype=np.float32)
    assert msp(logits)[0] == 1.0
    assert energy(logits)[0] == pytest.approx(1000.0)
    assert entropy_score(logits)[0] == pytest.approx(0.0, abs=1e-12)


def test_confident_rows_score_higher_on_every_logit_score() -> None:
    confident, unsure = np.array([[5.0, 0.0, 0.0]]), np.array([[0.5, 0.4, 0.3]])
    for score in (msp, max_logit, energy, entropy_score):
        assert score(confident)[0] > score(unsure)[0], score.__name__


def test_mcm_on_hand_cosines() -> None:
    cosines = np.array([[0.3, 0.1], [0.2, 0.2]])
    np.testing.assert_allclose(mcm(cosines), [1 / (1 + np.exp(-0.2)), 0.5])
    np.testing.assert_allclose(mcm(cosines, temperature=0.01), [1 / (1 + np.exp(-20.0)), 0.5])
    # With T = 1 on cosines MCM equals MSP of CLIP logits divided by their scale.
    clip_logits = 100.0 * cosines
    np.testing.assert_allclose(mcm(cosines), msp(clip_logits / 100.0))


def test_mcm_rejects_scaled_logits() -> None:
    with pytest.raises(AnalysisError, match="raw cosines"):
        mcm(np.array([[30.0, 10.0]]))


def test_knn_score_on_a_hand_example() -> None:
    # Unit circle: the bank at 0, 60 and 90 degrees; a query at 0 degrees (unnormalised on purpose).
    bank = np.array([[1.0, 0.0], [0.5, np.sqrt(3) / 2], [0.0, 2.0]])
    query = np.array([[3.0, 0.0]])
    for backend in ("numpy", "faiss") if ood.faiss is not None else ("numpy",):
        np.testing.assert_allclose(knn_score(bank, query, k=1, backend=backend), [0.0], atol=1e-7)
        np.testing.assert_allclose(knn_score(bank, query, k=2, backend=backend), [-1.0], atol=1e-6)
        np.testing.assert_allclose(knn_score(bank, query, k=3, backend=backend), [-np.sqrt(2.0)], atol=1e-6)


def test_knn_faiss_and_numpy_backends_agree() -> None:
    pytest.importorskip("faiss")
    rng = np.random.default_rng(4)
    bank, queries = rng.normal(size=(300, 32)), rng.normal(size=(50, 32)).astype(np.float16)
    np.testing.assert_allclose(
        knn_score(bank, queries, k=7, backend="faiss"), knn_score(bank, queries, k=7, backend="numpy"), atol=1e-5
    )


def test_knn_numpy_backend_batches_queries(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(6)
    bank, queries = rng.normal(size=(40, 8)), rng.normal(size=(25, 8))
    whole = knn_score(bank, queries, k=3, backend="numpy")
    monkeypatch.setattr(ood, "_NUMPY_SIMILARITY_BLOCK", 40 * 4)  # four queries per batch
    np.testing.assert_allclose(knn_score(bank, queries, k=3, backend="numpy"), whole, atol=1e-7)


@pytest.mark.parametrize("backend", ["numpy", "auto"])
def test_knn_separates_two_clusters(backend: str) -> None:
    data = _clusters(seed=1)
    metrics = ood_metrics(
        knn_score(data["train"], data["id_test"], k=5, backend=backend),
        knn_score(data["train"], data["ood_test"], k=5, backend=backend),
    )
    assert metrics.auroc > 0.95


def test_mahalanobis_separates_two_clusters() -> None:
    data = _clusters(seed=2)
    metrics = ood_metrics(
        mahalanobis_score(data["train"], data["train_labels"], data["id_test"]),
        mahalanobis_score(data["train"], data["train_labels"], data["ood_test"]),
    )
    assert metrics.auroc > 0.95


@pytest.mark.parametrize("shrinkage", [0.0, 0.3])
def test_mahalanobis_matches_a_direct_computation(shrinkage: float, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(8)
    train, labels, test = rng.normal(size=(60, 5)), rng.integers(3, 6, size=60), rng.normal(size=(9, 5))
    unit_train = train / np.linalg.norm(train, axis=1, keepdims=True)
    unit_test = test / np.linalg.norm(test, axis=1, keepdims=True)
    means = np.stack([unit_train[labels == c].mean(axis=0) for c in (3, 4, 5)])
    centred = unit_train - means[labels - 3]
    covariance = centred.T @ centred / 60
    covariance = (1 - shrinkage) * covariance + shrinkage * np.trace(covariance) / 5 * np.eye(5)
    precision = np.linalg.pinv(covariance)
    expected = [-min((x - m) @ precision @ (x - m) for m in means) for x in unit_test]
    monkeypatch.setattr(ood, "_MAHALANOBIS_QUERY_BATCH", 4)  # exercise the query batching
    np.testing.assert_allclose(mahalanobis_score(train, labels, test, shrinkage=shrinkage), expected, rtol=1e-8)


def test_mahalanobis_handles_fewer_samples_than_dimensions() -> None:
    rng = np.random.default_rng(9)
    scores = mahalanobis_score(rng.normal(size=(4, 10)), np.array([0, 0, 1, 1]), rng.normal(size=(3, 10)))
    assert scores.shape == (3,) and np.isfinite(scores).all() and (scores <= 0).all()


# --- metrics ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("decimals", [None, 1, 0])
@pytest.mark.parametrize("positive", ["id", "ood"])
def test_auroc_and_aupr_match_sklearn(decimals: int | None, positive: str) -> None:
    id_scores, ood_scores = _random_scores(seed=3, decimals=decimals)
    scores = np.concatenate([id_scores, ood_scores])
    is_id = np.concatenate([np.ones(id_scores.size), np.zeros(ood_scores.size)])
    metrics = ood_metrics(id_scores, ood_scores, positive=positive)  # type: ignore[arg-type]
    assert metrics.positive == positive
    assert metrics.auroc == pytest.approx(roc_auc_score(is_id, scores), abs=1e-12)
    if positive == "id":  # MCM's average precision
        assert metrics.aupr_in == pytest.approx(average_precision_score(is_id, scores), abs=1e-12)
        assert metrics.aupr_out == pytest.approx(average_precision_score(1 - is_id, -scores), abs=1e-12)
    else:
        assert (metrics.aupr_in, metrics.aupr_out) == pytest.approx(_openood_auprs(id_scores, ood_scores), abs=1e-12)


def test_every_metric_matches_sklearn_on_small_and_tied_score_sets() -> None:
    # The metrics come from one sort of our own; sklearn (and OpenOOD's calls into it) is the reference.
    from sklearn.metrics import auc, precision_recall_curve

    rng = np.random.default_rng(11)
    for _ in range(150):
        n_id, n_ood = rng.integers(1, 12, size=2)
        levels = int(rng.integers(1, 6))  # few levels: heavy ties within and across the sets
        id_scores = rng.integers(0, levels, size=n_id).astype(float)
        ood_scores = rng.integers(0, levels, size=n_ood).astype(float) - float(rng.integers(0, 2))
        scores = np.concatenate([id_scores, ood_scores])
        is_id = np.concatenate([np.ones(n_id), np.zeros(n_ood)])
        by_id = ood_metrics(id_scores, ood_scores, "id")
        by_ood = ood_metrics(id_scores, ood_scores, "ood")
        assert by_id.auroc == pytest.approx(roc_auc_score(is_id, scores), abs=1e-12) and by_ood.auroc == by_id.auroc
        assert by_id.aupr_in == pytest.approx(average_precision_score(is_id, scores), abs=1e-12)
        assert by_id.aupr_out == pytest.approx(average_precision_score(1 - is_id, -scores), abs=1e-12)
        assert by_id.fpr95 == pytest.approx(_id_positive_fpr95_by_brute_force(id_scores, ood_scores), abs=1e-12)
        precision, recall, _ = precision_recall_curve(is_id, scores)
        assert by_ood.aupr_in == pytest.approx(auc(recall, precision), abs=1e-12)
        precision, recall, _ = precision_recall_curve(1 - is_id, -scores)
        assert by_ood.aupr_out == pytest.approx(auc(recall, precision), abs=1e-12)
        assert by_ood.fpr95 == _openood_fpr95(id_scores, ood_scores)


def test_the_two_aupr_sums_differ_on_tied_scores() -> None:
    id_scores, ood_scores = _random_scores(seed=3, decimals=0)
    by_id, by_ood = ood_metrics(id_scores, ood_scores, "id"), ood_metrics(id_scores, ood_scores, "ood")
    assert abs(by_id.aupr_in - by_ood.aupr_in) > 0.01 and abs(by_id.aupr_out - by_ood.aupr_out) > 0.01
    assert by_id.auroc == by_ood.auroc


@pytest.mark.parametrize("decimals", [None, 1, 0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fpr95_matches_openood_and_the_exact_id_positive_point(decimals: int | None, seed: int) -> None:
    id_scores, ood_scores = _random_scores(seed, decimals)
    assert ood_metrics(id_scores, ood_scores, "ood").fpr95 == _openood_fpr95(id_scores, ood_scores)
    assert ood_metrics(id_scores, ood_scores, "id").fpr95 == pytest.approx(
        _id_positive_fpr95_by_brute_force(id_scores, ood_scores), abs=1e-12
    )


def test_ood_positive_fpr95_keeps_openoods_thinned_roc_point() -> None:
    # Negated scores of OOD (positive) then ID give ROC points (fps, tps) = (0, 17), (2, 18), (4, 19),
    # (6, 20): sklearn drops the collinear middle points, so OpenOOD reports 6/46 where the exact
    # operating point (19 of 20 OOD caught) is 4/46.
    id_scores = np.array([0.0, 0.0, 1.0, 1.0, 2.0, 2.0] + [9.0] * 40)
    ood_scores = np.array([-5.0] * 17 + [0.0, 1.0, 2.0])
    assert _openood_fpr95(id_scores, ood_scores) == pytest.approx(6 / 46)
    assert ood_metrics(id_scores, ood_scores, "ood").fpr95 == pytest.approx(6 / 46)


def test_fpr95_hand_example_in_both_conventions() -> None:
    # 20 ID scores 1..20 and 20 OOD scores -9.5..9.5 (higher = ID).
    id_scores = np.arange(1.0, 21.0)
    ood_scores = np.arange(-9.5, 10.0)
    # ID positive: keeping 95% of ID (19 of 20) needs t = 2; OOD scores >= 2 are 2.5..9.5 -> 8 of 20.
    assert ood_metrics(id_scores, ood_scores, "id").fpr95 == pytest.approx(8 / 20)
    # OOD positive: flagging 95% of OOD (19 of 20 <= t) needs t = 8.5; ID scores <= 8.5 are 1..8 -> 8 of 20.
    assert ood_metrics(id_scores, ood_scores, "ood").fpr95 == pytest.approx(8 / 20)
    # Ties: ID threshold 10 accepts only the OOD 20; OOD threshold 5 flags only the ID 0.
    id_scores = np.array([10.0] * 19 + [0.0])
    ood_scores = np.array([5.0] * 19 + [20.0])
    assert ood_metrics(id_scores, ood_scores, "id").fpr95 == pytest.approx(1 / 20)
    assert ood_metrics(id_scores, ood_scores, "ood").fpr95 == pytest.approx(1 / 20)
    # The conventions differ: keeping 19 of 20 ID now needs threshold 0, which accepts every OOD sample.
    id_scores = np.array([10.0] * 18 + [0.0, 0.0])
    assert ood_metrics(id_scores, ood_scores, "id").fpr95 == pytest.approx(1.0)
    assert ood_metrics(id_scores, ood_scores, "ood").fpr95 == pytest.approx(2 / 20)


def test_scores_tied_with_the_threshold_count_as_accepted() -> None:
    id_scores = np.arange(1.0, 21.0)  # threshold for 95% ID recall is 2
    ood_scores = np.array([2.0, 2.0, 1.9, 0.0])
    assert ood_metrics(id_scores, ood_scores, "id").fpr95 == pytest.approx(0.5)


def test_constant_scores_give_chance_auroc() -> None:
    metrics = ood_metrics(np.ones(30), np.ones(10))
    assert metrics.auroc == 0.5
    assert metrics.fpr95 == 1.0
    assert metrics.aupr_in == pytest.approx(0.75)
    assert metrics.aupr_out == pytest.approx(0.25)
    openood = ood_metrics(np.ones(30), np.ones(10), "ood")
    assert openood.fpr95 == 1.0  # the trapezoid runs from (recall 0, precision 1) to (1, base rate)
    assert (openood.aupr_in, openood.aupr_out) == pytest.approx(((1 + 0.75) / 2, (1 + 0.25) / 2))


def test_perfect_separation() -> None:
    metrics = ood_metrics(np.array([3.0, 4.0, 5.0]), np.array([0.0, 1.0]))
    assert (metrics.auroc, metrics.aupr_in, metrics.aupr_out, metrics.fpr95) == (1.0, 1.0, 1.0, 0.0)


def test_evaluate_ood_adds_the_mean_over_sets() -> None:
    id_scores, near = _random_scores(seed=7)
    far = near - 3.0
    results = evaluate_ood(id_scores, {"near": near, "far": far}, positive="ood")
    assert list(results) == ["near", "far", "mean"]
    assert results["far"].auroc > results["near"].auroc
    assert results["near"] == ood_metrics(id_scores, near, "ood")
    for field in ("auroc", "aupr_in", "aupr_out", "fpr95"):
        expected = (getattr(results["near"], field) + getattr(results["far"], field)) / 2
        assert getattr(results["mean"], field) == pytest.approx(expected)
    assert results["mean"].positive == "ood"


# --- bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("id_scores", "ood_scores", "message"),
    [
        (np.array([]), np.array([1.0]), "id_scores must be a non-empty 1-D"),
        (np.array([1.0]), np.zeros((2, 2)), "ood_scores must be a non-empty 1-D"),
        (np.array([1.0, np.nan]), np.array([1.0]), "id_scores entry 1 is NaN"),
        (np.array([1.0]), np.array([np.inf]), "ood_scores entry 0"),
        (np.array(["a"]), np.array([1.0]), "real numbers"),
    ],
)
def test_bad_scores_are_rejected(id_scores: np.ndarray, ood_scores: np.ndarray, message: str) -> None:
    with pytest.raises(AnalysisError, match=message):
        ood_metrics(id_scores, ood_scores)


def test_bad_positive_and_sets_are_rejected() -> None:
    with pytest.raises(AnalysisError, match="positive"):
        ood_metrics(np.ones(3), np.zeros(3), positive="in")  # type: ignore[arg-type]
    with pytest.raises(AnalysisError, match="empty"):
        evaluate_ood(np.ones(3), {})
    with pytest.raises(AnalysisError, match="'mean'"):
        evaluate_ood(np.ones(3), {"mean": np.zeros(3)})
    with pytest.raises(AnalysisError, match=r"ood_sets\['sun'\] entry 2"):
        evaluate_ood(np.ones(3), {"sun": np.array([0.0, 1.0, np.nan])})


def test_bad_logits_are_rejected() -> None:
    with pytest.raises(AnalysisError, match="logits row 1"):
        msp(np.array([[0.0, 1.0], [np.nan, 0.0]]))
    with pytest.raises(AnalysisError, match="2-D"):
        energy(np.zeros(3))
    with pytest.raises(AnalysisError, match="temperature"):
        energy(np.zeros((2, 2)), temperature=0.0)


def test_bad_embeddings_are_rejected() -> None:
    bank = np.eye(4)
    with pytest.raises(AnalysisError, match="k must be"):
        knn_score(bank, bank, k=5)
    with pytest.raises(AnalysisError, match="k must be"):
        knn_score(bank, bank, k=0)
    with pytest.raises(AnalysisError, match="test_emb row 1 has zero norm"):
        knn_score(bank, np.array([[1.0, 0, 0, 0], [0, 0, 0, 0]]), k=1)
    with pytest.raises(AnalysisError, match="dims"):
        knn_score(bank, np.ones((2, 3)), k=1)
    with pytest.raises(AnalysisError, match="backend"):
        knn_score(bank, bank, k=1, backend="annoy")  # type: ignore[arg-type]
    with pytest.raises(AnalysisError, match="train_labels"):
        mahalanobis_score(bank, np.array([0, 1]), bank)
    with pytest.raises(AnalysisError, match="train_labels"):
        mahalanobis_score(bank, np.array([0.0, 1.0, 0.0, 1.0]), bank)
    with pytest.raises(AnalysisError, match="shrinkage"):
        mahalanobis_score(bank, np.array([0, 1, 0, 1]), bank, shrinkage=1.5)


def test_knn_faiss_backend_without_faiss_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ood, "faiss", None)
    with pytest.raises(AnalysisError, match="faiss is not installed"):
        knn_score(np.eye(3), np.eye(3), k=1, backend="faiss")
    np.testing.assert_allclose(knn_score(np.eye(3), np.eye(3), k=1), 0.0, atol=1e-6)
