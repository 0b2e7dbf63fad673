"""Every registered command resolves, and `embedstore --version` imports no heavy library."""

from __future__ import annotations

import subprocess
import sys

import click
from click.testing import CliRunner

from embedstore_cli.eval_commands import EVAL_COMMANDS, eval_group
from embedstore_cli.main import COMMANDS, cli


def test_every_registered_command_resolves_and_has_help():
    context = click.Context(cli)
    for name in COMMANDS:
        assert isinstance(cli.get_command(context, name), click.Command), name
    for name in EVAL_COMMANDS:
        assert isinstance(eval_group.get_command(click.Context(eval_group), name), click.Command), name
    result = CliRunner().invoke(cli, ["eval", "--help"])
    assert result.exit_code == 0 and "shape-bias" in result.output


def test_version_imports_neither_torch_nor_matplotlib():
    code = "import sys; from embedstore_cli.main import main; sys.argv = ['embedstore', '--version']\ntry:\n    main()\nexcept SystemExit:\n    pass\nprint(sorted(m for m in ('torch', 'open_clip', 'timm', 'matplotlib') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("[]"), out


def test_command_help_imports_no_sklearn_nor_scipy_stats():
    """sklearn (1.3-1.5 s) and scipy.stats (1.2 s) are imported where a fit or a metric needs them, not
    by every command that reaches the analysis modules."""
    code = (
        "import sys\nfrom embedstore_cli.main import main\n"
        "for argv in (['eval', 'ood', '--help'], ['eval', 'probe', '--help'], ['eval', 'robustness', '--help'],"
        " ['prompts', 'ablate', '--help'], ['report', '--help']):\n"
        "    sys.argv = ['embedstore', *argv]\n"
        "    try:\n        main()\n    except SystemExit:\n        pass\n"
        "print(sorted(m for m in ('sklearn', 'scipy.stats') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("[]"), out[-300:]
