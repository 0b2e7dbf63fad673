"""Plan files (`embedstore.extract.plan.load_plan`): a good plan loads; every mistake is one line
naming the file and the key, before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from embedstore.extract.plan import PlanError, Settings, load_plan, plan_from_args

GOOD = """
[settings]
dtype = "float32"
batch_size = 64
device = "cpu"

[[models]]
id = "openclip:embedstore-tiny@random"
[models.metadata]
group = "zero-shot CLIP"

[[datasets]]
name = "pets"
source = "imagefolder:images"
[datasets.options]
classes = "classes.txt"
[datasets.prompt_sets]
mine = ["a photo of a {c}.", "a {c} at home."]
"""


def _plan(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "plan.toml"
    path.write_text(text)
    return path


def test_a_good_plan_loads_with_paths_relative_to_the_plan_file(tmp_path):
    plan = load_plan(_plan(tmp_path, GOOD))
    assert plan.settings == Settings(dtype="float32", batch_size=64, device="cpu")
    assert plan.models[0].id == "openclip:embedstore-tiny@random" and plan.models[0].metadata == {"group": "zero-shot CLIP"}
    (dataset,) = plan.datasets
    assert dataset.source == f"imagefolder:{tmp_path.as_posix()}/images"
    assert dataset.options == {"classes": "classes.txt"} and dataset.prompt_sets["mine"][1] == "a {c} at home."


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("[settings]", "settings = 5\n[other]"), "unknown section 'other'"),
        (('dtype = "float32"', 'dtype = "float64"'), "settings.dtype = 'float64'"),
        (('device = "cpu"', "device = 0"), "settings.device = 0"),
        (("batch_size = 64", "batch_size = true"), "settings.batch_size must be a positive integer, got True"),
        (("batch_size = 64", "batch_size = 0"), "settings.batch_size must be a positive integer"),
        (("batch_size = 64", "batch_sise = 64"), "unknown setting 'batch_sise'"),
        (('[models.metadata]\ngroup = "zero-shot CLIP"', 'metadata = "x"'), "models[0].metadata must be a table"),
        (('[datasets.options]\nclasses = "classes.txt"', "options = 5"), "datasets[0].options must be a table"),
        (('name = "pets"', 'name = "../evil"'), "name '../evil' must be letters, digits"),
        (('mine = ["a photo of a {c}.", "a {c} at home."]', 'mine = "itap of a {c}."'), "prompt_sets.mine: templates must be"),
        (('mine = ["a photo of a {c}.", "a {c} at home."]', 'mine = ["a {c} in {place}."]'), "fields other than {c}"),
        (('mine = ["a photo of a {c}.", "a {c} at home."]', 'mine = ["a photo of a thing."]'), "has no {c} placeholder"),
        (('id = "openclip:embedstore-tiny@random"', 'name = "x"'), "models[0] needs an id"),
    ],
)
def test_each_mistake_is_one_line_naming_the_file_and_key(tmp_path, change, message):
    old, new = change
    assert old in GOOD
    with pytest.raises(PlanError) as info:
        load_plan(_plan(tmp_path, GOOD.replace(old, new, 1)))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_settings_table_must_be_a_table(tmp_path):
    text = 'settings = 5\n[[models]]\nid = "x"\n'
    with pytest.raises(PlanError, match=r"\[settings\] must be a table"):
        load_plan(_plan(tmp_path, text))


def test_unreadable_files_are_one_line(tmp_path):
    with pytest.raises(PlanError, match="does not exist"):
        load_plan(tmp_path / "nowhere.toml")
    (tmp_path / "latin1.toml").write_bytes('[settings]\ndevice = "caf\xe9"\n'.encode("latin-1"))
    with pytest.raises(PlanError, match="is not UTF-8 text"):
        load_plan(tmp_path / "latin1.toml")
    with pytest.raises(PlanError, match="not valid TOML"):
        load_plan(_plan(tmp_path, "[settings\n"))


def test_command_line_plans_check_the_same_settings():
    with pytest.raises(PlanError, match='settings.workers must be "auto" or 0 or more, got -1 \\(--workers\\)'):
        plan_from_args(["openclip:embedstore-tiny@random"], ["d=synthetic:shapes"], workers=-1)
    with pytest.raises(PlanError, match="settings.batch_size must be a positive integer, got 0 \\(--batch-size\\)"):
        plan_from_args(["openclip:embedstore-tiny@random"], ["d=synthetic:shapes"], batch_size=0)


@pytest.mark.parametrize("share", [-0.1, 1.5, 0.0005, True, "0.3"])
def test_the_cpu_decode_share_is_a_number_from_0_to_1_in_thousandths(share):
    with pytest.raises(PlanError, match=r"cpu_decode_share must be a number from 0 to 1 in steps of 0.001, got .*"
                                        r"\(--cpu-decode-share\)"):  # fmt: skip
        plan_from_args(["openclip:embedstore-tiny@random"], ["d=synthetic:shapes"], cpu_decode_share=share)
    assert Settings(cpu_decode_share=0.375).cpu_decode_permille == 375 and Settings(cpu_decode_share=1).cpu_decode_permille == 1000
    # one spelling per share: a plan's 1 and the command line's 1.0 (or 0.1 + 0.2 and 0.3) are the same setting
    assert Settings(cpu_decode_share=1) == Settings(cpu_decode_share=1.0)
    assert Settings(cpu_decode_share=0.1 + 0.2).cpu_decode_share == 0.3


def test_a_settings_mistake_in_a_plan_names_the_file(tmp_path):
    path = _plan(tmp_path, GOOD.replace("batch_size = 64", 'batch_size = "4"', 1))
    with pytest.raises(PlanError, match=f"^{path}: settings.batch_size must be a positive integer, got '4'"):
        load_plan(path)


def test_models_and_datasets_from_the_command_line_complete_a_plan_file(tmp_path):
    only_datasets = _plan(tmp_path, 'datasets = [{ name = "d", source = "synthetic:shapes" }]\n')
    with pytest.raises(PlanError, match="the plan names no model"):
        load_plan(only_datasets)
    plan = load_plan(only_datasets, ["timm:test_vit@random"], ["e=synthetic:shapes?n=8"])
    assert [m.id for m in plan.models] == ["timm:test_vit@random"] and [d.name for d in plan.datasets] == ["d", "e"]


def test_a_model_named_twice_is_refused_also_under_its_two_random_spellings():
    with pytest.raises(PlanError, match="appears twice in the plan"):
        plan_from_args(["openclip:embedstore-tiny@random", "openclip:embedstore-tiny@random:0"], ["d=synthetic:shapes"])


def test_a_bad_dataset_option_in_a_plan_names_the_plan_file_and_entry(tmp_path):
    from click.testing import CliRunner

    from embedstore_cli.main import cli

    text = ('[[models]]\nid = "openclip:embedstore-tiny@random"\n'
            '[[datasets]]\nname = "shapes"\nsource = "synthetic:shapes"\n[datasets.options]\nbogus = 1\n')  # fmt: skip
    plan = _plan(tmp_path, text)
    result = CliRunner().invoke(cli, ["extract", "--store", str(tmp_path / "store"), str(plan)])
    assert result.exit_code == 1, result.output
    error = result.output.splitlines()[-1]  # after the run's log lines
    assert error.startswith(f"Error: {plan}: datasets[0]: dataset 'shapes': ") and "bogus" in error, result.output
    assert "Traceback" not in result.output and not (tmp_path / "store").exists()
