"""Security: no pickle runs, `embedstore sql` stays in its sandbox, no name, key or path leaves its root.

- Checkpoints: every ``torch.load`` of the library passes ``weights_only=True``, every ``np.load``
  ``allow_pickle=False``, and nothing calls ``pickle.load``; a checkpoint carrying a pickled object is
  refused by an extraction before its payload runs or the store changes (the model tests check the
  loaders themselves).
- `embedstore sql`: writes, ``COPY``, ``ATTACH``, ``EXPORT``, extension loading and file readers are
  refused, also behind comments or after another statement; no file appears, the catalog is unchanged.
- Paths: dataset names and model ids become folder names inside ``arrays.zarr`` whatever they hold;
  an array path in the catalog that would leave the arrays root is refused (a shared store's catalog
  may come from anyone); sample keys are catalog text and never a path: an extraction of a manifest
  with hostile keys writes only inside the store and reads only inside the dataset root.
"""

from __future__ import annotations

import ast
import io
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from reliability_support import QUIET, TINY_CLIP, store_snapshot

import embedstore
from embedstore.errors import ModelError, StoreError
from embedstore.extract.plan import plan_from_args
from embedstore.extract.runner import run_extraction
from embedstore.models import load_model
from embedstore.store import Store
from embedstore.store.store import path_component
from embedstore_cli.store_commands import sql_command

SETTINGS = {"workers": 0, "chunk_rows": 8, "batch_size": 8}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
LIBRARY = Path(embedstore.__file__).parent


def _calls(tree: ast.AST, module: str, function: str) -> list[ast.Call]:
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == function
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == module
    ]


def _keyword(call: ast.Call, name: str) -> object:
    for keyword in call.keywords:
        if keyword.arg == name and isinstance(keyword.value, ast.Constant):
            return keyword.value.value
    return None


