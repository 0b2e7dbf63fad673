"""Reading manifest tables (CSV/TSV, Parquet, JSONL) into rows of plain Python values.

The format follows the extension: ``.csv`` / ``.tsv``, ``.parquet`` / ``.pq``, ``.jsonl`` / ``.ndjson``.
CSV cells are strings (an empty cell is a missing value); Parquet and JSONL keep their types.
Row numbers in errors count data rows from 1 (the CSV header is not a row).
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from typing import Any

from embedstore.errors import DatasetError

MANIFEST_FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}


@dataclass(frozen=True)
class Table:
    """Column names in file order and one dict per data row (a missing cell is absent or None)."""

    columns: list[str]
    rows: list[dict[str, Any]]


def manifest_format(path: str) -> str:
    """The table format of a manifest path from its extension; DatasetError for any other extension."""
    extension = os.path.splitext(path)[1].lower()
    if extension not in MANIFEST_FORMATS:
        raise DatasetError(
            f"manifest {path!r}: unsupported extension {extension!r} (expected {', '.join(MANIFEST_FORMATS)})"
        )
    return MANIFEST_FORMATS[extension]


def read_table(path: str) -> Table:
    """Read a manifest table; DatasetError naming the file (and row) when it cannot be read."""
    table_format = manifest_format(path)
    if not os.path.exists(path):
        raise DatasetError(f"manifest {path!r} does not exist")
    if not os.path.isfile(path):
        raise DatasetError(f"manifest {path!r} is not a file")
    try:
        if table_format in ("csv", "tsv"):
            table = _read_delimited(path, "\t" if table_format == "tsv" else ",")
        elif table_format == "parquet":
            table = _read_parquet(path)
        else:
            table = _read_jsonl(path)
    except DatasetError:
        raise
    except (OSError, UnicodeDecodeError, csv.Error, ValueError) as exc:
        raise DatasetError(f"manifest {path!r} cannot be read ({exc})") from None
    if not table.rows:
        raise DatasetError(f"manifest {path!r} has no rows")
    return table


def _read_delimited(path: str, delimiter: str) -> Table:
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        columns = list(reader.fieldnames or [])
        if not columns:
            raise DatasetError(f"manifest {path!r} has no header row")
        if len(set(columns)) != len(columns):
            raise DatasetError(f"manifest {path!r}: the header repeats a column name")
        rows = []
        for number, record in enumerate(reader, start=1):
            if None in record:
                raise DatasetError(f"manifest {path!r} row {number}: more cells than header columns")
            rows.append({key: (None if value in (None, "") else value) for key, value in record.items()})
    return Table(columns, rows)


def _read_parquet(path: str) -> Table:
    import pyarrow
    import pyarrow.parquet

    try:
        arrow_table = pyarrow.parquet.read_table(path)
    except pyarrow.ArrowException as exc:
        raise DatasetError(f"manifest {path!r} cannot be read as Parquet ({exc})") from None
    return Table(list(arrow_table.column_names), arrow_table.to_pylist())


def _read_jsonl(path: str) -> Table:
    columns: dict[str, None] = {}
    rows = []
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"manifest {path!r} line {line_number}: invalid JSON ({exc.msg})") from None
            if not isinstance(record, dict):
                raise DatasetError(f"manifest {path!r} line {line_number}: expected a JSON object per line")
            columns.update(dict.fromkeys(record))
            rows.append(record)
    return Table(list(columns), rows)
