"""Zarr v3 arrays of a store: row-chunked writes with a durable done-marker per chunk.

Layout: ``ARRAYS/<dataset>/<model>/<name>`` is a Zarr v3 array whose chunks are whole rows
(``chunk_rows`` rows by every other full axis). A writer writes chunk ``i`` exactly once, as one
call, and only when the chunk's bytes are on disk (fsync'd for local folders) writes the marker
``ARRAYS/<dataset>/<model>/<name>/done/<i>`` holding the chunk's row count and CRC-32. The markers,
not the catalog, are the truth about progress: any process (a torchrun rank, a resumed run, ``ls``)
can see which chunks exist without asking rank 0. A chunk without its marker is rewritten whole.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import uuid
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numcodecs
import numcodecs.blosc
import numpy as np
import zarr
import zarr.storage
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from embedstore.errors import StoreError
from embedstore.store.crashpoints import crash_point

SUPPORTED_DTYPES = ("float16", "float32", "float64", "int32", "int64", "uint8", "bool")
MARKER_DIR = "done"
# Zarr skips chunks equal to the fill value by default; a chunk of zeros must still be written so that
# every done-marker has its chunk file behind it.
_ARRAY_CONFIG = {"write_empty_chunks": True}


def _compressors(dtype: np.dtype, compression: str) -> Any:
    """Codec pipeline tail for an array. ``"none"`` (default): raw little-endian bytes, read straight
    into the output buffer; ``"blosc-lz4"``: bit-shuffled LZ4 (float16 embeddings shrink 6-10%, byte
    shuffle gains nothing on them); ``"zstd"``: about as small, slower (benchmarks/store_io.py)."""
    if compression == "none":
        return None
    if compression == "zstd":
        return zarr.codecs.ZstdCodec(level=3)
    if compression == "blosc-lz4":
        return zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle", typesize=np.dtype(dtype).itemsize)
    raise StoreError(f"unknown compression {compression!r}: use blosc-lz4, zstd or none")


def _inside_root(path: str) -> str:
    """``path`` if it names a key below the arrays root; StoreError if it could leave it (array
    paths come from the catalog, which a shared store may carry from someone else)."""
    parts = path.split("/")
    if path.startswith("/") or "\\" in path or any(part in ("", ".", "..") for part in parts):
        raise StoreError(f"array path {path!r} would leave the arrays root; refusing to use it")
    return path


#: Requests one read keeps in flight at once against the arrays' store (markers, chunk objects).
CONCURRENT_REQUESTS = 32


async def _bounded(call: Callable[[str], Any], keys: Sequence[str]) -> list[Any]:
    """``await call(key)`` for every key, at most ``CONCURRENT_REQUESTS`` at a time, results in order."""
    gate = asyncio.Semaphore(CONCURRENT_REQUESTS)

    async def one(key: str) -> Any:
        async with gate:
            return await call(key)

    return list(await asyncio.gather(*(one(key) for key in keys)))


@dataclass(frozen=True)
class ChunkMarker:
    index: int
    rows: int
    crc32: int


class ZarrRoot:
    """The ``arrays.zarr`` root: a local folder or any fsspec URL Zarr can write."""

    def __init__(self, location: str, *, readonly: bool):
        self.location = location
        self.readonly = readonly
        if "://" in location and not location.startswith("file://"):
            try:
                self.kv = zarr.storage.FsspecStore.from_url(location, read_only=readonly)
            except (ValueError, ImportError) as exc:  # an unknown protocol, or its fsspec package missing
                raise StoreError(f"arrays location {location}: {exc}") from None
            self.local_root: Path | None = None
        else:
            path = Path(location.removeprefix("file://"))
            self.kv = zarr.storage.LocalStore(path, read_only=readonly)
            self.local_root = path

    def create_root(self) -> None:
        zarr.open_group(store=self.kv, mode="w")

    def entries(self) -> list[str]:
        """Names at the top of the root (an empty list for a location that does not exist yet)."""
        if self.local_root is not None:
            if not self.local_root.exists():
                return []
            if not self.local_root.is_dir():
                raise StoreError(f"arrays location {self.location} is a file, not a folder")
        return self.list_dir("")

    # -- key/value helpers for markers ---------------------------------------------------------------

    def put_bytes(self, key: str, data: bytes) -> None:
        sync(self.kv.set(key, default_buffer_prototype().buffer.from_bytes(data)))

    async def _get(self, key: str) -> bytes | None:
        buf = await self.kv.get(key, prototype=default_buffer_prototype())
        return None if buf is None else buf.to_bytes()

    def get_bytes(self, key: str) -> bytes | None:
        return sync(self._get(key))

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """``get_bytes`` of each key, up to ``CONCURRENT_REQUESTS`` at a time (one round trip each on an
        object store)."""
        return sync(_bounded(self._get, keys))

    def exists_many(self, keys: Sequence[str]) -> list[bool]:
        """Whether each key exists, up to ``CONCURRENT_REQUESTS`` at a time."""
        return sync(_bounded(self.kv.exists, keys))

    def list_dir(self, prefix: str) -> list[str]:
        async def collect() -> list[str]:
            return [k async for k in self.kv.list_dir(prefix)]

        return sync(collect())

    def delete_prefix(self, prefix: str) -> None:
        sync(self.kv.delete_dir(prefix))

    def fsync(self, key: str) -> None:
        """Flush one key's file to disk (local folders; object stores are durable once written)."""
        if self.local_root is None:
            return
        path = self.local_root / key
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # -- arrays --------------------------------------------------------------------------------------

    def exists(self, path: str) -> bool:
        return sync(self.kv.exists(f"{_inside_root(path)}/zarr.json"))

    def metadata_stamp(self, path: str) -> tuple[int, int, int] | None:
        """(inode, size, mtime) of a local array's metadata file: an array removed or written anew at
        the same path has another one. None for remote roots and missing arrays."""
        if self.local_root is None:
            return None
        try:
            stat = os.stat(self.local_root / _inside_root(path) / "zarr.json")
        except OSError:
            return None
        return stat.st_ino, stat.st_size, stat.st_mtime_ns

    def create_array(
        self,
        path: str,
        shape: Sequence[int],
        dtype: str,
        chunk_rows: int,
        attributes: dict,
        compression: str = "none",
    ) -> StoreArray:
        if dtype not in SUPPORTED_DTYPES:
            raise StoreError(f"unsupported dtype {dtype!r} for {path}: use one of {', '.join(SUPPORTED_DTYPES)}")
        _inside_root(path)
        shape = tuple(int(s) for s in shape)
        chunks = (max(1, min(int(chunk_rows), max(shape[0], 1))),) + shape[1:]
        arr = zarr.create_array(
            store=self.kv,
            name=path,
            shape=shape,
            chunks=chunks,
            dtype=dtype,
            compressors=_compressors(np.dtype(dtype), compression),
            fill_value=0,
            attributes=attributes,
            overwrite=True,
            config=_ARRAY_CONFIG,
        )
        return StoreArray(self, path, arr)

    def open_array(self, path: str, label: str | None = None) -> StoreArray:
        try:
            arr = zarr.open_array(
                store=self.kv, path=_inside_root(path), mode="r" if self.readonly else "r+", config=_ARRAY_CONFIG
            )
        except (FileNotFoundError, KeyError, zarr.errors.ArrayNotFoundError) as exc:  # type: ignore[attr-defined]
            raise StoreError(f"array {path} does not exist in {self.location}") from exc
        return StoreArray(self, path, arr, label)

    def delete_array(self, path: str) -> None:
        self.delete_prefix(_inside_root(path))

    def _keys_under(self, path: str) -> list[str]:
        prefix = _inside_root(path) + "/"

        async def collect() -> list[str]:
            return [k async for k in self.kv.list_prefix(prefix)]

        return sync(collect())

    def tree_bytes(self, path: str) -> int:
        """Bytes stored under an array's path (metadata, chunks and markers)."""
        return sum(sync(self.kv.getsize(key)) for key in self._keys_under(path))

    def copy_tree_from(self, other: ZarrRoot, source_path: str, path: str) -> None:
        """Copy every key under ``source_path`` of ``other`` to ``path`` here, byte for byte (an
        array with its chunk markers), chunks and markers before the array's ``zarr.json``, each made
        durable: a copy cut short has no metadata and reads as no array."""
        keys = other._keys_under(source_path)
        source_prefix, prefix = _inside_root(source_path), _inside_root(path)
        metadata = f"{source_prefix}/zarr.json"
        if metadata not in keys:
            raise StoreError(f"array {source_path} does not exist in {other.location}")
        parts = prefix.split("/")
        for depth in range(1, len(parts)):  # the parent groups, as creating an array makes them
            zarr.open_group(store=self.kv, path="/".join(parts[:depth]), mode="a")
        for key in sorted(keys, key=lambda k: k == metadata):
            target = prefix + key[len(source_prefix) :]
            data = other.get_bytes(key)
            if data is None:
                raise StoreError(f"array {source_path} of {other.location} lost {key} while it was being copied")
            self.put_bytes(target, data)
            self.fsync(target)


