"""The study's figures, drawn from plain data (dataclasses of numbers and names) with matplotlib.

Every function returns a ``matplotlib.figure.Figure`` built without pyplot, so nothing needs a
display and no global figure registry grows (saving uses the Agg canvas). Figures never read the
store: ``embedstore.report.data`` builds their inputs from the catalog.

Conventions shared by all figures:

- Accuracies, AUROC, FPR@95, ECE and recall arrive as fractions in [0, 1] (the catalog's unit) and
  are shown as percentages; NLL is in nats.
- Colour says the model's group (zero-shot CLIP, fine-tuned CLIP, ImageNet classifier, ...), the
  marker its training distribution; two legends say so.
- "Accuracy on the line" panels (Taori et al. 2020, Miller et al. 2021) put both accuracies on a
  probit (default) or logit scale, where the linear trends of `embedstore.analysis.robustness` are
  straight lines; one line per model group with at least three models, plus the y = x ideal.
- Correlation summaries (`trend_statistics`) are Spearman's rho and the R^2 of an ordinary
  least-squares line on the values as plotted (linear axes), per training source.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FixedLocator, FuncFormatter
from scipy import special

from embedstore.analysis.calibration import ReliabilityDiagram
from embedstore.analysis.robustness import DEFAULT_CLIP_EPS, MIN_MODELS_FOR_TREND, fit_linear_trend, spearman_rho
from embedstore.errors import AnalysisError

# ---------------------------------------------------------------------------------------------------
# Plain data the figures take


@dataclass(frozen=True)
class ModelPoint:
    """One model on a scatter panel; ``x`` and ``y`` are fractions in [0, 1] unless the panel says otherwise."""

    model: str
    group: str
    train_data: str
    x: float
    y: float


@dataclass(frozen=True)
class ScatterPanel:
    """One axes of a scatter figure: what is on each axis and one point per model."""

    title: str
    x_label: str
    y_label: str
    points: tuple[ModelPoint, ...]


@dataclass(frozen=True)
class ModelValue:
    """One number of one model (e.g. its shape bias)."""

    model: str
    group: str
    train_data: str
    value: float


@dataclass(frozen=True)
class ValuePanel:
    title: str
    x_label: str
    values: tuple[ModelValue, ...]


@dataclass(frozen=True)
class BeforeAfterPoint:
    """A model's metric before and after a change that keeps ``x`` (temperature scaling keeps accuracy)."""

    model: str
    group: str
    train_data: str
    x: float
    before: float
    after: float


@dataclass(frozen=True)
class BeforeAfterPanel:
    title: str
    x_label: str
    y_label: str
    percent: bool  # y values are fractions shown as % (ECE) or raw numbers (NLL in nats)
    points: tuple[BeforeAfterPoint, ...]


@dataclass(frozen=True)
class ReliabilityPanel:
    """A model's reliability diagram at T = 1 and, when a temperature was fitted, at that T."""

    title: str
    before: ReliabilityDiagram
    after: ReliabilityDiagram | None = None
    temperature: float | None = None


@dataclass(frozen=True)
class TemplateAccuracy:
    """Top-1 accuracy of one prompt template used alone, one value per model."""

    index: int
    template: str
    accuracies: tuple[float, ...]


@dataclass(frozen=True)
class PromptSetAccuracy:
    """One model's top-1 accuracy under each prompt set (ensemble of the set's templates)."""

    model: str
    group: str
    accuracies: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class TrendStatistics:
    """Spearman's rho and the OLS line ``y = slope * x + intercept`` with its R^2 (= Pearson r^2).

    Fields are NaN when fewer than `MIN_MODELS_FOR_TREND` points or a constant axis leave them undefined.
    """

    n: int
    spearman: float
    r2: float
    slope: float
    intercept: float


# ---------------------------------------------------------------------------------------------------
# Style: colour by group, marker by training data

NO_GROUP = "no group label"
"""Group shown for models whose ``group_label`` is empty."""
NO_TRAIN_DATA = "unknown training data"
"""Training source shown for models whose ``train_data`` is empty."""
UNKNOWN_STYLE_COLOUR = "#7f7f7f"

