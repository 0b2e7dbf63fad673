"""extract: run encoders once over datasets into the store."""

from __future__ import annotations

import click

from embedstore.extract.plan import COMPRESSIONS, DECODES, DTYPES, PRECISIONS, load_plan, plan_from_args
from embedstore.extract.runner import run_extraction_at
from embedstore_cli.options import print_table, store_option, user_errors


class _Workers(click.ParamType):
    name = "N|auto"

    def convert(self, value, param, ctx):
        if isinstance(value, int) or value == "auto":
            return value
        try:
            return int(value)
        except ValueError:
            self.fail(f"{value!r} is neither a number nor auto", param, ctx)


WORKERS = _Workers()


@click.command("extract")
@store_option
@click.argument("plan_file", required=False, type=click.Path(dir_okay=False))
@click.option(
    "--model",
    "models",
    multiple=True,
    help="Model id, e.g. openclip:ViT-B-32.openai or timm:test_vit@random (repeatable).",
)
@click.option(
    "--dataset",
    "datasets",
    multiple=True,
    help="NAME=KIND:PATH, e.g. shapes=synthetic:shapes?n=2000&seed=0 (repeatable).",
)
@click.option("--batch-size", type=int, default=None, help="Images per encoder batch [256].")
@click.option("--device", default=None, help="auto | cpu | cuda | cuda:N [auto: the GPU when present].")
@click.option(
    "--precision", type=click.Choice(PRECISIONS), default=None, help="Weights dtype [auto: bf16 on GPU, fp32 on CPU]."
)
@click.option("--dtype", type=click.Choice(DTYPES), default=None, help="Stored embedding dtype [float16].")
@click.option("--decode", type=click.Choice(DECODES), default=None, help="Decode path [auto: gpu on a GPU, else cpu].")
@click.option(
    "--workers",
    type=WORKERS,
    default=None,
    help="Reader/decoder processes, or auto [auto: 4; with GPU decode half the cores, 2-8].",
)
@click.option(
    "--cpu-decode-share",
    type=float,
    default=None,
    help="With --decode gpu, the share of rows the workers PIL-decode beside the GPU decoder [0].",
)
@click.option("--chunk-rows", type=int, default=None, help="Rows per chunk, the unit of writing and resume [4096].")
@click.option("--pixel-limit", type=int, default=None, help="Images with more pixels are recorded as bad [89478485].")
@click.option("--compression", type=click.Choice(COMPRESSIONS), default=None, help="Array compression [none].")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@user_errors
def extract_command(store_path: str, plan_file: str | None, models: tuple[str, ...], datasets: tuple[str, ...],
                    no_progress: bool, **settings) -> None:  # fmt: skip
    """Run every model of a plan once over every dataset of it (one pass per dataset; resumable).

    Give models and datasets as options, or a TOML PLAN_FILE (options add to it and override its
    settings). The store is created when it does not exist yet (and removed again when the run is
    refused before writing anything). Under torchrun each rank takes its own
    chunks of every pass."""
    if plan_file:
        plan = load_plan(plan_file, models, datasets).with_settings(**settings)
    else:
        plan = plan_from_args(models, datasets, **settings)
    report = run_extraction_at(store_path, plan, log=lambda msg: click.echo(msg, err=True), progress=not no_progress)
    if report.rank != 0:
        return  # rank 0 reports for all ranks
    if report.arrays:
        print_table(["dataset", "model", "array", "rows", "status"],
                    [[a.dataset, a.model, a.name, f"{a.rows_written}/{a.rows_total}", a.status] for a in report.arrays])  # fmt: skip
    click.echo(
        f"{report.images} images{f' over {report.world} ranks' if report.world > 1 else ''} in {report.seconds:.1f} s ({report.images_per_s:.0f} img/s end to end) on "
        f"{report.device} ({report.precision}, {report.decode} decode, {report.workers} workers); bad samples: "
        + (", ".join(f"{k} {v}" for k, v in report.bad_samples.items()) or "none")
    )
    for model, per_s in report.model_images_per_s.items():
        click.echo(f"  {model}: {per_s:.0f} img/s model-only")
