"""Tests of embedstore.analysis.zeroshot: hand-computed cases, parity with open_clip and CLIP_benchmark."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import zarr
from clip_benchmark.metrics import zeroshot_classification as clip_benchmark_zeroshot
from open_clip.zero_shot_classifier import build_zero_shot_classifier
from sklearn.metrics import balanced_accuracy_score

from embedstore.analysis import zeroshot
from embedstore.errors import AnalysisError


def synthetic_embeddings(
    n_rows: int = 300, n_classes: int = 12, n_templates: int = 5, dim: int = 16, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw (unnormalised) float16 image_emb [N, D], text_emb [C, T, D] and labels [N] with signal."""
    rng = np.random.default_rng(seed)
    prototypes = rng.standard_normal((n_classes, dim))
    text_emb = 3.0 * (prototypes[:, None, :] + 0.6 * rng.standard_normal((n_classes, n_templates, dim)))
    labels = rng.integers(0, n_classes, n_rows)
    image_emb = 5.0 * (prototypes[labels] + 1.2 * rng.standard_normal((n_rows, dim)))
    return image_emb.astype(np.float16), text_emb.astype(np.float16), labels


class LookupTokenizer:
    """Maps each prompt string to its row in a table of precomputed embeddings."""

    def __init__(self, prompt_rows: dict[str, int]) -> None:
        self.prompt_rows = prompt_rows

    def __call__(self, texts: list[str]) -> torch.Tensor:
        return torch.tensor([self.prompt_rows[text] for text in texts])


class LookupModel:
    """A stand-in CLIP whose encoders return rows of precomputed (raw) embedding tables."""

    def __init__(self, text_table: np.ndarray, image_table: np.ndarray | None = None) -> None:
        self.text_table = torch.from_numpy(np.asarray(text_table, dtype=np.float32))
        self.image_table = None if image_table is None else torch.from_numpy(np.asarray(image_table, np.float32))

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        features = self.text_table[tokens]
        return torch.nn.functional.normalize(features, dim=-1) if normalize else features

    def encode_image(self, image_rows: torch.Tensor) -> torch.Tensor:
        return self.image_table[image_rows]


def lookup_model_for(text_emb: np.ndarray, classnames: list[str], templates: list[str], image_emb=None):
    """Tokenizer and model that encode ``template.format(c=classname)`` as ``text_emb[class, template]``."""
    _, n_templates, dim = text_emb.shape
    prompt_rows = {
        template.format(c=name): c * n_templates + t
        for c, name in enumerate(classnames)
        for t, template in enumerate(templates)
    }
    return LookupTokenizer(prompt_rows), LookupModel(text_emb.reshape(-1, dim), image_emb)


# --------------------------------------------------------------------------- classifier weights


def test_classifier_weights_hand_computed() -> None:
    text_emb = np.array(
        [
            [[2.0, 0.0], [0.0, 3.0]],  # class 0: unit vectors e1, e2 -> mean (.5, .5) -> (1, 1)/sqrt2
            [[-4.0, 0.0], [-1.0, 0.0]],  # class 1: both -e1
        ]
    )
    weights = zeroshot.classifier_weights(text_emb)
    np.testing.assert_allclose(weights, [[1 / math.sqrt(2), 1 / math.sqrt(2)], [-1.0, 0.0]], atol=1e-7)
    assert weights.dtype == np.float32
    np.testing.assert_allclose(zeroshot.classifier_weights(text_emb, [1]), [[0.0, 1.0], [-1.0, 0.0]])


def test_classifier_weights_match_open_clip_build_zero_shot_classifier() -> None:
    _, text_emb, _ = synthetic_embeddings(n_classes=13, n_templates=4, dim=8)  # 13 classes: two batches of 10
    classnames = [f"class{c}" for c in range(13)]
    templates = ["a photo of a {c}.", "a drawing of a {c}.", "{c}!", "itap of a {c}."]
    tokenizer, model = lookup_model_for(text_emb, classnames, templates)
    for subset in (None, [2, 0]):
        chosen = templates if subset is None else [templates[t] for t in subset]
        # open_clip formats positionally ({}); hand it callables that fill our {c} templates
        callables = [lambda name, template=template: template.format(c=name) for template in chosen]
        expected = build_zero_shot_classifier(model, tokenizer, classnames, callables, num_classes_per_batch=10)
        ours = zeroshot.classifier_weights(text_emb, subset)
        np.testing.assert_allclose(ours, expected.T.numpy(), atol=1e-6)


