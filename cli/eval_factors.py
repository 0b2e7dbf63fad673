"""eval factors: ImageNet-X-style per-factor accuracy, error ratio and effective robustness."""

from __future__ import annotations

from typing import Any

import click

from embedstore.analysis.factors import ANNOTATION_MODES, IMAGENET_X_FACTORS, STUDY_DEFAULT_FACTORS
from embedstore.analysis.robustness import REGRESSORS, TRANSFORMS
from embedstore.evaluate.common import prompt_option
from embedstore.evaluate.factors import FactorReport, run_factors
from embedstore.store import Store
from embedstore_cli.options import (
    echo_skipped,
    json_option,
    models_option,
    print_json,
    print_table,
    store_option,
    user_errors,
)

FACTOR_SETS = {"study": STUDY_DEFAULT_FACTORS, "all": IMAGENET_X_FACTORS}


def _factor_list(text: str) -> tuple[str, ...]:
    if text in FACTOR_SETS:
        return FACTOR_SETS[text]
    return tuple(name.strip() for name in text.split(",") if name.strip())


@click.command("factors")
@store_option
@models_option
@click.option("--dataset", required=True, help="Dataset whose samples carry 'top'/'multi' factor annotations.")
@click.option("--mode", type=click.Choice(ANNOTATION_MODES), default="top", show_default=True,
              help="'top': each image's most salient factor; 'multi': every factor that applies.")  # fmt: skip
@click.option("--factors", "factor_text", default="study", show_default=True,
              help="Factors to report: 'study' (the ten most frequent), 'all' (16), or a comma-separated list.")  # fmt: skip
@click.option("--keep-prototypes", is_flag=True,
              help="Keep images annotated prototype=1 (dropped by default, as ImageNet-X does).")  # fmt: skip
@click.option("--reference", default=None,
              help="SQL condition on the models table choosing the models each factor's line is fitted over "
                   "[the selected models].")  # fmt: skip
@click.option("--transform", type=click.Choice(TRANSFORMS), default="probit", show_default=True,
              help="Axis transform of the per-factor effective-robustness fit.")  # fmt: skip
@click.option("--regressor", type=click.Choice(REGRESSORS), default="huber", show_default=True,
              help="Line fit of the per-factor effective robustness.")  # fmt: skip
@click.option("--prompts", "prompt_set", default=None,
              help="Prompt set of CLIP models' zero-shot predictions [default].")  # fmt: skip
@json_option
@user_errors
def factors_command(store_path: str, models: tuple[str, ...], dataset: str, factor_text: str, as_json: bool,
                    **options: Any) -> None:  # fmt: skip
    """Per-factor accuracy, error ratio (1 - acc_f) / (1 - acc) and worst factor of each model
    (ImageNet-X), and each factor's effective robustness against overall accuracy across models.

    Results go to the catalog (analysis 'factors')."""
    store = Store.open(store_path, readonly=False)
    options["prompt_set"] = prompt_option(store, models, options["prompt_set"])
    report = run_factors(store, models, dataset, factors=_factor_list(factor_text), **options)
    echo_skipped(report.skipped)
    if as_json:
        print_json(_as_json(report))
        return
    print_table(["model", "acc1", "images", "prototypes_dropped", "worst_factor"],
                [[m, t.overall_accuracy, t.n_images, t.n_prototypes_dropped, t.worst_factor]
                 for m, t in report.tables.items()])  # fmt: skip
    click.echo()
    rows = []
    for i, (model, table) in enumerate(report.tables.items()):
        for j, factor in enumerate(table.factor_names):
            er = report.robustness.effective_robustness[i, j] if report.robustness is not None else None
            rows.append([model, factor, int(table.count[j]), table.accuracy[j], table.error_ratio[j], er])
    print_table(["model", "factor", "images", "acc1", "error_ratio", "eff_robust_pp"], rows)
    if report.robustness_note:
        click.echo(f"\nnote: {report.robustness_note}", err=True)


def _as_json(report: FactorReport) -> dict[str, Any]:
    models = []
    for i, (model, table) in enumerate(report.tables.items()):
        entry: dict[str, Any] = {
            "model": model,
            "acc1": table.overall_accuracy,
            "n_images": table.n_images,
            "n_prototypes_dropped": table.n_prototypes_dropped,
            "worst_factor": table.worst_factor,
            "factors": {},
        }
        for j, factor in enumerate(table.factor_names):
            entry["factors"][factor] = {
                "n_images": int(table.count[j]),
                "acc1": table.accuracy[j],
                "error_ratio": table.error_ratio[j],
                "effective_robustness": (
                    report.robustness.effective_robustness[i, j] if report.robustness is not None else None
                ),
            }
        models.append(entry)
    trends = {} if report.robustness is None else {f: t.params() for f, t in report.robustness.trends.items()}
    return {"dataset": report.dataset, "params": report.params, "models": models, "trends": trends,
            "note": report.robustness_note, "skipped": report.skipped}  # fmt: skip
