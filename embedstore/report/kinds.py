"""The figure kinds of the report and of ``embedstore plot``: each pairs a data builder
(`embedstore.report.data`) with a drawing function (`embedstore.report.figures`) and says, in one
caption, what is plotted and in which convention. `FIGURE_KINDS` lists them explicitly, in report order.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib
from matplotlib.figure import Figure

import embedstore
from embedstore.errors import AnalysisError
from embedstore.report import data as report_data
from embedstore.report import figures
from embedstore.report.data import ReportData, Sourced, StoredResult

SAVE_FORMATS = ("png", "svg", "pdf")
PNG_DPI = 110


@dataclass(frozen=True)
class FigureKind:
    """``build`` turns the catalog into the figure's data; ``draw`` makes the figure from it, colouring
    and marking models by the report's `model_style`."""

    name: str
    title: str
    caption: str
    build: Callable[[ReportData], Sourced]
    draw: Callable[[Sourced, figures.ModelStyle], Figure]


@dataclass(frozen=True)
class RenderedFigure:
    kind: FigureKind
    figure: Figure
    sources: tuple[StoredResult, ...]
    notes: tuple[str, ...]


def _title(title: str, sourced: Sourced) -> str:
    return f"{title} ({sourced.subject})" if sourced.subject else title


FIGURE_KINDS: dict[str, FigureKind] = {
    kind.name: kind
    for kind in (
        FigureKind(
            "accuracy-on-the-line",
            "Accuracy on the line: shifted vs ID accuracy",
            "Top-1 accuracy of each model under each distribution shift (y) against its accuracy on the ID dataset "
            "(x), both on probit-scaled axes labelled in %. Solid lines: per model group, the Huber fit "
            "T(y) = a T(x) + b with T = probit (groups of 3+ models); dashed: y = x. Points above a group's line are "
            "effectively robust relative to that group (Taori et al. 2020).",
            report_data.accuracy_on_the_line_data,
            lambda s, style: figures.accuracy_on_the_line(s.data, title=_title("Accuracy on the line", s), style=style),
        ),
        FigureKind(
            "factors",
            "Accuracy per ImageNet-X factor",
            "Accuracy on the images annotated with each ImageNet-X factor (y) against accuracy on all annotated "
            "images (x), probit-scaled, with per-group Huber fits and y = x: points below y = x find that factor "
            "harder than average (error ratio > 1).",
            report_data.factor_accuracy_data,
            lambda s, style: figures.accuracy_on_the_line(
                s.data, title=_title("Accuracy per ImageNet-X factor", s), max_columns=4, style=style
            ),
        ),
        FigureKind(
            "shape-bias",
            "Shape bias per model group",
            "Shape bias = shape decisions / (shape + texture decisions) on cue-conflict images whose shape and "
            "texture differ (Geirhos et al. 2019; model-vs-human): 0 = texture only, 1 = shape only. "
            "Bars: group medians.",
            report_data.shape_bias_data,
            lambda s, style: figures.shape_bias_by_group(s.data, title="Shape bias per model group", style=style),
        ),
        FigureKind(
            "ood",
            "OOD detection against ID accuracy",
            "AUROC and FPR@95 of one OOD score, averaged over the OOD sets with equal weight, against top-1 "
            "accuracy on the ID dataset; all in %. FPR@95's convention (which class is positive) is in the axis "
            "label. Grey lines: OLS fit per training source, with Spearman's rho and R^2 in the legend.",
            report_data.ood_data,
            lambda s, style: figures.metric_vs_accuracy(
                s.data, title=_title("OOD detection against ID accuracy", s), style=style
            ),
        ),
        FigureKind(
            "calibration",
            "Calibration before and after temperature scaling",
            "ECE (equal-width bins over top-1 confidence, [lo, hi)) and NLL (nats) against top-1 accuracy, per "
            "calibrated dataset: hollow markers at T = 1, filled markers at the temperature fitted on held-out rows "
            "(Guo et al. 2017); scaling never changes accuracy, so each pair is vertical.",
            report_data.calibration_data,
            lambda s, style: figures.calibration_before_after(
                s.data, title="Calibration before and after temperature scaling", style=style
            ),
        ),
        FigureKind(
            "reliability",
            "Reliability diagrams",
            "Accuracy per confidence bin (equal-width bins of top-1 softmax probability, [lo, hi), the last closed) "
            "at T = 1 (solid) and at the fitted temperature (hatched); the diagonal is perfect calibration.",
            report_data.reliability_data,
            lambda s, _style: figures.reliability_diagrams(s.data),
        ),
        FigureKind(
            "templates",
            "Per-template accuracy",
            "Zero-shot top-1 accuracy of each prompt template used alone: bar = mean over CLIP models, whisker = "
            "their range, dots = single models; sorted by the mean.",
            report_data.template_accuracy_data,
            lambda s, _style: figures.template_accuracy(s.data, title=_title("Per-template accuracy", s)),
        ),
        FigureKind(
            "prompt-sets",
            "Prompt-set comparison",
            "Zero-shot top-1 accuracy of each CLIP model under each prompt set's ensemble "
            "(w_c = normalize(mean_t normalize(e_{c,t}))); the grey bar spans a model's range across sets.",
            report_data.prompt_set_data,
            lambda s, _style: figures.prompt_set_comparison(s.data, title=_title("Prompt-set comparison", s)),
        ),
        FigureKind(
            "retrieval",
            "Retrieval recall against zero-shot accuracy",
            "Recall@K (a query is a hit when any of its positives is in the top K; CLIP_benchmark) for image "
            "retrieval (text to image) and text retrieval (image to text) against zero-shot top-1 accuracy on the "
            "ID dataset; grey lines: OLS fit per training source with Spearman's rho and R^2.",
            report_data.retrieval_data,
            lambda s, style: figures.metric_vs_accuracy(
                s.data, title=_title("Retrieval recall against zero-shot accuracy", s), style=style
            ),
        ),
    )
}


