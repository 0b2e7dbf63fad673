"""init, ls, sql, rm, gc: what is in a store."""

from __future__ import annotations

import csv
import json
import sys

import click

from embedstore.store import Store, stored_model_id
from embedstore_cli.options import json_option, print_json, print_table, store_option, user_errors


@click.command("init")
@store_option
@click.option(
    "--arrays-url",
    default=None,
    help="Keep arrays at this empty folder (a relative one is taken from the current directory) or fsspec URL "
    "instead of STORE/arrays.zarr.",
)
@user_errors
def init_command(store_path: str, arrays_url: str | None) -> None:
    """Create an empty store."""
    store = Store.create(store_path, arrays_url=arrays_url)
    click.echo(f"created store {store.path} (arrays in {store.meta()['arrays']})")


@click.command("ls")
@store_option
@json_option
@user_errors
def ls_command(store_path: str, as_json: bool) -> None:
    """List the models, datasets and arrays of a store, with rows done / total and status, and the
    stored results per analysis."""
    store = Store.open(store_path)
    models = store.query("SELECT model_id, kind, group_label, train_data, embed_dim FROM models ORDER BY model_id")
    datasets = store.query(
        "SELECT name, kind, task, n_samples, n_captions, json_array_length(classnames) AS n_classes FROM datasets ORDER BY name"
    )
    arrays = []
    for info in store.list_arrays():
        done, status = store.array_progress(info)
        arrays.append({"dataset": info.dataset, "model": info.model, "name": info.name, "shape": list(info.shape),
                       "dtype": info.dtype, "rows_done": done, "rows_total": info.rows_total, "status": status})  # fmt: skip
    bad = store.query("SELECT dataset, count(*) AS n FROM bad_samples GROUP BY dataset ORDER BY dataset")
    results = store.query(
        "SELECT analysis, count(*) AS n_rows, count(DISTINCT model) AS n_models, count(DISTINCT dataset) AS n_datasets, "
        "count(DISTINCT params_hash) AS n_param_sets, CAST(max(created) AS VARCHAR) AS latest "
        "FROM results GROUP BY analysis ORDER BY analysis"
    )
    if as_json:
        print_json({"store": str(store.path), "models": models, "datasets": datasets, "arrays": arrays,
                    "bad_samples": bad, "results": results})  # fmt: skip
        return
    click.echo(f"store {store.path}")
    click.echo(f"\nmodels ({len(models)})")
    print_table(["model", "kind", "group", "train data", "dim"],
                [[m["model_id"], m["kind"], m["group_label"], m["train_data"], m["embed_dim"]] for m in models])  # fmt: skip
    click.echo(f"\ndatasets ({len(datasets)})")
    print_table(["dataset", "kind", "task", "samples", "captions", "classes"],
                [[d["name"], d["kind"], d["task"], d["n_samples"], d["n_captions"], d["n_classes"]] for d in datasets])  # fmt: skip
    click.echo(f"\narrays ({len(arrays)})")
    print_table(["dataset", "model", "array", "shape", "dtype", "rows", "status"],
                [[a["dataset"], a["model"], a["name"], "x".join(map(str, a["shape"])), a["dtype"],
                  f"{a['rows_done']}/{a['rows_total']}", a["status"]] for a in arrays])  # fmt: skip
    if bad:
        click.echo("\nbad samples: " + ", ".join(f"{b['dataset']} {b['n']}" for b in bad))
    if results:
        click.echo(f"\nresults ({sum(r['n_rows'] for r in results)} rows; `embedstore sql` queries them)")
        print_table(["analysis", "rows", "models", "datasets", "parameter sets", "latest"],
                    [[r["analysis"], r["n_rows"], r["n_models"], r["n_datasets"], r["n_param_sets"],
                      r["latest"][:19]] for r in results])  # fmt: skip


@click.command("sql")
@store_option
@click.argument("statement")
@click.option(
    "--format", "fmt", type=click.Choice(["table", "csv", "json", "parquet"]), default="table", show_default=True
)
@click.option(
    "--output",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write to this file instead of stdout (required for parquet).",
)
@user_errors
def sql_command(store_path: str, statement: str, fmt: str, output: str | None) -> None:
    """Run a read-only SQL query on the catalog (tables: models, datasets, samples, captions,
    annotations, templates, prompt_sets, arrays, bad_samples, results)."""
    store = Store.open(store_path)
    if fmt == "parquet" and output is None:
        raise click.UsageError("--format parquet needs --output FILE")
    if output:
        store.output_path(output)
    table = store.sql(statement)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            pq.write_table(table, output)
        except OSError as exc:  # pyarrow's errors do not name the file
            raise click.ClickException(f"cannot write {output}: {exc}") from None
        click.echo(f"wrote {table.num_rows} rows to {output}", err=True)
        return
    rows = [list(r.values()) for r in table.to_pylist()]
    stream = open(output, "w", newline="") if output else sys.stdout
    try:
        if fmt == "csv":
            writer = csv.writer(stream, lineterminator="\n")
            writer.writerow(table.column_names)
            writer.writerows(rows)
        elif fmt == "json":
            stream.write(json.dumps(table.to_pylist(), default=str, indent=2) + "\n")
        elif output:
            stream.write("\t".join(table.column_names) + "\n")
            stream.writelines("\t".join("" if v is None else str(v) for v in r) + "\n" for r in rows)
        else:
            print_table(table.column_names, rows)
    finally:
        if output:
            stream.close()


