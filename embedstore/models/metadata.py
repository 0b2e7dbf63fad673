"""Model metadata: the study's factors (architecture, size, resolution, training data, loss,
fine-tuning) as one flat dict per model, derived from the id and the built model, overridable.

Fields (``METADATA_FIELDS``; the catalog's ``models`` table stores them):

- ``family`` (ViT, ResNet, ConvNeXt, ...), ``arch`` (library model name), ``backbone`` (cnn|vit|hybrid)
- ``params``: parameters of the image encoder (the CLIP image tower; the whole timm classifier)
- ``resolution``: input height in pixels; ``embed_dim``: width of ``encode_image``'s output
- ``train_data`` and ``train_size`` (approximate published sample count) of the pretraining data
- ``fine_tuned``: the last fine-tuning data set or None; ``fine_tune_method``
- ``loss``: the pretraining objective (softmax-contrastive, sigmoid, cross-entropy, ...)
- ``group``: "zero-shot CLIP" | "fine-tuned CLIP" | "ImageNet classifier" | None
- ``random_init``: weights are a seeded random init; ``weights_source``: where the weights came from

Training facts come from the pretrained tag (``known_tags``). A local file without a tag, and
random weights, have no training facts: those fields are None.
"""

from __future__ import annotations

from typing import Any

from embedstore.errors import ModelError
from embedstore.models import known_tags
from embedstore.models.architectures import openclip_family, timm_family
from embedstore.models.ids import ModelId
from embedstore.models.registry import suggestion

ZERO_SHOT_CLIP = "zero-shot CLIP"
FINE_TUNED_CLIP = "fine-tuned CLIP"
IMAGENET_CLASSIFIER = "ImageNet classifier"

#: field -> accepted types (``apply_overrides`` checks them).
METADATA_FIELDS: dict[str, tuple[type, ...]] = {
    "family": (str, type(None)),
    "arch": (str,),
    "backbone": (str, type(None)),
    "params": (int, type(None)),
    "resolution": (int, type(None)),
    "embed_dim": (int, type(None)),
    "train_data": (str, type(None)),
    "train_size": (int, type(None)),
    "fine_tuned": (str, type(None)),
    "fine_tune_method": (str, type(None)),
    "loss": (str, type(None)),
    "group": (str, type(None)),
    "random_init": (bool,),
    "weights_source": (str,),
}


def apply_overrides(metadata: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``metadata`` with ``overrides`` applied; every key must be a metadata field and every
    value of the field's type (integers are not booleans; counts are >= 0). Raises ``ModelError``."""
    result = dict(metadata)
    for key, value in overrides.items():
        if key not in METADATA_FIELDS:
            raise ModelError(
                f"unknown metadata field {key!r}{suggestion(key, list(METADATA_FIELDS))} "
                f"(fields: {', '.join(METADATA_FIELDS)})"
            )
        types = METADATA_FIELDS[key]
        is_bool_for_int = isinstance(value, bool) and bool not in types
        if not isinstance(value, types) or is_bool_for_int:
            names = " or ".join("None" if t is type(None) else t.__name__ for t in types)
            raise ModelError(f"metadata field {key!r} must be {names}, got {value!r}")
        if isinstance(value, int) and not isinstance(value, bool) and value < 0:
            raise ModelError(f"metadata field {key!r} must be >= 0, got {value}")
        result[key] = value
    return result


def openclip_metadata(
    model_id: ModelId,
    *,
    model_cfg: dict[str, Any],
    params: int,
    resolution: int,
    embed_dim: int,
    source: str,
) -> dict[str, Any]:
    """Metadata of an open_clip model built from ``model_cfg`` (open_clip's model config).

    A tagged release (hub tag, or a file with a tag) and an hf-hub repo are CLIP models trained with
    their architecture's objective, evaluated zero-shot; only a tag names the training data.
    """
    family, backbone = openclip_family(model_cfg)
    described = not model_id.is_random and (model_id.tag is not None or model_id.hf_hub is not None)
    info = known_tags.openclip_tag_info(model_id.tag) if described and model_id.tag else known_tags.TagInfo()
    return {
        "family": family,
        "arch": model_id.arch,
        "backbone": backbone,
        "params": params,
        "resolution": resolution,
        "embed_dim": embed_dim,
        "train_data": info.train_data,
        "train_size": info.train_size,
        "fine_tuned": info.fine_tuned,
        "fine_tune_method": info.fine_tune_method,
        "loss": (info.loss or _openclip_loss(model_cfg)) if described else None,
        "group": ZERO_SHOT_CLIP if described else None,
        "random_init": model_id.is_random,
        "weights_source": source,
    }


def timm_metadata(
    model_id: ModelId, *, params: int, resolution: int, embed_dim: int, num_classes: int | None, source: str
) -> dict[str, Any]:
    """Metadata of a timm model; the group needs an ImageNet-1k head (``num_classes == 1000``)."""
    family, backbone = timm_family(model_id.arch)
    described = not model_id.is_random and model_id.tag is not None
    info = known_tags.timm_tag_info(model_id.tag) if described else known_tags.TagInfo()
    group = None
    if (info.fine_tuned or info.train_data) == "ImageNet-1k" and num_classes == 1000:
        group = FINE_TUNED_CLIP if info.loss in known_tags.CLIP_LOSSES else IMAGENET_CLASSIFIER
    return {
        "family": family,
        "arch": model_id.arch,
        "backbone": backbone,
        "params": params,
        "resolution": resolution,
        "embed_dim": embed_dim,
        "train_data": info.train_data,
        "train_size": info.train_size,
        "fine_tuned": info.fine_tuned,
        "fine_tune_method": info.fine_tune_method,
        "loss": info.loss,
        "group": group,
        "random_init": model_id.is_random,
        "weights_source": source,
    }


def _openclip_loss(model_cfg: dict[str, Any]) -> str:
    """The objective an open_clip architecture is trained with: SigLIP configs carry a logit bias,
    CoCa configs a multimodal decoder; everything else is CLIP's softmax contrastive loss."""
    if "init_logit_bias" in model_cfg:
        return known_tags.SIGMOID
    if "multimodal_cfg" in model_cfg:
        return known_tags.CONTRASTIVE_CAPTIONING
    return known_tags.SOFTMAX_CONTRASTIVE
