"""The demo's toy models: trained once into a cache folder, reused, loaded and extracted by their ids;
and the two loader additions they need (a timm head of any width read from the checkpoint, and
``openclip-classifier:`` fine-tuned CLIP files)."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import timm
import torch
import torch.nn.functional as F

from embedstore.demo import models as demo
from embedstore.demo.models import ToyRecipe, default_cache_dir, read_manifest, train_toy_models
from embedstore.demo.shapes_data import load_shapes
from embedstore.demo.training import Schedule, learning_rate_factor, train_contrastive
from embedstore.errors import ModelError
from embedstore.extract.plan import DatasetPlan, Plan, Settings
from embedstore.extract.runner import run_extraction
from embedstore.models import load_model, parse_model_id
from embedstore.models import weights as W
from embedstore.models.openclip_classifier_adapter import HEAD_KEY, save_openclip_classifier
from embedstore.models.timm_adapter import checkpoint_num_classes
from embedstore.sources import open_dataset
from embedstore.store import Store

#: A few optimisation steps on a few images: fast, and enough to exercise every code path.
QUICK = ToyRecipe(
    clip_arch="embedstore-tiny",
    clip_images=24,
    clip=Schedule(steps=3, batch_size=8, lr=1e-3),
    classifier_arch="test_resnet",
    classifier_images=16,
    classifier=Schedule(steps=2, batch_size=4, lr=1e-3),
    finetune_images=16,
    finetune=Schedule(steps=2, batch_size=8, lr=1e-4),
    eval_images=16,
)


@pytest.fixture(scope="module")
def quick_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, list[str]]:
    folder = tmp_path_factory.mktemp("demo-cache") / "demo"
    messages: list[str] = []
    threads = torch.get_num_threads()
    plans = train_toy_models(folder, seed=3, progress=messages.append, recipe=QUICK)
    assert torch.get_num_threads() == threads  # training runs on one thread, then restores the count
    return folder, plans, messages


def test_training_writes_three_files_a_manifest_and_plans(quick_models) -> None:
    folder, plans, messages = quick_models
    assert list(plans) == ["toy-clip", "toy-classifier", "toy-finetuned-clip"]
    assert [p.id for p in plans.values()] == [
        f"openclip:embedstore-tiny@{folder / 'toy_clip.pt'}",
        f"timm:test_resnet@{folder / 'toy_classifier'}",
        f"openclip-classifier:embedstore-tiny@{folder / 'toy_finetuned_clip.pt'}",
    ]
    assert plans["toy-clip"].metadata == {"group": "zero-shot CLIP", "train_data": "shapes-captions",
                                          "train_size": 24, "loss": "softmax-contrastive"}  # fmt: skip
    assert plans["toy-classifier"].metadata["group"] == "ImageNet classifier"
    assert plans["toy-finetuned-clip"].metadata == {
        "group": "fine-tuned CLIP", "train_data": "shapes-captions", "train_size": 24, "fine_tuned": "shapes",
        "fine_tune_method": "end-to-end", "loss": "softmax-contrastive",
    }  # fmt: skip
    manifest = read_manifest(folder)
    assert manifest["seed"] == 3 and manifest["recipe"]["clip"]["steps"] == 3
    assert set(manifest["versions"]) >= {"torch", "open_clip_torch", "timm", "embedstore"}
    for key, entry in manifest["models"].items():
        assert entry["sha256"] == demo._content_hash(folder / entry["file"])
        assert entry["model_id"] == plans[key].id and entry["metadata"] == plans[key].metadata
        assert set(entry["accuracy"]) == {"shapes", "shapes-sketch"}
        assert all(0.0 <= a <= 1.0 for a in entry["accuracy"].values())
    assert manifest["models"]["toy-clip"]["steps"] == 3 and manifest["models"]["toy-classifier"]["steps"] == 2
    assert manifest["models"]["toy-clip"]["train_data"] == "synthetic:shapes-captions?n=24&seed=1003"
    assert any("toy CLIP: zero-shot accuracy" in m for m in messages)
    assert sorted(p.name for p in folder.iterdir()) == [
        "manifest.json",
        "toy_classifier",
        "toy_clip.pt",
        "toy_finetuned_clip.pt",
    ]  # no temporary left


def test_the_ids_load_as_a_clip_and_two_classifiers(quick_models) -> None:
    folder, plans, _ = quick_models
    clip = load_model(plans["toy-clip"].id)
    classifier = load_model(plans["toy-classifier"].id)
    finetuned = load_model(plans["toy-finetuned-clip"].id)
    assert (clip.kind, classifier.kind, finetuned.kind) == ("clip", "classifier", "classifier")
    assert classifier.num_classes == finetuned.num_classes == 8 and clip.num_classes is None
    saved = torch.load(folder / "toy_clip.pt", weights_only=True)
    assert all(torch.equal(saved[k], v) for k, v in clip.module.state_dict().items())
    x = torch.randn(2, 3, *clip.preprocess.size, generator=torch.Generator().manual_seed(0))
    assert classifier.preprocess.size == (32, 32)  # the export's input size, not test_resnet's 160
    assert classifier.classify(classifier.encode_image(x)).shape == (2, 8)
    # the fine-tuned tower differs from the toy CLIP's (it was trained further); its text tower does not
    assert not torch.allclose(finetuned.encode_image(x), clip.encode_image(x))
    tokens = clip.tokenize(["a photo of a star."])
    assert torch.equal(finetuned.module.encode_text(tokens), clip.module.encode_text(tokens))


def test_a_second_call_reuses_the_files(quick_models, monkeypatch: pytest.MonkeyPatch) -> None:
    folder, plans, _ = quick_models
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}

    def refuse(*args, **kwargs):
        raise AssertionError("the toy models were trained again")

    monkeypatch.setattr(demo, "_train_all", refuse)
    messages: list[str] = []
    assert train_toy_models(folder, seed=3, progress=messages.append, recipe=QUICK) == plans
    assert messages == [f"using the toy models trained in {folder} (seed 3; `embedstore demo --retrain` trains them again)"]
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before


@pytest.mark.parametrize(
    "change",
    ["retrain", "seed", "recipe", "corrupt file", "missing file", "bad manifest"],
)
def test_anything_but_an_intact_matching_cache_trains_again(
    quick_models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    folder = Path(shutil.copytree(quick_models[0], tmp_path / "copy"))
    calls = []
    monkeypatch.setattr(demo, "_train_all", lambda *args: calls.append(args) or read_manifest(quick_models[0]))
    kwargs = {"seed": 3, "recipe": QUICK}
    if change == "retrain":
        kwargs["retrain"] = True
    elif change == "seed":
        kwargs["seed"] = 4
    elif change == "recipe":
        kwargs["recipe"] = dataclasses.replace(QUICK, eval_images=17)
    elif change == "corrupt file":
        (folder / "toy_classifier" / "model.safetensors").write_bytes(b"not a checkpoint")
    elif change == "missing file":
        (folder / "toy_finetuned_clip.pt").unlink()
    else:
        (folder / "manifest.json").write_text("{not json")
    train_toy_models(folder, **kwargs)
    assert len(calls) == 1


def test_retraining_with_the_same_seed_reproduces_the_weights(quick_models, tmp_path: Path) -> None:
    folder, _, _ = quick_models
    again = tmp_path / "again"
    train_toy_models(again, seed=3, recipe=QUICK)
    for name in ("toy_clip.pt", "toy_classifier/model.safetensors"):
        first, second = timm.models.load_state_dict(str(folder / name)), timm.models.load_state_dict(str(again / name))
        assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    first = read_manifest(folder)["models"]
    assert {k: e["accuracy"] for k, e in read_manifest(again)["models"].items()} == {
        k: e["accuracy"] for k, e in first.items()
    }


def test_the_extractor_runs_the_toy_models_with_their_metadata(quick_models, tmp_path: Path) -> None:
    _, plans, _ = quick_models
    store = Store.create(tmp_path / "store")
    plan = Plan(
        models=tuple(plans.values()),
        datasets=(DatasetPlan("shapes", "synthetic:shapes?n=12&seed=0"),),
        settings=Settings(workers=0, device="cpu", batch_size=8, chunk_rows=8),
    )
    run_extraction(store, plan, log=lambda _message: None, progress=False)
    groups = {}
    for key, model_plan in plans.items():
        info = store.model_info(model_plan.id)
        groups[key] = info["group_label"]
        assert store.read_array("shapes", model_plan.id, "logits").shape == (12, 8)
        assert json.loads(info["metadata"])["train_data"] == model_plan.metadata["train_data"]
    assert groups == {"toy-clip": "zero-shot CLIP", "toy-classifier": "ImageNet classifier",
                      "toy-finetuned-clip": "fine-tuned CLIP"}  # fmt: skip
    finetuned = store.model_info(plans["toy-finetuned-clip"].id)
    assert finetuned["kind"] == "classifier" and finetuned["library"] == "openclip-classifier"
    assert finetuned["fine_tuned"] == "shapes"


def test_cache_folder_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("EMBEDSTORE_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "embedstore" / "demo"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "embedstore" / "demo"
    monkeypatch.setenv("EMBEDSTORE_CACHE", str(tmp_path / "mine"))
    assert default_cache_dir() == tmp_path / "mine" / "demo"


def test_an_unwritable_cache_folder_is_one_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ModelError, match=r"demo model cache .*a-file/demo is not writable .*EMBEDSTORE_CACHE") as e:
        train_toy_models(blocker / "demo", recipe=QUICK)
    assert "\n" not in str(e.value)


def test_contrastive_training_updates_only_the_embedding_rows_of_caption_tokens() -> None:
    clip = load_model("openclip:embedstore-tiny@random:2")
    pairs = load_shapes("shapes-captions", 8, 0, clip.pil_transform)
    tokens = clip.tokenize([c for captions in pairs.captions for c in captions]).reshape(8, 5, -1)
    before = clip.module.token_embedding.weight.detach().clone()
    losses = train_contrastive(clip.module, pairs, tokens, Schedule(steps=3, batch_size=4, lr=1e-2),
                               torch.Generator().manual_seed(0))  # fmt: skip
    after = clip.module.token_embedding.weight.detach()
    used = torch.zeros(len(after), dtype=torch.bool)
    used[tokens.unique()] = True
    changed = (after != before).any(dim=1)
    assert len(losses) == 3 and changed.any() and not changed[~used].any()
    assert not clip.module.token_embedding.sparse and not clip.module.training


def test_learning_rate_warms_up_linearly_then_decays_by_a_cosine() -> None:
    schedule = Schedule(steps=20, batch_size=1, lr=1.0, warmup_fraction=0.1)
    factors = [learning_rate_factor(step, schedule) for step in range(20)]
    assert factors[:2] == [0.5, 1.0] and factors[2] == pytest.approx(1.0)
    assert factors[11] == pytest.approx(0.5) and factors[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 17 / 18)))
    assert all(a >= b for a, b in zip(factors[2:], factors[3:]))


# --- timm: the number of classes comes from the checkpoint -------------------------------------------------


@pytest.mark.parametrize("name", ["test_resnet", "test_vit", "test_convnext"])
def test_timm_checkpoint_with_an_8_way_head_loads_as_saved(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=8).eval()
    path = tmp_path / "eight.pth"
    torch.save(model.state_dict(), path)
    assert checkpoint_num_classes(name, path) == 8
    adapter = load_model(f"timm:{name}@{path}")
    x = torch.randn(2, 3, 160, 160, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x)
    assert adapter.num_classes == 8 and torch.equal(adapter.classify(adapter.encode_image(x)), expected)


def test_timm_class_count_is_read_from_training_checkpoints_and_safetensors(tmp_path: Path) -> None:
    model = timm.create_model("test_vit", pretrained=False, num_classes=5)
    training = tmp_path / "checkpoint-1.pth.tar"
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, training)
    safe = tmp_path / "five.safetensors"
    safetensors.torch.save_file(model.state_dict(), safe)
    assert checkpoint_num_classes("test_vit", training) == checkpoint_num_classes("test_vit", safe) == 5
    assert load_model(f"timm:test_vit@{safe}").num_classes == 5
    headless = tmp_path / "headless.pth"
    torch.save({k: v for k, v in model.state_dict().items() if not k.startswith("head.")}, headless)
    assert checkpoint_num_classes("test_vit", headless) is None  # timm's default head: the load reports it missing
    with pytest.raises(ModelError, match="Missing key"):
        load_model(f"timm:test_vit@{headless}")


def _export(model: torch.nn.Module, folder: Path, size: int) -> Path:
    timm.models.save_for_hf(model, str(folder), data_config={"input_size": (3, size, size)}, safe_serialization=True)
    return folder


def test_timm_export_folder_brings_its_classes_constructor_arguments_and_preprocessing(tmp_path: Path) -> None:
    torch.manual_seed(0)
    vit = timm.create_model("test_vit", pretrained=False, num_classes=5, img_size=48).eval()
    folder = _export(vit, tmp_path / "vit", 48)
    adapter = load_model(f"timm:test_vit@{folder}")
    assert adapter.num_classes == 5 and adapter.preprocess.size == (48, 48) and adapter.preprocess.resize == (50, 50)
    x = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = vit(x)
    assert torch.equal(adapter.classify(adapter.encode_image(x)), expected)
    assert adapter.metadata["weights_source"] == f"local-dir:{folder.resolve()}"
    config, weights = folder / "config.json", folder / "model.safetensors"
    assert adapter.fingerprint == W.sha256_text(f"{W.sha256_file(config)}|{W.sha256_file(weights)}")
    config.write_text(config.read_text().replace('"crop_pct": 0.95', '"crop_pct": 1.0'))
    changed = load_model(f"timm:test_vit@{folder}")
    assert changed.fingerprint != adapter.fingerprint and changed.preprocess.resize == (48, 48)


def test_timm_export_folders_that_do_not_fit_are_refused(tmp_path: Path) -> None:
    folder = _export(timm.create_model("test_resnet", pretrained=False, num_classes=3), tmp_path / "resnet", 32)
    with pytest.raises(ModelError, match=r"config.json describes a 'test_resnet' model, not 'test_vit'"):
        load_model(f"timm:test_vit@{folder}")
    (folder / "model.safetensors").rename(tmp_path / "elsewhere.safetensors")
    with pytest.raises(ModelError, match="has no model.safetensors or pytorch_model.bin"):
        load_model(f"timm:test_resnet@{folder}")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelError, match="has no config.json"):
        load_model(f"timm:test_resnet@{empty}")
    (empty / "config.json").write_text("{oops")
    (empty / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ModelError, match="is not a timm config"):
        load_model(f"timm:test_resnet@{empty}")


# --- openclip-classifier: a CLIP image tower with a linear head --------------------------------------------


@pytest.fixture(scope="module")
def finetuned_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module, torch.nn.Linear]:
    clip = load_model("openclip:embedstore-tiny@random:5")
    head = torch.nn.Linear(clip.embed_dim, 3)
    with torch.no_grad():
        head.weight.copy_(torch.randn(3, clip.embed_dim, generator=torch.Generator().manual_seed(2)))
        head.bias.copy_(torch.tensor([0.5, -1.0, 2.0]))
    path = tmp_path_factory.mktemp("ft") / "ft.pt"
    save_openclip_classifier(path, clip.module.state_dict(), head)
    return path, clip.module, head


def test_openclip_classifier_logits_are_the_head_on_the_normalised_embedding(finetuned_file) -> None:
    path, clip_module, head = finetuned_file
    adapter = load_model(f"openclip-classifier:embedstore-tiny@{path}")
    assert adapter.model_id == f"openclip-classifier:embedstore-tiny@{path}"
    assert (adapter.kind, adapter.num_classes, adapter.embed_dim) == ("classifier", 3, 32)
    assert adapter.logit_scale is None and adapter.fingerprint == W.sha256_file(path)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        embedding = clip_module.encode_image(x)
        expected = head(F.normalize(embedding, dim=-1))
    features = adapter.encode_image(x)
    assert torch.allclose(features, embedding, atol=1e-6)
    assert torch.allclose(adapter.classify(features), expected, atol=1e-5)
    assert adapter.metadata["group"] == "fine-tuned CLIP" and adapter.metadata["weights_source"] == f"file:{path}"
    as_clip = load_model(f"openclip:embedstore-tiny@{path}")  # open_clip reads the same file, ignoring the head
    assert as_clip.kind == "clip" and torch.allclose(as_clip.encode_image(x), embedding, atol=1e-6)


def test_openclip_classifier_precision_converts_the_head(finetuned_file) -> None:
    path, _, _ = finetuned_file
    adapter = load_model(f"openclip-classifier:embedstore-tiny@{path}", precision="bf16")
    logits = adapter.classify(adapter.encode_image(torch.randn(2, 3, 32, 32)))
    assert logits.dtype == torch.bfloat16 and logits.shape == (2, 3)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("openclip-classifier:embedstore-tiny", "needs @PATH"),
        ("openclip-classifier:embedstore-tiny@random:1", "needs @PATH"),
        ("openclip-classifier:hf-hub:org/repo", "needs @PATH"),
        ("openclip-classifier:ViT-Q-99@/x.pt", "unknown open_clip architecture 'ViT-Q-99'"),
        ("openclip-clasifier:embedstore-tiny@/x.pt", "did you mean 'openclip-classifier'"),
    ],
)
def test_openclip_classifier_ids(text: str, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        parse_model_id(text)


def test_openclip_classifier_id_round_trips() -> None:
    spec = parse_model_id("openclip-classifier:embedstore-tiny@/models/ft.pt")
    assert (spec.library, spec.arch, spec.path) == ("openclip-classifier", "embedstore-tiny", "/models/ft.pt")
    assert parse_model_id(str(spec)) == spec


def test_openclip_classifier_files_without_a_fitting_head_are_refused(finetuned_file, tmp_path: Path) -> None:
    path, clip_module, _ = finetuned_file
    plain = tmp_path / "plain.pt"
    torch.save(clip_module.state_dict(), plain)
    with pytest.raises(ModelError, match=f"has no '{HEAD_KEY}' with a 'weight' and a 'bias' tensor"):
        load_model(f"openclip-classifier:embedstore-tiny@{plain}")
    wide = tmp_path / "wide.pt"
    save_openclip_classifier(wide, clip_module.state_dict(), torch.nn.Linear(64, 3))
    with pytest.raises(ModelError, match=r"weight \[3, 64\] and bias \[3\] do not fit embed_dim 32"):
        load_model(f"openclip-classifier:embedstore-tiny@{wide}")
    safe = tmp_path / "ft.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in clip_module.state_dict().items()}, safe)
    with pytest.raises(ModelError, match=r"is a torch checkpoint \(torch.save\), not .safetensors"):
        load_model(f"openclip-classifier:embedstore-tiny@{safe}")


# --- the full recipe ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_full_recipe_models_reach_their_accuracies_through_the_store(tmp_path: Path) -> None:
    """The default recipe (about 75 s): the toy CLIP is far above chance zero-shot on shapes the
    demo would extract (seed 0, never trained on) and near chance on sketches; the classifier and the
    fine-tuned CLIP beat it on shapes. Accuracies come from the extracted logits, not the manifest."""
    plans = train_toy_models(tmp_path / "demo", seed=0)
    store = Store.create(tmp_path / "store")
    datasets = tuple(DatasetPlan(v, f"synthetic:{v}?n=256&seed=0") for v in ("shapes", "shapes-sketch"))
    settings = Settings(workers=0, device="cpu", batch_size=128, chunk_rows=256)
    run_extraction(store, Plan(tuple(plans.values()), datasets, settings), log=lambda _m: None, progress=False)
    accuracy = {}
    for dataset in ("shapes", "shapes-sketch"):
        labels = np.array([s.label for s in open_dataset(dataset, f"synthetic:{dataset}?n=256&seed=0").samples])
        for key, plan in plans.items():
            logits = store.read_array(dataset, plan.id, "logits")
            accuracy[key, dataset] = float(np.mean(np.argmax(logits, axis=1) == labels))
    assert accuracy["toy-clip", "shapes"] > 0.6 and accuracy["toy-clip", "shapes-sketch"] < 0.3
    assert accuracy["toy-classifier", "shapes"] > 0.85
    assert accuracy["toy-finetuned-clip", "shapes"] > accuracy["toy-clip", "shapes"]
    recorded = read_manifest(tmp_path / "demo")["models"]["toy-clip"]["accuracy"]["shapes"]
    assert abs(recorded - accuracy["toy-clip", "shapes"]) < 0.1  # other images, same model