def test_classifier_weights_read_zarr_and_reject_bad_templates() -> None:
    _, text_emb, _ = synthetic_embeddings(n_classes=4, n_templates=3, dim=8)
    stored = zarr.create_array(store={}, shape=text_emb.shape, dtype=text_emb.dtype, chunks=(2, 1, 8))
    stored[...] = text_emb
    np.testing.assert_array_equal(zeroshot.classifier_weights(stored), zeroshot.classifier_weights(text_emb))
    with pytest.raises(AnalysisError, match="template_indices is empty"):
        zeroshot.classifier_weights(text_emb, [])
    with pytest.raises(AnalysisError, match="outside the 3 templates"):
        zeroshot.classifier_weights(text_emb, [0, 3])
    with pytest.raises(AnalysisError, match="repeats template 1"):
        zeroshot.classifier_weights(text_emb, [1, 1])
    broken = text_emb.copy()
    broken[2, 1] = 0
    with pytest.raises(AnalysisError, match=r"text_emb\[class 2, template 1\] has norm 0"):
        zeroshot.classifier_weights(broken)
    with pytest.raises(AnalysisError, match="text_emb must be"):
        zeroshot.classifier_weights(text_emb[:, 0])


def test_text_blocks_and_single_template_classifiers(monkeypatch) -> None:
    _, text_emb, _ = synthetic_embeddings(n_classes=10, n_templates=4, dim=8)
    weights = zeroshot.classifier_weights(text_emb, [3, 1])
    per_template = zeroshot.template_class_embeddings(text_emb, [3, 1], class_subset=[7, 2])
    monkeypatch.setattr(zeroshot, "TEXT_BLOCK_CLASSES", 3)  # 10 classes in blocks of 3, 3, 3, 1
    np.testing.assert_allclose(zeroshot.classifier_weights(text_emb, [3, 1]), weights, atol=1e-7)
    np.testing.assert_array_equal(
        zeroshot.template_class_embeddings(text_emb, [3, 1], class_subset=[7, 2]), per_template
    )
    assert per_template.shape == (2, 2, 8)
    np.testing.assert_allclose(per_template[0], zeroshot.classifier_weights(text_emb, [3])[[7, 2]], atol=1e-7)
    broken = text_emb.copy()
    broken[8, 2] = np.nan
    with pytest.raises(AnalysisError, match=r"text_emb\[class 8, template 2\] has norm nan"):
        zeroshot.template_class_embeddings(broken)


# --------------------------------------------------------------------------- logits


def test_zeroshot_cosines_and_logits_hand_computed() -> None:
    image_emb = np.array([[3.0, 4.0], [0.0, -2.0]], dtype=np.float16)
    weights = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=np.float32)
    expected_cos = np.array([[0.6, 0.8, 1.0], [0.0, -1.0, -0.8]])
    np.testing.assert_allclose(zeroshot.zeroshot_cosines(image_emb, weights, block_rows=1), expected_cos, atol=1e-6)
    logits = zeroshot.zeroshot_logits(image_emb, weights, logit_scale=100.0, logit_bias=-10.0)
    np.testing.assert_allclose(logits, 100.0 * expected_cos - 10.0, atol=1e-4)
    assert logits.dtype == np.float32
    with pytest.raises(AnalysisError, match="logit_scale must be a positive"):
        zeroshot.zeroshot_logits(image_emb, weights, logit_scale=0.0)
    with pytest.raises(AnalysisError, match="logit_bias must be finite"):
        zeroshot.zeroshot_logits(image_emb, weights, logit_scale=1.0, logit_bias=float("nan"))
    with pytest.raises(AnalysisError, match=r"weights must be \[classes, 2\]"):
        zeroshot.zeroshot_cosines(image_emb, weights[:, :1])


