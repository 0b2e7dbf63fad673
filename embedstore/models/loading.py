"""``load_model``: the one entry point from a model id to a ready ``ModelAdapter``."""

from __future__ import annotations

from collections.abc import Callable

import torch

from embedstore.models.adapter import ModelAdapter, resolve_device, resolve_precision
from embedstore.models.ids import ModelId, parse_model_id
from embedstore.models.openclip_adapter import load_openclip
from embedstore.models.openclip_classifier_adapter import load_openclip_classifier
from embedstore.models.timm_adapter import load_timm

#: library -> builder; one small function per library, no if/elif chain.
LOADERS: dict[str, Callable[[ModelId, torch.device, str], ModelAdapter]] = {
    "openclip": load_openclip,
    "timm": load_timm,
    "openclip-classifier": load_openclip_classifier,
}


def load_model(model_id: str | ModelId, device: str | torch.device = "cpu", precision: str = "fp32") -> ModelAdapter:
    """Build the encoder named by ``model_id`` on ``device`` with weights in ``precision``.

    ``precision`` is ``"fp32"``, ``"fp16"`` or ``"bf16"``: the weights are converted
    (``module.to(dtype)``), no autocast. The weights never depend on the device: models are built
    and fingerprinted in fp32 on the CPU, then moved. Raises ``ModelError`` (one line) for a bad id,
    device or precision, weights that are not on disk while ``HF_HUB_OFFLINE`` is set, or a
    checkpoint that does not load.
    """
    spec = parse_model_id(model_id)
    resolve_precision(precision)
    return LOADERS[spec.library](spec, resolve_device(device), precision)