KNOWN_GROUP_COLOURS: dict[str, str] = {
    "zero-shot CLIP": "#1f77b4",
    "fine-tuned CLIP": "#ff7f0e",
    "ImageNet classifier": "#2ca02c",
    NO_GROUP: UNKNOWN_STYLE_COLOUR,
}
_OTHER_GROUP_COLOURS = ("#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p", "d", "H")
_SET_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#e377c2")
_LINE_STYLES = ("-", "--", ":", "-.")


@dataclass(frozen=True)
class ModelStyle:
    """Colour per group and marker per training source (legends follow it).

    Known groups keep their colours in every figure; other groups get the remaining colours in
    sorted order, then grey. Training sources get markers in sorted order (cycling past 14). The
    report builds one style over all its models and hands it to every figure, so a group or source
    looks the same in each; a figure's legends list only what it draws (`only`).
    """

    colours: dict[str, str]
    markers: dict[str, str]

    @classmethod
    def for_models(cls, groups: Sequence[str], train_data: Sequence[str]) -> ModelStyle:
        colours: dict[str, str] = {}
        others = iter(_OTHER_GROUP_COLOURS)
        for group in sorted(set(groups)):
            colours[group] = KNOWN_GROUP_COLOURS.get(group) or next(others, UNKNOWN_STYLE_COLOUR)
        markers = {source: _MARKERS[i % len(_MARKERS)] for i, source in enumerate(sorted(set(train_data)))}
        return cls(colours, markers)

    def only(self, groups: Iterable[str], train_data: Iterable[str]) -> ModelStyle:
        """The same colours and markers, restricted to these groups and sources (for the legends)."""
        groups, train_data = set(groups), set(train_data)
        return ModelStyle({g: c for g, c in self.colours.items() if g in groups},
                          {s: m for s, m in self.markers.items() if s in train_data})  # fmt: skip

    def legend_handles(self) -> tuple[list[Line2D], list[Line2D]]:
        """(group handles, training-data handles) for the figure's two legends."""
        groups = [
            Line2D([], [], linestyle="none", marker="o", markersize=7, markerfacecolor=c, markeredgecolor="black",
                   markeredgewidth=0.4, label=g)
            for g, c in self.colours.items()
        ]  # fmt: skip
        sources = [
            Line2D([], [], linestyle="none", marker=m, markersize=7, markerfacecolor="white", markeredgecolor="black",
                   label=s)
            for s, m in self.markers.items()
        ]  # fmt: skip
        return groups, sources


def _style_of(items: Sequence[ModelPoint | ModelValue | BeforeAfterPoint], style: ModelStyle | None) -> ModelStyle:
    """``style`` (or one made for ``items`` alone) restricted to the groups and sources of ``items``."""
    groups, train_data = [i.group for i in items], [i.train_data for i in items]
    return (style or ModelStyle.for_models(groups, train_data)).only(groups, train_data)


def _add_model_legends(figure: Figure, style: ModelStyle) -> None:
    """Two legends, colour = model group and marker = training data: side by side below the panels of
    a wide figure, stacked on the right of a narrow one."""
    groups, sources = style.legend_handles()
    wide = figure.get_figwidth() >= 8.0
    common = {"fontsize": 8, "title_fontsize": 8, "frameon": False}
    figure.legend(handles=groups, title="model group (colour)", loc="outside lower left" if wide else "outside right upper",
                  ncols=min(3, len(groups)) if wide else 1, **common)  # fmt: skip
    figure.legend(handles=sources, title="training data (marker)", loc="outside lower right" if wide else "outside right lower",
                  ncols=min(3, len(sources)) if wide else 1, **common)  # fmt: skip


def _scatter_models(ax: Axes, items: Sequence, xs: Sequence[float], ys: Sequence[float], style: ModelStyle,
                    *, hollow: bool = False, size: float = 38.0, zorder: int = 3) -> None:  # fmt: skip
    """Scatter one marker per model (matplotlib's scatter takes one marker per call, so draw per style)."""
    by_style: dict[tuple[str, str], list[int]] = {}
    for i, item in enumerate(items):
        by_style.setdefault((item.group, item.train_data), []).append(i)
    for (group, source), index in by_style.items():
        colour = style.colours[group]
        ax.scatter(
            np.asarray(xs, dtype=float)[index],
            np.asarray(ys, dtype=float)[index],
            marker=style.markers[source],
            s=size,
            facecolors="white" if hollow else colour,
            edgecolors=colour if hollow else "black",
            linewidths=1.0 if hollow else 0.4,
            zorder=zorder,
        )


