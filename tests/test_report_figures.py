"""Figures from plain data (inspecting the matplotlib Figure objects), the catalog -> figure-data layer
on a tiny store with result rows written here, and the `plot` command."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from matplotlib.collections import PathCollection
from matplotlib.patches import Rectangle
from scipy import special, stats
from scipy.special import softmax

from embedstore.analysis.calibration import reliability_diagram
from embedstore.analysis.robustness import fit_linear_trend
from embedstore.errors import AnalysisError
from embedstore.report import data as report_data
from embedstore.report import figures
from embedstore.report.data import MissingData, ReportData, ReportSelection
from embedstore.report.figures import (
    NO_GROUP,
    NO_TRAIN_DATA,
    BeforeAfterPanel,
    BeforeAfterPoint,
    ModelPoint,
    ModelValue,
    PromptSetAccuracy,
    ReliabilityPanel,
    ScatterPanel,
    TemplateAccuracy,
    ValuePanel,
)
from embedstore.report.kinds import FIGURE_KINDS, render
from embedstore.store import Store
from embedstore_cli.report_commands import plot_command

# ---------------------------------------------------------------------------------------------------
# Study-like result rows, written the way the runners name them (shared with test_report_html.py)

TINY_MODELS = {
    "openclip:embedstore-tiny@random:0": "clip",
    "openclip:embedstore-tiny@random:1": "clip",
    "timm:test_vit@random:0": "classifier",
}
EXTRA_MODELS = (  # (model id, kind, group_label, train_data): registered without arrays
    ("openclip:ViT-B-32.laion2b", "clip", "zero-shot CLIP", "LAION-2B"),
    ("openclip:ViT-B-16.laion2b", "clip", "zero-shot CLIP", "LAION-2B"),
    ("openclip:ViT-L-14.laion2b", "clip", "zero-shot CLIP", "LAION-2B"),
    ("openclip:ViT-B-32.openai", "clip", "zero-shot CLIP", "WIT"),
    ("openclip:RN50.openai", "clip", "zero-shot CLIP", "WIT"),
    ("timm:vit_base_patch16_clip_224.laion2b_ft_in1k", "classifier", "fine-tuned CLIP", "LAION-2B"),
    ("timm:vit_base_patch32_clip_224.laion2b_ft_in1k", "classifier", "fine-tuned CLIP", "LAION-2B"),
    ("timm:vit_large_patch14_clip_224.openai_ft_in1k", "classifier", "fine-tuned CLIP", "WIT"),
    ("timm:resnet50.a1_in1k", "classifier", "ImageNet classifier", "ImageNet-1k"),
    ("timm:resnet101.a1_in1k", "classifier", "ImageNet classifier", "ImageNet-1k"),
    ("timm:convnext_base.fb_in1k", "classifier", "ImageNet classifier", "ImageNet-1k"),
)
SHIFTS = {"shapes-v2": 0.3, "shapes-sketch": 1.0}  # probit drop of the shifted accuracy
GROUP_GAIN = {"zero-shot CLIP": 0.6, "fine-tuned CLIP": 0.2, "ImageNet classifier": -0.2}
N_BINS = 15


def zeroshot_params(kind: str) -> dict:
    return {"logits": "zero-shot" if kind == "clip" else "classifier head",
            "prompt_set": "default" if kind == "clip" else None, "class_subset": False}  # fmt: skip


def reliability_rows(diagram, suffix: str = "") -> list[tuple[str, float]]:
    """The calibration runner's per-bin rows of one diagram."""
    rows = []
    for b, count in enumerate(diagram.counts):
        rows.append((f"reliability_count{suffix}@bin:{b}", float(count)))
        if count:
            rows.append((f"reliability_conf{suffix}@bin:{b}", float(diagram.mean_confidence[b])))
            rows.append((f"reliability_acc{suffix}@bin:{b}", float(diagram.accuracy[b])))
    return rows


