"""Tests of embedstore.analysis.prompts: template checks, per-template and set comparisons, greedy selection."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from embedstore.analysis import prompts, zeroshot
from embedstore.errors import AnalysisError


def synthetic_embeddings(
    n_rows: int = 400, n_classes: int = 10, n_templates: int = 6, dim: int = 16, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw float16 image_emb [N, D], text_emb [C, T, D], labels [N]; templates differ in quality."""
    rng = np.random.default_rng(seed)
    prototypes = rng.standard_normal((n_classes, dim))
    template_noise = np.linspace(0.3, 1.5, n_templates)[None, :, None]
    text_emb = 2.0 * (prototypes[:, None, :] + template_noise * rng.standard_normal((n_classes, n_templates, dim)))
    labels = rng.integers(0, n_classes, n_rows)
    image_emb = 4.0 * (prototypes[labels] + 1.0 * rng.standard_normal((n_rows, dim)))
    return image_emb.astype(np.float16), text_emb.astype(np.float16), labels


# --------------------------------------------------------------------------- templates


def test_validate_templates_accepts_c_placeholder_templates() -> None:
    templates = ["a photo of a {c}.", "itap of the {c}.", "{c}"]
    assert prompts.validate_templates(templates) == templates
    assert prompts.validate_templates(tuple(templates)) == templates


@pytest.mark.parametrize(
    ("templates", "message"),
    [
        (["a photo of a {c}.", "a photo of a thing."], "template 1 'a photo of a thing.' has no {c} placeholder"),
        (["a photo of a {}."], r"template 0 'a photo of a \{\}.' has no \{c\} placeholder"),
        (["a {c} in {place}"], r"fields other than \{c\}: '\{place\}'"),
        (["a {c", "b {c}"], "template 0 'a {c' is not a valid format string"),
        (["a {c}", "b {c}", "a {c}"], "template 2 'a {c}' repeats an earlier template"),
        (["a {c}", 3], "template 1 is int, not a string"),
        ([], "non-empty list"),
        ("a {c}", "non-empty list"),
    ],
)
def test_validate_templates_names_the_bad_template(templates, message: str) -> None:
    with pytest.raises(AnalysisError, match=message):
        prompts.validate_templates(templates)


# --------------------------------------------------------------------------- per template and sets


def test_per_template_accuracy_hand_computed() -> None:
    # Two classes on the first two axes; template 0 names them right, template 1 swaps them.
    text_emb = np.array([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]])
    image_emb = np.array([[2.0, 0.1], [0.2, 3.0], [1.0, 0.5], [0.9, 1.0]])
    labels = np.array([0, 1, 0, 0])  # the last row sits nearer class 1
    np.testing.assert_allclose(prompts.per_template_accuracy(image_emb, text_emb, labels), [0.75, 0.25])


def test_per_template_accuracy_equals_single_template_evaluations() -> None:
    image_emb, text_emb, labels = synthetic_embeddings()
    accuracies = prompts.per_template_accuracy(image_emb, text_emb, labels, block_rows=33)
    expected = [zeroshot.evaluate_zeroshot(image_emb, text_emb, labels, [t]).acc1 for t in range(6)]
    np.testing.assert_array_equal(accuracies, expected)
    assert accuracies[0] > accuracies[-1]  # the low-noise template beats the noisy one

    subset = [1, 4, 6, 8]
    rows = np.isin(labels, subset)
    subset_labels = np.searchsorted(subset, labels[rows])  # labels index the subset
    on_subset = prompts.per_template_accuracy(image_emb[rows], text_emb, subset_labels, class_subset=subset)
    expected = [
        zeroshot.evaluate_zeroshot(image_emb[rows], text_emb[subset], subset_labels, [t]).acc1 for t in range(6)
    ]
    np.testing.assert_array_equal(on_subset, expected)


def test_evaluate_template_sets_side_by_side() -> None:
    image_emb, text_emb, labels = synthetic_embeddings()
    stored = zarr.create_array(store={}, shape=image_emb.shape, dtype=image_emb.dtype, chunks=(50, 16))
    stored[...] = image_emb
    sets = {"first": [0], "best three": [0, 1, 2], "all": list(range(6))}
    results = prompts.evaluate_template_sets(stored, text_emb, labels, sets, block_rows=64)
    assert list(results) == list(sets)
    for name, indices in sets.items():
        expected = zeroshot.evaluate_zeroshot(image_emb, text_emb, labels, indices)
        assert (results[name].acc1, results[name].acc5, results[name].mean_per_class_recall) == (
            expected.acc1,
            expected.acc5,
            expected.mean_per_class_recall,
        )
    with pytest.raises(AnalysisError, match="template set 'broken': template_indices is empty"):
        prompts.evaluate_template_sets(image_emb, text_emb, labels, {"ok": [0], "broken": []})
    with pytest.raises(AnalysisError, match="template set 'far': template_indices has 9, outside the 6"):
        prompts.evaluate_template_sets(image_emb, text_emb, labels, {"far": [9]})
    with pytest.raises(AnalysisError, match="sets is empty"):
        prompts.evaluate_template_sets(image_emb, text_emb, labels, {})


# --------------------------------------------------------------------------- greedy selection


