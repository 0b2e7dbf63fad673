"""Manifests (CSV/TSV, Parquet, JSONL) and caption manifests: what they accept and every bad input."""

from __future__ import annotations

import json
import os

import pyarrow
import pyarrow.parquet
import pytest

from embedstore.errors import DatasetError
from embedstore.sources import open_dataset
from embedstore.sources.imagenet import imagenet_classnames, imagenet_wnids

JPEG = b"\xff\xd8\xff\xe0fake-jpeg"


@pytest.fixture
def root(tmp_path):
    """A dataset folder with four image files (two in a sub-folder)."""
    (tmp_path / "img").mkdir()
    for name in ("a.jpg", "b.jpg", "img/c.jpg", "img/d.jpg"):
        (tmp_path / name).write_bytes(JPEG + name.encode())
    return tmp_path


def _csv(root, text, name="manifest.csv"):
    path = root / name
    path.write_text(text)
    return path


def _manifest_spec(root, text):
    return f"manifest:{_csv(root, text)}"


def test_csv_with_class_names_as_labels(root):
    path = _csv(root, "path,label,source\na.jpg,dog,web\nimg/c.jpg,cat,\n./img/../b.jpg,dog,camera\n")
    dataset = open_dataset("m", f"manifest:{path}")
    assert dataset.kind == "manifest" and dataset.root == str(root)
    assert dataset.classnames == ["cat", "dog"]
    assert [(s.key, s.label, s.locator) for s in dataset.samples] == [
        ("a.jpg", 1, "a.jpg"),
        ("img/c.jpg", 0, "img/c.jpg"),
        ("b.jpg", 1, "b.jpg"),
    ]
    assert [dict(s.annotations) for s in dataset.samples] == [{"source": "web"}, {}, {"source": "camera"}]
    assert [e.data for e in dataset.iter_encoded(0, 3)] == [JPEG + b"a.jpg", JPEG + b"img/c.jpg", JPEG + b"b.jpg"]


def test_integer_labels_index_the_sibling_class_list(root):
    (root / "classnames.txt").write_text("zebra\nyak\n")
    (root / "zeroshot_classification_templates.txt").write_text("a {c} in the wild.\n")
    path = _csv(root, "path,label,key\na.jpg,1,first\nb.jpg,-1,second\nimg/c.jpg,,third\nimg/d.jpg,zebra,fourth\n")
    dataset = open_dataset("m", f"manifest:{path}")
    assert dataset.classnames == ["zebra", "yak"]
    assert dataset.templates == ["a {c} in the wild."]
    assert [(s.key, s.label) for s in dataset.samples] == [
        ("first", 1),
        ("second", None),
        ("third", None),
        ("fourth", 0),
    ]


