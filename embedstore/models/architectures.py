"""Architecture family and backbone type of an image encoder, from its timm / open_clip name.

``backbone`` is the study's CNN-vs-transformer factor: ``"cnn"``, ``"vit"`` (attention-based, incl.
Swin, EVA, DeiT) or ``"hybrid"`` (convolution stages followed by attention: CoAtNet, MaxViT, FastViT,
ViTamin, ...). Unknown names give ``(None, None)``; users override them like any metadata field.
"""

from __future__ import annotations

from typing import Any

#: timm name prefix -> (family, backbone). The longest matching prefix wins.
TIMM_FAMILIES: dict[str, tuple[str, str]] = {
    # convolutional
    "resnet": ("ResNet", "cnn"),
    "resnetv2": ("ResNetV2", "cnn"),
    "resnext": ("ResNeXt", "cnn"),
    "seresnet": ("SE-ResNet", "cnn"),
    "seresnext": ("SE-ResNeXt", "cnn"),
    "ecaresnet": ("ECA-ResNet", "cnn"),
    "skresnet": ("SK-ResNet", "cnn"),
    "wide_resnet": ("Wide-ResNet", "cnn"),
    "res2net": ("Res2Net", "cnn"),
    "resnest": ("ResNeSt", "cnn"),
    "regnet": ("RegNet", "cnn"),
    "convnext": ("ConvNeXt", "cnn"),
    "convnextv2": ("ConvNeXt-V2", "cnn"),
    "efficientnet": ("EfficientNet", "cnn"),
    "efficientnetv2": ("EfficientNet-V2", "cnn"),
    "mobilenet": ("MobileNet", "cnn"),
    "mnasnet": ("MnasNet", "cnn"),
    "densenet": ("DenseNet", "cnn"),
    "vgg": ("VGG", "cnn"),
    "inception": ("Inception", "cnn"),
    "xception": ("Xception", "cnn"),
    "nfnet": ("NFNet", "cnn"),
    "dm_nfnet": ("NFNet", "cnn"),
    "eca_nfnet": ("NFNet", "cnn"),
    "nf_resnet": ("NF-ResNet", "cnn"),
    "dla": ("DLA", "cnn"),
    "dpn": ("DPN", "cnn"),
    "hrnet": ("HRNet", "cnn"),
    "ghostnet": ("GhostNet", "cnn"),
    "rexnet": ("ReXNet", "cnn"),
    "mixnet": ("MixNet", "cnn"),
    "tresnet": ("TResNet", "cnn"),
    "byobnet": ("ByobNet", "cnn"),
    "repvgg": ("RepVGG", "cnn"),
    "bit": ("BiT", "cnn"),
    "mambaout": ("MambaOut", "cnn"),
    # attention
    "vit": ("ViT", "vit"),
    "deit": ("DeiT", "vit"),
    "deit3": ("DeiT-III", "vit"),
    "beit": ("BEiT", "vit"),
    "beitv2": ("BEiT-V2", "vit"),
    "eva": ("EVA", "vit"),
    "eva02": ("EVA-02", "vit"),
    "swin": ("Swin", "vit"),
    "swinv2": ("Swin-V2", "vit"),
    "cait": ("CaiT", "vit"),
    "xcit": ("XCiT", "vit"),
    "twins": ("Twins", "vit"),
    "pit": ("PiT", "vit"),
    "crossvit": ("CrossViT", "vit"),
    "volo": ("VOLO", "vit"),
    "mvitv2": ("MViT-V2", "vit"),
    "hiera": ("Hiera", "vit"),
    "davit": ("DaViT", "vit"),
    "flexivit": ("FlexiViT", "vit"),
    "vit_pe": ("PE", "vit"),
    # convolution + attention
    "vitamin": ("ViTamin", "hybrid"),
    "coatnet": ("CoAtNet", "hybrid"),
    "maxvit": ("MaxViT", "hybrid"),
    "maxxvit": ("MaxxViT", "hybrid"),
    "fastvit": ("FastViT", "hybrid"),
    "levit": ("LeViT", "hybrid"),
    "mobilevit": ("MobileViT", "hybrid"),
    "efficientvit": ("EfficientViT", "hybrid"),
    "tiny_vit": ("TinyViT", "hybrid"),
    "edgenext": ("EdgeNeXt", "hybrid"),
    "caformer": ("CAFormer", "hybrid"),
    "convit": ("ConViT", "hybrid"),
}

#: Prefixes timm puts before a family name (ported weights, test models).
_NAME_PREFIXES = ("test_", "tf_", "tv_", "gluon_", "legacy_")


def timm_family(name: str) -> tuple[str | None, str | None]:
    """``(family, backbone)`` of a timm architecture name, e.g. ``resnet50`` -> ``("ResNet", "cnn")``."""
    stem = name.lower()
    for prefix in _NAME_PREFIXES:
        stem = stem.removeprefix(prefix)
    matches = [p for p in TIMM_FAMILIES if stem.startswith(p)]
    if not matches:
        return None, None
    return TIMM_FAMILIES[max(matches, key=len)]


def openclip_family(model_cfg: dict[str, Any]) -> tuple[str | None, str | None]:
    """``(family, backbone)`` of an open_clip image tower from its model config: a timm tower is
    looked up by its timm name, a list of stage depths is open_clip's ModifiedResNet, anything else
    is open_clip's VisionTransformer."""
    vision = model_cfg.get("vision_cfg", {})
    if vision.get("timm_model_name"):
        return timm_family(vision["timm_model_name"])
    if isinstance(vision.get("layers"), (list, tuple)):
        return "ResNet", "cnn"
    return "ViT", "vit"
