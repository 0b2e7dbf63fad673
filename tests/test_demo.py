"""`embedstore demo` end to end at reduced size: the numbers are sane and a second run reuses everything."""

from __future__ import annotations

import time

import pytest
from click.testing import CliRunner

from embedstore.demo.run import run_demo
from embedstore.store import Store
from embedstore_cli.main import cli

# The module fixture trains the full toy recipe once (about 70 s on 2 quiet cores; the timeout leaves room for a
# loaded machine).
pytestmark = pytest.mark.timeout(2400)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    cache = tmp_path_factory.mktemp("cache")
    start = time.perf_counter()
    summary = run_demo(out, size="small", cache_dir=cache, log=lambda m: None, progress=False, workers=0)
    return summary, cache, time.perf_counter() - start


def test_demo_numbers_are_sane(demo):
    summary, _, _ = demo
    n = summary.numbers
    clip = n["toy-clip"]
    assert clip["acc1_shapes"] > 0.5, "toy CLIP must be far above chance (12.5%) on shapes"
    assert clip["acc1_sketch"] < clip["acc1_shapes"], "the style shift must cost accuracy"
    assert n["mcm_auroc"] > 0.5
    assert n["nll_after"] <= n["nll_before"] + 1e-9, "temperature scaling must not raise NLL"
    for name in ("toy-classifier", "toy-finetuned-clip"):
        assert n[name]["acc1_shapes"] > 0.5
    assert (summary.report / "index.html").is_file()
    analyses = {r["analysis"] for r in Store.open(summary.store).query("SELECT DISTINCT analysis FROM results")}
    assert {"zeroshot", "prompts", "calibration", "ood", "retrieval", "robustness", "factors", "shape_bias",
            "probe"} <= analyses  # fmt: skip


def test_second_run_reuses_models_arrays_and_figures(demo):
    summary, cache, first_seconds = demo
    figures = sorted((summary.report / "figures").glob("*.png"))
    drawn_at = [f.stat().st_mtime_ns for f in figures]
    arrays_updated = Store.open(summary.store).query("SELECT max(updated) AS t FROM arrays")
    start = time.perf_counter()
    again = run_demo(summary.store.parent, size="small", cache_dir=cache, log=lambda m: None, progress=False,
                     workers=0)  # fmt: skip
    seconds = time.perf_counter() - start
    assert again.seconds["models"] < 10 and again.seconds["extract"] < 30
    assert seconds < first_seconds
    assert again.numbers["toy-clip"]["acc1_shapes"] == summary.numbers["toy-clip"]["acc1_shapes"]
    assert Store.open(summary.store).query("SELECT max(updated) AS t FROM arrays") == arrays_updated
    assert len(figures) >= 5 and [f.stat().st_mtime_ns for f in figures] == drawn_at, "unchanged figures are redrawn"


def test_demo_command_prints_the_summary_and_next_commands(demo, monkeypatch):
    summary, cache, _ = demo
    monkeypatch.setenv("EMBEDSTORE_CACHE", str(cache.parent))
    import embedstore.demo.run as demo_run

    original = demo_run.run_demo
    monkeypatch.setattr("embedstore_cli.demo_command.run_demo",
                        lambda out, **kw: original(out, cache_dir=cache, workers=0, **kw))  # fmt: skip
    result = CliRunner().invoke(cli, ["demo", "--out", str(summary.store.parent), "--size", "small", "--no-report",
                                      "--no-progress"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "toy CLIP zero-shot acc1" in result.output and "embedstore sql --store" in result.output
