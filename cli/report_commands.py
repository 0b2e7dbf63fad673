"""report, plot: the study's figures and a static HTML report from the catalog's results."""

from __future__ import annotations

from collections.abc import Callable

import click

from embedstore.report.data import ReportData, ReportSelection
from embedstore.report.html import write_report
from embedstore.report.kinds import FIGURE_KINDS, figure_format, render, save_figure
from embedstore.store import Store
from embedstore_cli.options import store_option, user_errors


def selection_options(func: Callable) -> Callable:
    """The options that choose what a report or plot covers (see `ReportSelection`)."""
    options = [
        click.option("--model", "models", multiple=True, help="Model id or glob (repeatable) [all models]."),
        click.option("--dataset", "datasets", multiple=True,
                     help="Dataset name or glob (repeatable) [all]; the ID dataset is always kept."),
        click.option("--id-dataset", default=None,
                     help="Reference (in-distribution) dataset [inferred from robustness/ood/calibration results]."),
        click.option("--prompt-set", default="default", show_default=True,
                     help="Prompt set of the CLIP zero-shot rows to read."),
        click.option("--ood-score", default=None, help="OOD score to plot [the one evaluated for the most models]."),
        click.option("--ood-positive", type=click.Choice(["id", "ood"]), default="id", show_default=True,
                     help="FPR@95 convention: ID positive (MCM) or OOD positive (OpenOOD)."),
        click.option("--recall-k", type=click.IntRange(min=1), default=5, show_default=True,
                     help="K of retrieval recall@K."),
    ]  # fmt: skip
    for option in reversed(options):
        func = option(func)
    return func


def _selection(models, datasets, id_dataset, prompt_set, ood_score, ood_positive, recall_k) -> ReportSelection:
    return ReportSelection(tuple(models), tuple(datasets), id_dataset, prompt_set, ood_score, ood_positive, recall_k)


@click.command("report")
@store_option
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder for index.html, figures/, results.csv and params.json (created).")  # fmt: skip
@selection_options
@user_errors
def report_command(store_path: str, out_dir: str, **selection) -> None:
    """Write a static HTML report (no server, no network): the study's figures, every result table,
    and the provenance of each number. Figures whose results are missing are listed with the reason."""
    summary = write_report(Store.open(store_path), out_dir, _selection(**selection))
    for kind, reason in summary.skipped.items():
        click.echo(f"skipped {kind}: {reason}", err=True)
    click.echo(f"wrote {summary.index}: {len(summary.figures)} figure(s), {len(summary.skipped)} skipped, "
               f"{summary.n_results} result rows")  # fmt: skip


@click.command("plot")
@click.argument("kind", type=click.Choice(list(FIGURE_KINDS)))
@store_option
@click.option("--out", "out_file", required=True, type=click.Path(dir_okay=False),
              help="Figure file; its suffix picks the format: .png, .svg or .pdf.")  # fmt: skip
@selection_options
@user_errors
def plot_command(kind: str, store_path: str, out_file: str, **selection) -> None:
    """Write one figure KIND from the catalog's results (an error names what is missing)."""
    figure_format(out_file)
    rendered = render(kind, ReportData.load(Store.open(store_path), _selection(**selection)))
    path = save_figure(rendered.figure, out_file)
    for note in rendered.notes:
        click.echo(note, err=True)
    click.echo(f"wrote {path}: {rendered.kind.title}")
