"""Bad input: every awkward file is a recorded bad sample or a refusal before work, with its file and reason.

A generated corpus, run through ``run_extraction``. Samples that cannot be decoded are recorded in
``bad_samples`` with their key (the file) and the reason, and the run goes on; inputs that make the
whole dataset or model unusable are refused before any work, with one line naming the file and the
reason, and leave every catalog row and every array file of the store as they were. CMYK, 16-bit,
alpha, palette and grayscale images are converted to RGB by design (``embedstore/extract/decode.py``):
their embeddings must be the model library's own transform of that RGB image.

``tests/test_extract.py`` checks a few bad files on one store and ``tests/test_sources_*.py`` the
readers' refusals one by one; this file checks the whole list end to end, the decompression bomb
beyond PIL's own limit on both decode paths, and that refused runs change nothing.

Tests run as root, for whom the OS ignores ``chmod 000``: an unreadable directory or file is
simulated by making ``os.scandir`` / ``open`` raise ``PermissionError`` for that path.
"""

from __future__ import annotations

import errno
import io
import os
import re
import shutil
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from reliability_support import QUIET, TINY_CLIP, TINY_TIMM, store_snapshot

from embedstore.errors import DatasetError, EmbedstoreError, FingerprintMismatch
from embedstore.extract.plan import plan_from_args
from embedstore.extract.runner import run_extraction
from embedstore.models import load_model
from embedstore.sources import files as files_module
from embedstore.store import Store

CLIP_ID = "openclip:embedstore-tiny@random:0"
PIXEL_LIMIT = 1_000_000
SETTINGS = {"workers": 0, "chunk_rows": 8, "batch_size": 8, "dtype": "float32", "pixel_limit": PIXEL_LIMIT}


