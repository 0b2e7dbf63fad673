"""Linear probe: beats chance on separable embeddings, C chosen on validation, refit split, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest

from embedstore.analysis.probe import DEFAULT_CS, l2_normalize_rows, linear_probe
from embedstore.errors import AnalysisError


def _clusters(rng: np.random.Generator, n_per_class: int, n_classes: int = 4, dim: int = 16, noise: float = 0.3):
    centers = np.eye(n_classes, dim) * 3.0
    labels = np.repeat(np.arange(n_classes), n_per_class)
    features = centers[labels] + rng.normal(0.0, noise, (labels.size, dim))
    return features.astype(np.float16), labels


def test_probe_beats_chance_on_separable_embeddings() -> None:
    rng = np.random.default_rng(0)
    train, val, test = _clusters(rng, 20), _clusters(rng, 10), _clusters(rng, 25)
    shifted = (test[0] + rng.normal(0.0, 1.5, test[0].shape), test[1])  # a harder "shift" set
    result = linear_probe(*train, *val, {"test": test, "shifted": shifted}, seed=0)
    assert result.accuracies["test"] > 0.95
    assert 0.25 < result.accuracies["shifted"] <= result.accuracies["test"]
    assert result.best_C in DEFAULT_CS and set(result.val_accuracy_by_C) == set(DEFAULT_CS)
    assert result.val_accuracy == result.val_accuracy_by_C[result.best_C] == max(result.val_accuracy_by_C.values())
    assert (result.refit_on, result.n_classes, result.seed) == ("train+val", 4, 0)



def test_a_class_subset_eval_set_is_decided_over_the_subset_columns_only() -> None:
    """Eval points lean towards class 5 but lie nearer class 0 than 1 or 2: over all six classes
    the probe says 5 (wrong), over the subset {0, 1, 2} it says 0 (right)."""
    rng = np.random.default_rng(5)
    train, val = _clusters(rng, 20, n_classes=6), _clusters(rng, 10, n_classes=6)
    leaning = np.zeros((10, 16))
    leaning[:, 0], leaning[:, 5] = 2.0, 3.0
    leaning += rng.normal(0.0, 0.05, leaning.shape)
    labels = np.zeros(10, dtype=np.int64)
    sets = {"all": (leaning, labels), "subset": (leaning, labels)}
    result = linear_probe(*train, *val, sets, seed=0, eval_class_subsets={"subset": [0, 1, 2]})
    assert (result.accuracies["all"], result.accuracies["subset"]) == (0.0, 1.0)
    with pytest.raises(AnalysisError, match="'nowhere' is not one of the eval sets"):
        linear_probe(*train, *val, sets, eval_class_subsets={"nowhere": [0]})
    with pytest.raises(AnalysisError, match="none of the subset's classes occurs in the training labels"):
        linear_probe(*train, *val, sets, eval_class_subsets={"subset": [7, 8]})

def test_ties_on_validation_go_to_the_smallest_c() -> None:
    rng = np.random.default_rng(1)
    train, val = _clusters(rng, 10, noise=0.05), _clusters(rng, 5, noise=0.05)
    result = linear_probe(*train, *val, {}, Cs=[10.0, 1.0, 100.0])
    assert result.val_accuracy_by_C == {10.0: 1.0, 1.0: 1.0, 100.0: 1.0}
    assert result.best_C == 1.0


def test_refit_on_train_only_ignores_validation_labels() -> None:
    rng = np.random.default_rng(2)
    train, test = _clusters(rng, 15), _clusters(rng, 15)
    val_x, val_y = _clusters(rng, 15)
    flipped = (val_y + 1) % 4  # validation labels that would poison a train+val refit
    train_only = linear_probe(*train, val_x, flipped, {"test": test}, Cs=[1.0], refit_on="train")
    with_val = linear_probe(*train, val_x, flipped, {"test": test}, Cs=[1.0], refit_on="train+val")
    assert train_only.accuracies["test"] > 0.9
    assert with_val.accuracies["test"] < train_only.accuracies["test"]


def test_features_are_l2_normalised_so_scale_does_not_matter() -> None:
    rng = np.random.default_rng(3)
    (tx, ty), (vx, vy), (ex, ey) = _clusters(rng, 10), _clusters(rng, 5), _clusters(rng, 10)
    tx, vx, ex = (x.astype(np.float64) for x in (tx, vx, ex))
    base = linear_probe(tx, ty, vx, vy, {"e": (ex, ey)}, Cs=[0.1, 1.0])
    scaled = linear_probe(tx * 7.0, ty, vx * 0.01, vy, {"e": (ex * 300.0, ey)}, Cs=[0.1, 1.0])
    assert base == scaled
    normalised = l2_normalize_rows(np.array([[3.0, 4.0], [0.0, 2.0]]))
    assert normalised.tolist() == [[0.6, 0.8], [0.0, 1.0]]


def test_bad_inputs() -> None:
    rng = np.random.default_rng(4)
    (tx, ty), (vx, vy) = _clusters(rng, 3), _clusters(rng, 2)
    with pytest.raises(AnalysisError, match="two classes"):
        linear_probe(tx, np.zeros_like(ty), vx, vy, {})
    with pytest.raises(AnalysisError, match="val: features have dimension 8"):
        linear_probe(tx, ty, vx[:, :8], vy, {})
    with pytest.raises(AnalysisError, match=r"eval_sets\['x'\]: 3 labels for 8 feature rows"):
        linear_probe(tx, ty, vx, vy, {"x": (vx, vy[:3])})
    with pytest.raises(AnalysisError, match="integer class ids"):
        linear_probe(tx, ty.astype(float), vx, vy, {})
    with pytest.raises(AnalysisError, match="row 0 is all zeros"):
        linear_probe(np.zeros_like(tx), ty, vx, vy, {})
    with pytest.raises(AnalysisError, match="Cs"):
        linear_probe(tx, ty, vx, vy, {}, Cs=[0.0])
    with pytest.raises(AnalysisError, match="refit_on"):
        linear_probe(tx, ty, vx, vy, {}, refit_on="all")
    with pytest.raises(AnalysisError, match="shape"):
        linear_probe(tx[0], ty, vx, vy, {})


def test_small_probes_fit_with_one_blas_thread(monkeypatch):
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_info

    from embedstore.analysis import probe

    fit, seen = LogisticRegression.fit, []

    def spy(self, x, y, *args, **kwargs):
        seen.append(max((i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"), default=1))
        return fit(self, x, y, *args, **kwargs)

    monkeypatch.setattr(LogisticRegression, "fit", spy)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 8)), np.arange(40) % 4
    probe._fit(x, y, 1.0, 0, 100)
    monkeypatch.setattr(probe, "SINGLE_THREAD_BLAS_BELOW", 0)  # as a large training set would
    probe._fit(x, y, 1.0, 0, 100)
    default = max((i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"), default=1)
    assert seen == [1, default]