def test_the_library_loads_no_pickle():
    torch_loads, numpy_loads, unsafe = 0, 0, []
    for path in sorted(LIBRARY.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for call in _calls(tree, "torch", "load"):
            torch_loads += 1
            if _keyword(call, "weights_only") is not True:
                unsafe.append(f"{path}:{call.lineno} torch.load without weights_only=True")
        for call in _calls(tree, "np", "load") + _calls(tree, "numpy", "load"):
            numpy_loads += 1
            if _keyword(call, "allow_pickle") is not False:
                unsafe.append(f"{path}:{call.lineno} np.load without allow_pickle=False")
        for function in ("load", "loads", "Unpickler"):
            unsafe += [f"{path}:{c.lineno} pickle.{function}" for c in _calls(tree, "pickle", function)]
    assert torch_loads >= 2 and numpy_loads >= 1, "the scan found none of the known loads: is it broken?"
    assert unsafe == []


class _CreatesFile:
    """Unpickling this object calls ``open(path, "w")``: it creates the file."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_checkpoint_carrying_code_is_refused_before_it_runs(tmp_path):
    witness = tmp_path / "payload-ran"
    checkpoint = tmp_path / "evil.pt"
    state = load_model(TINY_CLIP).module.state_dict()
    torch.save({"state_dict": state, "extra": _CreatesFile(witness)}, checkpoint)
    store = Store.create(tmp_path / "store")
    before = store_snapshot(store.path)
    plan = plan_from_args([f"openclip:embedstore-tiny@{checkpoint}"], ["s=synthetic:shapes?n=4"], **SETTINGS)
    with pytest.raises(ModelError, match=r"evil\.pt holds objects other than tensors .*weights_only=True"):
        run_extraction(store, plan, **QUIET)
    assert not witness.exists(), "the pickled payload ran"
    assert store_snapshot(store.path) == before


STATEMENTS = [
    "INSERT INTO meta VALUES ('key', 'value')",
    "/* a comment first */ DELETE FROM results",
    "-- a comment first\nDROP TABLE samples",
    "SELECT 1; UPDATE arrays SET status = 'complete'",
    "COPY samples TO '{out}/copy.csv'",
    "/**/ COPY (SELECT * FROM samples) TO '{out}/copy.parquet' (FORMAT parquet)",
    "SELECT 1; COPY samples TO '{out}/copy2.csv'",
    "ATTACH '{out}/attached.duckdb' AS other",
    "/**/ ATTACH ':memory:' AS scratch",
    "EXPORT DATABASE '{out}/export'",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SET enable_external_access = true",
    "/**/ RESET enable_external_access",
    "SELECT * FROM read_text('{secret}')",
    "SELECT * FROM read_csv('{secret}')",
    "SELECT * FROM glob('{out}/*')",
    "SELECT content FROM read_blob('{store}/arrays.zarr/zarr.json')",
    "CHECKPOINT; COPY samples TO '{out}/copy3.csv'",
]


def test_sql_cannot_write_nor_touch_files(tmp_path):
    store = Store.create(tmp_path / "store")
    store.put_results("zeroshot", [("acc1", 0.5)], params={}, model="m", dataset="d")
    out = tmp_path / "out"
    out.mkdir()
    secret = tmp_path / "secret.txt"
    secret.write_text("secret,value\n1,2\n")
    before = store_snapshot(store.path)
    runner = CliRunner()
    for template in STATEMENTS:
        statement = template.format(out=out, secret=secret, store=store.path)
        result = runner.invoke(sql_command, ["--store", str(store.path), "--", statement])
        assert result.exit_code == 1, (statement, result.output)
        errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1 and "Traceback" not in result.output, (statement, result.output)
        assert "secret,value" not in result.output
    assert list(out.iterdir()) == []
    assert store_snapshot(store.path) == before
    assert runner.invoke(sql_command, ["--store", str(store.path), "SELECT metric FROM results"]).exit_code == 0


HOSTILE_NAMES = [
    "..", ".", "../../outside", "/etc", "a/../../b", "..\\..\\windows", "", " ", "~", "~root", "$HOME",
    "name\x00with-nul", "new\nline", "CON", "ｆｕｌｌ／ｗｉｄｔｈ", "x" * 300, "openclip:hf-hub:org/repo@/abs/path/w.pt",
    "-rf", ".hidden", "a" * 100 + "/..",
]  # fmt: skip


def test_names_become_one_folder_inside_the_arrays_root(tmp_path):
    components = {name: path_component(name) for name in HOSTILE_NAMES}
    for name, component in components.items():
        assert component not in ("", ".", ".."), name
        assert "/" not in component and "\\" not in component and "\x00" not in component, name
        assert len(component.encode()) <= 120, name
    assert len(set(components.values())) == len(HOSTILE_NAMES), "two names share a folder"

    store = Store.create(tmp_path / "store")
    fingerprints = {"dataset": "d", "model": "m", "settings": "s"}
    for i, name in enumerate(HOSTILE_NAMES):
        array = store.open_array_writer(name, HOSTILE_NAMES[-1 - i], "image_emb", shape=(3, 2), dtype="float32",
                                        chunk_rows=2, fingerprints=fingerprints)  # fmt: skip
        array.write_chunk(0, np.full((2, 2), i, dtype="float32"))
    outside = [p for p in tmp_path.rglob("*") if store.path not in p.parents and p != store.path]
    assert outside == []
    arrays_root = (store.path / "arrays.zarr").resolve()
    for info in store.list_arrays():
        assert arrays_root in (arrays_root / info.path).resolve().parents
        assert len(Path(info.path).parts) == 3
    for i, name in enumerate(HOSTILE_NAMES):
        assert store.read_array(name, HOSTILE_NAMES[-1 - i], "image_emb", allow_partial=True)[0, 0] == i


def test_an_array_path_leaving_the_root_in_the_catalog_is_refused(tmp_path):
    store = Store.create(tmp_path / "store")
    fingerprints = {"dataset": "d", "model": "m", "settings": "s"}
    store.open_array_writer(
        "ds", "m", "image_emb", shape=(2, 2), dtype="float32", chunk_rows=2, fingerprints=fingerprints
    )
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    for tampered in ("/tmp", "ds/../../../victim", "ds//m", "../../victim"):
        with store.catalog.write() as con:
            con.execute("UPDATE arrays SET path = ?", [tampered])
        with pytest.raises(StoreError, match="would leave the arrays root"):
            store.read_array("ds", "m", "image_emb", allow_partial=True)
    with pytest.raises(StoreError, match="would leave the arrays root"):
        store.delete_arrays("ds")
    assert (victim / "keep.txt").read_text() == "precious"


def test_hostile_sample_keys_never_become_paths(tmp_path):
    root = tmp_path / "dataset"
    root.mkdir()
    (tmp_path / "secret.png").write_bytes(b"never read")
    keys = ["../secret.png", "/etc/passwd", "..", "a/../../secret.png", "~/.ssh/id_rsa"]
    lines = ["path,label,key"]
    for i, key in enumerate(keys):
        image = Image.fromarray(np.random.default_rng(i).integers(0, 256, (24, 24, 3), dtype=np.uint8))
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        (root / f"{i}.png").write_bytes(buffer.getvalue())
        lines.append(f'{i}.png,{i % 2},"{key}"')
    (root / "classnames.txt").write_text("cat\ndog\n")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    store_path = tmp_path / "store"
    store = Store.create(store_path)
    opened: list[tuple[str, str]] = []
    watching = [True]

    def audit(event, args):
        if watching[0] and event == "open" and isinstance(args[0], str) and args[0].startswith(str(tmp_path)):
            path, mode, flags = args
            writes = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(flags & WRITE_FLAGS)
            opened.append((path, writes))

    sys.addaudithook(audit)
    try:
        run_extraction(
            store, plan_from_args([TINY_CLIP], [f"keys=manifest:{root / 'manifest.csv'}"], **SETTINGS), **QUIET
        )
    finally:
        watching[0] = False
    assert sorted(store.sample_table("keys")["key"]) == sorted(keys)
    writes = [path for path, write in opened if write]
    assert writes and all(Path(p).is_relative_to(store_path) for p in writes), writes
    reads = [path for path, write in opened if not write]
    assert all(Path(p).is_relative_to(store_path) or Path(p).is_relative_to(root) for p in reads), reads
