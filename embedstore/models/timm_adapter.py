"""timm image classifiers: pre-logit features and the classifier head, from a tag, a file or a seed.

Weights of a tag are looked up on disk first (the Hugging Face cache, or torch hub's checkpoint
folder for URL-only tags) and handed to timm as a file (``pretrained_cfg_overlay={"file": ...}``), so
timm applies its own checkpoint filters; only an online hub lets timm download. ``@PATH`` loads a
timm state_dict with ``timm.models.load_checkpoint(..., strict=True, weights_only=True)``.

Features are ``forward_head(forward_features(x), pre_logits=True)`` and ``classify`` applies
``get_classifier()`` to them, so ``classify(encode_image(x))`` equals ``model(x)``.
"""

from __future__ import annotations

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
        if spec.path is not None:
            model = timm.create_model(spec.name, pretrained=False)
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


def _locate(spec: ModelId) -> _Located:
    if spec.path is not None:
        path = Path(spec.path).expanduser()
        if not path.is_file():
            raise ModelError(f"{spec}: checkpoint file {path} does not exist")
        return _Located(path, W.sha256_file(path), f"file:{path.resolve()}")
    if spec.random_seed is not None:
        return _Located(None, None, f"random:{spec.random_seed}")
    return _locate_tag(spec)


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
