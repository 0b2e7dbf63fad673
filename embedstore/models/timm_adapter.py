"""timm image classifiers: pre-logit features and the classifier head, from a tag, a file or a seed.

Weights of a tag are looked up on disk first (the Hugging Face cache, or torch hub's checkpoint
folder for URL-only tags) and handed to timm as a file (``pretrained_cfg_overlay={"file": ...}``), so
timm applies its own checkpoint filters; only an online hub lets timm download. ``@PATH`` loads a
timm state_dict with ``timm.models.load_checkpoint(..., strict=True, weights_only=True)``; the model is
built with as many classes as the file's classifier weight has rows (``checkpoint_num_classes``), so
a head trained on any label space (8 shapes, 200 ImageNet-R classes, ...) loads as it was saved.
``@FOLDER`` loads timm's own export layout (``timm.models.save_for_hf``: ``config.json`` with the
architecture, ``model_args`` and ``pretrained_cfg``, beside ``model.safetensors`` or
``pytorch_model.bin``) with ``timm.create_model("local-dir:FOLDER", pretrained=True)``, so the saved
class count, constructor arguments (e.g. ``img_size``) and preprocessing (``input_size``, mean, std,
crop) come with the weights.

Features are ``forward_head(forward_features(x), pre_logits=True)`` and ``classify`` applies
``get_classifier()`` to them, so ``classify(encode_image(x))`` equals ``model(x)``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import timm
import torch
from torchvision import transforms

from embedstore.errors import ModelError
from embedstore.models import weights as W
from embedstore.models.adapter import PRECISIONS, ModelAdapter
from embedstore.models.failures import library_errors
from embedstore.models.ids import ModelId
from embedstore.models.metadata import timm_metadata
from embedstore.models.preprocess import from_timm

#: timm's hub file names (``timm.models._hub``): the default pickle and the safetensors tried first.
_HF_WEIGHTS = "pytorch_model.bin"
_SAFE_ALTERNATIVES = {
    "pytorch_model.bin": "model.safetensors",
    "open_clip_pytorch_model.bin": "open_clip_model.safetensors",
}
#: The weights files ``save_for_hf`` writes, in the order timm's folder reader prefers them
#: (``timm.models._hub.load_state_dict_from_path``), so the file checked here is the file timm loads.
LOCAL_DIR_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


class TimmAdapter(ModelAdapter):
    """A timm model: ``encode_image`` gives pre-logit features, ``classify`` the head's logits."""

    kind = "classifier"

    def __init__(self, *, head: torch.nn.Module | None, **common: Any) -> None:
        super().__init__(**common)
        self._head = head

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """``forward_head(forward_features(images), pre_logits=True)``: pooled features before the head."""
        with torch.inference_mode():
            return self.module.forward_head(self.module.forward_features(self._as_input(images)), pre_logits=True)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """``get_classifier()(features)``: the classifier logits for pre-logit features."""
        if self._head is None:
            return super().classify(features)
        with torch.inference_mode():
            return self._head(features.to(device=self.device, dtype=self.dtype))


def _to_rgb(image: Any) -> Any:
    """PIL image -> RGB, as timm's dataset readers convert before the transform."""
    return image.convert("RGB")


@dataclass(frozen=True)
class _Located:
    """Where the weights of an id are, and their provenance."""

    checkpoint: Path | None  # a pretrained file in a cache, or the @PATH file; None: random or download
    fingerprint: str | None  # None: hash the built random weights
    source: str
    local_dir: Path | None = None  # an @FOLDER in timm's export layout (``checkpoint`` is its weights file)


def load_timm(spec: ModelId, device: torch.device, precision: str) -> TimmAdapter:
    """Build ``spec`` (a ``timm:`` id) on ``device`` in ``precision``; see the module docstring."""
    located = _locate(spec)
    if located.checkpoint is not None:
        W.check_checkpoint_file(located.checkpoint)
    model = _build(spec, located)
    fingerprint = located.fingerprint or W.sha256_state_dict(model, salt=f"{spec}")
    head = model.get_classifier()
    if isinstance(head, (tuple, list)):  # distilled models (DeiT) average two heads over two tokens
        raise ModelError(f"{spec}: models with a distillation head are not supported")
    num_classes = int(model.num_classes) if model.num_classes and not isinstance(head, torch.nn.Identity) else None
    data_config = timm.data.resolve_model_data_config(model)
    preprocess = from_timm(data_config)
    embed_dim = int(getattr(model, "head_hidden_size", None) or model.num_features)
    params = sum(p.numel() for p in model.parameters())
    model.to(device=device, dtype=PRECISIONS[precision])
    return TimmAdapter(
        spec=spec,
        module=model,
        device=device,
        precision=precision,
        preprocess=preprocess,
        pil_transform=transforms.Compose(
            [transforms.Lambda(_to_rgb), timm.data.create_transform(**data_config, is_training=False)]
        ),
        embed_dim=embed_dim,
        num_classes=num_classes,
        logit_scale=None,
        logit_bias=None,
        fingerprint=fingerprint,
        metadata=timm_metadata(
            spec,
            params=params,
            resolution=preprocess.size[0],
            embed_dim=embed_dim,
            num_classes=num_classes,
            source=located.source,
        ),
        head=head if num_classes else None,
    )


