"""Image folders: class order, ImageNet WNID folders and subsets, class lists, common options, bad input."""

from __future__ import annotations

import pytest

from embedstore.errors import DatasetError
from embedstore.sources import open_dataset
from embedstore.sources.imagenet import (
    imagenet_classnames,
    imagenet_wnids,
    named_subset_indices,
    openai_imagenet_templates,
    simple_imagenet_templates,
)
from embedstore.sources.templates import GENERIC_TEMPLATES

JPEG = b"\xff\xd8\xff\xe0fake-jpeg"


def _tree(root, files):
    for relative in files:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(JPEG + relative.encode())
    return root


def test_classes_sort_and_files_are_images_only(tmp_path):
    root = _tree(
        tmp_path,
        ["dog/b.PNG", "dog/a.jpg", "cat/x/deep.webp", "cat/z.gif", "cat/notes.txt", "cat/.hidden.jpg", ".git/c.jpg"],
    )
    (root / "README.md").write_text("not a class")
    dataset = open_dataset("f", f"imagefolder:{root}")
    assert dataset.kind == "imagefolder" and dataset.root == str(root) and dataset.task == "classification"
    assert dataset.classnames == ["cat", "dog"] and dataset.class_subset is None
    assert [(s.key, s.label) for s in dataset.samples] == [
        ("cat/x/deep.webp", 0),
        ("cat/z.gif", 0),
        ("dog/a.jpg", 1),
        ("dog/b.PNG", 1),
    ]
    assert [s.locator for s in dataset.samples] == [s.key for s in dataset.samples]
    assert dataset.templates == list(GENERIC_TEMPLATES)
    assert [e.data for e in dataset.iter_encoded(1, 3)] == [JPEG + b"cat/z.gif", JPEG + b"dog/a.jpg"]


def test_integer_folders_sort_numerically(tmp_path):
    root = _tree(tmp_path, ["10/a.jpg", "9/a.jpg", "100/a.jpg"])
    assert open_dataset("f", f"imagefolder:{root}").classnames == ["9", "10", "100"]


def test_wnid_folders_get_imagenet_names_order_and_subset(tmp_path):
    wnids = imagenet_wnids()
    root = _tree(tmp_path, [f"{wnids[i]}/img.jpg" for i in (999, 3, 500)])
    dataset = open_dataset("r", f"imagefolder:{root}")
    assert dataset.class_subset == [3, 500, 999]
    assert dataset.classnames == [imagenet_classnames()[i] for i in (3, 500, 999)]
    assert [s.label for s in dataset.samples] == [0, 1, 2]
    assert dataset.templates == list(openai_imagenet_templates()) and len(dataset.templates) == 80


def test_all_thousand_wnids_need_no_subset(tmp_path):
    root = _tree(tmp_path, [f"{wnid}/a.jpg" for wnid in imagenet_wnids()])
    dataset = open_dataset("val", f"imagefolder:{root}")
    assert dataset.class_subset is None and dataset.classnames == list(imagenet_classnames())


def test_imagenet_index_folders_with_classes_imagenet(tmp_path):
    root = _tree(tmp_path, ["7/a.jpg", "12/a.jpg", f"{imagenet_wnids()[5]}/a.jpg"])
    dataset = open_dataset("v2", f"imagefolder:{root}?classes=imagenet")
    assert dataset.class_subset == [5, 7, 12]
    assert dataset.classnames == [imagenet_classnames()[i] for i in (5, 7, 12)]
    with pytest.raises(DatasetError, match=r"folder '1000' is neither an ImageNet WNID nor an index"):
        open_dataset("v2", f"imagefolder:{_tree(tmp_path / 'b', ['1000/a.jpg'])}?classes=imagenet")


def test_a_class_list_file_sets_the_order_and_may_name_empty_classes(tmp_path):
    root = _tree(tmp_path / "data", ["b/1.jpg", "a/1.jpg"])
    classes = tmp_path / "classes.txt"
    classes.write_text("b\nc\na\n")
    dataset = open_dataset("f", f"imagefolder:{root}?classes={classes}")
    assert dataset.classnames == ["b", "c", "a"]
    assert [(s.key, s.label) for s in dataset.samples] == [("b/1.jpg", 0), ("a/1.jpg", 2)]


def test_common_options_templates_names_and_subset(tmp_path):
    root = _tree(tmp_path / "data", ["b/1.jpg", "a/1.jpg"])
    names = tmp_path / "names.txt"
    names.write_text("apple\nbanana\n")
    subset = tmp_path / "subset.txt"
    subset.write_text("17\n4\n")
    templates = tmp_path / "templates.txt"
    templates.write_text("a {c}.\n\nart of a {c}.\n")
    dataset = open_dataset("f", f"imagefolder:{root}?names={names}&subset={subset}&templates={templates}")
    assert dataset.classnames == ["apple", "banana"] and dataset.class_subset == [17, 4]
    assert dataset.templates == ["a {c}.", "art of a {c}."]
    assert open_dataset("f", f"imagefolder:{root}", templates="simple").templates == list(simple_imagenet_templates())


def test_named_subsets_need_one_index_per_class(tmp_path):
    root = _tree(tmp_path, ["a/1.jpg", "b/1.jpg"])
    with pytest.raises(DatasetError, match=r"class subset 'imagenet-r' has 200 indices but the dataset has 2 classes"):
        open_dataset("f", f"imagefolder:{root}?subset=imagenet-r")
    assert len(named_subset_indices("imagenet-a")) == 200


@pytest.mark.parametrize(
    ("option_file", "content", "message"),
    [
        ("names", "one\n", r"class names file .* has 1 names but the dataset has 2 classes"),
        ("subset", "1\nx\n", r"'x' is not an integer index"),
        ("subset", "1\n1\n", r"repeats an index"),
        ("templates", "a photo of a {}.\n", r"template 0 'a photo of a \{\}.' has no \{c\} placeholder"),
        ("classes", "a\n", r"folder 'b' is not listed in classes file"),
        ("classes", "a\nb\na\n", r"lists a class twice"),
        ("classes", "\n\n", r"is empty"),
    ],
)
def test_bad_option_files_are_rejected(tmp_path, option_file, content, message):
    root = _tree(tmp_path / "data", ["a/1.jpg", "b/1.jpg"])
    path = tmp_path / "option.txt"
    path.write_text(content)
    with pytest.raises(DatasetError, match=message):
        open_dataset("f", f"imagefolder:{root}?{option_file}={path}")


def test_bad_roots_are_rejected(tmp_path):
    with pytest.raises(DatasetError, match=r"dataset 'f': dataset root .*nowhere' does not exist"):
        open_dataset("f", f"imagefolder:{tmp_path / 'nowhere'}")
    (tmp_path / "file.jpg").write_bytes(JPEG)
    with pytest.raises(DatasetError, match=r"is not a directory"):
        open_dataset("f", f"imagefolder:{tmp_path / 'file.jpg'}")
    with pytest.raises(DatasetError, match=r"has no class folders"):
        open_dataset("f", f"imagefolder:{tmp_path}")
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(DatasetError, match=r"has no image files"):
        open_dataset("f", f"imagefolder:{tmp_path}")
    with pytest.raises(DatasetError, match=r"classes file .*missing.txt' does not exist"):
        open_dataset("f", f"imagefolder:{tmp_path}?classes={tmp_path / 'missing.txt'}")
