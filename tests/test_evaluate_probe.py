"""eval probe: seeded splits, a probe on informative imported embeddings, label spaces, checked against sklearn."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from imported_classifiers import import_predictions, import_rows, register_rows_only_dataset
from sklearn.linear_model import LogisticRegression

from embedstore.errors import AnalysisError
from embedstore.evaluate.common import usable_rows
from embedstore.evaluate.probe import SAME_CLASSES, SUBSET_MAPPED, run_probe, split_rows
from embedstore.store import Store
from embedstore_cli.eval_probe import probe_command

FEATURES = "import:features"
SUBSET = ["square", "star", "circle"]  # a 3-class subset of the shapes world's 8 classes


def _informative(labels: np.ndarray, seed: int) -> np.ndarray:
    """Embeddings that carry the label: a one-hot direction plus Gaussian noise, 12 dims."""
    rng = np.random.default_rng(seed)
    return (2.0 * np.eye(12)[labels] + rng.normal(0.0, 0.2, (len(labels), 12))).astype(np.float32)


@pytest.fixture(scope="module")
def probe_template(tiny_store_template, tmp_path_factory):
    """Tiny store + an imported model with informative embeddings on shapes, shapes-v2 and a 3-class
    subset dataset, + a logits-only imported model (which a probe cannot use)."""
    path = tmp_path_factory.mktemp("probe") / "store"
    shutil.copytree(tiny_store_template, path)
    store = Store.open(path, readonly=False)
    folder = path.parent / "arrays"
    classes = store.dataset_info("shapes")["classnames"]
    subset = [classes.index(name) for name in SUBSET]
    with store.session():
        for seed, dataset in enumerate(["shapes", "shapes-v2"]):
            import_rows(
                store, folder, FEATURES, dataset, "image_emb", _informative(store.sample_table(dataset)["label"], seed)
            )
        sub_labels = np.arange(12) % 3
        register_rows_only_dataset(store, "shapes-sub", SUBSET, sub_labels.tolist(), class_subset=subset)
        import_rows(store, folder, FEATURES, "shapes-sub", "image_emb", _informative(np.asarray(subset)[sub_labels], 7))
        import_predictions(store, folder, "import:logits-only", "shapes", store.sample_table("shapes")["label"])
        import_predictions(store, folder, "import:logits-only", "shapes-v2", store.sample_table("shapes-v2")["label"])
    return path


@pytest.fixture
def probe_store(probe_template, tmp_path):
    shutil.copytree(probe_template, tmp_path / "store")
    return Store.open(tmp_path / "store", readonly=False)


def test_split_is_seeded_disjoint_and_complete():
    rows = np.arange(100) * 2
    parts = split_rows(rows, 0.5, 0.2, seed=3)
    assert (len(parts.train), len(parts.val), len(parts.test)) == (40, 10, 50)
    together = np.concatenate([parts.train, parts.val, parts.test])
    assert sorted(together.tolist()) == rows.tolist()
    again = split_rows(rows, 0.5, 0.2, seed=3)
    assert np.array_equal(again.val, parts.val) and np.array_equal(again.test, parts.test)
    assert not np.array_equal(split_rows(rows, 0.5, 0.2, seed=4).test, parts.test)


def test_probe_on_informative_embeddings_matches_sklearn_directly(probe_store):
    report = run_probe(probe_store, [FEATURES], "shapes", ["shapes-v2"], seed=1)
    (row,) = report.rows
    assert row.result.accuracies["shapes"] > 0.8 and row.result.accuracies["shapes-v2"] > 0.8

    parts = split_rows(usable_rows(probe_store, "shapes"), 0.5, 0.2, 1)
    assert np.array_equal(row.split.test, parts.test)
    features = probe_store.read_array("shapes", FEATURES, "image_emb").astype(np.float64)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    labels = probe_store.sample_table("shapes")["label"]
    fitted = np.concatenate([parts.train, parts.val])
    probe = LogisticRegression(C=row.result.best_C, max_iter=1000, random_state=1).fit(features[fitted], labels[fitted])
    assert row.result.accuracies["shapes"] == pytest.approx(
        np.mean(probe.predict(features[parts.test]) == labels[parts.test])
    )
    shifted = probe_store.read_array("shapes-v2", FEATURES, "image_emb").astype(np.float64)
    shifted /= np.linalg.norm(shifted, axis=1, keepdims=True)
    expected = np.mean(probe.predict(shifted) == probe_store.sample_table("shapes-v2")["label"])
    assert row.result.accuracies["shapes-v2"] == pytest.approx(expected)

    stored = {
        r["metric"]: r["value"]
        for r in probe_store.query("SELECT metric, value FROM results WHERE analysis = 'probe' AND dataset = 'shapes'")
    }
    assert stored["acc1"] == row.result.accuracies["shapes"] and stored["acc1@eval:shapes-v2"] == expected
    assert (stored["n_train"], stored["n_val"], stored["n_test"]) == (26, 6, 32)
    assert stored["best_c"] == row.result.best_C and "val_acc1@c:0.0001" in stored


def test_a_class_subset_dataset_is_scored_in_the_training_label_space(probe_store):
    report = run_probe(probe_store, [FEATURES], "shapes", ["shapes-sub", "shapes-v2"])
    assert report.rows[0].result.accuracies["shapes-sub"] > 0.8
    params = json.loads(probe_store.query("SELECT params FROM results WHERE analysis = 'probe' LIMIT 1")[0]["params"])
    assert params["label_space"] == {"shapes-sub": SUBSET_MAPPED, "shapes-v2": SAME_CLASSES}
    assert (params["split"], params["seed"], params["refit_on"]) == (0.5, 0, "train+val")


def test_split_one_fits_on_every_row_and_needs_an_eval_dataset(probe_store):
    (row,) = run_probe(probe_store, [FEATURES], "shapes", ["shapes-v2"], split=1.0).rows
    assert len(row.split.test) == 0 and set(row.result.accuracies) == {"shapes-v2"}
    with pytest.raises(AnalysisError, match="name at least one dataset to evaluate"):
        run_probe(probe_store, [FEATURES], "shapes", split=1.0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"split": 0.0}, "split: the fraction"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"eval_datasets": ["shapes"]}, "is the training dataset"),
        ({"eval_datasets": ["shapes-captions"]}, "dataset shapes-captions has no classes"),
        ({"eval_datasets": ["shapes-ood"]}, "dataset shapes-ood has no labelled, decodable rows"),
        ({"split": 0.995}, "leaves no test row"),
        ({"split": 0.03}, "--split 0.03 and --val-fraction 0.2 leave 1 training row"),  # one row: one class
    ],
)
def test_bad_input_is_a_clear_error(probe_store, kwargs, message):
    with pytest.raises(AnalysisError, match=message):
        run_probe(probe_store, [FEATURES], "shapes", **kwargs)


def test_eval_sets_that_cannot_be_scored_are_errors_when_named_and_skipped_by_a_glob(probe_store):
    clip = "openclip:embedstore-tiny@random:0"
    with probe_store.session():
        register_rows_only_dataset(probe_store, "shapes-other", ["a", "b"], [0, 1, 0, 1])
    with pytest.raises(AnalysisError, match="--eval: dataset shapes-other's classes are not those of training"):
        run_probe(probe_store, [clip], "shapes", ["shapes-other"])
    report = run_probe(probe_store, [clip], "shapes", ["shape[s]", "shapes-[cov]*"])
    assert report.eval_datasets == ["shapes-cue-conflict", "shapes-v2"]
    assert report.skipped_datasets == {
        "shapes": "the training dataset (--train); its held-out rows are scored as acc1",
        "shapes-captions": "no classes (a retrieval dataset): a probe's evaluation needs classes",
        "shapes-other": "dataset shapes-other's classes are not those of training dataset shapes (nor a class subset "
        "of them); a probe can only score datasets in its training label space",
        "shapes-ood": "no labelled, decodable rows (an OOD set?): a probe's evaluation needs labels",
    }
    args = ["--store", str(probe_store.path), "--model", clip, "--train", "shapes", "--eval"]
    named = CliRunner().invoke(probe_command, [*args, "shapes-ood"])
    assert named.exit_code == 1 and named.output.splitlines() == [
        "Error: dataset shapes-ood has no labelled, decodable rows (an OOD set?): a probe's evaluation needs labels"
    ]
    swept = CliRunner().invoke(probe_command, [*args, "shapes-o*", "--eval", "shapes-v2"])
    assert swept.exit_code == 0, swept.output
    assert "skipped shapes-ood: no labelled, decodable rows (an OOD set?)" in swept.stderr
    assert "skipped shapes-other: dataset shapes-other's classes are not those" in swept.stderr
    assert swept.stdout.split()[6:8] == ["acc1@shapes", "acc1@shapes-v2"]


def test_a_glob_skips_models_without_embeddings(probe_store):
    report = run_probe(probe_store, ["import:*"], "shapes")
    assert [row.model for row in report.rows] == [FEATURES]
    assert list(report.skipped) == ["import:logits-only"]
    with pytest.raises(Exception, match="no array image_emb"):
        run_probe(probe_store, ["import:logits-only"], "shapes")


def test_cli_table(probe_store):
    result = CliRunner().invoke(
        probe_command,
        [
            "--store",
            str(probe_store.path),
            "--model",
            FEATURES,
            "--train",
            "shapes",
            "--eval",
            "shapes-v2",
            "--seed",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    header = result.output.splitlines()[0].split()
    assert header == ["model", "best_C", "val_acc1", "n_train", "n_val", "n_test", "acc1@shapes", "acc1@shapes-v2"]
    assert FEATURES in result.output


def test_cli_split_one_fits_on_every_row_and_scores_only_the_eval_datasets(probe_store):
    args = ["--store", str(probe_store.path), "--model", FEATURES, "--train", "shapes", "--split", "1"]
    refused = CliRunner().invoke(probe_command, args)
    assert refused.exit_code == 1 and "name at least one dataset to evaluate" in refused.output
    result = CliRunner().invoke(probe_command, [*args, "--eval", "shapes-v2"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0].split()[-1] == "acc1@shapes-v2" and "acc1@shapes " not in result.output
