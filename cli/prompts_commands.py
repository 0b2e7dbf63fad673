"""prompts list | add | ablate | select."""

from __future__ import annotations

import click

from embedstore.evaluate.prompts import add_templates, prompt_set_table, run_ablation, run_selection
from embedstore.sources.classes import read_list_file
from embedstore.store import Store
from embedstore_cli.options import (
    datasets_option,
    echo_skipped,
    json_option,
    models_option,
    print_json,
    print_table,
    store_option,
    user_errors,
)


@click.group("prompts")
def prompts_group() -> None:
    """Prompt sets and prompt experiments (text encoders only; images come from the cache)."""


@prompts_group.command("list")
@store_option
@click.option("--dataset", required=True, help="Dataset name as stored.")
@json_option
@user_errors
def list_command(store_path, dataset, as_json) -> None:
    """The prompt sets of a dataset and their templates."""
    table = prompt_set_table(Store.open(store_path), dataset)
    if as_json:
        print_json(table)
        return
    for name, templates in table.items():
        click.echo(f"{name} ({len(templates)} templates)")
        for template in templates:
            click.echo(f"  {template}")


@prompts_group.command("add")
@store_option
@click.option("--dataset", required=True, help="Dataset whose templates grow.")
@click.option("--name", required=True, help="Name of the prompt set to define (replaced if it exists).")
@click.option("--template", "templates", multiple=True, help="A template with {c} (repeatable).")
@click.option("--file", "template_file", type=click.Path(dir_okay=False, exists=True), help="One template per line.")
@click.option("--model", "models", multiple=True, help="CLIP models to encode for [every CLIP model with text_emb].")
@click.option("--device", default="cpu", show_default=True, help="Where the text towers run (cpu, cuda, cuda:N).")
@click.option(
    "--batch-size", type=click.IntRange(min=1), default=256, show_default=True, help="Prompts encoded per batch."
)
@user_errors
def add_command(store_path, dataset, name, templates, template_file, models, device, batch_size) -> None:
    """Define a prompt set; templates new to the dataset are encoded with each model's text tower only."""
    texts = list(templates) + (read_list_file(template_file, "templates") if template_file else [])
    if not texts:
        raise click.UsageError("give templates with --template or --file")
    added = add_templates(Store.open(store_path, readonly=False), dataset, name, texts, models=models or None,
                          device=device, batch_size=batch_size, log=lambda m: click.echo(m, err=True))  # fmt: skip
    echo_skipped(added.skipped)
    _say_replaced(name, added.replaced, len(added.indices))
    click.echo(f"prompt set {name!r} of {dataset}: {len(added.indices)} templates, {len(added.new_templates)} new, "
               f"encoded for {len(added.encoded_for)} model(s)")  # fmt: skip


@prompts_group.command("ablate")
@store_option
@models_option
@datasets_option
@json_option
@user_errors
def ablate_command(store_path, models, datasets, as_json) -> None:
    """Accuracy of each template alone and of each prompt set's ensemble."""
    skipped: dict[str, str] = {}
    rows = run_ablation(Store.open(store_path, readonly=False), models, datasets, skipped)
    echo_skipped(skipped)
    if as_json:
        print_json([r.__dict__ for r in rows])
        return
    for row in rows:
        click.echo(f"\n{row.model} on {row.dataset}")
        print_table(["set", "acc1", "acc5", "mean_per_class_recall"],
                    [[n, m["acc1"], m["acc5"], m["mean_per_class_recall"]] for n, m in row.per_set.items()])  # fmt: skip
        ranked = sorted(row.per_template, key=lambda t: -t[2])
        print_table(["#", "template", "acc1"], [[i, t, a] for i, t, a in ranked])


@prompts_group.command("select")
@store_option
@click.option("--model", required=True, help="CLIP model id (or a glob matching one).")
@click.option("--dataset", required=True, help="Dataset with classes and labels.")
@click.option(
    "--split",
    "fraction",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=0.5,
    show_default=True,
    help="Fraction of rows used for selecting.",
)
@click.option("--seed", default=0, show_default=True, help="Seed of the row split.")
@click.option("--max-templates", type=int, default=None, help="Stop after this many templates.")
@click.option("--save-as", default=None, help="Store the prefix with the best selection acc1 as this prompt set.")
@json_option
@user_errors
def select_command(store_path, model, dataset, fraction, seed, max_templates, save_as, as_json) -> None:
    """Greedy forward selection of templates on one split, reported on the other (OpenAI's procedure)."""
    row = run_selection(Store.open(store_path, readonly=False), model, dataset, fraction=fraction, seed=seed,
                        max_templates=max_templates, save_as=save_as)  # fmt: skip
    if save_as:
        _say_replaced(save_as, row.replaced, row.best_prefix)
    if as_json:
        print_json(row.__dict__)
        return
    print_table(["step", "template", "select acc1", "report acc1"],
                [[k + 1, t, a, b] for k, (t, a, b) in enumerate(zip(row.templates, row.select_acc, row.report_acc))])  # fmt: skip
    if save_as:
        click.echo(f"saved the best prefix (the first {row.best_prefix} templates: best select acc1) as prompt set "
                   f"{save_as!r}")  # fmt: skip


def _say_replaced(name: str, replaced: int | None, templates: int) -> None:
    """One line when a prompt set that existed was redefined: for ``default`` every later evaluation changes."""
    if replaced is None:
        return
    line = f"replaced prompt set {name!r} ({replaced} -> {templates} templates)"
    if name == "default":
        line += "; evaluations without --prompts now use it"
    click.echo(line, err=True)