def _grid_shape(n_panels: int, max_columns: int) -> tuple[int, int]:
    columns = min(n_panels, max_columns)
    return math.ceil(n_panels / columns), columns


def _new_figure(n_panels: int, *, max_columns: int, panel_size: tuple[float, float],
                extra_height: float = 1.3) -> tuple[Figure, list[Axes]]:  # fmt: skip
    """A constrained-layout figure with one axes per panel (unused grid cells removed)."""
    rows, columns = _grid_shape(n_panels, max_columns)
    figure = Figure(figsize=(panel_size[0] * columns, panel_size[1] * rows + extra_height), layout="constrained")
    axes = list(np.atleast_1d(figure.subplots(rows, columns, squeeze=False)).ravel())
    for extra in axes[n_panels:]:
        extra.remove()
    return figure, axes[:n_panels]


def _percent(value: float, _position: object = None) -> str:
    return f"{100.0 * value:.3g}%"


def _require(panels: Sequence, what: str) -> None:
    if not panels:
        raise AnalysisError(f"{what}: no panel to draw (the data is empty)")


# ---------------------------------------------------------------------------------------------------
# Statistics shown on figures


def trend_statistics(x: Sequence[float], y: Sequence[float]) -> TrendStatistics:
    """Spearman's rho and the OLS fit ``y = slope * x + intercept`` with R^2 (squared Pearson r),
    on the values as given. NaN fields when n < 3 or either axis is constant."""
    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if xs.shape != ys.shape or xs.ndim != 1:
        raise AnalysisError(f"x and y must be 1-D of equal length, got shapes {xs.shape} and {ys.shape}")
    n = int(xs.size)
    if n < MIN_MODELS_FOR_TREND or np.ptp(xs) == 0.0 or np.ptp(ys) == 0.0:
        return TrendStatistics(n, math.nan, math.nan, math.nan, math.nan)
    slope, intercept = np.polyfit(xs, ys, 1)
    r = float(np.corrcoef(xs, ys)[0, 1])
    return TrendStatistics(n, spearman_rho(xs, ys), r * r, float(slope), float(intercept))


def statistics_by(
    points: Sequence[ModelPoint], key: Callable[[ModelPoint], Hashable]
) -> dict[Hashable, TrendStatistics]:
    """`trend_statistics` of each subset of points sharing ``key(point)``, in sorted key order."""
    members: dict[Hashable, list[ModelPoint]] = {}
    for point in points:
        members.setdefault(key(point), []).append(point)
    return {
        k: trend_statistics([p.x for p in v], [p.y for p in v])
        for k, v in sorted(members.items(), key=lambda kv: str(kv[0]))
    }


def _format_statistics(s: TrendStatistics) -> str:
    if math.isnan(s.spearman):
        return f"n={s.n} (\u03c1, R\u00b2 undefined)"
    return f"\u03c1={s.spearman:.2f}, R\u00b2={s.r2:.2f}, n={s.n}"


# ---------------------------------------------------------------------------------------------------
# Probit / logit axes


_SCALE_FUNCTIONS: dict[str, tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]]] = {
    "probit": (special.ndtri, special.ndtr),  # the standard normal quantile and CDF (= scipy.stats.norm.ppf/cdf)
    "logit": (special.logit, special.expit),
}


def _accuracy_scale(transform: str) -> tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]]:
    """(T, T^-1) of `embedstore.analysis.robustness` for an axis scale: accuracies clipped to
    ``[DEFAULT_CLIP_EPS, 1 - DEFAULT_CLIP_EPS]`` first, as there. Uses scipy.special's ufuncs directly
    because matplotlib calls them on every redraw."""
    if transform not in _SCALE_FUNCTIONS:
        raise AnalysisError(f"transform: {transform!r} is not one of {', '.join(_SCALE_FUNCTIONS)}")
    forward_raw, inverse = _SCALE_FUNCTIONS[transform]

    def forward(values: np.ndarray) -> np.ndarray:
        return forward_raw(np.clip(np.asarray(values, dtype=float), DEFAULT_CLIP_EPS, 1.0 - DEFAULT_CLIP_EPS))

    return forward, inverse


