"""Out-of-distribution detection from the cache: one ID dataset against several OOD datasets, any of
the scores of ``embedstore.analysis.ood``, AUROC / AUPR-In / AUPR-Out / FPR@95 per OOD set and their
mean over the sets (OpenOOD's mean row).

Scores (higher = ID) and what they are computed from:

- ``msp``, ``maxlogit``, ``energy`` (T = 1), ``entropy``: logits in the **ID dataset's class space**.
  CLIP: ``logit_scale * cos (+ logit_bias)`` of each image (ID or OOD) against the ID dataset's
  zero-shot classifier under a prompt set. Classifiers: head logits, sliced to the ID dataset's class
  subset when it has one (all head outputs otherwise).
- ``mcm``: ``max softmax(cos / T)``, T = 1, on the raw cosines to the ID classes (Ming et al. 2022);
  CLIP models only (an error for a model named exactly, skipped for one only a glob matched).
- ``knn`` (Sun et al. 2022) and ``mahalanobis`` (Lee et al. 2018, class means and a shared covariance
  from labelled rows): L2-normalised ``image_emb`` (the CLIP image embedding, or a classifier's
  pre-logit features) against a **bank** of ID embeddings. By default the bank is a seeded
  fraction (``split``, 0.5, ``seed`` 0) of the ID dataset's rows and the ID side is scored on the
  remaining rows only; with ``bank=D0`` the bank is dataset D0 (e.g. a slice of ImageNet-train) and
  every ID row is scored. kNN search is exact (FAISS ``IndexFlatIP`` when installed, else numpy).

The logit scores and MCM score every usable ID row. OOD labels are never used, so OOD datasets may
have any label space. Rows in ``bad_samples`` are left out everywhere.

Metric convention (``positive``): ``"id"`` (default, MCM / ODIN) makes ID the positive class of FPR@95;
``"ood"`` is OpenOOD's (FPR@95 = ID samples flagged at 95% OOD recall; AUPRs as OpenOOD's trapezoid,
where ``"id"`` takes average precision as MCM). AUROC does not depend on it. It is stored in every
result's params.

Results (analysis ``"ood"``, dataset = the ID dataset, one set per (model, score)):
``auroc@ood:<D>``, ``aupr_in@ood:<D>``, ``aupr_out@ood:<D>``, ``fpr95@ood:<D>``, ``n_ood@ood:<D>`` per
OOD set D; ``auroc``, ``aupr_in``, ``aupr_out``, ``fpr95`` as the unweighted mean over the sets; ``n_id``
(ID rows scored) and, for knn / mahalanobis, ``n_bank`` (bank rows; labelled ones for mahalanobis).
Params: score, positive, aupr (how the AUPRs are summed), the sorted OOD set list, and the choices
that score depends on (prompt set, logits source, temperature, k, bank, split, seed, kNN backend,
shrinkage).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from embedstore.analysis.calibration import split_calibration_rows
from embedstore.analysis.ood import (
    AUPR_SUMS,
    MEAN_KEY,
    OODMetrics,
    Positive,
    energy,
    entropy_score,
    evaluate_ood,
    faiss,
    knn_score,
    mahalanobis_score,
    max_logit,
    mcm,
    msp,
)
from embedstore.analysis.zeroshot import classifier_weights, zeroshot_cosines
from embedstore.errors import AnalysisError, EmbedstoreError
from embedstore.evaluate.common import (
    check_templates_encoded,
    drop_unfinished,
    labels_of,
    model_kind,
    named_explicitly,
    prompt_indices,
    read_finite,
    resolve_datasets,
    resolve_models,
    stores_results_together,
    usable_rows,
)
from embedstore.store import Store

ANALYSIS = "ood"
SCORES = ("mcm", "msp", "maxlogit", "energy", "entropy", "knn", "mahalanobis")
LOGIT_SCORES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "msp": msp,
    "maxlogit": max_logit,
    "energy": energy,
    "entropy": entropy_score,
}
FEATURE_SCORES = ("knn", "mahalanobis")
DEFAULT_K = 50
DEFAULT_SPLIT = 0.5
MCM_TEMPERATURE = 1.0
ENERGY_TEMPERATURE = 1.0
KNN_BACKEND = "faiss" if faiss is not None else "numpy"


@dataclass(frozen=True)
class OODSettings:
    """Every choice of one OOD evaluation besides the models and datasets. ``None`` means "not given":
    the default applies (``DEFAULT_K``, the ``default`` prompt set, a ``DEFAULT_SPLIT`` drawn with seed 0),
    and an option given to scores that do not use it is refused (see `run_ood`)."""

    positive: Positive = "id"
    prompt_set: str | None = None
    k: int | None = None
    bank: str | None = None
    split: float | None = None
    seed: int | None = None
    shrinkage: float = 0.0

    @property
    def prompts(self) -> str:
        return "default" if self.prompt_set is None else self.prompt_set

    @property
    def knn_k(self) -> int:
        return DEFAULT_K if self.k is None else self.k

    @property
    def bank_split(self) -> float | None:
        """The fraction of the ID rows that forms the bank (None when ``bank`` names a dataset)."""
        if self.bank is not None:
            return None
        return DEFAULT_SPLIT if self.split is None else float(self.split)

    @property
    def split_seed(self) -> int | None:
        """The seed of the bank's draw from the ID rows (None when ``bank`` names a dataset)."""
        if self.bank is not None:
            return None
        return 0 if self.seed is None else self.seed


