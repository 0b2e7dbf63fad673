"""demo: the whole product on the built-in shapes world."""

from __future__ import annotations

import click

from embedstore.demo.run import SIZES, run_demo
from embedstore_cli.options import user_errors


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


@click.command("demo")
@click.option("--out", default="embedstore-demo", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the demo store and report.")  # fmt: skip
@click.option("--retrain", is_flag=True, help="Train the toy models again instead of reusing the cached ones.")
@click.option("--size", type=click.Choice(sorted(SIZES)), default="full", show_default=True,
              help="Dataset sizes: full, or small for a quick check.")  # fmt: skip
@click.option("--no-report", is_flag=True, help="Skip the HTML report.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@user_errors
def demo_command(out: str, retrain: bool, size: str, no_report: bool, no_progress: bool) -> None:
    """Train three toy models (zero-shot CLIP, classifier, fine-tuned CLIP) on the synthetic shapes
    world, extract them on seven datasets, run every analysis from the cache and write the report.
    No GPU, no download; a second run reuses everything and takes seconds."""
    summary = run_demo(out, size=size, retrain=retrain, report=not no_report,
                       log=lambda m: click.echo(m, err=True), progress=not no_progress)  # fmt: skip
    n = summary.numbers
    clip = n["toy-clip"]
    click.echo("\nembedstore demo: done in " + f"{summary.seconds['total']:.0f} s "
               + "(" + ", ".join(f"{k} {v:.0f} s" for k, v in summary.seconds.items() if k != "total") + ")")  # fmt: skip
    click.echo(f"  toy CLIP zero-shot acc1: {_pct(clip['acc1_shapes'])} on shapes (chance 12.5%), "
               f"{_pct(clip['acc1_sketch'])} on shapes-sketch")  # fmt: skip
    for name in ("toy-classifier", "toy-finetuned-clip"):
        click.echo(
            f"  {name} acc1: {_pct(n[name]['acc1_shapes'])} on shapes, {_pct(n[name]['acc1_sketch'])} on shapes-sketch"
        )
    click.echo(
        f"  OOD (shapes vs shapes-ood), toy CLIP: MCM AUROC {_num(n['mcm_auroc'])}, MSP AUROC {_num(n['msp_auroc'])}"
    )
    click.echo(
        f"  calibration, toy CLIP on shapes: T = {_num(n['temperature'])}, NLL {_num(n['nll_before'])} -> {_num(n['nll_after'])}"
    )
    click.echo(f"  retrieval, toy CLIP: image_retrieval_recall@5 {_pct(n['recall@5'])}")
    click.echo(
        "  shape bias: "
        + ", ".join(f"{k} {_num(n[k]['shape_bias'])}" for k in ("toy-clip", "toy-classifier", "toy-finetuned-clip"))
    )
    click.echo(f"\nstore:  {summary.store}")
    if summary.report:
        click.echo(f"report: {summary.report / 'index.html'}")
    store = summary.store
    click.echo("\nnext, try:")
    click.echo(f"  embedstore ls --store {store}")
    click.echo(f"  embedstore sql --store {store} \"SELECT model, dataset, metric, value FROM results "
               "WHERE analysis = 'zeroshot' AND metric = 'acc1' ORDER BY value DESC\"")  # fmt: skip
    click.echo(f"  embedstore prompts ablate --store {store} --model '{summary.models['toy-clip']}' --dataset shapes")
    click.echo(f"  embedstore eval ood --store {store} --model '*' --id shapes --ood shapes-ood --score energy")
