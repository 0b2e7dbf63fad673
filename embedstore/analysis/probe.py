"""Linear probe on cached image embeddings: multinomial logistic regression, C chosen on validation.

Protocol:

1. Every feature vector is L2-normalised (``x / ||x||_2``), as CLIP_benchmark's ``Featurizer`` does
   with its default ``normalize=True``; the store keeps raw encoder outputs, so this happens here.
2. For each inverse regularisation strength C in ``Cs`` (default ``logspace(-4, 4, 9)``), an
   ``sklearn.linear_model.LogisticRegression`` (L2 penalty, ``lbfgs``, multinomial loss, which is
   sklearn's behaviour for more than two classes with lbfgs) is trained on the train split and scored
   (top-1) on the validation split. The best C wins; ties go to the smallest C (strongest penalty).
3. The probe is refitted with the best C on train + validation (``refit_on="train+val"``, the default:
   the final probe sees every row that was not held out for testing) or on train alone
   (``refit_on="train"``), and evaluated on every set of ``eval_sets``.
4. An evaluation set with a class subset (``eval_class_subsets``, e.g. ImageNet-R's 200 of 1000
   classes, labels given in the training classes) is scored on the probe's outputs sliced to the
   subset's classes: the decision is the argmax over those columns only, as imagenet-testbed's
   ``class_sublist`` slices a classifier's logits and as the other analyses score such sets.

This differs from CLIP_benchmark (``metrics/linear_probe.py``), which trains a torch linear layer with
AdamW and a cosine schedule over a weight-decay grid ``logspace(-6, 2, 97)`` searched coarse to fine
(OpenAI's CLIP paper, appendix A.3); numbers are comparable in spirit, not digit for digit. The
lbfgs solve is fast on thousands of samples; ImageNet-scale training sets take minutes per C.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from embedstore.errors import AnalysisError

if TYPE_CHECKING:
    from sklearn.linear_model import LogisticRegression

DEFAULT_CS: tuple[float, ...] = tuple(float(c) for c in np.logspace(-4, 4, 9))
"""Inverse regularisation strengths tried on the validation split: 1e-4, 1e-3, ..., 1e4."""

REFIT_SPLITS = ("train+val", "train")

ArrayLike = Sequence[Sequence[float]] | np.ndarray


@dataclass(frozen=True)
class ProbeResult:
    """Outcome of `linear_probe`.

    ``val_accuracy`` is the validation top-1 of the probe trained on train alone with ``best_C``;
    ``accuracies[name]`` the top-1 of the refitted probe on each evaluation set (fractions).
    """

    best_C: float
    val_accuracy: float
    accuracies: dict[str, float]
    val_accuracy_by_C: dict[float, float]
    refit_on: str
    n_classes: int
    seed: int


def linear_probe(
    train_x: ArrayLike,
    train_y: Sequence[int] | np.ndarray,
    val_x: ArrayLike,
    val_y: Sequence[int] | np.ndarray,
    eval_sets: Mapping[str, tuple[ArrayLike, Sequence[int] | np.ndarray]],
    Cs: Sequence[float] = DEFAULT_CS,
    seed: int = 0,
    *,
    refit_on: str = "train+val",
    max_iter: int = 1000,
    eval_class_subsets: Mapping[str, Sequence[int]] | None = None,
) -> ProbeResult:
    """Train a linear probe on ``train_x`` (choosing C on ``val_x``) and report top-1 per eval set.

    Features are [N, D] arrays (any float dtype), labels 1-D integer class ids; ``eval_sets`` maps a
    name (e.g. "imagenet-val", "imagenet-sketch") to its (features, labels). ``eval_class_subsets``
    maps an eval set's name to the training class ids it is scored over (step 4 of the module doc).
    ``seed`` is passed to sklearn as ``random_state`` and recorded.
    """
    if refit_on not in REFIT_SPLITS:
        raise AnalysisError(f"refit_on: {refit_on!r} is not one of {', '.join(REFIT_SPLITS)}")
    grid = _validate_cs(Cs)
    x_train, y_train = _prepare_split(train_x, train_y, "train")
    dim = x_train.shape[1]
    x_val, y_val = _prepare_split(val_x, val_y, "val", dim)
    evaluations = {name: _prepare_split(x, y, f"eval_sets[{name!r}]", dim) for name, (x, y) in eval_sets.items()}
    subsets = dict(eval_class_subsets or {})
    unknown = sorted(set(subsets) - set(evaluations))
    if unknown:
        raise AnalysisError(f"eval_class_subsets: {unknown[0]!r} is not one of the eval sets")
    n_classes = int(np.unique(y_train).size)
    if n_classes < 2:
        raise AnalysisError("train_y: a probe needs at least two classes in the training split")

    val_accuracy_by_c: dict[float, float] = {}
    for c in grid:
        probe = _fit(x_train, y_train, c, seed, max_iter)
        val_accuracy_by_c[c] = _top1(probe, x_val, y_val)
    best_c = max(grid, key=lambda c: (val_accuracy_by_c[c], -c))

    if refit_on == "train+val":
        final = _fit(np.concatenate([x_train, x_val]), np.concatenate([y_train, y_val]), best_c, seed, max_iter)
    else:
        final = _fit(x_train, y_train, best_c, seed, max_iter)
    return ProbeResult(
        best_C=best_c,
        val_accuracy=val_accuracy_by_c[best_c],
        accuracies={name: _top1(final, x, y, subsets.get(name)) for name, (x, y) in evaluations.items()},
        val_accuracy_by_C=val_accuracy_by_c,
        refit_on=refit_on,
        n_classes=n_classes,
        seed=int(seed),
    )


def l2_normalize_rows(features: ArrayLike, name: str = "features") -> np.ndarray:
    """``x / ||x||_2`` per row, in float64; a zero row cannot be normalised and raises."""
    array = np.asarray(features, dtype=np.float64)
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    zero = np.flatnonzero(norms[:, 0] == 0.0)
    if zero.size:
        raise AnalysisError(f"{name}: row {int(zero[0])} is all zeros and cannot be L2-normalised")
    return array / norms


SINGLE_THREAD_BLAS_BELOW = 2e9
"""Multiply-adds of one ``X @ W`` (rows x dims x classes) below which a fit runs BLAS on one thread.
lbfgs multiplies small matrices many times, and BLAS threads cost more than they gain there: on
2 cores, nine fits of 2,500 x 512 x 100 took 3.7 s on one thread against 8.7 s on two (10,000 x 512
x 100: 1.5 s against 2.5 s), while 20,000 x 768 x 1,000 took 51 s on one against 37 s on two."""


def _fit(x: np.ndarray, y: np.ndarray, c: float, seed: int, max_iter: int) -> LogisticRegression:
    from sklearn.linear_model import LogisticRegression  # 1.5 s to import: only when fitting
    from threadpoolctl import threadpool_limits

    probe = LogisticRegression(C=c, solver="lbfgs", max_iter=max_iter, random_state=seed)
    if x.shape[0] * x.shape[1] * np.unique(y).size >= SINGLE_THREAD_BLAS_BELOW:
        return probe.fit(x, y)
    with threadpool_limits(1, user_api="blas"):
        return probe.fit(x, y)


def _top1(probe: LogisticRegression, x: np.ndarray, y: np.ndarray, subset: Sequence[int] | None = None) -> float:
    """Top-1 accuracy; with ``subset`` the argmax runs over those classes' columns only (first
    maximum on ties, as ``predict``). Subset classes the probe never saw in training have no column."""
    if subset is None:
        return float(np.mean(probe.predict(x) == y))
    columns = np.flatnonzero(np.isin(probe.classes_, np.asarray(subset)))
    if not columns.size:
        raise AnalysisError("eval_class_subsets: none of the subset's classes occurs in the training labels")
    scores = probe.predict_proba(x)[:, columns]  # softmax of the decision function: the same argmax
    return float(np.mean(probe.classes_[columns][scores.argmax(axis=1)] == y))


def _validate_cs(cs: Sequence[float]) -> tuple[float, ...]:
    grid = tuple(float(c) for c in cs)
    if not grid:
        raise AnalysisError("Cs: no regularisation strength given")
    if not all(np.isfinite(c) and c > 0.0 for c in grid):
        raise AnalysisError(f"Cs: every C must be a positive finite number, got {list(grid)}")
    return grid


def _prepare_split(
    features: ArrayLike, labels: Sequence[int] | np.ndarray, split: str, dim: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(features)
    y = np.asarray(labels)
    if x.ndim != 2 or x.shape[0] == 0:
        raise AnalysisError(f"{split}: expected features of shape [N, D] with N >= 1, got {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise AnalysisError(f"{split}: features have dimension {x.shape[1]}, the training split {dim}")
    if y.shape != (x.shape[0],):
        raise AnalysisError(f"{split}: {y.size} labels for {x.shape[0]} feature rows")
    if not np.issubdtype(y.dtype, np.integer):
        raise AnalysisError(f"{split}: labels must be integer class ids, got dtype {y.dtype}")
    if not np.all(np.isfinite(x)):
        raise AnalysisError(f"{split}: features contain NaN or infinite values")
    return l2_normalize_rows(x, split), y
