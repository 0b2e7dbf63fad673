"""Shape bias of models on a cue-conflict dataset (Geirhos et al. 2019; model-vs-human), from the cache.

A cue-conflict dataset gives each image a shape category and a texture category: the samples'
``shape`` and ``texture`` annotations (shapes-cue-conflict), or else file names of the form
``<shape><n>-<texture><m>.png`` (model-vs-human's Stylized-ImageNet cue-conflict images). Images
whose shape equals their texture are dropped, and ``shape_bias = shape hits / (shape hits + texture
hits)`` (`embedstore.analysis.shape_bias`). Every shape and texture must be one of the dataset's
classes (a set whose cues lie outside them, such as an OOD set, is refused). A model's decision on
an image is, by the first route that applies:

1. CLIP models: the argmax of the zero-shot logits over the dataset's own class names under the
   prompt set (the direct K-way variant: 16-way prompts on a 16-category dataset). With
   ``clip_imagenet`` (a 1000-class ImageNet dataset whose ``text_emb`` the model has), model-vs-human's
   CLIP route instead: zero-shot logits ``100 * cos`` over the 1000 ImageNet classes under that
   dataset's prompt set (model-vs-human's ``ClipPyTorchModel`` fixes the scale at 100 whatever the
   model learned; averaging probabilities depends on it), then route 3's softmax-and-average mapping
   to the 16 categories.
2. Classifiers whose head covers the dataset's classes (as many outputs as classes, or a declared
   class subset to slice to): the argmax of the head logits over those classes.
3. 1000-way ImageNet classifiers on a dataset whose classes are model-vs-human's 16 categories:
   softmax over the 1000 logits, probabilities averaged over each category's ImageNet classes
   (``ImageNetProbabilitiesTo16ClassesMapping`` with ``np.mean``), argmax.

Other pairs cannot be scored: an error when the model was named exactly, skipped when a glob matched it.
Every decodable row takes part (labels are not needed). Results (analysis ``shape_bias``):
``shape_bias`` (NULL when no decision matched either cue), ``shape_match_rate``,
``texture_match_rate``, ``n_used``, ``n_dropped_same``; params record the decision route.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import special

from embedstore.analysis.shape_bias import (
    HUMAN_CATEGORIES,
    ShapeBiasResult,
    category_decisions,
    imagenet_probabilities_to_16,
    parse_cue_conflict_filename,
    shape_bias,
)
from embedstore.errors import AnalysisError
from embedstore.evaluate.common import (
    classifier_logits,
    clip_scores,
    drop_unfinished,
    head_fits,
    model_kind,
    prompt_indices,
    read_finite,
    resolve_models,
    stores_results_together,
    usable_rows,
)
from embedstore.evaluate.robustness import drop_unscorable
from embedstore.store import Store

ANALYSIS = "shape_bias"
IMAGENET_CLASSES = 1000
ROUTE_ZERO_SHOT = "zero-shot over the dataset's classes"
ROUTE_HEAD = "head logits over the dataset's classes"
ROUTE_IMAGENET_TO_16 = "1000-way softmax averaged over each of the 16 categories' ImageNet classes"
ROUTE_CLIP_IMAGENET_TO_16 = "zero-shot over 1000 ImageNet classes, softmax averaged over each of the 16 categories"
#: The logit scale of model-vs-human's CLIP wrapper (``100 * image @ text.T``).
MODEL_VS_HUMAN_CLIP_SCALE = 100.0
CUES_FROM_ANNOTATIONS = "shape/texture annotations"
CUES_FROM_FILE_NAMES = "file names <shape><n>-<texture><m>"


@dataclass(frozen=True)
class CueConflictLabels:
    """Shape and texture category names of a cue-conflict dataset's usable rows, and where they came from."""

    dataset: str
    rows: np.ndarray
    shape: np.ndarray
    texture: np.ndarray
    source: str

    @classmethod
    def read(cls, store: Store, dataset: str) -> CueConflictLabels:
        rows = usable_rows(store, dataset, labelled=False)
        if not len(rows):
            raise AnalysisError(f"dataset {dataset} has no decodable rows")
        cues = store.annotations(dataset)
        shapes, textures = cues.get("shape", {}), cues.get("texture", {})
        if shapes or textures:
            if not (shapes and textures):
                have, lack = ("shape", "texture") if shapes else ("texture", "shape")
                raise AnalysisError(f"dataset {dataset} has '{have}' but no '{lack}' annotations: it is not a "
                                    "cue-conflict dataset (shape bias needs both cues of every image)")  # fmt: skip
            missing = [int(r) for r in rows if r not in shapes or r not in textures]
            if missing:
                raise AnalysisError(
                    f"dataset {dataset}: row {missing[0]} lacks a 'shape' or 'texture' annotation "
                    f"({len(missing)} of {len(rows)} rows do); every cue-conflict image needs both"
                )
            labels = cls(dataset, rows, _names([shapes[r] for r in rows]), _names([textures[r] for r in rows]),
                         CUES_FROM_ANNOTATIONS)  # fmt: skip
        else:
            locators = store.sample_table(dataset)["locator"][rows]
            try:
                pairs = [parse_cue_conflict_filename(str(locator)) for locator in locators]
            except AnalysisError as exc:
                raise AnalysisError(
                    f"dataset {dataset} has no 'shape'/'texture' annotations and its file names do not name the cues "
                    f"({exc})"
                ) from None
            labels = cls(dataset, rows, _names([p[0] for p in pairs]), _names([p[1] for p in pairs]),
                         CUES_FROM_FILE_NAMES)  # fmt: skip
        labels.check_categories(store.dataset_info(dataset))
        return labels

    def check_categories(self, info: dict[str, Any]) -> None:
        """Models decide among the dataset's classes, so every shape and texture must be one of them, and
        some image's shape must differ from its texture."""
        if not info["classnames"]:
            raise AnalysisError(f"dataset {self.dataset} has no classes (a {info['task']} dataset): shape bias needs "
                                "a cue-conflict dataset whose classes are its shape and texture categories")  # fmt: skip
        classes = set(info["classnames"])
        for cue, names in (("shape", self.shape), ("texture", self.texture)):
            outside = [i for i, name in enumerate(names) if name not in classes]
            if outside:
                raise AnalysisError(
                    f"dataset {self.dataset}: {len(outside)} of {len(names)} rows have a {cue} that is not one of its "
                    f"classes (row {int(self.rows[outside[0]])}: {names[outside[0]]!r}); shape bias needs shapes and "
                    f"textures among the classes the models decide over"
                )
        if np.all(self.shape == self.texture):
            raise AnalysisError(f"dataset {self.dataset}: every image's shape equals its texture, so none is a cue "
                                "conflict (shape bias needs images whose shape and texture disagree)")  # fmt: skip


