"""`embedstore neighbors` and `embedstore index build | list`: known neighbours on a hand-built set, text
queries through the text tower, saved indexes (reuse, reload, payloads, staleness), bad input, and the
click commands."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from store_support import put_array

from embedstore.errors import AnalysisError, EmbedstoreError, FingerprintMismatch
from embedstore.evaluate.indexes import build_saved_index, index_path, list_saved_indexes
from embedstore.evaluate.neighbors import NeighborQuery, find_neighbors
from embedstore.index import IndexSpec, backends
from embedstore.models import load_model
from embedstore.store import Store
from embedstore_cli.index_commands import index_group
from embedstore_cli.neighbors_command import neighbors_command

CLIP = "openclip:embedstore-tiny@random:0"
TIMM = "timm:test_vit@random:0"
HAND = "clip-2d"

# A hand-built labelled set: unit vectors in the plane (any length: scores are cosines), so the
# neighbours of a row are the rows nearest in angle and each score is cos(angle difference).
ANGLES = [0, 20, 50, 100, 180, 185]
LABELS = [0, 0, 1, 1, None, 0]
CLASSNAMES = ["cat", "dog"]


@dataclass
class _Sample:
    row: int
    key: str
    label: int | None
    captions: tuple = ()
    locator: str | None = None
    annotations: dict = field(default_factory=dict)


@dataclass
class _Planar:
    samples: list
    name: str = "planar"
    kind: str = "test"
    spec: str = "hand-built"
    root: str | None = None
    task: str = "classification"
    templates: tuple = ("a {c}.",)
    classnames: tuple = tuple(CLASSNAMES)
    class_subset: None = None

    def fingerprint(self) -> str:
        return "hand-built:planar"


def _planar_vectors(angles, lengths):
    radians = np.deg2rad(np.asarray(angles, dtype=np.float64))
    return (np.asarray(lengths)[:, None] * np.stack([np.cos(radians), np.sin(radians)], axis=1)).astype(np.float32)


@pytest.fixture
def planar(tmp_path) -> Store:
    store = Store.create(tmp_path / "planar")
    store.register_dataset(_Planar([_Sample(i, f"img{i}", label) for i, label in enumerate(LABELS)]))
    store.register_model({"model_id": HAND, "kind": "clip", "fingerprint": "f" * 64})
    put_array(store, "planar", HAND, "image_emb", _planar_vectors(ANGLES, [1, 2, 3, 0.5, 1, 4]))
    return store


def _rows(result) -> list[int]:
    return [n.row for n in result.neighbors]


def test_an_image_query_returns_the_nearest_other_images_with_keys_labels_and_cosines(planar):
    result = find_neighbors(planar, HAND, "planar", NeighborQuery(row=0), k=5)
    assert _rows(result) == [1, 2, 3, 5, 4]  # 20°, 50°, 100°, 175° away, 180° away; never row 0 itself
    assert [n.rank for n in result.neighbors] == [1, 2, 3, 4, 5]
    assert [n.key for n in result.neighbors] == ["img1", "img2", "img3", "img5", "img4"]
    assert [n.label for n in result.neighbors] == ["cat", "dog", "dog", "cat", None]
    expected = np.cos(np.deg2rad([20, 50, 100, 175, 180]))
    np.testing.assert_allclose([n.score for n in result.neighbors], expected, atol=1e-6)
    assert (result.search, result.index_file, result.query) == ("exact", None, "row 0 (key 'img0')")
    by_key = find_neighbors(planar, HAND, "planar", NeighborQuery(key="img0"), k=5)
    assert by_key.neighbors == result.neighbors


def test_undecodable_rows_are_never_neighbours_nor_queries(planar):
    images = planar.read_array("planar", HAND, "image_emb").copy()
    images[1] = 0
    put_array(planar, "planar", HAND, "image_emb", images)
    planar.record_bad_samples("planar", [(1, "img1", "cannot decode")])
    assert _rows(find_neighbors(planar, HAND, "planar", NeighborQuery(row=0), k=4)) == [2, 3, 5, 4]
    with pytest.raises(AnalysisError, match="row 1 of dataset planar is an undecodable sample"):
        find_neighbors(planar, HAND, "planar", NeighborQuery(row=1))
    with pytest.raises(AnalysisError, match="k=5 exceeds the 4 other decodable images of dataset planar"):
        find_neighbors(planar, HAND, "planar", NeighborQuery(row=0), k=5)


def test_a_text_query_is_encoded_by_the_text_tower_and_ranked_by_cosine(tiny_store, monkeypatch):
    from embedstore.models.openclip_adapter import OpenClipAdapter

    monkeypatch.setattr(OpenClipAdapter, "encode_image", lambda *a, **k: pytest.fail("an image was encoded"))
    result = find_neighbors(tiny_store, CLIP, "shapes", NeighborQuery(text="a red circle"), k=8, index="exact")
    model = load_model("openclip:embedstore-tiny@random")
    with torch.inference_mode():
        text = model.encode_text(model.tokenize(["a red circle"])).numpy()[0].astype(np.float64)
    images = tiny_store.read_array("shapes", CLIP, "image_emb").astype(np.float64)
    cosines = images @ text / np.linalg.norm(images, axis=1) / np.linalg.norm(text)
    best = np.argsort(-cosines, kind="stable")[:8]
    assert _rows(result) == best.tolist()
    np.testing.assert_allclose([n.score for n in result.neighbors], cosines[best], atol=1e-5)
    classnames = tiny_store.dataset_info("shapes")["classnames"]
    labels = tiny_store.sample_table("shapes")["label"]
    assert [n.label for n in result.neighbors] == [classnames[labels[r]] for r in best]
    assert result.query == "text 'a red circle'"


def test_a_text_query_refuses_other_weights_and_non_clip_models(tiny_store, monkeypatch):
    import embedstore.models

    def other_weights(*args, **kwargs):
        adapter = load_model(*args, **kwargs)
        adapter.fingerprint = "0" * 64
        return adapter

    with pytest.raises(AnalysisError, match=f"model {TIMM} is a classifier model: a text query needs a CLIP model"):
        find_neighbors(tiny_store, TIMM, "shapes", NeighborQuery(text="a dog"))
    monkeypatch.setattr(embedstore.models, "load_model", other_weights)
    with pytest.raises(AnalysisError, match=f"the weights of {CLIP} differ from the ones its arrays were extracted"):
        find_neighbors(tiny_store, CLIP, "shapes", NeighborQuery(text="a dog"))


def test_a_saved_index_is_used_reloads_with_the_same_results_and_is_listed(tiny_store):
    exact = find_neighbors(tiny_store, CLIP, "shapes", NeighborQuery(row=5), k=10)
    built = build_saved_index(tiny_store, "shapes", CLIP, "image_emb", IndexSpec(kind="hnsw", ef_search=64))
    folder = tiny_store.path / "indexes" / "shapes" / "openclip_embedstore-tiny_random_0-162a079b"
    assert built.path == folder / "image_emb.hnsw.faiss" and (folder / "image_emb.hnsw.faiss.json").is_file()
    assert (built.n, built.dim, built.kind, built.status) == (64, 32, "hnsw", "current")
    first = find_neighbors(tiny_store, CLIP, "shapes", NeighborQuery(row=5), k=10)
    again = find_neighbors(tiny_store, CLIP, "shapes", NeighborQuery(row=5), k=10)
    assert first.search == "hnsw" and first.index_file == str(built.path.relative_to(tiny_store.path))
    assert again.neighbors == first.neighbors
    assert _rows(first) == _rows(exact)  # 64 vectors, ef_search 64: the graph search is exhaustive
    np.testing.assert_allclose([n.score for n in first.neighbors], [n.score for n in exact.neighbors], atol=1e-6)
    assert find_neighbors(tiny_store, CLIP, "shapes", NeighborQuery(row=5), k=10, index="exact").index_file is None
    with pytest.raises(AnalysisError, match="no saved ivf index of image_emb of model .* build one with"):
        find_neighbors(tiny_store, CLIP, "shapes", NeighborQuery(row=5), index="ivf")
    (listed,) = list_saved_indexes(tiny_store, verify=True)
    assert (listed.dataset, listed.model, listed.array, listed.kind, listed.status) == ("shapes", CLIP, "image_emb",
                                                                                        "hnsw", "current")  # fmt: skip
    assert listed.params == {"hnsw_m": 32, "ef_search": 64, "ef_construction": 100} and listed.file_bytes > 0


def test_a_stale_index_is_refused_and_listed_as_stale(tiny_store):
    build_saved_index(tiny_store, "shapes", CLIP, "image_emb", IndexSpec(kind="ivf"))
    tiny_store.record_bad_samples("shapes", [(7, None, "found corrupt later")])  # the indexed rows change
    with pytest.raises(
        FingerprintMismatch,
        match=r"saved ivf index of image_emb .* is stale: .* rebuild it with `embedstore index build",
    ):
        find_neighbors(tiny_store, CLIP, "shapes", NeighborQuery(row=0))
    assert find_neighbors(tiny_store, CLIP, "shapes", NeighborQuery(row=0), index="exact").search == "exact"
    assert [s.status for s in list_saved_indexes(tiny_store, verify=True)] == ["stale"]
    assert [s.status for s in list_saved_indexes(tiny_store)] == ["unchecked"]
    build_saved_index(tiny_store, "shapes", CLIP, "image_emb", IndexSpec(kind="ivf"))  # rebuilt: current again
    assert find_neighbors(tiny_store, CLIP, "shapes", NeighborQuery(row=0)).search == "ivf"
    tiny_store.delete_arrays("shapes", CLIP, "image_emb")
    assert [s.status for s in list_saved_indexes(tiny_store)] == ["no array"]


def test_a_damaged_index_file_is_one_clear_error_and_listed_as_unreadable(tiny_store):
    built = build_saved_index(tiny_store, "shapes", CLIP, "image_emb", IndexSpec(kind="hnsw"))
    good = built.path.read_bytes()
    for damage in (good[: len(good) // 2], b"not a faiss index"):
        built.path.write_bytes(damage)
        with pytest.raises(EmbedstoreError, match=r"cannot be read \(.*\); rebuild it with `embedstore index build`"):
            find_neighbors(tiny_store, CLIP, "shapes", NeighborQuery(row=0))
        assert [s.status for s in list_saved_indexes(tiny_store, verify=True)] == ["unreadable"]
    sidecar = built.path.with_name(built.path.name + ".json")
    built.path.write_bytes(good)
    record = json.loads(sidecar.read_text())
    record["dim"] = 16  # a payload that does not match its sidecar
    sidecar.write_text(json.dumps(record))
    with pytest.raises(EmbedstoreError, match="its sidecar says 64x16"):
        find_neighbors(tiny_store, CLIP, "shapes", NeighborQuery(row=0))
    sidecar.write_text("{not json")
    for verify in (True, False):  # a sidecar that cannot be read is listed, not the end of the listing
        (listed,) = list_saved_indexes(tiny_store, verify=verify)
        assert (listed.model, listed.array, listed.kind, listed.status) == (CLIP, "image_emb", "hnsw", "unreadable")


def test_one_index_per_kind_whatever_backend_wrote_it(planar, monkeypatch):
    faiss_file = build_saved_index(planar, "planar", HAND, spec=IndexSpec(kind="flat")).path
    assert faiss_file.suffix == ".faiss"
    monkeypatch.setattr(backends, "import_faiss", lambda: None)
    monkeypatch.setattr(backends, "torch_cuda_available", lambda: False)
    rebuilt = build_saved_index(planar, "planar", HAND, spec=IndexSpec(kind="flat"))
    assert rebuilt.path == index_path(planar, "planar", HAND, "image_emb", "flat", "npy")
    assert rebuilt.built_with == "numpy" and not faiss_file.exists()
    result = find_neighbors(planar, HAND, "planar", NeighborQuery(row=0), k=2)
    assert (result.search, result.backend, _rows(result)) == ("flat", "numpy", [1, 2])
    assert [(s.kind, s.path.suffix) for s in list_saved_indexes(planar)] == [("flat", ".npy")]


@pytest.mark.parametrize(
    ("query", "kwargs", "message"),
    [
        ({}, {}, "give exactly one query .* got none"),
        ({"row": 0, "text": "x"}, {}, "give exactly one query .* got row, text"),
        ({"text": "  "}, {}, "the text query is empty"),
        ({"key": "missing"}, {}, "dataset planar has no sample with key 'missing'"),
        ({"row": 6}, {}, r"row 6 is not a row of dataset planar \(rows 0..5\)"),
        ({"row": -1}, {}, "row -1 is not a row of dataset planar"),
        ({"row": 0}, {"k": 6}, "k=6 exceeds the 5 other decodable images"),
        ({"row": 0}, {"k": 0}, "k must be a positive integer"),
        ({"row": 0}, {"index": "annoy"}, "index must be one of auto, exact, flat, ivf, hnsw"),
    ],
)
def test_bad_queries_are_one_clear_error(planar, query, kwargs, message):
    with pytest.raises(AnalysisError, match=message):
        find_neighbors(planar, HAND, "planar", NeighborQuery(**query), **kwargs)


def test_unknown_models_datasets_and_arrays_are_named(planar):
    with pytest.raises(EmbedstoreError, match="model 'nope' is not in store"):
        find_neighbors(planar, "nope", "planar", NeighborQuery(row=0))
    with pytest.raises(EmbedstoreError, match="dataset 'nope' is not in store"):
        find_neighbors(planar, HAND, "nope", NeighborQuery(row=0))
    with pytest.raises(EmbedstoreError, match="store holds no array caption_emb for model clip-2d on dataset planar"):
        build_saved_index(planar, "planar", HAND, "caption_emb")
    put_array(planar, "planar", HAND, "text_emb", np.ones((2, 1, 2), dtype=np.float32))
    with pytest.raises(AnalysisError, match="text_emb of model clip-2d on dataset planar is 2x1x2, not a .rows, dim"):
        build_saved_index(planar, "planar", HAND, "text_emb")


def test_models_are_found_by_either_random_spelling_or_a_glob_matching_one(planar):
    from embedstore.remove import remove_arrays
    from embedstore_cli.store_commands import rm_command

    for seed in (0, 1):
        planar.register_model({"model_id": f"toy@random:{seed}", "kind": "clip", "fingerprint": f"{seed}" * 64})
        put_array(planar, "planar", f"toy@random:{seed}", "image_emb", _planar_vectors(ANGLES, [1] * 6))
    by_id = find_neighbors(planar, "toy@random:0", "planar", NeighborQuery(row=0), k=2)
    for spelling in ("toy@random", "toy*:0", "clip-*"):
        found = find_neighbors(planar, spelling, "planar", NeighborQuery(row=0), k=2)
        assert found.model == ("clip-2d" if spelling == "clip-*" else "toy@random:0")
        assert _rows(found) == _rows(by_id)
    with pytest.raises(EmbedstoreError, match=r"'toy\*' matches 2 models with image_emb on planar: toy@random:0, "):
        find_neighbors(planar, "toy*", "planar", NeighborQuery(row=0))
    with pytest.raises(EmbedstoreError, match=r"'vit\*' matches no model with image_emb on dataset planar; those are: "
                       "clip-2d, toy@random:0, toy@random:1"):  # fmt: skip
        build_saved_index(planar, "planar", "vit*", "image_emb", IndexSpec(kind="flat"))
    built = build_saved_index(planar, "planar", "toy@random", "image_emb", IndexSpec(kind="flat"))
    assert built.model == "toy@random:0"
    out = CliRunner().invoke(rm_command, ["--store", str(planar.path), "--model", "toy@random", "--yes"])
    assert out.exit_code == 0 and "deleted 1 array(s) and 1 saved index(es)" in out.output, out.output
    assert remove_arrays(planar, model="toy@random:1").arrays == 1
    assert [info.model for info in planar.list_arrays()] == [HAND]


def test_cli_neighbors_and_index_commands(planar):
    runner = CliRunner()
    store = ["--store", str(planar.path)]
    out = runner.invoke(
        neighbors_command, [*store, "--model", HAND, "--dataset", "planar", "--key", "img0", "--k", "2"]
    )
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert lines[0] == "clip-2d on planar, query row 0 (key 'img0'): exact (faiss-cpu)"
    assert lines[3].split() == ["1", "1", "img1", "cat", "0.9397"]
    out = runner.invoke(index_group, ["build", *store, "--model", HAND, "--dataset", "planar", "--kind", "ivf",
                                      "--nlist", "2", "--json"])  # fmt: skip
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["params"] == {"nlist": 2, "nprobe": 2}
    out = runner.invoke(index_group, ["list", *store, "--verify", "--json"])
    assert [(s["array"], s["kind"], s["status"]) for s in json.loads(out.output)] == [("image_emb", "ivf", "current")]
    query = [*store, "--model", HAND, "--dataset", "planar", "--row", "0", "--k", "3", "--json"]
    out = runner.invoke(neighbors_command, query)
    result = json.loads(out.output)
    assert result["search"] == "ivf" and [n["row"] for n in result["neighbors"]] == [1, 2, 3]
    out = runner.invoke(index_group, ["build", *store, "--model", HAND, "--dataset", "planar", "--kind", "hnsw",
                                      "--nprobe", "2"])  # fmt: skip
    assert out.exit_code == 2 and out.output.endswith("Error: --nprobe needs --kind ivf, not --kind hnsw\n")
    out = runner.invoke(neighbors_command, [*store, "--model", HAND, "--dataset", "planar", "--row", "9"])
    assert out.exit_code == 1 and out.output == "Error: row 9 is not a row of dataset planar (rows 0..5)\n"