@dataclass(frozen=True)
class OODRun:
    """One model and one score: ``metrics`` per OOD set plus ``"mean"``, and the rows counted."""

    model: str
    id_dataset: str
    score: str
    positive: Positive
    metrics: dict[str, OODMetrics]
    n_id: int
    n_ood: dict[str, int]
    n_bank: int | None
    params: dict[str, Any]

    def table_rows(self) -> list[dict[str, Any]]:
        """One row per OOD set, then the mean row."""
        return [
            {"model": self.model, "id": self.id_dataset, "ood": name, "score": self.score, "positive": self.positive,
             "auroc": m.auroc, "aupr_in": m.aupr_in, "aupr_out": m.aupr_out, "fpr95": m.fpr95,
             "n_id": self.n_id, "n_ood": self.n_ood.get(name)}
            for name, m in self.metrics.items()
        ]  # fmt: skip

    def metric_rows(self) -> list[tuple[str, float]]:
        """``(metric, value)`` pairs as stored in ``results`` (see the module docstring)."""
        rows: list[tuple[str, float]] = [("n_id", float(self.n_id))]
        if self.n_bank is not None:
            rows.append(("n_bank", float(self.n_bank)))
        for name, metrics in self.metrics.items():
            suffix = "" if name == MEAN_KEY else f"@ood:{name}"
            rows += [
                (f"{metric}{suffix}", getattr(metrics, metric)) for metric in ("auroc", "aupr_in", "aupr_out", "fpr95")
            ]
            if name != MEAN_KEY:
                rows.append((f"n_ood{suffix}", float(self.n_ood[name])))
        return rows


@stores_results_together
def run_ood(
    store: Store,
    models: Sequence[str],
    id_dataset: str,
    ood_datasets: Sequence[str],
    scores: Sequence[str],
    settings: OODSettings | None = None,
    skipped: dict[str, str] | None = None,
) -> list[OODRun]:
    """Score ``id_dataset`` against every OOD dataset (names or globs) for every model (ids or globs)
    and every score, and record one result set per (model, score).

    Checked before any array is read: unknown scores, MCM on a model named exactly that is not CLIP,
    an ID dataset without classes for the scores that need them, options no chosen score uses,
    arrays not extracted, embedding widths that disagree, a bank that is also the ID or an OOD
    dataset. ``k`` against the bank size and the split fraction are checked when the bank is drawn.
    Results are written only once every (model, score) has been computed, so a failure writes nothing.
    A model a glob matched whose arrays on these datasets are not finished is left out, with the reason
    put in ``skipped`` when given."""
    settings = settings or OODSettings()
    skipped = {} if skipped is None else skipped  # models a glob matched whose extraction is not finished
    score_names = _check_scores(scores)
    with store.session():
        model_ids = resolve_models(store, models)
        id_name, ood_names = _resolve_datasets(store, id_dataset, ood_datasets, settings.bank)
        _check_settings(settings, id_name, ood_names, score_names)
        if settings.bank is not None:
            store.dataset_info(settings.bank)
        roles = [id_name, *ood_names, *([settings.bank] if settings.bank is not None else [])]
        model_ids = drop_unfinished(store, model_ids, models, roles, skipped)
        if not model_ids:
            raise AnalysisError(
                f"no selected model can be scored yet: {'; '.join(f'{m}: {r}' for m, r in skipped.items())}"
            )
        plan = _plan(store, model_ids, models, score_names)
        _check_id_classes(store, id_name, plan)
        _check_prompts_used(store, plan, settings)
        for model, model_scores in plan.items():
            _check_arrays(store, model, id_name, ood_names, model_scores, settings)
    runs = []
    for model, model_scores in plan.items():
        arrays = ModelArrays(store, model, id_name, ood_names, settings)
        runs += [_score_model(arrays, score, settings) for score in model_scores]
    with store.session():
        for run in runs:
            store.put_results(ANALYSIS, run.metric_rows(), params=run.params, model=run.model, dataset=run.id_dataset)
    return runs


