"""eval robustness: effective robustness of models under distribution shift, from cached accuracies."""

from __future__ import annotations

import math
from typing import Any

import click

from embedstore.analysis.robustness import MIN_MODELS_FOR_TREND, REGRESSORS, TRANSFORMS
from embedstore.evaluate.common import prompt_option
from embedstore.evaluate.robustness import DEFAULT_GROUP_BY, RobustnessReport, run_robustness
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


@click.command("robustness")
@store_option
@models_option
@click.option("--id", "id_dataset", required=True, help="In-distribution dataset (the x axis), e.g. imagenet-val.")
@click.option("--shifted", multiple=True, required=True,
              help="Dataset under shift (the y axis) or glob; repeatable.")  # fmt: skip
@click.option("--reference", default=None,
              help="SQL condition on the models table choosing the models the line is fitted over, e.g. "
                   "\"group_label = 'ImageNet classifier'\" [the selected models].")  # fmt: skip
@click.option("--transform", type=click.Choice(TRANSFORMS), default="probit", show_default=True,
              help="Axis transform T of the fit T(acc_y) = a T(acc_x) + b.")  # fmt: skip
@click.option("--regressor", type=click.Choice(REGRESSORS), default="huber", show_default=True,
              help="Line fit: Huber (robust to outlying reference models) or ordinary least squares.")  # fmt: skip
@click.option("--bootstrap", type=click.IntRange(min=0), default=0, show_default=True,
              help="Resamples of the reference models for a 95% band on each model's ER (0: none).")  # fmt: skip
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the bootstrap resampling.")
@click.option("--prompts", "prompt_set", default=None,
              help="Prompt set of CLIP models' zero-shot accuracies [default].")  # fmt: skip
@click.option("--group-by", default=DEFAULT_GROUP_BY, show_default=True,
              help="models column whose values group the selected models for per-group R^2 and Spearman.")  # fmt: skip
@json_option
@user_errors
def robustness_command(store_path: str, models: tuple[str, ...], id_dataset: str, shifted: tuple[str, ...],
                       as_json: bool, **options: Any) -> None:  # fmt: skip
    """Effective robustness: each model's shifted accuracy above the line the reference models draw.

    Fits T(acc_shift) = a T(acc_id) + b over the reference models and reports, per model,
    ER = acc_shift - T^-1(a T(acc_id) + b) in percentage points. Accuracies (acc1) come from stored
    `eval zeroshot` results for the same prompt set, else are computed from the cache; T clips
    accuracies of 0 and 1 to [1e-4, 1 - 1e-4]. Results go to the catalog (analysis 'robustness')."""
    store = Store.open(store_path, readonly=False)
    options["prompt_set"] = prompt_option(store, models, options["prompt_set"])
    report = run_robustness(store, models, id_dataset, shifted, **options)
    echo_skipped({**report.skipped_datasets, **report.skipped})
    if as_json:
        print_json(_as_json(report))
        return
    bootstrap = report.settings.bootstrap > 0
    for shift in report.shifts:
        if bootstrap and shift.trend.n < FEW_REFERENCE_MODELS:
            click.echo(f"note: {shift.shifted}: the 95% band resamples only {shift.trend.n} reference models, so it is "
                       "coarse: most resamples repeat models, and a line through two points fits them exactly", err=True)  # fmt: skip
        trend = shift.trend
        click.echo(
            f"{shift.shifted} vs {report.id_dataset}: {trend.transform}(acc_shift) = {trend.a:.4g} "
            f"{trend.transform}(acc_id) {'+' if trend.b >= 0 else '-'} {abs(trend.b):.4g} over {trend.n} reference "
            f"models ({trend.regressor}); R^2 {trend.r2:.4g}, Spearman {trend.spearman:.4g}"
        )
        columns = ["model", "acc1_id", "acc1_shift", "predicted", "eff_robust_pp"]
        columns += ["ci_low", "ci_high"] if bootstrap else []
        columns += ["reference", "acc1_from"]
        rows = []
        for m in shift.models:
            row: list[Any] = [m.model, m.acc1_id, m.acc1_shift, m.predicted_acc1_shift, _pp(m.effective_robustness)]
            if bootstrap:
                row += [_pp(m.effective_robustness_ci_low), _pp(m.effective_robustness_ci_high)]
            row += ["yes" if m.in_reference else "", _accuracy_from(m.acc1_id_source, m.acc1_shift_source)]
            rows.append(row)
        print_table(columns, rows)
        click.echo()
        groups = list(shift.groups.values())
        print_table([report.settings.group_by, "models", "slope", "r2_transformed", "spearman"],
                    [[g.group, g.n, g.slope, g.r2, g.spearman] for g in groups])  # fmt: skip
        if any(math.isnan(g.slope) for g in groups):
            click.echo(f"(nan: a group needs {MIN_MODELS_FOR_TREND} models with different ID accuracies for a slope "
                       "and R^2, and 2 for Spearman)")  # fmt: skip
        click.echo()


FEW_REFERENCE_MODELS = 10
"""Below this many reference models, a bootstrap band is printed with a note on how coarse it is."""


def _pp(value: float | None) -> float | None:
    """Percentage points to 4 decimals for the table, without float noise such as -1.4e-15 or -0."""
    return None if value is None else round(value, 4) + 0.0


def _accuracy_from(id_source: str, shift_source: str) -> str:
    """Where the two accuracies came from: stored `eval zeroshot` results or computed from the cache."""
    return id_source if id_source == shift_source else f"id {id_source}, shift {shift_source}"


def _as_json(report: RobustnessReport) -> dict[str, Any]:
    return {
        "id_dataset": report.id_dataset,
        "params": report.params,
        "skipped": report.skipped,
        "skipped_datasets": report.skipped_datasets,
        "shifts": [
            {
                "shifted": shift.shifted,
                "trend": shift.trend.params(),
                "models": [vars(m) for m in shift.models],
                "groups": {str(label): vars(g) for label, g in shift.groups.items()},
            }
            for shift in report.shifts
        ],
    }
