"""merge: copy another store's complete arrays (and what they need) into this one."""

from __future__ import annotations

import click

from embedstore.store import Store
from embedstore_cli.options import print_table, store_option, user_errors


@click.command("merge")
@store_option
@click.argument("source", type=click.Path(file_okay=False, exists=True))
@click.option("--model", "models", multiple=True, help="Only these models (exact ids or globs; repeatable).")
@click.option("--dataset", "datasets", multiple=True, help="Only these datasets (names or globs; repeatable).")
@click.option(
    "--trust-rows",
    is_flag=True,
    help="Accept a dataset both stores hold whose fingerprints differ when its classes and rows (keys, labels, "
    "files, captions) agree: the same images copied without their modification times. You vouch for the bytes.",
)
@click.option("--dry-run", is_flag=True, help="Say what would be copied and skipped; write nothing.")
@user_errors
def merge_command(
    store_path: str, source: str, models: tuple[str, ...], datasets: tuple[str, ...], trust_rows: bool, dry_run: bool
) -> None:
    """Copy the complete arrays of the store SOURCE into --store, byte for byte, with the models,
    datasets, bad samples, prompt sets and results they need. Datasets and models both stores hold
    must be the same (fingerprints); arrays already present are skipped; partial ones stay behind."""
    from embedstore.merge import merge_stores, plan_merge

    destination = Store.open(store_path, readonly=dry_run)
    origin = Store.open(source)
    if dry_run:
        plan = plan_merge(destination, origin, models, datasets, trust_rows=trust_rows)
    else:
        report = merge_stores(destination, origin, models, datasets, trust_rows=trust_rows)
        plan = report.plan
    rows = [[i.dataset, i.model, i.name, "would copy" if dry_run else "copied"] for i in plan.arrays]
    rows += [[i.dataset, i.model, i.name, f"skipped: {why}"] for i, why in plan.skipped]
    if rows:
        print_table(["dataset", "model", "array", "action"], rows)
    done = "would copy" if dry_run else "copied"
    summary = (f"{done} {len(plan.arrays)} array(s), {plan.bytes / 2**20:.1f} MiB, {len(plan.indexes)} saved index(es); "
               f"new models: {len(plan.new_models)}, new datasets: {len(plan.new_datasets)}")  # fmt: skip
    if not dry_run:
        summary += f"; added {report.results} result row(s), {report.bad_samples} bad sample row(s), " \
                   f"{report.prompt_sets} prompt set(s)"  # fmt: skip
    click.echo(summary)
    for dataset in plan.relabelled:
        click.echo(f"{dataset}: fingerprints differ but classes and rows agree (--trust-rows): the copied arrays "
                   "take this store's dataset fingerprint")  # fmt: skip
    for dataset, templates in plan.adopted_templates.items():
        took = "would append" if dry_run else "appended"
        click.echo(f"{dataset}: this store held no text_emb of it and its templates begin {source}'s: {took} the "
                   f"rest, {len(templates)} in all")  # fmt: skip
