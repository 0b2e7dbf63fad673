"""eval probe: linear probes on cached image embeddings, scored on held-out rows and shifted datasets."""

from __future__ import annotations

import click

from embedstore.analysis.probe import REFIT_SPLITS
from embedstore.evaluate.probe import run_probe
from embedstore.store import Store
from embedstore_cli.options import echo_skipped, json_option, models_option, print_rows, store_option, user_errors


@click.command("probe")
@store_option
@models_option
@click.option(
    "--train", "train_dataset", required=True, help="Dataset whose rows are split to train and test the probe."
)
@click.option("--eval", "eval_datasets", multiple=True,
              help="Further dataset (or glob) in the training label space to score; repeatable.")  # fmt: skip
@click.option("--split", type=click.FloatRange(0, 1, min_open=True), default=0.5, show_default=True,
              help="Fraction of the training dataset's rows to fit on (the rest are test rows); 1 fits on every "
                   "row and scores only the --eval datasets.")  # fmt: skip
@click.option("--val-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.2, show_default=True,
              help="Fraction of the fitting rows held out to choose the regularisation C.")  # fmt: skip
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the row split and the solver.")
@click.option("--refit-on", type=click.Choice(REFIT_SPLITS), default="train+val", show_default=True,
              help="Rows the final probe is refitted on with the chosen C.")  # fmt: skip
@json_option
@user_errors
def probe_command(store_path: str, models: tuple[str, ...], train_dataset: str, eval_datasets: tuple[str, ...],
                  split: float, val_fraction: float, seed: int, refit_on: str, as_json: bool) -> None:  # fmt: skip
    """Train a logistic-regression probe on each model's L2-normalised image embeddings (C chosen on a
    validation split from 1e-4 ... 1e4) and report top-1 on the held-out rows and every --eval dataset.

    Results go to the catalog (analysis 'probe')."""
    report = run_probe(Store.open(store_path, readonly=False), models, train_dataset, eval_datasets, split=split,
                       seed=seed, val_fraction=val_fraction, refit_on=refit_on)  # fmt: skip
    echo_skipped({**report.skipped_datasets, **report.skipped})
    scored = ([train_dataset] if split < 1.0 else []) + report.eval_datasets
    print_rows(
        [row.as_dict() for row in report.rows],
        ["model", "best_C", "val_acc1", "n_train", "n_val", "n_test", *(f"acc1@{name}" for name in scored)],
        as_json,
    )
