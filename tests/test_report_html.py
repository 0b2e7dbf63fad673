"""The static HTML report: self-contained folder, every link and image resolves, provenance of every
number, skipped figures noted, the `report` command, and a real headless Chromium that renders it."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from html.parser import HTMLParser
from importlib import metadata
from pathlib import Path
from urllib.parse import unquote, urlsplit
from xml.etree import ElementTree

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from test_report_figures import seed_study_results

from embedstore.errors import AnalysisError
from embedstore.report import html as report_html
from embedstore.report.data import ReportData, ReportSelection
from embedstore.report.html import write_report
from embedstore.report.kinds import FIGURE_KINDS
from embedstore.store import Store
from embedstore_cli.report_commands import report_command

CHROMIUM = next((shutil.which(name) for name in ("chromium", "chromium-browser") if shutil.which(name)), None)
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--enable-logging=stderr", "--v=0", "--window-size=1280,2400"]  # fmt: skip


class _PageLinks(HTMLParser):
    """Every src/href, every id, and the tags of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str, str]] = []  # (tag, attribute, value)
        self.ids: set[str] = set()
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("src", "href") and value is not None:
                self.links.append((tag, name, value))
            if name == "id" and value is not None:
                self.ids.add(value)


def _parse(index: Path) -> _PageLinks:
    parser = _PageLinks()
    parser.feed(index.read_text(encoding="utf-8"))
    return parser


@pytest.fixture(scope="module")
def study_report(tiny_store_template, tmp_path_factory):
    """A seeded tiny-store copy and its report, written once for this module."""
    root = tmp_path_factory.mktemp("report-html")
    shutil.copytree(tiny_store_template, root / "store")
    store = Store.open(root / "store", readonly=False)
    seed_study_results(store)
    summary = write_report(store, root / "report")
    return store, summary


def test_every_figure_kind_is_drawn_as_png_and_svg(study_report):
    _, summary = study_report
    assert summary.skipped == {}
    assert list(summary.figures) == list(FIGURE_KINDS)
    for png, svg in summary.figures.values():
        with Image.open(png) as image:
            assert image.format == "PNG" and image.width > 300
        assert ElementTree.parse(svg).getroot().tag.endswith("svg")


def test_the_folder_is_self_contained_and_every_link_resolves(study_report):
    _, summary = study_report
    out = summary.index.parent
    page = _parse(summary.index)
    assert "script" not in page.tags and "link" not in page.tags and "iframe" not in page.tags
    images = [value for tag, name, value in page.links if tag == "img"]
    assert len(images) == len(FIGURE_KINDS)
    for tag, name, value in page.links:
        parts = urlsplit(value)
        if value.startswith("#"):
            assert value[1:] in page.ids, f"<{tag} {name}={value!r}> points to no id on the page"
            continue
        assert not parts.scheme and not parts.netloc and not value.startswith("/"), f"{value!r} leaves the folder"
        target = out / unquote(parts.path)
        assert target.is_file(), f"<{tag} {name}={value!r}> does not resolve"
        assert target.resolve().is_relative_to(out.resolve())


def test_every_number_is_traceable_to_its_parameters_and_versions(study_report):
    store, summary = study_report
    text = summary.index.read_text(encoding="utf-8")
    page = _parse(summary.index)
    data = ReportData.load(store)
    assert store.meta()["store_id"] in text
    assert data.fingerprint() in text
    hashes = {r.params_hash for r in data.results}
    assert {f"params-{h[:12]}" for h in hashes} <= page.ids
    versions = store.query("SELECT versions FROM arrays LIMIT 1")[0]["versions"]
    for library, version in json.loads(versions).items():
        assert f"{library} {version}" in text
    assert f"<td>matplotlib</td><td>{metadata.version('matplotlib')}</td>" in text
    # one table row per (model, dataset, run), each cell with the stored value at full precision in its title
    row = data.latest("zeroshot", "acc1")[("openclip:RN50.openai", "shapes-v2", "acc1")]
    assert f'title="{row.value!r}">{row.value:.4g}</td>' in text
    with (summary.index.parent / "results.csv").open() as handle:
        assert sum(1 for _ in csv.DictReader(handle)) == len(data.results) == summary.n_results
    params = json.loads((summary.index.parent / "params.json").read_text())
    assert set(params) == hashes
    assert params[row.params_hash]["params"] == row.params