def seed_study_results(store: Store, seed: int = 0) -> dict[str, float]:
    """Register 11 labelled models and write zeroshot, calibration, ood, shape_bias, factors, prompts and
    retrieval rows for them and the 3 tiny models. Returns each model's ID (shapes) accuracy."""
    rng = np.random.default_rng(seed)
    kinds = dict(TINY_MODELS)
    groups = {}
    id_accuracy = {}
    with store.session():
        for model, kind, group, train_data in EXTRA_MODELS:
            store.register_model({"model_id": model, "kind": kind, "fingerprint": "f" * 64, "group_label": group,
                                  "train_data": train_data})  # fmt: skip
            kinds[model], groups[model] = kind, group
        templates = store.templates("shapes")
        for model, kind in kinds.items():
            zs = zeroshot_params(kind)
            acc = float(rng.uniform(0.55, 0.85)) if model in groups else float(rng.uniform(0.1, 0.2))
            id_accuracy[model] = acc
            store.put_results("zeroshot", [("acc1", acc), ("acc5", float("nan")), ("n", 64.0)], params=zs, model=model,
                              dataset="shapes")  # fmt: skip
            for shift, drop in SHIFTS.items():
                z = special.ndtri(acc) - drop * (1 - GROUP_GAIN.get(groups.get(model), 0.0)) + rng.normal(0, 0.05)
                store.put_results("zeroshot", [("acc1", float(special.ndtr(z)))], params=zs, model=model, dataset=shift)
            logits = rng.normal(size=(60, 8)) * 3.0
            labels = rng.integers(0, 8, size=60)
            temperature = float(rng.uniform(1.2, 2.5))
            before = reliability_diagram(softmax(logits, axis=1), labels, N_BINS)
            after = reliability_diagram(softmax(logits / temperature, axis=1), labels, N_BINS)
            ece = float(rng.uniform(0.05, 0.2))
            calibration = {**zs, "fit_dataset": "shapes", "fit_split": 0.5, "seed": 0, "n_bins": N_BINS}
            store.put_results(
                "calibration",
                [("acc1", acc), ("temperature", temperature), ("ece", ece), ("nll", 1.2), ("ece_scaled", ece / 3),
                 ("nll_scaled", 0.9), *reliability_rows(before), *reliability_rows(after, "_scaled")],
                params=calibration, model=model, dataset="shapes",
            )  # fmt: skip
            for score in ("msp", "mcm") if kind == "clip" else ("msp",):
                auroc = float(np.clip(0.5 + 0.4 * acc + rng.normal(0, 0.02), 0, 1))
                fpr = float(np.clip(1.2 - acc + rng.normal(0, 0.03), 0, 1))
                ood = {**zs, "score": score, "positive": "id", "ood_datasets": ["shapes-ood"]}
                store.put_results("ood", [("auroc", auroc), ("fpr95", fpr), ("auroc@ood:shapes-ood", auroc),
                                          ("fpr95@ood:shapes-ood", fpr), ("n_id", 64.0)],
                                  params=ood, model=model, dataset="shapes")  # fmt: skip
            store.put_results("shape_bias", [("shape_bias", float(rng.uniform(0.2, 0.8)))],
                              params={"decision": "argmax"}, model=model, dataset="shapes-cue-conflict")  # fmt: skip
            factor_rows = [("acc1", acc - 0.05), ("worst_factor", "shape")]
            factor_rows += [(f"acc1@factor:{f}", float(np.clip(acc - d + rng.normal(0, 0.03), 0, 1)))
                            for f, d in (("shape", 0.1), ("background", 0.0))]  # fmt: skip
            store.put_results("factors", factor_rows, params={"mode": "top"}, model=model, dataset="shapes-x")
            if kind == "clip":
                per_template = [(f"acc1@template:{i}", float(np.clip(acc + rng.normal(0, 0.04), 0, 1)))
                                for i in range(len(templates))]  # fmt: skip
                sets = [("acc1@set:default", acc), ("acc1@set:simple", float(np.clip(acc + rng.normal(0, 0.02), 0, 1)))]
                store.put_results("prompts", per_template + sets, params={"experiment": "ablation", "templates": templates},
                                  model=model, dataset="shapes")  # fmt: skip
                recall = [(f"{d}_recall@{k}", float(np.clip(acc * 0.8 + 0.02 * k, 0, 1)))
                          for d in ("image_retrieval", "text_retrieval") for k in (1, 5, 10)]  # fmt: skip
                store.put_results("retrieval", recall, params={"ks": [1, 5, 10], "search": "exact"}, model=model,
                                  dataset="shapes-captions")  # fmt: skip
    return id_accuracy


@pytest.fixture(scope="module")
def study_store(tiny_store_template, tmp_path_factory) -> tuple[Store, dict[str, float]]:
    """A tiny-store copy with `seed_study_results` written once for this module (read-only use)."""
    path = tmp_path_factory.mktemp("report-figures") / "store"
    shutil.copytree(tiny_store_template, path)
    store = Store.open(path, readonly=False)
    return store, seed_study_results(store)


# ---------------------------------------------------------------------------------------------------
# Plain-data figures


