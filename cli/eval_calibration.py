"""eval calibration: ECE, NLL, Brier and reliability bins before and after temperature scaling."""

from __future__ import annotations

import click
import numpy as np

from embedstore.analysis.calibration import DEFAULT_N_BINS, ReliabilityDiagram
from embedstore.evaluate.calibration import run_calibration
from embedstore.evaluate.common import prompt_option
from embedstore.store import Store
from embedstore_cli.options import (
    datasets_option,
    echo_skipped,
    json_option,
    models_option,
    print_json,
    print_rows,
    store_option,
    user_errors,
)

TABLE_COLUMNS = ["model", "dataset", "fit_on", "temperature", "n", "acc1", "ece", "ece_scaled", "nll", "nll_scaled",
                 "brier", "brier_scaled"]  # fmt: skip


@click.command("calibration")
@store_option
@models_option
@datasets_option
@click.option("--calibrate-on", default=None, metavar="DATASET",
              help="Fit T on this dataset and apply it to every --dataset [default: a split of each dataset].")  # fmt: skip
@click.option("--split", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
              help="Fraction of rows T is fitted on; the rest is reported [0.5 without --calibrate-on].")  # fmt: skip
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the --split draw.")
@click.option("--prompts", "prompt_set", default=None, help="Prompt set (CLIP models) [default].")
@click.option(
    "--bins",
    "n_bins",
    type=click.IntRange(min=1, max=1000),
    default=DEFAULT_N_BINS,
    show_default=True,
    help="Equal-width ECE bins (each adds reliability rows to the results).",
)
@json_option
@user_errors
def calibration_command(store_path: str, models: tuple[str, ...], datasets: tuple[str, ...], calibrate_on: str | None,
                        split: float | None, seed: int, prompt_set: str | None, n_bins: int, as_json: bool) -> None:  # fmt: skip
    """Calibration of zero-shot CLIP logits (logit_scale * cos) or classifier logits: ECE (equal-width
    bins), adaptive ECE, MCE, NLL, Brier and reliability bins, before and after temperature scaling
    (one T per model minimising NLL on rows disjoint from the reported ones). Accuracy is unchanged.

    \b
    embedstore eval calibration --model 'openclip:*' --dataset imagenet --split 0.5 --seed 0
    embedstore eval calibration --model M --calibrate-on imagenet --dataset imagenet-v2 --dataset imagenet-r
    """
    store = Store.open(store_path, readonly=False)
    skipped: dict[str, str] = {}
    runs = run_calibration(store, models, datasets, calibrate_on=calibrate_on, split=split, seed=seed,
                           prompt_set=prompt_option(store, models, prompt_set), n_bins=n_bins, skipped=skipped)  # fmt: skip
    echo_skipped(skipped)
    if as_json:
        print_json([{**run.summary(), "params": run.params,
                     "reliability": {"before": _bins(run.reliability_before), "after": _bins(run.reliability_after)}}
                    for run in runs])  # fmt: skip
        return
    print_rows([run.summary() for run in runs], TABLE_COLUMNS, as_json=False)
    at_bound = {(run.model, run.fit_dataset, run.temperature, run.temperature_bounds) for run in runs
                if run.temperature_at_bound}  # fmt: skip
    for model, fit_dataset, temperature, bounds in sorted(at_bound):
        click.echo(f"note: {model} on {fit_dataset}: T={temperature:.4g} is at a search bound {bounds}; "
                   "the NLL optimum lies beyond it", err=True)  # fmt: skip


def _bins(diagram: ReliabilityDiagram) -> dict[str, list]:
    """A reliability diagram as JSON lists; empty bins have null confidence and accuracy."""

    def listed(values: np.ndarray) -> list[float | None]:
        return [None if np.isnan(v) else float(v) for v in values]

    return {"edges": diagram.bin_edges.tolist(), "count": diagram.counts.tolist(),
            "confidence": listed(diagram.mean_confidence), "accuracy": listed(diagram.accuracy)}  # fmt: skip
