"""A run's report as one self-contained HTML file: what ran, on what, what was found, and the figures.

Everything is inline (CSS, figures as SVG data URIs); the page loads nothing
from anywhere, so it can be mailed or archived with the run.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from scalable_assoc.errors import DataError, UserInputError
from scalable_assoc.io.atomic import write_atomically
from scalable_assoc.io.runstate import read_status
from scalable_assoc.report.diversity import diversity_report
from scalable_assoc.report.feature_figures import FEATURES_TOP, draw_feature_figures
from scalable_assoc.report.figures import RunFigures, draw_run_figures, render_drawn, write_figures
from scalable_assoc.report.meta_html import folder_kind, render_combined_report
from scalable_assoc.report.page import REPORT_CSS, escape, figure_element, html_table, output_links, relative_href
from scalable_assoc.report.rendering import FigureRenderer
from scalable_assoc.results.run_outputs import read_run

logger = logging.getLogger(__name__)

#: Files a finished run always has; the report refuses a folder without them.
REQUIRED = ("manifest.json", "results.parquet", "significant_results.tsv", "adjustment_survival.tsv")


def check_run_folder(run_dir: Path) -> None:
    """Refuse a folder that is not a finished run (naming the folder and what is missing), before anything is written."""
    if not run_dir.is_dir():
        raise DataError(f"{run_dir} is not a folder; give the output folder of a finished 'scalable-assoc run'")
    missing = [name for name in REQUIRED if not (run_dir / name).is_file()]
    if missing:
        raise DataError(
            f"{run_dir} is not a finished run: {', '.join(missing)} missing; give the output folder of a finished 'scalable-assoc run' "
            "(or of 'meta' or 'pool': there is no meta_manifest.json or pool_manifest.json either)"
        )
    status = read_status(run_dir)
    if status is not None and status.state != "finished":
        raise DataError(
            f"{run_dir}: the run there is {status.state}, not finished; report on it once 'scalable-assoc status' says finished"
        )
    _check_run_format(run_dir)


#: What the report reads of each file; a run written by an older version may lack some.
REPORTED_COLUMNS = {
    "results.parquet": ("layer", "feature", "exposure", "adjustment", "model", "beta", "se", "p", "q"),
    "adjustment_survival.tsv": ("layer", "exposure", "model", "adjustment", "significant_base", "still_significant"),
}
REPORTED_MANIFEST_KEYS = ("plan_hash", "inputs", "layers", "analyses")


def _check_run_format(run_dir: Path) -> None:
    """Refuse a run written in an older format (naming the file and what it lacks) instead of failing halfway through."""
    try:
        columns = {
            "results.parquet": set(pq.read_schema(run_dir / "results.parquet").names),
            "adjustment_survival.tsv": set(pd.read_csv(run_dir / "adjustment_survival.tsv", sep="\t", nrows=0).columns),
        }
        manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, pa.ArrowException) as error:
        raise DataError(f"{run_dir}: its output files cannot be read ({type(error).__name__}); rerun 'scalable-assoc run'") from None
    for name, wanted in REPORTED_COLUMNS.items():
        lacking = [c for c in wanted if c not in columns[name]]
        if lacking:
            raise DataError(
                f"{run_dir / name} lacks the column(s) {', '.join(lacking)}: the run was written by an older scalable_assoc; "
                "rerun 'scalable-assoc run' into this folder (finished chunks are reused) and report again"
            )
    lacking = [key for key in REPORTED_MANIFEST_KEYS if key not in manifest]
    if lacking:
        raise DataError(
            f"{run_dir / 'manifest.json'} lacks {', '.join(lacking)}: the run was written by an older scalable_assoc; "
            "rerun 'scalable-assoc run' into this folder and report again"
        )


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
    # Helper processes on idle cores start now and render the run's figures while the per-feature ones are drawn.
    with FigureRenderer() as renderer:
        drawn, inflation, marks = draw_run_figures(results, survival, list(plan.adjustments), alpha, top)
        renderer.submit([d.figure for d in drawn])
        feature_notes: dict[tuple[str, str], str] = {}
        if features_top > 0:  # per-feature plots of the top associations, and the joint presence/abundance figure
            extra, feature_notes = draw_feature_figures(run, features_top)
            renderer.submit([d.figure for d in extra])
            drawn += extra
        figures = RunFigures(render_drawn(drawn, renderer.results()), inflation, marks)
    diversity = diversity_report(run, report)  # plan diversity: alpha by case/control, PERMANOVA (empty without)

    title = f"{escape(manifest.get('plan_name') or plan.name)}: association study report"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{title}</title><style>{REPORT_CSS}</style></head><body>",
        f"<h1>{title}</h1>",
        f'<p class="muted">plan hash <code id="plan-hash">{escape(manifest.get("plan_hash"))}</code>, '
        f"scalable_assoc {escape(manifest.get('version'))}, plan <code>{escape(manifest.get('plan'))}</code>, "
        f"FDR: {escape(plan.fdr.method)} by {escape(' x '.join(plan.fdr.by))}, q &lt; {alpha:g}</p>",
        _contents(bool(diversity.parts)),
    ]
    # What a reader came for first (findings, then the pictures), then how it was obtained.
    parts += _findings_section(results, significant_rows, survival, alpha)
    parts += _figures_section(run_dir, report, figures, feature_notes)
    parts += diversity.parts
    figures.figures.extend(diversity.figures)  # written and linked with the others; shown in their own section
    parts += _inflation_section(figures.inflation)
    parts += _analyses_section(manifest)
    parts += _inputs_section(manifest)
    parts += _run_section(manifest)
    figure_files = [f"{f.name}{suffix}" for f in figures.figures for suffix in (".svg", ".png")] + ["inflation.tsv"]
    parts += ['<h2 id="outputs">Output files</h2>', output_links(run_dir, report, run_dir / "figures", figure_files)]
    # The heatmaps' marks as data, for readers who want the cells and for checks.
    marks = figures.marks.astype(object).where(figures.marks.notna(), None).to_dict(orient="records")
    marks_json = json.dumps(marks).replace("</", "<\\/")  # no "</script>" inside the data
    parts.append(f'<script type="application/json" id="heatmap-marks">{marks_json}</script>')
    parts.append("</body></html>")
    return "\n".join(parts), figures


#: The page's sections: anchor and heading, in page order.
SECTIONS = (
    ("findings", "Findings"),
    ("figures", "Figures"),
    ("diversity", "Community diversity"),  # only for a run with alpha diversity rows or PERMANOVA
    ("inflation", "Inflation"),
    ("analyses", "Analyses"),
    ("inputs", "Inputs"),
    ("run", "Run"),
    ("outputs", "Output files"),
)


def _contents(diversity: bool) -> str:
    shown = [(anchor, heading) for anchor, heading in SECTIONS if diversity or anchor != "diversity"]
    links = " \u00b7 ".join(f'<a href="#{anchor}">{heading}</a>' for anchor, heading in shown)
    return f'<nav class="contents">{links}</nav>'


def _findings_section(results: pd.DataFrame, significant_rows: pd.DataFrame, survival: pd.DataFrame, alpha: float) -> list[str]:
    """Associations with q < alpha per layer and model, and how many of the base set's survive each further adjustment."""
    counts = significant_rows.groupby(["layer", "model"], sort=False).size().rename("significant (q < alpha)").reset_index()
    tested = results.groupby(["layer", "model"], sort=False).agg(rows=("p", "size"), estimated=("p", "count")).reset_index()
    findings = tested.merge(counts, on=["layer", "model"], how="left").fillna({"significant (q < alpha)": 0})
    findings["significant (q < alpha)"] = findings["significant (q < alpha)"].astype(int)
    parts = [
        '<h2 id="findings">Findings</h2>',
        f'<p>Associations with q &lt; {alpha:g}: <strong id="significant-count">{len(significant_rows)}</strong> '
        "(the rows of <code>significant_results.tsv</code>), per layer and model:</p>",
        html_table(findings, "significant-table", numeric=("rows", "estimated", "significant (q < alpha)")),
    ]
    followed = survival[survival["significant_base"].fillna(0) > 0]
    if len(followed):
        totals = followed.groupby(["layer", "model", "adjustment"], sort=False)[["significant_base", "still_significant"]].sum()
        share = (100.0 * totals["still_significant"] / totals["significant_base"]).map("{:.1f}%".format)
        cells = totals["still_significant"].astype(int).astype(str) + "/" + totals["significant_base"].astype(int).astype(str)
        table = (cells + " (" + share + ")").unstack("adjustment")
        table = table[list(dict.fromkeys(followed["adjustment"]))]  # the plan's order of the sets
        table = table.reindex(list(dict.fromkeys(zip(followed["layer"], followed["model"], strict=True)))).reset_index()
        parts += [
            "<p>Under further adjustment: still significant / significant under each exposure's base set, all exposures "
            "together, per later adjustment set (per exposure in <code>adjustment_survival.tsv</code> and the survival figures):</p>",
            html_table(table.astype(object).where(table.notna(), "-"), "survival-table", numeric=tuple(table.columns[2:])),
        ]
    return parts