def _points(n_per_group: int = 4, seed: int = 0) -> tuple[ModelPoint, ...]:
    rng = np.random.default_rng(seed)
    points = []
    for g, (group, source) in enumerate((("zero-shot CLIP", "LAION-2B"), ("fine-tuned CLIP", "WIT"),
                                          ("ImageNet classifier", "ImageNet-1k"))):  # fmt: skip
        for i in range(n_per_group):
            x = float(rng.uniform(0.5, 0.85))
            y = float(special.ndtr(0.9 * special.ndtri(x) - 0.5 + 0.3 * g + rng.normal(0, 0.05)))
            points.append(ModelPoint(f"{group}-{i}", group, source, x, y))
    points += [
        ModelPoint("unlabelled-0", NO_GROUP, NO_TRAIN_DATA, 0.2, 0.1),
        ModelPoint("unlabelled-1", NO_GROUP, NO_TRAIN_DATA, 0.3, 0.15),
    ]
    return tuple(points)


def _scatter_offsets(ax) -> np.ndarray:
    return np.concatenate([c.get_offsets() for c in ax.collections if isinstance(c, PathCollection)])


def test_accuracy_on_the_line_draws_every_model_the_ideal_and_one_fit_per_labelled_group():
    points = _points()
    panel = ScatterPanel("shift", "ID accuracy (%, probit)", "shifted accuracy (%, probit)", points)
    figure = figures.accuracy_on_the_line([panel, panel], regressor="ols")
    axes = figure.axes
    assert len(axes) == 2
    ax = axes[0]
    assert ax.get_xscale() == "function" and ax.get_yscale() == "function"
    offsets = _scatter_offsets(ax)
    assert len(offsets) == len(points)
    assert sorted(map(tuple, offsets.tolist())) == sorted((p.x, p.y) for p in points)
    x_low, x_high = ax.get_xlim()
    y_low, y_high = ax.get_ylim()
    assert x_low < min(p.x for p in points) and x_high > max(p.x for p in points)
    assert y_low < min(p.y for p in points) and y_high > max(p.y for p in points)
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert "y = x" in lines
    np.testing.assert_allclose(lines["y = x"].get_xdata(), lines["y = x"].get_ydata())
    fits = [label for label in lines if " fit: " in label]
    assert sorted(label.split(" fit")[0] for label in fits) == [
        "ImageNet classifier",
        "fine-tuned CLIP",
        "zero-shot CLIP",
    ]
    members = [p for p in points if p.group == "zero-shot CLIP"]
    trend = fit_linear_trend([p.x for p in members], [p.y for p in members], "probit", "ols")
    line = next(lines[label] for label in fits if label.startswith("zero-shot CLIP"))
    np.testing.assert_allclose(line.get_ydata(), trend.predict(line.get_xdata()), rtol=1e-9)
    assert f"slope {trend.a:.2f}" in line.get_label()
    # Probit axis: equal probit steps are equal distances on screen; ticks are labelled in %.
    to_screen = ax.transData.transform
    a, b, c = (to_screen([[special.ndtr(z), 0.5]])[0][0] for z in (-0.5, 0.0, 0.5))
    assert b - a == pytest.approx(c - b, rel=1e-6)
    figure.canvas.draw()
    assert all(t.get_text().endswith("%") for t in ax.get_xticklabels() if t.get_text())
    legend_titles = [legend.get_title().get_text() for legend in figure.legends]
    assert legend_titles == ["model group (colour)", "training data (marker)"]


def test_accuracy_ticks_are_round_values_inside_the_range():
    ticks = figures.accuracy_ticks(0.1, 0.9)
    assert 0.5 in ticks and all(0.1 <= t <= 0.9 for t in ticks) and ticks == sorted(ticks)
    narrow = figures.accuracy_ticks(0.42, 0.47)
    assert len(narrow) >= 3 and all(0.42 <= t <= 0.47 for t in narrow)


def test_trend_statistics_match_scipy_and_are_undefined_below_three_points():
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, 12)
    y = 0.5 * x + rng.normal(0, 0.1, 12)
    summary = figures.trend_statistics(x, y)
    assert summary.spearman == pytest.approx(stats.spearmanr(x, y).statistic)
    assert summary.r2 == pytest.approx(stats.pearsonr(x, y).statistic ** 2)
    assert summary.slope == pytest.approx(stats.linregress(x, y).slope)
    assert math.isnan(figures.trend_statistics([0.1, 0.2], [0.3, 0.4]).spearman)
    assert math.isnan(figures.trend_statistics([0.1, 0.2, 0.3], [0.5, 0.5, 0.5]).r2)


