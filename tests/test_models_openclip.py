"""open_clip adapter: seeded random weights, local checkpoints, the hub cache offline, and exact
agreement with open_clip's own model and transform."""

from __future__ import annotations

import json
import time
from pathlib import Path

import huggingface_hub
import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

import embedstore.models.openclip_adapter as openclip_adapter
from embedstore.errors import ModelError
from embedstore.models import CONFIG_DIR, ModelAdapter, load_model
from embedstore.models import weights as W

TINY = "openclip:embedstore-tiny"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
TEXTS = ["a photo of a dog.", "a blurry photo of a cat.", "an origami airplane, seen from far above"]


def images(n: int = 4, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def pil_images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    shapes = [(64, 64), (40, 60), (90, 45), (33, 71)]
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


def forbid_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any download attempt fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("the hub was contacted")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    monkeypatch.setattr(open_clip.pretrained, "hf_hub_download", refuse)
    monkeypatch.setattr(openclip_adapter, "download_pretrained", refuse)
    monkeypatch.setattr(openclip_adapter, "download_pretrained_from_hf", refuse)


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture
def tiny_tag(monkeypatch: pytest.MonkeyPatch) -> dict:
    """A pretrained tag for embedstore-tiny, with release settings unlike the defaults."""
    cfg = {
        "url": "",
        "hf_hub": "embedstore/tiny-test/",
        "mean": (0.5, 0.5, 0.5),
        "std": (0.25, 0.25, 0.25),
        "interpolation": "bilinear",
        "resize_mode": "squash",
        "quick_gelu": True,
    }
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, "embedstore-tiny", {"testtag": cfg})
    return cfg


@pytest.fixture(scope="module")
def tiny() -> ModelAdapter:
    return load_model(f"{TINY}@random")


@pytest.fixture(scope="module")
def tiny_11() -> ModelAdapter:
    return load_model(f"{TINY}@random:11")


