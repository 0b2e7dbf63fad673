"""``Store``: one directory holding a DuckDB catalog and a Zarr v3 tree of arrays.

    STORE/catalog.duckdb
    STORE/arrays.zarr/<dataset>/<model>/<name>      (or an fsspec URL given at creation)

Row i of every array of a dataset is row i of that dataset's ``samples`` table. Arrays hold what the
encoders returned (not normalised); analyses normalise where their formula says so.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fnmatch
import hashlib
import json
import os
import re
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

import embedstore
from embedstore.errors import DatasetError, FingerprintMismatch, StoreError
from embedstore.store.arrays import StoreArray, ZarrRoot
from embedstore.store.catalog import CATALOG_FILE, SCHEMA_VERSION, Catalog
from embedstore.store.fingerprint import canonical_json, describe_mismatch, hash_object

ARRAYS_DIR = "arrays.zarr"
#: The catalog's name while ``Store.create`` builds it; renamed to ``catalog.duckdb`` when complete.
CATALOG_BUILDING = ".catalog-building.duckdb"
DEFAULT_PROMPT_SET = "default"


def stored_model_id(model: str) -> str:
    """The id under which the store keeps ``model``: extraction writes ``...@random`` as ``...@random:0``
    (its default seed), so both spellings find the same model."""
    return model + ":0" if model.endswith("@random") else model


def _label(dataset: str, model: str, name: str) -> str:
    """How an error names an array."""
    return f"{name} of model {model} on dataset {dataset}"


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.UTC).replace(tzinfo=None)


ARRAY_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
PROMPT_SET_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def check_prompt_set_name(name: str) -> None:
    """Refuse a prompt set name that is empty or not plain letters, digits, '_', '.', '-'."""
    if not isinstance(name, str) or not PROMPT_SET_NAME.fullmatch(name):
        raise StoreError(f"prompt set name {name!r}: use letters, digits, '_', '.' and '-' (e.g. openai7)")


def path_component(name: str) -> str:
    """A folder name for a dataset or model id: safe characters kept, others replaced, cut to 100
    characters, and a short hash appended whenever anything was changed so that two ids never share
    a folder. Never empty, never ``.`` or ``..``, never a separator: it cannot leave its parent."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")[:100] or "_"
    if safe != name:
        safe = f"{safe}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    return safe


@dataclass(frozen=True)
class ArrayInfo:
    dataset: str
    model: str
    name: str
    path: str
    shape: tuple[int, ...]
    dtype: str
    chunk_rows: int
    rows_total: int
    rows_done: int
    status: str
    fingerprints: dict[str, str]
    settings: dict[str, Any]


@dataclass(frozen=True)
class ResultRow:
    metric: str
    value: float | None = None
    value_text: str | None = None


_WRITE_STATEMENT = re.compile(
    r"^\s*(insert|update|delete|create|drop|alter|copy|attach|detach|install|load|set|pragma|"
    r"checkpoint|vacuum|import|export|call|begin|commit|rollback|truncate|merge|use)\b",
    re.IGNORECASE,
)


class Store:
    """A store directory. Create with ``Store.create(path)``, open with ``Store.open(path)``."""

    def __init__(self, path: Path, catalog: Catalog, arrays: ZarrRoot):
        self.path = path
        self.catalog = catalog
        self.arrays = arrays
        self._pending_results: list[tuple[tuple, list[tuple]]] | None = None

    # -- opening ---------------------------------------------------------------------------------------

    @classmethod
    def create(cls, path: str | os.PathLike, *, arrays_url: str | None = None) -> Store:
        """Create an empty store at ``path``; arrays live in ``path/arrays.zarr`` unless ``arrays_url``
        names another folder or an fsspec URL, which must be empty (nothing there is ever deleted).
        A relative folder is read from the current directory, like any path given on a command line.
        The catalog is built under a temporary name and renamed last, so a store exists whole or
        not at all; creating it again after an interrupted creation finishes the job."""
        path = Path(path)
        if (path / CATALOG_FILE).exists():
            raise StoreError(f"{path} already holds a store")
        building = path / CATALOG_BUILDING
        interrupted = building.exists()  # an earlier create died before its rename
        if path.exists() and not interrupted and any(path.iterdir()):
            raise StoreError(f"{path} exists and is not empty; choose a new folder for the store")
        location = cls._recorded_location(path, arrays_url) if arrays_url else ARRAYS_DIR
        arrays = ZarrRoot(cls._arrays_location(path, location), readonly=False)
        if set(arrays.entries()) - ({"zarr.json"} if interrupted else set()):
            raise StoreError(f"arrays location {location} is not empty; give an empty folder or URL for the arrays")
        path.mkdir(parents=True, exist_ok=True)
        for leftover in (building, path / f"{CATALOG_BUILDING}.wal"):
            leftover.unlink(missing_ok=True)
        Catalog(building, readonly=False, lock_timeout=_lock_timeout()).create_schema(
            {
                "store_id": uuid.uuid4().hex,
                "created": _now().isoformat(),
                "arrays": location,
                "embedstore_version": embedstore.__version__,
            }
        )
        arrays.create_root()
        os.replace(building, path / CATALOG_FILE)
        return cls(path, Catalog(path / CATALOG_FILE, readonly=False, lock_timeout=_lock_timeout()), arrays)

    @staticmethod
    def exists(path: str | os.PathLike) -> bool:
        """Whether ``path`` holds a store (its catalog)."""
        return (Path(path) / CATALOG_FILE).is_file()

    @classmethod
    def open(cls, path: str | os.PathLike, *, readonly: bool = True) -> Store:
        """Open an existing store. A writable open upgrades an older catalog schema first."""
        path = Path(path)
        if not (path / CATALOG_FILE).is_file():
            raise StoreError(f"no store at {path} (missing {CATALOG_FILE}); create one with `embedstore init`")
        catalog = Catalog(path / CATALOG_FILE, readonly=readonly, lock_timeout=_lock_timeout())
        meta = catalog.meta()
        version = int(meta["schema_version"])
        if version != SCHEMA_VERSION:
            if readonly or version > SCHEMA_VERSION:
                raise StoreError(
                    f"store {path} has catalog schema {version}, this embedstore uses {SCHEMA_VERSION}; "
                    + ("open it writable once to migrate" if version < SCHEMA_VERSION else "upgrade embedstore")
                )
            catalog.migrate()
        arrays = ZarrRoot(cls._arrays_location(path, meta["arrays"]), readonly=readonly)
        return cls(path, catalog, arrays)

    @staticmethod
    def _recorded_location(path: Path, arrays_url: str) -> str:
        """How the catalog records a given arrays location: a URL as given; a folder relative to the
        store when it lies inside the store's folder (the store can then be moved whole), else absolute."""
        if "://" in arrays_url:
            return arrays_url
        folder, store = Path(os.path.abspath(arrays_url)), Path(os.path.abspath(path))
        if folder == store:
            raise StoreError(f"arrays location {arrays_url} is the store folder itself; give a folder of its own")
        return str(folder.relative_to(store)) if folder.is_relative_to(store) else str(folder)

    @staticmethod
    def _arrays_location(path: Path, location: str) -> str:
        return location if "://" in location else str(path / location)

    def session(self):
        """``with store.session():`` reuses one catalog connection for a burst of calls (see
        ``Catalog.session``)."""
        return self.catalog.session()

    def transaction(self):
        """``with store.transaction():`` makes a burst of catalog writes one transaction: all of
        them are committed, or none (see ``Catalog.transaction``)."""
        return self.catalog.transaction()

    @property
    def readonly(self) -> bool:
        return self.catalog.readonly

    def meta(self) -> dict[str, str]:
        return self.catalog.meta()

    # -- models and datasets ---------------------------------------------------------------------------

    def register_model(self, info: Mapping[str, Any]) -> None:
        """Insert or update a ``models`` row. ``info`` needs ``model_id``, ``kind`` and ``fingerprint``;
        other keys fill the metadata columns. A different fingerprint for a model that already has
        arrays is refused: those arrays came from other weights."""
        model_id = info["model_id"]
        with self.catalog.write() as con:
            row = con.execute("SELECT fingerprint FROM models WHERE model_id = ?", [model_id]).fetchone()
            if row and row[0] != info["fingerprint"]:
                n = con.execute("SELECT count(*) FROM arrays WHERE model = ?", [model_id]).fetchone()[0]
                if n:
                    raise FingerprintMismatch(
                        f"model {model_id} changed since its {n} array(s) were extracted "
                        f"(weights fingerprint {row[0][:12]} -> {info['fingerprint'][:12]}); "
                        f"use another model id or delete its arrays with `embedstore rm --model {model_id}`"
                    )
            columns = [
                "kind", "library", "arch", "tag", "fingerprint", "family", "backbone", "params",
                "resolution", "embed_dim", "train_data", "train_size", "fine_tuned", "loss",
                "group_label", "logit_scale", "logit_bias",
            ]  # fmt: skip
            values = [info.get(c) for c in columns]
            metadata = canonical_json({k: v for k, v in info.items() if k != "model_id"})
            con.execute("DELETE FROM models WHERE model_id = ?", [model_id])
            con.execute(
                f"INSERT INTO models (model_id, {', '.join(columns)}, metadata, created) "
                f"VALUES (?, {', '.join('?' * len(columns))}, ?, ?)",
                [model_id, *values, metadata, _now()],
            )

    def model_info(self, model_id: str) -> dict[str, Any]:
        rows = self.query("SELECT * FROM models WHERE model_id = ?", [model_id])
        if not rows:
            raise StoreError(f"model {model_id!r} is not in store {self.path}")
        return rows[0]

    def register_dataset(self, dataset: Any) -> bool:
        """Write a dataset's ``datasets``, ``samples``, ``captions``, ``annotations``, ``templates`` rows
        and its default prompt set. ``dataset`` is an ``embedstore.sources.Dataset``. Returns False when
        the same dataset (same fingerprint) is already registered. A changed dataset that already has
        arrays is refused, naming what changed."""
        fingerprint = dataset.fingerprint()
        name = dataset.name
        existing = self.query("SELECT fingerprint, n_samples FROM datasets WHERE name = ?", [name])
        samples = list(dataset.samples)
        annotations = [(s.row, k, None if v is None else str(v)) for s in samples for k, v in s.annotations.items()]
        if existing and existing[0]["fingerprint"] == fingerprint:
            # Same samples: refresh the annotations, which the fingerprint leaves out (ImageNet-X
            # factors may be attached later). Templates stay as first registered: new ones are added
            # with `embedstore prompts add`, which also encodes them.
            with self.catalog.write() as con:
                con.execute("DELETE FROM annotations WHERE dataset = ?", [name])
                self._insert_annotations(con, name, annotations)
            return False
        keys = [s.key for s in samples]
        if len(set(keys)) != len(keys):
            raise DatasetError(f"dataset {name}: duplicate sample keys")
        captions = [(s.row, text) for s in samples for text in s.captions]
        captions = [(row, sample_row, text) for row, (sample_row, text) in enumerate(captions)]
        templates = list(dataset.templates)
        with self.catalog.write() as con:
            if existing:
                n = con.execute("SELECT count(*) FROM arrays WHERE dataset = ?", [name]).fetchone()[0]
                if n:
                    raise FingerprintMismatch(
                        f"dataset {name} changed on disk since its {n} array(s) were extracted "
                        f"(fingerprint {existing[0]['fingerprint'][:12]} -> {fingerprint[:12]}, "
                        f"{existing[0]['n_samples']} -> {len(samples)} samples); register it under another "
                        f"name or delete its arrays with `embedstore rm --dataset {name}`"
                    )
                for table in ("datasets", "samples", "captions", "annotations", "templates", "prompt_sets"):
                    key = "name" if table == "datasets" else "dataset"
                    con.execute(f"DELETE FROM {table} WHERE {key} = ?", [name])
            con.execute(
                "INSERT INTO datasets VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    name, dataset.kind, dataset.spec, dataset.root, dataset.task, len(samples), len(captions),
                    canonical_json(list(dataset.classnames)),
                    None if dataset.class_subset is None else canonical_json(list(dataset.class_subset)),
                    fingerprint, _now(),
                ],
            )  # fmt: skip
            insert_arrow(
                con, "samples",
                {
                    "dataset": pa.array([name] * len(samples), pa.string()),
                    "row": pa.array([s.row for s in samples], pa.int64()),
                    "key": pa.array(keys, pa.string()),
                    "label": pa.array([s.label for s in samples], pa.int32()),
                    "locator": pa.array([s.locator for s in samples], pa.string()),
                },
            )  # fmt: skip
            if captions:
                insert_arrow(
                    con, "captions",
                    {
                        "dataset": pa.array([name] * len(captions), pa.string()),
                        "row": pa.array([c[0] for c in captions], pa.int64()),
                        "sample_row": pa.array([c[1] for c in captions], pa.int64()),
                        "text": pa.array([c[2] for c in captions], pa.string()),
                    },
                )  # fmt: skip
            self._insert_annotations(con, name, annotations)
            _executemany(con, "INSERT INTO templates VALUES (?, ?, ?)", [(name, i, t) for i, t in enumerate(templates)])
            _executemany(
                con,
                "INSERT INTO prompt_sets VALUES (?, ?, ?, ?)",
                [(name, DEFAULT_PROMPT_SET, i, i) for i in range(len(templates))],
            )
        return True

    @staticmethod
    def _insert_annotations(con: duckdb.DuckDBPyConnection, name: str, annotations: list[tuple]) -> None:
        if annotations:
            insert_arrow(
                con, "annotations",
                {
                    "dataset": pa.array([name] * len(annotations), pa.string()),
                    "row": pa.array([a[0] for a in annotations], pa.int64()),
                    "name": pa.array([a[1] for a in annotations], pa.string()),
                    "value": pa.array([a[2] for a in annotations], pa.string()),
                },
            )  # fmt: skip

    def dataset_info(self, name: str) -> dict[str, Any]:
        rows = self.query("SELECT * FROM datasets WHERE name = ?", [name])
        if not rows:
            raise StoreError(f"dataset {name!r} is not in store {self.path}")
        info = rows[0]
        info["classnames"] = _json(info["classnames"]) or []
        info["class_subset"] = _json(info["class_subset"])
        return info

    def sample_table(self, dataset: str) -> dict[str, np.ndarray]:
        """``{"row", "key", "label", "locator"}`` columns of a dataset's samples, in row order
        (labels of unlabelled samples are -1). Inside a catalog snapshot the columns are read once
        and handed out read-only."""
        self.dataset_info(dataset)
        return self._column_table(
            'SELECT "row", key, coalesce(label, -1) AS label, locator FROM samples WHERE dataset = ? ORDER BY "row"',
            dataset,
            {"row": None, "key": object, "label": np.int64, "locator": object},
        )

    def caption_table(self, dataset: str) -> dict[str, np.ndarray]:
        """``{"row", "sample_row", "text"}`` of a caption dataset, in caption-row order."""
        return self._column_table(
            'SELECT "row", sample_row, text FROM captions WHERE dataset = ? ORDER BY "row"',
            dataset,
            {"row": None, "sample_row": None, "text": object},
        )

    def _column_table(self, sql: str, dataset: str, dtypes: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """A query's columns as numpy arrays (``dtypes``: None keeps Arrow's type, ``object`` makes
        Python strings), read once per snapshot and then read-only."""

        def run() -> dict[str, np.ndarray]:
            with self.catalog.read() as con:
                table = arrow_table(con, sql, [dataset])
            columns = {}
            for name, dtype in dtypes.items():
                column = table.column(name)
                if dtype is object:
                    values = np.asarray(column.to_pylist(), dtype=object)
                else:
                    values = column.to_numpy() if dtype is None else column.to_numpy().astype(dtype, copy=False)
                if self.catalog.remembering:
                    values.setflags(write=False)
                columns[name] = values
            return columns

        return dict(self.catalog.remembered(("columns", sql, dataset), run))

    def annotations(self, dataset: str, name: str | None = None) -> dict[str, dict[int, str]]:
        """``{annotation name: {row: value}}`` for a dataset (one name, or all)."""
        sql = 'SELECT name, "row", value FROM annotations WHERE dataset = ?'
        params: list[Any] = [dataset]
        if name is not None:
            sql += " AND name = ?"
            params.append(name)
        out: dict[str, dict[int, str]] = {}
        with self.catalog.read() as con:
            for ann, row, value in con.execute(sql, params).fetchall():
                out.setdefault(ann, {})[int(row)] = value
        return out

    # -- templates and prompt sets ---------------------------------------------------------------------

    def templates(self, dataset: str) -> list[str]:
        rows = self.query('SELECT template FROM templates WHERE dataset = ? ORDER BY "index"', [dataset])
        return [r["template"] for r in rows]

    def prompt_sets(self, dataset: str) -> dict[str, list[int]]:
        rows = self.query(
            "SELECT name, template_index FROM prompt_sets WHERE dataset = ? ORDER BY name, position", [dataset]
        )
        out: dict[str, list[int]] = {}
        for r in rows:
            out.setdefault(r["name"], []).append(int(r["template_index"]))
        return out

    def prompt_set(self, dataset: str, name: str) -> list[int]:
        sets = self.prompt_sets(dataset)
        if name not in sets:
            raise StoreError(
                f"prompt set {name!r} is not defined for dataset {dataset}; known: {', '.join(sorted(sets)) or 'none'}"
            )
        return sets[name]

    def add_prompt_set(self, dataset: str, name: str, templates: Sequence[str]) -> list[int]:
        """Define prompt set ``name`` of ``dataset`` as ``templates``; templates new to the dataset are
        appended to its template list (their text embeddings must then be encoded). Returns the
        template indices of the set."""
        self.dataset_info(dataset)
        check_prompt_set_name(name)
        with self.catalog.write() as con:
            known = dict(
                (t, i)
                for i, t in con.execute(
                    'SELECT "index", template FROM templates WHERE dataset = ?', [dataset]
                ).fetchall()
            )
            indices = []
            for template in templates:
                if template not in known:
                    known[template] = len(known)
                    con.execute("INSERT INTO templates VALUES (?, ?, ?)", [dataset, known[template], template])
                indices.append(known[template])
            con.execute("DELETE FROM prompt_sets WHERE dataset = ? AND name = ?", [dataset, name])
            _executemany(
                con,
                "INSERT INTO prompt_sets VALUES (?, ?, ?, ?)",
                [(dataset, name, pos, idx) for pos, idx in enumerate(indices)],
            )
        return indices

    # -- arrays ------------------------------------------------------------------------------------------

    def array_path(self, dataset: str, model: str, name: str) -> str:
        if not ARRAY_NAME.fullmatch(name):
            raise StoreError(f"array name {name!r}: use letters, digits, '_', '.' and '-', starting with a letter, "
                             "digit or '_' (e.g. image_emb)")  # fmt: skip
        return f"{path_component(dataset)}/{path_component(model)}/{name}"

    def open_array_writer(
        self,
        dataset: str,
        model: str,
        name: str,
        *,
        shape: Sequence[int],
        dtype: str,
        chunk_rows: int,
        fingerprints: Mapping[str, str],
        settings: Mapping[str, Any] | None = None,
        versions: Mapping[str, str] | None = None,
        compression: str = "none",
        register: bool = True,
    ) -> StoreArray:
        """Create an array, or reopen it to resume. Reopening with other fingerprints, shape, dtype or
        chunking is refused with the reason. ``register=False`` (non-zero torchrun ranks) touches no
        catalog row and only opens an array rank 0 created."""
        label = f"{dataset}/{model}/{name}"
        fingerprints = {k: fingerprints[k] for k in ("dataset", "model", "settings")}
        path = self.array_path(dataset, model, name)
        info = self._array_row(dataset, model, name)
        if info is not None:
            problem = describe_mismatch(label, info.fingerprints, fingerprints, info.settings, settings)
            if problem:
                raise FingerprintMismatch(problem)
            arr = self.arrays.open_array(info.path)
            if (
                arr.shape != tuple(shape)
                or str(arr.dtype) != dtype
                or arr.chunk_rows != min(chunk_rows, max(shape[0], 1))
            ):
                raise StoreError(
                    f"array {label} exists with shape {arr.shape}, dtype {arr.dtype}, {arr.chunk_rows} rows a chunk; "
                    f"asked for {tuple(shape)}, {dtype}, {chunk_rows}"
                )
        elif not register:
            raise StoreError(f"array {label} has not been created by rank 0")
        else:
            # Without a catalog row, whatever lies at ``path`` was left by a crash between creating
            # the array and registering it (no chunk was written yet) or by an interrupted `rm`:
            # it is replaced.
            attrs = {"fingerprints": dict(fingerprints), "settings": dict(settings or {}), "dataset": dataset,
                     "model": model, "name": name}  # fmt: skip
            arr = self.arrays.create_array(path, shape, dtype, chunk_rows, attrs, compression=compression)
        if register and info is None:
            now = _now()
            with self.catalog.write() as con:
                con.execute(
                    f"INSERT INTO arrays VALUES ({', '.join('?' * 19)})",
                    [
                        dataset, model, name, path, canonical_json(list(arr.shape)), str(arr.dtype), arr.chunk_rows,
                        arr.shape[0], 0, "pending", fingerprints["dataset"], fingerprints["model"],
                        fingerprints["settings"], canonical_json(dict(settings or {})),
                        canonical_json(dict(versions or {})), None, None, now, now,
                    ],
                )  # fmt: skip
        return arr

    def rewrite_array(
        self, dataset: str, model: str, name: str, data: np.ndarray, *, settings_update: Mapping[str, Any]
    ) -> ArrayInfo:
        """Replace a complete array by ``data`` (same dtype and chunking, any number of columns),
        keeping its fingerprints; used to append templates to ``text_emb``. The new array is written
        beside the old one and the catalog row is switched to it in one transaction, so a crash leaves
        either the old or the new array, never a mix."""
        info = self._require_array(dataset, model, name)
        old = self.arrays.open_array(info.path)
        if str(data.dtype) != info.dtype or data.shape[0] != info.rows_total:
            raise StoreError(f"rewrite of {dataset}/{model}/{name} needs {info.rows_total} rows of {info.dtype}")
        path = f"{self.array_path(dataset, model, name)}~{uuid.uuid4().hex[:8]}"
        settings = {**info.settings, **settings_update}
        attrs = {**old.attrs, "settings": settings}
        new = self.arrays.create_array(path, data.shape, info.dtype, info.chunk_rows, attrs)
        for chunk in range(new.n_chunks):
            a, b = new.chunk_bounds(chunk)
            new.write_chunk(chunk, data[a:b])
        with self.catalog.write() as con:
            con.execute(
                "UPDATE arrays SET path = ?, shape = ?, settings = ?, rows_done = ?, status = 'complete', updated = ? "
                "WHERE dataset = ? AND model = ? AND name = ?",
                [
                    path,
                    canonical_json(list(data.shape)),
                    canonical_json(settings),
                    data.shape[0],
                    _now(),
                    dataset,
                    model,
                    name,
                ],
            )
        self.arrays.delete_array(info.path)
        return self._require_array(dataset, model, name)

    def update_array_progress(
        self, dataset: str, model: str, name: str, *, seconds: float | None = None, rows_per_s: float | None = None
    ) -> ArrayInfo:
        """Recount an array's done rows from its chunk markers into the catalog (no write when the
        count, the status and the timings are unchanged)."""
        info = self._require_array(dataset, model, name)
        arr = self.arrays.open_array(info.path)
        done = arr.rows_done()
        status = "complete" if done == info.rows_total else ("partial" if done else "pending")
        if (done, status) == (info.rows_done, info.status) and seconds is None and rows_per_s is None:
            return info  # nothing changed: no write, and ``updated`` keeps the time of the last real change
        with self.catalog.write() as con:
            con.execute(
                "UPDATE arrays SET rows_done = ?, status = ?, updated = ?, seconds = coalesce(?, seconds), "
                "rows_per_s = coalesce(?, rows_per_s) WHERE dataset = ? AND model = ? AND name = ?",
                [done, status, _now(), seconds, rows_per_s, dataset, model, name],
            )
        return self._require_array(dataset, model, name)

    def array(self, dataset: str, model: str, name: str) -> StoreArray:
        return self.arrays.open_array(self._require_array(dataset, model, name).path, _label(dataset, model, name))

    def read_array(
        self,
        dataset: str,
        model: str,
        name: str,
        rows: slice | Sequence[int] | np.ndarray | None = None,
        *,
        allow_partial: bool = False,
    ) -> np.ndarray:
        """An array (or some of its rows) as numpy. An array whose extraction has not finished is
        refused unless ``allow_partial`` (its missing rows read as zeros)."""
        return self._readable_array(dataset, model, name, allow_partial).read(rows)

    def dask_array(self, dataset: str, model: str, name: str, *, allow_partial: bool = False) -> Any:
        """An array as a lazy ``dask.array.Array`` (one block per chunk of rows) for analyses over
        arrays larger than memory; refused while incomplete, as ``read_array``. Needs ``dask[array]``."""
        return self._readable_array(dataset, model, name, allow_partial).to_dask()

    def _readable_array(self, dataset: str, model: str, name: str, allow_partial: bool) -> StoreArray:
        info = self._require_array(dataset, model, name)
        stamp = self.arrays.metadata_stamp(info.path) if info.status == "complete" else None
        if stamp is not None:  # a finished array is opened once per snapshot, while its metadata file is the same
            arr = self.catalog.remembered(
                ("array", info.path, stamp), lambda: self.arrays.open_array(info.path, _label(dataset, model, name))
            )
        else:
            arr = self.arrays.open_array(info.path, _label(dataset, model, name))
        arr.complete = info.status == "complete"
        if not allow_partial and info.status != "complete":
            done = arr.rows_done()
            if done != info.rows_total:
                raise StoreError(
                    f"array {dataset}/{model}/{name} is incomplete ({done}/{info.rows_total} rows); "
                    f"finish its extraction first"
                )
            # Every chunk is written, but the writer has not recorded the dataset's bad samples and the
            # array's status yet (it is still running, or was stopped in between): its rows are not final.
            raise StoreError(
                f"array {dataset}/{model}/{name} has every row written but its writer has not finished it (bad "
                f"samples and status not recorded): wait for it, or run the same extract or import again"
            )
        return arr

    def list_arrays(
        self, dataset: str | None = None, model: str | None = None, name: str | None = None
    ) -> list[ArrayInfo]:
        if self.catalog.remembering:  # the whole table, read once, filtered here
            every, wanted = self._arrays_by_key(), (dataset, model, name)
            if None not in wanted:
                return [every[wanted]] if wanted in every else []  # type: ignore[index]
            return [a for key, a in every.items() if all(w in (None, k) for w, k in zip(wanted, key))]
        sql = "SELECT * FROM arrays WHERE 1=1"
        params: list[Any] = []
        for column, value in (("dataset", dataset), ("model", model), ("name", name)):
            if value is not None:
                sql += f" AND {column} = ?"
                params.append(value)
        return [_array_info(r) for r in self.query(sql + " ORDER BY dataset, model, name", params)]

    def output_path(self, path: str | os.PathLike, flag: str = "--output") -> Path:
        """``path`` as a file a command may write: its folder must exist, and it must not lie inside the
        store's folder or its arrays (where it could overwrite the catalog or an array)."""
        target = Path(path)
        real = Path(os.path.realpath(target))
        inside = [Path(os.path.realpath(self.path))]
        if self.arrays.local_root is not None:
            inside.append(Path(os.path.realpath(self.arrays.local_root)))
        if any(real == root or real.is_relative_to(root) for root in inside):
            raise StoreError(f"{flag} {path} lies inside store {self.path}: write it elsewhere")
        if not target.parent.is_dir():
            raise StoreError(f"{flag} {path}: folder {target.parent} does not exist")
        return target

    def model_with_array(self, dataset: str, model: str, name: str) -> str:
        """The model id that ``model`` names for array ``name`` on ``dataset``: ``model`` itself as
        stored (:func:`stored_model_id`), or the one id that the glob ``model`` matches among the models
        holding that array (ids of models loaded from files are long; ``'openclip:*toy*'`` will do).
        A glob that matches none or several of them is a StoreError listing them."""
        if not any(c in model for c in "*?["):
            return stored_model_id(model)
        holders = [info.model for info in self.list_arrays(dataset, None, name)]
        if not holders:
            names = sorted({info.name for info in self.list_arrays(dataset)})
            raise StoreError(
                f"dataset {dataset} has no {name} array of any model; its arrays: {', '.join(names) or 'none'}"
            )
        hits = [m for m in holders if fnmatch.fnmatchcase(m, model)]
        if len(hits) == 1:
            return hits[0]
        if not hits:
            listing = ", ".join(holders) or "none"
            raise StoreError(
                f"--model {model!r} matches no model with {name} on dataset {dataset}; those are: {listing}"
            )
        raise StoreError(f"--model {model!r} matches {len(hits)} models with {name} on {dataset}: {', '.join(hits)}; "
                         "name one")  # fmt: skip

    def _arrays_by_key(self) -> dict[tuple[str, str, str], ArrayInfo]:
        """Every ``arrays`` row by (dataset, model, name), in that order; read once per snapshot."""

        def read() -> dict[tuple[str, str, str], ArrayInfo]:
            rows = self.query("SELECT * FROM arrays ORDER BY dataset, model, name")
            return {(r["dataset"], r["model"], r["name"]): _array_info(r) for r in rows}

        return self.catalog.remembered("arrays by key", read)

    def array_progress(self, info: ArrayInfo) -> tuple[int, str]:
        """(rows done, status) read from the chunk markers: true even while a writer is running. Only
        the writer makes an array ``complete``, once it has recorded the dataset's bad samples; until
        then one with every row written is ``partial``."""
        if info.status == "complete":
            return info.rows_done, info.status
        done = self.arrays.open_array(info.path).rows_done() if self.arrays.exists(info.path) else 0
        return done, "partial" if done else "pending"

    def delete_arrays(self, dataset: str | None = None, model: str | None = None, name: str | None = None) -> int:
        infos = self.list_arrays(dataset, model, name)
        for info in infos:
            with self.catalog.write() as con:
                con.execute(
                    "DELETE FROM arrays WHERE dataset = ? AND model = ? AND name = ?",
                    [info.dataset, info.model, info.name],
                )
            self.arrays.delete_array(info.path)
        return len(infos)

    def _array_row(self, dataset: str, model: str, name: str) -> ArrayInfo | None:
        if self.catalog.remembering:  # one read of the whole table beats a query per array
            return self._arrays_by_key().get((dataset, model, name))
        rows = self.query("SELECT * FROM arrays WHERE dataset = ? AND model = ? AND name = ?", [dataset, model, name])
        return _array_info(rows[0]) if rows else None

    def _require_array(self, dataset: str, model: str, name: str) -> ArrayInfo:
        info = self._array_row(dataset, model, name)
        if info is None:
            have = self.query("SELECT DISTINCT name FROM arrays WHERE dataset = ? AND model = ?", [dataset, model])
            if have:
                hint = f"; it has {', '.join(r['name'] for r in have)}"
            else:
                models = [r["model"] for r in self.query(
                    "SELECT DISTINCT model FROM arrays WHERE dataset = ? AND name = ? ORDER BY model", [dataset, name])]  # fmt: skip
                hint = (f"; models with {name} on {dataset}: {', '.join(models)}" if models
                        else "; run `embedstore extract` first")  # fmt: skip
            raise StoreError(f"store holds no array {name} for model {model} on dataset {dataset}{hint}")
        return info

    # -- bad samples ---------------------------------------------------------------------------------------

    def record_bad_samples(self, dataset: str, bad: Iterable[tuple[int, str | None, str]]) -> None:
        rows = [(dataset, int(r), k, reason, _now()) for r, k, reason in bad]
        if not rows:
            return
        with self.catalog.write() as con:
            _executemany(con, 'DELETE FROM bad_samples WHERE dataset = ? AND "row" = ?', [r[:2] for r in rows])
            _executemany(con, "INSERT INTO bad_samples VALUES (?, ?, ?, ?, ?)", rows)

    def bad_rows(self, dataset: str) -> np.ndarray:
        rows = self.query('SELECT "row" FROM bad_samples WHERE dataset = ? ORDER BY "row"', [dataset])
        return np.asarray([r["row"] for r in rows], dtype=np.int64)

    # -- results -------------------------------------------------------------------------------------------

    def put_results(
        self,
        analysis: str,
        rows: Iterable[ResultRow | tuple[str, Any]],
        *,
        params: Mapping[str, Any],
        model: str | None = None,
        dataset: str | None = None,
    ) -> str:
        """Store one analysis run's metrics. Rows of an earlier run with the same model, dataset,
        analysis and parameters are replaced; other parameters add rows. Returns the params hash.
        Inside `results_together` the write waits for the end of the block."""
        params_hash = hash_object(dict(params))
        params_json = canonical_json(dict(params))
        now = _now()
        values = []
        for row in rows:
            if not isinstance(row, ResultRow):
                metric, value = row
                row = ResultRow(metric, value_text=value) if isinstance(value, str) else ResultRow(metric, value)
            number = None if row.value is None else float(row.value)
            values.append((model, dataset, analysis, row.metric, number, row.value_text, params_json, params_hash,
                           embedstore.__version__, now))  # fmt: skip
        run = ((model, dataset, analysis, params_hash), values)
        if self._pending_results is not None:
            self._pending_results.append(run)
        else:
            self._write_result_runs([run])
        return params_hash

    def _write_result_runs(self, runs: Sequence[tuple[tuple, list[tuple]]]) -> None:
        """Replace the rows of each run's (model, dataset, analysis, params_hash) by its rows: one
        delete and one vectorised insert for all runs (a run repeated keeps its last rows)."""
        latest = dict(runs)
        if not latest:
            return
        keys = pa.table({n: pa.array(list(c), pa.string()) for n, c in zip(RESULT_KEY, zip(*latest))})
        values = [row for rows in latest.values() for row in rows]
        names = ("model", "dataset", "analysis", "metric", "value", "value_text", "params", "params_hash",
                 "version", "created")  # fmt: skip
        types = [pa.string()] * 4 + [pa.float64()] + [pa.string()] * 4 + [pa.timestamp("us")]
        with self.catalog.write() as con:
            con.register("_embedstore_runs", keys)
            con.execute(
                f"DELETE FROM results r WHERE EXISTS (SELECT 1 FROM _embedstore_runs k WHERE {same_result_key('r', 'k')})"
            )
            con.unregister("_embedstore_runs")
            if values:  # one vectorised insert: row-by-row executemany costs ~70 ms per analysis run
                insert_arrow(con, "results", {n: pa.array(list(c), t) for n, c, t in zip(names, zip(*values), types)})

    def count_results(self, pairs: Sequence[tuple[str, str]]) -> int:
        """Result rows stored under any of the (model, dataset) ``pairs``."""
        if not pairs:
            return 0
        where, params = _any_pair(pairs)
        return int(self.query(f"SELECT count(*) AS n FROM results WHERE {where}", params)[0]["n"])

    def delete_results(self, pairs: Sequence[tuple[str, str]]) -> int:
        """Delete the result rows stored under any of the (model, dataset) ``pairs``; returns how many."""
        if not pairs:
            return 0
        where, params = _any_pair(pairs)
        with self.catalog.write() as con:
            return int(con.execute(f"DELETE FROM results WHERE {where}", params).fetchall()[0][0])

    @contextlib.contextmanager
    def results_together(self) -> Iterator[None]:
        """``put_results`` calls inside the block are kept and written in one transaction when it ends
        without an error; when it raises, none is written. An analysis over many (model, dataset)
        pairs that fails on one pair leaves the results table as it was. Nested blocks join the
        outermost."""
        if self._pending_results is not None:
            yield
            return
        self._pending_results = []
        try:
            yield
            pending, self._pending_results = self._pending_results, None
            self._write_result_runs(pending)
        finally:
            self._pending_results = None

    # -- SQL -----------------------------------------------------------------------------------------------

    def query(self, sql: str, params: Sequence[Any] | None = None) -> list[dict[str, Any]]:
        """Rows of a read query as dicts (internal use: trusted SQL). Inside a catalog snapshot the
        same query is run once (``Catalog.remembered``); each call gets its own dicts."""

        def run() -> list[tuple[str, ...] | tuple[Any, ...]]:
            with self.catalog.read() as con:
                cursor = con.execute(sql, params or [])
                return [tuple(d[0] for d in cursor.description), *cursor.fetchall()]

        key = _params_key(params)
        columns, *rows = run() if key is None else self.catalog.remembered(("query", sql, key), run)
        return [dict(zip(columns, row)) for row in rows]

    def sql(self, statement: str) -> pa.Table:
        """Run a user's SQL on a read-only, sandboxed connection (no file or network access, no
        writes) and return an Arrow table. Write statements are refused with one clear line."""
        if not statement.strip():
            raise StoreError("the SQL statement is empty (e.g. SELECT * FROM arrays)")
        match = _WRITE_STATEMENT.match(statement)
        if match:
            raise StoreError(f"refused: `sql` is read-only and {match.group(1).upper()} statements are not allowed")
        with self.catalog.read(sandboxed=True) as con:
            try:
                return arrow_table(con, statement)
            except duckdb.Error as exc:
                message = str(exc).splitlines()[0]
                if "read-only" in message or "read only" in message:
                    raise StoreError(f"refused: `sql` is read-only ({message})") from None
                raise StoreError(f"SQL error: {message}") from None


def arrow_table(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] | None = None) -> pa.Table:
    """A query's rows as an Arrow table (DuckDB 2 renamed ``fetch_arrow_table`` to ``to_arrow_table``)."""
    relation = con.sql(sql, params=params) if params else con.sql(sql)
    if relation is None:
        return pa.table({})
    fetch = getattr(relation, "to_arrow_table", None) or relation.arrow
    table = fetch()
    return table if isinstance(table, pa.Table) else table.read_all()


RESULT_KEY = ("model", "dataset", "analysis", "params_hash")
"""What identifies one analysis run's rows in ``results``: a run with the same key replaces them."""


def same_result_key(a: str, b: str) -> str:
    """SQL: rows aliased ``a`` and ``b`` have the same `RESULT_KEY` (a NULL model or dataset equals NULL)."""
    return " AND ".join(f"{a}.{n} IS NOT DISTINCT FROM {b}.{n}" for n in RESULT_KEY)


def _params_key(params: Sequence[Any] | None) -> tuple | None:
    """Query parameters as a key for ``Catalog.remembered``, None for any that cannot be one (only
    strings, Python numbers, None and lists of them are keys; their types are part of the key)."""

    if isinstance(params, Mapping):  # named parameters
        return None

    def frozen(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return (type(value).__name__, *(frozen(v) for v in value))
        if value is None or type(value) in (str, int, float, bool):
            return (type(value).__name__, value)
        raise TypeError(value)

    try:
        return frozen(list(params or ()))
    except TypeError:
        return None


def _executemany(con: duckdb.DuckDBPyConnection, sql: str, rows: Sequence[Sequence[Any]]) -> None:
    if rows:
        con.executemany(sql, rows)


def _any_pair(pairs: Sequence[tuple[str, str]]) -> tuple[str, list[str]]:
    """A WHERE condition matching any (model, dataset) of ``pairs``, and its parameters."""
    return " OR ".join(["(model = ? AND dataset = ?)"] * len(pairs)), [value for pair in pairs for value in pair]


def insert_arrow(
    con: duckdb.DuckDBPyConnection, table: str, rows: pa.Table | dict[str, pa.Array], condition: str | None = None
) -> int:
    """Insert ``rows`` (columns by name) into ``table`` in one statement, only those where the SQL
    ``condition`` holds (the incoming row is ``i``); returns how many were inserted."""
    data = rows if isinstance(rows, pa.Table) else pa.table(rows)
    names = ", ".join(f'"{c}"' for c in data.column_names)
    where = f" WHERE {condition}" if condition else ""
    con.register("_embedstore_insert", data)
    # not unregistered when the insert fails: on an aborted transaction that would raise in its place
    inserted = con.execute(f"INSERT INTO {table} ({names}) SELECT {names} FROM _embedstore_insert i{where}").fetchall()
    con.unregister("_embedstore_insert")
    return int(inserted[0][0])


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _array_info(row: Mapping[str, Any]) -> ArrayInfo:
    return ArrayInfo(
        dataset=row["dataset"],
        model=row["model"],
        name=row["name"],
        path=row["path"],
        shape=tuple(_json(row["shape"])),
        dtype=row["dtype"],
        chunk_rows=int(row["chunk_rows"]),
        rows_total=int(row["rows_total"]),
        rows_done=int(row["rows_done"]),
        status=row["status"],
        fingerprints={
            "dataset": row["dataset_fingerprint"],
            "model": row["model_fingerprint"],
            "settings": row["settings_fingerprint"],
        },
        settings=_json(row["settings"]) or {},
    )


def _lock_timeout() -> float:
    try:
        return float(os.environ.get("EMBEDSTORE_LOCK_TIMEOUT", "30"))
    except ValueError:
        raise StoreError("EMBEDSTORE_LOCK_TIMEOUT must be a number of seconds") from None
