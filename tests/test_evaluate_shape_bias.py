"""eval shape-bias: the four decision routes, cue labels from annotations or file names, hand-checked."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from imported_classifiers import import_predictions, register_rows_only_dataset
from store_support import put_array

from embedstore.analysis.shape_bias import HUMAN_CATEGORIES, HUMAN_CATEGORY_IMAGENET_INDICES
from embedstore.errors import AnalysisError
from embedstore.evaluate.common import clip_scores, usable_rows
from embedstore.evaluate.shape_bias import (
    CUES_FROM_FILE_NAMES,
    ROUTE_CLIP_IMAGENET_TO_16,
    ROUTE_HEAD,
    ROUTE_IMAGENET_TO_16,
    ROUTE_ZERO_SHOT,
    decision_route,
    run_shape_bias,
)
from embedstore.store import Store
from embedstore.store.exchange import import_array
from embedstore_cli.eval_shape_bias import shape_bias_command

CUE_CONFLICT = "shapes-cue-conflict"
CLIP = "openclip:embedstore-tiny@random:0"
TIMM = "timm:test_vit@random:0"
# model-vs-human style file names: <shape><n>-<texture><m>.png; two images have shape == texture
CUE16_FILES = ["airplane1-bear2.png", "bear1-dog3.png", "cat2-cat5.png", "dog1-bird1.png", "knife3-oven1.png",
               "oven2-knife1.png", "truck1-truck2.png", "clock4-chair1.png"]  # fmt: skip


def _register_cue16(store: Store) -> None:
    shapes = [name.split("-")[0].rstrip("0123456789") for name in CUE16_FILES]
    register_rows_only_dataset(store, "cue16", list(HUMAN_CATEGORIES), [HUMAN_CATEGORIES.index(s) for s in shapes],
                               locators=[f"cue-conflict/{name}" for name in CUE16_FILES])  # fmt: skip


@pytest.fixture(scope="module")
def cue_template(tiny_store_template, tmp_path_factory):
    """Tiny store + imported 8-way classifiers deciding by shape, by texture and half/half on
    shapes-cue-conflict, + a 16-category set read from file names with an imported 1000-way classifier."""
    path = tmp_path_factory.mktemp("shape-bias") / "store"
    shutil.copytree(tiny_store_template, path)
    store = Store.open(path, readonly=False)
    classes = store.dataset_info(CUE_CONFLICT)["classnames"]
    cues = store.annotations(CUE_CONFLICT)
    n = len(cues["shape"])
    shape = np.array([classes.index(cues["shape"][r]) for r in range(n)])
    texture = np.array([classes.index(cues["texture"][r]) for r in range(n)])
    logits = path.parent / "logits"
    with store.session():
        import_predictions(store, logits, "import:by-shape", CUE_CONFLICT, shape)
        import_predictions(store, logits, "import:by-texture", CUE_CONFLICT, texture)
        import_predictions(store, logits, "import:mixed", CUE_CONFLICT, np.where(np.arange(n) % 3 == 0, shape, texture))
        _register_cue16(store)
        shapes16 = [name.split("-")[0].rstrip("0123456789") for name in CUE16_FILES]
        imagenet = [HUMAN_CATEGORY_IMAGENET_INDICES[s][-1] for s in shapes16]
        import_predictions(store, logits, "import:in1k", "cue16", np.array(imagenet), n_classes=1000)
    return path


@pytest.fixture
def cue_store(cue_template, tmp_path):
    shutil.copytree(cue_template, tmp_path / "store")
    return Store.open(tmp_path / "store", readonly=False)


def _hand_shape_bias(decisions: np.ndarray, shape: np.ndarray, texture: np.ndarray) -> float:
    conflict = shape != texture
    shape_hits = np.sum(conflict & (decisions == shape))
    texture_hits = np.sum(conflict & (decisions == texture))
    return shape_hits / (shape_hits + texture_hits)


def _cues(store: Store) -> tuple[np.ndarray, np.ndarray]:
    cues = store.annotations(CUE_CONFLICT)
    rows = range(len(cues["shape"]))
    return np.array([cues["shape"][r] for r in rows]), np.array([cues["texture"][r] for r in rows])


def test_classifier_heads_deciding_by_shape_texture_or_both(cue_store):
    report = run_shape_bias(cue_store, ["import:by-*", "import:mixed"], CUE_CONFLICT)
    results = {row.model: row for row in report.rows}
    shape, texture = _cues(cue_store)
    same = int(np.sum(shape == texture))
    assert 0 < same < len(shape)  # the fixture has images to drop
    assert results["import:by-shape"].result.shape_bias == 1.0
    assert results["import:by-texture"].result.shape_bias == 0.0
    assert results["import:by-shape"].result.n_dropped_same == same
    classes = np.array(cue_store.dataset_info(CUE_CONFLICT)["classnames"])
    mixed = classes[np.argmax(cue_store.read_array(CUE_CONFLICT, "import:mixed", "logits"), axis=1)]
    assert results["import:mixed"].result.shape_bias == pytest.approx(_hand_shape_bias(mixed, shape, texture))
    assert {row.route for row in report.rows} == {ROUTE_HEAD}
    stored = cue_store.query(
        "SELECT model, value, params FROM results WHERE analysis = 'shape_bias' AND metric = 'shape_bias'"
    )
    assert {r["model"]: r["value"] for r in stored}["import:by-texture"] == 0.0
    assert json.loads(stored[0]["params"])["decisions"] == ROUTE_HEAD


def test_clip_decides_zero_shot_over_the_dataset_classes(cue_store):
    (row,) = run_shape_bias(cue_store, [CLIP], CUE_CONFLICT).rows
    logits, _ = clip_scores(cue_store, CLIP, CUE_CONFLICT, "default", usable_rows(cue_store, CUE_CONFLICT))
    decisions = np.array(cue_store.dataset_info(CUE_CONFLICT)["classnames"])[np.argmax(logits, axis=1)]
    shape, texture = _cues(cue_store)
    assert row.route == ROUTE_ZERO_SHOT
    assert row.result.shape_bias == pytest.approx(_hand_shape_bias(decisions, shape, texture))


def test_imagenet_classifier_is_mapped_to_16_categories_and_cues_come_from_file_names(cue_store):
    (row,) = run_shape_bias(cue_store, ["import:in1k"], "cue16").rows
    assert (row.route, row.cues) == (ROUTE_IMAGENET_TO_16, CUES_FROM_FILE_NAMES)
    # it predicts an ImageNet class of every image's shape category; cat2-cat5 and truck1-truck2 are dropped
    assert (row.result.shape_bias, row.result.n_used, row.result.n_dropped_same) == (1.0, 6, 2)



def _designed_clip_on_imagenet(store: Store) -> None:
    """A CLIP-kind model with text embeddings for 1000 ImageNet classes ("in1k") whose image embedding
    of each cue16 image is exactly the text embedding of one ImageNet class: of the shape category on
    even rows, of the texture category on odd rows."""
    register_rows_only_dataset(store, "in1k", [f"class {i}" for i in range(1000)], [0])
    store.register_model({"model_id": "clip:designed", "kind": "clip", "library": "test", "fingerprint": "designed",
                          "logit_scale": 0.5})  # fmt: skip  (the route uses model-vs-human's 100 instead)
    text = np.random.default_rng(0).normal(size=(1000, 1, 64)).astype(np.float32)
    targets = []
    for i, name in enumerate(CUE16_FILES):
        shape, texture = (part.removesuffix(".png").rstrip("0123456789") for part in name.split("-"))
        targets.append(HUMAN_CATEGORY_IMAGENET_INDICES[shape][-1] if i % 2 == 0 else
                       HUMAN_CATEGORY_IMAGENET_INDICES[texture][0])  # fmt: skip
    put_array(store, "in1k", "clip:designed", "text_emb", text)
    put_array(store, "cue16", "clip:designed", "image_emb", 3.0 * text[targets, 0])


def test_clip_can_decide_over_1000_imagenet_classes_mapped_to_16(cue_store):
    _designed_clip_on_imagenet(cue_store)
    (row,) = run_shape_bias(cue_store, ["clip:designed"], "cue16", clip_imagenet="in1k").rows
    # used rows 0, 1, 3, 4, 5, 7 (2 and 6 have shape == texture): shape on 0 and 4, texture on the rest
    assert row.route == ROUTE_CLIP_IMAGENET_TO_16
    assert (row.result.shape_bias, row.result.n_used, row.result.n_dropped_same) == (pytest.approx(2 / 6), 6, 2)
    (stored,) = cue_store.query("SELECT params FROM results WHERE analysis = 'shape_bias' AND metric = 'shape_bias'")
    params = json.loads(stored["params"])
    assert (params["classes_from"], params["prompt_set"], params["templates"]) == ("in1k", "default", [0])
    assert params["logit_scale"] == 100.0
    # without the option the same model would decide over cue16's own 16 class names
    assert decision_route(cue_store, "clip:designed", "cue16") == ROUTE_ZERO_SHOT


def test_the_1000_way_clip_route_checks_its_datasets_and_models(cue_store):
    _designed_clip_on_imagenet(cue_store)
    with pytest.raises(AnalysisError, match="--clip-imagenet shapes has 8 classes, not the 1000 ImageNet classes"):
        run_shape_bias(cue_store, ["clip:designed"], "cue16", clip_imagenet="shapes")
    with pytest.raises(AnalysisError, match=f"dataset {CUE_CONFLICT}'s classes are not those"):
        run_shape_bias(cue_store, ["clip:designed"], CUE_CONFLICT, clip_imagenet="in1k")
    with pytest.raises(AnalysisError, match=f"model {CLIP} has no text_emb on in1k: extract it on that dataset first"):
        run_shape_bias(cue_store, [CLIP], "cue16", clip_imagenet="in1k")
    report = run_shape_bias(cue_store, ["clip:*", "openclip:*"], "cue16", clip_imagenet="in1k")
    assert [r.model for r in report.rows] == ["clip:designed"] and CLIP in report.skipped
    result = CliRunner().invoke(shape_bias_command, ["--store", str(cue_store.path), "--model", "clip:designed",
                                                     "--dataset", "cue16", "--clip-imagenet", "in1k", "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)[0]["decisions"] == ROUTE_CLIP_IMAGENET_TO_16

def test_a_glob_skips_models_that_cannot_be_scored_and_a_named_one_fails(cue_store):
    report = run_shape_bias(cue_store, ["*"], CUE_CONFLICT)
    assert TIMM in report.skipped and "import:in1k" in report.skipped  # no logits on this dataset at all
    with pytest.raises(AnalysisError, match=f"model {TIMM} has 1000 outputs"):
        run_shape_bias(cue_store, [TIMM], CUE_CONFLICT)


def test_datasets_without_both_cues_are_errors(cue_store, tmp_path):
    with pytest.raises(AnalysisError, match="shapes-sketch has 'shape' but no 'texture' annotations: it is not a cue"):
        run_shape_bias(cue_store, [CLIP], "shapes-sketch")  # outline drawings: no texture
    with pytest.raises(AnalysisError, match="lacks a 'shape' or 'texture' annotation"):
        run_shape_bias(cue_store, [CLIP], "shapes-x")  # only its plain-colour rows carry a texture
    np.save(tmp_path / "plain.npy", np.eye(8, dtype=np.float32)[:4])
    (tmp_path / "keys.txt").write_text("a\nb\nc\nd\n")
    import_array(cue_store, "plain", "import:plain", "logits", tmp_path / "plain.npy", keys_file=tmp_path / "keys.txt")
    with pytest.raises(AnalysisError, match="no 'shape'/'texture' annotations and its file names do not name"):
        run_shape_bias(cue_store, ["import:plain"], "plain")


def test_cues_outside_the_classes_or_a_dataset_without_classes_are_refused(cue_store):
    """shapes-ood's shapes are unseen categories (arrow, ...): no decision can match them, so its shape bias
    would be a meaningless 0; a caption set has no classes to decide among."""
    with pytest.raises(AnalysisError, match=r"shapes-ood: 32 of 32 rows have a shape that is not one of its classes"):
        run_shape_bias(cue_store, ["*"], "shapes-ood")
    with pytest.raises(AnalysisError, match=r"shapes-captions has no classes \(a retrieval dataset\): shape bias"):
        run_shape_bias(cue_store, ["*"], "shapes-captions")
    result = CliRunner().invoke(shape_bias_command, ["--store", str(cue_store.path), "--model", "*",
                                                     "--dataset", "shapes-ood"])  # fmt: skip
    assert result.exit_code == 1 and len(result.output.splitlines()) == 1, result.output
    assert cue_store.query("SELECT * FROM results WHERE analysis = 'shape_bias'") == []


def test_a_dataset_without_any_cue_conflict_is_refused_and_stores_nothing(cue_store):
    with pytest.raises(AnalysisError, match="every image's shape equals its texture"):
        run_shape_bias(cue_store, [CLIP], "shapes")  # every ID image has its own class texture
    assert cue_store.query("SELECT * FROM results WHERE analysis = 'shape_bias'") == []


def test_cli_json(cue_store):
    result = CliRunner().invoke(
        shape_bias_command,
        ["--store", str(cue_store.path), "--model", "import:by-*", "--dataset", CUE_CONFLICT, "--json"],
    )
    assert result.exit_code == 0, result.output
    assert {r["model"]: r["shape_bias"] for r in json.loads(result.output)} == {
        "import:by-shape": 1.0,
        "import:by-texture": 0.0,
    }
