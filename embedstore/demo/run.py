"""``embedstore demo``: the whole product on the built-in shapes world, on a laptop, in minutes.

1. Train (once, cached) the three toy models of the study's groups: a zero-shot CLIP, an
   "ImageNet-style" classifier and a fine-tuned CLIP (``embedstore.demo.models``).
2. Extract every model on every shapes-world variant into a store (one pass per dataset).
3. Run every analysis from the cache: zero-shot, prompt ablation, calibration with temperature
   scaling, OOD detection (MCM, MSP, energy, kNN), retrieval, effective robustness, ImageNet-X-style
   factors, shape bias and linear probes.
4. Write the HTML report and return the headline numbers.

A second run reuses the cached weights, the complete arrays (the extractor skips them) and the figures
whose data is unchanged (the report's drawing keys), and only re-runs the analyses, which take seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embedstore.demo.models import TOY_CLASSIFIER, TOY_CLIP, TOY_FINETUNED_CLIP, ToyRecipe, train_toy_models
from embedstore.extract.plan import DatasetPlan, Plan, Settings
from embedstore.extract.runner import run_extraction
from embedstore.store import Store

Log = Callable[[str], None]

ID, V2, SKETCH, OOD, CUE, FACTORS, CAPTIONS = (
    "shapes", "shapes-v2", "shapes-sketch", "shapes-ood", "shapes-cue-conflict", "shapes-x", "shapes-captions",
)  # fmt: skip


@dataclass(frozen=True)
class DemoSize:
    """Images per dataset. ``full`` is the demo; ``small`` keeps the test suite quick."""

    id_images: int
    shifted_images: int
    captions: int

    def dataset_plans(self) -> tuple[DatasetPlan, ...]:
        n, m, c = self.id_images, self.shifted_images, self.captions
        specs = {
            ID: f"synthetic:shapes?n={n}&seed=0",
            V2: f"synthetic:shapes-v2?n={m}&seed=1",
            SKETCH: f"synthetic:shapes-sketch?n={m}&seed=2",
            OOD: f"synthetic:shapes-ood?n={m}&seed=3",
            CUE: f"synthetic:shapes-cue-conflict?n={m}&seed=4",
            FACTORS: f"synthetic:shapes-x?n={m}&seed=5",
            CAPTIONS: f"synthetic:shapes-captions?n={c}&seed=6",
        }
        return tuple(DatasetPlan(name, spec) for name, spec in specs.items())


SIZES = {"full": DemoSize(1000, 500, 300), "small": DemoSize(160, 96, 48)}


@dataclass
class DemoSummary:
    store: Path
    report: Path | None
    models: dict[str, str]
    seconds: dict[str, float] = field(default_factory=dict)
    numbers: dict[str, Any] = field(default_factory=dict)


def run_demo(
    out: str | Path,
    *,
    size: str = "full",
    retrain: bool = False,
    report: bool = True,
    cache_dir: str | Path | None = None,
    recipe: ToyRecipe | None = None,
    workers: int = 2,
    log: Log = print,
    progress: bool = True,
) -> DemoSummary:
    """Run the demo into ``out`` (``out/store``, ``out/report``); see the module docstring."""
    out = Path(out)
    timings: dict[str, float] = {}
    started = time.perf_counter()

    log("[1/4] toy models (trained once, then cached)")
    plans = train_toy_models(cache_dir, retrain=retrain, progress=log, recipe=recipe)
    timings["models"] = time.perf_counter() - started

    log("[2/4] extracting every model on every shapes-world dataset")
    store_path = out / "store"
    store = (
        Store.open(store_path, readonly=False) if (store_path / "catalog.duckdb").exists() else Store.create(store_path)
    )
    plan = Plan(tuple(plans.values()), SIZES[size].dataset_plans(),
                Settings(workers=workers, chunk_rows=256, batch_size=64, device="cpu"))  # fmt: skip
    mark = time.perf_counter()
    run_extraction(store, plan, log=log, progress=progress)
    timings["extract"] = time.perf_counter() - mark
    ids = {name: store_model_id(store, p.id) for name, p in plans.items()}
    models = list(ids.values())
    clip = ids[TOY_CLIP]

    log("[3/4] analyses from the cache (no encoder is loaded)")
    mark = time.perf_counter()
    with store.session():  # the demo owns its store: one catalog connection for every analysis
        _run_analyses(store, ids, models, clip)
    timings["analyses"] = time.perf_counter() - mark

    report_dir = None
    if report:
        log("[4/4] writing the HTML report")
        from embedstore.report.html import write_report

        mark = time.perf_counter()
        report_dir = out / "report"
        write_report(store, report_dir)
        timings["report"] = time.perf_counter() - mark
    timings["total"] = time.perf_counter() - started
    return DemoSummary(store_path, report_dir, ids, timings, demo_numbers(store, ids))


def _run_analyses(store: Store, ids: dict[str, str], models: list[str], clip: str) -> None:
    from embedstore.evaluate.calibration import run_calibration
    from embedstore.evaluate.factors import run_factors
    from embedstore.evaluate.ood import OODSettings, run_ood
    from embedstore.evaluate.probe import run_probe
    from embedstore.evaluate.prompts import run_ablation
    from embedstore.evaluate.retrieval import run_retrieval
    from embedstore.evaluate.robustness import run_robustness
    from embedstore.evaluate.shape_bias import run_shape_bias
    from embedstore.evaluate.zeroshot import run_zeroshot

    run_zeroshot(store, models, [ID, V2, SKETCH, CUE, FACTORS])
    run_ablation(store, [clip], [ID])
    run_calibration(store, models, [ID, V2, SKETCH], calibrate_on=ID, split=0.5, seed=0)
    run_ood(store, models, ID, [OOD], ["msp", "energy", "knn"], OODSettings(k=10))
    run_ood(store, [clip], ID, [OOD], ["mcm"], OODSettings())
    run_retrieval(store, [clip], [CAPTIONS])
    run_robustness(store, models, ID, [V2, SKETCH])
    run_factors(store, models, FACTORS)
    run_shape_bias(store, models, CUE)
    run_probe(store, [clip, ids[TOY_FINETUNED_CLIP]], ID, [V2, SKETCH])


def store_model_id(store: Store, plan_id: str) -> str:
    """The canonical id a plan's model id is stored under."""
    from embedstore.models import parse_model_id

    return str(parse_model_id(plan_id))


