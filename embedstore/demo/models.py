"""The demo's three toy models, trained once on the shapes world and cached, loaded by ordinary ids.

The study compares three groups of models; the demo trains one small model of each, on one CPU
thread in about 75 seconds, from generated data only (no download):

- ``toy-clip`` — "zero-shot CLIP": open_clip's ``embedstore-toy`` config trained from a seeded random
  init with CLIP's contrastive loss on ``shapes-captions`` pairs ("a photo of a red triangle.");
  extracted as ``openclip:embedstore-toy@DIR/toy_clip.pt`` (an open_clip state_dict). Zero-shot
  top-1 on held-out ``shapes`` under the dataset's templates: 67-80% for seeds 0-3 (chance 12.5%);
  on ``shapes-sketch`` about chance.
- ``toy-classifier`` — "ImageNet classifier": timm's ``test_resnet`` with an 8-way head, at 32 px
  (timm's test models default to 160 px, about ten times the training cost), trained from a seeded random
  init with cross-entropy on ``shapes`` labels; ``timm:test_resnet@DIR/toy_classifier`` (a folder in
  timm's ``save_for_hf`` layout, whose ``config.json`` carries the class count and the 32-px
  preprocessing).
- ``toy-finetuned-clip`` — "fine-tuned CLIP": the trained toy CLIP's image tower under a linear head
  initialised with its zero-shot classifier (WiSE-FT's recipe), both trained end to end with
  cross-entropy on ``shapes`` labels; ``openclip-classifier:embedstore-toy@DIR/toy_finetuned_clip.pt``
  (see ``embedstore.models.openclip_classifier_adapter``).

Training images come from the random streams ``TRAIN_SEED_OFFSET + seed`` and the accuracies
recorded in the manifest from ``EVAL_SEED_OFFSET + seed``, so a demo that extracts datasets with
seeds below ``TRAIN_SEED_OFFSET`` never evaluates on a training image.

Every model is trained with the preprocessing the extractor will apply to it: each starts as a
model loaded by its id (``@random:SEED``, or the untrained timm folder), whose ``pil_transform``
prepares the training images. Training runs on one thread (``torch.set_num_threads(1)``, restored
afterwards): models this small gain nothing from a second thread, and the weights then do not depend
on the machine's core count.

The cache folder (``default_cache_dir``) holds the three models and ``manifest.json``: the seed, the
recipe (every step count, batch size, learning rate and image count), the data specs, the library
versions, each model's sha256, and each model's held-out accuracies and training time. A later call
with the same seed and recipe reuses the models when every hash matches; anything else retrains.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata as package_metadata
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F

import embedstore
from embedstore.demo.shapes_data import ShapesTensors, load_shapes
from embedstore.demo.training import (
    Schedule,
    top1_accuracy,
    train_contrastive,
    train_cross_entropy,
    zero_shot_weights,
)
from embedstore.errors import ModelError
from embedstore.extract.plan import ModelPlan
from embedstore.models import ModelAdapter, load_model
from embedstore.models import weights as W
from embedstore.models.known_tags import CROSS_ENTROPY, SOFTMAX_CONTRASTIVE
from embedstore.models.metadata import FINE_TUNED_CLIP, IMAGENET_CLASSIFIER, ZERO_SHOT_CLIP
from embedstore.models.openclip_classifier_adapter import save_openclip_classifier
from embedstore.sources.shapes import SHAPE_CLASSES

TOY_CLIP = "toy-clip"
TOY_CLASSIFIER = "toy-classifier"
TOY_FINETUNED_CLIP = "toy-finetuned-clip"
#: Where each model lives in the cache folder (the classifier is a folder in timm's export layout).
FILES = {TOY_CLIP: "toy_clip.pt", TOY_CLASSIFIER: "toy_classifier", TOY_FINETUNED_CLIP: "toy_finetuned_clip.pt"}
MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
#: Environment variable naming embedstore's cache root (the demo uses its ``demo`` subfolder).
CACHE_ENV = "EMBEDSTORE_CACHE"
#: Training images use random stream ``TRAIN_SEED_OFFSET + seed``, held-out checks ``EVAL_SEED_OFFSET + seed``.
TRAIN_SEED_OFFSET = 1000
EVAL_SEED_OFFSET = 2000
#: Held-out variants on which every model's accuracy is recorded.
EVAL_VARIANTS = ("shapes", "shapes-sketch")
_PACKAGES = ("torch", "open_clip_torch", "timm", "numpy", "pillow")

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ToyRecipe:
    """Everything besides the seed that determines the trained weights (recorded in the manifest)."""

    clip_arch: str = "embedstore-toy"
    clip_images: int = 2000
    clip: Schedule = field(default_factory=lambda: Schedule(steps=1200, batch_size=64, lr=3e-3))
    classifier_arch: str = "test_resnet"
    classifier_image_size: int = 32
    classifier_images: int = 1000
    classifier: Schedule = field(default_factory=lambda: Schedule(steps=150, batch_size=64, lr=3e-3, weight_decay=0.05))
    finetune_images: int = 2000
    finetune: Schedule = field(default_factory=lambda: Schedule(steps=200, batch_size=64, lr=3e-3, weight_decay=0.05))
    eval_images: int = 256


def default_cache_dir() -> Path:
    """``$EMBEDSTORE_CACHE/demo`` when that variable is set, else ``$XDG_CACHE_HOME/embedstore/demo``,
    else ``~/.cache/embedstore/demo``."""
    root = os.environ.get(CACHE_ENV, "").strip()
    if root:
        return Path(root).expanduser() / "demo"
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "embedstore" / "demo"


def train_toy_models(
    cache_dir: str | Path | None = None,
    retrain: bool = False,
    seed: int = 0,
    progress: Progress | None = None,
    recipe: ToyRecipe | None = None,
) -> dict[str, ModelPlan]:
    """The three toy models as extraction-plan entries, keyed ``toy-clip``, ``toy-classifier``,
    ``toy-finetuned-clip``: ``plan.id`` is the model id to extract, ``plan.metadata`` the metadata
    overrides (group, train_data, train_size, fine_tuned, fine_tune_method, loss).

    Trains them into ``cache_dir`` (default ``default_cache_dir()``) unless the folder already holds
    them for this ``seed`` and ``recipe`` (see the module docstring) and ``retrain`` is False.
    ``progress`` receives one-line messages. Raises ``ModelError`` when the folder is not writable.
    """
    recipe = recipe or ToyRecipe()
    folder = (Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()).absolute()
    say = progress or (lambda _message: None)
    manifest = None if retrain else read_manifest(folder)
    if manifest is not None and _reusable(manifest, folder, seed, recipe):
        say(f"using the toy models trained in {folder} (seed {seed}; `embedstore demo --retrain` trains them again)")
    else:
        _prepare_folder(folder)
        manifest = _train_all(folder, seed, recipe, say)
        text = json.dumps(manifest, indent=2) + "\n"
        _save_atomically(folder / MANIFEST, lambda path: path.write_text(text))
    return {key: ModelPlan(id=model_ids(folder, recipe)[key], metadata=entry["metadata"])
            for key, entry in manifest["models"].items()}  # fmt: skip


def model_ids(folder: Path, recipe: ToyRecipe) -> dict[str, str]:
    """The model id of each toy model's file in ``folder``."""
    return {
        TOY_CLIP: f"openclip:{recipe.clip_arch}@{folder / FILES[TOY_CLIP]}",
        TOY_CLASSIFIER: f"timm:{recipe.classifier_arch}@{folder / FILES[TOY_CLASSIFIER]}",
        TOY_FINETUNED_CLIP: f"openclip-classifier:{recipe.clip_arch}@{folder / FILES[TOY_FINETUNED_CLIP]}",
    }


