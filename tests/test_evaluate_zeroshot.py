"""eval zeroshot and prompts from the cache: parity with CLIP_benchmark, stored logits, prompt sets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from embedstore.errors import EmbedstoreError
from embedstore.evaluate.prompts import add_templates, run_ablation, run_selection
from embedstore.evaluate.zeroshot import run_zeroshot, zeroshot_result
from embedstore.extract.plan import plan_from_args
from embedstore.extract.runner import run_extraction
from embedstore.models import load_model
from embedstore.sources import open_dataset, write_dataset
from embedstore.store import Store
from embedstore_cli.main import cli

CLIP = "openclip:embedstore-tiny@random:0"
TIMM = "timm:test_vit@random:0"


def test_parity_with_clip_benchmark_zeroshot_classification(tmp_path, monkeypatch):
    """Same model object, same wds data, float32, no autocast: identical acc1, acc5, mean per-class recall."""
    import clip_benchmark.metrics.zeroshot_classification as cb
    import open_clip
    import webdataset as wds

    def accuracy(output, target, topk=(1,)):  # clip-benchmark 1.6.2 calls float() on a 1-element array (numpy>=2.4)
        pred = output.topk(max(topk), 1, True, True)[1].t()
        correct = pred.eq(target.view(1, -1).expand_as(pred))
        return [correct[:k].reshape(-1).float().sum().item() / len(target) for k in topk]

    monkeypatch.setattr(cb, "accuracy", accuracy)
    root = tmp_path / "wds"
    write_dataset(open_dataset("s", "synthetic:shapes?n=96&seed=4"), str(root), layout="wds", shard_size=40)
    store = Store.create(tmp_path / "store")
    plan = plan_from_args(["openclip:embedstore-tiny@random"], [f"shapes=wds:{root}"], workers=0, dtype="float32",
                          batch_size=32, chunk_rows=64)  # fmt: skip
    run_extraction(store, plan, log=lambda m: None, progress=False)
    ours = run_zeroshot(store, [CLIP], ["shapes"])[0].result.metrics()

    model = load_model("openclip:embedstore-tiny@random")
    classnames = (root / "classnames.txt").read_text().splitlines()
    templates = (root / "zeroshot_classification_templates.txt").read_text().splitlines()
    shards = sorted(str(p) for p in (root / "test").glob("*.tar"))
    pipeline = (wds.WebDataset(shards, shardshuffle=False).decode("pil").to_tuple("webp;png;jpg;jpeg", "cls")
                .map_tuple(model.pil_transform, None).batched(32))  # fmt: skip
    pipeline.classes = classnames
    loader = torch.utils.data.DataLoader(pipeline, batch_size=None, num_workers=0)
    theirs = cb.evaluate(model.module, loader, open_clip.get_tokenizer("embedstore-tiny"), classnames, templates,
                         device="cpu", amp=False)  # fmt: skip
    assert ours["n"] == 96
    for metric in ("acc1", "acc5", "mean_per_class_recall"):
        assert ours[metric] == pytest.approx(theirs[metric], abs=1e-12), metric


def test_ensemble_of_all_templates_equals_the_stored_default_logits(tiny_store):
    stored = tiny_store.read_array("shapes", CLIP, "logits")
    labels = tiny_store.sample_table("shapes")["label"]
    from_logits = (stored.argmax(1) == labels).mean()
    assert zeroshot_result(tiny_store, CLIP, "shapes").acc1 == pytest.approx(from_logits)


def test_results_rows_carry_every_parameter_and_are_replaced(tiny_store):
    run_zeroshot(tiny_store, ["openclip:*"], ["shapes", "shapes-v2"])
    run_zeroshot(tiny_store, ["openclip:*"], ["shapes", "shapes-v2"])
    rows = tiny_store.query("SELECT model, dataset, metric, params FROM results WHERE analysis = 'zeroshot'")
    assert len(rows) == 2 * 2 * 4  # 2 models x 2 datasets x (acc1, acc5, mean_per_class_recall, n)
    params = json.loads(rows[0]["params"])
    assert params["prompt_set"] == "default" and params["logits"] == "zero-shot" and params["templates"]
    run_zeroshot(tiny_store, [CLIP], ["shapes"], templates=[0, 1])
    assert len(tiny_store.query("SELECT * FROM results WHERE analysis = 'zeroshot'")) == 16 + 4


def test_classifier_with_a_class_subset_is_scored_on_sliced_logits(tmp_path):
    from embedstore.store.exchange import import_array

    store = Store.create(tmp_path / "s")
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((30, 10)).astype("float32")
    subset = [1, 4, 7]
    labels = rng.integers(0, 3, 30)
    logits[np.arange(30), np.asarray(subset)[labels]] += 10  # right within the subset ...
    logits[:, 0] += 100  # ... but a class outside it dominates the full argmax

    class Sample:
        def __init__(self, row):
            self.row, self.key, self.label, self.locator, self.captions, self.annotations = (
                row,
                f"k{row}",
                int(labels[row]),
                None,
                (),
                {},
            )

    class Subset:
        name, kind, spec, root, task, templates = "sub", "imported", "test", None, "classification", ["{c}"]
        classnames, class_subset, samples = ["a", "b", "c"], subset, [Sample(i) for i in range(30)]

        def fingerprint(self):
            return "sub"

    store.register_dataset(Subset())
    np.save(tmp_path / "l.npy", logits)
    (tmp_path / "k.txt").write_text("\n".join(f"k{i}" for i in range(30)))
    store.register_model({"model_id": "clf", "kind": "classifier", "fingerprint": "f"})
    import_array(store, "sub", "clf", "logits", tmp_path / "l.npy", keys_file=tmp_path / "k.txt")
    assert run_zeroshot(store, ["clf"], ["sub"])[0].result.acc1 == 1.0


def test_a_glob_skips_clip_models_on_datasets_without_the_prompt_set(tiny_store):
    tiny_store.add_prompt_set("shapes-v2", "two", tiny_store.templates("shapes-v2")[:2])
    rows = run_zeroshot(tiny_store, ["openclip:*"], ["shapes-[vs]*"], prompt_set="two")
    assert {(r.dataset, r.prompt_set) for r in rows} == {("shapes-v2", "two")} and len(rows) == 2
    with pytest.raises(EmbedstoreError, match="prompt set 'two' is not defined for dataset shapes-sketch"):
        run_zeroshot(tiny_store, ["openclip:*"], ["shapes-v2", "shapes-sketch"], prompt_set="two")
    with pytest.raises(EmbedstoreError, match=r"can be scored \(shapes-sketch: prompt set 'two' is not defined"):
        run_zeroshot(tiny_store, ["openclip:*"], ["shapes-s*"], prompt_set="two")


def test_a_random_init_model_is_found_by_the_id_it_was_extracted_with(tiny_store):
    """`extract --model X@random` stores X@random:0; naming it X@random afterwards finds it."""
    assert CLIP == "openclip:embedstore-tiny@random:0"
    by_short_id = run_zeroshot(tiny_store, ["openclip:embedstore-tiny@random"], ["shapes"])
    assert [r.model for r in by_short_id] == [CLIP]
    assert by_short_id[0].result.acc1 == run_zeroshot(tiny_store, [CLIP], ["shapes"])[0].result.acc1


def test_a_run_that_fails_on_one_pair_stores_nothing(tiny_store):
    count = "SELECT count(*) AS n FROM results"
    before = tiny_store.query(count)[0]["n"]
    with pytest.raises(EmbedstoreError, match="shapes-captions has no classes"):
        run_zeroshot(tiny_store, [CLIP], ["shapes", "shapes-captions"])  # shapes is scored first
    assert tiny_store.query(count)[0]["n"] == before
    run_zeroshot(tiny_store, [CLIP], ["shapes", "shapes-v2"])
    assert tiny_store.query(count)[0]["n"] > before


def test_bad_input_is_one_clear_error(tiny_store):
    with pytest.raises(EmbedstoreError, match="no model .* matches 'nope'"):
        run_zeroshot(tiny_store, ["nope"], ["shapes"])
    with pytest.raises(EmbedstoreError, match="no dataset .* matches"):
        run_zeroshot(tiny_store, [CLIP], ["imagenet"])
    with pytest.raises(EmbedstoreError, match="prompt set 'missing'"):
        run_zeroshot(tiny_store, [CLIP], ["shapes"], prompt_set="missing")
    with pytest.raises(EmbedstoreError, match="1000 outputs but dataset shapes has 8 classes"):
        run_zeroshot(tiny_store, [TIMM], ["shapes"])
    with pytest.raises(EmbedstoreError, match=r"\{c\}"):
        add_templates(tiny_store, "shapes", "bad", ["a photo without a placeholder"])
    with pytest.raises(EmbedstoreError):
        run_zeroshot(tiny_store, [CLIP], ["shapes"], templates=[])
    for bad_name in ("", "a b", "../x"):
        with pytest.raises(EmbedstoreError, match="prompt set name"):
            add_templates(tiny_store, "shapes", bad_name, ["an unusual rendering of a {c}."])
        with pytest.raises(EmbedstoreError, match="prompt set name"):
            run_selection(tiny_store, CLIP, "shapes", max_templates=1, save_as=bad_name)
    assert "an unusual rendering of a {c}." not in tiny_store.templates("shapes")
    with pytest.raises(EmbedstoreError, match="SQL statement is empty"):
        tiny_store.sql("  ")


def test_prompts_add_encodes_text_only_and_new_sets_evaluate(tiny_store, monkeypatch):
    image_before = tiny_store.read_array("shapes", CLIP, "image_emb").copy()
    text_before = tiny_store.read_array("shapes", CLIP, "text_emb")
    from embedstore.models.openclip_adapter import OpenClipAdapter

    monkeypatch.setattr(OpenClipAdapter, "encode_image", lambda *a, **k: pytest.fail("an image was encoded"))
    added = add_templates(
        tiny_store, "shapes", "sketches", ["a sketch of a {c}.", "a photo of a {c}."], models=["openclip:*"]
    )
    assert added.new_templates == ["a sketch of a {c}."] and len(added.encoded_for) == 2
    text_after = tiny_store.read_array("shapes", CLIP, "text_emb")
    assert text_after.shape[1] == text_before.shape[1] + 1
    np.testing.assert_array_equal(text_after[:, : text_before.shape[1]], text_before)
    np.testing.assert_array_equal(tiny_store.read_array("shapes", CLIP, "image_emb"), image_before)
    model = load_model("openclip:embedstore-tiny@random")
    with torch.inference_mode():
        expected = model.encode_text(model.tokenize(["a sketch of a circle."])).numpy()[0]
    classnames = tiny_store.dataset_info("shapes")["classnames"]
    np.testing.assert_allclose(text_after[classnames.index("circle"), -1], expected, rtol=1e-3, atol=1e-3)
    result = run_zeroshot(tiny_store, [CLIP], ["shapes"], prompt_set="sketches")[0]
    assert result.prompt_set == "sketches" and 0 <= result.result.acc1 <= 1
    again = add_templates(tiny_store, "shapes", "sketches", ["a sketch of a {c}."])
    assert again.new_templates == [] and again.encoded_for == []


def test_ablation_and_selection_record_results(tiny_store):
    rows = run_ablation(tiny_store, ["openclip:*", TIMM], ["shapes"])
    swept = run_ablation(tiny_store, ["openclip:*"], ["shapes-[co]*"])  # cue-conflict; captions and ood skipped
    assert {r.dataset for r in swept} == {"shapes-cue-conflict"}
    assert len(rows) == 2 and len(rows[0].per_template) == len(tiny_store.templates("shapes"))
    selection = run_selection(tiny_store, CLIP, "shapes", max_templates=3, save_as="greedy3")
    assert len(selection.order) == 3 and len(set(selection.order)) == 3
    assert len(tiny_store.prompt_set("shapes", "greedy3")) == selection.best_prefix
    assert selection.select_acc[selection.best_prefix - 1] == max(selection.select_acc)
    with pytest.raises(EmbedstoreError, match="matches 2 models"):
        run_selection(tiny_store, "openclip:*", "shapes", max_templates=1)
    metrics = {r["metric"] for r in tiny_store.query("SELECT metric FROM results WHERE analysis = 'prompts'")}
    assert {"acc1@template:0", "acc1@set:default", "select_acc1@step:1", "report_acc1@step:3"} <= metrics


def test_cli_zeroshot_and_prompts(tiny_store):
    runner = CliRunner()
    env = {"EMBEDSTORE_STORE": str(tiny_store.path)}
    out = runner.invoke(cli, ["eval", "zeroshot", "--model", "openclip:*", "--dataset", "shapes*", "--json"], env=env)
    assert out.exit_code == 0, out.output
    assert len(json.loads(out.stdout)) == 2 * 5  # 2 CLIP models x 5 labelled datasets ...
    assert out.stderr.splitlines() == [  # ... the glob's others are named on stderr
        "skipped shapes-captions: no classes (a retrieval dataset): zero-shot classification needs classes",
        "skipped shapes-ood: no labelled, decodable rows (an OOD set?): zero-shot classification needs labels",
    ]
    out = runner.invoke(cli, ["prompts", "list", "--dataset", "shapes"], env=env)
    assert out.exit_code == 0 and "default (" in out.output
    out = runner.invoke(cli, ["eval", "zeroshot", "--model", "nope", "--dataset", "shapes"], env=env)
    assert out.exit_code == 1 and out.output.startswith("Error: no model") and "Traceback" not in out.output
    base = ["eval", "zeroshot", "--model", CLIP, "--dataset", "shapes"]
    out = runner.invoke(cli, [*base, "--templates", "0", "--prompts", "simple"], env=env)
    assert out.exit_code == 2 and "give --prompts or --templates, not both" in out.output
    out = runner.invoke(cli, [*base, "--templates", ""], env=env)
    assert out.exit_code == 2 and "names no template index" in out.output
    out = runner.invoke(cli, [*base, "--templates", "0,1", "--json"], env=env)
    assert out.exit_code == 0 and json.loads(out.output)[0]["prompts"] == "custom", out.output


def test_prompt_options_without_a_clip_model_or_out_of_range_are_one_clear_error(tiny_store):
    count = "SELECT count(*) AS n FROM results"
    before = tiny_store.query(count)[0]["n"]
    for options, flag in (({"prompt_set": "nosuch"}, "--prompts"), ({"prompt_set": "default"}, "--prompts"),
                          ({"templates": [5]}, "--templates")):  # fmt: skip
        with pytest.raises(EmbedstoreError, match=f"^{flag} chooses the prompts of CLIP models, and none is selected"):
            run_zeroshot(tiny_store, ["timm:*"], ["shapes"], **options)
    with pytest.raises(EmbedstoreError, match=r"^--templates: 55 is not a template index of dataset shapes, which has"):
        run_zeroshot(tiny_store, [CLIP], ["shapes"], templates=[0, 55])
    with pytest.raises(EmbedstoreError, match=r"^--templates: -1 is not a template index"):
        run_zeroshot(tiny_store, ["*"], ["shapes"], templates=[-1])
    with pytest.raises(EmbedstoreError, match=r"^--templates repeats template 1"):
        run_zeroshot(tiny_store, [CLIP], ["shapes"], templates=[1, 1])
    with pytest.raises(EmbedstoreError, match=r"^prompt set 'nosuch' is not defined for dataset shapes"):
        run_zeroshot(tiny_store, ["*"], ["shapes"], prompt_set="nosuch")  # a classifier first, then CLIP models
    assert tiny_store.query(count)[0]["n"] == before
    env = {"EMBEDSTORE_STORE": str(tiny_store.path)}
    out = CliRunner().invoke(cli, ["eval", "zeroshot", "--model", "timm:*", "--dataset", "shapes", "--templates", "5"],
                             env=env)  # fmt: skip
    assert out.exit_code == 1 and out.output.splitlines() == [
        "Error: --templates chooses the prompts of CLIP models, and none is selected (classifiers are scored on "
        "their head logits)"
    ]


def test_a_prompt_set_naming_a_template_a_model_lacks_says_how_to_encode_it(tiny_store):
    other = "openclip:embedstore-tiny@random:1"
    add_templates(tiny_store, "shapes", "sketch", ["a sketch of a {c}."], models=[CLIP])  # not encoded for `other`
    n = len(tiny_store.templates("shapes")) - 1
    message = f"model {other}'s text_emb on dataset shapes encodes {n} templates, not template {n}: encode it with"
    with pytest.raises(EmbedstoreError, match=message):
        run_zeroshot(tiny_store, [other], ["shapes"], prompt_set="sketch")
    with pytest.raises(EmbedstoreError, match=message):
        run_ablation(tiny_store, [other], ["shapes"])