@click.command("rm")
@store_option
@click.option("--dataset", default=None, help="Only arrays of this dataset.")
@click.option("--model", default=None, help="Only arrays of this model.")
@click.option("--array", "name", default=None, help="Only arrays with this name (image_emb, text_emb, ...).")
@click.option(
    "--results",
    "with_results",
    is_flag=True,
    help="Also delete the result rows stored for the removed arrays' (model, dataset) pairs.",
)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@user_errors
def rm_command(
    store_path: str, dataset: str | None, model: str | None, name: str | None, with_results: bool, yes: bool
) -> None:
    """Delete arrays (their catalog rows, chunks and saved indexes) so they can be extracted again;
    refused while an extraction of their dataset runs. Results are kept unless --results."""
    if not (dataset or model or name):
        raise click.UsageError("name at least one of --dataset, --model, --array")
    store = Store.open(store_path, readonly=False)
    from embedstore.remove import no_arrays_match, remove_arrays, remove_pair_results

    model = stored_model_id(model) if model is not None else None
    infos = store.list_arrays(dataset, model, name)
    pair_only = not infos and with_results and dataset and model and name is None
    n = store.count_results([(model, dataset)]) if pair_only else 0  # arrays gone already: results can still go
    if n:
        if not yes:
            click.confirm(f"no array of {model} on {dataset} is left; delete its {n} result row(s)?", abort=True)
        click.echo(f"deleted {remove_pair_results(store, dataset, model)} result row(s) of {model} on {dataset}")
        return
    if not infos:
        raise click.ClickException(no_arrays_match(store, dataset=dataset, model=model, name=name))
    if not yes:
        click.confirm(f"delete {len(infos)} array(s)?", abort=True)

    removed = remove_arrays(store, dataset, model, name, results=with_results)
    counts = [f"{removed.arrays} array(s)"]
    counts += [f"{removed.saved_indexes} saved index(es)"] if removed.saved_indexes else []
    counts += [f"{removed.results_deleted} result row(s)"] if removed.results_deleted else []
    click.echo("deleted " + (", ".join(counts[:-1]) + " and " if len(counts) > 1 else "") + counts[-1])
    if removed.results_kept:
        click.echo(f"kept {removed.results_kept} result row(s) of the same (model, dataset) pairs, computed from "
                   "the deleted arrays or beside them: --results deletes them too")  # fmt: skip


@click.command("gc")
@store_option
@click.option("--dry-run", is_flag=True, help="List what would be removed; remove nothing.")
@json_option
@user_errors
def gc_command(store_path: str, dry_run: bool, as_json: bool) -> None:
    """Remove what no catalog row points to: array folders left by killed merges, extractions or
    prompt additions, empty dataset/model folders, saved indexes of removed arrays, stale lock files.
    Datasets another process is writing are skipped."""
    from embedstore.sweep import sweep_store

    sweep = sweep_store(Store.open(store_path, readonly=dry_run), dry_run=dry_run)
    if as_json:
        print_json({"dry_run": sweep.dry_run, "bytes": sweep.bytes, "skipped": sweep.skipped,
                    "leftovers": [vars(leftover) for leftover in sweep.leftovers]})  # fmt: skip
        return
    if sweep.leftovers:
        print_table(["kind", "path", "bytes"], [[x.kind, x.path, x.bytes] for x in sweep.leftovers])
    for folder, why in sweep.skipped.items():
        click.echo(f"skipped dataset folder {folder}: {why}")
    verb = "would remove" if dry_run else "removed"
    click.echo(f"{verb} {len(sweep.leftovers)} leftover(s), {sweep.bytes / 2**20:.1f} MiB")


@click.command("verify")
@store_option
@click.option("--dataset", default=None, help="Only arrays of datasets matching this glob.")
@click.option("--model", default=None, help="Only arrays of models matching this glob.")
@json_option
@user_errors
def verify_command(store_path: str, dataset: str | None, model: str | None, as_json: bool) -> None:
    """Read every done chunk of every array and check it against the CRC-32 its marker recorded, and
    the catalog's progress against the markers. Exits with status 1 when an array is damaged."""
    from embedstore.verify import OK, verify_arrays

    store = Store.open(store_path)
    checks = verify_arrays(store, dataset, model)
    if not checks:
        raise click.ClickException(f"no array of store {store.path} matches --dataset {dataset or '*'} "
                                   f"--model {model or '*'}")  # fmt: skip
    bad = [c for c in checks if c.status != OK]
    if as_json:
        print_json([vars(c) for c in checks])
    else:
        print_table(["dataset", "model", "array", "chunks", "status", "detail"],
                    [[c.dataset, c.model, c.name, c.chunks_checked, c.status, c.detail] for c in checks])  # fmt: skip
    if bad:
        click.echo(f"Error: {len(bad)} of {len(checks)} array(s) damaged: remove each with `embedstore rm --store "
                   f"{store.path} --dataset D --model M --array A --yes` and extract it again", err=True)  # fmt: skip
        sys.exit(1)
    if not as_json:
        click.echo(f"{len(checks)} array(s) read back as written")