def _build(spec: ModelId, located: _Located) -> torch.nn.Module:
    """timm.create_model in fp32 on the CPU, seeded, weights loaded, in eval mode."""
    with W.seeded_init(spec.random_seed or 0), library_errors(f"{spec}: timm could not build it"):
        if located.local_dir is not None:
            model = timm.create_model(f"local-dir:{located.local_dir}", pretrained=True)
        elif spec.path is not None:
            num_classes = checkpoint_num_classes(spec.name, located.checkpoint)
            head = {} if num_classes is None else {"num_classes": num_classes}
            model = timm.create_model(spec.name, pretrained=False, **head)
            timm.models.load_checkpoint(model, str(located.checkpoint), strict=True, weights_only=True)
        elif spec.random_seed is not None:
            model = timm.create_model(spec.name, pretrained=False)
        elif located.checkpoint is not None:
            model = timm.create_model(
                spec.name, pretrained=True, pretrained_cfg_overlay={"file": str(located.checkpoint)}
            )
        else:  # hub online, weights not cached: timm downloads them
            model = timm.create_model(spec.name, pretrained=True)
    return model.eval()


def checkpoint_num_classes(name: str, path: Path) -> int | None:
    """Rows of the classifier weight in the timm checkpoint ``path`` of model ``name``, or None.

    The weight is ``<classifier>.weight``, with ``<classifier>`` the module timm's pretrained config
    names (``fc`` for a ResNet, ``head`` for a ViT, ``head.fc`` for a ConvNeXt). The file is read with
    ``timm.models.load_state_dict`` (``weights_only=True``), the reader ``load_checkpoint`` uses, so a
    training checkpoint (``state_dict``, EMA weights, a ``module.`` prefix) is read as timm reads it.
    None for NumPy files and for files without that weight: the model keeps timm's default head.
    """
    if path.suffix.lower() in (".npz", ".npy"):
        return None
    cfg = timm.models.get_pretrained_cfg(name)
    classifier = cfg.classifier if cfg is not None else None
    if isinstance(classifier, (tuple, list)):  # distilled models name two heads; the first is the class head
        classifier = classifier[0]
    if not classifier:
        return None
    weight = timm.models.load_state_dict(str(path), weights_only=True).get(f"{classifier}.weight")
    return None if weight is None else int(weight.shape[0])


def _locate(spec: ModelId) -> _Located:
    if spec.path is not None:
        path = Path(spec.path).expanduser()
        if path.is_dir():
            return _locate_local_dir(spec, path)
        if not path.is_file():
            raise ModelError(f"{spec}: checkpoint file {path} does not exist")
        return _Located(path, W.sha256_file(path), f"file:{path.resolve()}")
    if spec.random_seed is not None:
        return _Located(None, None, f"random:{spec.random_seed}")
    return _locate_tag(spec)


def _locate_local_dir(spec: ModelId, folder: Path) -> _Located:
    """A folder in timm's export layout: ``config.json`` naming ``spec.arch``, and the first of
    ``LOCAL_DIR_WEIGHTS`` in it. The fingerprint covers both files."""
    config = folder / "config.json"
    weights = next((folder / name for name in LOCAL_DIR_WEIGHTS if (folder / name).is_file()), None)
    if not config.is_file() or weights is None:
        missing = "config.json" if not config.is_file() else " or ".join(LOCAL_DIR_WEIGHTS)
        raise ModelError(f"{spec}: folder {folder} has no {missing} (expected timm's save_for_hf layout)")
    try:
        architecture = json.loads(config.read_text()).get("architecture")
    except (OSError, ValueError, AttributeError) as e:
        raise ModelError(f"{spec}: {config} is not a timm config ({e})") from e
    if architecture != spec.arch:
        raise ModelError(f"{spec}: {config} describes a {architecture!r} model, not {spec.arch!r}")
    fingerprint = W.sha256_text(f"{W.sha256_file(config)}|{W.sha256_file(weights)}")
    return _Located(weights, fingerprint, f"local-dir:{folder.resolve()}", local_dir=folder.resolve())


def _safe_alternatives(filename: str) -> list[str]:
    """The safetensors names timm tries before a pickle file (``timm.models._hub._get_safe_alternatives``)."""
    if filename in _SAFE_ALTERNATIVES:
        return [_SAFE_ALTERNATIVES[filename]]
    return [filename[:-4] + ".safetensors"] if filename.endswith(".bin") else []


def _locate_tag(spec: ModelId) -> _Located:
    """A tag's weights in the Hugging Face cache (or torch hub's folder for URL-only tags)."""
    cfg = timm.models.get_pretrained_cfg(spec.name)
    fingerprint = W.sha256_text(f"{spec}|timm=={timm.__version__}")
    if cfg.hf_hub_id:
        repo, _, revision = cfg.hf_hub_id.partition("@")
        filename = cfg.hf_hub_filename or _HF_WEIGHTS
        cached = W.cached_hub_file(repo, [*_safe_alternatives(filename), filename], revision=revision or None)
        if cached is not None:
            revision = W.snapshot_revision(cached)
            return _Located(cached, fingerprint, f"hf-hub:{repo}/{cached.name}" + (f"@{revision}" if revision else ""))
        if W.hub_offline():
            raise W.missing_weights_error(str(spec), repo, filename)
        return _Located(None, fingerprint, f"hf-hub:{repo}/{filename}")
    if cfg.url:
        cached_url = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(cfg.url).path)
        if cached_url.is_file():
            return _Located(cached_url, fingerprint, f"file:{cached_url}")
        if W.hub_offline():
            raise ModelError(
                f"weights of {spec} are not on disk: {cached_url} is missing and HF_HUB_OFFLINE is set; "
                f"download {cfg.url} there on a connected machine, or load the file as {spec}@PATH"
            )
        return _Located(None, fingerprint, cfg.url)
    raise ModelError(f"{spec}: timm lists no weights for this tag; use @PATH or @random")