def _figures_section(run_dir: Path, report: Path, figures: RunFigures, notes: dict[tuple[str, str], str]) -> list[str]:
    parts = ['<h2 id="figures">Figures</h2>']
    for layer in dict.fromkeys([f.layer for f in figures.figures] + [layer for layer, _ in notes]):
        parts.append(f"<h3>{escape(layer)}</h3>")
        parts += [f'<p class="note figure-note">{escape(model)}: {escape(n)}</p>' for (lay, model), n in notes.items() if lay == layer]
        parts += [
            figure_element(figure, relative_href(run_dir / "figures" / (figure.name + ".png"), report))
            for figure in figures.figures
            if figure.layer == layer
        ]
    return parts


def _inflation_section(inflation: pd.DataFrame) -> list[str]:
    return [
        '<h2 id="inflation">Inflation</h2><p>Genomic inflation factor \u03bb = median(\u03c7\u00b2\u2081 quantile of p) / 0.4549, '
        "per analysis (also <code>figures/inflation.tsv</code>).</p>",
        html_table(inflation, "inflation-table", numeric=("n_p", "lambda")),
    ]


def _analyses_section(manifest: dict) -> list[str]:
    analyses = pd.DataFrame(manifest.get("analyses", []))
    parts = ['<h2 id="analyses">Analyses</h2>']
    if not len(analyses):
        return [*parts, "<p>none recorded in the manifest</p>"]
    columns = [c for c in ("layer", "exposure", "adjustment", "model", "n", "n_cases", "n_controls") if c in analyses.columns]
    shown = analyses[columns].astype(object).where(analyses[columns].notna(), None)
    return [
        *parts,
        "<p>Participants, cases and controls of every analysis.</p>",
        html_table(shown, "analyses-table", numeric=("n", "n_cases", "n_controls")),
    ]