class StoreArray:
    """One row-chunked array: chunk-exact writes, marker bookkeeping, numpy reads."""

    def __init__(self, root: ZarrRoot, path: str, arr: zarr.Array, label: str | None = None):
        self.root = root
        self.path = path
        self.zarr = arr
        self.label = label or f"array {path}"  # how errors name it: the store passes "NAME of model M on dataset D"
        # Set by the store for an array its catalog lists as complete: every chunk is then done, and one
        # that has lost its file and marker (removed or rewritten by another process meanwhile) is an
        # error, not a chunk not written yet.
        self.complete = False

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.zarr.shape)

    @property
    def dtype(self) -> np.dtype:
        return self.zarr.dtype

    @property
    def chunk_rows(self) -> int:
        return int(self.zarr.chunks[0])

    @property
    def n_chunks(self) -> int:
        return -(-self.shape[0] // self.chunk_rows) if self.shape[0] else 0

    @property
    def attrs(self) -> dict:
        return dict(self.zarr.attrs)

    def chunk_bounds(self, index: int) -> tuple[int, int]:
        if not 0 <= index < self.n_chunks:
            raise StoreError(f"chunk {index} out of range for {self.path} ({self.n_chunks} chunks)")
        start = index * self.chunk_rows
        return start, min(start + self.chunk_rows, self.shape[0])

    # -- writing -------------------------------------------------------------------------------------

    def write_chunk(self, index: int, data: np.ndarray, extra: dict[str, Any] | None = None) -> ChunkMarker:
        """Write chunk ``index`` whole, make it durable, then mark it done. Rewriting a done chunk is
        an error: every chunk is written by exactly one writer, once. ``extra`` (JSON) is kept in
        the marker, e.g. the chunk's bad rows. A failed write (disk full, ...) raises StoreError
        and leaves the chunk unmarked, to be rewritten whole by the next run."""
        start, stop = self.chunk_bounds(index)
        expected = (stop - start,) + self.shape[1:]
        if tuple(data.shape) != expected:
            raise StoreError(f"chunk {index} of {self.path} needs shape {expected}, got {tuple(data.shape)}")
        if self.is_done(index):
            raise StoreError(f"chunk {index} of {self.path} is already written")
        data = np.ascontiguousarray(data, dtype=self.dtype)
        marker = ChunkMarker(index, stop - start, zlib.crc32(data.tobytes()))
        key = f"{self.path}/{MARKER_DIR}/{index}"
        try:
            self.zarr[start:stop] = data
            coords = (index,) + (0,) * (len(self.shape) - 1)
            self.root.fsync(f"{self.path}/{self.zarr.metadata.encode_chunk_key(coords)}")
            crash_point("chunk-write")
            self.root.put_bytes(key, json.dumps({"rows": marker.rows, "crc32": marker.crc32, **(extra or {})}).encode())
            self.root.fsync(key)
        except OSError as exc:
            raise StoreError(
                f"cannot write chunk {index} of {self.path} in {self.root.location}: {exc.strerror or exc}; "
                f"the chunk stays unmarked: free the space (or fix the location) and run again to resume"
            ) from exc
        return marker

    def is_done(self, index: int) -> bool:
        return self._read_marker(index) is not None

    def chunk_crcs(self) -> list[int | None]:
        """The CRC-32 each chunk's done-marker recorded (None for a chunk not done): two arrays with the
        same chunking and the same CRCs hold the same bytes, as far as CRC-32 tells."""
        return [None if marker is None else marker.crc32 for marker in map(self._read_marker, range(self.n_chunks))]

    def _read_marker(self, index: int) -> ChunkMarker | None:
        return _parse_marker(index, self.root.get_bytes(f"{self.path}/{MARKER_DIR}/{index}"))

    def marker_extras(self, key: str) -> dict[int, Any]:
        """``{chunk: marker[key]}`` for the done chunks whose marker holds ``key``."""
        out = {}
        for index, raw in self._done_markers().items():
            info = json.loads(raw)
            if key in info:
                out[index] = info[key]
        return out

    def done_chunks(self) -> set[int]:
        return set(self._done_markers())

    def _done_markers(self) -> dict[int, bytes]:
        """``{chunk: marker bytes}`` of the done chunks, the markers read concurrently (`ZarrRoot.get_many`:
        300 local markers in 53-105 ms against 155-195 ms one by one)."""
        names = [n for n in self.root.list_dir(f"{self.path}/{MARKER_DIR}") if n.isdigit() and int(n) < self.n_chunks]
        raws = self.root.get_many([f"{self.path}/{MARKER_DIR}/{name}" for name in names])
        return {int(n): raw for n, raw in zip(names, raws, strict=True) if _parse_marker(int(n), raw) is not None}

    def missing_chunks(self) -> list[int]:
        done = self.done_chunks()
        return [i for i in range(self.n_chunks) if i not in done]

    def rows_done(self) -> int:
        done = self.done_chunks()
        return sum(b - a for a, b in (self.chunk_bounds(i) for i in done))

    def verify_chunk(self, index: int) -> bool:
        """True when chunk ``index`` is done and reads back with the CRC its marker recorded."""
        marker = self._read_marker(index)
        if marker is None:
            return False
        start, stop = self.chunk_bounds(index)
        try:
            data = np.ascontiguousarray(self.read(slice(start, stop)))
        except StoreError:
            return False
        except (RuntimeError, ValueError, TypeError):  # through Zarr (remote, other codecs): a damaged chunk
            return False
        return zlib.crc32(data.tobytes()) == marker.crc32

    def damaged(self, index: int, what: str) -> StoreError:
        """The error for a done chunk that cannot be read back as written."""
        return self._damaged(f"chunk {index} is marked done but {what} (a copy cut short?)")

    def _damaged(self, problem: str) -> StoreError:
        return StoreError(
            f"{self.label} is damaged: {problem}; `embedstore verify` checks every chunk; remove the array with "
            "`embedstore rm` and extract it again"
        )

    def _unreadable_chunk(self, index: int, what: str) -> StoreError | None:
        """The error for chunk ``index`` that cannot be read (``what``: why), or None when the chunk is
        not written yet (or being written) and reads as zeros."""
        if self.is_done(index):
            return self.damaged(index, what)
        if self.complete:
            return self._damaged(
                f"chunk {index} has lost its done-marker and {what.removeprefix('its ')} (was the array "
                f"removed or rewritten while it was read?)"
            )
        return None

    def _chunk_key(self, index: int) -> str:
        return self.zarr.metadata.encode_chunk_key((index,) + (0,) * (len(self.shape) - 1))

    def _direct_codec(self) -> Callable[[bytes, np.ndarray], None] | None | str:
        """How ``_read_direct`` decodes a chunk file into the output buffer: ``"raw"`` for plain
        little-endian bytes (read straight into the output), a decoder for Blosc or Zstd, or None
        for "let Zarr read it" (remote stores, other codecs)."""
        if self.root.local_root is None:
            return None
        codecs = self.zarr.metadata.codecs
        if not codecs or type(codecs[0]).__name__ != "BytesCodec" or np.dtype(self.dtype).byteorder == ">":
            return None
        tail = codecs[1:]
        if not tail:
            return "raw"
        if len(tail) == 1 and type(tail[0]).__name__ == "BloscCodec":
            return _blosc_decompress
        if len(tail) == 1 and type(tail[0]).__name__ == "ZstdCodec":
            zstd = numcodecs.Zstd()
            return lambda raw, out: zstd.decode(raw, out)
        return None

    def _read_direct(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` decoded chunk by chunk into one output array, chunks in parallel
        threads where there are cores to spare (file reads and decompression release the GIL).
        Chunks not written yet read as zeros; a done chunk whose file is missing, short or does not
        decode is a StoreError naming it (`damaged`), never zeros or stale bytes."""
        decode = self._direct_codec()
        assert decode is not None and self.root.local_root is not None
        out = np.empty((stop - start,) + self.shape[1:], dtype=self.dtype)
        rows, base = self.chunk_rows, self.root.local_root / self.path
        row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        first, last = start // rows, (stop - 1) // rows if stop > start else start // rows - 1

        def load(index: int) -> None:
            a = index * rows
            lo, hi = max(a, start), min(a + rows, self.shape[0], stop)
            key = self._chunk_key(index)
            target = out[lo - start : hi - start]

            def unreadable(what: str) -> None:
                """A done chunk that cannot be read is damaged; one not written yet (or being written) is zeros."""
                error = self._unreadable_chunk(index, what)
                if error is not None:
                    raise error
                target[...] = 0

            try:
                with open(base / key, "rb", buffering=0) as f:
                    if decode == "raw":
                        # Through a reused buffer: the kernel's copy into fresh output pages was
                        # slower than a copy into a warm buffer plus numpy's copy out (12-13 vs
                        # 15-16 ms for 51 MB warm on 2 cores).
                        f.seek((lo - a) * row_bytes)
                        scratch = _scratch(target.nbytes)
                        got = _read_into(f, memoryview(scratch)[: target.nbytes])
                        if got != target.nbytes:
                            unreadable(f"its file {key} ends {target.nbytes - got} bytes short")
                            return
                        target.reshape(-1).view(np.uint8)[...] = scratch[: target.nbytes]
                        return
                    raw = f.read()
            except FileNotFoundError:
                unreadable(f"its file {key} is missing")  # every done chunk has its file (write_empty_chunks)
                return
            try:
                if lo == a and hi == a + rows:  # the whole chunk lands in the output
                    decode(raw, target)
                else:
                    whole = np.empty((rows,) + self.shape[1:], self.dtype)
                    decode(raw, whole)
                    target[...] = whole[lo - a : hi - a]
            except (RuntimeError, ValueError, TypeError) as exc:  # numcodecs' errors on a damaged stream
                unreadable(f"its file {key} does not decode ({exc})")

        indices = range(first, last + 1)
        # Threads pay off only with cores to spare: on 2 cores a warm 51 MB read took 16 ms in one
        # thread and 20-24 ms in a pool (benchmarks/store_io.py).
        threads = min(8, (os.cpu_count() or 1) - 1, len(indices))
        if threads <= 1:
            for index in indices:
                load(index)
        else:
            with ThreadPoolExecutor(max_workers=threads) as pool:
                list(pool.map(load, indices))
        return out

    def to_dask(self) -> Any:
        """The array as a lazy ``dask.array.Array`` with one block per chunk of rows, for analyses
        over arrays larger than memory (needs ``dask[array]``, imported only here). Each block is read
        by `read`, so a damaged or missing chunk is refused there as in an eager read, never zeros."""
        try:
            import dask
            import dask.array
        except ImportError:
            raise StoreError("reading arrays as dask arrays needs dask: pip install 'dask[array]'") from None
        blocks, token = [], uuid.uuid4().hex  # block keys unique to this call
        for index in range(self.n_chunks):
            start, stop = self.chunk_bounds(index)
            block = dask.delayed(self.read)(slice(start, stop), dask_key_name=f"embedstore-{token}-{index}")
            blocks.append(dask.array.from_delayed(block, shape=(stop - start, *self.shape[1:]), dtype=self.dtype))
        if not blocks:
            return dask.array.zeros(self.shape, dtype=self.dtype)
        return dask.array.concatenate(blocks, axis=0)

    def resize_rows(self, rows: int) -> None:
        self.zarr.resize((rows,) + self.shape[1:])

    def set_attrs(self, **attrs: Any) -> None:
        self.zarr.attrs.update(attrs)

    # -- reading -------------------------------------------------------------------------------------

    def read(self, rows: slice | Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """Rows as numpy: all (``None``), a slice, or an index list (only the chunks it touches are read).

        Local arrays are read by `_read_direct`, which refuses a damaged chunk; through Zarr (remote
        locations, big-endian dtypes, codecs of other writers) a chunk that does not decode is refused
        too, and so is a done chunk whose file is missing (Zarr would read it as zeros)."""
        if rows is None:
            rows = slice(None)
        direct = self._direct_codec() is not None
        if isinstance(rows, slice):
            start, stop, step = rows.indices(self.shape[0])
            if not direct:
                touched = np.unique(np.arange(start, stop, step) // self.chunk_rows).tolist()
                return self._through_zarr(lambda: self.zarr[rows], touched)
            if step == 1:
                return self._read_direct(start, max(start, stop))
            rows = np.arange(start, stop, step)
        index = np.asarray(rows, dtype=np.int64)
        if index.ndim != 1:
            raise StoreError(f"row index for {self.path} must be one-dimensional")
        if index.size == 0:
            return np.empty((0,) + self.shape[1:], dtype=self.dtype)
        lo, hi = int(index.min()), int(index.max()) + 1
        if lo < 0 or hi > self.shape[0]:
            raise StoreError(f"row index out of range for {self.path} with {self.shape[0]} rows")
        if not direct:
            return self._through_zarr(
                lambda: self.zarr.get_orthogonal_selection((index,) + (slice(None),) * (len(self.shape) - 1)),
                np.unique(index // self.chunk_rows).tolist(),
            )
        if hi - lo <= 2 * index.size:
            # Mostly contiguous rows (all but a few bad samples, say): reading the span and picking
            # rows from it took 1.5 ms for 5,000 x 512 float16 against 13.5 ms through Zarr's
            # orthogonal selection.
            span = self._read_direct(lo, hi)
            return span if hi - lo == index.size and np.array_equal(index, np.arange(lo, hi)) else span[index - lo]
        return self._read_scattered(index)

    def _read_scattered(self, index: np.ndarray) -> np.ndarray:
        """Rows ``index`` (any order, repeats allowed), each touched chunk read over the span of its rows."""
        out = np.empty((index.size,) + self.shape[1:], dtype=self.dtype)
        order = np.argsort(index // self.chunk_rows, kind="stable")
        chunk_of = index[order] // self.chunk_rows
        for group in np.split(order, np.flatnonzero(np.diff(chunk_of)) + 1):
            rows = index[group]
            lo = int(rows.min())
            out[group] = self._read_direct(lo, int(rows.max()) + 1)[rows - lo]
        return out

    def _through_zarr(self, read: Callable[[], np.ndarray], chunks: Sequence[int]) -> np.ndarray:
        """``read()`` through Zarr, which reads a missing chunk file as zeros: afterwards each chunk in
        ``chunks`` that was done (every one, in a complete array) must still have its file."""
        if self.complete:
            expected = list(chunks)
        else:
            markers = self.root.get_many([f"{self.path}/{MARKER_DIR}/{c}" for c in chunks])
            expected = [c for c, raw in zip(chunks, markers, strict=True) if _parse_marker(c, raw) is not None]
        try:
            out = read()
        except (RuntimeError, ValueError, TypeError) as exc:  # a chunk that does not decode
            raise self._damaged(f"a chunk does not decode ({exc})") from None
        keys = [self._chunk_key(index) for index in expected]
        found = self.root.exists_many([f"{self.path}/{key}" for key in keys])
        for index, key, present in zip(expected, keys, found, strict=True):
            if not present:
                error = self._unreadable_chunk(index, f"its file {key} is missing")
                raise error if error is not None else self.damaged(index, f"its file {key} vanished while it was read")
        return out


def _parse_marker(index: int, raw: bytes | None) -> ChunkMarker | None:
    """A chunk's done-marker from its bytes; None when absent or cut short by a crash (the chunk is
    then rewritten)."""
    if not raw:
        return None
    try:
        info = json.loads(raw)
        return ChunkMarker(index, int(info["rows"]), int(info["crc32"]))
    except (ValueError, KeyError):
        return None


def _read_into(f: Any, buffer: memoryview) -> int:
    """Fill ``buffer`` from ``f``, calling ``readinto`` until it is full or the file ends (one call may
    return less, e.g. beyond 2 GiB on Linux); the number of bytes read."""
    done = 0
    while done < len(buffer):
        got = f.readinto(buffer[done:])
        if not got:
            break
        done += got
    return done


def _blosc_decompress(raw: bytes, out: np.ndarray) -> None:
    """Blosc-decompress ``raw`` into ``out`` after checking the sizes its header records: Blosc
    decompresses a stream cut short without complaint, into garbage."""
    if len(raw) < 16:
        raise ValueError(f"{len(raw)} bytes, shorter than a Blosc header")
    nbytes, _blocksize, cbytes = np.frombuffer(raw[4:16], dtype="<u4")
    if cbytes != len(raw) or nbytes != out.nbytes:
        raise ValueError(f"{len(raw)} bytes where the Blosc header records {cbytes} (for {nbytes} decompressed)")
    numcodecs.blosc.decompress(raw, out)


_SCRATCH = threading.local()


SCRATCH_KEPT_BYTES = 64 * 2**20


def _scratch(nbytes: int) -> np.ndarray:
    """A per-thread byte buffer of at least ``nbytes``, kept between reads up to ``SCRATCH_KEPT_BYTES``."""
    buffer = getattr(_SCRATCH, "buffer", None)
    if buffer is not None and buffer.size >= nbytes:
        return buffer
    buffer = np.empty(nbytes, dtype=np.uint8)
    if nbytes <= SCRATCH_KEPT_BYTES:
        _SCRATCH.buffer = buffer
    return buffer
