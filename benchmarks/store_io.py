"""Write then read a 50,000 x 512 float16 array through the store, against a raw .npy and an h5py dataset.

    python benchmarks/store_io.py [--rows 50000] [--dim 512] [--repeats 5]

Reads are timed warm (the files are in the page cache after the first read): this measures the
store's own overhead (Zarr chunk decoding, Python) against the raw formats, not the disk. Each
read is repeated and the median is reported. Goal: store read >= 0.8x the raw .npy read speed and
faster than h5py.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_info  # noqa: E402

from embedstore.extract.plan import Settings  # noqa: E402
from embedstore.store import Store  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm the page cache
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(rows: int, dim: int, repeats: int, chunk_rows: int, compression: str) -> dict:
    rng = np.random.default_rng(0)
    data = rng.standard_normal((rows, dim), dtype=np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    data = data.astype(np.float16)
    mb = data.nbytes / 1e6
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        npy = tmp / "a.npy"
        start = time.perf_counter()
        np.save(npy, data)
        out["npy_write_s"] = time.perf_counter() - start

        h5 = tmp / "a.h5"
        start = time.perf_counter()
        with h5py.File(h5, "w") as f:
            f.create_dataset("data", data=data, chunks=(min(chunk_rows, rows), dim))
        out["h5_write_s"] = time.perf_counter() - start

        store = Store.create(tmp / "store")
        fp = {"dataset": "bench", "model": "bench", "settings": "bench"}
        start = time.perf_counter()
        arr = store.open_array_writer("bench", "bench", "image_emb", shape=data.shape, dtype="float16",
                                      chunk_rows=chunk_rows, fingerprints=fp, compression=compression)  # fmt: skip
        for i in range(arr.n_chunks):
            a, b = arr.chunk_bounds(i)
            arr.write_chunk(i, data[a:b])
        store.update_array_progress("bench", "bench", "image_emb")
        out["store_write_s"] = time.perf_counter() - start

        def read_npy():
            return np.load(npy)

        def read_h5():
            with h5py.File(h5, "r") as f:
                return f["data"][...]

        reader = Store.open(tmp / "store")
        array = reader.array("bench", "bench", "image_emb")

        def read_store():
            return array.read()

        def read_store_full_api():
            return Store.open(tmp / "store").read_array("bench", "bench", "image_emb")

        assert np.array_equal(read_store(), data) and np.array_equal(read_h5(), data)
        out["npy_read_s"] = _median_seconds(read_npy, repeats)
        out["h5_read_s"] = _median_seconds(read_h5, repeats)
        out["store_read_s"] = _median_seconds(read_store, repeats)
        out["store_open_and_read_s"] = _median_seconds(read_store_full_api, repeats)
        idx = np.sort(rng.choice(rows, size=1000, replace=False))
        out["store_read_1000_random_rows_s"] = _median_seconds(lambda: array.read(idx), repeats)
        out["store_bytes_on_disk"] = sum(
            p.stat().st_size for p in (tmp / "store" / "arrays.zarr").rglob("*") if p.is_file()
        )
    out["store_read_vs_npy"] = out["npy_read_s"] / out["store_read_s"]
    out["store_read_vs_h5"] = out["h5_read_s"] / out["store_read_s"]
    out["array_mb"] = mb
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--chunk-rows", type=int, default=4096)
    parser.add_argument("--output", type=Path, default=RESULTS / "store_io.json")
    args = parser.parse_args()
    results = {}
    for compression in ("blosc-lz4", "zstd", "none"):
        results[compression] = run(args.rows, args.dim, args.repeats, args.chunk_rows, compression)
    print(
        f"{args.rows} x {args.dim} float16 ({results['none']['array_mb']:.1f} MB), warm reads, median of {args.repeats}"
    )
    print(f"{'':22}{'write s':>9}{'read s':>9}{'read MB/s':>11}{'x npy':>8}{'x h5':>7}{'disk MB':>9}")
    base = results["none"]
    print(
        f"{'raw .npy':22}{base['npy_write_s']:9.3f}{base['npy_read_s']:9.4f}{base['array_mb'] / base['npy_read_s']:11.0f}{1:8.2f}{'':>7}{base['array_mb']:9.1f}"
    )
    print(
        f"{'h5py (chunked)':22}{base['h5_write_s']:9.3f}{base['h5_read_s']:9.4f}{base['array_mb'] / base['h5_read_s']:11.0f}{base['npy_read_s'] / base['h5_read_s']:8.2f}{'':>7}"
    )
    for name, r in results.items():
        print(f"{'store ' + name:22}{r['store_write_s']:9.3f}{r['store_read_s']:9.4f}{r['array_mb'] / r['store_read_s']:11.0f}"
              f"{r['store_read_vs_npy']:8.2f}{r['store_read_vs_h5']:7.2f}{r['store_bytes_on_disk'] / 1e6:9.1f}")  # fmt: skip
    report = {"benchmark": "store_io", "rows": args.rows, "dim": args.dim, "dtype": "float16", "chunk_rows": args.chunk_rows,
              "reads": "warm (page cache), median", "repeats": args.repeats, "default_compression": Settings.compression,
              "results": results, "machine": machine_info()}  # fmt: skip
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
