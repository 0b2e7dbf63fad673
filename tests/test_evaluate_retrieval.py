"""`embedstore eval retrieval`: parity with CLIP_benchmark, a hand-built case through the store (several
captions per image, a distractor, a bad sample), index searches and saved indexes, results and params,
bad input, and the click command."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from store_support import put_array

from embedstore.analysis.retrieval import retrieval_recall
from embedstore.errors import AnalysisError, EmbedstoreError, FingerprintMismatch
from embedstore.evaluate.indexes import IndexRequest, build_saved_index
from embedstore.evaluate.retrieval import run_retrieval
from embedstore.extract.plan import plan_from_args
from embedstore.extract.runner import run_extraction
from embedstore.index import IndexSpec
from embedstore.models import load_model
from embedstore.sources import open_dataset, write_dataset
from embedstore.store import Store
from embedstore_cli.eval_retrieval import retrieval_command

CLIP = "openclip:embedstore-tiny@random:0"
CLIP_1 = "openclip:embedstore-tiny@random:1"
TIMM = "timm:test_vit@random:0"
HAND = "clip-2d"


def test_parity_with_clip_benchmark_zeroshot_retrieval(tmp_path):
    """Same model object, same wds caption set, float32, no autocast: identical recall@K both ways."""
    import clip_benchmark.metrics.zeroshot_retrieval as cb
    import open_clip
    import webdataset as wds

    # The generator repeats some phrases ("a star in the center of the image."): equal captions embed
    # equally and tie exactly, and ties at the K-th place are ordered by gallery row here but left
    # unspecified by torch.topk there (embedstore.analysis.retrieval). Appending the image key makes
    # every caption unique, so the rankings are unambiguous and the recalls must be equal.
    generated = open_dataset("c", "synthetic:shapes-captions?n=24&seed=3")
    samples = tuple(replace(s, captions=tuple(f"{c} ({s.key})" for c in s.captions)) for s in generated.samples)
    assert len({c for s in samples for c in s.captions}) == 24 * 5
    root = tmp_path / "wds"
    write_dataset(replace(generated, samples=samples), str(root), layout="wds", shard_size=10)
    store = Store.create(tmp_path / "store")
    plan = plan_from_args(["openclip:embedstore-tiny@random"], [f"caps=wds:{root}"], workers=0, dtype="float32",
                          batch_size=8, chunk_rows=64)  # fmt: skip
    run_extraction(store, plan, log=lambda m: None, progress=False)
    (row,) = run_retrieval(store, [CLIP], ["caps"], ks=(1, 5, 10))

    model = load_model("openclip:embedstore-tiny@random")
    shards = sorted(str(p) for p in (root / "test").glob("*.tar"))
    # CLIP_benchmark's wds retrieval pipeline (builder.build_wds_dataset): (image, list of captions) batches.
    pipeline = (wds.WebDataset(shards, shardshuffle=False).decode("pil").to_tuple("webp;png;jpg;jpeg", "txt")
                .map_tuple(model.pil_transform, str.splitlines).batched(8))  # fmt: skip
    loader = torch.utils.data.DataLoader(pipeline, batch_size=None, num_workers=0)
    theirs = cb.evaluate(model.module, loader, open_clip.get_tokenizer("embedstore-tiny"), device="cpu", amp=False,
                         recall_k_list=[1, 5, 10])  # fmt: skip
    assert (row.result.n_images, row.result.n_captions) == (24, 120)
    assert set(row.result.metrics) == set(theirs)
    for metric, value in theirs.items():  # CLIP_benchmark averages in float32
        assert row.result.metrics[metric] == pytest.approx(value, abs=1e-6), metric


# ---------------------------------------------------------------------------------------------------
# A hand-built caption set: unit vectors in the plane, so every cosine is cos(angle difference).
#
# images:   i0 at 0°, i1 at 90°, i2 at 180°, i3 at 270° (no caption: a distractor)
# captions: i0: 10°, 60°   i1: 150°, 280°   i2: 200°
#
# text -> image, rank of the caption's image: 10°->0, 60°->1 (i1 is nearer), 150°->1 (i2 nearer),
#   280°->3 (i3, i0, i2 nearer), 200°->0; recall@1 = 2/5, @2 = 4/5, @4 = 1.
# image -> text, rank of the image's first caption: i0->0 (10°), i1->1 (60° is nearer than 150°),
#   i2->0; recall@1 = 2/3, @2 = 1.
# With i1 undecodable (bad sample, zeros in the arrays) its captions leave too: every rank is 0.

IMAGE_ANGLES = [0, 90, 180, 270]
CAPTION_ANGLES = {0: [10, 60], 1: [150, 280], 2: [200], 3: []}


def _unit(degrees, scale=1.0):
    radians = np.deg2rad(np.asarray(degrees, dtype=np.float64))
    return (scale * np.stack([np.cos(radians), np.sin(radians)], axis=1)).astype(np.float32)


@dataclass
class _Sample:
    row: int
    key: str
    captions: tuple[str, ...]
    label: int | None = None
    locator: str | None = None
    annotations: dict = field(default_factory=dict)


@dataclass
class _CaptionSet:
    name: str
    samples: list
    kind: str = "test"
    spec: str = "hand-built"
    root: str | None = None
    task: str = "retrieval"
    templates: tuple = ()
    classnames: tuple = ()
    class_subset: None = None

    def fingerprint(self) -> str:
        return f"hand-built:{self.name}"


@pytest.fixture
def hand_store(tmp_path) -> Store:
    store = Store.create(tmp_path / "hand")
    samples = [_Sample(i, f"img{i}", tuple(f"caption at {a}" for a in CAPTION_ANGLES[i])) for i in range(4)]
    store.register_dataset(_CaptionSet("planar", samples))
    store.register_model({"model_id": HAND, "kind": "clip", "fingerprint": "f" * 64})
    put_array(store, "planar", HAND, "image_emb", _unit(IMAGE_ANGLES, scale=3.0))  # scale: scores are cosines
    caption_angles = [a for i in range(4) for a in CAPTION_ANGLES[i]]  # caption rows: grouped by image
    put_array(store, "planar", HAND, "caption_emb", _unit(caption_angles, scale=0.5))
    return store


def test_hand_built_recalls_with_several_captions_and_a_distractor(hand_store):
    (row,) = run_retrieval(hand_store, [HAND], ["planar"], ks=(4, 1, 2, 2))
    assert row.result.ks == (1, 2, 4)
    assert row.result.metrics == pytest.approx({
        "image_retrieval_recall@1": 2 / 5, "image_retrieval_recall@2": 4 / 5, "image_retrieval_recall@4": 1.0,
        "text_retrieval_recall@1": 2 / 3, "text_retrieval_recall@2": 1.0, "text_retrieval_recall@4": 1.0,
    })  # fmt: skip
    assert (row.result.n_images, row.result.n_captions, row.result.n_text_retrieval_queries) == (4, 5, 3)
    assert row.result.image_retrieval_rank.tolist() == [0, 1, 1, 3, 0]  # caption rows: 10°, 60°, 150°, 280°, 200°


def test_bad_samples_leave_the_gallery_with_their_captions(hand_store):
    images = hand_store.read_array("planar", HAND, "image_emb").copy()
    images[1] = 0  # an undecodable image is left as zeros ...
    put_array(hand_store, "planar", HAND, "image_emb", images)
    hand_store.record_bad_samples("planar", [(1, "img1", "cannot decode")])  # ... and listed
    (row,) = run_retrieval(hand_store, [HAND], ["planar"], ks=(1, 2))
    assert (row.result.n_images, row.result.n_captions, row.result.n_text_retrieval_queries) == (3, 3, 2)
    assert set(row.result.metrics.values()) == {1.0}
    with pytest.raises(AnalysisError, match="recall@4 needs at least 4 images; dataset planar has 3 usable images"):
        run_retrieval(hand_store, [HAND], ["planar"], ks=(4,))


@pytest.mark.parametrize("request_", [IndexRequest("flat"), IndexRequest("ivf", nlist=2, nprobe=2),
                                      IndexRequest("hnsw", ef_search=16)])  # fmt: skip
def test_index_searches_equal_exact_search_on_tie_free_data(hand_store, request_):
    (exact,) = run_retrieval(hand_store, [HAND], ["planar"], ks=(1, 2, 4))
    (through_index,) = run_retrieval(hand_store, [HAND], ["planar"], ks=(1, 2, 4), index=request_)
    assert through_index.result.metrics == exact.result.metrics
    assert through_index.result.search == request_.kind
    if request_.kind != "flat":
        assert through_index.result.index_recall_vs_exact == {"image_retrieval": 1.0, "text_retrieval": 1.0}


def test_results_record_every_parameter_and_rerunning_replaces_them(tiny_store):
    def stored():
        return tiny_store.query(
            "SELECT model, dataset, metric, value, params FROM results WHERE analysis = 'retrieval'"
        )

    rows = run_retrieval(tiny_store, ["openclip:*"], ["shapes-captions"])
    assert [(r.model, r.dataset) for r in rows] == [(CLIP, "shapes-captions"), (CLIP_1, "shapes-captions")]
    assert len(stored()) == 2 * 6
    params = json.loads(stored()[0]["params"])
    assert params["ks"] == [1, 5, 10] and params["search"] == "exact" and params["backend"] == "numpy"
    assert "ascending gallery index" in params["ties"] and "distractors" in params["rows"]
    assert (params["n_images"], params["n_captions"]) == (24, 120)
    run_retrieval(tiny_store, ["openclip:*"], ["shapes-captions"])
    assert len(stored()) == 2 * 6
    run_retrieval(tiny_store, [CLIP], ["shapes-captions"], ks=(3,), index=IndexRequest("hnsw", ef_search=8))
    new = [r for r in stored() if "hnsw" in r["params"]]
    assert {r["metric"] for r in new} == {"image_retrieval_recall@3", "text_retrieval_recall@3",
                                          "index_recall_vs_exact@image_retrieval",
                                          "index_recall_vs_exact@text_retrieval"}  # fmt: skip
    params = json.loads(new[0]["params"])
    assert params["index_params"]["image_retrieval"] == {"hnsw_m": 32, "ef_search": 8, "ef_construction": 100}
    assert params["backend"] == "faiss-cpu" and params["saved_indexes"] == {} and "index backend" in params["ties"]


def test_saved_indexes_are_used_and_give_the_in_memory_results(tiny_store):
    request = IndexRequest("ivf", nlist=2)
    (in_memory,) = run_retrieval(tiny_store, [CLIP], ["shapes-captions"], index=request)
    for array in ("image_emb", "caption_emb"):
        build_saved_index(tiny_store, "shapes-captions", CLIP, array, IndexSpec(kind="ivf", nlist=2))
    (saved,) = run_retrieval(tiny_store, [CLIP], ["shapes-captions"], index=request)
    assert saved.saved_indexes == {
        "image_retrieval": "indexes/shapes-captions/openclip_embedstore-tiny_random_0-162a079b/image_emb.ivf.faiss",
        "text_retrieval": "indexes/shapes-captions/openclip_embedstore-tiny_random_0-162a079b/caption_emb.ivf.faiss",
    }
    assert saved.result.metrics == in_memory.result.metrics
    assert saved.result.index_recall_vs_exact == in_memory.result.index_recall_vs_exact
    assert saved.result.index_params == in_memory.result.index_params == {
        "image_retrieval": {"nlist": 2, "nprobe": 2}, "text_retrieval": {"nlist": 2, "nprobe": 2}}  # fmt: skip
    assert "seed" not in saved.params() and in_memory.params()["seed"] == 0
    # Search-time parameters apply to a saved index; build-time ones must match it.
    (narrow,) = run_retrieval(tiny_store, [CLIP], ["shapes-captions"], index=IndexRequest("ivf", nprobe=1))
    assert narrow.result.index_params["image_retrieval"] == {"nlist": 2, "nprobe": 1}
    with pytest.raises(AnalysisError, match="was built with --nlist 2, not 3; rebuild it"):
        run_retrieval(tiny_store, [CLIP], ["shapes-captions"], index=IndexRequest("ivf", nlist=3))
    (fresh,) = run_retrieval(
        tiny_store, [CLIP], ["shapes-captions"], index=IndexRequest("ivf", nlist=3, use_saved=False)
    )
    assert fresh.saved_indexes == {} and fresh.result.index_params["image_retrieval"]["nlist"] == 3


def test_a_stale_saved_index_is_refused(tiny_store):
    build_saved_index(tiny_store, "shapes-captions", CLIP, "image_emb", IndexSpec(kind="hnsw"))
    images = tiny_store.read_array("shapes-captions", CLIP, "image_emb")
    tiny_store.rewrite_array("shapes-captions", CLIP, "image_emb", images[::-1].copy(), settings_update={})
    with pytest.raises(FingerprintMismatch, match=r"saved hnsw index of image_emb .* is stale: the array changed"):
        run_retrieval(tiny_store, [CLIP], ["shapes-captions"], index=IndexRequest("hnsw"))
    (row,) = run_retrieval(tiny_store, [CLIP], ["shapes-captions"], index=IndexRequest("hnsw", use_saved=False))
    assert row.saved_indexes == {}


def test_globs_skip_what_does_not_fit_and_exact_names_are_errors(tiny_store):
    rows = run_retrieval(tiny_store, ["*"], ["shapes*"], ks=(1,))
    assert {(r.model, r.dataset) for r in rows} == {(CLIP, "shapes-captions"), (CLIP_1, "shapes-captions")}
    with pytest.raises(AnalysisError, match="dataset shapes has no captions: retrieval needs a caption dataset"):
        run_retrieval(tiny_store, [CLIP], ["shapes"])
    with pytest.raises(AnalysisError, match=f"model {TIMM} has no caption_emb on dataset shapes-captions"):
        run_retrieval(tiny_store, [TIMM], ["shapes-captions"])
    with pytest.raises(AnalysisError, match="no model among timm:test_vit@random:0 has caption_emb"):
        run_retrieval(tiny_store, ["timm:*"], ["shapes-captions"])
    with pytest.raises(EmbedstoreError, match="no model .* matches 'nope'"):
        run_retrieval(tiny_store, ["nope"], ["shapes-captions"])


@pytest.mark.parametrize(
    ("ks", "message"),
    [
        ((), "give at least one K"),
        ((0,), "K must be a positive integer"),
        ((25,), "recall@25 needs at least 25 images; dataset shapes-captions has 24 usable images"),
    ],
)
def test_bad_ks_are_one_clear_error_and_write_nothing(tiny_store, ks, message):
    with pytest.raises(AnalysisError, match=message):
        run_retrieval(tiny_store, [CLIP], ["shapes-captions"], ks=ks)
    assert not tiny_store.query("SELECT * FROM results WHERE analysis = 'retrieval'")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "hnsw", "nlist": 4}, "nlist applies to ivf indexes, not hnsw"),
        ({"kind": "flat", "ef_search": 4}, "ef_search applies to hnsw indexes, not flat"),
        ({"kind": "lsh"}, "index kind must be one of flat, ivf, hnsw"),
        ({"kind": "ivf", "nlist": 4, "nprobe": 5}, r"nprobe \(5\) cannot exceed nlist \(4\)"),
        ({"kind": "hnsw", "hnsw_m": 0}, "hnsw_m must be a positive integer"),
    ],
)
def test_bad_index_requests_are_one_clear_error(kwargs, message):
    with pytest.raises(AnalysisError, match=message):
        IndexRequest(**kwargs)


def test_analysis_and_runner_agree_on_the_stored_arrays(tiny_store):
    (row,) = run_retrieval(tiny_store, [CLIP], ["shapes-captions"], ks=(2, 7))
    images = tiny_store.read_array("shapes-captions", CLIP, "image_emb")
    captions = tiny_store.read_array("shapes-captions", CLIP, "caption_emb")
    owner = tiny_store.caption_table("shapes-captions")["sample_row"]
    assert row.result.metrics == retrieval_recall(images, captions, owner, ks=(2, 7)).metrics


def test_cli_prints_a_table_or_json_and_errors_in_one_line(tiny_store):
    runner = CliRunner()
    base = ["--store", str(tiny_store.path), "--model", "openclip:*", "--dataset", "shapes-captions"]
    out = runner.invoke(retrieval_command, base)
    assert out.exit_code == 0, out.output
    header = out.output.splitlines()[0].split()
    assert header[:4] == ["model", "dataset", "search", "image_retrieval_recall@1"]
    assert "text_retrieval_recall@10" in header
    out = runner.invoke(retrieval_command, [*base, "--k", "3", "--index", "hnsw", "--ef-search", "8", "--json"])
    assert out.exit_code == 0, out.output
    rows = json.loads(out.output)
    assert len(rows) == 2 and rows[0]["search"] == "hnsw" and 0 <= rows[0]["index_recall_vs_exact@text_retrieval"] <= 1
    out = runner.invoke(retrieval_command, [*base, "--nlist", "4"])
    assert out.exit_code == 2 and "--nlist needs --index ivf" in out.output
    out = runner.invoke(retrieval_command, [*base, "--index", "ivf", "--hnsw-m", "4"])
    assert out.exit_code == 2 and "Error: --hnsw-m needs --index hnsw, not --index ivf" in out.output
    for flag, value in (("--seed", "3"), ("--device", "cpu")):  # exact search uses neither: refused, not ignored
        out = runner.invoke(retrieval_command, [*base, flag, value])
        assert out.exit_code == 2 and f"Error: {flag} needs --index (exact search without an index" in out.output
    out = runner.invoke(retrieval_command, [*base, "--k", "100"])
    assert out.exit_code == 1 and out.output.startswith("Error: recall@100 needs at least 100 images")
    assert len(out.output.strip().splitlines()) == 1
