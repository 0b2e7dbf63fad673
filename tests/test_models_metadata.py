"""Metadata: the study's factors read from known open_clip / timm tags, and validated overrides."""

from __future__ import annotations

import open_clip
import pytest

from embedstore.errors import ModelError
from embedstore.models import METADATA_FIELDS, apply_overrides, list_models, parse_model_id
from embedstore.models.architectures import openclip_family, timm_family
from embedstore.models.known_tags import openclip_tag_info, timm_tag_info
from embedstore.models.metadata import openclip_metadata, timm_metadata


def openclip_facts(model_id: str) -> dict:
    spec = parse_model_id(model_id)
    cfg = open_clip.get_model_config(spec.arch)
    return openclip_metadata(spec, model_cfg=cfg, params=1, resolution=224, embed_dim=cfg["embed_dim"], source="test")


@pytest.mark.parametrize(
    ("model_id", "expected"),
    [
        ("openclip:ViT-B-32.openai",
         dict(family="ViT", backbone="vit", train_data="WIT", train_size=400_000_000, loss="softmax-contrastive")),
        ("openclip:RN50.yfcc15m", dict(family="ResNet", backbone="cnn", train_data="YFCC-15M")),
        ("openclip:convnext_base.laion400m_s13b_b51k",
         dict(family="ConvNeXt", backbone="cnn", train_data="LAION-400M")),
        ("openclip:ViT-H-14.laion2b_s32b_b79k", dict(train_data="LAION-2B", train_size=2_320_000_000)),
        ("openclip:ViT-L-14.datacomp_xl_s13b_b90k", dict(train_data="DataComp-1B", train_size=1_400_000_000)),
        ("openclip:ViT-B-16.commonpool_l_clip_s1b_b8k", dict(train_data="CommonPool-L (clip filter)", train_size=None)),
        ("openclip:ViT-B-32.commonpool_m_s128m_b4k", dict(train_data="CommonPool-M", train_size=128_000_000)),
        ("openclip:ViT-H-14.dfn5b", dict(train_data="DFN-5B")),
        ("openclip:ViT-L-14.metaclip_fullcc", dict(train_data="MetaCLIP-2.5B")),
        ("openclip:ViT-B-16-SigLIP.webli", dict(train_data="WebLI", loss="sigmoid", group="zero-shot CLIP")),
        ("openclip:EVA02-B-16.merged2b_s8b_b131k", dict(family="EVA-02", backbone="vit", train_data="Merged-2B")),
        ("openclip:MobileCLIP-S1.datacompdr",
         dict(family="FastViT", backbone="hybrid", loss="softmax-contrastive+distillation")),
        ("openclip:coca_ViT-B-32.mscoco_finetuned_laion2b_s13b_b90k",
         dict(train_data="LAION-2B", fine_tuned="MSCOCO", loss="softmax-contrastive+captioning")),
        ("openclip:ViT-B-32.openai@random:3",
         dict(train_data=None, loss=None, group=None, random_init=True, family="ViT")),
        ("openclip:ViT-B-32@/weights/finetuned.pt", dict(train_data=None, loss=None, group=None, random_init=False)),
    ],
)  # fmt: skip
def test_openclip_tags_give_the_studys_factors(model_id: str, expected: dict) -> None:
    facts = openclip_facts(model_id)
    assert set(facts) == set(METADATA_FIELDS)
    for key, value in expected.items():
        assert facts[key] == value, key


def test_every_openclip_tag_has_training_data_or_is_a_known_gap() -> None:
    tags = {model_id.split(".", 1)[1] for model_id in list_models("openclip:*")}
    unknown = {tag for tag in tags if openclip_tag_info(tag).train_data is None}
    assert unknown == {"meta", "metaclip_altogether", "mrl", "v1"}  # PE-Core, Altogether, NLLB-CLIP: override


