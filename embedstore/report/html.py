"""A static HTML report of a store: one folder with ``index.html``, the figures (PNG shown, SVG
linked), ``results.csv`` and ``params.json``. No server, no network, no script: the CSS is inline and
every link is a relative path inside the folder.

What it holds:

- every figure kind of `embedstore.report.kinds.FIGURE_KINDS` whose data is in the catalog, each with
  its caption, notes on what was left out, and the parameter sets and analyses of the numbers it drew;
  kinds whose data is missing are listed with the reason instead;
- the results, one table per analysis (metrics without a per-item suffix as columns; per-item metrics
  such as ``acc1@template:3`` in a folded long table), every row linked to its parameter set and to the
  library versions of the arrays it was computed from;
- provenance: the store's ``meta`` table (store id, creation time, schema), a content fingerprint
  (`ReportData.fingerprint`), every parameter set in full, the library versions that wrote the
  arrays, the versions that drew the report, and the models and datasets tables.
"""

from __future__ import annotations

import csv
import datetime as _dt
import html
import json
import platform
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from embedstore.errors import AnalysisError
from embedstore.report.data import ANALYSES, ReportData, ReportSelection, StoredResult
from embedstore.report.kinds import FIGURE_KINDS, drawing_key, figure_kind, model_style, save_figure
from embedstore.store import Store, hash_object

FIGURES_DIR = "figures"
FIGURE_FORMATS = ("png", "svg")  # the page shows the PNG and links the SVG
#: In the figures folder: each drawn kind's `drawing_key`; a later report whose key is equal keeps the files.
DRAWING_KEYS = ".drawing-keys.json"
REPORT_LIBRARIES = ("embedstore", "numpy", "scipy", "matplotlib", "duckdb", "zarr", "scikit-learn")
PER_ITEM = "@"


@dataclass(frozen=True)
class ReportSummary:
    """What `write_report` wrote: the index page, each drawn figure's files, each skipped kind's reason."""

    index: Path
    figures: dict[str, tuple[Path, ...]]
    skipped: dict[str, str]
    n_results: int


def write_report(
    store: Store, out_dir: str | Path, selection: ReportSelection | None = None, *, kinds: Sequence[str] | None = None
) -> ReportSummary:
    """Write the report of ``store`` (restricted by ``selection``) into ``out_dir``, created if needed.

    Only the figure ``kinds`` named (default: all of `FIGURE_KINDS`) are attempted; one whose data is
    missing is skipped with its reason. Files of an earlier report in ``out_dir`` are replaced, and its
    figures of kinds not drawn this time are removed; other files there are left alone. A figure whose
    `drawing_key` equals the earlier report's (same data, same versions) keeps its files undrawn."""
    names = list(kinds) if kinds is not None else list(FIGURE_KINDS)
    for name in names:
        figure_kind(name)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise AnalysisError(f"report folder {out} exists and is not a folder")
    with store.session():
        data = ReportData.load(store, selection)  # a selection that matches nothing is refused before any write
    figures_dir = out / FIGURES_DIR
    figures_dir.mkdir(parents=True, exist_ok=True)
    style = model_style(data)
    keys_file = figures_dir / DRAWING_KEYS
    earlier_keys = _read_drawing_keys(keys_file)
    keys: dict[str, str] = {}
    drawn: dict[str, tuple[Path, ...]] = {}
    skipped: dict[str, str] = {}
    sections = []
    for name in names:
        kind = FIGURE_KINDS[name]
        try:
            sourced = kind.build(data)
        except AnalysisError as reason:
            skipped[name] = str(reason)
            sections.append(_skipped_section(kind.title, name, str(reason)))
            continue
        files = tuple(figures_dir / f"{name}.{fmt}" for fmt in FIGURE_FORMATS)
        keys[name] = drawing_key(name, sourced, style)
        if keys[name] != earlier_keys.get(name) or not all(f.is_file() for f in files):
            figure = kind.draw(sourced, style)
            for f in files:
                save_figure(figure, f)
                # The first save laid the figure out; the other formats keep that layout instead of
                # running the constrained layout again (SVG of a 150-model report: 5.2 s -> 3.5 s).
                figure.set_layout_engine("none")
        drawn[name] = files
        sections.append(_figure_section(kind.title, name, kind.caption, sourced.notes, sourced.sources,
                                        [f.relative_to(out) for f in files]))  # fmt: skip
    for name in set(FIGURE_KINDS) - set(drawn):
        for fmt in FIGURE_FORMATS:
            (figures_dir / f"{name}.{fmt}").unlink(missing_ok=True)
    if keys:
        keys_file.write_text(json.dumps(keys, indent=1, sort_keys=True))
    else:
        keys_file.unlink(missing_ok=True)
    _write_results_csv(out / "results.csv", data.results)
    (out / "params.json").write_text(json.dumps(_params_by_hash(data.results), indent=2, sort_keys=True, default=str))
    page = _page(data, sections, drawn, skipped)
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    return ReportSummary(index, drawn, skipped, len(data.results))