def _inputs_section(manifest: dict) -> list[str]:
    inputs = pd.DataFrame(
        [(name, info.get("path"), info.get("sha256")) for name, info in manifest.get("inputs", {}).items()],
        columns=["input", "path", "sha256"],
    )
    layers = pd.DataFrame(
        [
            (name, info.get("features_total"), info.get("features_kept"), info.get("samples"))
            for name, info in manifest.get("layers", {}).items()
        ],
        columns=["layer", "features", "features kept", "samples"],
    )
    return [
        '<h2 id="inputs">Inputs</h2>',
        html_table(inputs, "inputs-table"),
        "<h3>Features kept per layer</h3>",
        html_table(layers, "layers-table", numeric=("features", "features kept", "samples")),
    ]


#: Timings that are not phases of the run (they overlap the phases): shown in a note below the phases' table.
_NOT_PHASES = ("first_part", "first_task", "cluster_start_background")


def _timings_note(timings: dict) -> str:
    """The moments of :data:`_NOT_PHASES` as a sentence ("" when the run recorded none)."""
    parts = []
    if timings.get("first_part") is not None:
        parts.append(f"first layers handed to the cluster {timings['first_part']:.2f} s after the command started")
    if timings.get("first_task") is not None:
        parts.append(f"first task result {timings['first_task']:.2f} s after the command started")
    if timings.get("cluster_start_background") is not None:
        parts.append(
            f"the local cluster started in the background, while the study was prepared, in {timings['cluster_start_background']:.2f} s"
        )
    text = "; ".join(parts)
    return f'<p id="timings-note">{escape(text[:1].upper() + text[1:])}.</p>' if parts else ""


