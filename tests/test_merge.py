"""embedstore merge: stores extracted apart come together bit-identical; what differs is refused before
anything is written; a failed merge leaves the destination as it was."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from imported_classifiers import register_rows_only_dataset

from embedstore.errors import StoreError
from embedstore.evaluate.indexes import build_saved_index, list_saved_indexes
from embedstore.evaluate.zeroshot import run_zeroshot
from embedstore.index.spec import IndexSpec
from embedstore.merge import merge_stores, plan_merge
from embedstore.store import Store
from embedstore_cli.main import cli

CLIP = "openclip:embedstore-tiny@random:0"
CLIP_1 = "openclip:embedstore-tiny@random:1"
TIMM = "timm:test_vit@random:0"
CATALOG_TABLES = ("datasets", "samples", "captions", "annotations", "templates", "prompt_sets", "bad_samples", "models")


def _copy(template, path) -> Store:
    shutil.copytree(template, path)
    return Store.open(path, readonly=False)


def _catalog(store: Store) -> dict[str, list]:
    """Every catalog row that a merge copies, without the columns that say when or where it was written."""
    out = {}
    for table in CATALOG_TABLES:
        rows = store.query(f"SELECT * FROM {table}")
        out[table] = sorted(str({k: v for k, v in r.items() if k not in ("created", "detected")}) for r in rows)
    arrays = store.query("SELECT * FROM arrays")
    out["arrays"] = sorted(str({k: v for k, v in r.items() if k not in ("created", "updated", "path")}) for r in arrays)
    results = store.query("SELECT model, dataset, analysis, metric, value, value_text, params_hash FROM results")
    out["results"] = sorted(str(r) for r in results)
    return out


def _arrays(store: Store) -> dict[tuple[str, str, str], np.ndarray]:
    return {(i.dataset, i.model, i.name): store.read_array(i.dataset, i.model, i.name) for i in store.list_arrays()}


@pytest.fixture
def source(tiny_store_template, tmp_path) -> Store:
    store = _copy(tiny_store_template, tmp_path / "source")
    run_zeroshot(store, ["*"], ["shapes", "shapes-v2"])
    store.record_bad_samples("shapes", [(5, "shapes-0005", "test: pretend undecodable")])
    return store


def test_a_store_merged_into_an_empty_one_is_the_same_store(source, tmp_path):
    destination = Store.create(tmp_path / "destination")
    report = merge_stores(destination, source)
    assert len(report.plan.arrays) == len(source.list_arrays()) and report.plan.skipped == []
    sets = source.query("SELECT DISTINCT dataset, name FROM prompt_sets")
    assert report.results == len(source.query("SELECT * FROM results")) > 0
    assert (report.bad_samples, report.prompt_sets) == (1, len(sets))
    assert _catalog(destination) == _catalog(source)
    import zarr  # the copied arrays sit in a well-formed Zarr hierarchy, parent groups included

    group = zarr.open_group(destination.path / "arrays.zarr", mode="r")
    assert sorted(name for name, _ in group.members()) == sorted({i.dataset for i in source.list_arrays()})
    copied, original = _arrays(destination), _arrays(source)
    assert copied.keys() == original.keys()
    for key, values in original.items():
        assert copied[key].dtype == values.dtype and copied[key].tobytes() == values.tobytes(), key
    np.testing.assert_array_equal(destination.bad_rows("shapes"), [5])
    again = merge_stores(destination, source)
    assert again.plan.arrays == [] and {why for _, why in again.plan.skipped} == {"already in the destination"}
    assert (again.results, again.bad_samples, again.prompt_sets) == (0, 0, 0)
    assert _catalog(destination) == _catalog(source)


def test_saved_indexes_go_with_their_arrays(source, tmp_path):
    build_saved_index(source, "shapes-captions", CLIP, "image_emb", IndexSpec(kind="flat"), device="cpu")
    destination = Store.create(tmp_path / "destination")
    assert len(plan_merge(destination, source).indexes) == 1
    report = merge_stores(destination, source, datasets=["shapes-captions"])
    assert len(report.plan.indexes) == 1
    (saved,) = list_saved_indexes(destination, verify=True)
    assert (saved.dataset, saved.model, saved.array, saved.kind, saved.status) == (
        "shapes-captions",
        CLIP,
        "image_emb",
        "flat",
        "current",
    )
    saved.path.with_name(saved.path.name + ".json").unlink()  # a merge stopped before the sidecar's copy
    again = merge_stores(destination, source, datasets=["shapes-captions"])
    assert not again.plan.arrays and len(again.plan.indexes) == 1  # the arrays are there; the index comes again
    assert [s.status for s in list_saved_indexes(destination, verify=True)] == ["current"]
    assert not merge_stores(destination, source, datasets=["shapes-captions"]).plan.indexes
    # Equal fingerprints, other bytes (another batch size, say): the source's index would be stale here.
    saved.path.with_name(saved.path.name + ".json").unlink()
    marker = destination.path / "arrays.zarr" / destination.list_arrays("shapes-captions", CLIP, "image_emb")[0].path
    marker = marker / "done" / "0"
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "crc32": 1}))
    assert not plan_merge(destination, source, datasets=["shapes-captions"]).indexes


def test_models_extracted_into_two_stores_come_together(source, tiny_store_template, tmp_path):
    destination = _copy(tiny_store_template, tmp_path / "destination")
    destination.delete_arrays(model=CLIP_1)
    source.delete_arrays(model=TIMM)
    source.record_bad_samples("shapes-v2", [(3, "shapes-v2-0003", "test")])
    report = merge_stores(destination, source, models=["openclip:*"])
    assert {i.model for i in report.plan.arrays} == {CLIP_1}
    assert {i.model for i, _ in report.plan.skipped} == {CLIP}
    assert report.plan.new_models == [] and report.plan.new_datasets == []
    assert report.bad_samples == 2  # shapes row 5 and shapes-v2 row 3
    held = {(i.dataset, i.model, i.name) for i in destination.list_arrays()}
    assert {m for _, m, _ in held} == {CLIP, CLIP_1, TIMM}
    np.testing.assert_array_equal(
        destination.read_array("shapes", CLIP_1, "image_emb"), source.read_array("shapes", CLIP_1, "image_emb")
    )
    rows = destination.query("SELECT DISTINCT model FROM results ORDER BY model")
    assert [r["model"] for r in rows] == [CLIP_1]  # results of the copied pairs only


def test_a_shared_datasets_bad_rows_come_only_with_copied_arrays_of_it(source, tiny_store_template, tmp_path):
    destination = _copy(tiny_store_template, tmp_path / "destination")
    destination.delete_arrays(model=CLIP_1, dataset="shapes-v2")
    report = merge_stores(destination, source, models=[CLIP_1])  # copies shapes-v2 only; shapes is skipped
    assert {i.dataset for i in report.plan.arrays} == {"shapes-v2"} and "shapes" in report.plan.shared_datasets
    assert report.bad_samples == 0 and destination.bad_rows("shapes").size == 0  # its arrays here are not zeros
    destination.delete_arrays(model=CLIP_1, dataset="shapes", name="text_emb")
    report = merge_stores(destination, source, models=[CLIP_1], datasets=["shapes"])
    assert [i.name for i in report.plan.arrays] == ["text_emb"]  # a row per template, none per image
    assert report.bad_samples == 0 and destination.bad_rows("shapes").size == 0


def test_what_differs_is_refused_and_the_destination_is_unchanged(source, tiny_store_template, tmp_path):
    destination = Store.create(tmp_path / "destination")
    register_rows_only_dataset(destination, "shapes", ["a", "b"], [0, 1])
    before = _catalog(destination)
    with pytest.raises(
        StoreError,
        match="dataset shapes differs between .* its classes or rows .* differ, so its arrays would not line up",
    ):
        merge_stores(destination, source)
    assert _catalog(destination) == before
    assert merge_stores(destination, source, datasets=["shapes-v2"]).plan.new_datasets == ["shapes-v2"]

    other = Store.create(tmp_path / "other")
    other.register_model({"model_id": CLIP, "kind": "clip", "fingerprint": "other weights"})
    with pytest.raises(StoreError, match=f"model {CLIP} has other weights in .*: merge it under another id"):
        merge_stores(other, source)

    shared = _copy(tiny_store_template, tmp_path / "shared")
    shared.delete_arrays(model=CLIP)
    with shared.catalog.write() as con:
        con.execute("INSERT INTO templates VALUES ('shapes', 99, 'a drawing of a {c}.')")
    with pytest.raises(StoreError, match="dataset shapes has .* templates in .* not the same list"):
        merge_stores(shared, source, models=[CLIP])
    assert {i.dataset for i in merge_stores(shared, source, models=[CLIP], datasets=["shapes-v*"]).plan.arrays} == {
        "shapes-v2"
    }

    with pytest.raises(StoreError, match="is the destination store itself"):
        merge_stores(source, Store.open(source.path))
    with pytest.raises(StoreError, match="no array of .* matches the given --model/--dataset"):
        merge_stores(other, source, models=["nothing:*"])
    assert [r["name"] for r in destination.query("SELECT name FROM datasets ORDER BY name")] == ["shapes", "shapes-v2"]


def test_a_destination_without_text_emb_takes_the_rest_of_the_source_template_list(
    source, tiny_store_template, tmp_path
):
    """The destination knows the first two of the source's eight templates and holds no text_emb of the
    dataset: the other six are appended, and every template index it stored keeps its meaning."""
    theirs = source.templates("shapes")

    def destination_with(name: str, templates: list[str]) -> Store:
        store = _copy(tiny_store_template, tmp_path / name)
        store.delete_arrays(dataset="shapes", model=CLIP)
        store.delete_arrays(dataset="shapes", model=CLIP_1)
        with store.catalog.write() as con:
            con.execute("DELETE FROM templates WHERE dataset = 'shapes'")
            con.execute("DELETE FROM prompt_sets WHERE dataset = 'shapes'")
            con.executemany("INSERT INTO templates VALUES ('shapes', ?, ?)", list(enumerate(templates)))
            con.executemany("INSERT INTO prompt_sets VALUES ('shapes', ?, ?, ?)",
                            [("default", 0, 0), ("default", 1, 1), ("mine", 0, 1)])  # fmt: skip
        return store

    source.add_prompt_set("shapes", "theirs", [theirs[7]])
    destination = destination_with("destination", theirs[:2])
    report = merge_stores(destination, source, models=[CLIP], datasets=["shapes"])
    assert report.plan.adopted_templates == {"shapes": theirs}
    assert destination.templates("shapes") == theirs
    sets = destination.prompt_sets("shapes")
    assert sets["default"] == [0, 1] and sets["mine"] == [1] and sets["theirs"] == [7]  # the destination's default kept
    mine = run_zeroshot(destination, [CLIP], ["shapes"], prompt_set="mine")[0].result.metrics()
    assert mine == run_zeroshot(source, [CLIP], ["shapes"], templates=[1])[0].result.metrics()

    reordered = destination_with("reordered", [theirs[1], theirs[0]])
    with pytest.raises(StoreError, match="cannot take the source's list: its list is not the start of"):
        merge_stores(reordered, source, models=[CLIP], datasets=["shapes"])
    assert reordered.templates("shapes") == [theirs[1], theirs[0]]


def test_unfinished_or_missing_arrays_stay_behind(source, tmp_path):
    def array_folder(dataset: str, model: str, name: str):
        return source.path / "arrays.zarr" / source.list_arrays(dataset, model, name)[0].path

    (array_folder("shapes", CLIP, "image_emb") / "done" / "1").unlink()  # a chunk not written yet
    source.update_array_progress("shapes", CLIP, "image_emb")
    with source.catalog.write() as con:  # every chunk written, but the extraction has not ended
        con.execute("UPDATE arrays SET status = 'partial' WHERE dataset = 'shapes-v2' AND model = ? "
                    "AND name = 'image_emb'", [CLIP])  # fmt: skip
    shutil.rmtree(array_folder("shapes", TIMM, "logits"))  # files lost: a store copied without its arrays
    (array_folder("shapes-v2", TIMM, "logits") / "done" / "0").unlink()  # catalog complete, a marker gone
    destination = Store.create(tmp_path / "destination")
    plan = plan_merge(destination, source)
    skipped = {(i.dataset, i.model, i.name): why for i, why in plan.skipped}
    assert len(skipped) == 4 and len(plan.arrays) == len(source.list_arrays()) - 4
    assert skipped[("shapes", CLIP, "image_emb")].startswith("unfinished in")
    assert "(32 of 64 rows; its extraction has not ended)" in skipped[("shapes", CLIP, "image_emb")]
    assert "(32 of 32 rows; its extraction has not ended)" in skipped[("shapes-v2", CLIP, "image_emb")]
    assert skipped[("shapes", TIMM, "logits")].startswith("its files are missing in")
    assert skipped[("shapes-v2", TIMM, "logits")].startswith("only 0 of its 32 rows are marked written")


def test_the_same_rows_with_other_file_stamps_merge_only_when_trusted(source, tiny_store_template, tmp_path):
    destination = _copy(tiny_store_template, tmp_path / "destination")
    destination.delete_arrays(model=CLIP)
    with destination.catalog.write() as con:  # as if its images had been copied without their times
        con.execute("UPDATE datasets SET fingerprint = 'other-stamps' WHERE name = 'shapes'")
    with pytest.raises(StoreError, match="though its classes and rows agree: .* --trust-rows accepts it"):
        merge_stores(destination, source, models=[CLIP], datasets=["shapes"])
    report = merge_stores(destination, source, models=[CLIP], datasets=["shapes"], trust_rows=True)
    assert report.plan.relabelled == {"shapes": "other-stamps"} and len(report.plan.arrays) == 3
    assert {i.fingerprints["dataset"] for i in destination.list_arrays("shapes", CLIP)} == {"other-stamps"}


def test_a_catalog_conflict_at_commit_is_one_error_and_removes_the_copies(source, tmp_path, monkeypatch):
    import embedstore.merge as merge

    destination = Store.create(tmp_path / "destination")
    planned = merge.plan_merge

    def plan_then_race(*args, **kwargs):
        plan = planned(*args, **kwargs)
        destination.register_model({"model_id": TIMM, "kind": "classifier", "fingerprint": "registered meanwhile"})
        return plan

    monkeypatch.setattr(merge, "plan_merge", plan_then_race)
    with pytest.raises(StoreError, match="cannot add the merged models rows: Constraint Error"):
        merge_stores(destination, source, models=[TIMM])
    assert destination.list_arrays() == [] and destination.query("SELECT * FROM datasets") == []


def test_a_failed_merge_removes_its_copies(source, tmp_path, monkeypatch):
    import embedstore.merge as merge

    destination = Store.create(tmp_path / "destination")

    def fail(*_args):
        raise StoreError("catalog write failed")

    monkeypatch.setattr(merge, "_copy_catalog_rows", fail)
    with pytest.raises(StoreError, match="catalog write failed"):
        merge_stores(destination, source)
    files = [p for p in (destination.path / "arrays.zarr").rglob("*") if p.is_file()]
    assert destination.list_arrays() == [] and len(files) > 1  # the (empty) parent groups stay
    assert all(f.name == "zarr.json" and '"node_type":"group"' in f.read_text().replace(" ", "") for f in files)
    assert sorted(p.name for p in destination.path.iterdir()) == ["arrays.zarr", "catalog.duckdb"]


def test_ctrl_c_after_the_catalog_commit_keeps_the_copies_it_lists(source, tmp_path, monkeypatch):
    import embedstore.merge as merge
    from embedstore.verify import verify_arrays

    destination = Store.create(tmp_path / "destination")
    copy_rows = merge._copy_catalog_rows

    def committed_then_interrupted(*args):
        copy_rows(*args)
        raise KeyboardInterrupt

    monkeypatch.setattr(merge, "_copy_catalog_rows", committed_then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        merge_stores(destination, source)
    assert len(destination.list_arrays()) == len(source.list_arrays())
    assert {check.status for check in verify_arrays(destination)} == {"ok"}  # every listed array is there


def test_the_command_dry_run_writes_nothing_then_merges(source, tmp_path):
    runner = CliRunner()
    destination = tmp_path / "destination"
    Store.create(destination)
    result = runner.invoke(cli, ["merge", "--store", str(destination), str(source.path), "--dataset", "shapes",
                                 "--model", TIMM, "--dry-run"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "would copy" in result.output and "would copy 2 array(s)" in result.output
    assert Store.open(destination).list_arrays() == []
    result = runner.invoke(cli, ["merge", "--store", str(destination), str(source.path), "--dataset", "shapes",
                                 "--model", "timm:test_vit@random"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "copied 2 array(s)" in result.output and "new models: 1, new datasets: 1" in result.output
    assert {i.name for i in Store.open(destination).list_arrays()} == {"image_emb", "logits"}
    refused = runner.invoke(cli, ["merge", "--store", str(destination), str(tmp_path / "nowhere")])
    assert refused.exit_code == 2 and "does not exist" in refused.output