# ---------------------------------------------------------------------------------------------------
# Checks


def _resolve_datasets(
    store: Store, id_dataset: str, ood_datasets: Sequence[str], bank: str | None
) -> tuple[str, list[str]]:
    """The ID dataset and the OOD datasets. An ``--ood`` glob leaves out the ID dataset and the bank,
    which it matches only by accident (``--ood '*'``); naming either as OOD is an error."""
    id_names = resolve_datasets(store, [id_dataset])
    if len(id_names) != 1:
        raise AnalysisError(f"--id {id_dataset!r} matches {len(id_names)} datasets; name exactly one ID dataset")
    id_name = id_names[0]
    ood_names = [
        name for name in resolve_datasets(store, ood_datasets)
        if name not in (id_name, bank) or named_explicitly(name, ood_datasets)
    ]  # fmt: skip
    if id_name in ood_names:
        raise AnalysisError(f"dataset {id_name} is both the ID dataset and an OOD dataset")
    if not ood_names:
        raise AnalysisError(f"--ood {' '.join(ood_datasets)} matches no dataset besides the ID dataset and the bank")
    return id_name, ood_names


def _check_scores(scores: Sequence[str]) -> list[str]:
    if not scores:
        raise AnalysisError(f"name at least one score: {', '.join(SCORES)}")
    unknown = [s for s in scores if s not in SCORES]
    if unknown:
        raise AnalysisError(f"unknown OOD score {unknown[0]!r}; choose from {', '.join(SCORES)}")
    return list(dict.fromkeys(scores))


def _check_settings(settings: OODSettings, id_name: str, ood_names: Sequence[str], scores: Sequence[str]) -> None:
    if settings.positive not in ("id", "ood"):
        raise AnalysisError(f"--positive must be 'id' or 'ood', got {settings.positive!r}")
    bank_options = {"--bank": settings.bank, "--split": settings.split, "--seed": settings.seed}
    given = [option for option, value in bank_options.items() if value is not None]
    if given and not any(s in FEATURE_SCORES for s in scores):
        raise AnalysisError(f"{given[0]} chooses the ID bank of the knn and mahalanobis scores, and no --score is one "
                            "of them")  # fmt: skip
    if settings.k is not None and "knn" not in scores:
        raise AnalysisError("--k is the neighbour rank of the knn score, and no --score is knn")
    if settings.bank is not None and settings.split is not None:
        raise AnalysisError("give --bank or --split (a bank drawn from the ID dataset), not both")
    if settings.bank is not None and settings.seed is not None:
        raise AnalysisError("--seed draws the --split bank from the ID dataset; with --bank nothing is drawn")
    if settings.bank == id_name:
        raise AnalysisError(
            f"--bank {id_name} is the ID dataset: its rows would be scored against themselves; "
            "leave --bank out to hold out a --split of it"
        )
    if settings.bank in ood_names:
        raise AnalysisError(f"--bank {settings.bank} is one of the OOD datasets; the bank must hold ID images")
    k = settings.knn_k
    if "knn" in scores and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise AnalysisError(f"--k must be a positive integer, got {k!r}")


def _check_id_classes(store: Store, id_name: str, plan: dict[str, list[str]]) -> None:
    """CLIP models' logit scores and MCM are computed over the ID dataset's classes (a caption set has
    none); a classifier's logit scores use its own head and need none."""
    clip = [m for m in plan if model_kind(store, m) == "clip"]
    needing = [s for m in clip for s in plan[m] if s in LOGIT_SCORES or s == "mcm"]
    info = store.dataset_info(id_name)
    if needing and not info["classnames"]:
        raise AnalysisError(
            f"--id {id_name} has no class labels (a {info['task']} dataset): a CLIP model's score {needing[0]} is "
            f"computed over the ID dataset's classes; knn and classifiers' scores need none"
        )


