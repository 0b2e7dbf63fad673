"""The spec grammar NAME=KIND:PATH?options#split and open_dataset's option handling."""

from __future__ import annotations

import pytest

from embedstore.errors import DatasetError
from embedstore.sources import open_dataset, parse_dataset_spec
from embedstore.sources.spec import split_spec


def test_parse_dataset_spec_splits_name_from_spec():
    assert parse_dataset_spec("imnet=imagefolder:/data/val") == ("imnet", "imagefolder:/data/val")
    assert parse_dataset_spec("sh=synthetic:shapes?n=20&seed=1") == ("sh", "synthetic:shapes?n=20&seed=1")
    assert parse_dataset_spec("c10=wds:/data/wds_cifar10#train") == ("c10", "wds:/data/wds_cifar10#train")


def test_split_spec_parts():
    parsed = split_spec("wds:/data/x?split=test#train")
    assert (parsed.kind, parsed.path, parsed.options, parsed.fragment) == ("wds", "/data/x", {"split": "test"}, "train")
    assert split_spec("manifest:rel/m.csv").path == "rel/m.csv"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("imagefolder:/data", r"expected NAME=KIND:PATH"),
        ("bad name=imagefolder:/data", r"name 'bad name' must match"),
        ("../x=imagefolder:/data", r"must match"),
        ("x=folder:/data", r"KIND one of imagefolder, manifest, wds, captions, synthetic"),
        ("x=/data/val", r"expected KIND:PATH"),
        ("x=imagefolder:", r"empty PATH"),
        ("x=imagefolder:/d?classes", r"query item 'classes' is not key=value"),
        ("x=synthetic:shapes?n=1&n=2", r"option 'n' given twice"),
        ("x=wds:/d#", r"empty fragment"),
    ],
)
def test_malformed_specs_are_rejected(text, message):
    with pytest.raises(DatasetError, match=message):
        parse_dataset_spec(text)


def test_keyword_options_join_spec_options():
    assert len(open_dataset("s", "synthetic:shapes?seed=1", n=7)) == 7
    assert len(open_dataset("s", "synthetic:shapes?n=7", n=7)) == 7
    with pytest.raises(DatasetError, match=r"dataset 's': .*option 'n' is '7' in the spec but 8 as a keyword"):
        open_dataset("s", "synthetic:shapes?n=7", n=8)


def test_options_are_checked_per_kind():
    with pytest.raises(DatasetError, match=r"option 'classes' is not accepted by synthetic datasets"):
        open_dataset("s", "synthetic:shapes?classes=x.txt")
    with pytest.raises(DatasetError, match=r"a '#split' fragment applies only to captions and wds datasets"):
        open_dataset("s", "synthetic:shapes#train")


def test_common_options_apply_to_every_kind():
    dataset = open_dataset("s", "synthetic:shapes?n=3&templates=simple")
    assert len(dataset.templates) == 7
    with pytest.raises(DatasetError, match=r"has 200 indices but the dataset has 8 classes"):
        open_dataset("s", "synthetic:shapes?n=3&subset=imagenet-r")