_TICK_LEVELS: tuple[tuple[float, ...], ...] = (
    (0.001, 0.01, 0.1, 0.5, 0.9, 0.99, 0.999),
    (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99),
    tuple(np.round(np.arange(0.05, 0.951, 0.05), 4)),
    tuple(np.round(np.arange(0.01, 0.991, 0.01), 4)),
    tuple(np.round(np.arange(0.002, 0.9981, 0.002), 4)),
)


def accuracy_ticks(low: float, high: float, transform: str = "probit", max_ticks: int = 9) -> list[float]:
    """Round accuracy values to label a probit/logit axis spanning [low, high]: the sparsest tick level
    giving at least three ticks in range, thinned so that neighbours are at least 1/max_ticks of the
    axis apart in transformed units."""
    forward, _ = _accuracy_scale(transform)
    t_low, t_high = float(forward(np.array([low]))[0]), float(forward(np.array([high]))[0])
    chosen: list[float] = []
    for level in _TICK_LEVELS:
        chosen = [t for t in level if low <= t <= high]
        if len(chosen) >= 3:
            break
    min_gap = (t_high - t_low) / max_ticks
    kept: list[float] = []
    for tick in chosen:
        if not kept or float(forward(np.array([tick]))[0] - forward(np.array([kept[-1]]))[0]) >= min_gap:
            kept.append(tick)
    return kept


def _accuracy_limits(values: np.ndarray, transform: str) -> tuple[float, float]:
    """Limits (fractions) that hold every value with a 6% margin of the range in transformed units."""
    forward, inverse = _accuracy_scale(transform)
    t = forward(values)
    low, high = float(t.min()), float(t.max())
    pad = max(0.06 * (high - low), 0.1)
    return float(inverse(np.array([low - pad]))[0]), float(inverse(np.array([high + pad]))[0])


def _set_accuracy_axis(ax: Axes, axis: str, limits: tuple[float, float], transform: str) -> None:
    forward, inverse = _accuracy_scale(transform)
    target = ax.xaxis if axis == "x" else ax.yaxis
    (ax.set_xscale if axis == "x" else ax.set_yscale)("function", functions=(forward, inverse))
    (ax.set_xlim if axis == "x" else ax.set_ylim)(*limits)
    target.set_major_locator(FixedLocator(accuracy_ticks(*limits, transform=transform)))
    target.set_major_formatter(FuncFormatter(_percent))
    target.set_minor_locator(FixedLocator([]))


# ---------------------------------------------------------------------------------------------------
# Fig. 1 type: accuracy on the line


def accuracy_on_the_line(
    panels: Sequence[ScatterPanel],
    *,
    transform: str = "probit",
    regressor: str = "huber",
    title: str | None = None,
    max_columns: int = 3,
    style: ModelStyle | None = None,
) -> Figure:
    """Shifted (y) vs reference (x) accuracy per model on ``transform``-scaled axes, one panel each.

    Each panel draws the y = x ideal (dashed) and, for every model group with at least three models
    and two distinct x values, the fitted line ``T(y) = a T(x) + b`` (`fit_linear_trend` with
    ``regressor``), labelled with its slope and transformed-space R^2. Accuracies are fractions;
    ticks are labelled in %.
    """
    _require(panels, "accuracy on the line")
    figure, axes = _new_figure(len(panels), max_columns=max_columns, panel_size=(4.2, 3.9))
    style = _style_of([p for panel in panels for p in panel.points], style)
    for ax, panel in zip(axes, panels):
        _draw_accuracy_panel(ax, panel, style, transform, regressor)
    if title:
        figure.suptitle(title, fontsize=11)
    _add_model_legends(figure, style)
    return figure


