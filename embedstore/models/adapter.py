"""``ModelAdapter``: one interface over an open_clip CLIP model and a timm classifier.

An adapter holds the built ``torch.nn.Module`` (in eval mode, on its device, in its precision) and
what the extractor needs to know about it: the preprocessing, the output width, the CLIP logit
scale and bias, a weights fingerprint and the metadata. Every method runs under
``torch.inference_mode()`` and returns what the encoder returns (no normalisation); the store keeps
raw outputs and analyses normalise where their formula says so.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import torch

from embedstore.errors import ModelError
from embedstore.models.ids import ModelId
from embedstore.models.preprocess import PreprocessConfig

#: precision name -> dtype the weights are converted to (``module.to(dtype)``; no autocast).
PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_precision(precision: str) -> torch.dtype:
    """The dtype for a precision name; ``ModelError`` for anything but fp32, fp16 or bf16."""
    if precision not in PRECISIONS:
        raise ModelError(f"precision {precision!r} is not one of {tuple(PRECISIONS)}")
    return PRECISIONS[precision]


def resolve_device(device: str | torch.device) -> torch.device:
    """A ``torch.device`` that exists here; ``ModelError`` for a bad name or a missing accelerator,
    so a run never falls back to the CPU silently."""
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ModelError(f"device {device!r} is not a torch device ({e})") from e
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelError(f"device {device!r} was asked for but CUDA is not available here")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ModelError(f"device {device!r} does not exist: {torch.cuda.device_count()} CUDA device(s) here")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ModelError(f"device {device!r} was asked for but MPS is not available here")
    return resolved


class ModelAdapter(ABC):
    """An encoder ready to run. ``kind`` is ``"clip"`` or ``"classifier"``.

    Attributes: ``model_id`` (canonical id text), ``spec`` (the parsed ``ModelId``), ``device``, ``precision``, ``dtype``, ``module`` (the
    library's model), ``preprocess`` (a hashable ``PreprocessConfig``), ``pil_transform`` (the
    library's own eval transform: PIL image -> normalised ``[3, H, W]`` float tensor), ``embed_dim``,
    ``num_classes`` (classifiers with a head, else None), ``logit_scale`` (CLIP: ``exp`` of the
    learned scale; else None), ``logit_bias`` (SigLIP-style models; else None), ``fingerprint``
    (64 hex digits identifying the weights) and ``metadata`` (see ``embedstore.models.metadata``).
    """

    kind: str

    def __init__(
        self,
        *,
        spec: ModelId,
        module: torch.nn.Module,
        device: torch.device,
        precision: str,
        preprocess: PreprocessConfig,
        pil_transform: Callable[[Any], torch.Tensor],
        embed_dim: int,
        num_classes: int | None,
        logit_scale: float | None,
        logit_bias: float | None,
        fingerprint: str,
        metadata: dict[str, Any],
    ) -> None:
        self.spec = spec
        self.model_id = str(spec)
        self.module = module
        self.device = str(device)
        self.precision = precision
        self.dtype = PRECISIONS[precision]
        self.preprocess = preprocess
        self.pil_transform = pil_transform
        self.embed_dim = embed_dim
        self.num_classes = num_classes
        self.logit_scale = logit_scale
        self.logit_bias = logit_bias
        self.fingerprint = fingerprint
        self.metadata = metadata

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.model_id!r}, device={self.device!r}, precision={self.precision!r})"

    def _as_input(self, images: torch.Tensor) -> torch.Tensor:
        """Images on the model's device and in its dtype (a no-op when they already are)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ModelError(f"{self.model_id}: expected images of shape [B, 3, H, W], got {list(images.shape)}")
        return images.to(device=self.device, dtype=self.dtype, non_blocking=True)

    @abstractmethod
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` preprocessed images -> ``[B, embed_dim]`` features as the encoder returns them."""

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """``[B, embed_dim]`` features from ``encode_image`` -> ``[B, num_classes]`` classifier logits."""
        raise ModelError(f"{self.model_id} is a {self.kind} model without a classifier head")

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """Texts -> ``[N, context_length]`` token ids (CLIP models)."""
        raise ModelError(f"{self.model_id} is a {self.kind} model without a text encoder")

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[N, context_length]`` token ids -> ``[N, embed_dim]`` text features, not normalised (CLIP models)."""
        raise ModelError(f"{self.model_id} is a {self.kind} model without a text encoder")

    def describe(self) -> dict[str, Any]:
        """One flat record of the model (what a catalog row needs): id, kind, library, tag,
        fingerprint, logit scale and bias, number of classes, and every metadata field."""
        return {
            "model_id": self.model_id,
            "kind": self.kind,
            "library": self.spec.library,
            "tag": self.spec.tag,
            "fingerprint": self.fingerprint,
            "logit_scale": self.logit_scale,
            "logit_bias": self.logit_bias,
            "num_classes": self.num_classes,
            **self.metadata,
        }