def test_metric_vs_accuracy_labels_each_training_source_with_its_statistics():
    points = _points(n_per_group=5)
    panel = ScatterPanel("AUROC", "ID accuracy (%)", "AUROC (%)", points)
    figure = figures.metric_vs_accuracy([panel])
    ax = figure.axes[0]
    assert len(_scatter_offsets(ax)) == len(points)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    laion = [p for p in points if p.train_data == "LAION-2B"]
    expected = figures.trend_statistics([p.x for p in laion], [p.y for p in laion])
    assert f"LAION-2B: \u03c1={expected.spearman:.2f}, R\u00b2={expected.r2:.2f}, n=5" in labels
    assert f"{NO_TRAIN_DATA}: n=2 (not fitted)" in labels
    assert len(ax.get_lines()) == 3  # one OLS line per labelled source, none for unknown data


def test_calibration_before_after_draws_hollow_and_filled_markers_per_model():
    points = tuple(BeforeAfterPoint(p.model, p.group, p.train_data, p.x, 0.1 + p.x / 10, 0.02) for p in _points())
    figure = figures.calibration_before_after([BeforeAfterPanel("ECE", "acc (%)", "ECE (%)", True, points)])
    ax = figure.axes[0]
    scatters = [c for c in ax.collections if isinstance(c, PathCollection)]
    hollow = [c for c in scatters if np.allclose(c.get_facecolors()[:, :3], 1.0)]
    assert sum(len(c.get_offsets()) for c in hollow) == len(points)
    assert sum(len(c.get_offsets()) for c in scatters) == 2 * len(points)
    low, high = ax.get_ylim()
    assert low < 0.02 and high > max(p.before for p in points)


def test_reliability_diagrams_draw_one_bar_per_filled_bin():
    rng = np.random.default_rng(2)
    logits, labels = rng.normal(size=(200, 5)) * 2, rng.integers(0, 5, 200)
    before = reliability_diagram(softmax(logits, axis=1), labels, 10)
    after = reliability_diagram(softmax(logits / 2, axis=1), labels, 10)
    figure = figures.reliability_diagrams([ReliabilityPanel("m", before, after, 2.0), ReliabilityPanel("n", before)])
    first, second = figure.axes
    bars = [p for p in first.patches if isinstance(p, Rectangle)]
    assert len(bars) == int((before.counts > 0).sum() + (after.counts > 0).sum())
    assert first.get_xlim() == (0.0, 1.0) and first.get_ylim() == (0.0, 1.0)
    heights = sorted(p.get_height() for p in second.patches)
    assert heights == pytest.approx(sorted(before.accuracy[before.counts > 0]))
    assert "T = 2 (fitted)" in first.get_legend().get_texts()[1].get_text()


def test_shape_bias_places_each_model_on_its_group_row():
    values = tuple(ModelValue(p.model, p.group, p.train_data, 0.1 + 0.05 * i) for i, p in enumerate(_points()))
    figure = figures.shape_bias_by_group([ValuePanel("cue-conflict", "shape bias", values)])
    ax = figure.axes[0]
    offsets = _scatter_offsets(ax)
    assert len(offsets) == len(values)
    assert ax.get_xlim() == (0.0, 1.0)
    rows = [t.get_text() for t in ax.get_yticklabels()]
    assert rows == sorted({v.group for v in values})
    for value in values:
        (row,) = [y for x, y in offsets if x == pytest.approx(value.value)]
        assert abs(row - rows.index(value.group)) <= 0.25


def test_template_accuracy_sorts_templates_by_mean_accuracy():
    entries = [TemplateAccuracy(0, "a photo of a {c}.", (0.5, 0.6)), TemplateAccuracy(1, "itap of a {c}.", (0.7, 0.8)),
               TemplateAccuracy(2, "a sketch of a {c}.", (0.2, 0.3))]  # fmt: skip
    figure = figures.template_accuracy(entries)
    ax = figure.axes[0]
    assert [t.get_text().split(":")[0] for t in ax.get_yticklabels()] == ["1", "0", "2"]
    assert sorted(p.get_width() for p in ax.patches) == pytest.approx([0.25, 0.55, 0.75])
    assert len(_scatter_offsets(ax)) == 6


def test_prompt_set_comparison_has_one_marker_per_model_and_set():
    rows = [PromptSetAccuracy("a", "zero-shot CLIP", {"default": 0.5, "simple": 0.6}),
            PromptSetAccuracy("b", "zero-shot CLIP", {"default": 0.4})]  # fmt: skip
    figure = figures.prompt_set_comparison(rows)
    ax = figure.axes[0]
    assert len(_scatter_offsets(ax)) == 3
    assert [t.get_text() for t in figure.legends[0].get_texts()] == ["default", "simple"]


