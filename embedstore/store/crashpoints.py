"""A test hook: kill the process at a named point, to test crash recovery deterministically.

``EMBEDSTORE_TEST_CRASH_AT=POINT:N`` makes the N-th call of ``crash_point(POINT)`` in a process send
SIGKILL to that process (no handler runs, nothing is flushed: a ``kill -9``). The points:

- ``chunk-write``: a chunk's bytes are written and fsync'd, its done-marker is not yet written;
- ``catalog-commit``: a catalog write transaction has run its statements but has not committed.

For tests only (``tests/reliability/test_crash_recovery.py``). Unset, ``crash_point`` costs one
environment lookup, next to an fsync or a DuckDB commit.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

ENV = "EMBEDSTORE_TEST_CRASH_AT"
_calls: Counter[str] = Counter()


def crash_point(point: str) -> None:
    """SIGKILL this process if ``EMBEDSTORE_TEST_CRASH_AT`` names ``point`` and this is its N-th call."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    name, _, count = spec.partition(":")
    if name != point:
        return
    _calls[point] += 1
    if _calls[point] == int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)
