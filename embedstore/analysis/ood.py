"""Out-of-distribution detection: per-sample scores and the AUROC / AUPR / FPR@95 metrics.

Score direction: every score here is **higher for in-distribution (ID)** samples.

Metric direction (``positive``), recorded in every :class:`OODMetrics`:

- ``positive="id"`` (default; ODIN / MCM convention, Ming et al. 2022): ID is the positive class.
  FPR@95 is the fraction of OOD samples accepted (score >= t) at the largest threshold t that accepts
  at least 95% of ID samples.
- ``positive="ood"`` (OpenOOD ``openood/evaluators/metrics.py``): OOD is the positive class and the
  scores are negated. FPR@95 is the fraction of ID samples flagged as OOD (score <= t) at the
  smallest threshold t that flags at least 95% of OOD samples, computed exactly as OpenOOD does.

AUROC does not depend on ``positive``: AUROC of (ID positive, s) equals AUROC of (OOD positive, -s).
AUPR-In always takes ID as positive with score s and AUPR-Out OOD as positive with score -s; how the
area is summed follows the convention:

- ``positive="id"``: average precision (``sklearn.metrics.average_precision_score``, the step sum
  ``sum_n (R_n - R_{n-1}) P_n``), as MCM reports AUPR.
- ``positive="ood"``: OpenOOD's trapezoid ``auc(recall, precision)`` over ``precision_recall_curve``
  (which ends at the point recall 0, precision 1), so every column equals OpenOOD's.

The two sums agree closely on continuous scores and differ most with heavily tied scores. All metrics
are fractions in [0, 1] (OpenOOD prints percentages).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.special import logsumexp, softmax

from embedstore.errors import AnalysisError

try:
    import faiss
except ImportError:  # faiss-cpu / faiss-gpu are optional extras; knn_score falls back to numpy.
    faiss = None

Positive = Literal["id", "ood"]
#: How each convention sums the AUPRs (recorded with the results).
AUPR_SUMS: dict[str, str] = {"id": "average precision", "ood": "trapezoid (OpenOOD)"}
KnnBackend = Literal["auto", "faiss", "numpy"]

TPR_LEVEL = 0.95
MEAN_KEY = "mean"
# Cosine values may exceed [-1, 1] by float16 rounding of stored embeddings.
_COSINE_TOLERANCE = 1e-2
_FAISS_QUERY_BATCH = 8192
# The numpy kNN fallback holds at most this many similarities in memory at once.
_NUMPY_SIMILARITY_BLOCK = 2**24
_DISTANCE_BATCH = 8192
_MAHALANOBIS_QUERY_BATCH = 4096


@dataclass(frozen=True)
class OODMetrics:
    """Detection metrics of one ID set against one OOD set, as fractions in [0, 1].

    ``auroc``: area under the ROC curve (= ``roc_auc_score``). ``aupr_in`` / ``aupr_out``: area under the
    precision-recall curve with ID / OOD positive: average precision with ``positive="id"``, OpenOOD's
    trapezoid area with ``positive="ood"``. ``fpr95``: false-positive rate at 95% true-positive rate,
    whose meaning ``positive`` fixes (see the module docstring).
    """

    auroc: float
    aupr_in: float
    aupr_out: float
    fpr95: float
    positive: Positive


# ---------------------------------------------------------------------------------------------------
# Validation


def _check_matrix(values: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise AnalysisError(f"{name} must be a non-empty 2-D array, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise AnalysisError(f"{name} must hold real numbers, got dtype {array.dtype}")
    finite_rows = np.isfinite(array).all(axis=1)
    if not finite_rows.all():
        row = int(np.flatnonzero(~finite_rows)[0])
        raise AnalysisError(f"{name} row {row} holds a NaN or infinite value")
    return array


def _float64_matrix(values: np.ndarray, name: str) -> np.ndarray:
    return _check_matrix(values, name).astype(np.float64, copy=False)


def _check_scores(scores: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(scores)
    if array.ndim != 1 or array.shape[0] == 0:
        raise AnalysisError(f"{name} must be a non-empty 1-D array of scores, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise AnalysisError(f"{name} must hold real numbers, got dtype {array.dtype}")
    array = array.astype(np.float64, copy=False)
    finite = np.isfinite(array)
    if not finite.all():
        raise AnalysisError(f"{name} entry {int(np.flatnonzero(~finite)[0])} is NaN or infinite")
    return array


def _check_temperature(temperature: float) -> float:
    value = float(temperature)
    if not np.isfinite(value) or value <= 0.0:
        raise AnalysisError(f"temperature must be a finite number > 0, got {temperature!r}")
    return value


def _check_positive(positive: str) -> None:
    if positive not in ("id", "ood"):
        raise AnalysisError(f"positive must be 'id' or 'ood', got {positive!r}")


def _unit_rows(embeddings: np.ndarray, name: str, dtype: type[np.floating]) -> np.ndarray:
    """L2-normalised rows in ``dtype``, converting the (possibly float16) input only once."""
    array = np.array(_check_matrix(embeddings, name), dtype=dtype, order="C")
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    zero = norms[:, 0] == 0.0
    if zero.any():
        raise AnalysisError(f"{name} row {int(np.flatnonzero(zero)[0])} has zero norm and cannot be normalised")
    array /= norms
    return array


# ---------------------------------------------------------------------------------------------------
# Scores from logits (higher = more in-distribution)


def msp(logits: np.ndarray) -> np.ndarray:
    """Maximum softmax probability ``max_c softmax(z)_c`` per row (Hendrycks & Gimpel 2017); higher = ID."""
    return softmax(_float64_matrix(logits, "logits"), axis=1).max(axis=1)


def max_logit(logits: np.ndarray) -> np.ndarray:
    """Maximum logit ``max_c z_c`` per row (Hendrycks et al. 2022, OpenOOD ``mls``); higher = ID."""
    return _float64_matrix(logits, "logits").max(axis=1)


def energy(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Negative free energy ``T * logsumexp(z / T)`` per row (Liu et al. 2020, OpenOOD ``ebo``); higher = ID."""
    scale = _check_temperature(temperature)
    return scale * logsumexp(_float64_matrix(logits, "logits") / scale, axis=1)


