"""Every analysis command at study scale, from a synthetic store built without any encoder.

The store mimics a robustness study's shape (Tu et al. evaluate 84 zero-shot CLIP, 44 fine-tuned
CLIP and 127 ImageNet models): ``--models`` models, half zero-shot CLIP (``image_emb`` + ``text_emb``
[C, T, D]), the rest classifiers (``logits`` + ``image_emb``), a third of them labelled fine-tuned
CLIP. Datasets (100 classes unless said): ``in-val`` (5,000 rows, ID), ``in-v2`` (3,000), ``in-r``
(3,000), ``in-sketch`` (2,000), ``in-a`` (2,000), ``ood-tex`` (2,000, unlabelled OOD),
``cue-conflict`` (1,280 images, 16 categories, shape/texture annotations) and ``coco-cap`` (1,000
images x 5 captions; CLIP models only). D = 512, T = 8 templates, float16, 4,096 rows a chunk (the
extractor's default). Embeddings are class prototypes plus noise whose strength depends on a drawn
model quality and on the dataset's shift (CLIP degrades less under shift), so every analysis has
something to find; the numbers themselves mean nothing.

Each command runs as a user runs it (``embedstore ...`` in a fresh process, start-up included) and
its wall time is taken (effective robustness needs at least 3 ImageNet classifiers: ``--models``
>= 12). Run: ``python benchmarks/study_scale.py --models 150`` (``--store DIR`` keeps
and reuses the store; ``--only 'eval zeroshot' --only 'eval ood'`` runs some commands). Writes
``benchmarks/results/study_scale.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _machine import machine_info

from embedstore.sources.base import Dataset, Sample
from embedstore.store import Store

RESULTS = Path(__file__).resolve().parent / "results" / "study_scale.json"
D, T, C, CHUNK = 512, 8, 100, 4096
CLASSIFICATION = {  # name: (rows, how much of the signal a CLIP model keeps, how much a classifier keeps)
    "in-val": (5000, 1.00, 1.00),
    "in-v2": (3000, 0.90, 0.85),
    "in-r": (3000, 0.75, 0.45),
    "in-sketch": (2000, 0.65, 0.40),
    "in-a": (2000, 0.45, 0.20),
}
OOD, OOD_N = "ood-tex", 2000
CUE, CUE_N, CUE_C = "cue-conflict", 1280, 16
CAP, CAP_N, CAP_K = "coco-cap", 1000, 5
TEMPLATES = [f"template {i}: a photo of a {{c}}." for i in range(T)]
SHIFTS = ["in-v2", "in-r", "in-sketch", "in-a"]


def commands(report_dir: Path, models: list[str]) -> dict[str, list[str]]:
    """The timed commands (argv after ``embedstore``), each over every model unless said."""
    shifted = [flag for d in SHIFTS for flag in ("--shifted", d)]
    evaluated = [flag for d in SHIFTS for flag in ("--dataset", d)]
    probed = [m for m in models if m.startswith("clip:")][:3]
    probed += [
        next(m for m in models if m.startswith(p)) for p in ("ft:", "timm:") if any(m.startswith(p) for m in models)
    ]
    reference = ["--reference", "group_label = 'ImageNet classifier'"]
    return {
        "ls": ["ls"],
        "eval zeroshot": "eval zeroshot --model * --dataset *".split(),
        "eval calibration": "eval calibration --model * --calibrate-on in-val".split() + evaluated,
        "eval ood": f"eval ood --model * --id in-val --ood {OOD} --score mcm --score energy".split(),
        "eval robustness": "eval robustness --model * --id in-val".split() + shifted + reference,
        "prompts ablate": "prompts ablate --model clip:* --dataset in-val".split(),
        "eval shape-bias": f"eval shape-bias --model * --dataset {CUE}".split(),
        "eval retrieval": f"eval retrieval --model clip:* --dataset {CAP}".split(),
        f"eval probe ({len(probed)} models)": [
            "eval",
            "probe",
            *[flag for m in probed for flag in ("--model", m)],
            *"--train in-val --eval in-v2 --eval in-r".split(),
        ],  # fmt: skip
        "report": ["report", "--out", str(report_dir)],
        "report (again, figures reused)": ["report", "--out", str(report_dir)],
        "gc --dry-run": ["gc", "--dry-run"],
    }


class RowsOnly:
    """A dataset known by its catalog rows only: no analysis reads an image."""

    def __init__(self, name: str):
        self.name = name

    def iter_encoded(self, samples, start, stop):
        raise AssertionError("no image is read by an analysis")

    def content_stamps(self, samples):
        return [None] * len(samples)

    def identity(self):
        return {"rows-only synthetic dataset": self.name}


def register(store: Store, name: str, classnames, labels, *, task="classification", kind="manifest",
             captions=None, annotations=None) -> None:  # fmt: skip
    samples = tuple(
        Sample(row=i, key=f"{name}-{i:05d}", label=None if label is None else int(label), locator=f"{name}/{i}",
               captions=tuple(captions[i]) if captions else (), annotations=annotations[i] if annotations else {})
        for i, label in enumerate(labels)
    )  # fmt: skip
    store.register_dataset(Dataset(name=name, kind=kind, spec=f"synthetic:{name}", root=None, samples=samples,
                                   classnames=classnames, templates=list(TEMPLATES), task=task, class_subset=None,
                                   storage=RowsOnly(name)))  # fmt: skip


def put(store: Store, dataset: str, model: str, name: str, data: np.ndarray, fingerprints: dict) -> None:
    array = store.open_array_writer(dataset, model, name, shape=data.shape, dtype=str(data.dtype),
                                    chunk_rows=CHUNK, fingerprints=fingerprints)  # fmt: skip
    for i in range(array.n_chunks):
        a, b = array.chunk_bounds(i)
        array.write_chunk(i, data[a:b])
    store.update_array_progress(dataset, model, name)


def put_float16(store: Store, dataset_fp: dict, model: str, dataset: str, name: str, data: np.ndarray) -> None:
    fingerprints = {"dataset": dataset_fp[dataset], "model": f"synthetic-{model}", "settings": "synthetic"}
    put(store, dataset, model, name, data.astype(np.float16), fingerprints)


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def build_store(path: Path, n_models: int, seed: int = 0) -> float:
    """Write the synthetic store (module doc); returns the seconds it took."""
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    store = Store.create(path)
    protos = unit(rng.standard_normal((C, D), dtype=np.float32))
    cue_protos = unit(rng.standard_normal((CUE_C, D), dtype=np.float32))
    caption_protos = unit(rng.standard_normal((CAP_N, D), dtype=np.float32))
    classnames, cue_names = [f"class{c:03d}" for c in range(C)], [f"cat{c:02d}" for c in range(CUE_C)]
    labels = {}
    with store.session():
        for name, (n, _, _) in CLASSIFICATION.items():
            labels[name] = rng.integers(0, C, n)
            register(store, name, classnames, labels[name])
        register(store, OOD, classnames, [None] * OOD_N)
        shape = rng.integers(0, CUE_C, CUE_N)
        texture = (shape + rng.integers(1, CUE_C, CUE_N)) % CUE_C
        texture[: CUE_N // 10] = shape[: CUE_N // 10]  # 10% without a conflict (shape bias drops them)
        register(store, CUE, cue_names, shape,
                 annotations=[{"shape": cue_names[s], "texture": cue_names[t]} for s, t in zip(shape, texture)])  # fmt: skip
        register(store, CAP, [], [None] * CAP_N, task="retrieval", kind="captions",
                 captions=[[f"caption {k} of image {i}" for k in range(CAP_K)] for i in range(CAP_N)])  # fmt: skip
        dataset_fp = {r["name"]: r["fingerprint"] for r in store.query("SELECT name, fingerprint FROM datasets")}
        n_clip = n_models // 2
        n_finetuned = (n_models - n_clip) // 3
        sigma = 1.0 / np.sqrt(D)

        def noise(*shape: int) -> np.ndarray:
            return sigma * rng.standard_normal(shape, dtype=np.float32)

        for m in range(n_models):
            quality = rng.uniform(0.0, 1.0)
            if m < n_clip:
                model, kind, group = f"clip:zs-{m:03d}", "clip", "zero-shot CLIP"
            elif m < n_clip + n_finetuned:
                model, kind, group = f"ft:clip-ft-{m:03d}", "classifier", "fine-tuned CLIP"
            else:
                model, kind, group = f"timm:cls-{m:03d}", "classifier", "ImageNet classifier"
            info = {"model_id": model, "kind": kind, "library": "synthetic", "fingerprint": f"synthetic-{model}",
                    "group_label": group, "embed_dim": D}  # fmt: skip
            if kind == "clip":
                info["logit_scale"] = 100.0
            store.register_model(info)
            z = 1.5 + 3.0 * quality  # class signal in units of the noise's per-direction std

            write = functools.partial(put_float16, store, dataset_fp, model)
            for name, (n, kept_clip, kept_classifier) in CLASSIFICATION.items():
                kept = kept_clip if kind == "clip" else kept_classifier
                write(name, "image_emb", sigma * z * (0.35 + 0.65 * kept) * protos[labels[name]] + noise(n, D))
                if kind == "clip":
                    write(name, "text_emb", protos[:, None, :] + 0.5 * noise(C, T, D))
                else:
                    strength = (1.0 + 3.5 * quality) * (0.2 + 0.8 * kept)
                    logits = strength * np.eye(C, dtype=np.float32)[labels[name]] + noise(n, C) / sigma
                    write(name, "logits", logits)
            write(OOD, "image_emb", noise(OOD_N, D) + 0.3 * sigma * z * unit(rng.standard_normal(D, dtype=np.float32)))
            if kind != "clip":
                write(OOD, "logits", noise(OOD_N, C) / sigma)
            shape_weight = rng.uniform(0.2, 0.8)
            mixed = shape_weight * cue_protos[shape] + (1 - shape_weight) * cue_protos[texture]
            write(CUE, "image_emb", 1.6 * sigma * z * mixed + noise(CUE_N, D))
            if kind == "clip":
                write(CUE, "text_emb", cue_protos[:, None, :] + 0.5 * noise(CUE_C, T, D))
                write(CAP, "image_emb", 3 * sigma * z * caption_protos + noise(CAP_N, D))
                write(
                    CAP,
                    "caption_emb",
                    3 * sigma * z * np.repeat(caption_protos, CAP_K, axis=0) + noise(CAP_N * CAP_K, D),
                )
            else:
                eye = np.eye(CUE_C, dtype=np.float32)
                cue_logits = (
                    1.6 * (1.0 + 3.5 * quality) * (shape_weight * eye[shape] + (1 - shape_weight) * eye[texture])
                )
                write(CUE, "logits", cue_logits + noise(CUE_N, CUE_C) / sigma)
            if (m + 1) % 25 == 0:
                print(f"  {m + 1} models written ({time.perf_counter() - start:.0f} s)", flush=True)
    return time.perf_counter() - start


def time_command(store: Path, argv: list[str]) -> tuple[float, int, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", EMBEDSTORE_STORE=str(store))
    executable = Path(sys.executable).with_name("embedstore")
    start = time.perf_counter()
    done = subprocess.run([str(executable), *argv], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    last = (done.stderr or done.stdout).strip().splitlines()[-1:] if done.returncode else []
    return seconds, done.returncode, last[0] if last else ""


def _short(name: str) -> str:
    """A command's name without its parenthesised detail: ``eval probe (5 models)`` -> ``eval probe``."""
    return name.split(" (")[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=150)
    parser.add_argument("--store", type=Path, default=None, help="Keep the store here (reused when it exists).")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        help="Run only this command, named as the table names it without its parenthesis (repeatable).",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    scratch = tempfile.TemporaryDirectory(prefix="embedstore-study-")
    known = list(dict.fromkeys(_short(name) for name in commands(Path(scratch.name) / "report", [])))
    unknown = [name for name in args.only if _short(name) not in known]
    if unknown:  # checked before a build that takes minutes
        parser.error(f"--only {unknown[0]!r}: choose from {', '.join(known)}")
    store = args.store or Path(scratch.name) / "store"
    build_seconds = None
    if not Store.exists(store):
        print(f"building a {args.models}-model store at {store}", flush=True)
        build_seconds = build_store(store, args.models)
    models = [r["model_id"] for r in Store.open(store).query("SELECT model_id FROM models ORDER BY model_id")]
    chosen = commands(Path(scratch.name) / "report", models)
    only = {_short(name) for name in args.only}
    rows = []
    for name, argv in chosen.items():
        if only and _short(name) not in only:
            continue
        seconds, code, error = time_command(store, argv)
        rows.append({"command": name, "seconds": round(seconds, 2), "exit_code": code, "error": error or None})
        print(f"{name:32s} {seconds:8.2f} s" + (f"   FAILED ({code}): {error}" if code else ""), flush=True)
    result = {
        "benchmark": "study_scale",
        "models": len(models),
        "store_build_seconds": None if build_seconds is None else round(build_seconds, 1),
        "datasets": {**{k: v[0] for k, v in CLASSIFICATION.items()}, OOD: OOD_N, CUE: CUE_N, CAP: CAP_N},
        "dims": {"D": D, "T": T, "C": C, "dtype": "float16", "chunk_rows": CHUNK},
        "commands": rows,
        "machine": machine_info(),
        "measured": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    if any(row["exit_code"] for row in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
