"""init, ls, sql, export, import, rm through click's runner, and once through the console script."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from embedstore.store.locks import dataset_locks
from embedstore_cli.main import cli


@pytest.fixture
def run(tmp_path):
    runner = CliRunner()
    env = {"EMBEDSTORE_STORE": str(tmp_path / "store")}

    def invoke(*args, ok=True):
        result = runner.invoke(cli, [str(a) for a in args], env=env, catch_exceptions=False)
        if ok:
            assert result.exit_code == 0, result.output
        return result

    return invoke


@pytest.fixture
def matrix(tmp_path):
    data = np.random.default_rng(0).standard_normal((50, 6)).astype("float16")
    np.save(tmp_path / "emb.npy", data)
    keys = [f"img{i:03d}" for i in range(50)]
    (tmp_path / "keys.txt").write_text("\n".join(keys) + "\n")
    return data, keys


def test_every_command_has_help(run):
    for command in ["init", "ls", "sql", "export", "import", "rm"]:
        assert "Usage:" in run(command, "--help").output
    assert "0.1.0" in run("--version").output


def test_import_export_round_trip_is_bit_identical(run, tmp_path, matrix):
    run("init")
    run("import", "--dataset", "ds", "--model", "m1", "--array", "image_emb", tmp_path / "emb.npy",
        "--keys", tmp_path / "keys.txt")  # fmt: skip
    for fmt in ["npy", "h5", "parquet"]:
        run("export", "--dataset", "ds", "--model", "m1", "--array", "image_emb", "-o", tmp_path / f"a.{fmt}")
        run("import", "--dataset", "ds", "--model", f"m-{fmt}", "--array", "image_emb", tmp_path / f"a.{fmt}",
            *(["--keys", tmp_path / "keys.txt"] if fmt == "npy" else []))  # fmt: skip
        run("export", "--dataset", "ds", "--model", f"m-{fmt}", "--array", "image_emb", "-o", tmp_path / f"b.{fmt}")
    assert (tmp_path / "emb.npy").read_bytes() == (tmp_path / "a.npy").read_bytes() == (tmp_path / "b.npy").read_bytes()
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()
    with h5py.File(tmp_path / "b.h5") as f:
        np.testing.assert_array_equal(f["data"][...], matrix[0])
        assert [k.decode() for k in f["keys"][...]] == matrix[1]


def test_bad_samples_travel_with_h5_and_parquet_exports(run, tmp_path, matrix):
    from embedstore.store import Store

    run("init")
    run("import", "--dataset", "ds", "--model", "m1", "--array", "image_emb", tmp_path / "emb.npy",
        "--keys", tmp_path / "keys.txt")  # fmt: skip
    Store.open(tmp_path / "store", readonly=False).record_bad_samples(
        "ds", [(3, "img003", "truncated"), (10, "img010", "zero-byte file")]
    )
    for fmt in ("h5", "parquet"):
        run("export", "--dataset", "ds", "--model", "m1", "--array", "image_emb", "-o", tmp_path / f"bad.{fmt}")
        fresh = Store.create(tmp_path / f"fresh-{fmt}")
        out = run("import", "--store", fresh.path, "--dataset", "copy", "--model", "m1", "--array", "image_emb",
                  tmp_path / f"bad.{fmt}")  # fmt: skip
        assert "registered new dataset copy" in out.output
        assert fresh.query('SELECT "row", key, reason FROM bad_samples ORDER BY "row"') == [
            {"row": 3, "key": "img003", "reason": "truncated"},
            {"row": 10, "key": "img010", "reason": "zero-byte file"},
        ]
        assert fresh.list_arrays("copy", "m1", "image_emb")[0].status == "complete"
    with h5py.File(tmp_path / "bad.h5") as f:
        reasons = [r.decode() for r in f["bad_reason"][...]]
    assert (reasons[3], reasons[10], set(reasons[:3])) == ("truncated", "zero-byte file", {""})


def test_export_takes_a_glob_matching_one_model_and_names_the_candidates_otherwise(run, tmp_path, matrix):
    run("init")
    for model in ("openclip:toy@/cache/demo/toy_clip.pt", "openclip:other@random:0"):
        run("import", "--dataset", "ds", "--model", model, "--array", "image_emb", tmp_path / "emb.npy",
            "--keys", tmp_path / "keys.txt")  # fmt: skip
    out = run("export", "--dataset", "ds", "--model", "openclip:toy*", "--array", "image_emb", "-o", tmp_path / "t.npy")
    assert "ds/openclip:toy@/cache/demo/toy_clip.pt/image_emb" in out.output
    np.testing.assert_array_equal(np.load(tmp_path / "t.npy"), matrix[0])
    several = run("export", "--dataset", "ds", "--model", "openclip:*", "--array", "image_emb", "-o",
                  tmp_path / "x.npy", ok=False)  # fmt: skip
    assert several.exit_code == 1 and "matches 2 models" in several.output and "name one" in several.output
    wrong = run("export", "--dataset", "ds", "--model", "openclip:toy", "--array", "image_emb", "-o",
                tmp_path / "x.npy", ok=False)  # fmt: skip
    assert "models with image_emb on ds: openclip:other@random:0, openclip:toy@/cache/demo/toy_clip.pt" in wrong.output
    assert not (tmp_path / "x.npy").exists()


def test_an_output_path_that_cannot_be_written_is_one_line(run, tmp_path, matrix):
    run("init")
    run("import", "--dataset", "ds", "--model", "m1", "--array", "image_emb", tmp_path / "emb.npy",
        "--keys", tmp_path / "keys.txt")  # fmt: skip
    afile = tmp_path / "afile.txt"
    afile.write_text("x")
    for args in (["sql", "SELECT 1 AS a", "--format", "csv", "--output", afile / "x.csv"],
                 ["export", "--dataset", "ds", "--model", "m1", "--array", "image_emb", "-o", afile / "x.npy"]):  # fmt: skip
        result = run(*args, ok=False)
        assert result.exit_code == 1 and "Traceback" not in result.output, result.output
        assert str(afile) in result.output and len(result.output.strip().splitlines()) == 1, result.output


def test_import_places_rows_by_key(run, tmp_path, matrix):
    data, keys = matrix
    run("init")
    run("import", "--dataset", "ds", "--model", "m1", "--array", "image_emb", tmp_path / "emb.npy", "--keys", tmp_path / "keys.txt")
    perm = np.random.default_rng(1).permutation(50)
    np.save(tmp_path / "shuffled.npy", data[perm])
    (tmp_path / "shuffled.txt").write_text("\n".join(keys[i] for i in perm))
    run("import", "--dataset", "ds", "--model", "m2", "--array", "image_emb", tmp_path / "shuffled.npy",
        "--keys", tmp_path / "shuffled.txt")  # fmt: skip
    run("export", "--dataset", "ds", "--model", "m2", "--array", "image_emb", "-o", tmp_path / "m2.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "m2.npy"), data)


def test_import_errors_are_one_line(run, tmp_path, matrix):
    run("init")
    (tmp_path / "short.txt").write_text("a\nb\n")
    result = run("import", "--dataset", "ds", "--model", "m", "--array", "image_emb", tmp_path / "emb.npy",
                 "--keys", tmp_path / "short.txt", ok=False)  # fmt: skip
    assert result.exit_code == 1 and "50 rows but 2 keys" in result.output
    assert "Traceback" not in result.output
    result = run("import", "--dataset", "ds", "--model", "m", "--array", "image_emb", tmp_path / "emb.npy", ok=False)
    assert "carries no sample keys" in result.output
    assert run("sql", "SELECT count(*) AS n FROM datasets", "--format", "json").output.count('"n": 0') == 1
    for bad_name in ("../evil", "", "a/b"):
        result = run("import", "--dataset", "ds", "--model", "m", "--array", bad_name, tmp_path / "emb.npy",
                     "--keys", tmp_path / "keys.txt", ok=False)  # fmt: skip
        assert result.exit_code == 1 and f"array name {bad_name!r}" in result.output
    for table in ("models", "datasets"):
        assert run("sql", f"SELECT count(*) AS n FROM {table}", "--format", "json").output.count('"n": 0') == 1



def test_import_refuses_what_analyses_could_not_use_and_registers_nothing(run, tmp_path, matrix):
    data, _ = matrix
    run("init")
    run("import", "--dataset", "ds0", "--model", "m", "--array", "image_emb", tmp_path / "emb.npy",
        "--keys", tmp_path / "keys.txt")  # fmt: skip
    with_nan = data.astype("float32")
    with_nan[[7, 9], 2] = np.nan
    wide = np.ones((50, 8), dtype="float32")
    cube = np.ones((50, 2, 3), dtype="float32")
    counts = np.ones((50, 6), dtype="int64")
    cases = [
        (with_nan, "image_emb", "2 row(s) hold NaN or infinite values, the first for sample key 'img007'"),
        (wide, "caption_emb", "rows have 8 values but model m's embeddings have 6 (image_emb on ds0)"),
        (cube, "image_emb", "holds a 3-D float32 array; image_emb must be a 2-D floating-point matrix"),
        (counts, "logits", "holds a 2-D int64 array; logits must be a 2-D floating-point matrix"),
        (cube, "text_emb", "text_emb is per class and template, not one row per sample"),
        (np.ones((2, 3, 4), dtype="float32"), "text_emb", "text_emb is per class and template, not one row"),
        (np.ones((0, 6), dtype="float32"), "image_emb", "holds no rows (shape [0, 6]): nothing to import"),
    ]
    before = run("sql", "SELECT (SELECT count(*) FROM models) AS m, (SELECT count(*) FROM datasets) AS d, "
                 "(SELECT count(*) FROM arrays) AS a", "--format", "json").output  # fmt: skip
    for values, name, message in cases:
        np.save(tmp_path / "bad.npy", values)
        for dataset, model in (("ds", "m"), ("new-ds", "new-m")):
            if name == "caption_emb" and model == "new-m":
                continue  # a new model has no width to disagree with
            result = run("import", "--dataset", dataset, "--model", model, "--array", name, tmp_path / "bad.npy",
                         "--keys", tmp_path / "keys.txt", ok=False)  # fmt: skip
            assert result.exit_code == 1 and message.replace("model m'", f"model {model}'") in result.output
            assert result.output.count("\n") == 1, result.output
    after = run("sql", "SELECT (SELECT count(*) FROM models) AS m, (SELECT count(*) FROM datasets) AS d, "
                "(SELECT count(*) FROM arrays) AS a", "--format", "json").output  # fmt: skip
    assert after == before
    np.save(tmp_path / "wide.npy", wide)
    run("import", "--dataset", "ds", "--model", "m-wide", "--array", "image_emb", tmp_path / "wide.npy",
        "--keys", tmp_path / "keys.txt")  # fmt: skip
    refused = run("import", "--dataset", "ds", "--model", "m-wide", "--array", "caption_emb", tmp_path / "wide.npy",
                  "--keys", tmp_path / "keys.txt", ok=False)  # fmt: skip
    assert "caption_emb rows are captions of a caption dataset, and store" in refused.output

def test_import_refuses_unusable_files_names_and_ids_in_one_line(run, tmp_path, matrix):
    import pyarrow as pa
    import pyarrow.parquet as pq

    run("init")
    keys = [f"img{i:03d}" for i in range(50)]
    tables = {
        "no-values.parquet": pa.table({"key": keys, "emb": [[1.0, 2.0]] * 50}),
        "strings.parquet": pa.table({"key": keys, "values": [["a", "b"]] * 50}),
        "ragged.parquet": pa.table({"key": keys, "values": [[1.0, 2.0]] * 7 + [[1.0]] + [[1.0, 2.0]] * 42}),
        "null-row.parquet": pa.table({"key": keys, "values": [[1.0, 2.0]] * 3 + [None] + [[1.0, 2.0]] * 46}),
    }
    for name, table in tables.items():
        pq.write_table(table, tmp_path / name)
    (tmp_path / "text.npy").write_text("not numpy\n")
    cases = [
        ("no-values.parquet", "image_emb", "m", "needs the columns values, key (one list of numbers per row"),
        ("strings.parquet", "image_emb", "m", "column values holds list<element: string>; it must hold one list of numbers"),
        ("ragged.parquet", "image_emb", "m", "row 7 of column values is 1 long, row 0 2"),
        ("null-row.parquet", "image_emb", "m", "row 3 of column values is empty (null)"),
        ("text.npy", "image_emb", "m", "text.npy is not a .npy file"),
        ("emb.npy", "foo_emb", "m", "array 'foo_emb': import takes image_emb, caption_emb, logits"),
        ("emb.npy", "image_emb", "openclip:*", "model id 'openclip:*' holds a glob character"),
    ]
    for file, array, model, message in cases:
        extra = ["--keys", tmp_path / "keys.txt"] if file.endswith(".npy") else []
        result = run("import", "--dataset", "ds", "--model", model, "--array", array, tmp_path / file, *extra, ok=False)
        assert result.exit_code == 1 and message in result.output and result.output.count("\n") == 1, result.output
    assert json.loads(run("ls", "--json").output)["datasets"] == []
    first = run("import", "--dataset", "ds", "--model", "m", "--array", "image_emb", tmp_path / "emb.npy",
                "--keys", tmp_path / "keys.txt").output  # fmt: skip
    assert "registered new dataset ds (50 samples, keyed as in" in first
    again = run("import", "--dataset", "ds", "--model", "m", "--array", "image_emb", tmp_path / "emb.npy",
                "--keys", tmp_path / "keys.txt", ok=False)  # fmt: skip
    assert "image_emb of model m on dataset ds is already in store" in again.output and "embedstore rm" in again.output
    assert "registered new dataset" not in run("import", "--dataset", "ds", "--model", "m2", "--array", "image_emb",
                                               tmp_path / "emb.npy", "--keys", tmp_path / "keys.txt").output  # fmt: skip


def test_an_interrupted_import_resumes_when_run_again(tmp_path, matrix, monkeypatch):
    from embedstore.errors import StoreError
    from embedstore.store import Store, exchange
    from embedstore.store.arrays import StoreArray

    data, _ = matrix
    store = Store.create(tmp_path / "store")
    monkeypatch.setattr(exchange, "IMPORT_CHUNK_ROWS", 16)
    write_chunk = StoreArray.write_chunk

    def disk_full_at_chunk_2(self, index, rows, extra=None):
        if index == 2:
            raise StoreError("cannot write chunk 2: no space left on device")
        return write_chunk(self, index, rows, extra)

    monkeypatch.setattr(StoreArray, "write_chunk", disk_full_at_chunk_2)
    with pytest.raises(StoreError, match="no space left"):
        exchange.import_array(store, "ds", "m", "image_emb", tmp_path / "emb.npy", keys_file=tmp_path / "keys.txt")
    assert store.list_arrays("ds", "m", "image_emb")[0].status != "complete"
    monkeypatch.setattr(StoreArray, "write_chunk", write_chunk)
    other = tmp_path / "other"
    other.mkdir()
    np.save(other / "emb.npy", data + 1)  # another matrix under the same file name does not resume it
    with pytest.raises(StoreError, match="content_sha256"):
        exchange.import_array(store, "ds", "m", "image_emb", other / "emb.npy", keys_file=tmp_path / "keys.txt")
    exchange.import_array(store, "ds", "m", "image_emb", tmp_path / "emb.npy", keys_file=tmp_path / "keys.txt")
    np.testing.assert_array_equal(store.read_array("ds", "m", "image_emb"), data)


def test_export_and_sql_write_only_where_asked_and_never_into_the_store(run, tmp_path, matrix):
    run("init")
    run("import", "--dataset", "ds", "--model", "m1", "--array", "image_emb", tmp_path / "emb.npy",
        "--keys", tmp_path / "keys.txt")  # fmt: skip
    catalog = (tmp_path / "store" / "catalog.duckdb").read_bytes()
    refused = [
        (["sql", "select 1", "--format", "csv", "--output", tmp_path / "store" / "catalog.duckdb"], "lies inside store"),
        (["sql", "select 1", "--format", "parquet", "--output", tmp_path / "missing" / "x.parquet"],
         f"folder {tmp_path / 'missing'} does not exist"),
        (["export", "--dataset", "ds", "--model", "m1", "--array", "image_emb", "-o", tmp_path / "missing" / "x.h5"],
         f"folder {tmp_path / 'missing'} does not exist"),
        (["export", "--dataset", "ds", "--model", "m1", "--array", "image_emb", "-o", tmp_path / "store" / "x.npy"],
         "lies inside store"),
        (["export", "--dataset", "ds", "--model", "m*", "--array", "imag_emb", "-o", tmp_path / "x.npy"],
         "dataset ds has no imag_emb array of any model; its arrays: image_emb"),
        (["export", "--dataset", "dz", "--model", "m*", "--array", "image_emb", "-o", tmp_path / "x.npy"],
         "dataset 'dz' is not in store"),
    ]  # fmt: skip
    for args, message in refused:
        result = run(*args, ok=False)
        assert result.exit_code == 1 and message in result.output and result.output.count("\n") == 1, result.output
    assert (tmp_path / "store" / "catalog.duckdb").read_bytes() == catalog and not (tmp_path / "missing").exists()
    run("export", "--dataset", "ds", "--model", "m1", "--array", "image_emb", "-o", tmp_path / "emb.bin", "--format", "npy")
    assert (tmp_path / "emb.bin").read_bytes() == (tmp_path / "emb.npy").read_bytes()


def test_ls_and_sql_formats(run, tmp_path, matrix):
    run("init")
    run("import", "--dataset", "ds", "--model", "m1", "--array", "image_emb", tmp_path / "emb.npy", "--keys", tmp_path / "keys.txt")
    listing = json.loads(run("ls", "--json").output)
    assert listing["arrays"][0] | {} == listing["arrays"][0]
    assert listing["arrays"][0]["rows_done"] == 50 and listing["arrays"][0]["status"] == "complete"
    assert "50/50" in run("ls").output and "results (" not in run("ls").output
    from embedstore.store import Store

    store = Store.open(tmp_path / "store", readonly=False)
    for c in (1, 2):
        store.put_results("probe", [("acc1", 0.5), ("acc5", 0.9)], params={"c": c}, model="m1", dataset="ds")
    assert json.loads(run("ls", "--json").output)["results"] == [
        {"analysis": "probe", "n_rows": 4, "n_models": 1, "n_datasets": 1, "n_param_sets": 2,
         "latest": listing_time(store)}
    ]  # fmt: skip
    assert "results (4 rows; `embedstore sql` queries them)" in run("ls").output
    csv_out = run("sql", "SELECT key FROM samples ORDER BY row LIMIT 2", "--format", "csv").output
    assert csv_out == "key\nimg000\nimg001\n"  # plain newlines: `$(... | tail -1)` gives the bare value
    run("sql", "SELECT * FROM samples", "--format", "parquet", "--output", tmp_path / "s.parquet")
    import pyarrow.parquet as pq

    assert pq.read_table(tmp_path / "s.parquet").num_rows == 50
    refused = run("sql", "DROP TABLE samples", ok=False)
    assert refused.exit_code == 1 and "refused" in refused.output


def listing_time(store) -> str:
    return store.query("SELECT CAST(max(created) AS VARCHAR) AS t FROM results")[0]["t"]


def test_verify_finds_damaged_chunks_and_lost_markers(run, tmp_path, matrix):
    data, _ = matrix
    run("init")
    for model in ("m1", "m2", "m3"):
        run("import", "--dataset", "ds", "--model", model, "--array", "image_emb", tmp_path / "emb.npy",
            "--keys", tmp_path / "keys.txt")  # fmt: skip
    assert run("verify").output.endswith("3 array(s) read back as written\n")
    arrays = tmp_path / "store" / "arrays.zarr" / "ds"
    chunk = next((arrays / "m1").glob("image_emb/c/0/0"))
    flipped = bytearray(chunk.read_bytes())
    flipped[100] ^= 0x01  # one bit: same size, decodes, reads back different
    chunk.write_bytes(bytes(flipped))
    next((arrays / "m2").glob("image_emb/done/0")).unlink()
    result = run("verify", "--json", ok=False)
    assert result.exit_code == 1
    checks = {c["model"]: c for c in json.loads(result.stdout)}
    assert (checks["m1"]["status"], checks["m1"]["bad_chunks"]) == ("damaged", [0])
    assert checks["m2"]["status"] == "damaged" and "catalog says complete but only 0 of 50 rows" in checks["m2"]["detail"]
    assert checks["m3"]["status"] == "ok"
    assert "Error: 2 of 3 array(s) damaged: remove each with `embedstore rm" in result.stderr
    assert run("verify", "--model", "m3").exit_code == 0
    missing = run("verify", "--dataset", "other", ok=False)
    assert missing.exit_code == 1 and "no array of store" in missing.output


def test_rm_deletes_arrays(run, tmp_path, matrix):
    run("init")
    run("import", "--dataset", "ds", "--model", "m1", "--array", "image_emb", tmp_path / "emb.npy", "--keys", tmp_path / "keys.txt")
    missing = run("rm", "--model", "m*", "--yes", ok=False)
    assert missing.exit_code == 1 and "no array matches --model m* (exact names, not globs)" in missing.output
    assert "--model values with arrays: m1" in missing.output
    assert "deleted 1" in run("rm", "--model", "m1", "--yes").output
    assert json.loads(run("ls", "--json").output)["arrays"] == []


def test_rm_takes_the_saved_indexes_along_and_waits_for_no_extraction(run, tmp_path, matrix):
    run("init")
    for model in ("m1", "m2"):
        run("import", "--dataset", "ds", "--model", model, "--array", "image_emb", tmp_path / "emb.npy",
            "--keys", tmp_path / "keys.txt")  # fmt: skip
        run("index", "build", "--model", model, "--dataset", "ds", "--kind", "flat")
    indexes = tmp_path / "store" / "indexes"
    assert len(list(indexes.rglob("*.json"))) == 2
    with dataset_locks(tmp_path / "store", ["ds"], doing="embedstore extract"):
        refused = run("rm", "--model", "m1", "--yes", ok=False)
    assert refused.exit_code == 1 and "dataset ds of store" in refused.output and "is being written by process" in refused.output
    assert len(json.loads(run("ls", "--json").output)["arrays"]) == 2 and len(list(indexes.rglob("*.json"))) == 2
    assert "deleted 1 array(s) and 1 saved index(es)" in run("rm", "--model", "m1", "--yes").output
    assert [p.parent.name for p in indexes.rglob("*.json")] == ["m2"]



def test_rm_counts_the_results_of_the_removed_pairs_and_deletes_them_when_asked(run, tmp_path, matrix):
    from embedstore.store import Store

    run("init")
    for model in ("m1", "m2"):
        run("import", "--dataset", "ds", "--model", model, "--array", "image_emb", tmp_path / "emb.npy",
            "--keys", tmp_path / "keys.txt")  # fmt: skip
    store = Store.open(tmp_path / "store", readonly=False)
    for model in ("m1", "m2"):
        store.put_results("probe", [("acc1", 0.5), ("acc5", 0.9)], params={"c": 1}, model=model, dataset="ds")
    store.put_results("robustness", [("slope", 1.0)], params={}, model=None, dataset="ds")

    def results_of(model: str | None) -> int:
        return len(store.query("SELECT 1 FROM results WHERE model IS NOT DISTINCT FROM ?", [model]))

    kept = run("rm", "--model", "m1", "--yes").output
    assert "deleted 1 array(s)\n" in kept and "kept 2 result row(s)" in kept and "--results" in kept
    assert (results_of("m1"), results_of("m2"), results_of(None)) == (2, 2, 1)
    deleted = run("rm", "--model", "m2", "--results", "--yes").output
    assert deleted == "deleted 1 array(s) and 2 result row(s)\n"
    assert (results_of("m1"), results_of("m2"), results_of(None)) == (2, 0, 1)
    # m1's arrays are gone and its results were kept: --results on the pair still deletes them
    late = run("rm", "--model", "m1", "--dataset", "ds", "--results", "--yes").output
    assert late == "deleted 2 result row(s) of m1 on ds\n" and results_of("m1") == 0
    assert "no array matches" in run("rm", "--model", "m1", "--dataset", "ds", "--results", "--yes", ok=False).output

def test_errors_without_store(run, tmp_path):
    result = run("ls", ok=False)
    assert result.exit_code == 1 and "no store at" in result.output


def test_installed_console_script(tmp_path):
    beside_python = Path(sys.executable).parent / "embedstore"  # the venv's bin, also when it is not activated
    exe = str(beside_python) if beside_python.is_file() else shutil.which("embedstore")
    assert exe, "the embedstore console script is neither beside the interpreter nor on PATH"
    env = dict(os.environ, EMBEDSTORE_STORE=str(tmp_path / "s"))
    assert subprocess.run([exe, "init"], env=env, capture_output=True, text=True, check=True).returncode == 0
    out = subprocess.run([exe, "ls", "--json"], env=env, capture_output=True, text=True, check=True).stdout
    assert json.loads(out)["arrays"] == []
    bad = subprocess.run([exe, "sql", "DELETE FROM models"], env=env, capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stderr.strip().startswith("Error: refused") and "Traceback" not in bad.stderr


def test_json_output_is_strict_json(capsys):
    from embedstore_cli.options import print_json

    print_json({"auroc": float("nan"), "values": [np.float32(0.5), np.float64("inf"), 1], "ok": np.int64(3)})
    text = capsys.readouterr().out
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}")) == {
        "auroc": None, "values": [0.5, None, 1], "ok": 3,
    }  # fmt: skip


def test_caption_embeddings_round_trip_by_caption_id(tiny_store, tmp_path):
    import pyarrow.parquet as pq

    from embedstore.errors import StoreError
    from embedstore.store.exchange import export_array, import_array

    clip = "openclip:embedstore-tiny@random:0"
    export_array(tiny_store, "shapes-captions", clip, "caption_emb", tmp_path / "cap.parquet")
    with h5py.File(tmp_path / "shuffled.h5", "w") as f:  # rows in another order: placed by caption id
        table = pq.read_table(tmp_path / "cap.parquet")
        order = np.random.default_rng(0).permutation(table.num_rows)
        f["data"] = np.stack(table.column("values").to_numpy(zero_copy_only=False))[order].astype(np.float16)
        f["keys"] = np.asarray(table.column("key").to_pylist(), dtype=object)[order].astype("S")
    import_array(tiny_store, "shapes-captions", "imp:cap", "caption_emb", tmp_path / "shuffled.h5")
    np.testing.assert_array_equal(
        tiny_store.read_array("shapes-captions", "imp:cap", "caption_emb"),
        tiny_store.read_array("shapes-captions", clip, "caption_emb"),
    )
    with pytest.raises(StoreError, match="caption_emb rows are captions of a caption dataset, and store .* has no "
                                         "dataset elsewhere"):  # fmt: skip
        import_array(tiny_store, "elsewhere", "imp:cap", "caption_emb", tmp_path / "shuffled.h5")
    assert not tiny_store.query("SELECT * FROM datasets WHERE name = 'elsewhere'")
