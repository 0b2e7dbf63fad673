"""`embedstore eval ood`: the runner on the tiny store (every score, class space, banks, conventions,
results and params, bad input) and the click command."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from scipy.special import softmax
from sklearn.metrics import roc_auc_score
from store_support import put_array

from embedstore.analysis.ood import knn_score
from embedstore.analysis.zeroshot import classifier_weights, zeroshot_logits
from embedstore.errors import AnalysisError
from embedstore.evaluate.common import eval_data
from embedstore.evaluate.ood import SCORES, OODSettings, run_ood
from embedstore.sources import open_dataset
from embedstore_cli.eval_ood import ood_command

CLIP = "openclip:embedstore-tiny@random:0"
CLASSIFIER = "timm:test_vit@random:0"
OOD_SETS = ["shapes-ood", "shapes-sketch"]


def _results(store, **where) -> dict[str, float]:
    sql = "SELECT metric, value FROM results WHERE analysis = 'ood'"
    params = []
    for column, value in where.items():
        sql += f" AND {column} = ?"
        params.append(value)
    return {r["metric"]: r["value"] for r in store.query(sql, params)}


def _stored_params(store) -> list[dict]:
    rows = store.query("SELECT DISTINCT params FROM results WHERE analysis = 'ood'")
    return [json.loads(r["params"]) for r in rows]


def _count(store) -> int:
    return store.query("SELECT count(*) AS n FROM results WHERE analysis = 'ood'")[0]["n"]


def _invoke(store, *args: str):
    return CliRunner().invoke(ood_command, ["--store", str(store.path), *args])


def test_every_score_runs_and_lands_in_the_catalog(tiny_store) -> None:
    runs = run_ood(tiny_store, [CLIP], "shapes", OOD_SETS, SCORES, OODSettings(k=5))
    assert [r.score for r in runs] == list(SCORES)
    for run in runs:
        assert list(run.metrics) == [*OOD_SETS, "mean"]
        for metrics in run.metrics.values():
            assert all(0.0 <= v <= 1.0 for v in (metrics.auroc, metrics.aupr_in, metrics.aupr_out, metrics.fpr95))
        stored = _results(tiny_store, model=CLIP, dataset="shapes", metric="auroc")
        assert stored
    assert {p["score"] for p in _stored_params(tiny_store)} == set(SCORES)
    knn = next(r for r in runs if r.score == "knn")
    assert (knn.n_id, knn.n_bank, knn.n_ood) == (32, 32, {"shapes-ood": 32, "shapes-sketch": 32})
    msp = next(r for r in runs if r.score == "msp")
    assert (msp.n_id, msp.n_bank) == (64, None)


def test_logit_scores_use_the_id_class_space_for_ood_images(tiny_store) -> None:
    (run,) = run_ood(tiny_store, [CLIP], "shapes", ["shapes-ood"], ["maxlogit"])
    info = tiny_store.model_info(CLIP)
    id_logits = eval_data(tiny_store, CLIP, "shapes").logits
    weights = classifier_weights(tiny_store.read_array("shapes", CLIP, "text_emb"))
    ood_logits = zeroshot_logits(tiny_store.read_array("shapes-ood", CLIP, "image_emb"), weights, info["logit_scale"])
    id_scores, ood_scores = id_logits.max(axis=1), ood_logits.max(axis=1)
    is_id = np.r_[np.ones(len(id_scores)), np.zeros(len(ood_scores))]
    expected = roc_auc_score(is_id, np.r_[id_scores, ood_scores])
    assert run.metrics["shapes-ood"].auroc == pytest.approx(expected, abs=1e-9)
    assert run.params["prompt_set"] == "default" and run.params["logits"] == "zero-shot"


def test_knn_with_a_bank_dataset_scores_every_id_row(tiny_store) -> None:
    (run,) = run_ood(tiny_store, [CLIP], "shapes", ["shapes-ood"], ["knn"], OODSettings(k=3, bank="shapes-v2"))
    bank = tiny_store.read_array("shapes-v2", CLIP, "image_emb")
    id_scores = knn_score(bank, tiny_store.read_array("shapes", CLIP, "image_emb"), 3)
    ood_scores = knn_score(bank, tiny_store.read_array("shapes-ood", CLIP, "image_emb"), 3)
    is_id = np.r_[np.ones(64), np.zeros(32)]
    assert run.metrics["shapes-ood"].auroc == pytest.approx(roc_auc_score(is_id, np.r_[id_scores, ood_scores]))
    assert (run.n_id, run.n_bank) == (64, 32)
    assert run.params["bank"] == "shapes-v2" and run.params["split"] is None and run.params["seed"] is None


def test_the_mean_over_ood_sets_is_the_unweighted_mean(tiny_store) -> None:
    (run,) = run_ood(tiny_store, [CLIP], "shapes", ["shapes-ood", "shapes-sketch", "shapes-x"], ["energy"])
    stored = _results(tiny_store, model=CLIP)
    for metric in ("auroc", "aupr_in", "aupr_out", "fpr95"):
        per_set = [stored[f"{metric}@ood:{name}"] for name in ("shapes-ood", "shapes-sketch", "shapes-x")]
        assert stored[metric] == pytest.approx(np.mean(per_set))
        assert getattr(run.metrics["mean"], metric) == pytest.approx(np.mean(per_set))
    assert stored["n_id"] == 64 and stored["n_ood@ood:shapes-x"] == 32


def test_the_positive_convention_is_stored_with_each_result(tiny_store) -> None:
    (by_id,) = run_ood(tiny_store, [CLIP], "shapes", OOD_SETS, ["msp"])
    (by_ood,) = run_ood(tiny_store, [CLIP], "shapes", OOD_SETS, ["msp"], OODSettings(positive="ood"))
    stored = sorted((p["positive"], p["aupr"]) for p in _stored_params(tiny_store))
    assert stored == [("id", "average precision"), ("ood", "trapezoid (OpenOOD)")]
    assert by_id.metrics["mean"].auroc == by_ood.metrics["mean"].auroc
    assert (by_id.metrics["mean"].positive, by_ood.metrics["mean"].positive) == ("id", "ood")


def test_rerun_replaces_and_only_the_parameters_a_score_uses_add_rows(tiny_store) -> None:
    run_ood(tiny_store, [CLIP], "shapes", OOD_SETS, ["msp", "knn"], OODSettings(k=5))
    first = _count(tiny_store)
    run_ood(tiny_store, [CLIP], "shapes", OOD_SETS, ["msp", "knn"], OODSettings(k=5))
    assert _count(tiny_store) == first
    run_ood(tiny_store, [CLIP], "shapes", OOD_SETS, ["msp", "knn"], OODSettings(k=6))
    params = _stored_params(tiny_store)
    assert sorted(p.get("k", 0) for p in params) == [0, 5, 6]  # msp (no k) was replaced, knn added
    run_ood(tiny_store, [CLIP], "shapes", ["shapes-ood"], ["msp"])
    assert len(_stored_params(tiny_store)) == 4  # another OOD list is another mean


def test_classifier_logit_scores_and_mcm_refusal(tiny_store) -> None:
    runs = run_ood(tiny_store, [CLASSIFIER], "shapes", OOD_SETS, ["msp", "entropy", "mahalanobis"])
    assert runs[0].params["logits"] == "classifier head" and runs[0].params["prompt_set"] is None
    # shapes declares no class subset, so the classifier is scored on all 1000 head outputs
    id_msp, ood_msp = (
        softmax(tiny_store.read_array(d, CLASSIFIER, "logits"), axis=1).max(axis=1) for d in ("shapes", "shapes-ood")
    )
    is_id = np.r_[np.ones(len(id_msp)), np.zeros(len(ood_msp))]
    assert runs[0].metrics["shapes-ood"].auroc == pytest.approx(roc_auc_score(is_id, np.r_[id_msp, ood_msp]))
    with pytest.raises(AnalysisError, match="score mcm needs a CLIP model"):
        run_ood(tiny_store, [CLASSIFIER], "shapes", OOD_SETS, ["msp", "mcm"])


def test_a_glob_skips_mcm_for_classifiers_and_keeps_their_other_scores(tiny_store) -> None:
    runs = run_ood(tiny_store, ["*"], "shapes", ["shapes-ood"], ["mcm", "energy"])
    scored = {(r.model, r.score) for r in runs}
    assert (CLASSIFIER, "energy") in scored and (CLASSIFIER, "mcm") not in scored
    assert (CLIP, "mcm") in scored and len(scored) == 5


def test_an_ood_set_without_labels_is_fine(tiny_store) -> None:
    (run,) = run_ood(tiny_store, [CLIP], "shapes", ["shapes-captions"], ["mcm"])
    assert run.n_ood == {"shapes-captions": 24}


def test_nothing_is_written_when_a_later_model_fails_its_checks(tiny_store) -> None:
    with pytest.raises(AnalysisError, match="mcm"):
        run_ood(tiny_store, ["openclip:*", CLASSIFIER], "shapes", OOD_SETS, ["mcm"])
    assert _count(tiny_store) == 0


def test_command_prints_a_table_and_json(tiny_store) -> None:
    table = _invoke(tiny_store, "--model", CLIP, "--id", "shapes", "--ood", "shapes-ood", "--ood", "shapes-x",
                    "--score", "mcm", "--score", "knn", "--k", "4")  # fmt: skip
    assert table.exit_code == 0, table.output
    lines = table.output.splitlines()
    assert lines[0].split()[:5] == ["model", "id", "ood", "score", "positive"]
    assert [line.split()[2] for line in lines[2:]] == ["shapes-ood", "shapes-x", "mean"] * 2

    result = _invoke(tiny_store, "--model", CLIP, "--id", "shapes", "--ood", "shapes-o*", "--score", "energy",
                     "--positive", "ood", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(r["ood"], r["positive"]) for r in rows] == [("shapes-ood", "ood"), ("mean", "ood")]
    swept = _invoke(tiny_store, "--model", CLIP, "--id", "shapes", "--ood", "shapes*", "--score", "knn", "--k", "3",
                    "--bank", "shapes-v2", "--json")  # fmt: skip
    assert swept.exit_code == 0, swept.output
    ood_sets = {r["ood"] for r in json.loads(swept.stdout)} - {"mean"}
    assert "shapes-ood" in ood_sets and not ood_sets & {"shapes", "shapes-v2"}  # a glob leaves out the ID set and bank


def _lonely_dataset(store) -> str:
    """A registered dataset no model was extracted on."""
    store.register_dataset(open_dataset("lonely", "synthetic:shapes-ood?n=8&seed=3"))
    return "lonely"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", CLASSIFIER, "--score", "mcm"], "score mcm needs a CLIP model"),
        (["--model", CLIP, "--score", "knn"], "--k 50 exceeds the 32 rows of the kNN bank (shapes)"),
        (["--model", CLIP, "--score", "knn", "--bank", "shapes"], "is the ID dataset"),
        (["--model", CLIP, "--score", "knn", "--bank", "shapes-v2", "--split", "0.3"], "not both"),
        (["--model", CLIP, "--score", "msp", "--ood", "shapes"], "both the ID dataset and an OOD dataset"),
        (["--model", CLIP, "--score", "mahalanobis", "--bank", "shapes-captions"], "has none"),
        (
            ["--model", CLIP, "--score", "msp", "--bank", "shapes-v2"],
            "--bank chooses the ID bank of the knn and mahalanobis scores, and no --score is one of them",
        ),
        (["--model", CLIP, "--score", "mcm", "--split", "0.3"], "--split chooses the ID bank of the knn"),
        (["--model", CLIP, "--score", "energy", "--seed", "1"], "--seed chooses the ID bank of the knn"),
        (["--model", CLIP, "--score", "mahalanobis", "--k", "5"], "--k is the neighbour rank of the knn score"),
        (["--model", CLIP, "--score", "knn", "--bank", "shapes-v2", "--seed", "1"], "with --bank nothing is drawn"),
        (
            ["--model", CLASSIFIER, "--score", "msp", "--prompts", "default"],
            "--prompts chooses the prompt set of CLIP models' logit scores and mcm",
        ),
        (["--model", CLIP, "--score", "knn", "--prompts", "default"], "--prompts chooses the prompt set"),
    ],
)
def test_bad_input_is_one_line_through_the_command(tiny_store, args: list[str], message: str) -> None:
    result = _invoke(tiny_store, "--id", "shapes", "--ood", "shapes-ood", *args)
    assert result.exit_code == 1
    assert message in result.output and result.output.count("\n") == 1, result.output


def test_a_caption_set_as_id_dataset_is_refused_for_class_scores(tiny_store) -> None:
    result = _invoke(tiny_store, "--model", "*", "--id", "shapes-captions", "--ood", "shapes-ood", "--score", "msp")
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    assert "--id shapes-captions has no class labels (a retrieval dataset): a CLIP model's score msp is computed" in (
        result.output
    )
    assert "text_emb" not in result.output
    (head,) = run_ood(tiny_store, [CLASSIFIER], "shapes-captions", ["shapes-ood"], ["msp"])
    assert head.n_id == 24  # a classifier's msp comes from its own head: no classes of the ID set needed
    (run,) = run_ood(tiny_store, [CLIP], "shapes-captions", ["shapes-ood"], ["knn"], OODSettings(k=3))
    assert run.n_id == 12  # knn needs no classes: half of the 24 caption-set images, the other half the bank


def test_an_ood_dataset_not_extracted_for_the_model_is_one_line(tiny_store) -> None:
    lonely = _lonely_dataset(tiny_store)
    result = _invoke(tiny_store, "--model", CLIP, "--id", "shapes", "--ood", lonely, "--score", "msp")
    assert result.exit_code == 1
    assert f"OOD dataset {lonely} has no image_emb for model {CLIP}" in result.output
    assert result.output.count("\n") == 1


def test_mismatched_embedding_widths_are_one_line(tiny_store) -> None:
    lonely = _lonely_dataset(tiny_store)
    put_array(tiny_store, lonely, CLIP, "image_emb", np.ones((8, 16), dtype=np.float16))
    result = _invoke(tiny_store, "--model", CLIP, "--id", "shapes", "--ood", lonely, "--score", "knn", "--k", "3")
    assert result.exit_code == 1
    assert "image_emb of model" in result.output and "lonely: 16" in result.output and "shapes: 32" in result.output
    assert result.output.count("\n") == 1


def test_nan_in_an_ood_embedding_is_one_line_naming_the_row(tiny_store) -> None:
    image = tiny_store.read_array("shapes-ood", CLIP, "image_emb")
    image[11] = np.nan
    put_array(tiny_store, "shapes-ood", CLIP, "image_emb", image)
    result = _invoke(tiny_store, "--model", CLIP, "--id", "shapes", "--ood", "shapes-ood", "--score", "mcm")
    assert result.exit_code == 1
    assert "image_emb of model openclip:embedstore-tiny@random:0 on dataset shapes-ood: row 11" in result.output
    assert result.output.count("\n") == 1


def test_an_all_zero_embedding_outside_bad_samples_is_named_by_its_dataset_row(tiny_store, tmp_path):
    from imported_classifiers import import_rows

    for dataset in ("shapes", "shapes-ood"):
        n = len(tiny_store.sample_table(dataset)["key"])
        emb = np.random.default_rng(0).standard_normal((n, 8)).astype(np.float32)
        if dataset == "shapes":
            emb[40] = 0.0  # an undecodable image's row that came without its bad flag (an .npy import)
        import_rows(tiny_store, tmp_path, "imp:emb", dataset, "image_emb", emb)
    with pytest.raises(AnalysisError, match="image_emb of model imp:emb on dataset shapes: row 40 is all zeros but"):
        run_ood(tiny_store, ["imp:emb"], "shapes", ["shapes-ood"], ["knn"], OODSettings(k=3))
    tiny_store.record_bad_samples("shapes", [(40, None, "truncated")])
    (run,) = run_ood(tiny_store, ["imp:emb"], "shapes", ["shapes-ood"], ["knn"], OODSettings(k=3))
    assert run.model == "imp:emb"
