"""The ``eval`` group: every analysis from cached arrays. Each analysis lives in its own
``cli/eval_<name>.py`` module; ``EVAL_COMMANDS`` lists them (explicitly: no registration by import)."""

from __future__ import annotations

import click

from embedstore_cli.eval_calibration import calibration_command
from embedstore_cli.eval_factors import factors_command
from embedstore_cli.eval_ood import ood_command
from embedstore_cli.eval_probe import probe_command
from embedstore_cli.eval_retrieval import retrieval_command
from embedstore_cli.eval_robustness import robustness_command
from embedstore_cli.eval_shape_bias import shape_bias_command
from embedstore_cli.eval_zeroshot import zeroshot_command


@click.group("eval")
def eval_group() -> None:
    """Analyses from the cache (no encoder is loaded); results go to the catalog's `results`."""


EVAL_COMMANDS: list[click.Command] = [
    zeroshot_command, calibration_command, ood_command,
    retrieval_command, robustness_command, factors_command, shape_bias_command, probe_command,
]  # fmt: skip


def register_eval_commands() -> None:
    for command in EVAL_COMMANDS:
        eval_group.add_command(command)