def _run_section(manifest: dict) -> list[str]:
    recorded = manifest.get("timings_seconds", {})
    phases = [(step, seconds) for step, seconds in recorded.items() if step not in _NOT_PHASES]
    timings = pd.DataFrame(phases, columns=["step", "seconds"])
    warnings = manifest.get("warnings") or []
    shown = '<ul id="warnings">' + "".join(f"<li>{escape(w)}</li>" for w in warnings) + "</ul>" if warnings else '<p id="warnings">none</p>'
    table = html_table(timings, "timings-table", numeric=("seconds",))
    return ['<h2 id="run">Run</h2><h3>Timings</h3>', table, _timings_note(recorded), "<h3>Warnings</h3>", shown]


def report_is_current(run_dir: Path) -> bool:
    """Whether ``run_dir/report.html`` and its figures were written after the run's ``manifest.json`` (the run did not change since)."""
    report, manifest, inflation = run_dir / "report.html", run_dir / "manifest.json", run_dir / "figures" / "inflation.tsv"
    if not (report.is_file() and manifest.is_file() and inflation.is_file()):
        return False
    written = manifest.stat().st_mtime_ns
    return report.stat().st_mtime_ns >= written and inflation.stat().st_mtime_ns >= written


def write_report(run_dir: Path, out: Path | None = None, *, top: int = 30, features_top: int = FEATURES_TOP) -> Path:
    """Write the figures and a self-contained HTML report of a finished run, meta-analysis or pooled folder.

    The figures (SVG and PNG) and ``inflation.tsv`` go to ``run_dir/figures``.
    For a run (``manifest.json``), the page shows what ran (plan, inputs with
    checksums, analyses with their participants, features kept, timings,
    warnings), what was found (the associations with q below the plan's
    ``fdr.alpha`` per layer and model, the inflation factor of every analysis)
    and the figures, inline. For a ``meta`` folder (``meta_manifest.json``) or a
    ``pool`` folder (``pool_manifest.json``) it shows the settings, the cohorts'
    files with checksums and participants, the rows combined and those with q
    below the manifest's alpha, warnings, and the figures
    (:mod:`scalable_assoc.report.meta_figures`): per layer x model, forest plots
    of the rows with the smallest p, the I^2 distribution and the cohorts'
    agreement in direction (meta); heatmap, QQ, volcano and adjustment forest
    as for a run (pool). Everything is read from the folder's files; nothing
    is refitted.

    Parameters
    ----------
    run_dir
        Output folder of a finished ``scalable-assoc run`` (or :func:`run_study`), ``meta`` or ``pool``.
    out
        Where to write the page (default ``run_dir/report.html``).
    top
        Features in each layer's heatmap: those significant (q < alpha) somewhere with the smallest q;
        for a meta folder, forest plots per layer x model (at most the 30 rows it keeps estimates of).
    features_top
        Associations drawn per layer x model of a run as per-feature plots (the values each model saw, by group or
        against the exposure): those with the smallest q among q < alpha under the base adjustment set; 0 draws none.

    Returns
    -------
    Path
        The page written.

    Raises
    ------
    DataError
        ``run_dir`` is not a finished run, meta or pool folder (a file is
        missing, the run is not finished, or its plan changed since); nothing is written.
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
    kind = folder_kind(run_dir) if run_dir.is_dir() else "run"
    if kind == "run":
        page, figures = render_report(run_dir, report, top, features_top)
    else:
        page, figures = render_combined_report(run_dir, report, kind, top)
    write_figures(figures, run_dir / "figures")

    def write(temporary: Path) -> None:
        temporary.write_text(page, encoding="utf-8")

    write_atomically(report, write)
    logger.info("wrote %s (%d figures in %s)", report, len(figures.figures), run_dir / "figures")
    return report