def test_zero_norm_or_nan_image_row_is_named() -> None:
    image_emb = np.ones((10, 4), dtype=np.float32)
    image_emb[7] = 0
    weights = np.eye(4, dtype=np.float32)
    with pytest.raises(AnalysisError, match="image_emb row 7 has norm 0"):
        zeroshot.zeroshot_cosines(image_emb, weights, block_rows=3)
    image_emb[7] = 1
    image_emb[4, 2] = np.nan
    with pytest.raises(AnalysisError, match="image_emb row 4 has norm nan"):
        zeroshot.evaluate_classifiers(image_emb, {"eye": weights}, np.zeros(10, dtype=int), block_rows=3)


# --------------------------------------------------------------------------- rank metrics


LOGITS = np.array(
    [
        [0.9, 0.1, 0.0],  # label 0: hit
        [0.2, 0.5, 0.3],  # label 2: second
        [0.1, 0.2, 0.7],  # label 2: hit
        [0.6, 0.3, 0.1],  # label 1: second
        [0.3, 0.3, 0.4],  # label 1: third
    ]
)
LABELS = np.array([0, 2, 2, 1, 1])


def test_rank_metrics_hand_computed() -> None:
    assert zeroshot.acc1(LOGITS, LABELS) == pytest.approx(2 / 5)
    assert zeroshot.topk_accuracy(LOGITS, LABELS, 2) == pytest.approx(4 / 5)
    assert zeroshot.topk_accuracy(LOGITS, LABELS, 3) == 1.0
    assert math.isnan(zeroshot.acc5(LOGITS, LABELS))  # 3 classes < 5
    np.testing.assert_allclose(zeroshot.per_class_accuracy(LOGITS, LABELS), [1.0, 0.0, 0.5])
    assert zeroshot.mean_per_class_recall(LOGITS, LABELS) == pytest.approx(0.5)


def test_ties_go_to_the_lower_class_index_like_argmax() -> None:
    logits = np.array([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 2.0, 2.0]])
    np.testing.assert_array_equal(zeroshot.label_ranks(logits, np.array([0, 1, 2])), [0, 1, 1])
    assert zeroshot.acc1(logits, np.array([0, 1, 2])) == pytest.approx(1 / 3)
    assert zeroshot.acc1(logits, logits.argmax(axis=1)) == 1.0


def test_per_class_accuracy_is_nan_for_absent_classes_and_recall_matches_sklearn() -> None:
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((200, 8)).astype(np.float32)
    labels = rng.choice([0, 2, 3, 5, 6], 200)  # classes 1, 4, 7 never labelled but sometimes predicted
    logits[np.arange(200), labels] += 1.0
    per_class = zeroshot.per_class_accuracy(logits, labels)
    assert np.isnan(per_class[[1, 4, 7]]).all()
    with pytest.warns(UserWarning, match="y_pred contains classes not in y_true"):
        expected = balanced_accuracy_score(labels, logits.argmax(axis=1))
    assert zeroshot.mean_per_class_recall(logits, labels) == pytest.approx(expected, abs=1e-12)


def test_rank_metrics_reject_bad_input() -> None:
    with pytest.raises(AnalysisError, match="k must be an integer in \\[1, 3\\]"):
        zeroshot.topk_accuracy(LOGITS, LABELS, 4)
    with pytest.raises(AnalysisError, match="labels row 1 is 3, outside the 3 classes"):
        zeroshot.acc1(LOGITS, np.array([0, 3, 0, 0, 0]))
    with pytest.raises(AnalysisError, match="labels must be integers"):
        zeroshot.acc1(LOGITS, LABELS.astype(float))
    with pytest.raises(AnalysisError, match="one label per row"):
        zeroshot.acc1(LOGITS, LABELS[:4])
    with_nan = LOGITS.copy()
    with_nan[3, 1] = np.nan
    with pytest.raises(AnalysisError, match="logits row 3 has NaN or inf"):
        zeroshot.acc5(with_nan, LABELS)
    with pytest.raises(AnalysisError, match="logits row 3 has NaN or inf"):
        zeroshot.evaluate_logits(with_nan, LABELS, block_rows=2)


# --------------------------------------------------------------------------- evaluation


