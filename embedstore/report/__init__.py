"""Figures and the static HTML report, drawn from the catalog's ``results``.

- `embedstore.report.figures`: matplotlib figures from plain data (no store access).
- `embedstore.report.data`: the catalog -> figure-data layer (which rows, which conventions).
- `embedstore.report.kinds`: the figure kinds, each pairing a data builder with a figure function.
- `embedstore.report.html`: `write_report`, the self-contained report folder.
"""

from embedstore.report.data import MissingData, ReportData, ReportSelection
from embedstore.report.html import ReportSummary, write_report
from embedstore.report.kinds import FIGURE_KINDS, render, save_figure

__all__ = [
    "FIGURE_KINDS",
    "MissingData",
    "ReportData",
    "ReportSelection",
    "ReportSummary",
    "render",
    "save_figure",
    "write_report",
]
