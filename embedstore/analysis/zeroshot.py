"""Zero-shot classification from cached embeddings: prompt-ensemble classifiers, logits, rank metrics.

Inputs are the arrays the store keeps, as the encoders returned them (float16 or float32, not
normalised): image embeddings ``image_emb [N, D]``, text embeddings ``text_emb [C, T, D]`` (class c
under template t) and integer labels ``[N]``. Conventions (CLIP_benchmark
``metrics/zeroshot_classification.py``; open_clip ``build_zero_shot_classifier``):

- Classifier for a template set S: ``w_c = normalize(mean_{t in S} normalize(e_{c,t}))``, one unit
  row per class (`classifier_weights`).
- Cosines ``cos[i, c] = normalize(x_i) . w_c``; logits ``logit_scale * cos + logit_bias``
  (`zeroshot_cosines`, `zeroshot_logits`). Raw cosines are what MCM scores (Ming et al. 2022).
- Rank metrics (top-k accuracy, per-class accuracy, mean per-class recall) depend only on the order of
  each row's scores. A positive ``logit_scale`` and a scalar ``logit_bias`` keep that order, so the
  evaluation functions rank cosines and take neither.
- Order and ties: class j is ahead of the label y in a row when its score is greater, or equal with
  ``j < y``: the order of a stable descending sort, so a top-1 hit is exactly ``argmax == y``
  (numpy's first-maximum rule). A row is a top-k hit when fewer than k classes are ahead of its label.
- acc1/acc5 are fractions of rows; acc5 is NaN when there are fewer than 5 classes (CLIP_benchmark).
  Mean per-class recall is the mean over the classes present in the labels of the fraction of their
  rows predicted correctly, i.e. ``sklearn.metrics.balanced_accuracy_score(labels, argmax)``.
- Class subsets (ImageNet-R/A: 200 of the 1000 ImageNet classes): ``class_subset[j]`` is the column,
  in the full label space of the classifier or logits, of the dataset's class j; the scores are
  restricted to those columns, in that order (imagenet-testbed ``class_sublist``). **Labels are in the
  subset's space**: label j means class ``class_subset[j]``, as a dataset's own labels index its own
  class names (``embedstore.sources.Dataset.class_subset``). Per-class results follow the order of
  ``class_subset``.

Arrays are processed in blocks of ``block_rows`` rows in float32 (never float64), so an evaluation of
50,000 x 1,000 classes x 512 dims holds one block of scores at a time. ``image_emb`` (and ``logits``)
may be any array supporting ``shape`` and row slicing ``a[i:j]``: numpy arrays, memmaps, Zarr or HDF5
arrays are read one block at a time.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from embedstore.errors import AnalysisError

DEFAULT_BLOCK_ROWS = 8192
"""Rows scored per block: 8192 x 1000 classes of float32 scores is 33 MB."""


class RowSliceable(Protocol):
    """An array read block by block: numpy array, memmap, Zarr or HDF5 array."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    def __getitem__(self, key: Any) -> Any: ...


@dataclass(frozen=True, eq=False)
class ZeroShotResult:
    """Rank metrics of one classifier on one dataset.

    ``acc1``, ``acc5`` and ``mean_per_class_recall`` are fractions in [0, 1]; ``acc5`` is NaN with
    fewer than 5 classes. ``per_class_accuracy[j]`` is the top-1 accuracy on the rows labelled with
    the j-th evaluated class (``class_subset[j]`` when a subset is given), NaN for classes no row
    carries. ``n`` is the number of rows evaluated.
    """

    acc1: float
    acc5: float
    mean_per_class_recall: float
    per_class_accuracy: np.ndarray
    n: int

    def metrics(self) -> dict[str, float | int]:
        """The scalar metrics, under CLIP_benchmark's result keys, plus the row count."""
        return {
            "acc1": self.acc1,
            "acc5": self.acc5,
            "mean_per_class_recall": self.mean_per_class_recall,
            "n": self.n,
        }


# --------------------------------------------------------------------------- normalisation


def _check_block_rows(block_rows: int) -> None:
    if isinstance(block_rows, bool) or not isinstance(block_rows, (int, np.integer)) or block_rows < 1:
        raise AnalysisError(f"block_rows must be a positive integer, got {block_rows!r}")


