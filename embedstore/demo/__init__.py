"""``embedstore demo``'s library side: toy models of the study's three groups, trained on the shapes world.

``train_toy_models()`` trains them once (about a minute on 2 CPU cores) into the user's cache folder
and returns, per model, the extraction-plan entry: ``.id`` (e.g.
``openclip:embedstore-toy@~/.cache/embedstore/demo/toy_clip.pt``) and ``.metadata`` (the overrides
that name its group and training data). Later calls reuse the files.
"""

from __future__ import annotations

from embedstore.demo.models import (
    TOY_CLASSIFIER,
    TOY_CLIP,
    TOY_FINETUNED_CLIP,
    ToyRecipe,
    default_cache_dir,
    read_manifest,
    train_toy_models,
)

__all__ = [
    "TOY_CLASSIFIER",
    "TOY_CLIP",
    "TOY_FINETUNED_CLIP",
    "ToyRecipe",
    "default_cache_dir",
    "read_manifest",
    "train_toy_models",
]