@dataclass(frozen=True)
class ModelDecisions:
    """A model's decided category name per row, and how the decisions were made."""

    names: np.ndarray
    route: str
    templates: list[int] | None


@dataclass(frozen=True)
class ShapeBiasRow:
    model: str
    dataset: str
    route: str
    cues: str
    result: ShapeBiasResult

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "dataset": self.dataset, "decisions": self.route, **vars(self.result)}


@dataclass(frozen=True)
class ShapeBiasReport:
    rows: list[ShapeBiasRow]
    skipped: dict[str, str]
    """Models a glob matched that no decision route can score on the dataset, with the reason."""


def decision_route(store: Store, model: str, dataset: str, clip_imagenet: str | None = None) -> str | None:
    """Which route of the module doc scores the model on the dataset, or None when none applies."""
    if model_kind(store, model) == "clip":
        if clip_imagenet is None:
            return ROUTE_ZERO_SHOT
        return ROUTE_CLIP_IMAGENET_TO_16 if store.list_arrays(clip_imagenet, model, "text_emb") else None
    if head_fits(store, model, dataset):
        return ROUTE_HEAD
    arrays = store.list_arrays(dataset, model, "logits")
    classnames = store.dataset_info(dataset)["classnames"]
    if arrays and arrays[0].shape[-1] == IMAGENET_CLASSES and sorted(classnames) == list(HUMAN_CATEGORIES):
        return ROUTE_IMAGENET_TO_16
    return None