def _check_matrix(array: RowSliceable, name: str, ndim: int = 2) -> tuple[int, ...]:
    shape = getattr(array, "shape", None)
    if shape is None or len(shape) != ndim:
        raise AnalysisError(f"{name} must be a {ndim}-D array, got shape {shape}")
    if shape[0] == 0:
        raise AnalysisError(f"{name} has no rows")
    return tuple(int(s) for s in shape)


def _normalize_in_place(block: np.ndarray, row_numbers: Sequence[int] | np.ndarray, name: str) -> np.ndarray:
    """Scale each row of a float32 ``block`` to unit L2 norm; ``row_numbers`` name rows in errors."""
    norms = np.sqrt(np.einsum("ij,ij->i", block, block))
    bad = ~(np.isfinite(norms) & (norms > 0))
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise AnalysisError(f"{name} row {int(row_numbers[first])} has norm {norms[first]}: cannot normalise it")
    block /= norms[:, None]
    return block


def l2_normalize_rows(array: np.ndarray, name: str = "array") -> np.ndarray:
    """Return ``array [n, D]`` as float32 with unit-L2-norm rows (a new array).

    Raises AnalysisError naming the first row whose norm is zero or not finite (NaN/inf entries).
    """
    block = np.array(array, dtype=np.float32, copy=True)
    if block.ndim != 2:
        raise AnalysisError(f"{name} must be a 2-D array, got shape {block.shape}")
    return _normalize_in_place(block, range(block.shape[0]), name)


