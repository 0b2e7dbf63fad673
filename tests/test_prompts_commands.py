"""`embedstore prompts add | select`: which models are encoded for, replaced prompt sets said aloud, flag names in errors."""

from __future__ import annotations

from click.testing import CliRunner

from embedstore_cli.prompts_commands import prompts_group

CLIP = "openclip:embedstore-tiny@random:0"
TIMM = "timm:test_vit@random:0"


def _invoke(store, *args: str):
    return CliRunner().invoke(prompts_group, [args[0], "--store", str(store.path), *args[1:]])


def test_add_refuses_a_named_classifier_and_a_glob_skips_it(tiny_store):
    add = ["add", "--dataset", "shapes", "--name", "sketch", "--template", "a sketch of a {c}."]
    named = _invoke(tiny_store, *add, "--model", TIMM)
    assert named.exit_code == 1 and named.output.splitlines() == [
        f"Error: model {TIMM} is a classifier, with no text embeddings: prompt sets apply to CLIP models"
    ]
    only_classifiers = _invoke(tiny_store, *add, "--model", "timm:*")
    assert only_classifiers.exit_code == 1 and only_classifiers.output.splitlines() == [
        "Error: --model timm:* matches no CLIP model with text_emb on dataset shapes: "
        f"{TIMM}: a classifier, with no text embeddings; prompt sets apply to CLIP models"
    ]
    assert "sketch" not in tiny_store.prompt_sets("shapes")
    swept = _invoke(tiny_store, *add, "--model", "*")
    assert swept.exit_code == 0, swept.output
    assert f"skipped {TIMM}: a classifier, with no text embeddings" in swept.stderr
    assert "encoded for 2 model(s)" in swept.stdout and "replaced" not in swept.stderr


def test_replacing_a_prompt_set_is_said_in_one_line(tiny_store):
    n_default = len(tiny_store.prompt_set("shapes", "default"))
    add = ["add", "--dataset", "shapes", "--template", "a photo of a {c}."]
    new = _invoke(tiny_store, *add, "--name", "one")
    assert new.exit_code == 0 and "replaced" not in new.output, new.output
    same = _invoke(tiny_store, *add, "--name", "one")
    assert same.exit_code == 0 and "replaced" not in same.output, same.output
    grown = _invoke(tiny_store, *add, "--template", "a sketch of a {c}.", "--name", "one")
    assert grown.exit_code == 0, grown.output
    assert grown.stderr.splitlines()[-1] == "replaced prompt set 'one' (1 -> 2 templates)"
    default = _invoke(tiny_store, *add, "--name", "default")
    assert default.exit_code == 0, default.output
    assert default.stderr.splitlines()[-1] == (
        f"replaced prompt set 'default' ({n_default} -> 1 templates); evaluations without --prompts now use it"
    )
    select = _invoke(tiny_store, "select", "--model", CLIP, "--dataset", "shapes", "--max-templates", "2",
                     "--save-as", "one", "--json")  # fmt: skip
    assert select.exit_code == 0, select.output
    assert select.stderr.startswith("replaced prompt set 'one' (2 -> ")


def test_select_errors_name_the_flags(tiny_store):
    select = ["select", "--model", CLIP]
    n_templates = len(tiny_store.templates("shapes"))
    out = _invoke(tiny_store, *select, "--dataset", "shapes", "--max-templates", "99")
    assert out.exit_code == 1 and out.output.splitlines() == [
        f"Error: --max-templates must lie between 1 and the {n_templates} templates, got 99"
    ]
    out = _invoke(tiny_store, *select, "--dataset", "shapes", "--split", "0.001")
    assert out.exit_code == 1 and out.output.splitlines() == [
        "Error: --split 0.001 of 64 labelled rows leaves one side of the split empty"
    ]
    out = _invoke(tiny_store, *select, "--dataset", "shapes-ood")
    assert out.exit_code == 1 and out.output.splitlines() == [
        "Error: dataset shapes-ood has no labelled, decodable rows (an OOD set?): template selection needs labels"
    ]


def test_prompts_given_to_an_analysis_without_a_clip_model_is_refused(tiny_store):
    from embedstore_cli.main import cli

    commands = [
        ["calibration", "--dataset", "shapes"],
        ["robustness", "--id", "shapes", "--shifted", "shapes-v2"],
        ["shape-bias", "--dataset", "shapes-cue-conflict"],
        ["factors", "--dataset", "shapes-x"],
    ]
    for command in commands:
        args = ["eval", command[0], "--store", str(tiny_store.path), "--model", TIMM, *command[1:], "--prompts", "x"]
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 1 and result.output.splitlines() == [
            "Error: --prompts chooses the prompt set of CLIP models, and no selected model is one (classifiers are "
            "scored on their head logits)"
        ], (command, result.output)
