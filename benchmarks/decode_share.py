"""The GPU decode path's throughput: the GPU JPEG decoder alone, and ViT-B-32 end to end as workers and
the CPU decode share (``--cpu-decode-share``) grow.

    python benchmarks/decode_share.py --device cuda --n 8192 --copies 4     # H200: ~2 min (8 configs)
    python benchmarks/decode_share.py --device cpu --n 32 --copies 2 --configs 0:0:16,0:0.5:16   # smoke

Why: on the GPU path one decoding thread calls torchvision's batched ``decode_jpeg(device="cuda")``,
which holds a process-wide lock and blocks until its batch is decoded, so that call's rate caps the
pass. ``--cpu-decode-share S`` leaves S of the rows (a fixed, evenly spread set: ``reader.cpu_decoded``)
to PIL in the DataLoader workers, whose cores are otherwise mostly idle, as DALI's ``hw_decoder_load``
splits a batch between the hardware decoder and the CPU.

Data: ``benchmarks/extract.py``'s synthetic photo-like 500x375 JPEGs (~100 KB); ``--copies K`` links each
rendered file K times under other names (decoding cost is per file; rendering is what is saved), so
that the start-up latency (workers starting, the first batch) weighs on the rate as it would on a
real dataset rather than on a few-second pass.

Measured:

- **gpu decoder alone**: ``decode_jpegs`` on batches of 256/512/1024 files already in memory, warm,
  synchronised after each batch: ms per image and the images/s that one decoding thread can reach.
- **pil decode**: PIL decode of one file to RGB, one process, one thread: ms per image, the cost a
  worker pays for each CPU-decoded row.
- **end to end** per config ``WORKERS:SHARE:BATCH``: ``extract.end_to_end`` (``run_extraction`` into a new
  store, the pass instrumented as there): images/s over the pass and from the first batch on, and the
  main thread's split. Each config builds its model again (~6 s) and runs once, after a warm-up pass
  on 4,096 of the images (recorded apart: a process's first pass pays one-off costs, which made the
  same config 8,050 then 10,331 img/s on an H200 before the warm-up existed).

Writes ``results/decode_share_<gpu>.json`` (``decode_share_cpu.json`` on the CPU), updated after each
config, with the best config against the 10,000 img/s end-to-end target for ViT-B-32.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_info  # noqa: E402
from extract import (  # noqa: E402
    DATA_CONTENT,
    E2E_TARGET_IMAGES_PER_S,
    RESULTS,
    VIT_B_32,
    _gpu_slug,
    _sync,
    attempt,
    end_to_end,
    subset_folder,
    write_image_folder,
)

from embedstore.extract import runner  # noqa: E402
from embedstore.extract.batched import decode_jpegs  # noqa: E402
from embedstore.extract.decode import DecodeOptions, decode_rgb  # noqa: E402
from embedstore.extract.distributed import Ranks  # noqa: E402
from embedstore.extract.plan import Settings  # noqa: E402
from embedstore.sources import open_dataset  # noqa: E402

DEFAULT_CONFIGS = "4:0:256,6:0:256,8:0:256,10:0:256,12:0:256,8:0:512,8:0.1:256,12:0.2:256"
DECODER_BATCHES = (256, 512, 1024)


def parse_configs(text: str) -> list[dict[str, Any]]:
    """``W:S:B,...`` -> [{"workers": W, "cpu_decode_share": S, "batch_size": B}, ...] (W may be ``auto``),
    each checked as the extractor checks its settings."""
    configs = []
    for part in text.split(","):
        try:
            workers, share, batch = part.split(":")
            config = {"workers": workers if workers == "auto" else int(workers), "cpu_decode_share": float(share),
                      "batch_size": int(batch)}  # fmt: skip
        except ValueError:
            raise SystemExit(f"--configs: {part!r} is not WORKERS:SHARE:BATCH (e.g. 12:0.3:256)") from None
        Settings(**config)
        configs.append(config)
    return configs


def link_copies(root: Path, copies: int) -> int:
    """Hard-link every ``root/<class>/<name>.jpg`` ``copies - 1`` more times; the image count after."""
    files = sorted(root.glob("*/*.jpg"))
    for path in files:
        for k in range(1, copies):
            os.link(path, path.with_name(f"{path.stem}_c{k}.jpg"))
    return len(files) * copies


def gpu_decoder_alone(files: list[bytes], device: torch.device) -> list[dict[str, Any]]:
    """``decode_jpegs`` over ``files`` in batches of each size, after one warm-up batch, synchronised."""
    rows = []
    for batch in DECODER_BATCHES:
        groups = [files[a : a + batch] for a in range(0, len(files), batch)]
        decode_jpegs(groups[0], device)
        _sync(device)
        start = time.perf_counter()
        for group in groups:
            decode_jpegs(group, device)
            _sync(device)
        seconds = time.perf_counter() - start
        rows.append({"batch": batch, "images": len(files), "ms_per_image": round(1e3 * seconds / len(files), 4),
                     "images_per_s": round(len(files) / seconds, 1)})  # fmt: skip
    return rows


def pil_decode_ms(files: list[bytes]) -> float:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.perf_counter()
        for data in files:
            decode_rgb(data, DecodeOptions())
        return round(1e3 * (time.perf_counter() - start) / len(files), 3)
    finally:
        torch.set_num_threads(threads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=8192, help="distinct images rendered")
    parser.add_argument("--copies", type=int, default=4, help="times each rendered file is linked (dataset n*copies)")
    parser.add_argument("--configs", default=DEFAULT_CONFIGS, help="WORKERS:SHARE:BATCH,... [%(default)s]")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore", message="This DataLoader will create")
    configs = parse_configs(args.configs)
    device = torch.device(args.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", 0)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    output = args.output or RESULTS / (f"decode_share_{_gpu_slug(gpu)}.json" if gpu else "decode_share_cpu.json")
    started = time.perf_counter()
    report: dict[str, Any] = {"benchmark": "decode_share", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                              "complete": False, "device": str(device), "gpu": gpu, "cpu_count": os.cpu_count(),
                              "model": VIT_B_32, "decode": "gpu", "precision": "auto (bf16 on a GPU)"}  # fmt: skip

    def save(**sections: Any) -> None:
        report.update(sections, total_s=round(time.perf_counter() - started, 1))
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps({**report, "machine": machine_info()}, indent=2) + "\n")

    with tempfile.TemporaryDirectory(prefix="embedstore-decode-share-") as tmp:
        root = Path(tmp) / "images"
        data = write_image_folder(root, args.n, 0, processes=os.cpu_count() or 1)
        images = link_copies(root, args.copies)
        data.update(copies=args.copies, dataset_images=images, content=DATA_CONTENT)
        print(f"{args.n} JPEGs x {args.copies} links = {images} images, mean {data['mean_kb']} KB, "
              f"rendered in {data['render_s']} s; device {device}")  # fmt: skip
        dataset = open_dataset("bench", f"imagefolder:{root}")
        files = [s.data for s in dataset.iter_encoded(0, min(len(dataset), 4096))]
        decoder = attempt("gpu decoder alone", lambda files=files: {"batches": gpu_decoder_alone(files, device)})
        pil_ms = pil_decode_ms(files[:256])
        del files
        print("\ngpu decoder alone (one thread, synchronised per batch)")
        for row in decoder.get("batches", []):
            print(f"  batch {row['batch']:>5}: {row['ms_per_image']:.4f} ms/img  {row['images_per_s']:>9,.0f} img/s")
        print(f"pil decode, one core: {pil_ms} ms/img ({1e3 / pil_ms:,.0f} img/s per worker)\n")
        save(data=data, gpu_decoder_alone=decoder, pil_decode_ms_per_image=pil_ms)

        # a process's first pass pays one-off costs (CUDA kernels loaded on first use, pinned-memory and
        # decoder buffers growing): measured on its own, so that the configs compare warm passes
        first = configs[0]
        warm_up = attempt("warm-up pass", lambda: end_to_end(
            Path(tmp) / "store-warm-up", [VIT_B_32], f"bench=imagefolder:{subset_folder(root, Path(tmp) / 'warm', 4096)}",
            {"device": str(device), "decode": "gpu", "chunk_rows": 4096, **first}))  # fmt: skip
        if "images_per_s" in warm_up:
            print(f"warm-up pass (the process's first; config {first}, {warm_up['images']} images): "
                  f"{warm_up['images_per_s']:,.0f} img/s, first batch after {warm_up['first_batch_s']:.2f} s\n")  # fmt: skip
        save(warm_up={**first, **warm_up})
        print(f"{'workers':>7} {'share':>6} {'batch':>6} {'img/s':>9} {'steady':>9} {'first s':>8}   main thread")
        runs = []
        for i, config in enumerate(configs):
            settings = {"device": str(device), "decode": "gpu", "chunk_rows": 4096, **config}
            result = attempt(f"config {config}", lambda settings=settings, i=i: end_to_end(
                Path(tmp) / f"store-{i}", [VIT_B_32], f"bench=imagefolder:{root}", settings))  # fmt: skip
            resolved = Settings(workers=config["workers"]).resolved_workers("gpu", runner.cores_per_rank(Ranks()))
            runs.append({**config, "workers_resolved": resolved, **result})
            if "images_per_s" in result:
                split = ", ".join(f"{k} {v:.2f}s" for k, v in result["main_thread_s"].items())
                print(f"{resolved:>7} {config['cpu_decode_share']:>6} {config['batch_size']:>6} "
                      f"{result['images_per_s']:>9,.0f} {result['steady_images_per_s']:>9,.0f} "
                      f"{result['first_batch_s']:>8.2f}   {split}")  # fmt: skip
            save(end_to_end=runs)
    measured = [r for r in runs if "images_per_s" in r]
    best = max(measured, key=lambda r: r["images_per_s"], default=None)
    target = {"target": f">= {E2E_TARGET_IMAGES_PER_S:,} img/s end to end (ViT-B-32, H200-class GPU)",
              "best": None if best is None else {k: best[k] for k in ("workers", "cpu_decode_share", "batch_size",
                                                                       "images_per_s", "steady_images_per_s")},
              "status": ("not measurable here (no GPU)" if gpu is None else "no config ran" if best is None
                         else "met" if best["images_per_s"] >= E2E_TARGET_IMAGES_PER_S else "missed")}  # fmt: skip
    save(end_to_end=runs, target=target, complete=True)
    print(f"\nbest: {target['best']}; target {target['status']}\nwrote {output}")


if __name__ == "__main__":
    main()