def metadata_overrides(recipe: ToyRecipe) -> dict[str, dict[str, Any]]:
    """Metadata the loaders cannot know about a local file: the study group, training data, its size
    (images), fine-tuning and objective of each toy model."""
    return {
        TOY_CLIP: {"group": ZERO_SHOT_CLIP, "train_data": "shapes-captions", "train_size": recipe.clip_images,
                   "loss": SOFTMAX_CONTRASTIVE},
        TOY_CLASSIFIER: {"group": IMAGENET_CLASSIFIER, "train_data": "shapes", "train_size": recipe.classifier_images,
                         "loss": CROSS_ENTROPY},
        TOY_FINETUNED_CLIP: {"group": FINE_TUNED_CLIP, "train_data": "shapes-captions",
                             "train_size": recipe.clip_images, "fine_tuned": "shapes",
                             "fine_tune_method": "end-to-end", "loss": SOFTMAX_CONTRASTIVE},
    }  # fmt: skip


def read_manifest(folder: str | Path) -> dict[str, Any] | None:
    """The manifest of a toy-model folder, or None when there is none or it is not readable JSON."""
    try:
        manifest = json.loads((Path(folder) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _reusable(manifest: dict[str, Any], folder: Path, seed: int, recipe: ToyRecipe) -> bool:
    """Same format, seed and recipe, and every file present with the recorded sha256."""
    if manifest.get("format") != MANIFEST_FORMAT or manifest.get("seed") != seed:
        return False
    if manifest.get("recipe") != _as_json(dataclasses.asdict(recipe)):
        return False
    models = manifest.get("models")
    if not isinstance(models, dict) or set(models) != set(FILES):
        return False
    for key, name in FILES.items():
        path = folder / name
        if not path.exists() or _content_hash(path) != models[key].get("sha256"):
            return False
    return True


def _prepare_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ModelError(
            f"demo model cache {folder} is not writable ({e.strerror or e}); set {CACHE_ENV} to a writable folder"
        ) from e


def _train_all(folder: Path, seed: int, recipe: ToyRecipe, say: Progress) -> dict[str, Any]:
    """Train the three models into ``folder``; the manifest describing them."""
    ids = model_ids(folder, recipe)
    overrides = metadata_overrides(recipe)
    train_seed, eval_seed = TRAIN_SEED_OFFSET + seed, EVAL_SEED_OFFSET + seed
    say(f"training the demo's toy models into {folder} (seed {seed}; once, reused afterwards)")
    with _one_thread():
        clip, clip_entry = _train_clip(folder, seed, train_seed, eval_seed, recipe, say)
        entries = {
            TOY_CLIP: clip_entry,
            TOY_CLASSIFIER: _train_classifier(folder, seed, train_seed, eval_seed, recipe, say),
            TOY_FINETUNED_CLIP: _train_finetuned(folder, clip, seed, train_seed, eval_seed, recipe, say),
        }
    for key, entry in entries.items():
        path = folder / FILES[key]
        entry.update(file=FILES[key], sha256=_content_hash(path), model_id=ids[key], metadata=overrides[key])
    return {
        "format": MANIFEST_FORMAT,
        "seed": seed,
        "recipe": _as_json(dataclasses.asdict(recipe)),
        "versions": _versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "models": entries,
    }


def _train_clip(folder: Path, seed: int, train_seed: int, eval_seed: int, recipe: ToyRecipe,
                say: Progress) -> tuple[ModelAdapter, dict[str, Any]]:  # fmt: skip
    """Contrastive training of ``openclip:ARCH@random:SEED``; returns the trained adapter and its entry."""
    started = time.perf_counter()
    clip = load_model(f"openclip:{recipe.clip_arch}@random:{seed}")
    pairs = load_shapes("shapes-captions", recipe.clip_images, train_seed, clip.pil_transform)
    per_image = len(pairs.captions[0])
    tokens = clip.tokenize([c for captions in pairs.captions for c in captions]).reshape(len(pairs), per_image, -1)
    generator = torch.Generator().manual_seed(seed)
    losses = train_contrastive(clip.module, pairs, tokens, recipe.clip, generator, say)
    _save_atomically(folder / FILES[TOY_CLIP], lambda path: torch.save(_cpu_state(clip.module), path))
    seconds = time.perf_counter() - started

    def zero_shot(data: ShapesTensors) -> float:
        weights = zero_shot_weights(clip.module, clip.tokenize, data.classnames, data.templates)
        return top1_accuracy(lambda x: F.normalize(clip.module.encode_image(x), dim=-1) @ weights.T, data)

    accuracy = {v: zero_shot(load_shapes(v, recipe.eval_images, eval_seed, clip.pil_transform)) for v in EVAL_VARIANTS}
    say(f"toy CLIP: zero-shot accuracy {_percentages(accuracy)} (chance 12.5%)")
    return clip, _entry(pairs.spec, losses, seconds, accuracy, "zero-shot top-1, the datasets' templates")


def _train_classifier(folder: Path, seed: int, train_seed: int, eval_seed: int, recipe: ToyRecipe,
                      say: Progress) -> dict[str, Any]:  # fmt: skip
    """Cross-entropy training of a timm CNN (any input size) with an 8-way head at
    ``classifier_image_size`` pixels, built seeded and exported untrained first, so that training uses
    the adapter's own transform."""
    started = time.perf_counter()
    target = folder / FILES[TOY_CLASSIFIER]
    size = recipe.classifier_image_size
    with W.seeded_init(seed):
        untrained = timm.create_model(recipe.classifier_arch, pretrained=False, num_classes=len(SHAPE_CLASSES))
    _save_atomically(target, lambda path: _export_timm(untrained, path, size))
    adapter = load_model(f"timm:{recipe.classifier_arch}@{target}")
    model = adapter.module
    train = load_shapes("shapes", recipe.classifier_images, train_seed, adapter.pil_transform)
    generator = torch.Generator().manual_seed(seed)
    losses = train_cross_entropy(model, model, model.named_parameters(), train, recipe.classifier, generator, say,
                                 label="toy classifier")  # fmt: skip
    _save_atomically(target, lambda path: _export_timm(model, path, size))
    seconds = time.perf_counter() - started
    accuracy = {v: top1_accuracy(model, load_shapes(v, recipe.eval_images, eval_seed, adapter.pil_transform))
                for v in EVAL_VARIANTS}  # fmt: skip
    say(f"toy classifier: accuracy {_percentages(accuracy)}")
    return _entry(train.spec, losses, seconds, accuracy, "top-1 of the 8-way head")


def _export_timm(model: torch.nn.Module, folder: Path, image_size: int) -> None:
    """timm's ``save_for_hf`` export (``config.json`` + ``model.safetensors``) with ``image_size`` as
    the preprocessing's input size."""
    timm.models.save_for_hf(model, str(folder), data_config={"input_size": (3, image_size, image_size)},
                            safe_serialization=True)  # fmt: skip


def _train_finetuned(folder: Path, clip: ModelAdapter, seed: int, train_seed: int, eval_seed: int, recipe: ToyRecipe,
                     say: Progress) -> dict[str, Any]:  # fmt: skip
    """End-to-end fine-tuning of a copy of the trained toy CLIP's image tower under a linear head
    initialised as ``logit_scale * W_zeroshot`` (zero bias), so training starts from the zero-shot
    classifier (WiSE-FT, Wortsman et al. 2022)."""
    started = time.perf_counter()
    model = copy.deepcopy(clip.module)
    train = load_shapes("shapes", recipe.finetune_images, train_seed, clip.pil_transform)
    weights = zero_shot_weights(model, clip.tokenize, train.classnames, train.templates)
    head = torch.nn.Linear(weights.shape[1], weights.shape[0])
    with torch.no_grad():
        head.weight.copy_(model.logit_scale.exp() * weights)
        head.bias.zero_()

    def logits_of(pixels: torch.Tensor) -> torch.Tensor:
        return head(F.normalize(model.encode_image(pixels), dim=-1))

    parameters = [(f"visual.{n}", p) for n, p in model.visual.named_parameters()]
    parameters += [(f"head.{n}", p) for n, p in head.named_parameters()]
    generator = torch.Generator().manual_seed(seed)
    losses = train_cross_entropy(model, logits_of, parameters, train, recipe.finetune, generator, say,
                                 label="toy fine-tuned CLIP")  # fmt: skip
    _save_atomically(folder / FILES[TOY_FINETUNED_CLIP],
                     lambda path: save_openclip_classifier(path, model.state_dict(), head))  # fmt: skip
    seconds = time.perf_counter() - started
    accuracy = {v: top1_accuracy(logits_of, load_shapes(v, recipe.eval_images, eval_seed, clip.pil_transform))
                for v in EVAL_VARIANTS}  # fmt: skip
    say(f"toy fine-tuned CLIP: accuracy {_percentages(accuracy)}")
    return _entry(train.spec, losses, seconds, accuracy, "top-1 of the fine-tuned head")


def _entry(train_spec: str, losses: list[float], seconds: float, accuracy: dict[str, float],
           measure: str) -> dict[str, Any]:  # fmt: skip
    return {
        "train_data": train_spec,
        "steps": len(losses),
        "final_loss": round(losses[-1], 4) if losses else None,
        "train_seconds": round(seconds, 1),
        "accuracy": {variant: round(value, 4) for variant, value in accuracy.items()},
        "accuracy_measure": measure,
    }


def _percentages(accuracy: dict[str, float]) -> str:
    return ", ".join(f"{variant} {100 * value:.1f}%" for variant, value in accuracy.items())


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """torch's intra-op thread count set to 1 for the block, then restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}


def _save_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """``write`` a file or folder to a temporary name beside ``path``, then rename it into place, so
    ``path`` is never half written (a folder already there is removed first)."""
    temporary = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent)) / path.name
    try:
        write(temporary)
        if path.is_dir():
            shutil.rmtree(path)
        os.replace(temporary, path)
    finally:
        shutil.rmtree(temporary.parent, ignore_errors=True)


def _content_hash(path: Path) -> str:
    """sha256 of a file, or of a folder's files (names and contents, in name order)."""
    if path.is_file():
        return W.sha256_file(path)
    digest = hashlib.sha256()
    for member in sorted(p for p in path.iterdir() if p.is_file()):
        digest.update(f"{member.name}:{W.sha256_file(member)}\n".encode())
    return digest.hexdigest()


def _as_json(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists), so recipes compare equal."""
    return json.loads(json.dumps(value))


def _versions() -> dict[str, str]:
    versions = {"embedstore": embedstore.__version__}
    for package in _PACKAGES:
        try:
            versions[package] = package_metadata.version(package)
        except package_metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions
