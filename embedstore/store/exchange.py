"""Moving arrays in and out of a store: ``.npy``, ``.h5`` (h5py) and Parquet.

Export writes an array in row order with its sample keys and, for rows of samples listed in
``bad_samples`` (undecodable images, left as zero rows), the reason (``.h5``: datasets ``data``,
``keys`` and ``bad_reason``, an empty string for good rows; Parquet: columns ``row``, ``key``,
``values`` as a fixed-size list and ``bad_reason``, null for good rows; ``.npy``: the matrix alone,
without keys or reasons). Import reads an ``[N, ...]`` matrix with one sample key per row, places
every row at its sample's row in the dataset (registering a new dataset from the keys when the store
does not know it), records the rows a file flags as bad in ``bad_samples`` (so that no analysis
counts their zero rows) and writes it as a complete array. An export followed by an import and a
second export gives bit-identical files.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from embedstore.errors import StoreError
from embedstore.store.fingerprint import hash_object
from embedstore.store.locks import dataset_locks
from embedstore.store.store import Store, stored_model_id

EXPORT_FORMATS = ("npy", "h5", "parquet")
IMPORT_CHUNK_ROWS = 4096


def _format_of(path: Path, fmt: str | None) -> str:
    if fmt:
        if fmt not in EXPORT_FORMATS:
            raise StoreError(f"unknown format {fmt!r}: use one of {', '.join(EXPORT_FORMATS)}")
        return fmt
    suffix = path.suffix.lower().lstrip(".")
    formats = {"npy": "npy", "h5": "h5", "hdf5": "h5", "parquet": "parquet", "pq": "parquet"}
    if suffix not in formats:
        raise StoreError(f"cannot tell the format of {path} from its extension: use .npy, .h5 or .parquet")
    return formats[suffix]


def export_array(
    store: Store, dataset: str, model: str, name: str, output: str | Path, fmt: str | None = None
) -> tuple[Path, tuple[int, ...], str]:
    """Write one array to ``output``; ``model`` may be a glob matching one model (``Store.model_with_array``).
    Returns the path, the array's shape and the model id."""
    output = store.output_path(output)
    fmt = _format_of(output, fmt)
    store.dataset_info(dataset)
    model = store.model_with_array(dataset, model, name)
    data = store.read_array(dataset, model, name)
    keys = _row_keys(store, dataset, name, data.shape[0])
    bad = _bad_reasons(store, dataset, name, len(keys))
    try:
        _write_matrix(output, fmt, data, keys, bad, {"dataset": dataset, "model": model, "name": name})
    except OSError as exc:  # h5py and pyarrow raise without naming the file
        raise StoreError(f"cannot write {output}: {exc.strerror or exc}") from None
    return output, tuple(data.shape), model


def _bad_reasons(store: Store, dataset: str, name: str, n: int) -> list[str | None]:
    """Per exported row, the ``bad_samples`` reason of its sample (None for a good one); a caption row
    is bad when its image is. ``text_emb`` rows are classes: none is bad."""
    if name == "text_emb":
        return [None] * n
    reasons = {int(r["row"]): r["reason"] for r in store.query(
        'SELECT "row", reason FROM bad_samples WHERE dataset = ?', [dataset])}  # fmt: skip
    if name == "caption_emb":
        return [reasons.get(int(sample_row)) for sample_row in store.caption_table(dataset)["sample_row"]]
    return [reasons.get(row) for row in range(n)]


def _write_matrix(output: Path, fmt: str, data: np.ndarray, keys: list[str], bad: list[str | None],
                  about: dict[str, str]) -> None:  # fmt: skip
    if fmt == "npy":
        with output.open("wb") as f:  # np.save on a name would add ".npy" to one without it
            np.save(f, data)
    elif fmt == "h5":
        import h5py

        with h5py.File(output, "w") as f:
            f.create_dataset("data", data=data)
            f.create_dataset("keys", data=np.asarray(keys, dtype=object), dtype=h5py.string_dtype())
            f.create_dataset("bad_reason", data=np.asarray([r or "" for r in bad], dtype=object),
                             dtype=h5py.string_dtype())  # fmt: skip
            f.attrs.update(about)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        flat = data.reshape(data.shape[0], -1)
        values = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1])
        table = pa.table({"row": np.arange(data.shape[0]), "key": keys, "values": values,
                          "bad_reason": pa.array(bad, pa.string())})  # fmt: skip
        meta = {
            b"embedstore.shape": json.dumps(list(data.shape)).encode(),
            b"embedstore.dtype": str(data.dtype).encode(),
        }
        pq.write_table(table.replace_schema_metadata(meta), output)


def _row_keys(store: Store, dataset: str, name: str, n: int) -> list[str]:
    """Keys naming each row: sample keys, caption ids (``key#j``) for ``caption_emb``, class names for
    ``text_emb``."""
    if name == "caption_emb":
        captions = store.caption_table(dataset)
        keys = store.sample_table(dataset)["key"]
        counts: dict[int, int] = {}
        out = []
        for sample_row in captions["sample_row"]:
            j = counts.get(int(sample_row), 0)
            counts[int(sample_row)] = j + 1
            out.append(f"{keys[sample_row]}#{j}")
        return out
    if name == "text_emb":
        return list(store.dataset_info(dataset)["classnames"])
    keys = store.sample_table(dataset)["key"]
    if len(keys) != n:
        raise StoreError(f"array {dataset}/{name} has {n} rows but the dataset has {len(keys)} samples")
    return [str(k) for k in keys]


# -- import ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ImportedSample:
    row: int
    key: str
    label: int | None = None
    locator: str | None = None
    captions: tuple[str, ...] = ()
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass
class _ImportedDataset:
    """A dataset known only by its sample keys (registered by ``import``)."""

    name: str
    samples: Sequence[_ImportedSample]
    source: str
    kind: str = "imported"
    root: str | None = None
    classnames: Sequence[str] = ()
    templates: Sequence[str] = ()
    task: str = "classification"
    class_subset: Sequence[int] | None = None

    @property
    def spec(self) -> str:
        return f"import:{self.source}"

    def fingerprint(self) -> str:
        return hash_object({"kind": self.kind, "keys": [s.key for s in self.samples]})


def read_matrix(
    path: str | Path, keys_file: str | Path | None = None, h5_dataset: str = "data"
) -> tuple[np.ndarray, list[str], dict[str, str]]:
    """Read an ``[N, ...]`` matrix, its N sample keys and ``{key: reason}`` of the rows it flags as bad
    from ``.npy`` (+ keys file, one per line), ``.h5`` (datasets ``data``, ``keys`` and optionally
    ``bad_reason``, or a keys file) or Parquet written by ``export_array``."""
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"no such file: {path}")
    fmt = _format_of(path, None)
    keys: list[str] | None = None
    bad: list[str | None] | None = None
    try:
        if fmt == "npy":
            with path.open("rb") as f:
                if f.read(6) != b"\x93NUMPY":
                    raise StoreError(f"{path} is not a .npy file (numpy.save writes one)")
            data = np.load(path, allow_pickle=False)
        elif fmt == "h5":
            import h5py

            with h5py.File(path, "r") as f:
                if h5_dataset not in f:
                    raise StoreError(f"{path} has no dataset {h5_dataset!r} (it has {', '.join(f.keys())})")
                data = f[h5_dataset][...]
                if "keys" in f and keys_file is None:
                    keys = [k.decode() if isinstance(k, bytes) else str(k) for k in f["keys"][...]]
                if "bad_reason" in f:
                    bad = [(r.decode() if isinstance(r, bytes) else str(r)) or None for r in f["bad_reason"][...]]
        else:
            data, keys, bad = _read_parquet(path, with_keys=keys_file is None)
    except (OSError, ValueError) as exc:
        raise StoreError(f"cannot read {path}: {exc}") from None
    if keys_file is not None:
        keys = [line.rstrip("\n") for line in Path(keys_file).read_text().splitlines() if line.strip()]
    if keys is None:
        raise StoreError(f"{path} carries no sample keys: pass --keys FILE with one key per row")
    if data.ndim < 1 or data.shape[0] == 0:
        raise StoreError(f"{path} holds no rows (shape {list(data.shape)}): nothing to import")
    if data.shape[0] != len(keys):
        raise StoreError(f"{path} has {data.shape[0] if data.ndim else 0} rows but {len(keys)} keys were given")
    if len(set(keys)) != len(keys):
        raise StoreError(f"duplicate sample keys in the keys for {path}")
    if bad is not None and len(bad) != len(keys):
        raise StoreError(f"{path} flags {len(bad)} rows as bad or good but holds {len(keys)} rows")
    return data, keys, {key: reason for key, reason in zip(keys, bad or []) if reason}


def _read_parquet(path: Path, with_keys: bool) -> tuple[np.ndarray, list[str] | None, list[str | None] | None]:
    """The ``values`` column (one equal-length list of numbers per row), ``with_keys`` the ``key``
    column and the ``bad_reason`` column when there is one, of a Parquet file as `export_array` writes
    it; anything else is one StoreError naming it."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    needed = ["values", "key"] if with_keys else ["values"]
    if any(column not in table.column_names for column in needed):
        raise StoreError(f"{path} needs the columns {', '.join(needed)} (one list of numbers per row, as `embedstore "
                         f"export` writes); it has: {', '.join(table.column_names)}")  # fmt: skip
    values = table.column("values").combine_chunks()
    kind = values.type
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)) or not (
        pa.types.is_integer(kind.value_type) or pa.types.is_floating(kind.value_type)
    ):
        raise StoreError(f"{path}: column values holds {kind}; it must hold one list of numbers per row")
    lengths = pc.fill_null(pc.list_value_length(values), -1).to_numpy(zero_copy_only=False)
    if lengths.size and ((lengths < 0).any() or (lengths != lengths[0]).any()):
        row = int(np.flatnonzero((lengths < 0) | (lengths != lengths[0]))[0])
        raise StoreError(f"{path}: row {row} of column values is "
                         + ("empty (null)" if lengths[row] < 0 else f"{lengths[row]} long, row 0 {lengths[0]}"))  # fmt: skip
    if values.flatten().null_count:
        raise StoreError(f"{path}: column values holds a null number (every value must be a number)")
    meta = table.schema.metadata or {}
    flat = np.asarray(values.flatten().to_numpy(zero_copy_only=False))
    shape = json.loads(meta[b"embedstore.shape"]) if b"embedstore.shape" in meta else None
    data = flat.reshape(shape if shape else (table.num_rows, int(lengths[0]) if lengths.size else 0))
    if b"embedstore.dtype" in meta:
        data = data.astype(meta[b"embedstore.dtype"].decode(), copy=False)
    keys = [str(k) for k in table.column("key").to_pylist()] if with_keys else None
    bad = table.column("bad_reason").to_pylist() if "bad_reason" in table.column_names else None
    return data, keys, bad


def import_array(
    store: Store,
    dataset: str,
    model: str,
    name: str,
    path: str | Path,
    *,
    keys_file: str | Path | None = None,
    h5_dataset: str = "data",
) -> tuple[int, ...]:
    """Import a matrix as array ``dataset/model/name``; returns its shape."""
    model = stored_model_id(model)
    store.array_path(dataset, model, name)  # a bad array name is refused before anything is registered
    if name in NOT_PER_SAMPLE_ARRAYS:  # refused before the file is read: its shape would only confuse
        raise StoreError(_NOT_IMPORTABLE.format(name=name))
    if name not in PER_SAMPLE_FLOAT_ARRAYS:
        raise StoreError(f"array {name!r}: import takes {', '.join(PER_SAMPLE_FLOAT_ARRAYS)} (the arrays the analyses "
                         "read)")  # fmt: skip
    if any(c in model for c in "*?["):
        raise StoreError(f"model id {model!r} holds a glob character: import registers the id as given, so name "
                         "one model")  # fmt: skip
    if any(info.status == "complete" for info in store.list_arrays(dataset, model, name)):  # a partial one resumes
        raise StoreError(f"{name} of model {model} on dataset {dataset} is already in store {store.path}: remove it "
                         f"with `embedstore rm --dataset {dataset} --model {model} --array {name}` to import it anew")  # fmt: skip
    data, keys, bad = read_matrix(path, keys_file, h5_dataset)
    if str(data.dtype) not in ("float16", "float32", "float64", "int32", "int64", "uint8", "bool"):
        raise StoreError(f"{path} holds dtype {data.dtype}, which a store cannot keep")
    check_importable(store, model, name, path, data, keys)
    with dataset_locks(store.path, [dataset], doing="embedstore import"):
        return _write_import(store, dataset, model, name, Path(path), data, keys, bad)


def _write_import(
    store: Store, dataset: str, model: str, name: str, path: Path, data: np.ndarray, keys: list[str],
    bad: Mapping[str, str],
) -> tuple[int, ...]:  # fmt: skip
    """Register what the import needs and write the rows in the dataset's sample order (lock held).
    ``caption_emb`` rows are captions, keyed ``SAMPLE_KEY#j`` (the j-th caption of a sample, as
    export writes them), of a caption dataset the store already has."""
    known = store.query("SELECT name FROM datasets WHERE name = ?", [dataset])
    captions = name == "caption_emb"
    if captions and (not known or not store.dataset_info(dataset)["n_captions"]):
        raise StoreError(f"caption_emb rows are captions of a caption dataset, and store {store.path} has "
                         f"{'no dataset' if not known else 'no captions of dataset'} {dataset}: extract the caption "
                         "set first (its captions come from its manifest or shards)")  # fmt: skip
    if not known:
        samples = [_ImportedSample(row=i, key=k) for i, k in enumerate(keys)]
        store.register_dataset(_ImportedDataset(name=dataset, samples=samples, source=path.name))
    ids = _row_keys(store, dataset, name, 0) if captions else [str(k) for k in store.sample_table(dataset)["key"]]
    position = {k: i for i, k in enumerate(ids)}
    what = "captions (SAMPLE_KEY#j)" if captions else "samples"
    missing = [k for k in keys if k not in position]
    if missing:
        raise StoreError(f"{len(missing)} key(s) of {path} are not {what} of dataset {dataset}, e.g. {missing[0]!r}")
    if len(keys) != len(position):
        raise StoreError(f"{path} has {len(keys)} rows but dataset {dataset} has {len(position)} {what}")
    if captions:
        bad = {}  # a caption's image is what is bad, and the image's own row says so
    order = np.asarray([position[k] for k in keys])
    rows = np.empty_like(data)
    rows[order] = data
    if not store.query("SELECT model_id FROM models WHERE model_id = ?", [model]):
        store.register_model({"model_id": model, "kind": "imported", "library": "import",
                              "fingerprint": _file_hash(path)})  # fmt: skip
    # The rows' own hash: an interrupted import resumes only from the same matrix, not from another file
    # that took its name.
    content = hashlib.sha256(np.ascontiguousarray(rows).data).hexdigest()
    fingerprints = {
        "dataset": store.dataset_info(dataset)["fingerprint"],
        "model": store.model_info(model)["fingerprint"],
        "settings": hash_object({"source": "import", "file": path.name, "content_sha256": content}),
    }
    arr = store.open_array_writer(
        dataset, model, name, shape=rows.shape, dtype=str(rows.dtype), chunk_rows=IMPORT_CHUNK_ROWS,
        fingerprints=fingerprints, settings={"source": "import", "file": str(path), "content_sha256": content},
    )  # fmt: skip
    for i in arr.missing_chunks():
        start, stop = arr.chunk_bounds(i)
        arr.write_chunk(i, rows[start:stop])
    if bad:  # before the array is complete, as an extraction records its bad samples
        store.record_bad_samples(dataset, sorted((position[key], key, reason) for key, reason in bad.items()))
    store.update_array_progress(dataset, model, name)
    return tuple(rows.shape)


#: Per-sample arrays with a fixed meaning: ``[N, D]`` floating-point rows, as the analyses read them.
PER_SAMPLE_FLOAT_ARRAYS = ("image_emb", "caption_emb", "logits")
#: Arrays that are not one row per sample, so cannot be placed by sample keys.
NOT_PER_SAMPLE_ARRAYS = ("text_emb",)
_NOT_IMPORTABLE = (
    "{name} is per class and template, not one row per sample, so it cannot be imported by sample keys: "
    "`embedstore prompts add` encodes templates for an extracted model"
)


def check_importable(store: Store, model: str, name: str, path: str | Path, data: np.ndarray,
                     keys: Sequence[str]) -> None:  # fmt: skip
    """Refuse, before anything is registered, a matrix the analyses could not use: ``text_emb``
    (per class and template, not per sample); an ``image_emb``/``caption_emb``/``logits`` that is not
    a 2-D floating-point matrix; NaN or infinite values (the extractor never writes them: bad samples
    are zero rows listed in ``bad_samples``); embeddings whose width differs from the model's
    embeddings already in the store, with which zero-shot scoring or cross-dataset analyses would
    combine them. ``logits`` may be wider than ``dataset``'s classes: a 1000-way ImageNet head is scored
    on a 16-category cue-conflict set through its category mapping."""
    if name in NOT_PER_SAMPLE_ARRAYS:
        raise StoreError(_NOT_IMPORTABLE.format(name=name))
    if name in PER_SAMPLE_FLOAT_ARRAYS and (data.ndim != 2 or data.dtype.kind != "f"):
        raise StoreError(f"{path} holds a {data.ndim}-D {data.dtype} array; {name} must be a 2-D floating-point "
                         "matrix, one row per sample")  # fmt: skip
    if data.dtype.kind == "f":
        finite = np.isfinite(data.reshape(data.shape[0], -1)).all(axis=1)
        if not finite.all():
            first = int(np.flatnonzero(~finite)[0])
            raise StoreError(f"{path}: {int((~finite).sum())} row(s) hold NaN or infinite values, the first for "
                             f"sample key {keys[first]!r}")  # fmt: skip
    if name in ("image_emb", "caption_emb"):
        widths = {f"{info.name} on {info.dataset}": info.shape[-1] for info in store.list_arrays(model=model)
                  if info.name in ("image_emb", "caption_emb", "text_emb")}  # fmt: skip
        other = next(((where, w) for where, w in widths.items() if w != data.shape[1]), None)
        if other is not None:
            raise StoreError(f"{path} rows have {data.shape[1]} values but model {model}'s embeddings have "
                             f"{other[1]} ({other[0]}): import it under another model id")  # fmt: skip


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
