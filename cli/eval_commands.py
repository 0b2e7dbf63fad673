"""The ``eval`` group: every analysis from cached arrays. Each analysis lives in its own
``cli/eval_<name>.py`` module, listed in ``EVAL_COMMANDS`` (explicitly, imported when run)."""

from __future__ import annotations

import click

from embedstore_cli.lazy import LazyGroup

EVAL_COMMANDS = {
    "zeroshot": ("embedstore_cli.eval_zeroshot:zeroshot_command", "Zero-shot acc1/acc5/mean per-class recall."),
    "calibration": ("embedstore_cli.eval_calibration:calibration_command", "ECE, NLL, Brier; temperature scaling."),
    "ood": ("embedstore_cli.eval_ood:ood_command", "OOD detection: AUROC, AUPR, FPR@95 of MCM, MSP, energy, kNN, ..."),
    "retrieval": ("embedstore_cli.eval_retrieval:retrieval_command", "Image-text retrieval recall@K."),
    "robustness": ("embedstore_cli.eval_robustness:robustness_command", "Effective robustness over a reference group."),
    "factors": (
        "embedstore_cli.eval_factors:factors_command",
        "ImageNet-X-style per-factor accuracy and error ratios.",
    ),
    "shape-bias": ("embedstore_cli.eval_shape_bias:shape_bias_command", "Shape bias on cue-conflict images."),
    "probe": ("embedstore_cli.eval_probe:probe_command", "Linear probes on cached image embeddings."),
}


@click.group("eval", cls=LazyGroup, lazy_commands=EVAL_COMMANDS)
def eval_group() -> None:
    """Analyses from the cache (no encoder is loaded); results go to the catalog's `results`."""
