"""The WebDataset reader against CLIP_benchmark's layout, and the writer against webdataset's reader.

`_clip_benchmark_convert` / `_clip_benchmark_convert_retrieval` repeat what CLIP_benchmark's
``webdataset_builder.convert_dataset`` / ``convert_retrieval_dataset`` (commit 48de38c) do, with the
same ``webdataset.ShardWriter`` calls (that module itself cannot be imported offline: it imports
``requests`` through the dataset builders).
"""

from __future__ import annotations

import io
import os
import tarfile

import pytest

from embedstore.errors import DatasetError
from embedstore.sources import open_dataset, write_dataset

webdataset = pytest.importorskip("webdataset")


def _clip_benchmark_convert(items, classes, templates, output, split="test", max_count=10_000, image_format="webp"):
    """CLIP_benchmark ``convert_dataset`` on (image bytes, label) pairs with ``transform=None``."""
    os.makedirs(os.path.join(output, split), exist_ok=True)
    with open(os.path.join(output, "classnames.txt"), "w") as handle:
        print(*classes, sep="\n", end="\n", file=handle)
    with open(os.path.join(output, "zeroshot_classification_templates.txt"), "w") as handle:
        print(*templates, sep="\n", end="\n", file=handle)
    sink = webdataset.ShardWriter(os.path.join(output, split, r"%d.tar"), maxcount=max_count, maxsize=1_000_000_000)
    for index, (data, label) in enumerate(items):
        sink.write({"__key__": f"s{index:07d}", image_format: data, "cls": label})
    num_shards = sink.shard
    sink.close()
    with open(os.path.join(output, split, "nshards.txt"), "w") as handle:
        print(num_shards, end="\n", file=handle)


def _clip_benchmark_convert_retrieval(items, output, split="test", image_format="webp"):
    """CLIP_benchmark ``convert_retrieval_dataset`` on (image bytes, [captions]) pairs."""
    os.makedirs(os.path.join(output, split), exist_ok=True)
    with open(os.path.join(output, "dataset_type.txt"), "w") as handle:
        print("retrieval", end="\n", file=handle)
    sink = webdataset.ShardWriter(os.path.join(output, split, r"%d.tar"), maxcount=10_000, maxsize=1_000_000_000)
    for index, (data, captions) in enumerate(items):
        text = "\n".join(caption.replace("\n", r"\n") for caption in captions)
        sink.write({"__key__": f"s{index:07d}", image_format: data, "txt": text})
    num_shards = sink.shard
    sink.close()
    with open(os.path.join(output, split, "nshards.txt"), "w") as handle:
        print(num_shards, end="\n", file=handle)


@pytest.fixture(scope="module")
def webp_shapes():
    return open_dataset("webp", "synthetic:shapes?n=25&seed=4&format=webp")


def _pairs(dataset):
    return [(e.data, dataset.samples[e.row].label) for e in dataset.iter_encoded(0, len(dataset))]


def test_reads_what_clip_benchmark_writes(webp_shapes, tmp_path):
    templates = ["a photo of a {c}.", "a sketch of a {c}."]
    _clip_benchmark_convert(_pairs(webp_shapes), webp_shapes.classnames, templates, str(tmp_path), max_count=10)
    dataset = open_dataset("cb", f"wds:{tmp_path}")
    assert dataset.kind == "wds" and dataset.task == "classification" and dataset.root == str(tmp_path)
    assert dataset.classnames == webp_shapes.classnames
    assert dataset.templates == templates
    assert [s.key for s in dataset.samples] == [f"s{i:07d}" for i in range(25)]
    assert [s.label for s in dataset.samples] == [s.label for s in webp_shapes.samples]
    assert dataset.samples[12].locator == "test/1.tar:s0000012.webp"
    assert [e.data for e in dataset.iter_encoded(0, 25)] == [data for data, _ in _pairs(webp_shapes)]


def test_reads_clip_benchmark_retrieval_sets(tmp_path):
    captions = open_dataset("cap", "synthetic:shapes-captions?n=6&format=png")
    items = [(e.data, list(captions.samples[e.row].captions)) for e in captions.iter_encoded(0, 6)]
    _clip_benchmark_convert_retrieval(items, str(tmp_path), image_format="png")
    for spec in (f"wds:{tmp_path}", f"captions:{tmp_path}#test"):
        dataset = open_dataset("ret", spec)
        assert dataset.task == "retrieval" and dataset.classnames == []
        assert [s.captions for s in dataset.samples] == [s.captions for s in captions.samples]
        assert [s.label for s in dataset.samples] == [None] * 6


def test_webdataset_reads_what_the_writer_writes_like_clip_benchmark_does(webp_shapes, tmp_path):
    write_dataset(webp_shapes, tmp_path, "wds", shard_size=7)
    nshards = int((tmp_path / "test" / "nshards.txt").read_text())
    pattern = str(tmp_path / "test" / f"{{0..{nshards - 1}}}.tar")
    loaded = list(webdataset.WebDataset(pattern, shardshuffle=False).to_tuple("__key__", "webp;png;jpg;jpeg", "cls"))
    assert [key for key, _, _ in loaded] == [f"s{i:07d}" for i in range(25)]
    assert [(data, int(label)) for _, data, label in loaded] == _pairs(webp_shapes)
    classnames = [line.strip() for line in (tmp_path / "classnames.txt").read_text().splitlines()]
    assert classnames == webp_shapes.classnames


def test_writer_tar_headers_follow_webdataset(webp_shapes, tmp_path):
    write_dataset(webp_shapes, tmp_path, "wds", shard_size=100)
    with tarfile.open(tmp_path / "test" / "0.tar") as archive:
        members = archive.getmembers()
    assert [m.name for m in members[:4]] == ["s0000000.cls", "s0000000.webp", "s0000001.cls", "s0000001.webp"]
    assert {(m.mode, m.uname, m.gname, m.mtime) for m in members} == {(0o444, "bigdata", "bigdata", 0)}