def test_style_keeps_known_group_colours_and_gives_each_source_a_marker():
    style = figures.ModelStyle.for_models(["zero-shot CLIP", NO_GROUP, "other"], ["WIT", "LAION-2B", NO_TRAIN_DATA])
    assert style.colours["zero-shot CLIP"] == figures.KNOWN_GROUP_COLOURS["zero-shot CLIP"]
    assert style.colours[NO_GROUP] == figures.UNKNOWN_STYLE_COLOUR
    assert len(set(style.markers.values())) == 3


def test_a_given_style_keeps_every_figures_markers_alike_and_legends_what_is_drawn():
    wit = tuple(p for p in _points(n_per_group=5) if p.train_data != "LAION-2B")
    panel = ScatterPanel("AUROC", "ID accuracy (%)", "AUROC (%)", wit)
    report_style = figures.ModelStyle.for_models(
        [p.group for p in _points()], ["LAION-2B", *(p.train_data for p in wit)]
    )

    def legend_markers(figure):
        sources = figure.legends[1]
        return {t.get_text(): h.get_marker() for t, h in zip(sources.get_texts(), sources.legend_handles, strict=True)}

    alone = legend_markers(figures.metric_vs_accuracy([panel]))
    in_report = legend_markers(figures.metric_vs_accuracy([panel], style=report_style))
    assert alone.keys() == in_report.keys() == {p.train_data for p in wit}  # LAION-2B is not drawn: not listed
    assert in_report == {source: report_style.markers[source] for source in in_report}
    assert in_report != alone  # on its own the figure would have given its sources other markers


@pytest.mark.parametrize(
    "draw",
    [
        lambda: figures.accuracy_on_the_line([]),
        lambda: figures.accuracy_on_the_line([ScatterPanel("empty", "x", "y", ())]),
        lambda: figures.template_accuracy([]),
        lambda: figures.prompt_set_comparison([PromptSetAccuracy("a", "g", {})]),
    ],
)
def test_empty_data_is_an_analysis_error(draw):
    with pytest.raises(AnalysisError):
        draw()


# ---------------------------------------------------------------------------------------------------
# Catalog -> figure data


def test_accuracy_on_the_line_data_uses_shifts_only_and_infers_the_id_dataset(study_store):
    store, id_accuracy = study_store
    data = ReportData.load(store)
    assert data.id_dataset == "shapes" and data.id_dataset_reason == "the ID dataset of the ood results"
    sourced = report_data.accuracy_on_the_line_data(data)
    titles = [p.title for p in sourced.data]
    assert titles == ["mean over 2 shifts", "shapes-sketch", "shapes-v2"]  # no OOD, cue-conflict, ImageNet-X set
    panel = sourced.data[2]
    assert len(panel.points) == len(id_accuracy)
    by_model = {p.model: p for p in panel.points}
    assert by_model["openclip:RN50.openai"].x == pytest.approx(id_accuracy["openclip:RN50.openai"])
    assert by_model["openclip:RN50.openai"].group == "zero-shot CLIP"
    assert by_model["timm:test_vit@random:0"].group == NO_GROUP
    assert {r.analysis for r in sourced.sources} == {"zeroshot"}
    assert any("shapes-ood (OOD set)" in note for note in sourced.notes)


def test_a_labelled_shift_used_once_as_ood_data_stays_a_shift(tiny_store):
    zs = zeroshot_params("clip")
    model = "openclip:embedstore-tiny@random:0"
    for dataset, acc in (("shapes", 0.6), ("shapes-sketch", 0.4)):
        tiny_store.put_results("zeroshot", [("acc1", acc)], params=zs, model=model, dataset=dataset)
    ood = {**zs, "score": "msp", "positive": "id", "ood_datasets": ["shapes-sketch", "shapes-ood"]}
    tiny_store.put_results("ood", [("auroc", 0.7), ("auroc@ood:shapes-sketch", 0.6), ("auroc@ood:shapes-ood", 0.8)],
                           params=ood, model=model, dataset="shapes")  # fmt: skip
    roles = report_data.special_datasets(ReportData.load(tiny_store))
    assert roles.get("shapes-ood") == "OOD set" and "shapes-sketch" not in roles


