"""Prompt (template) studies from cached per-template text embeddings.

Because the store keeps the text embedding of every class under every template, ``text_emb [C, T, D]``,
any prompt ensemble is a cheap function of cached arrays (REFERENCES §7): the classifier of a template
set S is ``w_c = normalize(sum_{t in S} normalize(e_{c,t}))`` (`zeroshot.classifier_weights`). This
module compares template sets, scores each template alone, and repeats the greedy forward selection
with which OpenAI picked 7 of its 80 ImageNet templates (CLIP repository, notebook
``Prompt_Engineering_for_ImageNet.ipynb``; open_clip's ``SIMPLE_IMAGENET_TEMPLATES``).

Accuracies are top-1 fractions in [0, 1], computed on cosines (a positive logit scale and a scalar
bias do not change an argmax), with `zeroshot`'s tie rule and class-subset convention (labels index
the subset). Templates are strings with a ``{c}`` placeholder for the class name
(CLIP_benchmark's convention).
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from embedstore.analysis.zeroshot import (
    DEFAULT_BLOCK_ROWS,
    RowSliceable,
    ZeroShotResult,
    check_evaluated_labels,
    check_template_indices,
    classifier_weights,
    evaluate_classifiers,
    gather_normalized_rows,
    l2_normalize_rows,
    normalized_row_blocks,
    template_class_embeddings,
)
from embedstore.errors import AnalysisError

CLASS_PLACEHOLDER = "{c}"


@dataclass(frozen=True)
class SelectionResult:
    """Greedy forward selection of templates.

    ``order[k]`` is the template added at step k; ``select_acc[k]`` and ``report_acc[k]`` are the
    top-1 accuracies of the ensemble ``order[:k + 1]`` on the selection rows (which chose it) and on
    the disjoint report rows (an unbiased estimate of that ensemble's accuracy).
    """

    order: list[int]
    select_acc: list[float]
    report_acc: list[float]


def validate_templates(templates: Sequence[str]) -> list[str]:
    """Check a template list: non-empty, unique strings, each formatting with exactly the ``{c}`` field.

    Raises AnalysisError naming the first offending template (missing ``{c}``, another field such as
    OpenAI's ``{}``, unbalanced braces, or a repeat). Returns the templates as a list.
    """
    if isinstance(templates, str) or not isinstance(templates, Sequence) or len(templates) == 0:
        raise AnalysisError("templates must be a non-empty list of strings with a {c} placeholder")
    seen: set[str] = set()
    for index, template in enumerate(templates):
        if not isinstance(template, str):
            raise AnalysisError(f"template {index} is {type(template).__name__}, not a string")
        try:
            fields = {field for _, field, _, _ in string.Formatter().parse(template) if field is not None}
        except ValueError as error:
            raise AnalysisError(f"template {index} {template!r} is not a valid format string: {error}") from None
        if "c" not in fields:
            raise AnalysisError(f"template {index} {template!r} has no {CLASS_PLACEHOLDER} placeholder")
        if fields != {"c"}:
            others = ", ".join(repr("{" + f + "}") for f in sorted(fields - {"c"}))
            raise AnalysisError(f"template {index} {template!r} has fields other than {CLASS_PLACEHOLDER}: {others}")
        if template in seen:
            raise AnalysisError(f"template {index} {template!r} repeats an earlier template")
        seen.add(template)
    return list(templates)


def _dataset_arrays(
    image_emb: RowSliceable, text_emb: RowSliceable, labels: Any, class_subset: Sequence[int] | None
) -> tuple[int, int, np.ndarray | None, np.ndarray]:
    """Check shapes; return (rows, templates, class subset, labels as positions among evaluated classes)."""
    image_shape = getattr(image_emb, "shape", None)
    text_shape = getattr(text_emb, "shape", None)
    if image_shape is None or len(image_shape) != 2 or image_shape[0] == 0:
        raise AnalysisError(f"image_emb must be a non-empty [rows, dim] array, got shape {image_shape}")
    if text_shape is None or len(text_shape) != 3 or min(text_shape) == 0:
        raise AnalysisError(f"text_emb must be a non-empty [classes, templates, dim] array, got shape {text_shape}")
    if image_shape[1] != text_shape[2]:
        raise AnalysisError(f"image_emb dim {image_shape[1]} differs from text_emb dim {text_shape[2]}")
    n_rows, n_classes, n_templates = int(image_shape[0]), int(text_shape[0]), int(text_shape[1])
    subset, targets = check_evaluated_labels(labels, n_rows, n_classes, class_subset)
    return n_rows, n_templates, subset, targets


def _top1_hits(unit_images: np.ndarray, weights: np.ndarray, targets: np.ndarray, block_rows: int) -> int:
    """Rows of ``unit_images`` whose argmax over ``unit_images @ weights.T`` is their target."""
    hits = 0
    for start in range(0, len(unit_images), block_rows):
        scores = unit_images[start : start + block_rows] @ weights.T
        hits += int(np.count_nonzero(scores.argmax(axis=1) == targets[start : start + block_rows]))
    return hits


def per_template_accuracy(
    image_emb: RowSliceable,
    text_emb: RowSliceable,
    labels: Any,
    class_subset: Sequence[int] | None = None,
    block_rows: int = DEFAULT_BLOCK_ROWS,
) -> np.ndarray:
    """Top-1 accuracy of each template used alone, float64 ``[T]``.

    One pass over ``image_emb``: each block is normalised once, then scored against every
    template's unit class embeddings (one ``[b, D] x [D, C]`` product per template).
    """
    n_rows, _, subset, targets = _dataset_arrays(image_emb, text_emb, labels, class_subset)
    embeddings = template_class_embeddings(text_emb, class_subset=subset)
    hits = np.zeros(len(embeddings), dtype=np.int64)
    for start, block in normalized_row_blocks(image_emb, block_rows):
        block_targets = targets[start : start + len(block)]
        for t, weights in enumerate(embeddings):
            hits[t] += np.count_nonzero((block @ weights.T).argmax(axis=1) == block_targets)
    return hits / n_rows


def evaluate_template_sets(
    image_emb: RowSliceable,
    text_emb: RowSliceable,
    labels: Any,
    sets: Mapping[str, Sequence[int]],
    class_subset: Sequence[int] | None = None,
    block_rows: int = DEFAULT_BLOCK_ROWS,
) -> dict[str, ZeroShotResult]:
    """Side-by-side rank metrics of named template sets ``{name: template indices}``, one pass over images."""
    if not sets:
        raise AnalysisError("sets is empty: name at least one template set")
    _, n_templates, _, _ = _dataset_arrays(image_emb, text_emb, labels, class_subset)
    classifiers = {}
    for name, indices in sets.items():
        try:
            check_template_indices(indices, n_templates)
        except AnalysisError as error:
            raise AnalysisError(f"template set {name!r}: {error}") from None
        classifiers[name] = classifier_weights(text_emb, indices)
    return evaluate_classifiers(image_emb, classifiers, labels, class_subset, block_rows)


def split_rows(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded random split of ``range(n)`` into disjoint sorted (first, second) row arrays.

    The first part holds ``round(fraction * n)`` rows; both parts must be non-empty.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
        raise AnalysisError(f"n must be an integer of at least 2 to split, got {n!r}")
    if not 0 < fraction < 1:
        raise AnalysisError(f"fraction must be strictly between 0 and 1, got {fraction!r}")
    n_first = round(fraction * n)
    if not 0 < n_first < n:
        raise AnalysisError(f"fraction {fraction} of {n} rows leaves one side of the split empty")
    permutation = np.random.default_rng(seed).permutation(n)
    return np.sort(permutation[:n_first]), np.sort(permutation[n_first:])


def _check_rows(rows: Any, n_rows: int, name: str) -> np.ndarray:
    rows = np.asarray(rows)
    if rows.ndim != 1 or len(rows) == 0:
        raise AnalysisError(f"{name} must be a non-empty 1-D list of row indices, got shape {rows.shape}")
    if rows.dtype == bool or not np.issubdtype(rows.dtype, np.integer):
        raise AnalysisError(f"{name} must hold integer row indices, got dtype {rows.dtype}")
    rows = np.sort(rows.astype(np.int64))
    if rows[0] < 0 or rows[-1] >= n_rows:
        bad = rows[0] if rows[0] < 0 else rows[-1]
        raise AnalysisError(f"{name} has row {bad}, outside the {n_rows} rows of image_emb")
    repeated = np.flatnonzero(np.diff(rows) == 0)
    if len(repeated):
        raise AnalysisError(f"{name} repeats row {rows[repeated[0]]}")
    return rows


def greedy_template_selection(
    image_emb: RowSliceable,
    text_emb: RowSliceable,
    labels: Any,
    select_rows: Any,
    report_rows: Any,
    max_templates: int | None = None,
    class_subset: Sequence[int] | None = None,
    block_rows: int = DEFAULT_BLOCK_ROWS,
) -> SelectionResult:
    """Greedy forward selection of a template ensemble (the procedure behind OpenAI's 7 ImageNet templates).

    Start from the empty set; at each step add the template whose ensemble has the highest top-1
    accuracy on ``select_rows`` (ties: lowest template index), and record that ensemble's accuracy on
    the disjoint ``report_rows``. Stops after ``max_templates`` steps (default: all templates).

    Cost: the selection and report rows are held as float32 unit vectors, the unit class embeddings
    of all templates as float32 ``[T, C, D]``; the running sum of the chosen templates' embeddings
    makes each candidate one normalisation of ``[C, D]`` and one product over the selection rows.
    """
    n_rows, n_templates, subset, targets = _dataset_arrays(image_emb, text_emb, labels, class_subset)
    select = _check_rows(select_rows, n_rows, "select_rows")
    report = _check_rows(report_rows, n_rows, "report_rows")
    shared = np.intersect1d(select, report)
    if len(shared):
        raise AnalysisError(f"select_rows and report_rows share row {shared[0]}: they must be disjoint")
    if max_templates is None:
        max_templates = n_templates
    if (
        isinstance(max_templates, bool)
        or not isinstance(max_templates, (int, np.integer))
        or not (1 <= max_templates <= n_templates)
    ):
        raise AnalysisError(f"max_templates must be an integer in [1, {n_templates}], got {max_templates!r}")

    embeddings = template_class_embeddings(text_emb, class_subset=subset)
    select_images = gather_normalized_rows(image_emb, select, block_rows)
    report_images = gather_normalized_rows(image_emb, report, block_rows)
    select_targets, report_targets = targets[select], targets[report]

    chosen_sum = np.zeros_like(embeddings[0])
    remaining = list(range(n_templates))
    order: list[int] = []
    select_acc: list[float] = []
    report_acc: list[float] = []
    for _ in range(max_templates):
        best_template, best_hits = -1, -1
        for t in remaining:
            weights = l2_normalize_rows(chosen_sum + embeddings[t], "ensemble classifier")
            hits = _top1_hits(select_images, weights, select_targets, block_rows)
            if hits > best_hits:
                best_template, best_hits = t, hits
        remaining.remove(best_template)
        chosen_sum += embeddings[best_template]
        weights = l2_normalize_rows(chosen_sum, "ensemble classifier")
        order.append(best_template)
        select_acc.append(best_hits / len(select))
        report_acc.append(_top1_hits(report_images, weights, report_targets, block_rows) / len(report))
    return SelectionResult(order=order, select_acc=select_acc, report_acc=report_acc)
