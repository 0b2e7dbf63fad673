"""Turning a model library's exceptions into one-line ``ModelError``s."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from embedstore.errors import ModelError

MAX_CHARS = 300


def one_line(error: BaseException) -> str:
    """An exception's message on one line: its first non-empty line, joined with the next when the
    first ends in a colon (torch's "Error(s) in loading state_dict for X:"), cut to ``MAX_CHARS``;
    its type name when it has no message."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    text = " ".join(lines[:2]) if lines[0].endswith(":") else lines[0]
    return text if len(text) <= MAX_CHARS else text[: MAX_CHARS - 3] + "..."


@contextlib.contextmanager
def library_errors(action: str) -> Iterator[None]:
    """Re-raise what a library call raises as ``ModelError("<action>: <first line>")``.

    Wrap only the library call itself (open_clip / timm / hub), so a bug in our own code is not
    disguised as a user error. ``ModelError`` passes through unchanged.
    """
    try:
        yield
    except ModelError:
        raise
    except Exception as e:  # the libraries raise RuntimeError, ValueError, OSError, KeyError, ...
        raise ModelError(f"{action}: {one_line(e)}") from e