def _check_prompts_used(store: Store, plan: dict[str, list[str]], settings: OODSettings) -> None:
    """``--prompts`` sets the classes of CLIP models' logit scores and MCM: refused when nothing uses it."""
    if settings.prompt_set is None:
        return
    if not any(model_kind(store, m) == "clip" and set(s) - set(FEATURE_SCORES) for m, s in plan.items()):
        raise AnalysisError("--prompts chooses the prompt set of CLIP models' logit scores and mcm, and no selected "
                            "CLIP model gets one of those scores")  # fmt: skip


def _plan(
    store: Store, model_ids: Sequence[str], model_patterns: Sequence[str], scores: Sequence[str]
) -> dict[str, list[str]]:
    """The scores each model gets: MCM on a non-CLIP model is an error when the model is named exactly
    and skipped when only a glob matched it (``common.named_explicitly``)."""
    plan = {}
    for model in model_ids:
        kind = store.model_info(model)["kind"]
        model_scores = list(scores)
        if "mcm" in scores and kind != "clip":
            if named_explicitly(model, model_patterns):
                raise AnalysisError(
                    f"score mcm needs a CLIP model (raw image-text cosines); {model} is of kind {kind!r}"
                )
            model_scores.remove("mcm")
        if model_scores:
            plan[model] = model_scores
    if not plan:
        raise AnalysisError(f"score mcm needs a CLIP model, and none of {', '.join(model_ids)} is one")
    return plan


def _check_arrays(
    store: Store, model: str, id_name: str, ood_names: Sequence[str], scores: Sequence[str], settings: OODSettings
) -> None:
    """Every array the scores need exists, and the widths that must agree do."""
    kind = store.model_info(model)["kind"]
    roles = [("ID", id_name)] + [("OOD", name) for name in ood_names]
    needed: dict[str, list[tuple[str, str]]] = {}
    if any(s in LOGIT_SCORES or s == "mcm" for s in scores):
        if kind == "clip":
            needed["text_emb"] = [("ID", id_name)]
            needed["image_emb"] = list(roles)
        else:
            needed["logits"] = list(roles)
    if any(s in FEATURE_SCORES for s in scores):
        bank = [("bank", settings.bank)] if settings.bank is not None else []
        needed["image_emb"] = list(dict.fromkeys(needed.get("image_emb", []) + roles + bank))
    have = {(a.dataset, a.name): a for a in store.list_arrays(model=model)}
    for name, places in needed.items():
        for role, dataset in places:
            if (dataset, name) not in have:
                raise AnalysisError(
                    f"{role} dataset {dataset} has no {name} for model {model}: extract the model on it first"
                )
        widths = {dataset: have[(dataset, name)].shape[-1] for _, dataset in places}
        if "text_emb" in needed and name == "image_emb":
            widths = {f"{id_name} (text_emb)": have[(id_name, "text_emb")].shape[-1], **widths}
        if len(set(widths.values())) > 1:
            listing = ", ".join(f"{d}: {w}" for d, w in widths.items())
            raise AnalysisError(f"{name} of model {model} has different widths across datasets ({listing})")
        subset = store.dataset_info(id_name)["class_subset"] if name == "logits" else None
        if subset is not None and max(subset) >= widths[id_name]:
            raise AnalysisError(
                f"logits of model {model} have {widths[id_name]} outputs but ID dataset {id_name}'s class subset "
                f"names column {max(subset)}"
            )


# ---------------------------------------------------------------------------------------------------
# Arrays


