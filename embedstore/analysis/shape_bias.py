"""Shape bias on cue-conflict images (Geirhos et al., ICLR 2019; bethgelab/model-vs-human).

A cue-conflict image has the shape of one category and the texture of another. Following
model-vs-human (``plotting/analyses.py`` ``ShapeBias``):

- images whose shape category equals their texture category carry no conflict and are dropped
  (80 of the 1,280 Stylized-ImageNet cue-conflict images);
- a decision is a *shape hit* if it equals the shape category, a *texture hit* if it equals the
  texture category; decisions matching neither are ignored;
- ``shape_bias = shape_hits / (shape_hits + texture_hits)``, NaN when there is no hit of either kind.

Decisions of a 1000-way ImageNet model come from `imagenet_probabilities_to_16`: the softmax
probabilities are averaged over each of the 16 categories' ImageNet indices
(``ImageNetProbabilitiesTo16ClassesMapping`` with its default ``np.mean``), then `category_decisions`
takes the argmax. A CLIP model can also be asked directly: zero-shot logits over the 16 category
names go straight to `category_decisions`. `shape_bias` itself is generic: any category list
(e.g. a synthetic shapes-world cue-conflict set) with labels given as indices or names.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from embedstore.errors import AnalysisError

HUMAN_CATEGORIES: tuple[str, ...] = (
    "airplane",
    "bear",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "car",
    "cat",
    "chair",
    "clock",
    "dog",
    "elephant",
    "keyboard",
    "knife",
    "oven",
    "truck",
)
"""The 16 entry-level categories, sorted, as ``get_human_object_recognition_categories()`` returns them."""

# fmt: off
HUMAN_CATEGORY_IMAGENET_INDICES: dict[str, tuple[int, ...]] = {
    "airplane": (404,),
    "bear": (294, 295, 296, 297),
    "bicycle": (444, 671),
    "bird": (
        8, 10, 11, 12, 13, 14, 15, 16, 18, 19, 20, 22, 23, 24, 80, 81, 82, 83, 87, 88, 89, 90, 91, 92,
        93, 94, 95, 96, 98, 99, 100, 127, 128, 129, 130, 131, 132, 133, 135, 136, 137, 138, 139, 140,
        141, 142, 143, 144, 145,
    ),
    "boat": (472, 554, 625, 814, 914),
    "bottle": (440, 720, 737, 898, 899, 901, 907),
    "car": (436, 511, 817),
    "cat": (281, 282, 283, 284, 285, 286),
    "chair": (423, 559, 765, 857),
    "clock": (409, 530, 892),
    "dog": (
        152, 153, 154, 155, 156, 157, 158, 159, 160, 161, 162, 163, 164, 165, 166, 167, 168, 169, 170,
        171, 172, 173, 174, 175, 176, 177, 178, 179, 180, 181, 182, 183, 184, 185, 186, 187, 188, 189,
        190, 191, 193, 194, 195, 196, 197, 198, 199, 200, 201, 202, 203, 205, 206, 207, 208, 209, 210,
        211, 212, 213, 214, 215, 216, 217, 218, 219, 220, 221, 222, 223, 224, 225, 226, 228, 229, 230,
        231, 232, 233, 234, 235, 236, 237, 238, 239, 240, 241, 243, 244, 245, 246, 247, 248, 249, 250,
        252, 253, 254, 255, 256, 257, 259, 261, 262, 263, 265, 266, 267, 268,
    ),
    "elephant": (385, 386),
    "keyboard": (508, 878),
    "knife": (499,),
    "oven": (766,),
    "truck": (555, 569, 656, 675, 717, 734, 864, 867),
}
# fmt: on
"""ImageNet-1k class indices of each category: model-vs-human's ``HumanCategories.<category>_indices``
(``modelvshuman/helper/human_categories.py``). Only 207 of the 1000 classes are mapped."""

_CUE_CONFLICT_NAME = re.compile(r"^(?:.*_)?(?P<shape>[a-z]+)\d+-(?P<texture>[a-z]+)\d+(?:\.\w+)?$")


@dataclass(frozen=True)
class ShapeBiasResult:
    """Shape bias of one model on one cue-conflict set.

    ``shape_match_rate`` and ``texture_match_rate`` count shape and texture hits among the
    conflicting images, divided by **all** images given (``n_used + n_dropped_same``), as
    model-vs-human's ``fraction-correct-shape`` / ``fraction-correct-texture`` do.
    """

    shape_bias: float
    shape_match_rate: float
    texture_match_rate: float
    n_used: int
    n_dropped_same: int


def imagenet_probabilities_to_16(
    probs: np.ndarray,
    categories: Sequence[str] = HUMAN_CATEGORIES,
    indices: dict[str, tuple[int, ...]] = HUMAN_CATEGORY_IMAGENET_INDICES,
) -> np.ndarray:
    """Average 1000-way softmax probabilities over each category's ImageNet indices.

    ``probs`` is [N, 1000] with entries in [0, 1] (apply softmax to logits first, as
    model-vs-human's evaluator does). Returns [N, len(categories)] in the order of ``categories``
    (default: the 16 sorted human categories): column k is ``mean(probs[:, indices[categories[k]]])``.
    """
    scores = np.asarray(probs, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[1] != 1000:
        raise AnalysisError(f"probs: expected shape [N, 1000] of ImageNet probabilities, got {scores.shape}")
    if not np.all(np.isfinite(scores)) or scores.min(initial=0.0) < 0.0 or scores.max(initial=0.0) > 1.0:
        raise AnalysisError("probs: entries must be probabilities in [0, 1] (apply softmax to logits first)")
    columns = []
    for category in categories:
        members = indices.get(category)
        if not members:
            raise AnalysisError(f"categories: {category!r} has no ImageNet indices")
        columns.append(scores[:, list(members)].mean(axis=1))
    return np.stack(columns, axis=1)


def category_decisions(scores: np.ndarray) -> np.ndarray:
    """Index of the highest-scoring category per image (ties: the first category).

    ``scores`` is [N, K]: aggregated probabilities from `imagenet_probabilities_to_16`, or a CLIP
    model's zero-shot logits over the K category names (the direct 16-way variant).
    """
    values = np.asarray(scores, dtype=np.float64)
    if values.ndim != 2 or values.shape[1] == 0:
        raise AnalysisError(f"scores: expected shape [N, K] with K >= 1, got {values.shape}")
    if np.any(np.isnan(values)):
        raise AnalysisError("scores: contains NaN")
    return np.argmax(values, axis=1)


def shape_bias(
    pred_category: Sequence[object] | np.ndarray,
    shape_category: Sequence[object] | np.ndarray,
    texture_category: Sequence[object] | np.ndarray,
) -> ShapeBiasResult:
    """Fraction of cue-decided images decided by shape: ``shape_hits / (shape_hits + texture_hits)``.

    The three arrays hold one label per image (category indices or names, compared with ``==``).
    Images whose shape equals their texture are dropped first (see the module doc).
    """
    pred = _as_label_vector(pred_category, "pred_category")
    shape = _as_label_vector(shape_category, "shape_category")
    texture = _as_label_vector(texture_category, "texture_category")
    if not pred.size == shape.size == texture.size:
        raise AnalysisError(
            f"pred_category: has {pred.size} images, shape_category {shape.size}, texture_category {texture.size}"
        )
    if pred.size == 0:
        raise AnalysisError("pred_category: no images given")
    conflict = shape != texture
    shape_hits = int(np.sum(conflict & (pred == shape)))
    texture_hits = int(np.sum(conflict & (pred == texture)))
    decided = shape_hits + texture_hits
    return ShapeBiasResult(
        shape_bias=shape_hits / decided if decided else float("nan"),
        shape_match_rate=shape_hits / pred.size,
        texture_match_rate=texture_hits / pred.size,
        n_used=int(conflict.sum()),
        n_dropped_same=int(pred.size - conflict.sum()),
    )


def parse_cue_conflict_filename(file_name: str) -> tuple[str, str]:
    """(shape, texture) categories from a cue-conflict file name such as ``airplane1-bicycle2.png``.

    The name is ``<shape><n>-<texture><m>``, optionally after a prefix ending in ``_`` (as
    model-vs-human's ``get_texture_category`` reads it).
    """
    match = _CUE_CONFLICT_NAME.match(file_name.rsplit("/", 1)[-1])
    if match is None:
        raise AnalysisError(f"file_name: {file_name!r} is not of the form <shape><n>-<texture><m>.<ext>")
    return match.group("shape"), match.group("texture")


def _as_label_vector(values: Sequence[object] | np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise AnalysisError(f"{name}: expected a 1-D array of labels, got shape {array.shape}")
    return array