def model_decisions(
    store: Store, model: str, dataset: str, rows: np.ndarray, prompt_set: str, clip_imagenet: str | None = None
) -> ModelDecisions:
    """Decided category names of a model on ``rows`` (see the module doc for the routes)."""
    info = store.dataset_info(dataset)
    classnames = np.asarray(info["classnames"], dtype=object)
    route = decision_route(store, model, dataset, clip_imagenet)
    if route == ROUTE_ZERO_SHOT:
        logits, _ = clip_scores(store, model, dataset, prompt_set, rows)
        return ModelDecisions(classnames[category_decisions(logits)], route, prompt_indices(store, dataset, prompt_set))
    if route is None and clip_imagenet is not None and model_kind(store, model) == "clip":
        raise AnalysisError(f"model {model} has no text_emb on {clip_imagenet}: extract it on that dataset first")
    if route == ROUTE_CLIP_IMAGENET_TO_16:
        _, cosines = clip_scores(store, model, dataset, prompt_set, rows, classes_from=clip_imagenet)
        logits = MODEL_VS_HUMAN_CLIP_SCALE * cosines.astype(np.float64)
        probabilities = imagenet_probabilities_to_16(special.softmax(logits, axis=1), HUMAN_CATEGORIES)
        return ModelDecisions(np.asarray(HUMAN_CATEGORIES, dtype=object)[category_decisions(probabilities)], route,
                              prompt_indices(store, clip_imagenet, prompt_set))  # fmt: skip
    if route is None:
        width = store.list_arrays(dataset, model, "logits")
        outputs = f"{width[0].shape[-1]} outputs" if width else "no cached logits"
        raise AnalysisError(
            f"model {model} has {outputs} on dataset {dataset}: neither its {len(classnames)} classes nor 1000 "
            f"ImageNet classes to map to the 16 cue-conflict categories"
        )
    if route == ROUTE_HEAD:
        return ModelDecisions(
            classnames[category_decisions(classifier_logits(store, model, dataset, rows))], route, None
        )
    logits = read_finite(store, dataset, model, "logits", rows).astype(np.float64)
    probabilities = imagenet_probabilities_to_16(special.softmax(logits, axis=1), HUMAN_CATEGORIES)
    return ModelDecisions(np.asarray(HUMAN_CATEGORIES, dtype=object)[category_decisions(probabilities)], route, None)


@stores_results_together
def run_shape_bias(
    store: Store, models: Sequence[str], dataset: str, *, prompt_set: str = "default", clip_imagenet: str | None = None
) -> ShapeBiasReport:
    """Shape bias of each model (ids or globs) on a cue-conflict dataset; results go to the catalog.
    ``clip_imagenet`` names the 1000-class ImageNet dataset whose text embeddings CLIP models decide
    over (model-vs-human's CLIP route; ``prompt_set`` is then that dataset's)."""
    with store.session():
        cues = CueConflictLabels.read(store, dataset)
        if clip_imagenet is not None:
            _check_clip_imagenet(store, dataset, clip_imagenet)
        skipped: dict[str, str] = {}
        chosen = drop_unscorable(
            drop_unfinished(store, resolve_models(store, models), models, [dataset], skipped), models,
            lambda m: decision_route(store, m, dataset, clip_imagenet) is not None,
            f"no decision route on {dataset}", skipped,
        )  # fmt: skip
        if not chosen:
            raise AnalysisError(f"no selected model can be scored on {dataset}: {', '.join(skipped)}")
        rows = []
        imagenet_route = {"classes_from": clip_imagenet, "logit_scale": MODEL_VS_HUMAN_CLIP_SCALE}
        for model in chosen:
            decisions = model_decisions(store, model, dataset, cues.rows, prompt_set, clip_imagenet)
            result = shape_bias(decisions.names, cues.shape, cues.texture)
            params = {
                "decisions": decisions.route,
                "prompt_set": prompt_set if decisions.templates is not None else None,
                "templates": decisions.templates,
                **(imagenet_route if decisions.route == ROUTE_CLIP_IMAGENET_TO_16 else {}),
                "cues": cues.source,
                "dropped": "shape == texture",
                "rows": "all decodable rows",
            }
            metrics: list[tuple[str, Any]] = [
                ("shape_bias", None if np.isnan(result.shape_bias) else result.shape_bias),
                ("shape_match_rate", result.shape_match_rate),
                ("texture_match_rate", result.texture_match_rate),
                ("n_used", result.n_used),
                ("n_dropped_same", result.n_dropped_same),
            ]
            store.put_results(ANALYSIS, metrics, params=params, model=model, dataset=dataset)
            rows.append(ShapeBiasRow(model, dataset, decisions.route, cues.source, result))
    return ShapeBiasReport(rows, skipped)


def _check_clip_imagenet(store: Store, dataset: str, clip_imagenet: str) -> None:
    """The 1000-way CLIP route needs 1000 ImageNet classes to score and the 16 categories to map to."""
    n_classes = len(store.dataset_info(clip_imagenet)["classnames"])
    if n_classes != IMAGENET_CLASSES:
        raise AnalysisError(f"--clip-imagenet {clip_imagenet} has {n_classes} classes, not the 1000 ImageNet classes "
                            "that the 16 categories map from")  # fmt: skip
    if sorted(store.dataset_info(dataset)["classnames"]) != list(HUMAN_CATEGORIES):
        raise AnalysisError(f"--clip-imagenet maps to model-vs-human's 16 categories, and dataset {dataset}'s classes "
                            "are not those")  # fmt: skip


def _names(values: Sequence[Any]) -> np.ndarray:
    return np.asarray([str(v) for v in values], dtype=object)