def figure_kind(name: str) -> FigureKind:
    if name not in FIGURE_KINDS:
        raise AnalysisError(f"unknown figure kind {name!r}; choose from {', '.join(FIGURE_KINDS)}")
    return FIGURE_KINDS[name]


def model_style(data: ReportData) -> figures.ModelStyle:
    """One colour per model group and one marker per training source over all the store's models and
    any model with results but no ``models`` row (drawn with the unknown labels), so that every figure
    of a report draws a group and a source alike."""
    unregistered = {r.model for r in data.results if r.model is not None and r.model not in data.models}
    labels = [*data.models.values(), *(data.label(model) for model in sorted(unregistered))]
    return figures.ModelStyle.for_models([label.group for label in labels], [label.train_data for label in labels])


def drawing_key(name: str, sourced: Sourced, style: figures.ModelStyle) -> str:
    """sha256 of everything a figure's pixels depend on: the kind, the figure's data and subject, the
    report's model style, the file formats' settings and the embedstore and matplotlib versions. Equal keys draw equal figures
    (the report reuses the files of an earlier report with the same key); the data is hashed through
    its pickle, so equal data may at worst give two keys (a needless redraw), never the reverse."""
    blob = pickle.dumps((name, sourced.data, sourced.subject, style), protocol=5)
    versions = (embedstore.__version__, matplotlib.__version__, PNG_DPI)
    return hashlib.sha256(blob + repr(versions).encode()).hexdigest()


def render(name: str, data: ReportData) -> RenderedFigure:
    """Build and draw one figure kind; raises `MissingData` (or another `AnalysisError`) when it cannot."""
    kind = figure_kind(name)
    sourced = kind.build(data)
    return RenderedFigure(kind, kind.draw(sourced, model_style(data)), sourced.sources, sourced.notes)


def figure_format(path: str | Path) -> str:
    """The file format a figure path names by its suffix (png, svg or pdf)."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in SAVE_FORMATS:
        raise AnalysisError(f"{path}: a figure file name must end in one of {', '.join('.' + f for f in SAVE_FORMATS)}")
    return suffix


def save_figure(figure: Figure, path: str | Path) -> Path:
    """Write ``figure`` to ``path`` in the format its suffix names (png at ``PNG_DPI``, svg or pdf)."""
    path = Path(path)
    fmt = figure_format(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A fixed salt for the SVG ids matplotlib draws at random (clip paths): the same data, the same bytes.
    with matplotlib.rc_context({"svg.hashsalt": "embedstore"}):
        figure.savefig(path, format=fmt, dpi=PNG_DPI, metadata=_file_metadata(fmt))
    return path


def _file_metadata(fmt: str) -> dict[str, str | None]:
    """Leave out creation dates so that the same data gives the same SVG/PDF bytes."""
    if fmt == "svg":
        return {"Date": None}
    if fmt == "pdf":
        return {"CreationDate": None}
    return {}