@pytest.mark.parametrize(
    ("tag", "train_data", "fine_tuned", "method", "loss"),
    [
        ("a1_in1k", "ImageNet-1k", None, None, "cross-entropy"),
        ("augreg_in21k", "ImageNet-21k", None, None, "cross-entropy"),
        ("augreg2_in21k_ft_in1k", "ImageNet-21k", "ImageNet-1k", "end-to-end", "cross-entropy"),
        ("fb_in22k_ft_in1k", "ImageNet-21k", "ImageNet-1k", "end-to-end", "cross-entropy"),
        ("in22k_ft_in22k_in1k", "ImageNet-21k", "ImageNet-1k", "end-to-end via ImageNet-21k", "cross-entropy"),
        ("laion2b_ft_in12k_in1k", "LAION-2B", "ImageNet-1k", "end-to-end via ImageNet-12k", "softmax-contrastive"),
        ("openai_ft_in1k", "WIT", "ImageNet-1k", "end-to-end", "softmax-contrastive"),
        ("clip_laion2b_augreg_ft_in1k_384", "LAION-2B", "ImageNet-1k", "end-to-end", "softmax-contrastive"),
        ("metaclip_2pt5b", "MetaCLIP-2.5B", None, None, "softmax-contrastive"),
        ("webli", "WebLI", None, None, "sigmoid"),
        ("fcmae_ft_in22k_in1k", None, "ImageNet-1k", "end-to-end via ImageNet-21k", "masked-image-modeling"),
        ("mae", None, None, None, "masked-image-modeling"),
        ("lvd142m", "LVD-142M", None, None, "self-distillation"),
        ("fb_swsl_ig1b_ft_in1k", "IG-1B", "ImageNet-1k", "end-to-end", "cross-entropy"),
        ("ra4_e3600_r224_in1k", "ImageNet-1k", None, None, "cross-entropy"),
        ("qwen3_vl_4b", None, None, None, None),
    ],
)
def test_timm_tags_are_read_word_by_word(tag, train_data, fine_tuned, method, loss) -> None:
    info = timm_tag_info(tag)
    assert info.train_data == train_data and info.fine_tuned == fine_tuned
    assert info.fine_tune_method == method and info.loss == loss


@pytest.mark.parametrize(
    ("model_id", "num_classes", "group"),
    [
        ("timm:resnet50.a1_in1k", 1000, "ImageNet classifier"),
        ("timm:vit_base_patch16_224.augreg2_in21k_ft_in1k", 1000, "ImageNet classifier"),
        ("timm:vit_base_patch16_clip_224.laion2b_ft_in12k_in1k", 1000, "fine-tuned CLIP"),
        ("timm:vit_base_patch16_224.augreg_in21k", 21843, None),
        ("timm:vit_base_patch16_clip_224.openai", None, None),  # a CLIP image tower, no head
        ("timm:resnet50.a1_in1k@random", 1000, None),
    ],
)
def test_timm_groups(model_id: str, num_classes: int | None, group: str | None) -> None:
    spec = parse_model_id(model_id)
    facts = timm_metadata(spec, params=1, resolution=224, embed_dim=768, num_classes=num_classes, source="test")
    assert facts["group"] == group
    assert set(facts) == set(METADATA_FIELDS)


@pytest.mark.parametrize(
    ("name", "family", "backbone"),
    [
        ("resnet50", "ResNet", "cnn"),
        ("tf_efficientnet_b0", "EfficientNet", "cnn"),
        ("convnextv2_base", "ConvNeXt-V2", "cnn"),
        ("vit_base_patch16_224", "ViT", "vit"),
        ("vitamin_small_224", "ViTamin", "hybrid"),
        ("deit3_small_patch16_224", "DeiT-III", "vit"),
        ("swin_base_patch4_window7_224", "Swin", "vit"),
        ("coatnet_0_rw_224", "CoAtNet", "hybrid"),
        ("test_resnet", "ResNet", "cnn"),
        ("some_future_net", None, None),
    ],
)
def test_timm_families(name: str, family: str | None, backbone: str | None) -> None:
    assert timm_family(name) == (family, backbone)


def test_openclip_families_come_from_the_model_config() -> None:
    assert openclip_family(open_clip.get_model_config("RN50x4")) == ("ResNet", "cnn")
    assert openclip_family(open_clip.get_model_config("ViT-L-14")) == ("ViT", "vit")
    assert openclip_family(open_clip.get_model_config("convnext_base_w")) == ("ConvNeXt", "cnn")
    assert openclip_family(open_clip.get_model_config("ViTamin-S")) == ("ViTamin", "hybrid")


def test_overrides_replace_validated_fields() -> None:
    facts = openclip_facts("openclip:ViT-B-32.openai")
    changed = apply_overrides(facts, {"train_data": "WIT-400M", "train_size": 400_000_001, "fine_tuned": None})
    assert changed["train_data"] == "WIT-400M" and changed["train_size"] == 400_000_001
    assert facts["train_data"] == "WIT"  # the input is not modified
    assert apply_overrides(facts, {}) == facts


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"train_dataset": "x"}, "unknown metadata field 'train_dataset'; did you mean 'train_data'"),
        ({"params": "86M"}, "metadata field 'params' must be int or None, got '86M'"),
        ({"params": True}, "metadata field 'params' must be int or None"),
        ({"train_size": -5}, "metadata field 'train_size' must be >= 0"),
        ({"random_init": "no"}, "metadata field 'random_init' must be bool"),
        ({"arch": None}, "metadata field 'arch' must be str"),
    ],
)
def test_bad_overrides_are_refused(overrides: dict, message: str) -> None:
    with pytest.raises(ModelError) as caught:
        apply_overrides(openclip_facts("openclip:ViT-B-32.openai"), overrides)
    assert message in str(caught.value)