def _encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _png_header(width: int, height: int) -> bytes:
    """A PNG that announces ``width x height`` RGB pixels and holds none."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def _jpeg_with_size(data: bytes, width: int, height: int) -> bytes:
    """``data`` (a baseline JPEG) with its frame header rewritten to announce ``width x height``."""
    out, i = bytearray(data), 2
    while out[i + 1] != 0xC0:
        i += 2 + struct.unpack(">H", out[i + 2 : i + 4])[0]
    out[i + 5 : i + 9] = struct.pack(">HH", height, width)
    return bytes(out)


def _rgb(seed: int, size=(40, 52)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8))


#: file -> the reason its bad_samples row must give (a regex); files not listed are good.
BAD = {
    "truncated.jpg": r"truncated or corrupt image",
    "zero.jpg": r"empty file 'objects/zero\.jpg'",
    "text.jpg": r"not an image PIL can identify",
    "bomb.png": r"2,250,000 pixels exceeds the pixel limit 1,000,000",
    "huge.png": r"decompression bomb",
    "huge.jpg": r"decompression bomb",
    "missing.jpg": r"missing file 'objects/missing\.jpg'",
    "locked.jpg": r"unreadable file 'objects/locked\.jpg': Permission denied",
}
CONVERTED = ("cmyk.jpg", "gray.png", "alpha.png", "palette.png", "gray16.png")


def _corpus(root: Path) -> Path:
    """An image folder (one class folder 'objects') holding every kind of awkward image file."""
    folder = root / "corpus" / "objects"
    folder.mkdir(parents=True)
    rgb = _rgb(0)
    jpeg = _encoded(rgb, "JPEG")
    files = {
        "good.jpg": jpeg,
        "good.png": _encoded(_rgb(1), "PNG"),
        "cmyk.jpg": _encoded(_rgb(2).convert("CMYK"), "JPEG"),
        "gray.png": _encoded(_rgb(3).convert("L"), "PNG"),
        "alpha.png": _encoded(Image.merge("RGBA", (*_rgb(4).split(), Image.new("L", (52, 40), 90))), "PNG"),
        "palette.png": _encoded(_rgb(5).convert("P"), "PNG"),
        "gray16.png": _encoded(
            Image.fromarray(np.random.default_rng(6).integers(0, 65536, (36, 44)).astype(np.uint16)), "PNG"
        ),
        "truncated.jpg": jpeg[: len(jpeg) // 3],
        "zero.jpg": b"",
        "text.jpg": b"a text file wearing an image extension\n",
        "bomb.png": _encoded(Image.new("L", (1500, 1500)), "PNG", optimize=True),  # 2.25 M pixels in a few KB
        "huge.png": _png_header(100_000, 100_000),  # beyond PIL's own bomb limit
        "huge.jpg": _jpeg_with_size(jpeg, 20_000, 20_000),  # ditto: the GPU path used to decode it
        "missing.jpg": jpeg,  # deleted after the dataset is opened
        "locked.jpg": jpeg,  # unreadable (simulated)
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder.parent


@pytest.fixture
def corpus(tmp_path) -> Path:
    return _corpus(tmp_path)


def _sabotage(monkeypatch, root: Path) -> None:
    """Delete missing.jpg right after the dataset is opened; make locked.jpg unreadable."""
    import embedstore.sources as sources

    opener = sources.open_dataset

    def open_then_delete(*args, **kwargs):
        dataset = opener(*args, **kwargs)
        (root / "objects" / "missing.jpg").unlink(missing_ok=True)
        return dataset

    def guarded_open(path, *args, **kwargs):
        if str(path).endswith("locked.jpg"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return open(path, *args, **kwargs)

    monkeypatch.setattr(sources, "open_dataset", open_then_delete)
    monkeypatch.setattr(files_module, "open", guarded_open, raising=False)


@pytest.mark.parametrize("decode", ["cpu", "gpu"])
def test_bad_files_are_recorded_with_file_and_reason(tmp_path, corpus, monkeypatch, decode):
    _sabotage(monkeypatch, corpus)
    store = Store.create(tmp_path / "store")
    messages: list[str] = []
    plan = plan_from_args([TINY_CLIP], [f"corpus=imagefolder:{corpus}"], device="cpu", decode=decode, **SETTINGS)
    report = run_extraction(store, plan, log=messages.append, progress=False)
    recorded = store.query("SELECT key, reason FROM bad_samples WHERE dataset = ? ORDER BY key", ["corpus"])
    reasons = {Path(r["key"]).name: r["reason"] for r in recorded}
    assert set(reasons) == set(BAD), reasons
    for name, pattern in BAD.items():
        assert re.search(pattern, reasons[name]), (name, reasons[name])
    assert report.bad_samples == {"corpus": len(BAD)}
    assert any(f"{len(BAD)} bad sample(s) recorded" in m and "objects/" in m for m in messages), messages
    table = store.sample_table("corpus")
    emb = store.read_array("corpus", CLIP_ID, "image_emb")
    bad = np.isin(table["row"], store.bad_rows("corpus"))
    assert np.all(emb[bad] == 0) and np.all(np.abs(emb[~bad]).sum(axis=1) > 0)
    assert store.list_arrays("corpus", CLIP_ID, "image_emb")[0].status == "complete"


def _expected_rgb(path: Path) -> Image.Image:
    """The RGB image a model library gets: ``convert("RGB")`` (open_clip, timm), with 16-bit gray
    scaled to 8 bits first (``decode.to_rgb``; ``convert`` alone would clip it to white)."""
    image = Image.open(path)
    if image.mode.startswith("I;16"):
        image = Image.fromarray((np.asarray(image, dtype=np.uint16) >> 8).astype(np.uint8), mode="L")
    return image.convert("RGB")


def test_unusual_modes_become_rgb_and_embed_as_the_library_transform(tmp_path, corpus, monkeypatch):
    _sabotage(monkeypatch, corpus)
    store = Store.create(tmp_path / "store")
    run_extraction(store, plan_from_args([TINY_CLIP], [f"corpus=imagefolder:{corpus}"], **SETTINGS), **QUIET)
    modes = {name: Image.open(corpus / "objects" / name).mode for name in CONVERTED}
    assert modes == {"cmyk.jpg": "CMYK", "gray.png": "L", "alpha.png": "RGBA", "palette.png": "P", "gray16.png": "I;16"}
    table = store.sample_table("corpus")
    rows = {Path(key).name: row for key, row in zip(table["key"], table["row"])}
    names = [*CONVERTED, "good.jpg", "good.png"]
    _, _, preprocess = open_clip.create_model_and_transforms("embedstore-tiny", pretrained=None)
    model = load_model(TINY_CLIP)
    with torch.inference_mode():
        pixels = torch.stack([preprocess(_expected_rgb(corpus / "objects" / n)) for n in names])
        expected = model.module.encode_image(pixels).numpy()
    stored = store.read_array("corpus", CLIP_ID, "image_emb", rows=[rows[n] for n in names])
    np.testing.assert_allclose(stored, expected, rtol=1e-5, atol=1e-5)
    assert not set(CONVERTED) & {Path(r["key"]).name for r in store.query("SELECT key FROM bad_samples")}


def test_a_corrupt_tar_member_is_a_bad_sample_naming_its_key(tmp_path):
    jpeg = _encoded(_rgb(7), "JPEG")
    members = [("s0.jpg", jpeg), ("s0.cls", b"0"), ("s1.jpg", jpeg[: len(jpeg) // 2]), ("s1.cls", b"1"),
               ("s2.png", _encoded(_rgb(8), "PNG")), ("s2.cls", b"1")]  # fmt: skip
    root = _tar_root(tmp_path / "wds", members)
    store = Store.create(tmp_path / "store")
    run_extraction(store, plan_from_args([TINY_CLIP], [f"tars=wds:{root}"], **SETTINGS), **QUIET)
    recorded = store.query("SELECT key, reason FROM bad_samples")
    assert [(r["key"], r["reason"].split(":")[0]) for r in recorded] == [("s1", "truncated or corrupt image")]


# -- refusals ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def extracted(tmp_path_factory) -> dict:
    """A store holding one extraction of a small image folder by a checkpoint-file model."""
    base = tmp_path_factory.mktemp("extracted")
    folder = base / "photos"
    for label in ("cat", "dog"):
        (folder / label).mkdir(parents=True)
        for i in range(3):
            (folder / label / f"{i}.png").write_bytes(_encoded(_rgb(10 + i + (label == "dog") * 5), "PNG"))
    checkpoint = base / "tiny.pt"
    torch.save(load_model(TINY_CLIP).module.state_dict(), checkpoint)
    store = Store.create(base / "store")
    plan = plan_from_args([f"openclip:embedstore-tiny@{checkpoint}"], [f"photos=imagefolder:{folder}"], **SETTINGS)
    run_extraction(store, plan, **QUIET)
    return {"store": base / "store", "folder": folder, "checkpoint": checkpoint}


@pytest.fixture
def workspace(extracted, tmp_path) -> dict:
    """Copies of ``extracted``'s store and dataset (same fingerprint: copies keep sizes and mtimes)
    that a test may change; the checkpoint is shared (the model id names its path)."""
    copy = {"store": tmp_path / "store", "folder": tmp_path / "photos", "checkpoint": extracted["checkpoint"]}
    shutil.copytree(extracted["store"], copy["store"])
    shutil.copytree(extracted["folder"], copy["folder"])
    copy["model"] = f"openclip:embedstore-tiny@{extracted['checkpoint']}"
    return copy


def _manifest(root: Path, rows: list[str], classnames: str | None = "cat\ndog\n") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "a.png").write_bytes(_encoded(_rgb(20), "PNG"))
    if classnames is not None:
        (root / "classnames.txt").write_text(classnames)
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root / "manifest.csv"


def _tar_root(root: Path, members: list[tuple[str, bytes]]) -> Path:
    (root / "test").mkdir(parents=True)
    (root / "classnames.txt").write_text("cat\ndog\n")
    with tarfile.open(root / "test" / "0.tar", "w") as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    (root / "test" / "nshards.txt").write_text("1\n")
    return root


def _label_outside(ws, tmp, monkeypatch):
    return (
        f"bad=manifest:{_manifest(tmp / 'm1', ['path,label', 'a.png,5'])}",
        r"manifest\.csv' row 1: label 5 is outside",
    )


def _names_mismatch(ws, tmp, monkeypatch):
    (tmp / "names.txt").write_text("only one name\n")
    return f"bad=imagefolder:{ws['folder']}?names={tmp / 'names.txt'}", r"names\.txt' has 1 names but the dataset has 2"


def _duplicate_keys(ws, tmp, monkeypatch):
    rows = ["path,label,key", "a.png,0,k1", "a.png,1,k1"]
    return f"bad=manifest:{_manifest(tmp / 'm2', rows)}", r"manifest\.csv' row 2: duplicate key 'k1'"


def _escaping_path(ws, tmp, monkeypatch):
    (tmp / "outside.png").write_bytes(b"x")
    rows = ["path,label", "a.png,0", "../outside.png,1"]
    return f"bad=manifest:{_manifest(tmp / 'm3', rows)}", r"row 2: path '\.\./outside\.png' escapes the dataset root"


def _missing_listed_file(ws, tmp, monkeypatch):
    rows = ["path,label", "a.png,0", "gone.png,1"]
    return f"bad=manifest:{_manifest(tmp / 'm4', rows)}", r"row 2: file 'gone\.png' does not exist"


def _corrupt_tar(ws, tmp, monkeypatch):
    root = _tar_root(tmp / "t1", [("s0.png", _encoded(_rgb(21), "PNG")), ("s0.cls", b"0")])
    (root / "test" / "0.tar").write_bytes(b"not a tar archive" * 64)
    return f"bad=wds:{root}", r"shard 'test/0\.tar' cannot be read as a tar file"


def _escaping_member(ws, tmp, monkeypatch):
    root = _tar_root(tmp / "t2", [("../s0.png", _encoded(_rgb(22), "PNG")), ("../s0.cls", b"0")])
    return f"bad=wds:{root}", r"shard 'test/0\.tar': member name '\.\./s0\.png' escapes the shard"


def _label_outside_tar(ws, tmp, monkeypatch):
    root = _tar_root(tmp / "t3", [("s0.png", _encoded(_rgb(23), "PNG")), ("s0.cls", b"7")])
    return f"bad=wds:{root}", r"shard 'test/0\.tar': sample 's0' label 7 is outside the class list"


def _unreadable_directory(ws, tmp, monkeypatch):
    scandir = os.scandir
    locked = str(ws["folder"] / "dog")

    def guarded(path="."):
        if os.fspath(path) == locked:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", guarded)
    return f"photos2=imagefolder:{ws['folder']}", r"folder '.*/dog' cannot be listed \(Permission denied\)"


def _dataset_changed(ws, tmp, monkeypatch):
    victim = ws["folder"] / "dog" / "0.png"
    victim.write_bytes(victim.read_bytes() + b"\0")
    return f"photos=imagefolder:{ws['folder']}", r"dataset photos changed on disk since its 3 array\(s\) were extracted"


REFUSALS = {
    "label outside the class list": _label_outside,
    "class-name count mismatch": _names_mismatch,
    "duplicate sample keys": _duplicate_keys,
    "path escaping the root": _escaping_path,
    "missing file": _missing_listed_file,
    "corrupt tar": _corrupt_tar,
    "tar member escaping the shard": _escaping_member,
    "tar label outside the class list": _label_outside_tar,
    "unreadable directory (simulated)": _unreadable_directory,
    "dataset changed since extraction": _dataset_changed,
}


#: Registered before the refused input in plan order; a refusal must leave them out too.
NEW_DATASET = "fresh=synthetic:shapes?n=4&seed=1"


@pytest.mark.parametrize("case", REFUSALS)
def test_refused_runs_name_file_and_reason_and_change_nothing(case, workspace, tmp_path, monkeypatch):
    (tmp_path / "inputs").mkdir()
    spec, message = REFUSALS[case](workspace, tmp_path / "inputs", monkeypatch)
    before = store_snapshot(workspace["store"])
    plan = plan_from_args([TINY_TIMM, workspace["model"]], [NEW_DATASET, spec], **SETTINGS)
    with pytest.raises(EmbedstoreError, match=message) as refused:
        run_extraction(Store.open(workspace["store"], readonly=False), plan, **QUIET)
    assert isinstance(refused.value, DatasetError | FingerprintMismatch) and "\n" not in str(refused.value)
    assert store_snapshot(workspace["store"]) == before


def test_changed_weights_are_refused_and_change_nothing(workspace):
    before = store_snapshot(workspace["store"])
    checkpoint, original = workspace["checkpoint"], workspace["checkpoint"].read_bytes()
    torch.save(load_model("openclip:embedstore-tiny@random:5").module.state_dict(), checkpoint)
    plan = plan_from_args([TINY_TIMM, workspace["model"]], [NEW_DATASET, f"photos=imagefolder:{workspace['folder']}"],
                          **SETTINGS)  # fmt: skip
    try:
        with pytest.raises(FingerprintMismatch, match=r"model openclip:embedstore-tiny@.*tiny\.pt changed since"):
            run_extraction(Store.open(workspace["store"], readonly=False), plan, **QUIET)
    finally:
        checkpoint.write_bytes(original)
    assert store_snapshot(workspace["store"]) == before
