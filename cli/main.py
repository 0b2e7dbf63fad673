"""The ``embedstore`` command. Each subcommand lives in a small module and is registered here."""

from __future__ import annotations

import click

import embedstore
from embedstore_cli.eval_commands import eval_group, register_eval_commands
from embedstore_cli.exchange_commands import export_command, import_command
from embedstore_cli.extract_command import extract_command
from embedstore_cli.prompts_commands import prompts_group
from embedstore_cli.report_commands import plot_command, report_command
from embedstore_cli.store_commands import init_command, ls_command, rm_command, sql_command


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(embedstore.__version__, prog_name="embedstore")
def cli() -> None:
    """embedstore: run each encoder once per dataset, then answer every robustness analysis from
    the cache (zero-shot, calibration, OOD, retrieval, effective robustness, ...)."""


COMMANDS = [
    init_command, ls_command, sql_command, rm_command, export_command, import_command, extract_command, prompts_group,
    report_command, plot_command,
]  # fmt: skip
for command in COMMANDS:
    cli.add_command(command)
register_eval_commands()
cli.add_command(eval_group)


def main() -> None:
    cli(prog_name="embedstore")


if __name__ == "__main__":
    main()
