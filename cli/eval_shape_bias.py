"""eval shape-bias: how often a model decides by shape rather than texture on cue-conflict images."""

from __future__ import annotations

import click

from embedstore.evaluate.common import prompt_option
from embedstore.evaluate.shape_bias import run_shape_bias
from embedstore.store import Store
from embedstore_cli.options import echo_skipped, json_option, models_option, print_rows, store_option, user_errors


@click.command("shape-bias")
@store_option
@models_option
@click.option("--dataset", required=True, help="Cue-conflict dataset (shape/texture annotations or file names).")
@click.option("--prompts", "prompt_set", default=None,
              help="Prompt set of CLIP models' zero-shot decisions (of --clip-imagenet's dataset when given) "
                   "[default].")  # fmt: skip
@click.option("--clip-imagenet", default=None, metavar="DATASET",
              help="CLIP models decide over this 1000-class ImageNet dataset's text embeddings, mapped to the 16 "
                   "categories (model-vs-human's CLIP route), instead of zero-shot over the dataset's classes.")  # fmt: skip
@json_option
@user_errors
def shape_bias_command(
    store_path: str,
    models: tuple[str, ...],
    dataset: str,
    prompt_set: str | None,
    clip_imagenet: str | None,
    as_json: bool,
) -> None:
    """Shape bias = shape hits / (shape hits + texture hits) on cue-conflict images, dropping images
    whose shape equals their texture (Geirhos et al. 2019; model-vs-human).

    CLIP models decide zero-shot over the dataset's classes (or, with --clip-imagenet, over 1000
    ImageNet classes mapped as below), classifiers by their head over those classes; 1000-way ImageNet
    classifiers on the 16-category set by averaging softmax probabilities over each category's
    ImageNet classes. Results go to the catalog (analysis 'shape_bias')."""
    store = Store.open(store_path, readonly=False)
    prompt_set = prompt_option(store, models, prompt_set)
    report = run_shape_bias(store, models, dataset, prompt_set=prompt_set, clip_imagenet=clip_imagenet)
    echo_skipped(report.skipped)
    print_rows(
        [row.as_dict() for row in report.rows],
        ["model", "shape_bias", "shape_match_rate", "texture_match_rate", "n_used", "n_dropped_same", "decisions"],
        as_json,
    )
