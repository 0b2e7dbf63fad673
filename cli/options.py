"""Options and output helpers shared by every command."""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Sequence
from typing import Any

import click

from embedstore.errors import EmbedstoreError


def store_option(func: Callable) -> Callable:
    return click.option(
        "--store",
        "store_path",
        envvar="EMBEDSTORE_STORE",
        required=True,
        type=click.Path(file_okay=False),
        help="Store directory (or set EMBEDSTORE_STORE).",
    )(func)


def json_option(func: Callable) -> Callable:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(func)


def user_errors(func: Callable) -> Callable:
    """Turn the library's user-caused errors, and file-system errors on a named path (an output folder
    that is a file, a missing directory, no permission), into one-line click errors (exit 1)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except EmbedstoreError as exc:
            raise click.ClickException(str(exc)) from None
        except OSError as exc:
            if exc.filename is None:  # not about a path the user gave: a real fault, with its traceback
                raise
            raise click.ClickException(f"{exc.filename}: {exc.strerror or exc}") from None

    return wrapper


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def print_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A plain aligned text table."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    click.echo("  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip())
    click.echo("  ".join("-" * w for w in widths))
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())


def print_json(obj: Any) -> None:
    """Strict JSON (what jq and browsers accept): NaN and infinities are written as null."""
    click.echo(json.dumps(_finite(obj), indent=2, default=_json_default, allow_nan=False))


def _finite(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def models_option(func: Callable) -> Callable:
    return click.option("--model", "models", multiple=True, required=True,
                        help="Model id or glob (repeatable), e.g. 'openclip:*'.")(func)  # fmt: skip


def datasets_option(func: Callable) -> Callable:
    return click.option("--dataset", "datasets", multiple=True, required=True,
                        help="Dataset name or glob (repeatable).")(func)  # fmt: skip


def print_rows(rows: Sequence[dict[str, Any]], columns: Sequence[str], as_json: bool) -> None:
    """Result rows as a table (the given columns) or as JSON (every field)."""
    if as_json:
        print_json(list(rows))
    else:
        print_table(list(columns), [[row.get(c) for c in columns] for row in rows])


def echo_skipped(skipped: dict[str, str]) -> None:
    """One ``skipped NAME: reason`` line on stderr per model or dataset a glob matched but the analysis left out."""
    for name, reason in skipped.items():
        click.echo(f"skipped {name}: {reason}", err=True)
