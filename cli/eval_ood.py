"""eval ood: one ID dataset against several OOD datasets, for any OOD score."""

from __future__ import annotations

import click

from embedstore.evaluate.ood import DEFAULT_K, SCORES, OODSettings, run_ood
from embedstore.store import Store
from embedstore_cli.options import echo_skipped, json_option, models_option, print_rows, store_option, user_errors

TABLE_COLUMNS = ["model", "id", "ood", "score", "positive", "auroc", "aupr_in", "aupr_out", "fpr95", "n_id", "n_ood"]


@click.command("ood")
@store_option
@models_option
@click.option("--id", "id_dataset", required=True, metavar="DATASET", help="The in-distribution dataset.")
@click.option("--ood", "ood_datasets", multiple=True, required=True, metavar="DATASET",
              help="An OOD dataset or glob (repeatable); labels are not used.")  # fmt: skip
@click.option("--score", "scores", multiple=True, required=True, type=click.Choice(SCORES),
              help="OOD score (repeatable); mcm needs a CLIP model.")  # fmt: skip
@click.option("--positive", type=click.Choice(["id", "ood"]), default="id", show_default=True,
              help="Positive class of FPR@95: id (MCM / ODIN) or ood (OpenOOD).")  # fmt: skip
@click.option("--prompts", "prompt_set", default=None,
              help="Prompt set of the ID dataset (CLIP models' logit scores and mcm) [default].")  # fmt: skip
@click.option("--k", type=click.IntRange(min=1), default=None, help=f"Neighbour rank of the knn score [{DEFAULT_K}].")
@click.option("--bank", default=None, metavar="DATASET",
              help="ID embeddings for knn / mahalanobis [default: a --split of the ID dataset].")  # fmt: skip
@click.option("--split", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
              help="Fraction of the ID rows that forms the knn / mahalanobis bank; the rest is scored [0.5].")  # fmt: skip
@click.option("--seed", type=int, default=None, help="Seed of the --split draw [0].")
@json_option
@user_errors
def ood_command(store_path: str, models: tuple[str, ...], id_dataset: str, ood_datasets: tuple[str, ...],
                scores: tuple[str, ...], as_json: bool, **settings) -> None:  # fmt: skip
    """OOD detection: AUROC, AUPR-In, AUPR-Out and FPR@95 of each score for each OOD dataset, and their
    mean over the OOD datasets. Scores are higher for ID; CLIP images (ID and OOD) are scored against
    the ID dataset's classes.

    \b
    embedstore eval ood --model 'openclip:*' --id imagenet --ood inaturalist --ood textures --score mcm --score energy
    embedstore eval ood --model M --id imagenet --ood places --score knn --k 50 --bank imagenet-train-subset
    """
    skipped: dict[str, str] = {}
    runs = run_ood(Store.open(store_path, readonly=False), models, id_dataset, ood_datasets, scores,
                   OODSettings(**settings), skipped)  # fmt: skip
    echo_skipped(skipped)
    print_rows([row for run in runs for row in run.table_rows()], TABLE_COLUMNS, as_json)