def normalized_row_blocks(
    array: RowSliceable, block_rows: int = DEFAULT_BLOCK_ROWS, name: str = "image_emb"
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(first_row, block)`` over ``array [N, D]``: float32 blocks of unit rows, read in order."""
    _check_block_rows(block_rows)
    n_rows = _check_matrix(array, name)[0]
    for start in range(0, n_rows, block_rows):
        stop = min(start + block_rows, n_rows)
        block = np.array(array[start:stop], dtype=np.float32, copy=True)
        yield start, _normalize_in_place(block, range(start, stop), name)


def gather_normalized_rows(
    array: RowSliceable, rows: np.ndarray, block_rows: int = DEFAULT_BLOCK_ROWS, name: str = "image_emb"
) -> np.ndarray:
    """Rows ``rows`` (sorted, unique) of ``array [N, D]`` as one float32 array of unit rows.

    Reads only the blocks that hold a requested row, with plain row slices (no fancy indexing on
    ``array``, which Zarr and HDF5 arrays do not all support).
    """
    _check_block_rows(block_rows)
    n_rows, dim = _check_matrix(array, name)
    out = np.empty((len(rows), dim), dtype=np.float32)
    for start in range(0, n_rows, block_rows):
        stop = min(start + block_rows, n_rows)
        lo, hi = np.searchsorted(rows, [start, stop])
        if lo == hi:
            continue
        wanted = rows[lo:hi]
        out[lo:hi] = np.asarray(array[start:stop])[wanted - start]
    return _normalize_in_place(out, rows, name)


# --------------------------------------------------------------------------- classifiers


def _check_text_emb(text_emb: RowSliceable) -> tuple[int, int, int]:
    shape = getattr(text_emb, "shape", None)
    if shape is None or len(shape) != 3 or min(shape) == 0:
        raise AnalysisError(f"text_emb must be a non-empty [classes, templates, dim] array, got shape {shape}")
    n_classes, n_templates, dim = (int(s) for s in shape)
    return n_classes, n_templates, dim


def check_template_indices(template_indices: Sequence[int] | None, n_templates: int) -> list[int]:
    """Validate a template subset against ``n_templates``; None means all templates, in order.

    Raises AnalysisError for an empty subset, an index out of range or a repeated index (a repeat
    would silently weight one template twice in the ensemble).
    """
    if template_indices is None:
        return list(range(n_templates))
    indices = [int(t) for t in np.asarray(template_indices, dtype=np.int64).ravel()]
    if not indices:
        raise AnalysisError("template_indices is empty: an ensemble needs at least one template")
    seen: set[int] = set()
    for t in indices:
        if not 0 <= t < n_templates:
            raise AnalysisError(f"template_indices has {t}, outside the {n_templates} templates of text_emb")
        if t in seen:
            raise AnalysisError(f"template_indices repeats template {t}")
        seen.add(t)
    return indices


TEXT_BLOCK_CLASSES = 128
"""Classes of ``text_emb`` read and normalised at a time (128 x 80 templates x 512 dims float32 is 21 MB)."""


def _text_block(
    text_emb: RowSliceable, classes: slice, template_indices: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """``text_emb[classes][:, template_indices]`` as float32 ``[c, S, D]`` and its inverse norms ``[c, S]``.

    Reads the class rows with one contiguous slice; a zero or non-finite text embedding is an
    AnalysisError naming its class and template.
    """
    block = np.asarray(text_emb[classes])
    if list(template_indices) != list(range(block.shape[1])):
        block = block[:, np.asarray(template_indices, dtype=np.int64)]
    block = block.astype(np.float32)
    norms = np.sqrt(np.einsum("ctd,ctd->ct", block, block))
    bad = ~(np.isfinite(norms) & (norms > 0))
    if bad.any():
        c, s = (int(i) for i in np.argwhere(bad)[0])
        raise AnalysisError(
            f"text_emb[class {classes.start + c}, template {template_indices[s]}] has norm {norms[c, s]}: "
            "cannot normalise it"
        )
    return block, 1.0 / norms


def classifier_weights(text_emb: RowSliceable, template_indices: Sequence[int] | None = None) -> np.ndarray:
    """Zero-shot classifier ``[C, D]`` float32 of the template set S (all templates when None).

    ``w_c = normalize(mean_{t in S} normalize(e_{c,t}))`` as open_clip's ``build_zero_shot_classifier``
    and CLIP_benchmark's ``zero_shot_classifier`` (which return its transpose ``[D, C]``). Reads
    ``text_emb`` in blocks of `TEXT_BLOCK_CLASSES` classes.
    """
    n_classes, n_templates, dim = _check_text_emb(text_emb)
    indices = check_template_indices(template_indices, n_templates)
    total = np.empty((n_classes, dim), dtype=np.float32)
    for start in range(0, n_classes, TEXT_BLOCK_CLASSES):
        classes = slice(start, min(start + TEXT_BLOCK_CLASSES, n_classes))
        block, inverse_norms = _text_block(text_emb, classes, indices)
        # sum_t e_{c,t} / |e_{c,t}| as one batched [1, S] x [S, D] product per class;
        # normalize(mean) == normalize(sum): the 1/|S| factor cancels.
        total[classes] = np.matmul(inverse_norms[:, None, :], block)[:, 0, :]
    return _normalize_in_place(total, range(n_classes), "classifier_weights (mean of unit template embeddings)")


def template_class_embeddings(
    text_emb: RowSliceable,
    template_indices: Sequence[int] | None = None,
    class_subset: Sequence[int] | None = None,
) -> np.ndarray:
    """Unit class embeddings per template, float32 ``[S, C, D]``: entry ``[s, c]`` is ``normalize(e_{c, S[s]})``.

    All templates when ``template_indices`` is None; only the classes of ``class_subset`` (in its
    order) when one is given. Each template alone is then the classifier ``out[s]``.
    """
    n_classes, n_templates, dim = _check_text_emb(text_emb)
    indices = check_template_indices(template_indices, n_templates)
    subset = check_class_subset(class_subset, n_classes)
    out = np.empty((len(indices), n_classes, dim), dtype=np.float32)
    for start in range(0, n_classes, TEXT_BLOCK_CLASSES):
        classes = slice(start, min(start + TEXT_BLOCK_CLASSES, n_classes))
        block, inverse_norms = _text_block(text_emb, classes, indices)
        block *= inverse_norms[:, :, None]
        out[:, classes] = block.transpose(1, 0, 2)
    return out if subset is None else np.ascontiguousarray(out[:, subset])


def _check_weights(weights: np.ndarray, dim: int) -> np.ndarray:
    weights = np.asarray(weights, dtype=np.float32)
    if weights.ndim != 2 or weights.shape[0] == 0 or weights.shape[1] != dim:
        raise AnalysisError(f"weights must be [classes, {dim}] to match image_emb, got shape {weights.shape}")
    if not np.isfinite(weights).all():
        raise AnalysisError("weights contain NaN or inf")
    return weights


def zeroshot_cosines(image_emb: RowSliceable, weights: np.ndarray, block_rows: int = DEFAULT_BLOCK_ROWS) -> np.ndarray:
    """Raw cosines ``normalize(x_i) . w_c`` as float32 ``[N, C]`` (the scores MCM softmaxes).

    ``weights [C, D]`` is used as given (from `classifier_weights` its rows are unit; an average of
    several classifiers, as CLIP_benchmark's ``--load_clfs`` makes, is not re-normalised).
    """
    n_rows, dim = _check_matrix(image_emb, "image_emb")
    weights = _check_weights(weights, dim)
    out = np.empty((n_rows, weights.shape[0]), dtype=np.float32)
    for start, block in normalized_row_blocks(image_emb, block_rows):
        np.matmul(block, weights.T, out=out[start : start + len(block)])
    return out


def zeroshot_logits(
    image_emb: RowSliceable,
    weights: np.ndarray,
    logit_scale: float,
    logit_bias: float | None = None,
    block_rows: int = DEFAULT_BLOCK_ROWS,
) -> np.ndarray:
    """Logits ``logit_scale * cos + logit_bias`` as float32 ``[N, C]`` (cosines from `zeroshot_cosines`).

    ``logit_scale`` is the model's exp'd scale (about 100 for trained CLIP, 14.3 at random init);
    ``logit_bias`` is SigLIP's scalar bias, absent (0) for CLIP.
    """
    scale = float(logit_scale)
    if not np.isfinite(scale) or scale <= 0:
        raise AnalysisError(f"logit_scale must be a positive finite number, got {logit_scale!r}")
    bias = 0.0 if logit_bias is None else float(logit_bias)
    if not np.isfinite(bias):
        raise AnalysisError(f"logit_bias must be finite, got {logit_bias!r}")
    logits = zeroshot_cosines(image_emb, weights, block_rows)
    logits *= np.float32(scale)
    if bias:
        logits += np.float32(bias)
    return logits


# --------------------------------------------------------------------------- labels and subsets


def check_labels(labels: Any, n_rows: int, n_classes: int) -> np.ndarray:
    """Labels as int64 ``[n_rows]``, each in ``[0, n_classes)``; AnalysisError naming the first bad row."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != n_rows:
        raise AnalysisError(f"labels must be 1-D with one label per row ({n_rows}), got shape {labels.shape}")
    if labels.dtype == bool or not np.issubdtype(labels.dtype, np.integer):
        raise AnalysisError(f"labels must be integers, got dtype {labels.dtype}")
    labels = labels.astype(np.int64, copy=False)
    bad = (labels < 0) | (labels >= n_classes)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise AnalysisError(f"labels row {row} is {labels[row]}, outside the {n_classes} classes")
    return labels


def check_class_subset(class_subset: Sequence[int] | None, n_classes: int) -> np.ndarray | None:
    """A class subset as an int64 array of unique column indices in ``[0, n_classes)`` (None stays None)."""
    if class_subset is None:
        return None
    subset = np.asarray(class_subset)
    if subset.ndim != 1 or len(subset) == 0:
        raise AnalysisError(f"class_subset must be a non-empty 1-D list of class indices, got shape {subset.shape}")
    if subset.dtype == bool or not np.issubdtype(subset.dtype, np.integer):
        raise AnalysisError(f"class_subset must hold integer class indices, got dtype {subset.dtype}")
    subset = subset.astype(np.int64)
    bad = (subset < 0) | (subset >= n_classes)
    if bad.any():
        raise AnalysisError(f"class_subset has {subset[np.flatnonzero(bad)[0]]}, outside the {n_classes} classes")
    unique, counts = np.unique(subset, return_counts=True)
    if (counts > 1).any():
        raise AnalysisError(f"class_subset repeats class {unique[np.flatnonzero(counts > 1)[0]]}")
    return subset


def check_evaluated_labels(
    labels: Any, n_rows: int, n_classes: int, class_subset: Sequence[int] | None
) -> tuple[np.ndarray | None, np.ndarray]:
    """Validate a class subset of a ``n_classes`` label space and the labels evaluated against it.

    Returns ``(subset or None, labels)``; labels index the subset when one is given (label j is class
    ``class_subset[j]``), otherwise the full label space.
    """
    subset = check_class_subset(class_subset, n_classes)
    if subset is None:
        return None, check_labels(labels, n_rows, n_classes)
    try:
        return subset, check_labels(labels, n_rows, len(subset))
    except AnalysisError as error:
        raise AnalysisError(f"{error} of class_subset (labels index class_subset)") from None


# --------------------------------------------------------------------------- rank metrics


def label_ranks(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Number of classes ahead of each row's label (0 = top-1 hit), ties broken by lower class index."""
    rows = np.arange(len(labels))
    label_scores = scores[rows, labels][:, None]
    ranks = np.count_nonzero(scores > label_scores, axis=1)
    tied = scores == label_scores
    tie_rows = np.flatnonzero(np.count_nonzero(tied, axis=1) > 1)  # the label itself always ties once
    if len(tie_rows):
        earlier = np.arange(scores.shape[1]) < labels[tie_rows, None]
        ranks[tie_rows] += np.count_nonzero(tied[tie_rows] & earlier, axis=1)
    return ranks


class RankTally:
    """Streaming counts behind `ZeroShotResult`: feed score blocks with `update`, read `result`."""

    def __init__(self, n_classes: int) -> None:
        self.n_classes = n_classes
        self.n = 0
        self.top1_hits = 0
        self.top5_hits = 0
        self.class_hits = np.zeros(n_classes, dtype=np.int64)
        self.class_rows = np.zeros(n_classes, dtype=np.int64)

    def update(self, scores: np.ndarray, labels: np.ndarray) -> None:
        """Count one block: ``scores [b, C]`` (finite) and labels ``[b]`` in ``[0, C)``."""
        ranks = label_ranks(scores, labels)
        top1 = ranks == 0
        self.n += len(labels)
        self.top1_hits += int(np.count_nonzero(top1))
        self.top5_hits += int(np.count_nonzero(ranks < 5))
        self.class_hits += np.bincount(labels[top1], minlength=self.n_classes)
        self.class_rows += np.bincount(labels, minlength=self.n_classes)

    def result(self) -> ZeroShotResult:
        if self.n == 0:
            raise AnalysisError("no rows were evaluated")
        with np.errstate(invalid="ignore", divide="ignore"):
            per_class = np.where(self.class_rows > 0, self.class_hits / np.maximum(self.class_rows, 1), np.nan)
        present = self.class_rows > 0
        return ZeroShotResult(
            acc1=self.top1_hits / self.n,
            acc5=self.top5_hits / self.n if self.n_classes >= 5 else float("nan"),
            mean_per_class_recall=float(per_class[present].mean()),
            per_class_accuracy=per_class,
            n=self.n,
        )


def _checked_scores(logits: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(logits)
    if scores.ndim != 2 or scores.shape[0] == 0 or scores.shape[1] == 0:
        raise AnalysisError(f"logits must be a non-empty [rows, classes] array, got shape {scores.shape}")
    if scores.dtype == np.float16:
        scores = scores.astype(np.float32)
    _check_finite_rows(scores, 0, "logits")
    return scores, check_labels(labels, scores.shape[0], scores.shape[1])


def _check_finite_rows(scores: np.ndarray, first_row: int, name: str) -> None:
    finite = np.isfinite(scores).all(axis=1)
    if not finite.all():
        raise AnalysisError(f"{name} row {first_row + int(np.flatnonzero(~finite)[0])} has NaN or inf")


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of rows whose label is among the k highest scores (ties: lower class index first)."""
    scores, labels = _checked_scores(logits, labels)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= scores.shape[1]:
        raise AnalysisError(f"k must be an integer in [1, {scores.shape[1]}] (the number of classes), got {k!r}")
    return float(np.count_nonzero(label_ranks(scores, labels) < k) / len(labels))


def acc1(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy: the fraction of rows whose argmax is the label."""
    return topk_accuracy(logits, labels, 1)


def acc5(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-5 accuracy; NaN when there are fewer than 5 classes (CLIP_benchmark's convention)."""
    if np.shape(logits)[-1] < 5:
        _checked_scores(logits, labels)
        return float("nan")
    return topk_accuracy(logits, labels, 5)


def per_class_accuracy(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Top-1 accuracy on each class's rows, float64 ``[C]``; NaN for classes no row is labelled with."""
    scores, labels = _checked_scores(logits, labels)
    tally = RankTally(scores.shape[1])
    tally.update(scores, labels)
    return tally.result().per_class_accuracy


def mean_per_class_recall(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean over the classes present in ``labels`` of their top-1 recall (= balanced accuracy of argmax)."""
    per_class = per_class_accuracy(logits, labels)
    return float(np.nanmean(per_class))


# --------------------------------------------------------------------------- streaming evaluation


def evaluate_classifiers(
    image_emb: RowSliceable,
    classifiers: Mapping[str, np.ndarray],
    labels: Any,
    class_subset: Sequence[int] | None = None,
    block_rows: int = DEFAULT_BLOCK_ROWS,
) -> dict[str, ZeroShotResult]:
    """Rank metrics of several classifiers ``{name: weights [C, D]}`` in one pass over ``image_emb``.

    Each block of images is read and normalised once and scored by every classifier; with a
    ``class_subset`` only the subset's weight rows are used (the same as slicing the logits' columns).
    """
    if not classifiers:
        raise AnalysisError("no classifiers to evaluate")
    n_rows, dim = _check_matrix(image_emb, "image_emb")
    checked = {name: _check_weights(w, dim) for name, w in classifiers.items()}
    n_classes = {w.shape[0] for w in checked.values()}
    if len(n_classes) != 1:
        raise AnalysisError(f"classifiers disagree on the number of classes: {sorted(n_classes)}")
    subset, targets = check_evaluated_labels(labels, n_rows, n_classes.pop(), class_subset)
    if subset is not None:
        checked = {name: w[subset] for name, w in checked.items()}
    tallies = {name: RankTally(w.shape[0]) for name, w in checked.items()}
    for start, block in normalized_row_blocks(image_emb, block_rows):
        block_labels = targets[start : start + len(block)]
        for name, weights in checked.items():
            tallies[name].update(block @ weights.T, block_labels)
    return {name: tally.result() for name, tally in tallies.items()}


def evaluate_zeroshot(
    image_emb: RowSliceable,
    text_emb: RowSliceable,
    labels: Any,
    template_indices: Sequence[int] | None = None,
    class_subset: Sequence[int] | None = None,
    block_rows: int = DEFAULT_BLOCK_ROWS,
) -> ZeroShotResult:
    """Zero-shot acc1, acc5, mean per-class recall and per-class accuracy of a prompt ensemble.

    The classifier is `classifier_weights` (text_emb, template_indices); images are normalised and
    scored block by block. No ``logit_scale``/``logit_bias`` is taken: they do not change any rank
    metric (see the module docstring); use `zeroshot_logits` where calibrated logits are needed.
    """
    image_dim = _check_matrix(image_emb, "image_emb")[1]
    text_dim = _check_text_emb(text_emb)[2]
    if image_dim != text_dim:
        raise AnalysisError(f"image_emb dim {image_dim} differs from text_emb dim {text_dim}")
    weights = classifier_weights(text_emb, template_indices)
    return evaluate_classifiers(image_emb, {"classifier": weights}, labels, class_subset, block_rows)["classifier"]


def evaluate_logits(
    logits: RowSliceable,
    labels: Any,
    class_subset: Sequence[int] | None = None,
    block_rows: int = DEFAULT_BLOCK_ROWS,
) -> ZeroShotResult:
    """Rank metrics of precomputed logits ``[N, C]`` (a classifier head, or stored zero-shot logits).

    With a ``class_subset`` the logits' columns are sliced to it before ranking (imagenet-testbed);
    labels index the subset. Read block by block; NaN or inf in a row is an error.
    """
    _check_block_rows(block_rows)
    n_rows, n_full = _check_matrix(logits, "logits")
    subset, targets = check_evaluated_labels(labels, n_rows, n_full, class_subset)
    tally = RankTally(n_full if subset is None else len(subset))
    for start in range(0, n_rows, block_rows):
        stop = min(start + block_rows, n_rows)
        scores = np.asarray(logits[start:stop])
        if scores.dtype == np.float16:
            scores = scores.astype(np.float32)
        _check_finite_rows(scores, start, "logits")
        if subset is not None:
            scores = scores[:, subset]
        tally.update(scores, targets[start:stop])
    return tally.result()