@pytest.fixture(scope="module")
def tiny_checkpoint(tiny_11: ModelAdapter, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The state_dict of embedstore-tiny@random:11, saved as torch.save writes it."""
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    torch.save(tiny_11.module.state_dict(), path)
    return path


def test_bundled_config_is_registered_with_open_clip() -> None:
    assert "embedstore-tiny" in open_clip.list_models()
    config = json.loads((CONFIG_DIR / "embedstore-tiny.json").read_text())
    assert config["text_cfg"]["context_length"] == 16 and config["text_cfg"]["vocab_size"] == 49408


def test_random_weights_are_seeded_and_reproducible(tiny: ModelAdapter) -> None:
    state_before = torch.random.get_rng_state()
    a, b, c = tiny, load_model(f"{TINY}@random:0"), load_model(f"{TINY}@random:1")
    assert torch.equal(torch.random.get_rng_state(), state_before)  # the caller's RNG is untouched
    assert a.model_id == b.model_id == "openclip:embedstore-tiny@random:0"
    assert a.fingerprint == b.fingerprint != c.fingerprint
    assert len(a.fingerprint) == 64 and int(a.fingerprint, 16) >= 0
    x = images()
    assert torch.equal(a.encode_image(x), b.encode_image(x))
    assert not torch.allclose(a.encode_image(x), c.encode_image(x))
    assert a.metadata["random_init"] is True and a.metadata["weights_source"] == "random:0"
    assert a.metadata["train_data"] is None and a.metadata["group"] is None


def test_outputs_equal_open_clips_own_model() -> None:
    torch.manual_seed(5)
    reference, _, reference_preprocess = open_clip.create_model_and_transforms("embedstore-tiny")
    reference.eval()
    adapter = load_model(f"{TINY}@random:5")
    tokens = adapter.tokenize(TEXTS)
    assert torch.equal(tokens, open_clip.get_tokenizer("embedstore-tiny")(TEXTS))
    assert tokens.shape == (3, 16)
    x = images()
    with torch.no_grad():
        assert torch.equal(adapter.encode_image(x), reference.encode_image(x))
        assert torch.equal(adapter.encode_text(tokens), reference.encode_text(tokens))
    for image in pil_images():
        assert torch.equal(adapter.pil_transform(image), reference_preprocess(image))


def test_adapter_properties(tiny: ModelAdapter) -> None:
    adapter = tiny
    assert adapter.kind == "clip" and adapter.embed_dim == 32 and adapter.num_classes is None
    assert adapter.logit_scale == pytest.approx(1 / 0.07, rel=1e-6)  # open_clip's init, exp(log(1/0.07))
    assert adapter.logit_bias is None
    assert adapter.preprocess.size == (32, 32) and adapter.preprocess.resize_mode == "shortest"
    assert adapter.encode_image(images()).shape == (4, 32)
    assert adapter.encode_text(adapter.tokenize(TEXTS)).shape == (3, 32)
    assert not adapter.module.training
    with pytest.raises(ModelError, match="without a classifier head"):
        adapter.classify(torch.zeros(1, 32))
    with pytest.raises(ModelError, match=r"expected images of shape \[B, 3, H, W\]"):
        adapter.encode_image(torch.zeros(3, 32, 32))
    record = adapter.describe()
    assert record["model_id"] == "openclip:embedstore-tiny@random:0" and record["library"] == "openclip"
    assert record["fingerprint"] == adapter.fingerprint and record["family"] == "ViT"


def test_logit_bias_of_a_sigmoid_loss_config(tmp_path: Path) -> None:
    config = json.loads((CONFIG_DIR / "embedstore-tiny.json").read_text())
    config["init_logit_bias"] = -10.0
    (tmp_path / "embedstore-tiny-bias.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path / "embedstore-tiny-bias.json")
    adapter = load_model("openclip:embedstore-tiny-bias@random")
    assert adapter.logit_bias == -10.0


def test_saved_checkpoint_reloads_to_identical_outputs(
    tiny: ModelAdapter, tiny_11: ModelAdapter, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    original = tiny_11
    reloaded = load_model(f"{TINY}@{tiny_checkpoint}")
    x = images()
    assert torch.equal(original.encode_image(x), reloaded.encode_image(x))
    tokens = original.tokenize(TEXTS)
    assert torch.equal(original.encode_text(tokens), reloaded.encode_text(tokens))
    assert reloaded.fingerprint == W.sha256_file(tiny_checkpoint)
    assert reloaded.metadata["random_init"] is False
    assert reloaded.metadata["weights_source"] == f"file:{tiny_checkpoint.resolve()}"
    other = tmp_path / "other.pt"
    torch.save(tiny.module.state_dict(), other)
    assert load_model(f"{TINY}@{other}").fingerprint != reloaded.fingerprint


def test_checkpoint_matches_open_clip_loading_the_same_file(tiny_checkpoint: Path) -> None:
    reference, _, reference_preprocess = open_clip.create_model_and_transforms(
        "embedstore-tiny", pretrained=str(tiny_checkpoint)
    )
    reference.eval()
    adapter = load_model(f"{TINY}@{tiny_checkpoint}")
    x = images(seed=3)
    with torch.no_grad():
        assert torch.equal(adapter.encode_image(x), reference.encode_image(x))
    for image in pil_images():
        assert torch.equal(adapter.pil_transform(image), reference_preprocess(image))


_EXECUTED: list[str] = []


def _record_execution(tag: str) -> str:
    _EXECUTED.append(tag)
    return tag


class _Payload:
    def __reduce__(self):
        return (_record_execution, ("ran",))


def test_pickle_with_arbitrary_objects_is_refused(tiny: ModelAdapter, tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": tiny.module.state_dict(), "extra": _Payload()}, path)
    with pytest.raises(ModelError, match=r"weights_only=True"):
        load_model(f"{TINY}@{path}")
    assert _EXECUTED == []


def test_unusable_checkpoints_fail_with_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        load_model(f"{TINY}@{tmp_path / 'missing.pt'}")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ModelError, match=r"garbage.pt is not a file torch.save wrote \(it begins b'this is '\)"):
        load_model(f"{TINY}@{garbage}")
    cut = tmp_path / "cut.pt"
    torch.save({"weight": torch.zeros(300)}, cut)
    cut.write_bytes(cut.read_bytes()[:200])  # a zip archive cut short: the error says what torch found
    with pytest.raises(ModelError, match=r"cut.pt cannot be read as a torch checkpoint \(\w+: "):
        load_model(f"{TINY}@{cut}")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weight": torch.zeros(3)}, foreign)
    with pytest.raises(ModelError, match="could not build it"):
        load_model(f"{TINY}@{foreign}")


def test_precision_converts_the_weights(tiny: ModelAdapter) -> None:
    fp32 = tiny
    bf16 = load_model(f"{TINY}@random", precision="bf16")
    assert all(p.dtype == torch.bfloat16 for p in bf16.module.parameters())
    assert bf16.fingerprint == fp32.fingerprint  # the weights are fingerprinted before conversion
    x = images()
    out = bf16.encode_image(x)  # fp32 input is cast to the model's dtype
    assert out.dtype == torch.bfloat16
    reference = fp32.encode_image(x)
    assert torch.allclose(out.float(), reference, atol=0.05 * reference.abs().max().item())


def test_bad_device_and_precision() -> None:
    with pytest.raises(ModelError, match="precision 'fp8'"):
        load_model(f"{TINY}@random", precision="fp8")
    with pytest.raises(ModelError, match="not a torch device"):
        load_model(f"{TINY}@random", device="gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="CUDA is not available"):
            load_model(f"{TINY}@random", device="cuda")


def test_pretrained_tag_loads_offline_from_the_hub_cache(
    hub_cache: Path, tiny_tag: dict, tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cached = put_in_hub_cache(hub_cache, "embedstore/tiny-test", "open_clip_pytorch_model.bin", tiny_checkpoint)
    forbid_hub(monkeypatch)
    adapter = load_model(f"{TINY}.testtag")
    reference, _, reference_preprocess = open_clip.create_model_and_transforms(
        "embedstore-tiny",
        pretrained=str(cached),
        force_quick_gelu=True,
        image_mean=tiny_tag["mean"],
        image_std=tiny_tag["std"],
        image_interpolation="bilinear",
        image_resize_mode="squash",
    )
    reference.eval()
    x = images()
    with torch.no_grad():
        assert torch.equal(adapter.encode_image(x), reference.encode_image(x))  # QuickGELU, as the tag says
    for image in pil_images():
        assert torch.equal(adapter.pil_transform(image), reference_preprocess(image))
    assert adapter.preprocess.resize_mode == "squash" and adapter.preprocess.mean == (0.5, 0.5, 0.5)
    assert adapter.fingerprint == W.sha256_text(f"openclip:embedstore-tiny.testtag|open_clip=={open_clip.__version__}")
    assert adapter.metadata["weights_source"] == f"hf-hub:embedstore/tiny-test/open_clip_pytorch_model.bin@{COMMIT}"
    assert adapter.metadata["group"] == "zero-shot CLIP" and adapter.metadata["loss"] == "softmax-contrastive"
    assert adapter.metadata["random_init"] is False


def test_tag_with_a_local_file_keeps_the_release_settings(tiny_tag: dict, tiny_checkpoint: Path) -> None:
    adapter = load_model(f"{TINY}.testtag@{tiny_checkpoint}")
    assert adapter.preprocess.resize_mode == "squash" and adapter.preprocess.interpolation == "bilinear"
    assert adapter.fingerprint == W.sha256_file(tiny_checkpoint)
    plain = load_model(f"{TINY}@{tiny_checkpoint}")
    assert not torch.equal(adapter.encode_image(images()), plain.encode_image(images()))  # QuickGELU vs GELU


def test_missing_pretrained_weights_fail_fast_offline(hub_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    forbid_hub(monkeypatch)
    start = time.perf_counter()
    with pytest.raises(ModelError) as caught:
        load_model("openclip:ViT-B-32.laion2b_s34b_b79k")
    assert time.perf_counter() - start < 5
    message = str(caught.value)
    assert "laion/CLIP-ViT-B-32-laion2B-s34B-b79K" in message and "HF_HUB_OFFLINE" in message
    assert "openclip:ViT-B-32.laion2b_s34b_b79k@PATH" in message and "\n" not in message
    with pytest.raises(ModelError, match="not in the Hugging Face cache"):
        load_model("openclip:hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K")


def test_online_missing_weights_are_downloaded_by_open_clip(
    hub_cache: Path, tiny_tag: dict, tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[dict] = []

    def fake_download(cfg: dict) -> str:
        asked.append(cfg)
        return str(tiny_checkpoint)

    monkeypatch.setattr(W, "hub_offline", lambda: False)
    monkeypatch.setattr(openclip_adapter, "download_pretrained", fake_download)
    adapter = load_model(f"{TINY}.testtag")
    assert asked and asked[0]["hf_hub"] == "embedstore/tiny-test/"
    assert adapter.metadata["weights_source"] == "hf-hub:embedstore/tiny-test/tiny.pt"
    assert torch.equal(adapter.module.visual.conv1.weight, torch.load(tiny_checkpoint)["visual.conv1.weight"])


def test_hf_hub_repo_loads_from_its_cached_snapshot(
    hub_cache: Path, tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = "embedstore/tiny-hub"
    config = tmp_path / "open_clip_config.json"
    config.write_text(json.dumps({
        "model_cfg": json.loads((CONFIG_DIR / "embedstore-tiny.json").read_text()),
        "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
    }))  # fmt: skip
    forbid_hub(monkeypatch)
    put_in_hub_cache(hub_cache, repo, "open_clip_config.json", config)
    with pytest.raises(ModelError, match="open_clip_model.safetensors is not in the Hugging Face cache"):
        load_model(f"openclip:hf-hub:{repo}")
    put_in_hub_cache(hub_cache, repo, "open_clip_pytorch_model.bin", tiny_checkpoint)
    adapter = load_model(f"openclip:hf-hub:{repo}")
    assert adapter.preprocess.mean == (0.5, 0.5, 0.5)
    x = images()
    assert torch.equal(adapter.encode_image(x), load_model(f"{TINY}@{tiny_checkpoint}").encode_image(x))
    assert adapter.metadata["weights_source"] == f"hf-hub:{repo}/open_clip_pytorch_model.bin@{COMMIT}"
    assert adapter.metadata["group"] == "zero-shot CLIP" and adapter.metadata["train_data"] is None
    assert adapter.encode_text(adapter.tokenize(TEXTS)).shape == (3, 32)


def test_tiny_model_encodes_1000_prompts_and_256_images_well_under_a_second(tiny: ModelAdapter) -> None:
    adapter = tiny
    tokens = adapter.tokenize([f"a photo of a class {i}." for i in range(1000)])
    batch = torch.stack([adapter.pil_transform(Image.new("RGB", (64, 64), (i, 0, 0))) for i in range(256)])

    def best_of_three(fn) -> float:
        times = []
        for _ in range(3):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times)

    assert best_of_three(lambda: adapter.encode_text(tokens)) < 1.0
    assert best_of_three(lambda: adapter.encode_image(batch)) < 1.0