def _read_drawing_keys(path: Path) -> dict[str, str]:
    """The keys an earlier report recorded; an unreadable file just means every figure is drawn."""
    try:
        keys = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in keys.items() if isinstance(v, str)} if isinstance(keys, dict) else {}


# ---------------------------------------------------------------------------------------------------
# Page


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1280px;
       padding: 0 1.5rem 3rem; color: #1b1b1b; line-height: 1.45; }
h1 { margin-top: 1.5rem; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2rem; margin-top: 2.5rem; }
h3 { margin-top: 1.8rem; }
nav > ul { columns: 2; padding-left: 1.2rem; } nav li { break-inside: avoid; }
figure { margin: 1rem 0; } figure img { max-width: 100%; height: auto; border: 1px solid #e3e3e3; }
figcaption { font-size: .92rem; color: #333; }
.notes { font-size: .88rem; color: #555; } .skipped { color: #8a4b00; background: #fff6e8; padding: .4rem .6rem; }
table { border-collapse: collapse; font-size: .82rem; margin: .5rem 0 1rem; }
th, td { border: 1px solid #d6d6d6; padding: .2rem .45rem; text-align: left; vertical-align: top; white-space: nowrap; }
th { background: #f3f3f3; position: sticky; top: 0; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.scroll { overflow-x: auto; max-height: 36rem; overflow-y: auto; }
pre { background: #f7f7f7; padding: .5rem; font-size: .78rem; overflow-x: auto; }
code { font-size: .85em; } details { margin: .4rem 0 1rem; }
"""


def _page(data: ReportData, sections: Sequence[str], drawn: Mapping[str, Any], skipped: Mapping[str, str]) -> str:
    generated = _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat()
    analyses = [a for a in ANALYSES if data.rows(a)] + sorted({r.analysis for r in data.results} - set(ANALYSES))
    figure_links = [(f"fig-{n}", FIGURE_KINDS[n].title) for n in FIGURE_KINDS if n in drawn or n in skipped]
    toc = [
        ("summary", "Summary", []),
        ("figures", "Figures", figure_links),
        ("results", "Results", [(f"results-{a}", a) for a in analyses]),
        ("provenance", "Provenance", []),
    ]
    body = [
        "<h1>embedstore report</h1>",
        f"<p>Store <code>{_e(data.store_path)}</code>, generated {_e(generated)} UTC from {len(data.results)} result rows. "
        f"{len(drawn)} figure(s) drawn, {len(skipped)} skipped. Figures in PNG, with SVG links; all results in "
        f'<a href="results.csv">results.csv</a>, every parameter set in <a href="params.json">params.json</a>.</p>',
        "<nav><ul>"
        + "".join(f'<li><a href="#{_e(a)}">{_e(t)}</a>{_links(sub)}</li>' for a, t, sub in toc)
        + "</ul></nav>",
        _summary_section(data),
        '<h2 id="figures">Figures</h2>',
        *sections,
        '<h2 id="results">Results</h2>',
        "<p>Values as stored: accuracies, AUROC, FPR@95, ECE and recalls are fractions in [0, 1]; NLL in nats; "
        "effective robustness in percentage points. Hover a cell for its full precision. <em>params</em> links to the "
        "row's parameter set, <em>libraries</em> to the versions that wrote the arrays it was computed from.</p>",
        *(_results_section(data, a) for a in analyses),
        _provenance_section(data),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>embedstore report: {_e(Path(data.store_path).name)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def _links(anchors: Sequence[tuple[str, str]]) -> str:
    return "<ul>" + "".join(f'<li><a href="#{_e(a)}">{_e(t)}</a></li>' for a, t in anchors) + "</ul>" if anchors else ""


def _summary_section(data: ReportData) -> str:
    selection = data.selection
    rows = [
        ("store id", data.meta.get("store_id", "")),
        ("content fingerprint", data.fingerprint()),
        ("ID dataset", f"{data.id_dataset or 'none'} ({data.id_dataset_reason})"),
        ("prompt set (CLIP zero-shot rows)", selection.prompt_set),
        ("OOD score / FPR@95 positive", f"{selection.ood_score or 'most evaluated'} / {selection.ood_positive}"),
        ("retrieval K", str(selection.recall_k)),
        ("models", ", ".join(selection.models) or "all"),
        ("datasets", ", ".join(selection.datasets) or "all"),
    ]
    return '<h2 id="summary">Summary</h2>\n' + _table(["", ""], [[_e(k), _e(v)] for k, v in rows], header=False)


def _figure_section(title: str, name: str, caption: str, notes: Sequence[str], sources: Sequence[StoredResult],
                    files: Sequence[Path]) -> str:  # fmt: skip
    png, svg = (f.as_posix() for f in files)
    params = sorted({(r.analysis, r.params_hash) for r in sources})
    used = ", ".join(f'<a href="#params-{h[:12]}">{_e(a)} {h[:12]}</a>' for a, h in params)
    notes_html = "".join(f"<li>{_e(n)}</li>" for n in notes)
    return (
        f'<h3 id="fig-{_e(name)}">{_e(title)}</h3>\n<figure>\n'
        f'<img src="{_e(png)}" alt="{_e(title)}">\n'
        f'<figcaption>{_e(caption)} <a href="{_e(svg)}">SVG</a></figcaption>\n</figure>\n'
        f'<ul class="notes">{notes_html}<li>{len({_result_key(r) for r in sources})} stored numbers from parameter set(s): {used}</li></ul>'
    )


def _result_key(row: StoredResult) -> tuple[Any, ...]:
    return (row.model, row.dataset, row.analysis, row.metric, row.params_hash)


def _skipped_section(title: str, name: str, reason: str) -> str:
    return f'<h3 id="fig-{_e(name)}">{_e(title)}</h3>\n<p class="skipped">Skipped: {_e(reason)}</p>'


# ---------------------------------------------------------------------------------------------------
# Results tables


def _results_section(data: ReportData, analysis: str) -> str:
    rows = data.rows(analysis)
    versions = _array_version_ids(data)
    runs: dict[tuple[str | None, str | None, str], dict[str, StoredResult]] = {}
    for row in rows:
        runs.setdefault((row.model, row.dataset, row.params_hash), {})[row.metric] = row
    headline = sorted({r.metric for r in rows if PER_ITEM not in r.metric}, key=_metric_order)
    per_item = [r for r in rows if PER_ITEM in r.metric]
    varying = _varying_params({r.params_hash: r.params for r in rows})
    columns = ["model", "group", "dataset", "params", "differs by", "libraries", "embedstore", "created", *headline]
    table_rows = []
    for (model, dataset, params_hash), metrics in sorted(runs.items(), key=lambda kv: tuple(map(str, kv[0]))):
        if not any(m in metrics for m in headline) and per_item:
            continue  # a run with per-item metrics only is listed in the folded table
        first = next(iter(metrics.values()))
        version_id = versions.get((dataset, model))
        table_rows.append([
            _e(model or "(all models)"),
            _e(data.label(model).group if model else ""),
            _e(dataset or ""),
            f'<a href="#params-{params_hash[:12]}">{params_hash[:12]}</a>',
            _e(varying.get(params_hash, "")),
            f'<a href="#versions-{version_id}">{version_id}</a>' if version_id else "",
            _e(first.version),
            _e(first.created.replace(microsecond=0).isoformat(sep=" ")),
            *(_value_cell(metrics.get(m)) for m in headline),
        ])  # fmt: skip
    parts = [f'<h3 id="results-{_e(analysis)}">{_e(analysis)}</h3>']
    if table_rows:
        parts.append(_table(columns, table_rows, numeric_from=8))
    if per_item:
        long_rows = [
            [_e(r.model or ""), _e(r.dataset or ""), _e(r.metric), _value_cell(r),
             f'<a href="#params-{r.params_hash[:12]}">{r.params_hash[:12]}</a>']
            for r in sorted(per_item, key=lambda r: (str(r.model), str(r.dataset), _metric_order(r.metric)))
        ]  # fmt: skip
        parts.append(
            f"<details><summary>{len(per_item)} per-item metrics (suffix <code>@kind:item</code>)</summary>"
            + _table(["model", "dataset", "metric", "value", "params"], long_rows, numeric_from=3)
            + "</details>"
        )
    return "\n".join(parts)


def _varying_params(params: Mapping[str, Mapping[str, Any]], limit: int = 80) -> dict[str, str]:
    """``{params hash: "key=value, ..."}`` over the keys whose values differ between the parameter sets
    of one analysis (lists and dicts left out: the linked set shows them), so rows can be told apart."""
    keys = sorted({k for p in params.values() for k, v in p.items() if not isinstance(v, (list, dict))})
    differing = [k for k in keys if len({json.dumps(p.get(k), sort_keys=True) for p in params.values()}) > 1]
    out = {}
    for params_hash, p in params.items():
        text = ", ".join(f"{k}={p.get(k)}" for k in differing)
        out[params_hash] = text if len(text) <= limit else text[: limit - 1] + "\u2026"
    return out


def _metric_order(metric: str) -> tuple[str, int, str]:
    """Sort ``name@kind:12`` after ``name@kind:2`` (numeric items in numeric order)."""
    head, _, item = metric.rpartition(":")
    return (head, int(item), "") if item.isdigit() and head else (metric, -1, "")


def _value_cell(row: StoredResult | None) -> str:
    if row is None:
        return "<td></td>"
    if row.value is None:
        return f"<td>{_e(row.value_text or '')}</td>"
    return f'<td class="num" title="{row.value!r}">{row.value:.4g}</td>'


# ---------------------------------------------------------------------------------------------------
# Provenance


def _provenance_section(data: ReportData) -> str:
    params = _params_by_hash(data.results)
    param_blocks = []
    for params_hash, entry in sorted(params.items(), key=lambda kv: (kv[1]["analysis"], kv[0])):
        param_blocks.append(
            f'<h4 id="params-{params_hash[:12]}">{_e(entry["analysis"])} {params_hash[:12]}</h4>'
            f'<p class="notes">{entry["rows"]} result rows; embedstore {_e(", ".join(entry["versions"]))}; '
            f"full hash {params_hash}</p><pre>{_e(json.dumps(entry['params'], indent=2, sort_keys=True, default=str))}</pre>"
        )
    version_rows = []
    version_ids = _array_version_ids(data)
    for version_id, versions in sorted(_versions_by_id(data).items()):
        pairs = sorted(f"{d} / {m}" for (d, m), v in version_ids.items() if v == version_id)
        version_rows.append([
            f'<span id="versions-{version_id}">{version_id}</span>',
            _e(", ".join(f"{k} {v}" for k, v in sorted(versions.items()))),
            _e("; ".join(pairs)),
        ])  # fmt: skip
    environment = [[_e(name), _e(_library_version(name))] for name in REPORT_LIBRARIES]
    environment.append(["python", _e(platform.python_version())])
    model_columns = ["model_id", "kind", "group_label", "train_data", "arch", "tag", "family", "params", "resolution",
                     "embed_dim", "loss", "fine_tuned", "fingerprint"]  # fmt: skip
    dataset_columns = ["name", "kind", "task", "n_samples", "n_captions", "spec", "fingerprint"]
    return "\n".join([
        '<h2 id="provenance">Provenance</h2>',
        "<h3>Store</h3>",
        _table(["key", "value"], [[_e(k), _e(v)] for k, v in sorted(data.meta.items())]
               + [["content fingerprint", _e(data.fingerprint())]]),
        '<p class="notes">The content fingerprint is the sha256 of every dataset and model fingerprint and of every '
        "array's settings fingerprint and status: two stores holding the same extraction have the same one.</p>",
        "<h3>Library versions that wrote the arrays</h3>",
        _table(["id", "versions", "arrays (dataset / model)"], version_rows) if version_rows else "<p>No arrays.</p>",
        "<h3>Versions that drew this report</h3>",
        _table(["library", "version"], environment),
        "<h3>Models</h3>",
        _table(model_columns, [[_e(_text(r.get(c))) for c in model_columns] for r in data.model_rows]),
        "<h3>Datasets</h3>",
        _table(dataset_columns, [[_e(_text(r.get(c))) for c in dataset_columns] for r in data.datasets.values()]),
        "<h3>Parameter sets</h3>",
        *param_blocks,
    ])  # fmt: skip


def _params_by_hash(results: Iterable[StoredResult]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for row in results:
        entry = out.setdefault(
            row.params_hash, {"analysis": row.analysis, "params": row.params, "rows": 0, "versions": []}
        )
        entry["rows"] += 1
        if row.version not in entry["versions"]:
            entry["versions"].append(row.version)
    return out


def _versions_by_id(data: ReportData) -> dict[str, dict[str, str]]:
    out = {}
    for array in data.arrays:
        versions = _json_object(array["versions"])
        out[_version_id(versions)] = versions
    return out


def _array_version_ids(data: ReportData) -> dict[tuple[str, str], str]:
    """``{(dataset, model): id}`` of the library versions that wrote that pair's arrays (the first array's
    when several versions wrote them; each set of versions is listed in the provenance table)."""
    out: dict[tuple[str, str], str] = {}
    for array in data.arrays:
        out.setdefault((array["dataset"], array["model"]), _version_id(_json_object(array["versions"])))
    return out


def _version_id(versions: Mapping[str, str]) -> str:
    return "v" + hash_object(dict(versions))[:10]


def _json_object(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        return json.loads(value) if value else {}
    return dict(value or {})


def _library_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def _write_results_csv(path: Path, results: Sequence[StoredResult]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["model", "dataset", "analysis", "metric", "value", "value_text", "params_hash", "version", "created"]
        )
        for r in results:
            writer.writerow([r.model or "", r.dataset or "", r.analysis, r.metric, "" if r.value is None else repr(r.value),
                             r.value_text or "", r.params_hash, r.version, r.created.isoformat()])  # fmt: skip


# ---------------------------------------------------------------------------------------------------
# HTML helpers


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _table(columns: Sequence[str], rows: Sequence[Sequence[str]], *, numeric_from: int | None = None,
           header: bool = True) -> str:  # fmt: skip
    """A table of already-escaped cells; cells given as ``<td ...>`` markup are used as they are."""
    head = "<thead><tr>" + "".join(f"<th>{_e(c)}</th>" for c in columns) + "</tr></thead>" if header else ""
    body = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            if cell.startswith("<td"):
                cells.append(cell)
            else:
                numeric = numeric_from is not None and i >= numeric_from
                cells.append(f'<td class="num">{cell}</td>' if numeric else f"<td>{cell}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<div class="scroll"><table>{head}<tbody>{"".join(body)}</tbody></table></div>'
