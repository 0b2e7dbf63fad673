"""eval retrieval: image-text recall@K both ways from cached embeddings, exact or through an index."""

from __future__ import annotations

import click
from click.core import ParameterSource

from embedstore.analysis.retrieval import DEFAULT_KS
from embedstore.evaluate.indexes import IndexRequest
from embedstore.evaluate.retrieval import run_retrieval
from embedstore.index import INDEX_KINDS
from embedstore.store import Store
from embedstore_cli.index_commands import index_parameter_options, refuse_misplaced_tuning
from embedstore_cli.options import (
    datasets_option,
    echo_skipped,
    json_option,
    models_option,
    print_rows,
    store_option,
    user_errors,
)


@click.command("retrieval")
@store_option
@models_option
@datasets_option
@click.option("--k", "ks", type=click.IntRange(min=1), multiple=True, default=DEFAULT_KS, show_default=True,
              help="K of recall@K (repeatable).")  # fmt: skip
@click.option("--index", "kind", type=click.Choice(INDEX_KINDS), default=None,
              help="Search through an index of this kind (a saved one when it exists) instead of exactly.")  # fmt: skip
@click.option("--saved-index/--no-saved-index", "use_saved", default=True, show_default=True,
              help="Use the index saved by `embedstore index build` when there is one.")  # fmt: skip
@index_parameter_options
@json_option
@user_errors
def retrieval_command(store_path, models, datasets, ks, kind, use_saved, nlist, nprobe, hnsw_m, ef_search,
                      ef_construction, seed, device, as_json) -> None:  # fmt: skip
    """Text->image (image_retrieval_recall@K) and image->text (text_retrieval_recall@K) recall, CLIP_benchmark's
    metrics: a query is a hit when any of its positives is in its top K. No encoder is loaded."""
    tuning = {"nlist": nlist, "nprobe": nprobe, "hnsw_m": hnsw_m, "ef_search": ef_search,
              "ef_construction": ef_construction}  # fmt: skip
    if kind is None:  # exact search is a numpy product over the cached rows: nothing to seed or place
        context = click.get_current_context()
        given = [
            name for name in ("seed", "device") if context.get_parameter_source(name) == ParameterSource.COMMANDLINE
        ]
        if given:
            raise click.UsageError(f"--{given[0]} needs --index (exact search without an index uses neither)")
    refuse_misplaced_tuning(tuning, kind, "--index")
    request = None if kind is None else IndexRequest(kind, **tuning, use_saved=use_saved, device=device, seed=seed)
    skipped: dict[str, str] = {}
    rows = run_retrieval(Store.open(store_path, readonly=False), models, datasets, ks=ks, index=request,
                         skipped=skipped)  # fmt: skip
    echo_skipped(skipped)
    columns = ["model", "dataset", "search", *[f"{d}_recall@{k}" for d in ("image_retrieval", "text_retrieval")
                                              for k in sorted(set(ks))]]  # fmt: skip
    if kind in ("ivf", "hnsw"):
        columns += ["index_recall_vs_exact@image_retrieval", "index_recall_vs_exact@text_retrieval"]
    print_rows([r.as_dict() for r in rows], columns, as_json)