def brute_force_greedy(image_emb, text_emb, labels, select, report, max_templates):
    """The textbook procedure, one full evaluation per candidate ensemble."""
    remaining, order, select_acc, report_acc = list(range(text_emb.shape[1])), [], [], []
    for _ in range(max_templates):
        scores = [
            zeroshot.evaluate_zeroshot(image_emb[select], text_emb, labels[select], [*order, t]).acc1 for t in remaining
        ]
        best = remaining[int(np.argmax(scores))]  # first maximum = lowest template index
        remaining.remove(best)
        order.append(best)
        select_acc.append(max(scores))
        report_acc.append(zeroshot.evaluate_zeroshot(image_emb[report], text_emb, labels[report], order).acc1)
    return order, select_acc, report_acc


def test_greedy_selection_matches_brute_force() -> None:
    image_emb, text_emb, labels = synthetic_embeddings(n_rows=300, n_templates=5, seed=4)
    select, report = prompts.split_rows(300, 0.5, seed=1)
    result = prompts.greedy_template_selection(image_emb, text_emb, labels, select, report, block_rows=40)
    order, select_acc, report_acc = brute_force_greedy(image_emb, text_emb, labels, select, report, 5)
    assert result.order == order
    np.testing.assert_allclose(result.select_acc, select_acc, atol=1e-12)
    np.testing.assert_allclose(result.report_acc, report_acc, atol=1e-12)
    assert sorted(result.order) == list(range(5))


def test_greedy_selection_reads_zarr_and_honours_a_class_subset() -> None:
    image_emb, full_text_emb, full_labels = synthetic_embeddings(n_rows=500, n_classes=12, n_templates=4, seed=2)
    subset = [3, 11, 0, 7, 5]
    rows = np.isin(full_labels, subset)
    images, labels = image_emb[rows], np.array([subset.index(label) for label in full_labels[rows]])
    stored = zarr.create_array(store={}, shape=images.shape, dtype=images.dtype, chunks=(32, 16))
    stored[...] = images
    select, report = prompts.split_rows(len(labels), 0.4, seed=3)
    result = prompts.greedy_template_selection(
        stored, full_text_emb, labels, select, report, max_templates=3, class_subset=subset, block_rows=50
    )
    expected = prompts.greedy_template_selection(images, full_text_emb[subset], labels, select, report, 3)
    assert result == expected


def test_greedy_selection_constructed_case() -> None:
    # Two classes along e1 and e2; images carry large noise along e3.
    # Template 2 is exact, template 1 leaks e3 into class 0 (worse), template 0 swaps the classes.
    e1, e2, e3 = np.eye(3)
    text_emb = np.stack(
        [
            [e2, e1 + e3, e1],  # class 0 under templates 0, 1, 2
            [e1, e2, e2],  # class 1
        ]
    )
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    image_emb = np.where(labels[:, None] == 0, e1, e2) + 0.2 * rng.standard_normal((400, 3))
    image_emb[:, 2] += 1.5 * rng.standard_normal(400)
    select, report = prompts.split_rows(400, 0.5, seed=0)
    result = prompts.greedy_template_selection(image_emb, text_emb, labels, select, report, max_templates=3)
    assert result.order == [2, 1, 0]
    assert result.select_acc[0] == 1.0 and result.report_acc[0] == 1.0  # e3 noise cannot fool template 2
    assert result.select_acc[0] > result.select_acc[1] > result.select_acc[2]  # each later template hurts
    np.testing.assert_allclose(prompts.per_template_accuracy(image_emb, text_emb, labels)[[0, 2]], [0.0, 1.0])

    first_only = prompts.greedy_template_selection(image_emb, text_emb, labels, select, report, max_templates=1)
    assert first_only.order == [2]
    assert first_only.report_acc == result.report_acc[:1]


def test_greedy_selection_rejects_bad_rows() -> None:
    image_emb, text_emb, labels = synthetic_embeddings(n_rows=50, n_templates=3)
    rows = np.arange(50)
    with pytest.raises(AnalysisError, match="select_rows and report_rows share row 20"):
        prompts.greedy_template_selection(image_emb, text_emb, labels, rows[:25], rows[20:])
    with pytest.raises(AnalysisError, match="report_rows has row 50, outside the 50 rows"):
        prompts.greedy_template_selection(image_emb, text_emb, labels, rows[:25], [30, 50])
    with pytest.raises(AnalysisError, match="select_rows repeats row 3"):
        prompts.greedy_template_selection(image_emb, text_emb, labels, [3, 1, 3], rows[25:])
    with pytest.raises(AnalysisError, match="select_rows must be a non-empty"):
        prompts.greedy_template_selection(image_emb, text_emb, labels, [], rows[25:])
    with pytest.raises(AnalysisError, match=r"max_templates must be an integer in \[1, 3\]"):
        prompts.greedy_template_selection(image_emb, text_emb, labels, rows[:25], rows[25:], max_templates=4)
    with pytest.raises(AnalysisError, match="image_emb dim 8 differs from text_emb dim 16"):
        prompts.greedy_template_selection(image_emb[:, :8], text_emb, labels, rows[:25], rows[25:])


def test_split_rows_is_seeded_disjoint_and_complete() -> None:
    first, second = prompts.split_rows(101, 0.3, seed=7)
    assert len(first) == 30 and len(second) == 71
    assert np.array_equal(np.sort(np.concatenate([first, second])), np.arange(101))
    assert np.all(np.diff(first) > 0) and np.all(np.diff(second) > 0)
    again, _ = prompts.split_rows(101, 0.3, seed=7)
    other, _ = prompts.split_rows(101, 0.3, seed=8)
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    with pytest.raises(AnalysisError, match="fraction must be strictly between 0 and 1"):
        prompts.split_rows(10, 1.0, seed=0)
    with pytest.raises(AnalysisError, match="leaves one side of the split empty"):
        prompts.split_rows(10, 0.01, seed=0)