def test_latest_row_wins_and_other_prompt_sets_are_ignored(tiny_store):
    store = tiny_store
    model = "openclip:embedstore-tiny@random:0"
    for params, value in (
        (zeroshot_params("clip"), 0.2),
        ({**zeroshot_params("clip"), "prompt_set": "custom"}, 0.99),  # another prompt set, written later
    ):
        store.put_results("zeroshot", [("acc1", value)], params=params, model=model, dataset="shapes-v2")
    assert report_data.accuracies(ReportData.load(store), "shapes-v2")[model].value == 0.2
    store.put_results("zeroshot", [("acc1", 0.42)], params={**zeroshot_params("clip"), "rows": "rerun"},
                      model=model, dataset="shapes-v2")  # fmt: skip
    assert report_data.accuracies(ReportData.load(store), "shapes-v2")[model].value == 0.42
    custom = ReportData.load(store, ReportSelection(prompt_set="custom"))
    assert report_data.accuracies(custom, "shapes-v2")[model].value == 0.99
    store.put_results("zeroshot", [("acc1", float("nan"))], params={**zeroshot_params("clip"), "rows": "nan"},
                      model=model, dataset="shapes-v2")  # fmt: skip
    assert report_data.accuracies(ReportData.load(store), "shapes-v2")[model].value == 0.42  # NaN is no value


def test_accuracy_falls_back_to_the_robustness_rows(tiny_store):
    store = tiny_store
    params = {"id_dataset": "shapes", "transform": "probit"}
    store.put_results("robustness", [("acc1_id", 0.7), ("acc1_shift", 0.5), ("effective_robustness", 1.0)],
                      params=params, model="timm:test_vit@random:0", dataset="shapes-v2")  # fmt: skip
    data = ReportData.load(store)
    assert data.id_dataset == "shapes" and "robustness" in data.id_dataset_reason
    assert report_data.accuracies(data, "shapes")["timm:test_vit@random:0"].value == 0.7
    assert report_data.accuracies(data, "shapes-v2")["timm:test_vit@random:0"].value == 0.5


def test_the_most_recent_robustness_accuracy_wins_whichever_shift_recorded_it(tiny_store):
    model, first = "timm:test_vit@random:0", {"id_dataset": "shapes", "regressor": "huber"}
    for shift in ("shapes-v2", "shapes-sketch"):
        tiny_store.put_results("robustness", [("acc1_id", 0.5)], params=first, model=model, dataset=shift)
    tiny_store.put_results("robustness", [("acc1_id", 0.6)], params={**first, "regressor": "ols"}, model=model,
                           dataset="shapes-v2")  # fmt: skip
    assert report_data.accuracies(ReportData.load(tiny_store), "shapes")[model].value == 0.6


def test_the_id_dataset_is_the_one_most_models_have_and_split_calibration_names_none(tiny_store):
    clip, other, timm = TINY_MODELS
    zs = zeroshot_params("clip")
    for model in (clip, other):
        for dataset in ("shapes", "shapes-v2"):
            tiny_store.put_results("zeroshot", [("acc1", 0.5)], params=zs, model=model, dataset=dataset)
    for prompts in ("a", "b", "c"):  # one model's runs under three more prompt sets: still one model
        tiny_store.put_results("zeroshot", [("acc1", 0.5)], params={**zs, "prompt_set": prompts}, model=clip,
                               dataset="shapes-v2")  # fmt: skip
    split = {**zs, "fit_dataset": "shapes-v2", "fit_split": 0.5, "seed": 0}  # fitted on the evaluated set
    for seed in range(3):  # reruns and bins multiply rows, not models
        tiny_store.put_results("calibration", [(f"reliability_count@bin:{b}", 1.0) for b in range(15)],
                               params={**split, "seed": seed}, model=clip, dataset="shapes-v2")  # fmt: skip
    data = ReportData.load(tiny_store)
    assert data.id_dataset == "shapes" and data.id_dataset_reason.startswith("the dataset with zero-shot accuracy")
    tiny_store.put_results("calibration", [("ece", 0.1)], params={**zs, "fit_dataset": "shapes-sketch"}, model=clip,
                           dataset="shapes-v2")  # fmt: skip
    assert ReportData.load(tiny_store).id_dataset == "shapes-sketch"  # a --calibrate-on run names its ID set
    ood = {**zs, "score": "msp", "positive": "id", "ood_datasets": ["shapes-ood"]}
    for rerun in range(4):
        tiny_store.put_results("ood", [("auroc", 0.6)], params={**ood, "k": rerun}, model=clip, dataset="shapes-v2")
    for model in (other, timm):
        tiny_store.put_results("ood", [("auroc", 0.7)], params=ood, model=model, dataset="shapes")
    assert ReportData.load(tiny_store).id_dataset == "shapes"  # two models against one model's four runs


