"""Model ids: every form parses to the canonical text, and mistakes fail with close matches."""

from __future__ import annotations

import pytest

from embedstore.errors import ModelError
from embedstore.models import ModelId, list_models, parse_model_id


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("openclip:ViT-B-32.openai", ModelId("openclip", "ViT-B-32", tag="openai")),
        ("openclip:ViT-B-32.laion2b_s34b_b79k", ModelId("openclip", "ViT-B-32", tag="laion2b_s34b_b79k")),
        ("openclip:ViT-B/32.openai", ModelId("openclip", "ViT-B-32", tag="openai")),  # open_clip's '/' rule
        ("openclip:ViT-B-32.LAION2B-S34B-B79K", ModelId("openclip", "ViT-B-32", tag="laion2b_s34b_b79k")),
        ("openclip:ViT-B-32@/ckpt/epoch_3.pt", ModelId("openclip", "ViT-B-32", path="/ckpt/epoch_3.pt")),
        ("openclip:ViT-B-32.openai@ckpt.pt", ModelId("openclip", "ViT-B-32", tag="openai", path="ckpt.pt")),
        ("openclip:ViT-B-32@/runs/a@b/x.pt", ModelId("openclip", "ViT-B-32", path="/runs/a@b/x.pt")),
        ("openclip:embedstore-tiny@random", ModelId("openclip", "embedstore-tiny", random_seed=0)),
        ("openclip:embedstore-tiny@random:7", ModelId("openclip", "embedstore-tiny", random_seed=7)),
        ("openclip:ViT-B-16-SigLIP.webli@random:1", ModelId("openclip", "ViT-B-16-SigLIP", tag="webli", random_seed=1)),
        ("openclip:hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K",
         ModelId("openclip", "hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K", hf_hub="laion/CLIP-ViT-B-32-laion2B-s34B-b79K")),
        ("timm:resnet50.tv_in1k", ModelId("timm", "resnet50", tag="tv_in1k")),
        ("timm:vit_base_patch16_224.augreg2_in21k_ft_in1k",
         ModelId("timm", "vit_base_patch16_224", tag="augreg2_in21k_ft_in1k")),
        ("timm:resnet50", ModelId("timm", "resnet50", tag="a1_in1k")),  # timm's default tag, written out
        ("timm:test_vit@random", ModelId("timm", "test_vit", random_seed=0)),
        ("timm:test_vit.r160_in1k@random:3", ModelId("timm", "test_vit", tag="r160_in1k", random_seed=3)),
        ("timm:test_resnet@w/test.safetensors", ModelId("timm", "test_resnet", path="w/test.safetensors")),
        ("  timm:test_resnet@random  ", ModelId("timm", "test_resnet", random_seed=0)),
    ],
)  # fmt: skip
def test_every_form_parses_and_round_trips(text: str, expected: ModelId) -> None:
    parsed = parse_model_id(text)
    assert parsed == expected
    assert parse_model_id(str(parsed)) == parsed
    assert parse_model_id(parsed) is parsed


def test_canonical_text() -> None:
    assert str(parse_model_id("openclip:embedstore-tiny@random")) == "openclip:embedstore-tiny@random:0"
    assert str(parse_model_id("timm:resnet50")) == "timm:resnet50.a1_in1k"
    assert str(parse_model_id("openclip:ViT-B-32.openai@/w.pt")) == "openclip:ViT-B-32.openai@/w.pt"
    assert str(parse_model_id("openclip:hf-hub:org/repo")) == "openclip:hf-hub:org/repo"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("clip:ViT-B-32.openai", "must start with 'openclip:' or 'timm:'"),
        ("open_clip:ViT-B-32.openai", "did you mean 'openclip'"),
        ("openclip:", "names no model"),
        ("openclip:ViT-B-23.openai", "unknown open_clip architecture 'ViT-B-23'; did you mean 'ViT-B-32'"),
        ("openclip:vit-b-32.openai", "did you mean 'ViT-B-32'"),
        ("openclip:ViT-B-32.opneai", "unknown pretrained tag 'opneai' for ViT-B-32; did you mean 'openai'"),
        ("openclip:ViT-B-32", "names no weights: add a pretrained tag (e.g. .openai"),
        ("openclip:embedstore-tiny", "names no weights: use @PATH or @random"),
        ("openclip:embedstore-tiny.openai", "open_clip has no pretrained tags for embedstore-tiny"),
        ("openclip:embedstore-tiny@", "nothing after '@'"),
        ("openclip:embedstore-tiny@random:x", "random seed must be a non-negative integer, got 'x'"),
        ("openclip:embedstore-tiny@random:-1", "random seed must be a non-negative integer"),
        ("openclip:hf-hub:no-slash", "expected openclip:hf-hub:ORG/REPO"),
        ("timm:resnet5O.a1_in1k", "unknown timm model 'resnet5O'; did you mean 'resnet50'"),
        ("timm:resnet50.a1_in1kk", "unknown timm tag 'a1_in1kk' for resnet50; did you mean 'a1_in1k'"),
        ("timm:hf-hub:timm/resnet50.a1_in1k", "timm hf-hub ids are not supported"),
    ],
)
def test_mistakes_fail_with_one_clear_line(text: str, message: str) -> None:
    with pytest.raises(ModelError) as caught:
        parse_model_id(text)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_model_id_refuses_inconsistent_fields() -> None:
    with pytest.raises(ModelError, match="names no weights"):
        ModelId("openclip", "embedstore-tiny")
    with pytest.raises(ModelError, match="one weights source"):
        ModelId("openclip", "embedstore-tiny", path="w.pt", random_seed=0)
    with pytest.raises(ModelError, match="not one of"):
        ModelId("keras", "resnet50", tag="x")
    with pytest.raises(ModelError, match="only openclip:hf-hub"):
        ModelId("timm", "hf-hub:a/b", hf_hub="a/b")


def test_list_models_matches_wildcards_case_insensitively() -> None:
    vit_b_32 = list_models("openclip:ViT-B-32.*")
    assert "openclip:ViT-B-32.openai" in vit_b_32
    assert "openclip:ViT-B-32.laion2b_s34b_b79k" in vit_b_32
    assert all(i.startswith("openclip:ViT-B-32.") for i in vit_b_32)
    assert list_models("OPENCLIP:vit-b-32.OPENAI") == ["openclip:ViT-B-32.openai"]
    assert list_models("timm:test_vit.*") == ["timm:test_vit.r160_in1k"]
    assert list_models("nothing:*") == []
    everything = list_models()
    assert everything == sorted(everything)
    assert {i.split(":", 1)[0] for i in everything} == {"openclip", "timm"}
    assert "openclip:embedstore-tiny" not in " ".join(everything)  # no pretrained tag, not listed


def test_every_listed_openclip_id_parses_to_itself() -> None:
    for model_id in list_models("openclip:*"):
        assert str(parse_model_id(model_id)) == model_id


def test_listed_timm_ids_parse_to_themselves() -> None:
    for model_id in list_models("timm:*")[::40]:
        assert str(parse_model_id(model_id)) == model_id
