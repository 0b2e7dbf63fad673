"""The ``embedstore`` command. Each subcommand lives in a small module, registered here by name and
imported only when it runs (``cli/lazy.py``)."""

from __future__ import annotations

import click

import embedstore
from embedstore_cli.lazy import LazyGroup

COMMANDS = {
    "init": ("embedstore_cli.store_commands:init_command", "Create an empty store."),
    "ls": ("embedstore_cli.store_commands:ls_command", "List models, datasets and arrays with rows done and status."),
    "sql": ("embedstore_cli.store_commands:sql_command", "Run a read-only SQL query on the catalog."),
    "rm": ("embedstore_cli.store_commands:rm_command", "Delete arrays so they can be extracted again."),
    "gc": ("embedstore_cli.store_commands:gc_command", "Remove leftovers no catalog row points to."),
    "verify": ("embedstore_cli.store_commands:verify_command", "Check that every array reads back as written."),
    "export": ("embedstore_cli.exchange_commands:export_command", "Write one array to .npy, .h5 or Parquet."),
    "import": ("embedstore_cli.exchange_commands:import_command", "Import an embeddings matrix as a new array."),
    "merge": ("embedstore_cli.merge_command:merge_command", "Copy another store's complete arrays into this one."),
    "extract": ("embedstore_cli.extract_command:extract_command", "Run encoders once over datasets into the store."),
    "eval": ("embedstore_cli.eval_commands:eval_group", "Analyses from the cache; results go to the catalog."),
    "prompts": ("embedstore_cli.prompts_commands:prompts_group", "Prompt sets and prompt experiments."),
    "neighbors": ("embedstore_cli.neighbors_command:neighbors_command", "Nearest images to an image or a text."),
    "index": ("embedstore_cli.index_commands:index_group", "Build and list nearest-neighbour indexes."),
    "report": ("embedstore_cli.report_commands:report_command", "Write the static HTML report."),
    "plot": ("embedstore_cli.report_commands:plot_command", "Write one figure from the results."),
    "demo": ("embedstore_cli.demo_command:demo_command", "The whole product on the built-in shapes world."),
}


@click.group(
    cls=LazyGroup,
    lazy_commands=COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(embedstore.__version__, prog_name="embedstore")
def cli() -> None:
    """embedstore: run each encoder once per dataset, then answer every robustness analysis from
    the cache (zero-shot, calibration, OOD, retrieval, effective robustness, ...)."""


def main() -> None:
    cli(prog_name="embedstore")


if __name__ == "__main__":
    main()
