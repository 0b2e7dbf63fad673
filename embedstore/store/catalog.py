"""The DuckDB catalog: what a store holds and every result computed from it.

DuckDB lets one process open a database file for writing, and while it does no other process can
open it at all. embedstore therefore never keeps a catalog connection open: every read and every
write transaction opens a connection, does its work and closes it again. Writers keep their
transactions short (a few rows, milliseconds), and a process that finds the file locked retries
with backoff for up to ``lock_timeout`` seconds before it fails with one clear line. This is what
lets ``embedstore sql`` and ``embedstore ls`` answer while an extraction is writing (tested with two
processes in ``tests/test_store_concurrency.py``).
"""

from __future__ import annotations

import contextlib
import random
import re
import time
from collections.abc import Callable, Hashable, Iterator
from pathlib import Path
from typing import TypeVar

import duckdb

from embedstore.errors import StoreError
from embedstore.store.crashpoints import crash_point

T = TypeVar("T")

SCHEMA_VERSION = 1
CATALOG_FILE = "catalog.duckdb"

#: Version 1 of the catalog. Each later version adds a function to ``MIGRATIONS`` that upgrades a
#: catalog from the version before it; ``Catalog.migrate`` applies them in order.
SCHEMA_V1 = """
CREATE TABLE meta (
    key   VARCHAR PRIMARY KEY,
    value VARCHAR NOT NULL
);
CREATE TABLE models (
    model_id      VARCHAR PRIMARY KEY,   -- canonical id, e.g. 'openclip:ViT-B-32.openai'
    kind          VARCHAR NOT NULL,      -- 'clip' | 'classifier' | 'imported'
    library       VARCHAR,               -- 'openclip' | 'timm' | 'import'
    arch          VARCHAR,
    tag           VARCHAR,
    fingerprint   VARCHAR NOT NULL,      -- weights hash, or arch+tag+library version
    family        VARCHAR,               -- the study's six factors and friends ...
    backbone      VARCHAR,               -- 'cnn' | 'vit'
    params        BIGINT,
    resolution    INTEGER,
    embed_dim     INTEGER,
    train_data    VARCHAR,
    train_size    BIGINT,
    fine_tuned    VARCHAR,
    loss          VARCHAR,
    group_label   VARCHAR,
    logit_scale   DOUBLE,                -- exp(learned logit scale); NULL for classifiers
    logit_bias    DOUBLE,                -- SigLIP-style bias; NULL when the model has none
    metadata      JSON,                  -- every metadata field, overrides applied
    created       TIMESTAMP NOT NULL
);
CREATE TABLE datasets (
    name          VARCHAR PRIMARY KEY,
    kind          VARCHAR NOT NULL,      -- 'imagefolder' | 'manifest' | 'wds' | 'captions' | 'synthetic' | 'imported'
    spec          VARCHAR,               -- 'KIND:PATH' it was read from
    root          VARCHAR,
    task          VARCHAR NOT NULL,      -- 'classification' | 'retrieval'
    n_samples     BIGINT NOT NULL,
    n_captions    BIGINT NOT NULL,
    classnames    JSON,                  -- list of class names, label i is classnames[i]
    class_subset  JSON,                  -- indices into the model label space, or NULL
    fingerprint   VARCHAR NOT NULL,
    created       TIMESTAMP NOT NULL
);
CREATE TABLE samples (
    dataset       VARCHAR NOT NULL,
    "row"         BIGINT NOT NULL,       -- row i of every array of the dataset
    key           VARCHAR NOT NULL,
    label         INTEGER,
    locator       VARCHAR,
    PRIMARY KEY (dataset, "row")
);
CREATE TABLE captions (
    dataset       VARCHAR NOT NULL,
    "row"         BIGINT NOT NULL,       -- row of caption_emb
    sample_row    BIGINT NOT NULL,       -- the image this caption describes
    text          VARCHAR NOT NULL,
    PRIMARY KEY (dataset, "row")
);
CREATE TABLE annotations (
    dataset       VARCHAR NOT NULL,
    "row"         BIGINT NOT NULL,
    name          VARCHAR NOT NULL,
    value         VARCHAR,
    PRIMARY KEY (dataset, "row", name)
);
CREATE TABLE templates (
    dataset       VARCHAR NOT NULL,
    "index"       INTEGER NOT NULL,      -- position on the T axis of text_emb [C, T, D]
    template      VARCHAR NOT NULL,      -- with a '{c}' placeholder
    PRIMARY KEY (dataset, "index")
);
CREATE TABLE prompt_sets (
    dataset       VARCHAR NOT NULL,
    name          VARCHAR NOT NULL,
    position      INTEGER NOT NULL,
    template_index INTEGER NOT NULL,     -- into templates."index"
    PRIMARY KEY (dataset, name, position)
);
CREATE TABLE arrays (
    dataset       VARCHAR NOT NULL,
    model         VARCHAR NOT NULL,
    name          VARCHAR NOT NULL,      -- 'image_emb' | 'text_emb' | 'logits' | 'caption_emb' | ...
    path          VARCHAR NOT NULL,      -- inside arrays.zarr
    shape         JSON NOT NULL,
    dtype         VARCHAR NOT NULL,
    chunk_rows    BIGINT NOT NULL,
    rows_total    BIGINT NOT NULL,
    rows_done     BIGINT NOT NULL,       -- as of 'updated'; `Store.array_progress` reads the chunk markers
    status        VARCHAR NOT NULL,      -- 'pending' | 'partial' | 'complete'
    dataset_fingerprint  VARCHAR NOT NULL,
    model_fingerprint    VARCHAR NOT NULL,
    settings_fingerprint VARCHAR NOT NULL,
    settings      JSON,                  -- precision, batch size, device, decode path, preprocessing ...
    versions      JSON,                  -- library versions that wrote it
    seconds       DOUBLE,
    rows_per_s    DOUBLE,
    created       TIMESTAMP NOT NULL,
    updated       TIMESTAMP NOT NULL,
    PRIMARY KEY (dataset, model, name)
);
CREATE TABLE bad_samples (
    dataset       VARCHAR NOT NULL,
    "row"         BIGINT NOT NULL,
    key           VARCHAR,
    reason        VARCHAR NOT NULL,
    detected      TIMESTAMP NOT NULL,
    PRIMARY KEY (dataset, "row")
);
CREATE TABLE results (
    model         VARCHAR,
    dataset       VARCHAR,
    analysis      VARCHAR NOT NULL,      -- 'zeroshot' | 'calibration' | 'ood' | ...
    metric        VARCHAR NOT NULL,
    value         DOUBLE,                -- numeric metrics
    value_text    VARCHAR,               -- non-numeric ones (e.g. the worst factor's name)
    params        JSON NOT NULL,         -- every parameter of the analysis
    params_hash   VARCHAR NOT NULL,      -- sha256 of the canonical params JSON
    version       VARCHAR NOT NULL,      -- embedstore version
    created       TIMESTAMP NOT NULL
);
"""