def test_the_ood_figure_averages_over_one_list_of_ood_sets_and_follows_the_id_dataset(tiny_store):
    clip, other, timm = TINY_MODELS
    zs = zeroshot_params("clip")
    for model in (clip, other, timm):
        for dataset in ("shapes", "shapes-v2"):
            tiny_store.put_results("zeroshot", [("acc1", 0.5)], params=zs, model=model, dataset=dataset)
    ood = {**zs, "score": "msp", "positive": "id", "ood_datasets": ["shapes-ood"]}
    for model in (other, timm):
        tiny_store.put_results("ood", [("auroc", 0.7), ("fpr95", 0.4)], params=ood, model=model, dataset="shapes")
    wider = {**ood, "ood_datasets": ["shapes-ood", "shapes-sketch"]}
    tiny_store.put_results("ood", [("auroc", 0.3), ("fpr95", 0.9)], params=wider, model=clip, dataset="shapes")
    sourced = report_data.ood_data(ReportData.load(tiny_store))
    assert [sorted(p.model for p in panel.points) for panel in sourced.data] == [sorted([other, timm])] * 2
    assert sourced.data[0].title == "AUROC of msp, mean over shapes-ood"
    assert any(note.startswith("1 model(s) whose runs all averaged over other OOD sets") and clip in note
               for note in sourced.notes)  # fmt: skip
    tiny_store.put_results("ood", [("auroc", 0.8), ("fpr95", 0.2)], params=ood, model=clip, dataset="shapes-v2")
    chosen = report_data.ood_data(ReportData.load(tiny_store, ReportSelection(id_dataset="shapes-v2")))
    assert chosen.subject == "ID shapes-v2, score msp" and [p.model for p in chosen.data[0].points] == [clip]
    with pytest.raises(MissingData, match="no msp ood results with ID dataset shapes-sketch"):
        report_data.ood_data(ReportData.load(tiny_store, ReportSelection(id_dataset="shapes-sketch")))


def test_ood_data_picks_the_most_evaluated_score_or_the_chosen_one(study_store):
    store, id_accuracy = study_store
    sourced = report_data.ood_data(ReportData.load(store))
    assert "score msp" in sourced.subject
    auroc, fpr = sourced.data
    assert len(auroc.points) == len(id_accuracy)  # every model has msp
    assert fpr.y_label.startswith("FPR@95 (%): OOD accepted at 95% ID TPR")
    chosen = report_data.ood_data(ReportData.load(store, ReportSelection(ood_score="mcm")))
    clip_models = [m for m, kind in TINY_MODELS.items() if kind == "clip"] + [
        m for m, k, _, _ in EXTRA_MODELS if k == "clip"
    ]
    assert sorted(p.model for p in chosen.data[0].points) == sorted(clip_models)
    with pytest.raises(MissingData, match="positive='ood'"):
        report_data.ood_data(ReportData.load(store, ReportSelection(ood_positive="ood")))


def test_reliability_data_rebuilds_the_stored_diagrams(tiny_store):
    store = tiny_store
    rng = np.random.default_rng(3)
    logits, labels = rng.normal(size=(80, 8)) * 2, rng.integers(0, 8, 80)
    before = reliability_diagram(softmax(logits, axis=1), labels, N_BINS)
    after = reliability_diagram(softmax(logits / 1.7, axis=1), labels, N_BINS)
    model = "openclip:embedstore-tiny@random:0"
    older = reliability_diagram(softmax(logits, axis=1), labels, 20)  # an earlier run with other bins: not mixed in
    store.put_results("calibration", [("temperature", 3.0), *reliability_rows(older)],
                      params={**zeroshot_params("clip"), "n_bins": 20}, model=model, dataset="shapes")  # fmt: skip
    store.put_results("calibration", [("temperature", 1.7), *reliability_rows(before), *reliability_rows(after, "_scaled")],
                      params={**zeroshot_params("clip"), "n_bins": N_BINS}, model=model, dataset="shapes")  # fmt: skip
    (panel,) = report_data.reliability_data(ReportData.load(store)).data
    for stored, rebuilt in ((before, panel.before), (after, panel.after)):
        np.testing.assert_array_equal(rebuilt.counts, stored.counts)
        np.testing.assert_allclose(rebuilt.accuracy, stored.accuracy, equal_nan=True)
        np.testing.assert_allclose(rebuilt.mean_confidence, stored.mean_confidence, equal_nan=True)
        np.testing.assert_allclose(rebuilt.bin_edges, stored.bin_edges)
    assert panel.temperature == 1.7


def test_every_kind_builds_from_the_seeded_catalog(study_store):
    store, id_accuracy = study_store
    data = ReportData.load(store)
    for name in FIGURE_KINDS:
        rendered = render(name, data)
        assert rendered.figure.axes, name
        assert rendered.sources, name
    factors = report_data.factor_accuracy_data(data)
    assert [p.title for p in factors.data] == ["factor: background", "factor: shape"]  # ImageNet-X order
    templates = report_data.template_accuracy_data(data)
    assert templates.data[0].template == store.templates("shapes")[0]
    assert len(templates.data[0].accuracies) == sum(
        1 for k in [*TINY_MODELS.values(), *(m[1] for m in EXTRA_MODELS)] if k == "clip"
    )


