"""index build | list: FAISS indexes of store arrays, saved under STORE/indexes, reused by
`neighbors` and `eval retrieval --index`."""

from __future__ import annotations

from collections.abc import Callable

import click

from embedstore.evaluate.indexes import (
    IMAGE_ARRAY,
    IndexRequest,
    build_saved_index,
    index_kind_of,
    list_saved_indexes,
)
from embedstore.index import DEVICES, INDEX_KINDS
from embedstore.store import Store
from embedstore_cli.options import json_option, print_json, print_table, store_option, user_errors


def index_parameter_options(func: Callable) -> Callable:
    """--nlist, --nprobe (ivf), --hnsw-m, --ef-search, --ef-construction (hnsw), --seed, --device."""
    options = [
        click.option("--nlist", type=click.IntRange(min=1), default=None, help="ivf: k-means cells [round(4*sqrt(n)), <= n/39]."),
        click.option("--nprobe", type=click.IntRange(min=1), default=None, help="ivf: cells scanned per query [min(32, nlist)]."),
        click.option("--hnsw-m", type=click.IntRange(min=1), default=None, help="hnsw: links per node [32]."),
        click.option("--ef-search", type=click.IntRange(min=1), default=None, help="hnsw: search beam width [128]."),
        click.option("--ef-construction", type=click.IntRange(min=1), default=None, help="hnsw: build beam width [100]."),
        click.option("--seed", type=int, default=0, show_default=True, help="ivf: seed of k-means training."),
        click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True,
                     help="Where to build and search (auto: FAISS GPU, torch CUDA, FAISS CPU, numpy)."),
    ]  # fmt: skip
    for option in reversed(options):
        func = option(func)
    return func


def refuse_misplaced_tuning(tuning: dict[str, int | None], kind: str | None, kind_flag: str) -> None:
    """A tuning flag given for another index kind (``--nprobe`` with hnsw) is a usage error naming
    both flags, e.g. ``--nprobe needs --kind ivf, not --kind hnsw``."""
    misplaced = [name for name, value in tuning.items() if value is not None and index_kind_of(name) != kind]
    if misplaced:
        flag, needed = f"--{misplaced[0].replace('_', '-')}", index_kind_of(misplaced[0])
        other = "" if kind is None else f", not {kind_flag} {kind}"
        raise click.UsageError(f"{flag} needs {kind_flag} {needed}{other}")


@click.group("index")
def index_group() -> None:
    """Nearest-neighbour indexes of cached embeddings (cosine), saved beside the store."""


@index_group.command("build")
@store_option
@click.option("--model", required=True, help="Model id (or a glob matching one model holding the array).")
@click.option("--dataset", required=True, help="Dataset name.")
@click.option("--array", default=IMAGE_ARRAY, show_default=True, help="Array to index (image_emb, caption_emb).")
@click.option("--kind", type=click.Choice(INDEX_KINDS), default="ivf", show_default=True)
@index_parameter_options
@json_option
@user_errors
def build_command(store_path, model, dataset, array, kind, nlist, nprobe, hnsw_m, ef_search, ef_construction,
                  seed, device, as_json) -> None:  # fmt: skip
    """Build an index of an array's decodable rows and save it as
    STORE/indexes/<dataset>/<model>/<array>.<kind>.faiss (+ .json sidecar), replacing one of that kind."""
    tuning = {"nlist": nlist, "nprobe": nprobe, "hnsw_m": hnsw_m, "ef_search": ef_search,
              "ef_construction": ef_construction}  # fmt: skip
    refuse_misplaced_tuning(tuning, kind, "--kind")
    spec = IndexRequest(kind, **tuning).spec()
    saved = build_saved_index(Store.open(store_path), dataset, model, array, spec, device=device, seed=seed)
    if as_json:
        print_json(saved.as_dict())
        return
    params = ", ".join(f"{k}={v}" for k, v in saved.params.items()) or "exact"
    click.echo(f"{saved.kind} index of {saved.array} ({saved.n} x {saved.dim}; {params}) built with {saved.built_with} "
               f"in {saved.seconds:.1f} s: {saved.path}")  # fmt: skip


@index_group.command("list")
@store_option
@click.option("--verify", is_flag=True, help="Check each index against its array's current rows (reads them).")
@json_option
@user_errors
def list_command(store_path, verify, as_json) -> None:
    """Saved indexes: what they index, their parameters and status (current, stale, unreadable, no array; unchecked without --verify)."""
    saved = list_saved_indexes(Store.open(store_path), verify=verify)
    if as_json:
        print_json([s.as_dict() for s in saved])
        return
    print_table(
        ["dataset", "model", "array", "kind", "n", "dim", "params", "built with", "MiB", "status"],
        [[s.dataset, s.model, s.array, s.kind, s.n, s.dim, ", ".join(f"{k}={v}" for k, v in s.params.items()),
          s.built_with, s.file_bytes / 2**20, s.status] for s in saved],
    )  # fmt: skip