MIGRATIONS: dict[int, Callable[[duckdb.DuckDBPyConnection], None]] = {}
"""``MIGRATIONS[v](con)`` upgrades a catalog from schema version ``v`` to ``v + 1`` inside a transaction."""


def _is_lock_error(exc: Exception) -> bool:
    text = str(exc).lower()
    return "lock" in text and ("conflicting" in text or "could not set" in text)


class Catalog:
    """Short-lived DuckDB connections to ``STORE/catalog.duckdb`` with lock retries."""

    def __init__(self, path: Path, *, readonly: bool, lock_timeout: float = 30.0):
        self.path = Path(path)
        self.readonly = readonly
        self.lock_timeout = lock_timeout
        self._held: duckdb.DuckDBPyConnection | None = None  # see ``session``
        self._joined = False  # True inside ``transaction``: ``write`` blocks join it
        self._snapshot: duckdb.DuckDBPyConnection | None = None  # see ``snapshot``
        self._remembered: dict[Hashable, object] = {}  # see ``remembered``

    def _connect(self, read_only: bool, config: dict | None = None) -> duckdb.DuckDBPyConnection:
        deadline = time.monotonic() + self.lock_timeout
        delay = 0.005
        while True:
            try:
                return duckdb.connect(str(self.path), read_only=read_only, config=config or {})
            except duckdb.Error as exc:
                if not _is_lock_error(exc):
                    raise StoreError(f"cannot open catalog {self.path}: {exc}") from None
                if time.monotonic() >= deadline:
                    holder = re.search(r"\(PID (\d+)\)", str(exc))  # DuckDB names the holder on the same host
                    who = f" (process {holder.group(1)})" if holder else ""
                    raise StoreError(
                        f"catalog {self.path} is locked by another process writing to it{who}; "
                        f"gave up after {self.lock_timeout:.0f} s (set EMBEDSTORE_LOCK_TIMEOUT to wait longer)"
                    ) from None
                time.sleep(delay * (1.0 + random.random()))
                delay = min(delay * 2, 0.2)

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        """Answer ``read``s inside the block from an in-memory copy of the catalog taken when it
        starts: an analysis over hundreds of (model, dataset) pairs makes thousands of small reads,
        and opening the file for each costs tens of milliseconds. No file connection or lock is held
        during the block, so other processes write as usual; the block does not see their writes,
        nor its own (``write`` still goes to the file)."""
        if self._snapshot is not None or self._held is not None:
            yield  # nested, or inside a session or transaction: reads already share one connection
            return
        copy = duckdb.connect(":memory:")
        try:
            with self.read() as con:
                tables = [r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()]
                for table in tables:
                    rows = con.sql(f'SELECT * FROM "{table}"')
                    rows = rows.to_arrow_table() if hasattr(rows, "to_arrow_table") else rows.arrow()
                    copy.register("incoming", rows)
                    copy.execute(f'CREATE TABLE "{table}" AS SELECT * FROM incoming')
                    copy.unregister("incoming")
            self._snapshot = copy
            yield
        finally:
            self._snapshot = None
            self._remembered.clear()
            copy.close()

    @property
    def remembering(self) -> bool:
        """Whether ``remembered`` keeps what it computes now."""
        return self._snapshot is not None and not self._joined

    def remembered(self, key: Hashable, compute: Callable[[], T]) -> T:
        """``compute()`` (a read of the catalog), computed once per ``key`` while a snapshot answers
        reads: the snapshot does not change, so neither does what is read from it. Outside a
        snapshot, and inside a transaction (which reads its own writes), computed every time.
        Callers hand out copies or read-only views of what is remembered."""
        if not self.remembering:
            return compute()
        try:
            return self._remembered[key]  # type: ignore[return-value]
        except KeyError:
            value = self._remembered[key] = compute()
            return value

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """Hold one connection for a burst of catalog work (opening a DuckDB file costs tens of
        milliseconds): ``read``/``write`` inside the block reuse it. A writable catalog holds a write
        connection, which locks other processes out until the block ends; keep bursts short."""
        if self._snapshot is not None:
            yield  # reads come from the snapshot; a transaction holds its own connection
            return
        with self._hold():
            yield

    @contextlib.contextmanager
    def _hold(self) -> Iterator[None]:
        if self._held is not None:
            yield
            return
        self._held = self._connect(read_only=self.readonly)
        try:
            yield
        finally:
            held, self._held = self._held, None
            held.close()

    @contextlib.contextmanager
    def read(self, *, sandboxed: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-only connection. ``sandboxed`` also forbids file and network access from SQL."""
        if self._snapshot is not None and not sandboxed and not self._joined:  # a transaction reads its writes
            yield self._snapshot
            return
        if self._held is not None and not sandboxed:
            yield self._held
            return
        config = {"enable_external_access": False, "lock_configuration": True} if sandboxed else None
        con = self._connect(read_only=True, config=config)
        try:
            yield con
        finally:
            con.close()

    @contextlib.contextmanager
    def write(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """One write transaction: committed when the block ends, rolled back if it raises. Inside
        ``transaction`` the block joins that transaction instead."""
        if self.readonly:
            raise StoreError(f"store at {self.path.parent} was opened read-only")
        if self._joined:
            yield self._held
            return
        if self._held is not None:
            self._held.execute("BEGIN TRANSACTION")
            try:
                yield self._held
            except BaseException:
                self._held.execute("ROLLBACK")
                raise
            crash_point("catalog-commit")
            self._held.execute("COMMIT")
            return
        con = self._connect(read_only=False)
        try:
            con.execute("BEGIN TRANSACTION")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            crash_point("catalog-commit")
            con.execute("COMMIT")
        finally:
            con.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction around a burst of ``write`` blocks (which join it): the burst is
        committed whole when the block ends, or not at all if it raises or the process dies."""
        if self._joined:
            yield
            return
        with self._hold(), self.write():
            self._joined = True
            try:
                yield
            finally:
                self._joined = False

    # -- schema -----------------------------------------------------------------------------------

    def create_schema(self, meta: dict[str, str]) -> None:
        with self.write() as con:
            con.execute(SCHEMA_V1)
            rows = {"schema_version": str(SCHEMA_VERSION), **meta}
            con.executemany("INSERT INTO meta VALUES (?, ?)", list(rows.items()))

    def meta(self) -> dict[str, str]:
        with self.read() as con:
            try:
                return dict(con.execute("SELECT key, value FROM meta").fetchall())
            except duckdb.CatalogException:
                raise StoreError(f"{self.path} is not an embedstore catalog (no meta table)") from None

    def schema_version(self) -> int:
        return int(self.meta()["schema_version"])

    def migrate(self) -> int:
        """Upgrade the catalog to ``SCHEMA_VERSION``; returns the version it was at."""
        version = self.schema_version()
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"catalog {self.path} has schema version {version}, newer than this embedstore "
                f"understands ({SCHEMA_VERSION}); upgrade embedstore"
            )
        start = version
        while version < SCHEMA_VERSION:
            with self.write() as con:
                MIGRATIONS[version](con)
                version += 1
                con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", [str(version)])
        return start
