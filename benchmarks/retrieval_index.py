"""Exact vs IVF vs HNSW nearest-neighbour search on random L2-normalised vectors.

For each index: build seconds, queries per second, recall@10 against exact search (the mean over
queries of |top-10 ∩ exact top-10| / 10) and index bytes, printed as a table and written with the
machine's description to ``benchmarks/results/retrieval_index.json``.

    python benchmarks/retrieval_index.py                 # 100k x 512, CPU-friendly
    # the committed 1M x 512 runs (about 8 minutes each on 2 cores; the default 4*sqrt(n) = 4000 IVF
    # cells would spend most of an hour in k-means there):
    python benchmarks/retrieval_index.py --n 1000000 --nlist 1024 --nprobe 16 64 256 \
        --hnsw-m 16 --ef-construction 40 --ef-search 64 256 [--data clustered --output ...clustered.json]

The default data, uniform random unit vectors, is the hardest case for approximate search: in 512
dimensions every point is nearly equidistant from every other, so there is no structure for IVF
cells or HNSW links to exploit and recall is a lower bound for the same parameters. ``--data
clustered`` draws points around random centres instead, closer to how embeddings of related images
group together.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embedstore.index import NNIndex, build_index
from embedstore.index.backends import faiss_gpu_count, import_faiss, torch_cuda_available

RESULTS_PATH = Path(__file__).resolve().parent / "results" / "retrieval_index.json"
_GENERATE_BLOCK_ROWS = 65536


@dataclass(frozen=True)
class Measurement:
    """One index configuration: how long it took to build and search, and how right it was."""

    index: str
    backend: str
    params: dict[str, Any]
    build_s: float
    search_s: float
    queries_per_s: float
    recall_at_10: float
    index_bytes: int


def random_unit_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    """``n`` float32 rows drawn uniformly on the unit sphere, generated a block at a time."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, _GENERATE_BLOCK_ROWS):
        block = rng.standard_normal((min(_GENERATE_BLOCK_ROWS, n - start), dim), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start : start + block.shape[0]] = block
    return out


def clustered_unit_vectors(n: int, centres: np.ndarray, spread: float, seed: int) -> np.ndarray:
    """``n`` unit rows, each a random centre plus Gaussian noise of expected norm ``spread``."""
    rng = np.random.default_rng(seed)
    dim = centres.shape[1]
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, _GENERATE_BLOCK_ROWS):
        rows = min(_GENERATE_BLOCK_ROWS, n - start)
        block = centres[rng.integers(centres.shape[0], size=rows)]
        block += (spread / np.sqrt(dim)) * rng.standard_normal((rows, dim), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start : start + rows] = block
    return out


def make_data(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray, str]:
    """Gallery, queries and a one-line description of how they were drawn."""
    if args.data == "uniform":
        gallery = random_unit_vectors(args.n, args.dim, args.seed)
        queries = random_unit_vectors(args.queries, args.dim, args.seed + 1)
        return gallery, queries, "uniform on the unit sphere (no cluster structure: the hardest case)"
    centres = random_unit_vectors(args.clusters, args.dim, args.seed + 2)
    gallery = clustered_unit_vectors(args.n, centres, args.spread, args.seed)
    queries = clustered_unit_vectors(args.queries, centres, args.spread, args.seed + 1)
    description = f"{args.clusters} random unit centres + Gaussian noise of norm {args.spread}, normalised"
    return gallery, queries, description