def _draw_accuracy_panel(ax: Axes, panel: ScatterPanel, style: ModelStyle, transform: str, regressor: str) -> None:
    if not panel.points:
        raise AnalysisError(f"panel {panel.title!r} has no model with both accuracies")
    xs = np.array([p.x for p in panel.points])
    ys = np.array([p.y for p in panel.points])
    x_limits = _accuracy_limits(xs, transform)
    y_limits = _accuracy_limits(ys, transform)
    _set_accuracy_axis(ax, "x", x_limits, transform)
    _set_accuracy_axis(ax, "y", y_limits, transform)
    span = np.linspace(min(x_limits[0], y_limits[0]), max(x_limits[1], y_limits[1]), 200)
    ax.plot(span, span, linestyle="--", color="0.35", linewidth=1.0, label="y = x", zorder=1)
    grid = np.linspace(*x_limits, 200)
    for group in style.colours:
        if group == NO_GROUP:
            continue  # not a population: no line through unlabelled models
        members = [p for p in panel.points if p.group == group]
        gx = np.array([p.x for p in members])
        if len(members) < MIN_MODELS_FOR_TREND or np.ptp(gx) == 0.0:
            continue
        trend = fit_linear_trend(gx, [p.y for p in members], transform, regressor)
        ax.plot(grid, trend.predict(grid), color=style.colours[group], linewidth=1.4, zorder=2,
                label=f"{group} fit: slope {trend.a:.2f}, R\u00b2 {trend.r2:.2f}")  # fmt: skip
    _scatter_models(ax, panel.points, xs, ys, style)
    ax.set_xlim(*x_limits)
    ax.set_ylim(*y_limits)
    ax.set_title(panel.title, fontsize=9)
    ax.set_xlabel(panel.x_label, fontsize=8)
    ax.set_ylabel(panel.y_label, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(True, linewidth=0.3, alpha=0.6)
    ax.legend(fontsize=6.5, loc="lower right", frameon=True, framealpha=0.85)


# ---------------------------------------------------------------------------------------------------
# Fig. 4 type (and retrieval): a metric against accuracy, statistics per training source


def metric_vs_accuracy(
    panels: Sequence[ScatterPanel],
    *,
    title: str | None = None,
    max_columns: int = 2,
    style: ModelStyle | None = None,
) -> Figure:
    """A metric (y, fraction shown in %) against accuracy (x, fraction shown in %) per model, one panel
    each, on linear axes. Each training source with at least three models gets its OLS line (grey,
    one line style per source) labelled with Spearman's rho and R^2 (`trend_statistics`)."""
    _require(panels, "metric against accuracy")
    figure, axes = _new_figure(len(panels), max_columns=max_columns, panel_size=(4.6, 3.9))
    style = _style_of([p for panel in panels for p in panel.points], style)
    for ax, panel in zip(axes, panels):
        if not panel.points:
            raise AnalysisError(f"panel {panel.title!r} has no model with both values")
        xs = np.array([p.x for p in panel.points])
        ys = np.array([p.y for p in panel.points])
        handles = []
        for i, (source, summary) in enumerate(statistics_by(panel.points, lambda p: p.train_data).items()):
            line_style = _LINE_STYLES[i % len(_LINE_STYLES)]
            if source == NO_TRAIN_DATA:
                handles.append(Line2D([], [], color="0.3", linestyle="none", marker=style.markers[source],
                                      markerfacecolor="white", markeredgecolor="0.2", label=f"{source}: n={summary.n} (not fitted)"))  # fmt: skip
                continue
            if not math.isnan(summary.slope):
                sx = np.array([p.x for p in panel.points if p.train_data == source])
                grid = np.linspace(sx.min(), sx.max(), 50)
                ax.plot(grid, summary.slope * grid + summary.intercept, color="0.3", linestyle=line_style,
                        linewidth=1.1, zorder=2)  # fmt: skip
            handles.append(
                Line2D([], [], color="0.3", linestyle="none" if math.isnan(summary.slope) else line_style,
                       marker=style.markers[source], markerfacecolor="white", markeredgecolor="0.2",
                       label=f"{source}: {_format_statistics(summary)}")
            )  # fmt: skip
        _scatter_models(ax, panel.points, xs, ys, style)
        _pad_linear_limits(ax, xs, ys)
        ax.xaxis.set_major_formatter(FuncFormatter(_percent))
        ax.yaxis.set_major_formatter(FuncFormatter(_percent))
        ax.set_title(panel.title, fontsize=9)
        ax.set_xlabel(panel.x_label, fontsize=8)
        ax.set_ylabel(panel.y_label, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, linewidth=0.3, alpha=0.6)
        ax.legend(handles=handles, fontsize=6.5, loc="upper center", bbox_to_anchor=(0.5, -0.17), frameon=False,
                  title="OLS line and statistics per training source", title_fontsize=6.5)  # fmt: skip
    if title:
        figure.suptitle(title, fontsize=11)
    _add_model_legends(figure, style)
    return figure


def _pad_linear_limits(ax: Axes, xs: np.ndarray, ys: np.ndarray, margin: float = 0.08) -> None:
    for values, setter in ((xs, ax.set_xlim), (ys, ax.set_ylim)):
        low, high = float(np.min(values)), float(np.max(values))
        pad = max((high - low) * margin, 0.01)
        setter(low - pad, high + pad)


# ---------------------------------------------------------------------------------------------------
# Fig. 5 type: calibration before and after temperature scaling


def calibration_before_after(
    panels: Sequence[BeforeAfterPanel],
    *,
    title: str | None = None,
    max_columns: int = 2,
    style: ModelStyle | None = None,
) -> Figure:
    """A calibration metric against accuracy per model: hollow markers at T = 1, filled markers after
    temperature scaling, joined by a thin line (scaling never changes accuracy, so each pair is vertical)."""
    _require(panels, "calibration before/after temperature scaling")
    figure, axes = _new_figure(len(panels), max_columns=max_columns, panel_size=(4.6, 3.9))
    style = _style_of([p for panel in panels for p in panel.points], style)
    for ax, panel in zip(axes, panels):
        if not panel.points:
            raise AnalysisError(f"panel {panel.title!r} has no model with both values")
        xs = np.array([p.x for p in panel.points])
        before = np.array([p.before for p in panel.points])
        after = np.array([p.after for p in panel.points])
        ax.vlines(xs, np.minimum(before, after), np.maximum(before, after), colors="0.6", linewidth=0.8, zorder=1)
        _scatter_models(ax, panel.points, xs, before, style, hollow=True)
        _scatter_models(ax, panel.points, xs, after, style)
        _pad_linear_limits(ax, xs, np.concatenate([before, after]))
        ax.xaxis.set_major_formatter(FuncFormatter(_percent))
        if panel.percent:
            ax.yaxis.set_major_formatter(FuncFormatter(_percent))
        ax.set_title(panel.title, fontsize=9)
        ax.set_xlabel(panel.x_label, fontsize=8)
        ax.set_ylabel(panel.y_label, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, linewidth=0.3, alpha=0.6)
        ax.legend(
            handles=[
                Line2D([], [], linestyle="none", marker="o", markerfacecolor="white", markeredgecolor="0.2",
                       label="before: T = 1"),
                Line2D([], [], linestyle="none", marker="o", markerfacecolor="0.2", markeredgecolor="black",
                       label="after: fitted T"),
            ],
            fontsize=7, loc="best", framealpha=0.85,
        )  # fmt: skip
    if title:
        figure.suptitle(title, fontsize=11)
    _add_model_legends(figure, style)
    return figure


# ---------------------------------------------------------------------------------------------------
# Reliability diagrams


def reliability_diagrams(
    panels: Sequence[ReliabilityPanel], *, title: str | None = None, max_columns: int = 4
) -> Figure:
    """Per-bin accuracy against confidence (equal-width bins from `reliability_diagram`), one panel per
    model: bars at T = 1 and, where fitted, hatched bars after temperature scaling; the diagonal is
    perfect calibration. Empty bins have no bar. Each legend entry gives the ECE of that diagram."""
    _require(panels, "reliability diagrams")
    figure, axes = _new_figure(len(panels), max_columns=max_columns, panel_size=(3.2, 3.2), extra_height=0.5)
    for ax, panel in zip(axes, panels):
        edges = np.asarray(panel.before.bin_edges, dtype=float)
        width = np.diff(edges)
        series = [(panel.before, "T = 1", "#1f77b4", None)]
        if panel.after is not None:
            label = f"T = {panel.temperature:.3g} (fitted)" if panel.temperature is not None else "after scaling"
            series.append((panel.after, label, "#ff7f0e", "///"))
        share = width / len(series)
        for k, (diagram, label, colour, hatch) in enumerate(series):
            accuracy = np.nan_to_num(np.asarray(diagram.accuracy, dtype=float), nan=0.0)
            filled = np.asarray(diagram.counts) > 0
            ax.bar(edges[:-1][filled] + k * share[filled], accuracy[filled], width=share[filled], align="edge",
                   color=colour if hatch is None else "white", edgecolor=colour, hatch=hatch, linewidth=0.8,
                   label=f"{label}: ECE {_percent(_ece(diagram))}")  # fmt: skip
        ax.plot([0, 1], [0, 1], linestyle="--", color="0.35", linewidth=1.0)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.xaxis.set_major_formatter(FuncFormatter(_percent))
        ax.yaxis.set_major_formatter(FuncFormatter(_percent))
        ax.set_title(panel.title, fontsize=8)
        ax.set_xlabel("confidence (top-1 softmax probability)", fontsize=7)
        ax.set_ylabel("accuracy in bin", fontsize=7)
        ax.tick_params(labelsize=6.5)
        ax.legend(fontsize=6.5, loc="upper left", framealpha=0.85)
    figure.suptitle(
        title or f"Reliability diagrams ({len(panels[0].before.counts)} equal-width bins [lo, hi))", fontsize=10
    )
    return figure


def _ece(diagram: ReliabilityDiagram) -> float:
    counts = np.asarray(diagram.counts, dtype=float)
    filled = counts > 0
    gaps = np.abs(np.asarray(diagram.accuracy)[filled] - np.asarray(diagram.mean_confidence)[filled])
    return float(np.sum(counts[filled] * gaps) / counts.sum())


# ---------------------------------------------------------------------------------------------------
# Fig. 2 type: shape bias per model group


def shape_bias_by_group(
    panels: Sequence[ValuePanel], *, title: str | None = None, style: ModelStyle | None = None
) -> Figure:
    """Shape bias per model, one row per model group (x in [0, 1]: 0 = all texture, 1 = all shape
    decisions among cue-conflict images), with each group's median as a vertical bar."""
    _require(panels, "shape bias")
    groups = sorted({v.group for panel in panels for v in panel.values})
    width = 8.5 if len(panels) == 1 else 5.0  # room for the legends below a single panel
    figure, axes = _new_figure(len(panels), max_columns=2, panel_size=(width, 0.6 * len(groups) + 1.4))
    style = _style_of([v for panel in panels for v in panel.values], style)
    for ax, panel in zip(axes, panels):
        if not panel.values:
            raise AnalysisError(f"panel {panel.title!r} has no model with a shape bias")
        offsets = _stable_jitter([v.model for v in panel.values])
        rows = np.array([groups.index(v.group) for v in panel.values], dtype=float) + offsets
        values = np.array([v.value for v in panel.values])
        _scatter_models(ax, panel.values, values, rows, style, size=44)
        for row, group in enumerate(groups):
            members = values[[v.group == group for v in panel.values]]
            if members.size:
                median = float(np.median(members))
                ax.plot([median, median], [row - 0.35, row + 0.35], color=style.colours[group], linewidth=2.2, zorder=2)
                ax.annotate(f"median {median:.2f} (n={members.size})", (1.0, row + 0.38), fontsize=6.5,
                            ha="right", va="bottom", color="0.25")  # fmt: skip
        ax.axvline(0.5, color="0.6", linewidth=0.8, linestyle=":")
        ax.set_xlim(0.0, 1.0)
        ax.set_ylim(-0.6, len(groups) - 0.4)
        ax.set_yticks(range(len(groups)), groups, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(panel.x_label, fontsize=8)
        ax.set_title(panel.title, fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(True, axis="x", linewidth=0.3, alpha=0.6)
        ax.text(0.0, -0.12, "\u2190 texture", transform=ax.transAxes, fontsize=7, ha="left", va="top", color="0.3")
        ax.text(1.0, -0.12, "shape \u2192", transform=ax.transAxes, fontsize=7, ha="right", va="top", color="0.3")
    if title:
        figure.suptitle(title, fontsize=11)
    _add_model_legends(figure, style)
    return figure


def _stable_jitter(names: Sequence[str], amplitude: float = 0.22) -> np.ndarray:
    """Vertical offsets in [-amplitude, amplitude] that depend only on each model's name (reproducible)."""
    fractions = [int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little") / 2.0**64 for name in names]
    return amplitude * (2.0 * np.asarray(fractions, dtype=float) - 1.0)


# ---------------------------------------------------------------------------------------------------
# Prompts: per-template accuracy and prompt-set comparison


def template_accuracy(entries: Sequence[TemplateAccuracy], *, title: str | None = None, max_label: int = 48) -> Figure:
    """Top-1 accuracy of each template alone: a bar at the mean over models, a whisker over their
    min-max range and one grey dot per model; templates sorted from best to worst mean."""
    if not entries:
        raise AnalysisError("per-template accuracy: no template to draw")
    if any(not e.accuracies for e in entries):
        raise AnalysisError("per-template accuracy: every template needs at least one model's accuracy")
    ordered = sorted(entries, key=lambda e: -float(np.mean(e.accuracies)))
    figure = Figure(figsize=(7.5, 0.24 * len(ordered) + 1.4), layout="constrained")
    ax = figure.subplots()
    rows = np.arange(len(ordered))
    means = np.array([np.mean(e.accuracies) for e in ordered])
    low = np.array([np.min(e.accuracies) for e in ordered])
    high = np.array([np.max(e.accuracies) for e in ordered])
    ax.barh(rows, means, color="#9ecae1", edgecolor="#3182bd", height=0.7, label="mean over models")
    ax.errorbar(means, rows, xerr=[means - low, high - means], fmt="none", ecolor="0.3", elinewidth=0.8, capsize=2,
                label="min-max over models")  # fmt: skip
    for row, entry in zip(rows, ordered):
        ax.scatter(entry.accuracies, np.full(len(entry.accuracies), row), s=9, color="0.25", zorder=3)
    labels = [f"{e.index}: {_shorten(e.template, max_label)}" for e in ordered]
    ax.set_yticks(rows, labels, fontsize=7)
    ax.set_ylim(len(ordered) - 0.5, -0.5)
    ax.xaxis.set_major_formatter(FuncFormatter(_percent))
    ax.set_xlim(0.0, min(1.0, float(high.max()) * 1.08 + 0.01))
    ax.set_xlabel("top-1 zero-shot accuracy with this template alone (%)", fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    ax.grid(True, axis="x", linewidth=0.3, alpha=0.6)
    n_models = max(len(e.accuracies) for e in entries)
    figure.legend(handles=[*ax.get_legend_handles_labels()[0],
                           Line2D([], [], linestyle="none", marker="o", markersize=3, color="0.25", label="one model")],
                  loc="outside lower center", ncols=3, fontsize=7, frameon=False)  # fmt: skip
    figure.suptitle(title or f"Per-template accuracy ({n_models} model(s))", fontsize=10)
    return figure


def prompt_set_comparison(rows: Sequence[PromptSetAccuracy], *, title: str | None = None) -> Figure:
    """Top-1 accuracy of each model (one row, sorted by its mean) under each prompt set (one colour
    per set), with a grey line over the model's range: how much the choice of prompts moves it."""
    if not rows:
        raise AnalysisError("prompt-set comparison: no model to draw")
    set_names = sorted({name for row in rows for name in row.accuracies})
    if not set_names:
        raise AnalysisError("prompt-set comparison: no prompt set has an accuracy")
    ordered = sorted(rows, key=lambda r: -float(np.mean(list(r.accuracies.values()) or [0.0])))
    figure = Figure(figsize=(7.5, 0.28 * len(ordered) + 1.6), layout="constrained")
    ax = figure.subplots()
    colours = {name: _SET_COLOURS[i % len(_SET_COLOURS)] for i, name in enumerate(set_names)}
    for y, row in enumerate(ordered):
        values = list(row.accuracies.values())
        if values:
            ax.plot([min(values), max(values)], [y, y], color="0.7", linewidth=1.6, zorder=1)
    for name in set_names:
        ys = [y for y, row in enumerate(ordered) if name in row.accuracies]
        xs = [row.accuracies[name] for row in ordered if name in row.accuracies]
        ax.scatter(xs, ys, color=colours[name], s=30, edgecolors="black", linewidths=0.3, zorder=3, label=name)
    ax.set_yticks(range(len(ordered)), [f"{r.model}  [{r.group}]" for r in ordered], fontsize=7)
    ax.set_ylim(len(ordered) - 0.5, -0.5)
    ax.xaxis.set_major_formatter(FuncFormatter(_percent))
    ax.set_xlabel("top-1 zero-shot accuracy with the prompt set's ensemble (%)", fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    ax.grid(True, axis="x", linewidth=0.3, alpha=0.6)
    figure.legend(handles=[Patch(color=colours[n], label=n) for n in set_names], title="prompt set",
                  loc="outside lower center", ncols=min(4, len(set_names)), fontsize=8, title_fontsize=8, frameon=False)  # fmt: skip
    figure.suptitle(title or "Prompt-set comparison", fontsize=10)
    return figure


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"