def test_figures_without_data_are_skipped_with_a_note(tiny_store, tmp_path):
    store = tiny_store
    store.put_results("zeroshot", [("acc1", 0.3)], params={"prompt_set": "default"},
                      model="openclip:embedstore-tiny@random:0", dataset="shapes")  # fmt: skip
    summary = write_report(store, tmp_path / "report")
    assert summary.figures == {}
    assert set(summary.skipped) == set(FIGURE_KINDS)
    assert "no shifted dataset has acc1" in summary.skipped["accuracy-on-the-line"]
    text = summary.index.read_text(encoding="utf-8")
    assert text.count('class="skipped"') == len(FIGURE_KINDS)
    assert not list((tmp_path / "report" / "figures").iterdir())
    page = _parse(summary.index)
    assert [v for t, _, v in page.links if t == "img"] == []


def test_report_command_writes_the_report_and_lists_skipped_figures(tiny_store, tmp_path):
    runner = CliRunner()
    result = runner.invoke(report_command, ["--store", str(tiny_store.path), "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert (
        result.stdout.strip()
        == f"wrote {tmp_path / 'r' / 'index.html'}: 0 figure(s), {len(FIGURE_KINDS)} skipped, 0 result rows"
    )
    assert "skipped shape-bias: shape bias: no shape_bias results" in result.stderr
    (tmp_path / "file").write_text("x")
    result = runner.invoke(report_command, ["--store", str(tiny_store.path), "--out", str(tmp_path / "file")])
    assert result.exit_code != 0 and "file" in result.output
    result = runner.invoke(
        report_command, ["--store", str(tiny_store.path), "--out", str(tmp_path / "r2"), "--model", "nope:*"]
    )
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1].startswith("Error: no model in store")
    result = runner.invoke(
        report_command, ["--store", str(tiny_store.path), "--out", str(tmp_path / "r3"), "--ood-score", "mcn"]
    )
    assert result.exit_code == 1 and "OOD score 'mcn': no ood result of store" in result.output, result.output
    assert not (tmp_path / "r2").exists() and not (tmp_path / "r3").exists()  # a refused report writes nothing


def test_selection_restricts_the_tables_and_stale_figures_are_removed(study_report, tmp_path):
    store, _ = study_report
    write_report(store, tmp_path / "r", kinds=["shape-bias"])
    assert (tmp_path / "r" / "figures" / "shape-bias.png").is_file()
    summary = write_report(store, tmp_path / "r", ReportSelection(models=("timm:*",)), kinds=["accuracy-on-the-line"])
    text = summary.index.read_text(encoding="utf-8")
    assert "openclip:RN50.openai" not in text.split('<h2 id="provenance">')[0]
    assert "timm:resnet50.a1_in1k" in text
    assert list(summary.figures) == ["accuracy-on-the-line"]
    assert sorted(p.name for p in (tmp_path / "r" / "figures").iterdir()) == [
        ".drawing-keys.json",
        "accuracy-on-the-line.png",
        "accuracy-on-the-line.svg",
    ]
    with pytest.raises(AnalysisError, match="unknown figure kind 'scatter'"):
        write_report(store, tmp_path / "r", kinds=["scatter"])


def test_a_figure_with_unchanged_data_is_not_drawn_again(study_report, tmp_path, monkeypatch):
    store, _ = study_report
    write_report(store, tmp_path / "r", kinds=["shape-bias", "calibration"])
    drawn: list[str] = []
    real_save = report_html.save_figure
    monkeypatch.setattr(report_html, "save_figure", lambda figure, path: drawn.append(path.name) or real_save(figure, path))
    summary = write_report(store, tmp_path / "r", kinds=["shape-bias", "calibration"])
    assert drawn == [] and set(summary.figures) == {"shape-bias", "calibration"}
    (tmp_path / "r" / "figures" / "calibration.svg").unlink()  # a missing file is drawn again
    write_report(store, tmp_path / "r", kinds=["shape-bias", "calibration"])
    assert drawn == ["calibration.png", "calibration.svg"]
    drawn.clear()
    model = store.query("SELECT model FROM results WHERE analysis = 'shape_bias' LIMIT 1")[0]["model"]
    rows = store.query("SELECT dataset, params FROM results WHERE analysis = 'shape_bias' AND model = ?", [model])
    store.put_results("shape_bias", [("shape_bias", 0.123)], params=json.loads(rows[0]["params"]), model=model,
                      dataset=rows[0]["dataset"])  # fmt: skip
    write_report(store, tmp_path / "r", kinds=["shape-bias", "calibration"])
    assert drawn == ["shape-bias.png", "shape-bias.svg"]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs Debian's chromium package)")
def test_report_renders_in_headless_chromium_without_console_errors(study_report, tmp_path):
    _, summary = study_report
    screenshot = tmp_path / "page.png"
    command = [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={screenshot}",
               summary.index.resolve().as_uri()]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    assert console == [], "\n".join(console)
    with Image.open(screenshot) as image:
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape[0] >= 2000 and pixels.shape[1] >= 1200
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50, "the screenshot is blank"