def entropy_score(logits: np.ndarray) -> np.ndarray:
    """Negative predictive entropy ``sum_c p_c log p_c`` with ``p = softmax(z)``, in nats; higher = ID.

    The entropy is negated so that confident (low-entropy) predictions score high, like the other scores.
    """
    logits = _float64_matrix(logits, "logits")
    log_probs = logits - logsumexp(logits, axis=1, keepdims=True)
    return np.sum(np.exp(log_probs) * log_probs, axis=1)


def mcm(cosines: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Maximum concept matching ``max_c softmax(cos / T)_c`` per row (Ming et al. 2022); higher = ID.

    ``cosines`` are the RAW image-text cosine similarities ``[N, C]`` (normalised image embedding times
    normalised class embeddings), not CLIP logits: with ``T = 1`` (MCM's default) MCM equals
    ``max softmax(clip_logits / logit_scale)``. Values outside [-1, 1] (beyond float16 rounding) are rejected
    because they are almost certainly scaled logits.
    """
    cosines = _float64_matrix(cosines, "cosines")
    largest = float(np.abs(cosines).max())
    if largest > 1.0 + _COSINE_TOLERANCE:
        raise AnalysisError(
            f"cosines reach {largest:.4g}, outside [-1, 1]: MCM takes raw cosines, divide CLIP logits by logit_scale"
        )
    scale = _check_temperature(temperature)
    return softmax(cosines / scale, axis=1).max(axis=1)


# ---------------------------------------------------------------------------------------------------
# Scores from features (higher = more in-distribution)


def knn_score(
    id_train_emb: np.ndarray,
    test_emb: np.ndarray,
    k: int,
    backend: KnnBackend = "auto",
) -> np.ndarray:
    """Negative distance to the k-th nearest ID training neighbour on the unit sphere (Sun et al. 2022).

    Both sets are L2-normalised and the score is ``-||q - b_k||`` with ``b_k`` the bank vector of the
    k-th largest cosine to ``q``, i.e. ``-sqrt(2 - 2 cos_k)``; higher = ID. The distance is computed from
    the difference vector in float64 rather than from the float32 cosine, which would lose precision near
    duplicates. Sun et al. use k = 1000 with all of ImageNet's training set and k = 50 on CIFAR-10.
    ``backend="auto"`` uses faiss (``IndexFlatIP``, exact search) when installed and a batched numpy
    search otherwise.
    """
    if backend not in ("auto", "faiss", "numpy"):
        raise AnalysisError(f"backend must be 'auto', 'faiss' or 'numpy', got {backend!r}")
    if backend == "faiss" and faiss is None:
        raise AnalysisError("backend='faiss' but faiss is not installed (install faiss-cpu or faiss-gpu)")
    bank = _unit_rows(id_train_emb, "id_train_emb", np.float32)
    queries = _unit_rows(test_emb, "test_emb", np.float32)
    if bank.shape[1] != queries.shape[1]:
        raise AnalysisError(f"test_emb has {queries.shape[1]} dims but id_train_emb has {bank.shape[1]}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= bank.shape[0]:
        raise AnalysisError(f"k must be an integer in [1, {bank.shape[0]}] (the ID bank size), got {k!r}")
    use_faiss = backend == "faiss" or (backend == "auto" and faiss is not None)
    if use_faiss:
        neighbours = _kth_neighbours_faiss(bank, queries, int(k))
    else:
        neighbours = _kth_neighbours_numpy(bank, queries, int(k))
    scores = np.empty(queries.shape[0])
    for start in range(0, queries.shape[0], _DISTANCE_BATCH):
        stop = start + _DISTANCE_BATCH
        difference = queries[start:stop].astype(np.float64) - bank[neighbours[start:stop]]
        scores[start:stop] = -np.linalg.norm(difference, axis=1)
    return scores


def _kth_neighbours_faiss(bank: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Index into ``bank`` of each query's k-th largest inner product, by exact faiss search."""
    index = faiss.IndexFlatIP(bank.shape[1])
    index.add(bank)
    neighbours = np.empty(queries.shape[0], dtype=np.int64)
    for start in range(0, queries.shape[0], _FAISS_QUERY_BATCH):
        _, indices = index.search(queries[start : start + _FAISS_QUERY_BATCH], k)
        neighbours[start : start + _FAISS_QUERY_BATCH] = indices[:, k - 1]
    return neighbours


def _kth_neighbours_numpy(bank: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Index into ``bank`` of each query's k-th largest inner product, by batched matrix products."""
    batch = max(1, _NUMPY_SIMILARITY_BLOCK // bank.shape[0])
    kth_position = bank.shape[0] - k  # position of the k-th largest in an ascending partition
    neighbours = np.empty(queries.shape[0], dtype=np.int64)
    for start in range(0, queries.shape[0], batch):
        similarities = queries[start : start + batch] @ bank.T
        neighbours[start : start + batch] = np.argpartition(similarities, kth_position, axis=1)[:, kth_position]
    return neighbours


def mahalanobis_score(
    train_emb: np.ndarray,
    train_labels: np.ndarray,
    test_emb: np.ndarray,
    shrinkage: float = 0.0,
) -> np.ndarray:
    """Negative minimum squared Mahalanobis distance to the ID class means (Lee et al. 2018); higher = ID.

    On L2-normalised features: class means ``mu_c`` and one shared covariance
    ``S = (1/N) sum_i (x_i - mu_{y_i})(x_i - mu_{y_i})^T`` from the labelled ID split;
    ``score(x) = -min_c (x - mu_c)^T P (x - mu_c)`` with ``P`` the pseudo-inverse of
    ``(1 - a) S + a (tr(S)/D) I`` for shrinkage ``a`` in [0, 1] (``a = 0``: Lee et al.'s empirical
    covariance with a pseudo-inverse, which tolerates fewer samples than dimensions).
    """
    features = _unit_rows(train_emb, "train_emb", np.float64)
    queries = _unit_rows(test_emb, "test_emb", np.float64)
    if features.shape[1] != queries.shape[1]:
        raise AnalysisError(f"test_emb has {queries.shape[1]} dims but train_emb has {features.shape[1]}")
    labels = np.asarray(train_labels)
    if labels.shape != (features.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise AnalysisError(
            f"train_labels must be {features.shape[0]} integer class labels, got shape {labels.shape} "
            f"and dtype {labels.dtype}"
        )
    alpha = float(shrinkage)
    if not 0.0 <= alpha <= 1.0:
        raise AnalysisError(f"shrinkage must lie in [0, 1], got {shrinkage!r}")

    class_means, class_of_row = _class_means(features, labels)
    centred = features - class_means[class_of_row]
    covariance = centred.T @ centred / features.shape[0]
    dims = covariance.shape[0]
    covariance = (1.0 - alpha) * covariance + alpha * (np.trace(covariance) / dims) * np.eye(dims)
    precision = np.linalg.pinv(covariance, hermitian=True)

    mean_terms = np.einsum("cd,de,ce->c", class_means, precision, class_means)
    scores = np.empty(queries.shape[0])
    for start in range(0, queries.shape[0], _MAHALANOBIS_QUERY_BATCH):
        batch = queries[start : start + _MAHALANOBIS_QUERY_BATCH]
        projected = batch @ precision
        # (x - mu)^T P (x - mu) = x^T P x - 2 x^T P mu + mu^T P mu for every class at once.
        squared = np.sum(projected * batch, axis=1, keepdims=True) - 2.0 * projected @ class_means.T + mean_terms
        scores[start : start + _MAHALANOBIS_QUERY_BATCH] = -np.clip(squared.min(axis=1), 0.0, None)
    return scores


def _class_means(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-class means ``[C, D]`` over the distinct labels, and each row's index into them."""
    _, class_of_row, counts = np.unique(labels, return_inverse=True, return_counts=True)
    order = np.argsort(class_of_row, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    sums = np.add.reduceat(features[order], starts, axis=0)
    return sums / counts[:, None], class_of_row


# ---------------------------------------------------------------------------------------------------
# Metrics


def ood_metrics(id_scores: np.ndarray, ood_scores: np.ndarray, positive: Positive = "id") -> OODMetrics:
    """AUROC, AUPR-In, AUPR-Out and FPR@95 of scores that are higher for ID samples.

    All four come from one sort: at each distinct score t (accepting scores >= t, so tied scores are
    accepted together) the counts of ID and OOD samples accepted are the points of the ROC and
    precision-recall curves, as ``sklearn.metrics.roc_curve`` / ``precision_recall_curve`` build them.
    FPR@95 equals sklearn's exactly; AUROC and the AUPRs to within float summation order (~1e-15), as
    the tests check against sklearn and OpenOOD's formula.

    - AUROC: the trapezoid area under the ROC curve (= ``roc_auc_score``; ties count one half).
    - FPR@95 is the false-positive rate at the first ROC point whose true-positive rate is >= 0.95:

      - ``positive="id"`` (default, MCM convention): the fraction of OOD scores >= t at the largest
        threshold t keeping at least 95% of ID scores (>= t). The exact operating point, on the full curve.
      - ``positive="ood"`` (OpenOOD ``auc_and_fpr_recall``): ``roc_curve(is_ood, -scores)`` with sklearn's
        default thinning of collinear points (``drop_intermediate=True``), exactly as OpenOOD: the
        fraction of ID scores <= t at the smallest threshold t flagging at least 95% of OOD scores (<= t).
        Thinning can move the point past the exact one only when tied ID and OOD scores form collinear runs.

    Constant scores give AUROC 0.5 and FPR@95 1.0. MCM's own ``fpr_and_fdr_at_recall`` takes the recall
    closest to 95% rather than the first >= 95%, so it can differ slightly from ``positive="id"``.
    AUPR-In / AUPR-Out are average precision (``average_precision_score``) for ``positive="id"`` and
    OpenOOD's trapezoid ``auc(recall, precision)`` for ``positive="ood"`` (module doc).
    """
    _check_positive(positive)
    id_values = _check_scores(id_scores, "id_scores")
    ood_values = _check_scores(ood_scores, "ood_scores")
    ids_at, oods_at = _counts_per_distinct_score(id_values, ood_values)
    # Scores accepted as ID (>= t) from the highest t down; as OOD (<= t) from the lowest t up.
    ids_accepted, oods_accepted = np.cumsum(ids_at[::-1]), np.cumsum(oods_at[::-1])
    ids_flagged, oods_flagged = np.cumsum(ids_at), np.cumsum(oods_at)
    if positive == "id":
        fpr95 = _fpr_at_tpr(ids_accepted, oods_accepted, thin_collinear_points=False)
        area = _average_precision
    else:
        fpr95 = _fpr_at_tpr(oods_flagged, ids_flagged, thin_collinear_points=True)
        area = _trapezoid_aupr
    return OODMetrics(
        auroc=_auroc(ids_accepted, oods_accepted),
        aupr_in=area(ids_accepted, oods_accepted),
        aupr_out=area(oods_flagged, ids_flagged),
        fpr95=fpr95,
        positive=positive,
    )


def _counts_per_distinct_score(id_values: np.ndarray, ood_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """How many ID and how many OOD scores equal each distinct score, in ascending order of score."""
    scores = np.concatenate([id_values, ood_values])
    order = np.argsort(scores, kind="stable")
    ordered = scores[order]
    starts_group = np.empty(ordered.size, dtype=bool)
    starts_group[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=starts_group[1:])
    group = np.cumsum(starts_group) - 1
    groups = int(group[-1]) + 1
    is_id = order < id_values.size
    ids_at = np.bincount(group[is_id], minlength=groups)
    return ids_at, np.bincount(group, minlength=groups) - ids_at


def _auroc(positives_accepted: np.ndarray, negatives_accepted: np.ndarray) -> float:
    """Trapezoid area under the ROC curve through (0, 0) and the cumulative counts at each threshold."""
    tpr = np.concatenate([[0], positives_accepted]) / positives_accepted[-1]
    fpr = np.concatenate([[0], negatives_accepted]) / negatives_accepted[-1]
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1])) / 2.0)


def _average_precision(positives_accepted: np.ndarray, negatives_accepted: np.ndarray) -> float:
    """Average precision ``sum_n (R_n - R_{n-1}) P_n`` over the thresholds, from recall 0 (MCM's AUPR)."""
    precision = positives_accepted / (positives_accepted + negatives_accepted)
    recall_steps = np.diff(np.concatenate([[0], positives_accepted])) / positives_accepted[-1]
    return float(np.sum(recall_steps * precision))


def _trapezoid_aupr(positives_accepted: np.ndarray, negatives_accepted: np.ndarray) -> float:
    """OpenOOD's AUPR: the trapezoid area under the precision-recall curve from (recall 0, precision 1)."""
    precision = np.concatenate([[1.0], positives_accepted / (positives_accepted + negatives_accepted)])
    recall = np.concatenate([[0], positives_accepted]) / positives_accepted[-1]
    return float(np.sum(np.diff(recall) * (precision[1:] + precision[:-1])) / 2.0)


def _fpr_at_tpr(positives_accepted: np.ndarray, negatives_accepted: np.ndarray, thin_collinear_points: bool) -> float:
    """False-positive rate at the first ROC point whose true-positive rate is >= ``TPR_LEVEL``.

    ``thin_collinear_points`` first drops the points that sklearn's ``roc_curve(drop_intermediate=True)``
    drops: those where neither count's second difference is non-zero (the ends are always kept).
    """
    if thin_collinear_points and positives_accepted.size > 2:
        bends = np.logical_or(np.diff(positives_accepted, 2), np.diff(negatives_accepted, 2))
        kept = np.concatenate([[True], bends, [True]])
        positives_accepted, negatives_accepted = positives_accepted[kept], negatives_accepted[kept]
    tpr = positives_accepted / positives_accepted[-1]
    return float(negatives_accepted[int(np.argmax(tpr >= TPR_LEVEL))] / negatives_accepted[-1])


def evaluate_ood(
    id_scores: np.ndarray,
    ood_sets: Mapping[str, np.ndarray],
    positive: Positive = "id",
) -> dict[str, OODMetrics]:
    """:func:`ood_metrics` of the ID scores against each named OOD set, plus ``"mean"`` over the sets.

    The ``"mean"`` entry averages each metric over the OOD sets with equal weight (OpenOOD's mean row),
    whatever their sizes. All scores must be higher for ID samples.
    """
    _check_positive(positive)
    if not ood_sets:
        raise AnalysisError("ood_sets is empty: give at least one named set of OOD scores")
    if MEAN_KEY in ood_sets:
        raise AnalysisError(f"ood_sets may not contain a set named {MEAN_KEY!r}: that key holds the mean")
    id_values = _check_scores(id_scores, "id_scores")
    results = {
        name: ood_metrics(id_values, _check_scores(scores, f"ood_sets[{name!r}]"), positive)
        for name, scores in ood_sets.items()
    }
    results[MEAN_KEY] = OODMetrics(
        auroc=float(np.mean([metrics.auroc for metrics in results.values()])),
        aupr_in=float(np.mean([metrics.aupr_in for metrics in results.values()])),
        aupr_out=float(np.mean([metrics.aupr_out for metrics in results.values()])),
        fpr95=float(np.mean([metrics.fpr95 for metrics in results.values()])),
        positive=positive,
    )
    return results
