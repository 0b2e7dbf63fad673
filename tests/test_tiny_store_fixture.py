"""The shared tiny store holds what the analysis tests rely on."""

from __future__ import annotations


def test_tiny_store_has_every_array(tiny_store):
    arrays = {(a.dataset, a.model, a.name) for a in tiny_store.list_arrays()}
    clip, timm = "openclip:embedstore-tiny@random:0", "timm:test_vit@random:0"
    for dataset in ["shapes", "shapes-v2", "shapes-sketch", "shapes-ood", "shapes-cue-conflict", "shapes-x"]:
        assert {(dataset, clip, "image_emb"), (dataset, clip, "text_emb"), (dataset, timm, "image_emb"),
                (dataset, timm, "logits")} <= arrays, dataset  # fmt: skip
    assert ("shapes-captions", clip, "caption_emb") in arrays
    assert all(a.status == "complete" for a in tiny_store.list_arrays())
