"""The shipped ImageNet lists against their sources (open_clip, timm), and ImageNet-X annotations."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from embedstore.errors import DatasetError
from embedstore.sources import imagenet, open_dataset
from embedstore.sources.imagenet_x import FACTORS, factor_matrix, load_factor_annotations


def _package_file(package: str, *parts: str):
    """A file inside an installed package, found without importing it (open_clip and timm import torch)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"{package} is not installed")
    return Path(spec.submodule_search_locations[0], *parts)


def _timm_lines(name: str) -> list[str]:
    text = _package_file("timm", "data", "_info", name).read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


def _open_clip_metadata():
    """open_clip's ``zero_shot_metadata`` module (plain data, no imports) loaded from its file alone."""
    spec = importlib.util.spec_from_file_location(
        "zero_shot_metadata", _package_file("open_clip", "zero_shot_metadata.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shipped_lists_equal_open_clip_and_timm():
    metadata = _open_clip_metadata()
    assert list(imagenet.imagenet_classnames()) == list(metadata.IMAGENET_CLASSNAMES)
    assert list(imagenet.openai_imagenet_templates()) == [t("{c}") for t in metadata.OPENAI_IMAGENET_TEMPLATES]
    assert list(imagenet.simple_imagenet_templates()) == [t("{c}") for t in metadata.SIMPLE_IMAGENET_TEMPLATES]
    assert list(imagenet.imagenet_wnids()) == _timm_lines("imagenet_synsets.txt")
    assert list(imagenet.named_subset_indices("imagenet-r")) == [int(i) for i in _timm_lines("imagenet_r_indices.txt")]
    assert list(imagenet.named_subset_indices("imagenet-a")) == [int(i) for i in _timm_lines("imagenet_a_indices.txt")]


def test_wnids_are_in_index_order():
    wnids = imagenet.imagenet_wnids()
    assert len(wnids) == 1000 and list(wnids) == sorted(wnids)
    assert imagenet.is_wnid("n01440764") and not imagenet.is_wnid("n0144076")


VAL = [f"ILSVRC2012_val_{i:08d}.JPEG" for i in range(1, 6)]


def _factor_record(file_name: str, active: list[str]) -> str:
    record = {
        "file_name": file_name,
        "class": 0,
        **{f: int(f in active) for f in FACTORS},
        "justification": "",
        "one_word": "",
    }
    return json.dumps(record)


@pytest.fixture
def annotation_dir(tmp_path):
    folder = tmp_path / "imagenet_x"
    folder.mkdir()
    top = {VAL[0]: ["pose"], VAL[1]: ["darker"], VAL[2]: ["style"], VAL[3]: ["background"]}
    multi = {VAL[0]: ["pose", "background"], VAL[1]: ["darker", "smaller"], VAL[2]: ["style"], VAL[3]: []}
    (folder / "imagenet_x_val_top_factor.jsonl").write_text(
        "\n".join(_factor_record(f, a) for f, a in top.items()) + "\n"
    )
    (folder / "imagenet_x_val_multi_factor.jsonl").write_text(
        "\n".join(_factor_record(f, a) for f, a in multi.items()) + "\n"
    )
    (folder / "prototypical_paths.csv").write_text(f"file_name\n{VAL[2]}\n")
    return folder


@pytest.fixture
def val_folder(tmp_path):
    root = tmp_path / "val"
    for index, file_name in enumerate(VAL):
        folder = root / imagenet.imagenet_wnids()[index]
        folder.mkdir(parents=True)
        (folder / file_name).write_bytes(b"\xff\xd8\xff")
    return root


def test_factor_annotations_join_by_file_name_and_drop_prototypes(annotation_dir, val_folder):
    dataset = open_dataset("inx", f"imagefolder:{val_folder}?imagenet_x={annotation_dir}")
    annotations = {s.locator.split("/")[1]: dict(s.annotations) for s in dataset.samples}
    assert annotations[VAL[0]] == {"top": "pose", "multi": "pose,background"}
    assert annotations[VAL[1]] == {"top": "darker", "multi": "smaller,darker"}
    assert annotations[VAL[2]] == {}
    assert annotations[VAL[3]] == {"top": "background", "multi": ""}
    assert annotations[VAL[4]] == {}
    kept = open_dataset(
        "inx", f"imagefolder:{val_folder}", imagenet_x=str(annotation_dir), imagenet_x_prototypes="keep"
    )
    # kept, but flagged, so that `eval factors` drops them unless --keep-prototypes
    assert dict(kept.samples[2].annotations) == {"top": "style", "multi": "style", "prototype": "1"}
    assert "prototype" not in kept.samples[0].annotations


def test_factor_matrix_marks_annotated_rows(annotation_dir, val_folder):
    dataset = open_dataset("inx", f"imagefolder:{val_folder}?imagenet_x={annotation_dir}")
    matrix, annotated = factor_matrix([s.annotations for s in dataset.samples], "multi")
    assert matrix.shape == (5, 16) and annotated.tolist() == [True, True, False, True, False]
    assert [FACTORS[i] for i in matrix[0].nonzero()[0]] == ["pose", "background"]
    assert not matrix[3].any()
    top, top_annotated = factor_matrix([s.annotations for s in dataset.samples], "top")
    assert top.sum(axis=1).tolist() == [1, 1, 0, 1, 0] and top_annotated.tolist() == annotated.tolist()


def test_imagenet_x_errors(annotation_dir, val_folder, tmp_path):
    with pytest.raises(DatasetError, match=r"needs the 'imagenet-x' package"):
        open_dataset("inx", f"imagefolder:{val_folder}?imagenet_x=package")
    other = tmp_path / "other"
    (other / "cat").mkdir(parents=True)
    (other / "cat" / "photo.jpg").write_bytes(b"\xff\xd8\xff")
    with pytest.raises(DatasetError, match=r"no sample file name matches an ImageNet-X annotation"):
        open_dataset("inx", f"imagefolder:{other}?imagenet_x={annotation_dir}")
    with pytest.raises(DatasetError, match=r"imagenet_x_train_top_factor.jsonl' does not exist"):
        open_dataset("inx", f"imagefolder:{val_folder}?imagenet_x={annotation_dir}&imagenet_x_split=train")
    with pytest.raises(DatasetError, match=r"need imagenet_x=package\|DIR"):
        open_dataset("inx", f"imagefolder:{val_folder}?imagenet_x_split=val")
    (annotation_dir / "imagenet_x_val_top_factor.jsonl").write_text('{"file_name": "x.JPEG", "pose": "many"}\n')
    with pytest.raises(DatasetError, match=r"line 1: malformed record"):
        load_factor_annotations(str(annotation_dir))