def clip_benchmark_topk(logits: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
    """CLIP_benchmark's ``accuracy(logits, target, topk=(1, 5))``, computed as its code does.

    Its own function cannot run here: clip-benchmark 1.6.2 calls ``float()`` on a 1-element array,
    which numpy 2.4 rejects ("only 0-dimensional arrays can be converted to Python scalars").
    """
    pred = logits.topk(5, 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    return tuple(correct[:k].reshape(-1).float().sum().item() / len(target) for k in (1, 5))


def test_evaluate_logits_matches_clip_benchmark_metrics() -> None:
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((500, 20)).astype(np.float32)
    labels = rng.integers(0, 20, 500)
    logits[np.arange(500), labels] += 1.5
    result = zeroshot.evaluate_logits(logits, labels, block_rows=64)
    ref_acc1, ref_acc5 = clip_benchmark_topk(torch.from_numpy(logits), torch.from_numpy(labels))
    assert result.acc1 == pytest.approx(ref_acc1, abs=1e-12)
    assert result.acc5 == pytest.approx(ref_acc5, abs=1e-12)
    assert result.mean_per_class_recall == pytest.approx(
        balanced_accuracy_score(labels, logits.argmax(axis=1)), abs=1e-12
    )
    assert result.n == 500
    assert result.metrics() == {
        "acc1": result.acc1,
        "acc5": result.acc5,
        "mean_per_class_recall": result.mean_per_class_recall,
        "n": 500,
    }


class IndexDataset(torch.utils.data.Dataset):
    """Yields (row index, label); the lookup model's encode_image turns the index into an embedding."""

    def __init__(self, labels: np.ndarray, classes: list[str]) -> None:
        self.labels = labels
        self.classes = classes

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, row: int) -> tuple[int, int]:
        return row, int(self.labels[row])


def test_evaluate_zeroshot_matches_clip_benchmark_pipeline() -> None:
    image_emb, text_emb, labels = synthetic_embeddings(n_rows=240, n_classes=7, n_templates=3, dim=16)
    classnames = [f"class{c}" for c in range(7)]
    templates = ["a photo of a {c}.", "a sketch of a {c}.", "{c}"]
    tokenizer, model = lookup_model_for(text_emb, classnames, templates, image_emb)
    loader = torch.utils.data.DataLoader(IndexDataset(labels, classnames), batch_size=50)
    # CLIP_benchmark's evaluate() = zero_shot_classifier + run_classification + accuracy/balanced accuracy
    classifier = clip_benchmark_zeroshot.zero_shot_classifier(model, tokenizer, classnames, templates, "cpu", amp=False)
    np.testing.assert_allclose(zeroshot.classifier_weights(text_emb), classifier.T.numpy(), atol=1e-6)
    logits, target = clip_benchmark_zeroshot.run_classification(model, classifier, loader, "cpu", amp=False)
    expected_acc1, expected_acc5 = clip_benchmark_topk(logits, target)
    expected_recall = balanced_accuracy_score(target, logits.argmax(axis=1))

    result = zeroshot.evaluate_zeroshot(image_emb, text_emb, labels, block_rows=64)
    assert result.acc1 == pytest.approx(expected_acc1, abs=1e-12)
    assert result.acc5 == pytest.approx(expected_acc5, abs=1e-12)
    assert result.mean_per_class_recall == pytest.approx(expected_recall, abs=1e-12)
    assert 0.3 < result.acc1 < 1.0  # the synthetic data carries signal but is not trivial


def test_acc5_is_nan_with_three_classes() -> None:
    image_emb, text_emb, labels = synthetic_embeddings(n_rows=60, n_classes=3)
    result = zeroshot.evaluate_zeroshot(image_emb, text_emb, labels)
    assert math.isnan(result.acc5)
    assert not math.isnan(result.acc1)
    assert result.per_class_accuracy.shape == (3,)


def test_block_size_and_array_type_do_not_change_results(tmp_path) -> None:
    image_emb, text_emb, labels = synthetic_embeddings(n_rows=301)
    reference = zeroshot.evaluate_zeroshot(image_emb, text_emb, labels, block_rows=10_000)
    memmap = np.lib.format.open_memmap(tmp_path / "image_emb.npy", mode="w+", dtype=np.float16, shape=image_emb.shape)
    memmap[:] = image_emb
    stored = zarr.create_array(store={}, shape=image_emb.shape, dtype=image_emb.dtype, chunks=(64, 16))
    stored[...] = image_emb
    for source, block_rows in ((image_emb, 7), (memmap, 64), (stored, 100)):
        result = zeroshot.evaluate_zeroshot(source, text_emb, labels, block_rows=block_rows)
        assert (result.acc1, result.acc5, result.mean_per_class_recall, result.n) == (
            reference.acc1,
            reference.acc5,
            reference.mean_per_class_recall,
            reference.n,
        )
        np.testing.assert_array_equal(result.per_class_accuracy, reference.per_class_accuracy)


def test_evaluate_zeroshot_equals_evaluate_logits_of_zeroshot_logits() -> None:
    image_emb, text_emb, labels = synthetic_embeddings()
    weights = zeroshot.classifier_weights(text_emb, [0, 2, 4])
    logits = zeroshot.zeroshot_logits(image_emb, weights, logit_scale=14.3)
    from_logits = zeroshot.evaluate_logits(logits, labels)
    direct = zeroshot.evaluate_zeroshot(image_emb, text_emb, labels, template_indices=[0, 2, 4])
    assert (direct.acc1, direct.acc5, direct.mean_per_class_recall) == (
        from_logits.acc1,
        from_logits.acc5,
        from_logits.mean_per_class_recall,
    )


def test_class_subset_slices_columns_and_labels_index_the_subset() -> None:
    image_emb, text_emb, full_labels = synthetic_embeddings(n_rows=400, n_classes=12)
    subset = [9, 2, 5, 7, 0]  # dataset class j is column subset[j] of the 12-class label space
    rows = np.isin(full_labels, subset)
    images, labels = image_emb[rows], np.array([subset.index(label) for label in full_labels[rows]])

    result = zeroshot.evaluate_zeroshot(images, text_emb, labels, class_subset=subset)
    expected = zeroshot.evaluate_zeroshot(images, text_emb[subset], labels)
    assert (result.acc1, result.acc5, result.mean_per_class_recall) == (
        expected.acc1,
        expected.acc5,
        expected.mean_per_class_recall,
    )
    np.testing.assert_array_equal(result.per_class_accuracy, expected.per_class_accuracy)
    full = zeroshot.evaluate_zeroshot(images, text_emb, full_labels[rows])
    assert result.acc1 >= full.acc1  # fewer competitors can only help

    logits = zeroshot.zeroshot_logits(images, zeroshot.classifier_weights(text_emb), 100.0)
    from_logits = zeroshot.evaluate_logits(logits, labels, class_subset=subset, block_rows=50)
    assert from_logits.acc1 == pytest.approx(zeroshot.acc1(logits[:, subset], labels))
    assert from_logits.acc5 == pytest.approx(zeroshot.acc5(logits[:, subset], labels))
    assert from_logits.acc1 == result.acc1

    with pytest.raises(AnalysisError, match="labels row 0 is 5, outside the 5 classes of class_subset"):
        zeroshot.evaluate_logits(logits, np.full(len(labels), 5), class_subset=subset)
    with pytest.raises(AnalysisError, match="class_subset repeats class 2"):
        zeroshot.evaluate_logits(logits, labels, class_subset=[2, 9, 2, 1, 0])
    with pytest.raises(AnalysisError, match="class_subset has 12, outside the 12 classes"):
        zeroshot.evaluate_logits(logits, labels, class_subset=[0, 12])
    with pytest.raises(AnalysisError, match="class_subset must be a non-empty"):
        zeroshot.evaluate_zeroshot(images, text_emb, labels, class_subset=[])


def test_evaluate_rejects_mismatched_shapes() -> None:
    image_emb, text_emb, labels = synthetic_embeddings(n_rows=20)
    with pytest.raises(AnalysisError, match="image_emb dim 8 differs from text_emb dim 16"):
        zeroshot.evaluate_zeroshot(image_emb[:, :8], text_emb, labels)
    with pytest.raises(AnalysisError, match="image_emb has no rows"):
        zeroshot.evaluate_zeroshot(image_emb[:0], text_emb, labels[:0])
    with pytest.raises(AnalysisError, match="block_rows must be a positive integer"):
        zeroshot.evaluate_zeroshot(image_emb, text_emb, labels, block_rows=0)
    with pytest.raises(AnalysisError, match="disagree on the number of classes"):
        zeroshot.evaluate_classifiers(image_emb, {"a": np.eye(3, 16), "b": np.eye(4, 16)}, labels % 3)
