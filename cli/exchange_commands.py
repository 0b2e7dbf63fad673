"""export and import of arrays (.npy, .h5, Parquet)."""

from __future__ import annotations

import click

from embedstore.store import Store
from embedstore.store.exchange import EXPORT_FORMATS, export_array, import_array
from embedstore_cli.options import store_option, user_errors


def _array_options(func):
    func = click.option(
        "--array",
        "name",
        required=True,
        help="Array name: image_emb, logits, caption_emb, ... (export also text_emb; prompts add makes it).",
    )(func)
    func = click.option(
        "--model", required=True, help="Model id as stored (export: or a glob matching one model, e.g. 'openclip:*')."
    )(func)
    func = click.option("--dataset", required=True, help="Dataset name as stored.")(func)
    return func


@click.command("export")
@store_option
@_array_options
@click.option(
    "--output", "-o", required=True, type=click.Path(dir_okay=False), help="File to write (.npy, .h5, .parquet)."
)
@click.option("--format", "fmt", type=click.Choice(EXPORT_FORMATS), default=None, help="Overrides the extension.")
@user_errors
def export_command(store_path: str, dataset: str, model: str, name: str, output: str, fmt: str | None) -> None:
    """Write one array to .npy, .h5 (with sample keys) or Parquet (row, key, values)."""
    path, shape, model = export_array(Store.open(store_path), dataset, model, name, output, fmt)
    click.echo(f"wrote {dataset}/{model}/{name} {list(shape)} to {path}")


@click.command("import")
@store_option
@_array_options
@click.argument("file", type=click.Path(dir_okay=False))
@click.option(
    "--keys",
    "keys_file",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="Text file with one sample key per row of FILE (needed for .npy).",
)
@click.option("--h5-dataset", default="data", show_default=True, help="Dataset inside an .h5 file.")
@user_errors
def import_command(
    store_path: str, dataset: str, model: str, name: str, file: str, keys_file: str | None, h5_dataset: str
) -> None:
    """Import an embeddings matrix as a new array; rows are placed by sample key. A dataset not in the
    store is registered with the file's keys as its samples."""
    store = Store.open(store_path, readonly=False)
    new_dataset = not store.query("SELECT name FROM datasets WHERE name = ?", [dataset])
    shape = import_array(store, dataset, model, name, file, keys_file=keys_file, h5_dataset=h5_dataset)
    click.echo(f"imported {file} as {dataset}/{model}/{name} {list(shape)}")
    if new_dataset:
        click.echo(f"registered new dataset {dataset} ({shape[0]} samples, keyed as in {file}): a dataset the store "
                   "already has keeps its name, so check the spelling if you meant one")  # fmt: skip
