"""Every reader on generated data in every layout: synthetic -> write_dataset -> open_dataset.

Also: fingerprints (stable, and changing when a file changes), iter_encoded opening each file once,
and files that vanish or change after registration yielding per-sample errors.
"""

from __future__ import annotations

import builtins
import os
import pickle
from collections import Counter

import pytest

from embedstore.errors import DatasetError
from embedstore.sources import open_dataset, write_dataset
from embedstore.sources.writers import LAYOUTS

MANIFEST_LAYOUTS = ("manifest-csv", "manifest-jsonl", "manifest-parquet")


@pytest.fixture(scope="module")
def factors():
    return open_dataset("x", "synthetic:shapes-x?n=40&seed=1")


def _by_key(dataset):
    data = {encoded.row: encoded.data for encoded in dataset.iter_encoded(0, len(dataset))}
    return {sample.key: (sample, data[sample.row]) for sample in dataset.samples}


def _original_key(layout: str, key: str) -> str:
    """imagefolder keys are relative paths ``<class>/<key>.<ext>``; the others keep the key."""
    return key.split("/")[1].rsplit(".", 1)[0] if layout == "imagefolder" else key


@pytest.mark.parametrize("layout", LAYOUTS)
def test_round_trip_keeps_keys_labels_bytes_and_classes(factors, layout, tmp_path):
    spec = write_dataset(factors, tmp_path / layout, layout, shard_size=16)
    reread = open_dataset("back", spec)
    original = _by_key(factors)
    assert reread.kind == spec.split(":", 1)[0]
    assert reread.classnames == factors.classnames
    assert reread.templates == factors.templates
    assert reread.task == "classification" and reread.class_subset is None
    assert len(reread) == len(factors)
    for key, (sample, data) in _by_key(reread).items():
        source_sample, source_data = original[_original_key(layout, key)]
        assert data == source_data
        assert sample.label == source_sample.label
        if layout in MANIFEST_LAYOUTS:
            assert dict(sample.annotations) == dict(source_sample.annotations)
    if layout != "imagefolder":
        assert [s.key for s in reread.samples] == [s.key for s in factors.samples]


@pytest.mark.parametrize("layout", (*MANIFEST_LAYOUTS, "wds"))
def test_caption_sets_round_trip(layout, tmp_path):
    captions = open_dataset("cap", "synthetic:shapes-captions?n=12&seed=2")
    spec = write_dataset(captions, tmp_path / layout, layout)
    assert spec.startswith("captions:")
    reread = open_dataset("back", spec)
    assert reread.kind == "captions" and reread.task == "retrieval"
    assert [s.captions for s in reread.samples] == [s.captions for s in captions.samples]
    assert [s.label for s in reread.samples] == [None] * 12
    assert [e.data for e in reread.iter_encoded(0, 12)] == [e.data for e in captions.iter_encoded(0, 12)]


@pytest.mark.parametrize("layout", ("manifest-csv", "manifest-parquet", "wds"))
def test_unlabelled_rows_round_trip_as_none(layout, tmp_path):
    ood = open_dataset("ood", "synthetic:shapes-ood?n=6")
    reread = open_dataset("back", write_dataset(ood, tmp_path / layout, layout))
    assert [s.label for s in reread.samples] == [None] * 6
    assert reread.classnames == ood.classnames


def test_imagefolder_layout_refuses_unlabelled_and_caption_data(tmp_path):
    with pytest.raises(DatasetError, match="has no label"):
        write_dataset(open_dataset("ood", "synthetic:shapes-ood?n=3"), tmp_path / "a", "imagefolder")
    with pytest.raises(DatasetError, match="retrieval dataset"):
        write_dataset(open_dataset("cap", "synthetic:shapes-captions?n=3"), tmp_path / "b", "imagefolder")
    with pytest.raises(DatasetError, match="unknown layout"):
        write_dataset(open_dataset("x", "synthetic:shapes?n=3"), tmp_path / "c", "zip")


def test_wds_writer_shards_by_count(factors, tmp_path):
    write_dataset(factors, tmp_path, "wds", shard_size=16)
    assert (tmp_path / "test" / "nshards.txt").read_text() == "3\n"
    assert sorted(os.listdir(tmp_path / "test")) == ["0.tar", "1.tar", "2.tar", "nshards.txt"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_fingerprint_is_stable_and_changes_when_a_file_changes(factors, layout, tmp_path):
    spec = write_dataset(factors, tmp_path / layout, layout, shard_size=16)
    dataset = open_dataset("a", spec)
    before = dataset.fingerprint()
    assert before == open_dataset("b", spec).fingerprint() == dataset.fingerprint()
    victim = _a_data_file(tmp_path / layout, layout)
    stat = os.stat(victim)
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert dataset.fingerprint() != before
    assert open_dataset("c", spec).fingerprint() != before


def _a_data_file(root, layout: str) -> str:
    if layout == "wds":
        return str(root / "test" / "1.tar")
    folder = root / ("images" if layout in MANIFEST_LAYOUTS else "triangle")
    return str(folder / sorted(os.listdir(folder))[0])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_iter_encoded_opens_each_file_exactly_once(factors, layout, tmp_path, monkeypatch):
    reread = open_dataset("back", write_dataset(factors, tmp_path / layout, layout, shard_size=16))
    opened: Counter[str] = Counter()
    real_open = builtins.open

    def counting_open(file, *args, **kwargs):
        opened[os.fspath(file)] += 1
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting_open)
    results = list(reread.iter_encoded(3, 37))
    monkeypatch.undo()
    assert [r.row for r in results] == list(range(3, 37)) and all(r.error is None for r in results)
    expected = 3 if layout == "wds" else 34
    assert len(opened) == expected and set(opened.values()) == {1}


def test_a_file_removed_after_registration_yields_an_error_not_an_exception(factors, tmp_path):
    reread = open_dataset("back", write_dataset(factors, tmp_path, "manifest-csv"))
    os.remove(tmp_path / reread.samples[4].locator)
    results = list(reread.iter_encoded(0, 8))
    assert results[4].data is None and "missing file" in results[4].error
    assert all(r.data for i, r in enumerate(results) if i != 4)


def test_a_shard_rewritten_after_registration_yields_errors_for_its_rows(factors, tmp_path):
    reread = open_dataset("back", write_dataset(factors, tmp_path, "wds", shard_size=16))
    with open(tmp_path / "test" / "1.tar", "ab") as handle:
        handle.write(b"\0" * 512)
    results = list(reread.iter_encoded(0, len(reread)))
    failed = [r.row for r in results if r.data is None]
    assert failed == list(range(16, 32))
    assert "changed since the dataset was opened" in results[16].error


def test_iter_encoded_rejects_rows_outside_the_dataset(factors):
    with pytest.raises(IndexError):
        list(factors.iter_encoded(30, 41))
    assert list(factors.iter_encoded(10, 10)) == []


@pytest.mark.parametrize("layout", ("synthetic", *LAYOUTS))
def test_datasets_pickle_for_worker_processes(factors, layout, tmp_path):
    dataset = factors if layout == "synthetic" else open_dataset("back", write_dataset(factors, tmp_path, layout))
    clone = pickle.loads(pickle.dumps(dataset))
    assert clone.samples == dataset.samples and clone.fingerprint() == dataset.fingerprint()
    assert [e.data for e in clone.iter_encoded(0, 5)] == [e.data for e in dataset.iter_encoded(0, 5)]