def test_jsonl_parquet_and_tsv_read_the_same(root):
    rows = [{"path": "a.jpg", "label": 0, "extra": {"x": 1}}, {"path": "img/d.jpg", "label": 1, "extra": None}]
    (root / "classnames.txt").write_text("cat\ndog\n")
    (root / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    pyarrow.parquet.write_table(
        pyarrow.Table.from_pylist([{k: v for k, v in r.items() if k != "extra"} for r in rows]), root / "m.parquet"
    )
    (root / "m.tsv").write_text("path\tlabel\na.jpg\t0\nimg/d.jpg\t1\n")
    results = [open_dataset("m", f"manifest:{root / name}") for name in ("m.jsonl", "m.parquet", "m.tsv")]
    for dataset in results:
        assert [(s.key, s.label) for s in dataset.samples] == [("a.jpg", 0), ("img/d.jpg", 1)]
    assert dict(results[0].samples[0].annotations) == {"extra": '{"x": 1}'}


def test_column_options_and_a_class_list_option(root):
    classes = root / "classes.txt"
    classes.write_text("red\ngreen\n")
    path = _csv(root, "file,colour,id\na.jpg,green,7\nb.jpg,red,8\n")
    dataset = open_dataset("m", f"manifest:{path}?path_column=file&label_column=colour&key_column=id&classes={classes}")
    assert [(s.key, s.label) for s in dataset.samples] == [("7", 1), ("8", 0)]


def test_wnid_class_lists_map_to_imagenet_names_and_a_subset(root):
    wnids = [imagenet_wnids()[i] for i in (1, 42, 999)]
    (root / "classnames.txt").write_text("\n".join(wnids) + "\n")
    path = _csv(root, f"path,label\na.jpg,{wnids[2]}\nb.jpg,0\nimg/c.jpg,{imagenet_classnames()[42]}\n")
    dataset = open_dataset("m", f"manifest:{path}")
    assert dataset.class_subset == [1, 42, 999]
    assert dataset.classnames == [imagenet_classnames()[i] for i in (1, 42, 999)]
    assert [s.label for s in dataset.samples] == [2, 0, 1]
    assert len(dataset.templates) == 80


def test_an_absolute_path_inside_the_root_is_accepted(root):
    path = _csv(root, f"path\n{root / 'img' / 'c.jpg'}\n")
    assert open_dataset("m", f"manifest:{path}").samples[0].locator == "img/c.jpg"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("file,label\na.jpg,cat\n", r"has no path column 'path'"),
        ("path,label\na.jpg,5\n", r"row 1: integer label 5 but no class list"),
        (
            "path,label\na.jpg,cat\nb.jpg,3\n",
            r"row 2: label 3 is outside the class list \(1 class names used as labels\)",
        ),
        ('path\na.jpg\n""\n', r"row 2: empty or non-text path"),
        ("path,key\na.jpg,k\nb.jpg,k\n", r"row 2: duplicate key 'k' \(first at row 1\)"),
        ("path\na.jpg\n./a.jpg\n", r"row 2: duplicate key 'a.jpg'"),
        ("path\n../outside.jpg\n", r"row 1: path '../outside.jpg' escapes the dataset root"),
        ("path\nimg/../../outside.jpg\n", r"escapes the dataset root"),
        ("path\n/etc/hostname\n", r"path '/etc/hostname' escapes the dataset root"),
        ("path\nmissing.jpg\n", r"row 1: file 'missing.jpg' does not exist"),
        ("path\nimg\n", r"row 1: 'img' is not a file"),
        ("path,label\na.jpg,cat,extra\n", r"row 1: more cells than header columns"),
        ("path,path\na.jpg,b.jpg\n", r"repeats a column name"),
        ("path\n", r"has no rows"),
        ("", r"has no header row"),
    ],
)
def test_bad_csv_manifests_are_rejected_naming_file_and_row(root, text, message):
    path = _csv(root, text)
    with pytest.raises(DatasetError, match=message) as caught:
        open_dataset("bad", f"manifest:{path}")
    assert str(caught.value).startswith("dataset 'bad': ")
    assert "\n" not in str(caught.value)


def test_labels_outside_a_given_class_list_are_rejected(root):
    (root / "classnames.txt").write_text("cat\ndog\n")
    with pytest.raises(DatasetError, match=r"row 2: label 2 is outside the class list \(2 classes in .*classnames.txt"):
        open_dataset("bad", _manifest_spec(root, "path,label\na.jpg,1\nb.jpg,2\n"))
    with pytest.raises(DatasetError, match=r"row 1: label 'cow' is not in the class list"):
        open_dataset("bad", _manifest_spec(root, "path,label\na.jpg,cow\n"))


def test_a_name_listed_twice_cannot_be_a_label(root):
    (root / "classnames.txt").write_text("missile\nmissile\ntank\n")
    assert open_dataset("ok", _manifest_spec(root, "path,label\na.jpg,1\n")).samples[0].label == 1
    with pytest.raises(DatasetError, match=r"label 'missile' names more than one class"):
        open_dataset("bad", _manifest_spec(root, "path,label\na.jpg,missile\n"))


