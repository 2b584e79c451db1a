"""A run's report as one self-contained HTML file: what ran, on what, what was found, and the figures.

Everything is inline (CSS, figures as SVG data URIs); the page loads nothing
from anywhere, so it can be mailed or archived with the run.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import os
from pathlib import Path

import pandas as pd

from scalable_assoc.errors import DataError, UserInputError
from scalable_assoc.io.atomic import write_atomically
from scalable_assoc.io.runstate import read_status
from scalable_assoc.report.feature_figures import FEATURES_TOP, run_feature_figures
from scalable_assoc.report.figures import RunFigures, run_figures, write_figures
from scalable_assoc.results.run_outputs import read_run

logger = logging.getLogger(__name__)

#: Files a finished run always has; the report refuses a folder without them.
REQUIRED = ("manifest.json", "results.parquet", "significant_results.tsv", "adjustment_survival.tsv")

_CSS = """
body { font-family: "DejaVu Sans", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1200px; color: #1f2933; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #cbd2d9; }
h3 { font-size: 1.05em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.85em; }
th, td { border: 1px solid #cbd2d9; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f0f4f8; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
code { font-size: 0.9em; word-break: break-all; } .muted { color: #616e7c; }
figure { margin: 1em 0 2em; } figure img { max-width: 100%; height: auto; border: 1px solid #e4e7eb; }
figcaption { font-size: 0.85em; color: #52606d; }
"""


def _escape(value: object) -> str:
    return html.escape("" if value is None else str(value))


def _table(frame: pd.DataFrame, table_id: str | None = None, numeric: tuple[str, ...] = ()) -> str:
    head = "".join(f"<th>{_escape(c)}</th>" for c in frame.columns)
    body = []
    for row in frame.itertuples(index=False):
        cells = []
        for column, value in zip(frame.columns, row, strict=True):
            shown = "NA" if value is None or (isinstance(value, float) and value != value) else value
            if isinstance(shown, float):
                shown = f"{shown:.4g}"
            cells.append(f'<td class="num">{_escape(shown)}</td>' if column in numeric else f"<td>{_escape(shown)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    ident = f' id="{table_id}"' if table_id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def check_run_folder(run_dir: Path) -> None:
    """Refuse a folder that is not a finished run (naming the folder and what is missing), before anything is written."""
    if not run_dir.is_dir():
        raise DataError(f"{run_dir} is not a folder; give the output folder of a finished 'scalable-assoc run'")
    missing = [name for name in REQUIRED if not (run_dir / name).is_file()]
    if missing:
        raise DataError(
            f"{run_dir} is not a finished run: {', '.join(missing)} missing; give the output folder of a finished 'scalable-assoc run'"
        )
    status = read_status(run_dir)
    if status is not None and status.state != "finished":
        raise DataError(
            f"{run_dir}: the run there is {status.state}, not finished; report on it once 'scalable-assoc status' says finished"
        )


def _output_links(run_dir: Path, report: Path, figures_dir: Path, figure_files: list[str]) -> str:
    base = report.parent.resolve()
    names = sorted(p.name for p in run_dir.iterdir() if p.is_file() and not p.name.startswith(".") and p.resolve() != report.resolve())
    entries = [run_dir / n for n in names] + [figures_dir / n for n in figure_files]
    items = []
    for path in entries:
        relative = Path(os.path.relpath(path.resolve(), base)).as_posix()
        items.append(f'<li><a href="{_escape(relative)}">{_escape(relative)}</a></li>')
    return "<ul>" + "".join(items) + "</ul>"


def render_report(run_dir: Path, report: Path, top: int = 30, features_top: int = FEATURES_TOP) -> tuple[str, RunFigures]:
    """The report's HTML and the figures it shows (nothing written).

    Parameters
    ----------
    run_dir
        Output folder of a finished run.
    report
        Where the HTML will be written (links to the run's files are relative to it).
    top
        Features in each heatmap.
    features_top
        Associations drawn per layer x model in the per-feature figures (0: none).

    Returns
    -------
    tuple of str and RunFigures
        The page and the figures to write into ``run_dir/figures``.
    """
    check_run_folder(run_dir)
    run = read_run(run_dir)
    manifest, plan = run.manifest, run.plan
    alpha = plan.fdr.alpha
    results = run.results
    significant_rows = pd.read_csv(run_dir / "significant_results.tsv", sep="\t", usecols=["layer", "model"])
    survival = pd.read_csv(run_dir / "adjustment_survival.tsv", sep="\t")
    figures = run_figures(results, survival, list(plan.adjustments), alpha, top)
    feature_notes: dict[tuple[str, str], str] = {}
    if features_top > 0:  # per-feature plots of the top associations, and the joint presence/abundance figure
        extra, feature_notes = run_feature_figures(run, features_top)
        figures.figures.extend(extra)

    title = f"{_escape(manifest.get('plan_name') or plan.name)}: association study report"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{title}</title><style>{_CSS}</style></head><body>",
        f"<h1>{title}</h1>",
        f'<p class="muted">plan hash <code id="plan-hash">{_escape(manifest.get("plan_hash"))}</code>, '
        f"scalable_assoc {_escape(manifest.get('version'))}, plan <code>{_escape(manifest.get('plan'))}</code>, "
        f"FDR: {_escape(plan.fdr.method)} by {_escape(' x '.join(plan.fdr.by))}, q &lt; {alpha:g}</p>",
    ]

    # Findings first: significant associations per layer and model.
    counts = significant_rows.groupby(["layer", "model"], sort=False).size().rename("significant (q < alpha)").reset_index()
    tested = results.groupby(["layer", "model"], sort=False).agg(rows=("p", "size"), estimated=("p", "count")).reset_index()
    findings = tested.merge(counts, on=["layer", "model"], how="left").fillna({"significant (q < alpha)": 0})
    findings["significant (q < alpha)"] = findings["significant (q < alpha)"].astype(int)
    parts += [
        "<h2>Findings</h2>",
        f'<p>Associations with q &lt; {alpha:g}: <strong id="significant-count">{len(significant_rows)}</strong> '
        "(the rows of <code>significant_results.tsv</code>), per layer and model:</p>",
        _table(findings, "significant-table", numeric=("rows", "estimated", "significant (q < alpha)")),
    ]

    parts.append("<h2>Inputs</h2>")
    inputs = pd.DataFrame(
        [(name, info.get("path"), info.get("sha256")) for name, info in manifest.get("inputs", {}).items()],
        columns=["input", "path", "sha256"],
    )
    parts.append(_table(inputs, "inputs-table"))
    layers = pd.DataFrame(
        [
            (name, info.get("features_total"), info.get("features_kept"), info.get("samples"))
            for name, info in manifest.get("layers", {}).items()
        ],
        columns=["layer", "features", "features kept", "samples"],
    )
    parts += ["<h3>Features kept per layer</h3>", _table(layers, "layers-table", numeric=("features", "features kept", "samples"))]

    analyses = pd.DataFrame(manifest.get("analyses", []))
    if len(analyses):
        columns = [c for c in ("layer", "exposure", "adjustment", "model", "n", "n_cases", "n_controls") if c in analyses.columns]
        shown = analyses[columns].astype(object).where(analyses[columns].notna(), None)
        parts += [
            "<h2>Analyses</h2><p>Participants, cases and controls of every analysis.</p>",
            _table(shown, "analyses-table", numeric=("n", "n_cases", "n_controls")),
        ]

    parts.append(
        "<h2>Inflation</h2><p>Genomic inflation factor \u03bb = median(\u03c7\u00b2\u2081 quantile of p) / 0.4549, per analysis "
        "(also <code>figures/inflation.tsv</code>).</p>"
    )
    parts.append(_table(figures.inflation, "inflation-table", numeric=("n_p", "lambda")))

    timings = pd.DataFrame(list(manifest.get("timings_seconds", {}).items()), columns=["step", "seconds"])
    parts += ["<h2>Run</h2><h3>Timings</h3>", _table(timings, "timings-table", numeric=("seconds",))]
    warnings = manifest.get("warnings") or []
    parts.append("<h3>Warnings</h3>")
    parts.append(
        '<ul id="warnings">' + "".join(f"<li>{_escape(w)}</li>" for w in warnings) + "</ul>" if warnings else '<p id="warnings">none</p>'
    )

    figure_files = [f"{f.name}{suffix}" for f in figures.figures for suffix in (".svg", ".png")] + ["inflation.tsv"]
    parts += ["<h2>Output files</h2>", _output_links(run_dir, report, run_dir / "figures", figure_files)]

    parts.append("<h2>Figures</h2>")
    for layer in dict.fromkeys(f.layer for f in figures.figures):
        parts.append(f"<h3>{_escape(layer)}</h3>")
        parts += [
            f'<p class="note figure-note">{_escape(model)}: {_escape(n)}</p>' for (lay, model), n in feature_notes.items() if lay == layer
        ]
        for figure in (f for f in figures.figures if f.layer == layer):
            data = base64.b64encode(figure.svg).decode("ascii")
            parts.append(
                f'<figure id="figure-{_escape(figure.name)}" data-kind="{figure.kind}" data-layer="{_escape(figure.layer)}" '
                f'data-model="{_escape(figure.model)}"><img class="report-figure" alt="{_escape(figure.title)}" '
                f'src="data:image/svg+xml;base64,{data}"><figcaption>{_escape(figure.title)} '
                f'(<a href="{_escape(_relative(run_dir / "figures" / (figure.name + ".png"), report))}">PNG</a>)</figcaption></figure>'
            )
    # The heatmaps' marks as data, for readers who want the cells and for checks.
    marks = figures.marks.astype(object).where(figures.marks.notna(), None).to_dict(orient="records")
    marks_json = json.dumps(marks).replace("</", "<\\/")  # no "</script>" inside the data
    parts.append(f'<script type="application/json" id="heatmap-marks">{marks_json}</script>')
    parts.append("</body></html>")
    return "\n".join(parts), figures


def _relative(path: Path, report: Path) -> str:
    return Path(os.path.relpath(path.resolve(), report.parent.resolve())).as_posix()


def report_is_current(run_dir: Path) -> bool:
    """Whether ``run_dir/report.html`` and its figures were written after the run's ``manifest.json`` (the run did not change since)."""
    report, manifest, inflation = run_dir / "report.html", run_dir / "manifest.json", run_dir / "figures" / "inflation.tsv"
    if not (report.is_file() and manifest.is_file() and inflation.is_file()):
        return False
    written = manifest.stat().st_mtime_ns
    return report.stat().st_mtime_ns >= written and inflation.stat().st_mtime_ns >= written


def write_report(run_dir: Path, out: Path | None = None, *, top: int = 30, features_top: int = FEATURES_TOP) -> Path:
    """Write a finished run's figures and a self-contained HTML report of it.

    The figures (SVG and PNG) and ``inflation.tsv`` go to ``run_dir/figures``;
    the page shows what ran (plan, inputs with checksums, analyses with their
    participants, features kept, timings, warnings), what was found (the
    associations with q below the plan's ``fdr.alpha`` per layer and model, the
    inflation factor of every analysis) and the figures, inline. Everything is
    read from the run's output files; nothing is refitted.

    Parameters
    ----------
    run_dir
        Output folder of a finished ``scalable-assoc run`` (or :func:`run_study`).
    out
        Where to write the page (default ``run_dir/report.html``).
    top
        Features in each layer's heatmap: those significant (q < alpha) somewhere with the smallest q.
    features_top
        Associations drawn per layer x model as per-feature plots (the values each model saw, by group or
        against the exposure): those with the smallest q among q < alpha under the base adjustment set; 0 draws none.

    Returns
    -------
    Path
        The page written.

    Raises
    ------
    DataError
        ``run_dir`` is not a finished run (a file is missing, the run is not
        finished, or its plan changed since); nothing is written.
    UserInputError
        ``top`` is not positive, or ``features_top`` is negative.

    Examples
    --------
    >>> from scalable_assoc import write_report
    >>> path = write_report(tmp / "results")
    >>> path.name
    'report.html'
    """
    if top < 1:
        raise UserInputError(f"top={top}: give a positive number of features for the heatmaps")
    if features_top < 0:
        raise UserInputError(f"features_top={features_top}: give the number of associations to plot per layer and model (0: none)")
    run_dir = Path(run_dir)
    report = Path(out) if out is not None else run_dir / "report.html"
    page, figures = render_report(run_dir, report, top, features_top)
    write_figures(figures, run_dir / "figures")

    def write(temporary: Path) -> None:
        temporary.write_text(page, encoding="utf-8")

    write_atomically(report, write)
    logger.info("wrote %s (%d figures in %s)", report, len(figures.figures), run_dir / "figures")
    return report