def recall_against(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean over rows of ``|found ∩ exact| / width``."""
    shared = (found[:, :, None] == exact[:, None, :]).any(axis=2).sum()
    return float(shared / exact.size)


def timed_search(index: NNIndex, queries: np.ndarray, k: int) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    _, ids = index.search(queries, k)
    return ids, time.perf_counter() - start


WARM_UP_QUERIES = 64


def measure(
    label: str, index: NNIndex, build_s: float, queries: np.ndarray, k: int, exact_ids: np.ndarray | None
) -> tuple[Measurement, np.ndarray]:
    """One timed search of every query, after an untimed one of the first ``WARM_UP_QUERIES`` (first-call
    set-up such as GPU library handles and top-k workspaces is not search time)."""
    index.search(queries[:WARM_UP_QUERIES], k)
    ids, search_s = timed_search(index, queries, k)
    recall = 1.0 if exact_ids is None else recall_against(ids, exact_ids)
    measurement = Measurement(
        index=label,
        backend=index.backend,
        params=index.spec.params(),
        build_s=round(build_s, 3),
        search_s=round(search_s, 4),
        queries_per_s=round(queries.shape[0] / search_s, 1),
        recall_at_10=round(recall, 4),
        index_bytes=index.nbytes,
    )
    return measurement, ids


def timed_build(vectors: np.ndarray, kind: str, **params: Any) -> tuple[NNIndex, float]:
    start = time.perf_counter()
    index = build_index(vectors, kind, **params)
    return index, time.perf_counter() - start


def machine_info() -> dict[str, Any]:
    faiss = import_faiss()
    cpu_model = ""
    if Path("/proc/cpuinfo").exists():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu": cpu_model,
        "cpu_count": os.cpu_count(),
        "memory_gib": round(memory_gib, 1),
        "numpy": np.__version__,
        "faiss": getattr(faiss, "__version__", None),
        "faiss_omp_threads": faiss.omp_get_max_threads() if faiss is not None else None,
        "faiss_gpus": faiss_gpu_count(),
        "torch_cuda": torch_cuda_available(),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    k = 10
    import_faiss()  # keep the one-off import out of the first build's time
    if torch_cuda_available():  # and the CUDA context's creation
        import torch

        torch.zeros(1, device="cuda")
    load_before = round(os.getloadavg()[0], 2)  # other processes on the machine skew timings
    gallery, queries, data_description = make_data(args)
    rows: list[Measurement] = []

    flat, build_s = timed_build(gallery, "flat")
    flat_row, exact_ids = measure("flat (exact)", flat, build_s, queries, k, None)
    rows.append(flat_row)
    del flat
    if args.numpy_exact:
        numpy_flat, build_s = timed_build(gallery, "flat", backend="numpy")
        rows.append(measure("flat (exact, numpy)", numpy_flat, build_s, queries, k, exact_ids)[0])
        del numpy_flat

    if args.flat_only:
        return _report(args, data_description, load_before, rows, k)

    ivf, build_s = timed_build(gallery, "ivf", nlist=args.nlist, seed=args.seed)
    for nprobe in args.nprobe:
        ivf.set_search_params(nprobe=min(nprobe, ivf.spec.nlist))
        rows.append(measure("ivf", ivf, build_s, queries, k, exact_ids)[0])
    del ivf

    hnsw, build_s = timed_build(gallery, "hnsw", hnsw_m=args.hnsw_m, ef_construction=args.ef_construction)
    for ef_search in args.ef_search:
        hnsw.set_search_params(ef_search=ef_search)
        rows.append(measure("hnsw", hnsw, build_s, queries, k, exact_ids)[0])
    del hnsw
    return _report(args, data_description, load_before, rows, k)


def _report(args: argparse.Namespace, data_description: str, load_before: float, rows: list[Measurement],
            k: int) -> dict[str, Any]:  # fmt: skip
    return {
        "benchmark": "retrieval_index",
        "args": {key: value for key, value in vars(args).items() if key != "output"},
        "data": args.data,
        "data_description": data_description,
        "metric": "inner product on unit vectors (cosine), float32",
        "n": args.n,
        "dim": args.dim,
        "queries": args.queries,
        "k": k,
        "seed": args.seed,
        "recall_definition": "mean over queries of |top-10 ∩ exact top-10| / 10",
        "load_average_1m_before_after": [load_before, round(os.getloadavg()[0], 2)],
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "machine": machine_info(),
        "results": [asdict(row) for row in rows],
    }


def print_table(report: dict[str, Any]) -> None:
    print(f"{report['data']}: n={report['n']:,} dim={report['dim']} queries={report['queries']:,} k={report['k']}")
    header = f"{'index':<22}{'backend':<11}{'params':<44}{'build s':>9}{'queries/s':>11}{'recall@10':>10}{'MiB':>9}"
    print(header)
    print("-" * len(header))
    for row in report["results"]:
        params = ", ".join(f"{key}={value}" for key, value in row["params"].items())
        print(
            f"{row['index']:<22}{row['backend']:<11}{params:<44}{row['build_s']:>9.1f}"
            f"{row['queries_per_s']:>11,.0f}{row['recall_at_10']:>10.3f}{row['index_bytes'] / 2**20:>9.0f}"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000, help="indexed vectors (default 100,000)")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--data", choices=("uniform", "clustered"), default="uniform")
    parser.add_argument("--clusters", type=int, default=1000, help="clustered data: number of centres")
    parser.add_argument("--spread", type=float, default=1.0, help="clustered data: noise norm around a centre")
    parser.add_argument("--nlist", type=int, default=None, help="IVF cells (default round(4*sqrt(n)))")
    parser.add_argument("--nprobe", type=int, nargs="+", default=[16, 64], help="IVF cells probed, swept")
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--ef-construction", type=int, default=100)
    parser.add_argument("--ef-search", type=int, nargs="+", default=[64, 256], help="HNSW beam width, swept")
    parser.add_argument("--numpy-exact", action="store_true", help="also time the numpy exact fallback")
    parser.add_argument("--flat-only", action="store_true", help="exact search only (e.g. a GPU box without faiss)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=RESULTS_PATH)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    report = run(args)
    print_table(report)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