class ModelArrays:
    """One model's inputs to the scores, each read from the store once, on first use.

    Every dataset is read on its usable rows (``usable_rows``, labels not required); subsets such as
    the bank split are taken from those reads. Logits and cosines are in the ID dataset's class space;
    features are raw ``image_emb`` rows (the scores normalise them). Reads refuse NaN / inf, naming
    the dataset row.
    """

    def __init__(self, store: Store, model: str, id_name: str, ood_names: Sequence[str], settings: OODSettings):
        self.store = store
        self.model = model
        self.id_name = id_name
        self.ood_names = list(ood_names)
        self.settings = settings
        with store.session():
            self.info = store.model_info(model)
            self.class_subset = store.dataset_info(id_name)["class_subset"]
        self.is_clip = self.info["kind"] == "clip"
        self._rows: dict[str, np.ndarray] = {}
        self._features: dict[str, np.ndarray] = {}
        self._cosines: dict[str, np.ndarray] = {}
        self._logits: dict[str, np.ndarray] = {}

    # -- rows

    def rows(self, dataset: str) -> np.ndarray:
        """The dataset rows every array of ``dataset`` is read on."""
        if dataset not in self._rows:
            with self.store.session():
                rows = usable_rows(self.store, dataset, labelled=False)
            if not len(rows):
                raise AnalysisError(f"dataset {dataset} has no decodable rows to score")
            self._rows[dataset] = rows
        return self._rows[dataset]

    @property
    def bank_dataset(self) -> str:
        return self.settings.bank or self.id_name

    @cached_property
    def bank_and_id_eval_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """Bank rows (of ``bank_dataset``) and the ID rows the feature scores evaluate."""
        id_rows = self.rows(self.id_name)
        if self.settings.bank is not None:
            return self.rows(self.settings.bank), id_rows
        try:
            bank, held_out = split_calibration_rows(len(id_rows), self.settings.bank_split, self.settings.split_seed)
        except AnalysisError as error:
            raise AnalysisError(f"bank split of ID dataset {self.id_name}: {error}") from None
        return id_rows[bank], id_rows[held_out]

    def labels(self, dataset: str) -> np.ndarray:
        """Labels of every row of ``dataset`` (-1 where unlabelled)."""
        with self.store.session():
            return labels_of(self.store, dataset)

    # -- arrays

    def features(self, dataset: str, rows: np.ndarray | None = None) -> np.ndarray:
        """``image_emb`` of ``rows`` (a subset of ``self.rows(dataset)``; all of them when None)."""
        if dataset not in self._features:
            with self.store.session():
                self._features[dataset] = read_finite(self.store, dataset, self.model, "image_emb", self.rows(dataset))
        return self._select(dataset, self._features[dataset], rows)

    def cosines(self, dataset: str) -> np.ndarray:
        """Raw cosines ``[n, C]`` of ``dataset``'s rows to the ID classes (CLIP)."""
        if dataset not in self._cosines:
            self._cosines[dataset] = zeroshot_cosines(self.features(dataset), self.class_weights)
        return self._cosines[dataset]

    def logits(self, dataset: str) -> np.ndarray:
        """Logits ``[n, C]`` in the ID class space: zero-shot for CLIP, the (sliced) head otherwise."""
        if dataset not in self._logits:
            if self.is_clip:
                logits = float(self.info["logit_scale"]) * self.cosines(dataset)
                if self.info["logit_bias"] is not None:
                    logits = logits + float(self.info["logit_bias"])
            else:
                with self.store.session():
                    logits = read_finite(self.store, dataset, self.model, "logits", self.rows(dataset))
                if self.class_subset is not None:
                    logits = logits[:, self.class_subset]
            self._logits[dataset] = logits
        return self._logits[dataset]

    @cached_property
    def class_weights(self) -> np.ndarray:
        """Zero-shot classifier ``[C, D]`` of the ID dataset's classes under the prompt set (CLIP)."""
        with self.store.session():
            text = read_finite(self.store, self.id_name, self.model, "text_emb")
            templates = prompt_indices(self.store, self.id_name, self.settings.prompts)
        check_templates_encoded(text, templates, self.model, self.id_name)
        return classifier_weights(text, templates)

    def _select(self, dataset: str, values: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
        return values if rows is None else values[np.searchsorted(self.rows(dataset), rows)]

    @property
    def logits_params(self) -> dict[str, Any]:
        return {
            "logits": "zero-shot" if self.is_clip else "classifier head",
            "prompt_set": self.settings.prompts if self.is_clip else None,
            "class_subset": self.class_subset is not None,
        }


# ---------------------------------------------------------------------------------------------------
# Scores: one small function per score, dispatched through SCORE_FUNCTIONS


@dataclass(frozen=True)
class ScoredSets:
    """One score over the ID rows and each OOD set, the params it depends on, and the bank size."""

    id_scores: np.ndarray
    ood_scores: dict[str, np.ndarray]
    params: dict[str, Any]
    n_bank: int | None = None


def _logit_score(score: str, arrays: ModelArrays) -> ScoredSets:
    function = LOGIT_SCORES[score]
    params = {**arrays.logits_params, **({"temperature": ENERGY_TEMPERATURE} if score == "energy" else {})}
    return ScoredSets(
        function(arrays.logits(arrays.id_name)),
        {name: function(arrays.logits(name)) for name in arrays.ood_names},
        params,
    )


def _mcm_score(score: str, arrays: ModelArrays) -> ScoredSets:
    return ScoredSets(
        mcm(arrays.cosines(arrays.id_name), MCM_TEMPERATURE),
        {name: mcm(arrays.cosines(name), MCM_TEMPERATURE) for name in arrays.ood_names},
        {"inputs": "raw cosines", "prompt_set": arrays.settings.prompts, "temperature": MCM_TEMPERATURE},
    )


def _feature_params(arrays: ModelArrays) -> dict[str, Any]:
    settings = arrays.settings
    return {
        "features": "image_emb, L2-normalised",
        "bank": arrays.bank_dataset,
        "split": settings.bank_split,
        "seed": settings.split_seed,
    }


def _knn_score(score: str, arrays: ModelArrays) -> ScoredSets:
    bank_rows, id_rows = arrays.bank_and_id_eval_rows
    k = arrays.settings.knn_k
    if k > len(bank_rows):
        raise AnalysisError(f"--k {k} exceeds the {len(bank_rows)} rows of the kNN bank ({arrays.bank_dataset})")
    bank = arrays.features(arrays.bank_dataset, bank_rows)
    return ScoredSets(
        knn_score(bank, arrays.features(arrays.id_name, id_rows), k, backend=KNN_BACKEND),
        {name: knn_score(bank, arrays.features(name), k, backend=KNN_BACKEND) for name in arrays.ood_names},
        {**_feature_params(arrays), "k": k, "index": f"{KNN_BACKEND} exact inner product"},
        n_bank=len(bank_rows),
    )


def _mahalanobis_score(score: str, arrays: ModelArrays) -> ScoredSets:
    bank_rows, id_rows = arrays.bank_and_id_eval_rows
    bank_labels = arrays.labels(arrays.bank_dataset)[bank_rows]
    labelled = bank_labels >= 0
    if not labelled.any():
        raise AnalysisError(f"mahalanobis needs labelled bank rows, and the bank ({arrays.bank_dataset}) has none")
    bank = arrays.features(arrays.bank_dataset, bank_rows[labelled])
    labels, shrinkage = bank_labels[labelled], arrays.settings.shrinkage
    return ScoredSets(
        mahalanobis_score(bank, labels, arrays.features(arrays.id_name, id_rows), shrinkage),
        {name: mahalanobis_score(bank, labels, arrays.features(name), shrinkage) for name in arrays.ood_names},
        {**_feature_params(arrays), "shrinkage": float(shrinkage)},
        n_bank=int(labelled.sum()),
    )


SCORE_FUNCTIONS: dict[str, Callable[[str, ModelArrays], ScoredSets]] = {
    **{score: _logit_score for score in LOGIT_SCORES},
    "mcm": _mcm_score,
    "knn": _knn_score,
    "mahalanobis": _mahalanobis_score,
}


def _score_model(arrays: ModelArrays, score: str, settings: OODSettings) -> OODRun:
    try:
        scored = SCORE_FUNCTIONS[score](score, arrays)
        metrics = evaluate_ood(scored.id_scores, scored.ood_scores, positive=settings.positive)
    except EmbedstoreError as error:
        raise type(error)(f"model {arrays.model}, score {score}: {error}") from None
    params = {"score": score, "positive": settings.positive, "aupr": AUPR_SUMS[settings.positive],
              "ood_datasets": sorted(arrays.ood_names), **scored.params}  # fmt: skip
    return OODRun(
        model=arrays.model,
        id_dataset=arrays.id_name,
        score=score,
        positive=settings.positive,
        metrics=metrics,
        n_id=int(len(scored.id_scores)),
        n_ood={name: int(len(values)) for name, values in scored.ood_scores.items()},
        n_bank=scored.n_bank,
        params=params,
    )