def test_split_comes_from_the_fragment(webp_shapes, tmp_path):
    write_dataset(webp_shapes, tmp_path, "wds", split="train")
    assert len(open_dataset("tr", f"wds:{tmp_path}#train")) == 25
    assert len(open_dataset("tr", f"wds:{tmp_path}", split="train")) == 25
    with pytest.raises(DatasetError, match=r"no test/nshards.txt"):
        open_dataset("te", f"wds:{tmp_path}")


def _write_tar(path, members):
    with tarfile.open(path, "w") as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


def _wds_root(tmp_path, shards, classnames=("cat", "dog")):
    (tmp_path / "test").mkdir(parents=True, exist_ok=True)
    if classnames is not None:
        (tmp_path / "classnames.txt").write_text("\n".join(classnames) + "\n")
    for index, members in enumerate(shards):
        _write_tar(tmp_path / "test" / f"{index}.tar", members)
    (tmp_path / "test" / "nshards.txt").write_text(f"{len(shards)}\n")
    return tmp_path


JPEG = b"\xff\xd8\xff\xe0fake-jpeg"


def test_a_valid_hand_made_root_opens(tmp_path):
    root = _wds_root(tmp_path, [[("s0.jpg", JPEG), ("s0.cls", b"1")], [("s1.JPG", JPEG), ("s1.cls", b"-1")]])
    dataset = open_dataset("ok", f"wds:{root}")
    assert [(s.key, s.label) for s in dataset.samples] == [("s0", 1), ("s1", None)]


@pytest.mark.parametrize(
    ("shards", "classnames", "message"),
    [
        ([[("s0.jpg", JPEG), ("s0.cls", b"2")]], ("cat", "dog"), r"label 2 is outside the class list"),
        ([[("s0.jpg", JPEG), ("s0.cls", b"cat")]], ("cat", "dog"), r"non-integer cls"),
        ([[("s0.jpg", JPEG)]], ("cat", "dog"), r"has no cls member"),
        ([[("s0.cls", b"0")]], ("cat", "dog"), r"has no image member"),
        ([[("../s0.jpg", JPEG), ("../s0.cls", b"0")]], ("cat", "dog"), r"escapes the shard"),
        ([[("/abs/s0.jpg", JPEG)]], ("cat", "dog"), r"escapes the shard"),
        (
            [[("s0.jpg", JPEG), ("s0.cls", b"0")], [("s0.jpg", JPEG), ("s0.cls", b"1")]],
            ("cat", "dog"),
            r"duplicate sample key 's0'",
        ),
        ([[("s0.jpg", JPEG), ("s0.cls", b"0")]], None, r"has no classnames.txt"),
        ([[("README", b"hi")]], ("cat",), r"no key.extension form"),
    ],
)
def test_bad_shards_are_rejected_when_opened(tmp_path, shards, classnames, message):
    root = _wds_root(tmp_path, shards, classnames)
    with pytest.raises(DatasetError, match=message):
        open_dataset("bad", f"wds:{root}")


def test_missing_nshards_and_missing_shards_are_rejected(tmp_path):
    root = _wds_root(tmp_path, [[("s0.jpg", JPEG), ("s0.cls", b"0")]])
    (root / "test" / "nshards.txt").write_text("2\n")
    with pytest.raises(DatasetError, match=r"shard 'test/1.tar' is missing"):
        open_dataset("bad", f"wds:{root}")
    (root / "test" / "nshards.txt").write_text("two\n")
    with pytest.raises(DatasetError, match=r"is not a shard count"):
        open_dataset("bad", f"wds:{root}")
    os.remove(root / "test" / "nshards.txt")
    with pytest.raises(DatasetError, match=r"dataset 'bad': webdataset root .* has no test/nshards.txt"):
        open_dataset("bad", f"wds:{root}")
    with pytest.raises(DatasetError, match=r"does not exist"):
        open_dataset("bad", f"wds:{root / 'nowhere'}")


def test_corrupt_and_truncated_tars_are_rejected(tmp_path):
    root = _wds_root(tmp_path, [[("s0.jpg", JPEG * 200), ("s0.cls", b"0")]])
    shard = root / "test" / "0.tar"
    shard.write_bytes(shard.read_bytes()[:900])
    with pytest.raises(DatasetError, match=r"shard 'test/0.tar'"):
        open_dataset("bad", f"wds:{root}")
    shard.write_bytes(b"this is not a tar file" * 40)
    with pytest.raises(DatasetError, match=r"cannot be read as a tar file"):
        open_dataset("bad", f"wds:{root}")


def test_multilabel_and_unknown_dataset_types_are_rejected(tmp_path):
    root = _wds_root(tmp_path, [[("s0.jpg", JPEG), ("s0.cls", b"0")]])
    (root / "dataset_type.txt").write_text("multilabel\n")
    with pytest.raises(DatasetError, match=r"multilabel webdatasets are not supported"):
        open_dataset("bad", f"wds:{root}")
    (root / "dataset_type.txt").write_text("segmentation\n")
    with pytest.raises(DatasetError, match=r"unknown dataset type 'segmentation'"):
        open_dataset("bad", f"wds:{root}")


def test_retrieval_samples_need_captions(tmp_path):
    root = _wds_root(tmp_path, [[("s0.jpg", JPEG), ("s0.txt", b"a cat")], [("s1.jpg", JPEG)]], classnames=None)
    (root / "dataset_type.txt").write_text("retrieval\n")
    with pytest.raises(DatasetError, match=r"sample 's1' has no txt member"):
        open_dataset("bad", f"wds:{root}")
