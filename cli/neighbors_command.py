"""neighbors: the nearest images of a dataset to one of its images or to a text."""

from __future__ import annotations

import click

from embedstore.evaluate.neighbors import DEFAULT_K, SEARCHES, NeighborQuery, find_neighbors
from embedstore.store import Store
from embedstore_cli.options import json_option, print_json, print_table, store_option, user_errors


@click.command("neighbors")
@store_option
@click.option("--model", required=True, help="Model id (or a glob matching one model, e.g. 'openclip:*').")
@click.option("--dataset", required=True, help="Dataset name.")
@click.option("--row", type=int, default=None, help="Query: this row of the dataset.")
@click.option("--key", default=None, help="Query: the sample with this key.")
@click.option("--text", default=None, help="Query: this text, encoded with the model's text tower.")
@click.option("--k", type=click.IntRange(min=1), default=DEFAULT_K, show_default=True, help="Number of neighbours.")
@click.option("--index", type=click.Choice(SEARCHES), default="auto", show_default=True,
              help="auto: the saved index of image_emb if any, else exact search.")  # fmt: skip
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@json_option
@user_errors
def neighbors_command(store_path, model, dataset, row, key, text, k, index, device, as_json) -> None:
    """Nearest images (cosine of image_emb) to an image of the dataset (--row or --key; never itself) or to
    a free text (--text)."""
    result = find_neighbors(Store.open(store_path), model, dataset, NeighborQuery(row=row, key=key, text=text),
                            k=k, index=index, device=device)  # fmt: skip
    if as_json:
        print_json(result.as_dict())
        return
    searched = result.search if result.index_file is None else f"saved {result.search} index {result.index_file}"
    click.echo(f"{result.model} on {result.dataset}, query {result.query}: {searched} ({result.backend})")
    print_table(["rank", "row", "key", "label", "score"],
                [[n.rank, n.row, n.key, n.label, n.score] for n in result.neighbors])  # fmt: skip