def _metric(store: Store, analysis: str, model: str, dataset: str, metric: str, where: str = "") -> float | None:
    rows = store.query(
        f"SELECT value FROM results WHERE analysis = ? AND model = ? AND dataset = ? AND metric = ? {where} "
        "ORDER BY created DESC LIMIT 1",
        [analysis, model, dataset, metric],
    )
    return rows[0]["value"] if rows else None


def demo_numbers(store: Store, ids: dict[str, str]) -> dict[str, Any]:
    """The headline numbers, read back from the catalog's ``results`` (what ``embedstore sql`` sees)."""
    clip, classifier, finetuned = ids[TOY_CLIP], ids[TOY_CLASSIFIER], ids[TOY_FINETUNED_CLIP]
    numbers: dict[str, Any] = {}
    for name, model in ((TOY_CLIP, clip), (TOY_CLASSIFIER, classifier), (TOY_FINETUNED_CLIP, finetuned)):
        numbers[name] = {
            "acc1_shapes": _metric(store, "zeroshot", model, ID, "acc1"),
            "acc1_sketch": _metric(store, "zeroshot", model, SKETCH, "acc1"),
            "shape_bias": _metric(store, "shape_bias", model, CUE, "shape_bias"),
        }
    numbers["mcm_auroc"] = _metric(store, "ood", clip, ID, "auroc", 'AND params LIKE \'%"score":"mcm"%\'')
    numbers["msp_auroc"] = _metric(store, "ood", clip, ID, "auroc", 'AND params LIKE \'%"score":"msp"%\'')
    numbers["temperature"] = _metric(store, "calibration", clip, ID, "temperature")
    numbers["nll_before"] = _metric(store, "calibration", clip, ID, "nll")
    numbers["nll_after"] = _metric(store, "calibration", clip, ID, "nll_scaled")
    numbers["recall@5"] = _metric(store, "retrieval", clip, CAPTIONS, "image_retrieval_recall@5")
    return numbers
