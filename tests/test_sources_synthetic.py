"""The synthetic shapes world: determinism, variant semantics, speed, fingerprints, option errors."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from PIL import Image

from embedstore.errors import DatasetError
from embedstore.sources import open_dataset
from embedstore.sources.imagenet_x import FACTORS, factor_matrix
from embedstore.sources.shapes import OOD_SHAPES, SHAPE_CLASSES
from embedstore.sources.synthetic import VARIANTS, ShapesWorld


def _bytes(dataset, start=0, stop=None):
    stop = len(dataset) if stop is None else stop
    return [encoded.data for encoded in dataset.iter_encoded(start, stop)]


def test_same_seed_gives_same_samples_and_bytes():
    first = open_dataset("a", "synthetic:shapes-x?n=40&seed=3")
    second = open_dataset("b", "synthetic:shapes-x?n=40&seed=3")
    assert first.samples == second.samples
    assert _bytes(first) == _bytes(second)


def test_any_row_can_be_generated_alone():
    dataset = open_dataset("a", "synthetic:shapes-cue-conflict?n=30&seed=1")
    everything = _bytes(dataset)
    assert _bytes(dataset, 17, 18) == [everything[17]]
    assert _bytes(dataset, 5, 12) == everything[5:12]
    assert [e.row for e in dataset.iter_encoded(5, 12)] == list(range(5, 12))


def test_variants_and_seeds_draw_different_images():
    images = {variant: _bytes(open_dataset("d", f"synthetic:{variant}?n=8&seed=0")) for variant in VARIANTS}
    images["shapes seed 1"] = _bytes(open_dataset("d", "synthetic:shapes?n=8&seed=1"))
    names = list(images)
    for i, left in enumerate(names):
        for right in names[i + 1 :]:
            same = sum(a == b for a, b in zip(images[left], images[right]))
            assert same == 0, (left, right)


def test_in_distribution_rows_are_labelled_shapes_with_their_own_texture():
    dataset = open_dataset("id", "synthetic:shapes?n=200&seed=0")
    assert dataset.classnames == list(SHAPE_CLASSES)
    assert dataset.task == "classification" and dataset.kind == "synthetic" and dataset.root is None
    assert [s.key for s in dataset.samples[:2]] == ["s0000000", "s0000001"]
    assert dataset.samples[7].locator == "synthetic:7"
    for sample in dataset.samples:
        assert sample.annotations["shape"] == dataset.classnames[sample.label]
        assert sample.annotations["texture"] == sample.annotations["shape"]
    assert {s.label for s in dataset.samples} == set(range(len(SHAPE_CLASSES)))


def test_images_decode_at_the_requested_size_and_format():
    for image_format, pil_name in (("jpeg", "JPEG"), ("png", "PNG"), ("webp", "WEBP")):
        dataset = open_dataset("f", f"synthetic:shapes?n=3&size=48&format={image_format}")
        image = Image.open(io.BytesIO(_bytes(dataset, 0, 1)[0]))
        assert image.format == pil_name and image.size == (48, 48) and image.mode == "RGB"


def test_lossless_formats_hold_the_rendered_pixels():
    world = ShapesWorld("shapes-x", seed=2, size=40, image_format="png")
    for row in range(5):
        decoded = np.asarray(Image.open(io.BytesIO(world.encode(row))))
        np.testing.assert_array_equal(decoded, world.image(row))


def test_sketches_are_outlines_on_paper():
    world = ShapesWorld("shapes-sketch", seed=0)
    pixels = world.image(0).reshape(-1, 3).astype(int)
    ink = (pixels.max(axis=1) < 60).mean()
    paper = (pixels.min(axis=1) > 230).mean()
    assert 0.01 < ink < 0.3 and paper > 0.6


def test_ood_rows_are_unlabelled_shapes_outside_the_classes():
    dataset = open_dataset("ood", "synthetic:shapes-ood?n=100")
    assert dataset.classnames == list(SHAPE_CLASSES)
    assert all(s.label is None for s in dataset.samples)
    drawn = {s.annotations["shape"] for s in dataset.samples}
    assert drawn <= set(OOD_SHAPES) and len(drawn) > 3


def test_cue_conflict_rows_record_shape_and_texture_classes():
    dataset = open_dataset("cc", "synthetic:shapes-cue-conflict?n=400")
    same = 0
    for sample in dataset.samples:
        assert sample.annotations["shape"] == dataset.classnames[sample.label]
        assert sample.annotations["texture"] in dataset.classnames
        same += sample.annotations["shape"] == sample.annotations["texture"]
    assert 0 < same < 0.25 * len(dataset)


def test_factor_rows_carry_imagenet_x_top_and_multi_annotations():
    dataset = open_dataset("x", "synthetic:shapes-x?n=600")
    multi, annotated = factor_matrix([s.annotations for s in dataset.samples], "multi")
    top, _ = factor_matrix([s.annotations for s in dataset.samples], "top")
    assert annotated.all()
    assert (top.sum(axis=1) == 1).all()
    assert (top <= multi).all()
    assert set(multi.sum(axis=1)) <= {1, 2, 3}
    index = {factor: i for i, factor in enumerate(FACTORS)}
    assert not multi[:, index["person_blocking"]].any()
    assert multi[:, [i for f, i in index.items() if f != "person_blocking"]].any(axis=0).all()
    for exclusive in (("smaller", "larger"), ("darker", "brighter"), ("style", "pattern")):
        assert not (multi[:, index[exclusive[0]]] & multi[:, index[exclusive[1]]]).any()


def test_factors_change_the_pixels_they_name():
    world = ShapesWorld("shapes-x", seed=0)
    rows = {world.describe(r).annotations["multi"]: r for r in range(300)}
    plain = ShapesWorld("shapes", seed=0)
    mean_id = np.mean([plain.image(r).mean() for r in range(50)])
    assert world.image(rows["darker"]).mean() < 0.6 * mean_id
    assert world.image(rows["brighter"]).mean() > mean_id


def test_caption_rows_have_five_captions_and_no_labels():
    dataset = open_dataset("cap", "synthetic:shapes-captions?n=30")
    assert dataset.task == "retrieval" and dataset.classnames == []
    for sample in dataset.samples:
        assert sample.label is None and len(sample.captions) == 5
        assert sample.captions[0] == f"a photo of a {sample.annotations['color']} {sample.annotations['shape']}."


def test_two_thousand_images_take_well_under_two_seconds():
    start = time.process_time()
    dataset = open_dataset("speed", "synthetic:shapes?n=2000&seed=0")
    data = _bytes(dataset)
    elapsed = time.process_time() - start
    assert len(data) == 2000 and all(data)
    assert elapsed < 2.0, f"{elapsed:.2f}s of CPU for 2000 images"


def test_fingerprint_is_stable_and_follows_generator_parameters():
    base = open_dataset("a", "synthetic:shapes?n=20&seed=0").fingerprint()
    assert base == open_dataset("b", "synthetic:shapes?n=20&seed=0").fingerprint()
    for other in (
        "shapes?n=20&seed=1",
        "shapes?n=21&seed=0",
        "shapes?n=20&seed=0&size=32",
        "shapes-v2?n=20&seed=0",
        "shapes?n=20&format=png",
    ):
        assert open_dataset("c", f"synthetic:{other}").fingerprint() != base, other


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("synthetic:triangles?n=3", "unknown synthetic variant"),
        ("synthetic:shapes?n=0", "n=0"),
        ("synthetic:shapes?size=8", "size=8"),
        ("synthetic:shapes?seed=-1", "seed=-1"),
        ("synthetic:shapes?n=ten", "not an integer"),
        ("synthetic:shapes?format=gif", "unknown synthetic image format"),
        ("synthetic:shapes?colour=red", "option 'colour' is not accepted"),
    ],
)
def test_bad_synthetic_options_are_rejected(spec, message):
    with pytest.raises(DatasetError, match=message):
        open_dataset("bad", spec)
