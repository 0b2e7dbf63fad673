"""timm adapter: pre-logit features + head equal the model's forward, weights from seeds, files and
the hub cache, timm's own eval transform."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import safetensors.torch
import timm
import torch
from PIL import Image

from embedstore.errors import ModelError
from embedstore.models import ModelAdapter, load_model
from embedstore.models import weights as W

COMMIT = "89abcdef0123456789abcdef0123456789abcdef"


def pil_images() -> list[Image.Image]:
    rng = np.random.default_rng(1)
    shapes = [(160, 160), (120, 200), (300, 150), (97, 131)]
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in shapes]


def put_in_hub_cache(cache: Path, repo: str, filename: str, source: Path) -> Path:
    """Lay a file out as huggingface_hub's cache does: refs/main -> snapshots/<commit>/<file>."""
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(COMMIT)
    target = root / "snapshots" / COMMIT / filename
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(source.read_bytes())
    return target


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))

    def refuse(*args, **kwargs):
        raise AssertionError("the hub was contacted")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    monkeypatch.setattr(timm.models._hub, "hf_hub_download", refuse)
    return cache


@pytest.fixture(scope="module")
def test_vit() -> ModelAdapter:
    return load_model("timm:test_vit@random:4")


@pytest.mark.parametrize("name", ["test_vit", "test_resnet", "test_convnext", "test_efficientnet", "test_byobnet"])
def test_pre_logits_then_classify_equals_the_models_forward(name: str) -> None:
    adapter = load_model(f"timm:{name}@random:2")
    torch.manual_seed(2)
    reference = timm.create_model(name, pretrained=False).eval()  # the same seeded init, built by timm
    x = torch.randn(2, 3, *adapter.preprocess.size, generator=torch.Generator().manual_seed(0))
    features = adapter.encode_image(x)
    assert features.shape == (2, adapter.embed_dim)
    with torch.no_grad():
        assert torch.equal(features, reference.forward_head(reference.forward_features(x), pre_logits=True))
        assert torch.equal(adapter.classify(features), reference(x))
    assert adapter.num_classes == 1000 and adapter.kind == "classifier"
    assert adapter.logit_scale is None and adapter.logit_bias is None


def test_pil_transform_equals_timms_eval_transform(test_vit: ModelAdapter) -> None:
    reference = timm.create_model("test_vit", pretrained=False)
    transform = timm.data.create_transform(**timm.data.resolve_model_data_config(reference), is_training=False)
    for image in pil_images():
        assert torch.equal(test_vit.pil_transform(image), transform(image))
    gray = pil_images()[1].convert("L")  # timm's readers convert to RGB first; so does the adapter
    assert torch.equal(test_vit.pil_transform(gray), transform(gray.convert("RGB")))
    assert test_vit.preprocess.size == (160, 160) and test_vit.preprocess.resize == (168, 168)  # crop_pct 0.95


def test_random_weights_are_seeded(test_vit: ModelAdapter) -> None:
    again, other = load_model("timm:test_vit@random:4"), load_model("timm:test_vit@random:5")
    assert test_vit.fingerprint == again.fingerprint != other.fingerprint
    x = torch.randn(2, 3, 160, 160)
    assert torch.equal(test_vit.encode_image(x), again.encode_image(x))
    assert not torch.allclose(test_vit.encode_image(x), other.encode_image(x))
    assert test_vit.metadata == {
        "family": "ViT", "arch": "test_vit", "backbone": "vit",
        "params": sum(p.numel() for p in test_vit.module.parameters()),
        "resolution": 160, "embed_dim": 64, "train_data": None, "train_size": None, "fine_tuned": None,
        "fine_tune_method": None, "loss": None, "group": None, "random_init": True, "weights_source": "random:4",
    }  # fmt: skip


def test_local_checkpoints_reload_to_identical_outputs(test_vit: ModelAdapter, tmp_path: Path) -> None:
    pickled = tmp_path / "vit.pth"
    torch.save(test_vit.module.state_dict(), pickled)
    safe = tmp_path / "vit.safetensors"
    safetensors.torch.save_file(test_vit.module.state_dict(), safe)
    x = torch.randn(2, 3, 160, 160)
    expected = test_vit.classify(test_vit.encode_image(x))
    for path in (pickled, safe):
        adapter = load_model(f"timm:test_vit@{path}")
        assert torch.equal(adapter.classify(adapter.encode_image(x)), expected)
        assert adapter.fingerprint == W.sha256_file(path)
        assert adapter.metadata["weights_source"] == f"file:{path.resolve()}"
    assert W.sha256_file(pickled) != W.sha256_file(safe)
    training = tmp_path / "checkpoint-3.pth.tar"  # as timm's train script saves it
    torch.save({"epoch": 3, "arch": "test_vit", "state_dict": test_vit.module.state_dict(),
                "args": argparse.Namespace(lr=0.1)}, training)  # fmt: skip
    adapter = load_model(f"timm:test_vit@{training}")
    assert torch.equal(adapter.classify(adapter.encode_image(x)), expected)


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickled_objects_and_mismatched_weights_are_refused(test_vit: ModelAdapter, tmp_path: Path) -> None:
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": test_vit.module.state_dict(), "extra": _Payload()}, evil)
    with pytest.raises(ModelError, match=r"builtins\.print\) and was refused by torch.load\(weights_only=True\)"):
        load_model(f"timm:test_vit@{evil}")
    resnet = tmp_path / "resnet.pth"
    torch.save(load_model("timm:test_resnet@random").module.state_dict(), resnet)
    with pytest.raises(ModelError, match="Missing key"):
        load_model(f"timm:test_vit@{resnet}")


def test_pretrained_tag_loads_offline_from_the_hub_cache(
    test_vit: ModelAdapter, hub_cache: Path, tmp_path: Path
) -> None:
    source = tmp_path / "model.safetensors"
    safetensors.torch.save_file(test_vit.module.state_dict(), source)
    put_in_hub_cache(hub_cache, "timm/test_vit.r160_in1k", "model.safetensors", source)
    adapter = load_model("timm:test_vit")  # timm's default tag, r160_in1k
    assert adapter.model_id == "timm:test_vit.r160_in1k"
    x = torch.randn(2, 3, 160, 160)
    assert torch.equal(adapter.encode_image(x), test_vit.encode_image(x))
    assert adapter.fingerprint == W.sha256_text(f"timm:test_vit.r160_in1k|timm=={timm.__version__}")
    assert adapter.metadata["weights_source"] == f"hf-hub:timm/test_vit.r160_in1k/model.safetensors@{COMMIT}"
    assert adapter.metadata["train_data"] == "ImageNet-1k" and adapter.metadata["train_size"] == 1_281_167
    assert adapter.metadata["group"] == "ImageNet classifier" and adapter.metadata["loss"] == "cross-entropy"


def test_missing_pretrained_weights_fail_fast_offline(hub_cache: Path) -> None:
    start = time.perf_counter()
    with pytest.raises(ModelError) as caught:
        load_model("timm:resnet50")
    assert time.perf_counter() - start < 5
    message = str(caught.value)
    assert "timm/resnet50.a1_in1k/pytorch_model.bin" in message and "HF_HUB_OFFLINE" in message
    assert "timm:resnet50.a1_in1k@PATH" in message and "\n" not in message


def test_distilled_heads_are_refused() -> None:
    with pytest.raises(ModelError, match="distillation head"):
        load_model("timm:deit_tiny_distilled_patch16_224@random")
