"""eval zeroshot: accuracy under any prompt set, from cached embeddings."""

from __future__ import annotations

import click

from embedstore.evaluate.zeroshot import run_zeroshot
from embedstore.store import Store
from embedstore_cli.options import (
    datasets_option,
    echo_skipped,
    json_option,
    models_option,
    print_rows,
    store_option,
    user_errors,
)


@click.command("zeroshot")
@store_option
@models_option
@datasets_option
@click.option("--prompts", "prompt_set", default=None, help="Prompt set of each dataset (CLIP models) [default].")
@click.option("--templates", default=None, help="Comma-separated template indices instead of a prompt set, e.g. 0,3,7.")
@click.option("--per-class", is_flag=True, help="Also store each class's accuracy (acc1@class:<j>).")
@json_option
@user_errors
def zeroshot_command(store_path, models, datasets, prompt_set, templates, per_class, as_json) -> None:
    """Zero-shot top-1/top-5 accuracy and mean per-class recall (CLIP_benchmark's metrics); classifiers
    are scored on their head logits. No encoder is loaded."""
    indices = None
    if templates is not None:
        if prompt_set is not None:
            raise click.UsageError("give --prompts or --templates, not both")
        try:
            indices = [int(t) for t in templates.split(",") if t.strip()]
        except ValueError:
            raise click.BadParameter(
                f"{templates!r} is not a comma-separated list of integers", param_hint="--templates"
            ) from None
        if not indices:
            raise click.BadParameter("names no template index", param_hint="--templates")
    skipped: dict[str, str] = {}
    rows = run_zeroshot(Store.open(store_path, readonly=False), models, datasets, prompt_set=prompt_set,
                        templates=indices, per_class=per_class, skipped=skipped)  # fmt: skip
    echo_skipped(skipped)
    print_rows(
        [r.as_dict() for r in rows],
        ["model", "dataset", "prompts", "acc1", "acc5", "mean_per_class_recall", "n"],
        as_json,
    )