def test_a_model_with_results_but_no_models_row_is_drawn_with_the_unknown_labels(tiny_store_template, tmp_path):
    import duckdb

    from embedstore.report.kinds import model_style

    shutil.copytree(tiny_store_template, tmp_path / "store")
    with duckdb.connect(str(tmp_path / "store" / "catalog.duckdb")) as catalog:  # every registered model labelled
        catalog.execute("UPDATE models SET group_label = 'zero-shot CLIP', train_data = 'LAION-2B'")
    store = Store.open(tmp_path / "store", readonly=False)
    seed_study_results(store)
    store.put_results("shape_bias", [("shape_bias", 0.5)], params={"decision": "argmax"}, model="gone:model",
                      dataset="shapes-cue-conflict")  # fmt: skip
    data = ReportData.load(store)
    assert "gone:model" not in data.models
    style = model_style(data)
    assert NO_GROUP in style.colours and NO_TRAIN_DATA in style.markers
    assert render("shape-bias", data).figure.axes


def test_missing_results_are_reported_not_drawn(tiny_store):
    data = ReportData.load(tiny_store)
    assert data.id_dataset is None
    for name in FIGURE_KINDS:
        with pytest.raises(MissingData):
            render(name, data)


def test_an_unknown_id_dataset_is_refused(tiny_store):
    with pytest.raises(AnalysisError, match="--id-dataset 'imagenet' is not a dataset"):
        ReportData.load(tiny_store, ReportSelection(id_dataset="imagenet"))


def test_model_selection_restricts_every_figure(study_store):
    store, _ = study_store
    data = ReportData.load(store, ReportSelection(models=("openclip:*",)))
    panel = report_data.accuracy_on_the_line_data(data).data[1]
    assert all(p.model.startswith("openclip:") for p in panel.points)


# ---------------------------------------------------------------------------------------------------
# plot command


def test_plot_command_writes_one_figure(study_store, tmp_path):
    store, _ = study_store
    out = tmp_path / "fig" / "ood.svg"
    result = CliRunner().invoke(
        plot_command, ["ood", "--store", str(store.path), "--out", str(out), "--ood-score", "mcm"]
    )
    assert result.exit_code == 0, result.output
    assert out.read_text().lstrip().startswith("<?xml") and "<svg" in out.read_text()
    again = tmp_path / "fig" / "again.svg"
    CliRunner().invoke(plot_command, ["ood", "--store", str(store.path), "--out", str(again), "--ood-score", "mcm"])
    assert "clip-path" in out.read_text() and again.read_bytes() == out.read_bytes()  # no random ids
    png = tmp_path / "cal.png"
    result = CliRunner().invoke(plot_command, ["calibration", "--store", str(store.path), "--out", str(png)])
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_command_errors_are_one_line(tiny_store, tmp_path):
    runner = CliRunner()
    result = runner.invoke(
        plot_command, ["shape-bias", "--store", str(tiny_store.path), "--out", str(tmp_path / "a.png")]
    )
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "Error: shape bias: no shape_bias results with metric shape_bias; run the shape-bias analysis"
    ]
    result = runner.invoke(plot_command, ["ood", "--store", str(tiny_store.path), "--out", str(tmp_path / "a.jpg")])
    assert result.exit_code == 1 and "must end in one of .png, .svg, .pdf" in result.output
    assert not (tmp_path / "a.png").exists()
    result = runner.invoke(
        plot_command,
        ["templates", "--store", str(tiny_store.path), "--out", str(tmp_path / "t.png"), "--prompt-set", "nosuch"],
    )
    assert result.exit_code == 1 and "prompt set 'nosuch' is defined on no dataset" in result.output, result.output


def test_shape_bias_notes_a_dataset_whose_models_were_decided_by_different_routes(study_store):
    store, _ = study_store
    assert report_data.shape_bias_data(ReportData.load(store)).notes == ()  # one route for every model
    clip = "openclip:embedstore-tiny@random:0"
    store.put_results("shape_bias", [("shape_bias", 0.4)], params={"decisions": "zero-shot over 1000 ImageNet classes"},
                      model=clip, dataset="shapes-cue-conflict")  # fmt: skip
    (note,) = report_data.shape_bias_data(ReportData.load(store)).notes
    assert note.startswith("shapes-cue-conflict mixes decision routes: ")
    assert "; 1 model(s) by zero-shot over 1000 ImageNet classes" in note  # the others record no route