def test_symlinks_leaving_the_root_are_rejected(root, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside") / "secret.jpg"
    outside.write_bytes(JPEG)
    os.symlink(outside, root / "link.jpg")
    os.symlink(root / "a.jpg", root / "inside.jpg")
    assert open_dataset("ok", _manifest_spec(root, "path\ninside.jpg\n")).samples[0].locator == "inside.jpg"
    with pytest.raises(DatasetError, match=r"path 'link.jpg' escapes the dataset root"):
        open_dataset("bad", _manifest_spec(root, "path\nlink.jpg\n"))


def test_unreadable_manifests_are_rejected(root):
    (root / "bad.jsonl").write_text('{"path": "a.jpg"}\n{"path": \n')
    with pytest.raises(DatasetError, match=r"bad.jsonl' line 2: invalid JSON"):
        open_dataset("bad", f"manifest:{root / 'bad.jsonl'}")
    (root / "list.jsonl").write_text('["a.jpg"]\n')
    with pytest.raises(DatasetError, match=r"expected a JSON object per line"):
        open_dataset("bad", f"manifest:{root / 'list.jsonl'}")
    (root / "bad.parquet").write_bytes(b"PAR1 but not really")
    with pytest.raises(DatasetError, match=r"bad.parquet' cannot be read"):
        open_dataset("bad", f"manifest:{root / 'bad.parquet'}")
    (root / "latin.csv").write_bytes("path\nä.jpg\n".encode("latin-1"))
    with pytest.raises(DatasetError, match=r"latin.csv' cannot be read"):
        open_dataset("bad", f"manifest:{root / 'latin.csv'}")
    with pytest.raises(DatasetError, match=r"unsupported extension '.xlsx'"):
        open_dataset("bad", f"manifest:{root / 'm.xlsx'}")
    with pytest.raises(DatasetError, match=r"manifest .*nowhere.csv' does not exist"):
        open_dataset("bad", f"manifest:{root / 'nowhere.csv'}")


def test_named_columns_that_are_missing_are_rejected(root):
    path = _csv(root, "path,label\na.jpg,cat\n")
    for option, message in (("label_column=y", "no label column 'y'"), ("key_column=id", "no key column 'id'")):
        with pytest.raises(DatasetError, match=message):
            open_dataset("bad", f"manifest:{path}?{option}")


def test_caption_manifest_with_a_list_column(root):
    path = _csv(root, 'path,captions\na.jpg,"[""a dog"", ""a brown dog""]"\nb.jpg,"one\ntwo\n"\n')
    dataset = open_dataset("cap", f"captions:{path}")
    assert dataset.kind == "captions" and dataset.task == "retrieval" and dataset.classnames == []
    assert [s.captions for s in dataset.samples] == [("a dog", "a brown dog"), ("one", "two")]
    assert [s.label for s in dataset.samples] == [None, None]


def test_caption_manifest_with_one_row_per_pair(root):
    rows = [("a.jpg", "[sic] first"), ("b.jpg", "other"), ("a.jpg", "second")]
    pyarrow.parquet.write_table(
        pyarrow.Table.from_pylist([{"path": p, "caption": c} for p, c in rows]), root / "pairs.parquet"
    )
    dataset = open_dataset("cap", f"captions:{root / 'pairs.parquet'}")
    assert [(s.key, s.captions) for s in dataset.samples] == [
        ("a.jpg", ("[sic] first", "second")),
        ("b.jpg", ("other",)),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("path,text\na.jpg,hi\n", r"has neither a 'captions' nor a 'caption' column"),
        ("path,captions\na.jpg,\n", r"row 1: image has no captions"),
        ("path,captions\na.jpg,[broken\n", r"row 1: captions look like a JSON list but do not parse"),
        ("path,caption\na.jpg,\n", r"row 1: empty caption"),
        ("path,caption\n../x.jpg,hello\n", r"escapes the dataset root"),
    ],
)
def test_bad_caption_manifests_are_rejected(root, text, message):
    with pytest.raises(DatasetError, match=message):
        open_dataset("bad", f"captions:{_csv(root, text)}")


def test_a_missing_caption_set_is_named_as_missing(root):
    for missing in ("nowhere", "nowhere.csv"):
        with pytest.raises(DatasetError, match=rf"caption set .*{missing}' does not exist \(give a WebDataset folder"):
            open_dataset("bad", f"captions:{root / missing}")
