"""The report of a meta-analysis or pooled folder (``meta`` / ``pool`` output) as one self-contained HTML file.

Like a run's report: everything inline (CSS, figures as SVG data URIs), nothing
fetched; read from the folder's files only, nothing recombined.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from scalable_assoc.errors import DataError
from scalable_assoc.report.figures import RunFigures
from scalable_assoc.report.meta_figures import meta_figures, pool_figures
from scalable_assoc.report.page import REPORT_CSS, escape, figure_element, html_table, output_links, relative_href

logger = logging.getLogger(__name__)

#: The manifest that marks each kind of folder, and the files a finished one of that kind always has.
COMBINED_REQUIRED = {
    "meta": ("meta_manifest.json", "meta_results.parquet", "feature_coverage.tsv"),
    "pool": ("pool_manifest.json", "pooled_results.parquet", "feature_coverage.tsv"),
}
_RESULTS = {"meta": "meta_results.parquet", "pool": "pooled_results.parquet"}
_FOREST_FILE = "meta_forest_estimates.parquet"


def folder_kind(folder: Path) -> str:
    """``meta`` or ``pool`` when ``folder`` holds that command's manifest, else ``run``."""
    for kind, required in COMBINED_REQUIRED.items():
        if (folder / required[0]).is_file():
            return kind
    return "run"


def check_combined_folder(folder: Path, kind: str) -> None:
    """Refuse a ``meta`` / ``pool`` folder that lacks a file its command always writes (naming them), before anything is written."""
    missing = [name for name in COMBINED_REQUIRED[kind] if not (folder / name).is_file()]
    if missing:
        raise DataError(f"{folder} is not a finished '{kind}' output folder: {', '.join(missing)} missing; rerun 'scalable-assoc {kind}'")


def _cohort_tables(manifest: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    cohorts = manifest.get("cohorts", [])
    files = pd.DataFrame(
        [(c.get("cohort"), c.get("file"), c.get("sha256"), c.get("analysis_hash"), c.get("plan_name")) for c in cohorts],
        columns=["cohort", "file", "sha256", "analysis hash", "plan"],
    )
    if not any("samples" in c for c in cohorts):
        return files, None
    layers = list(dict.fromkeys(layer for c in cohorts for layer in (c.get("samples") or {})))
    samples = pd.DataFrame(
        [[c.get("cohort")] + [(c.get("samples") or {}).get(layer) for layer in layers] for c in cohorts], columns=["cohort", *layers]
    )
    return files, samples.astype(object).where(samples.notna(), None)


def render_combined_report(folder: Path, report: Path, kind: str, top: int = 30) -> tuple[str, RunFigures]:
    """The page of a ``meta`` or ``pool`` folder and the figures it shows (nothing written).

    Parameters
    ----------
    folder
        Output folder of ``scalable-assoc meta`` or ``pool``.
    report
        Where the HTML will be written (links are relative to it).
    kind
        ``meta`` or ``pool`` (:func:`folder_kind`).
    top
        Forest plots per layer x model (meta; at most what ``meta_forest_estimates`` holds) or features per heatmap (pool).

    Returns
    -------
    tuple of str and RunFigures
        The page and the figures to write into ``folder/figures``.
    """
    check_combined_folder(folder, kind)
    manifest = json.loads((folder / COMBINED_REQUIRED[kind][0]).read_text(encoding="utf-8"))
    settings = manifest.get("settings", {})
    alpha = float(settings.get("alpha", 0.05))
    results = pd.read_parquet(folder / _RESULTS[kind])
    forest_file = folder / _FOREST_FILE
    estimates = pd.read_parquet(forest_file) if kind == "meta" and forest_file.is_file() else None
    figures = meta_figures(results, estimates, alpha, top) if kind == "meta" else pool_figures(results, alpha, top)
    cohorts = manifest.get("cohorts", [])
    what = "Meta-analysis" if kind == "meta" else "Pooled model"
    title = f"{what} of {len(cohorts)} cohorts: report"
    significant = int(results["q"].lt(alpha).fillna(False).sum())
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(title)}</title><style>{REPORT_CSS}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        f'<p class="muted">scalable_assoc <span id="version">{escape(manifest.get("version"))}</span>, '
        f"written {escape(manifest.get('created'))} by <code>scalable-assoc {kind}</code>, q &lt; {alpha:g}</p>",
    ]

    counts = results.assign(_hit=results["q"].lt(alpha).fillna(False))
    findings = (
        counts.groupby(["layer", "model"], sort=False)
        .agg(rows=("p", "size"), estimated=("p", "count"), significant=("_hit", "sum"))
        .reset_index()
        .rename(columns={"significant": "significant (q < alpha)"})
    )
    parts += [
        "<h2>Findings</h2>",
        f'<p>Rows combined: <strong id="rows-combined">{len(results)}</strong>. Rows with q &lt; {alpha:g}: '
        f'<strong id="significant-count">{significant}</strong> (of <code>{_RESULTS[kind]}</code>), per layer and model:</p>',
        html_table(findings, "significant-table", numeric=("rows", "estimated", "significant (q < alpha)")),
    ]

    parts.append("<h2>Settings</h2>")
    shown_settings = pd.DataFrame(
        [(k, ", ".join(map(str, v)) if isinstance(v, list) else v) for k, v in settings.items()], columns=["setting", "value"]
    )
    parts.append(html_table(shown_settings.astype(object), "settings-table"))

    files, samples = _cohort_tables(manifest)
    parts += ["<h2>Inputs</h2><p>The cohorts' summary-statistics files, with their SHA-256.</p>", html_table(files, "inputs-table")]
    if samples is not None:
        parts += [
            "<h3>Participants per cohort and layer</h3>",
            html_table(samples, "participants-table", numeric=tuple(samples.columns[1:])),
        ]
    else:
        parts.append('<p class="note" id="participants-note">Participants per cohort are not recorded in this manifest.</p>')

    if kind == "meta":
        parts.append(
            "<h2>Heterogeneity and direction</h2><p>Rows combined from 2 or more cohorts whose cohorts all have the same sign of beta "
            "(<code>direction</code>), among all rows and among those with q &lt; alpha, per exposure:</p>"
        )
        shares = figures.marks.rename(
            columns={"agree_pct": "% same sign", "significant": "q < alpha", "significant_agree_pct": "% same sign (q < alpha)"}
        )
        parts.append(html_table(shares, "direction-table", numeric=("rows", "% same sign", "q < alpha", "% same sign (q < alpha)")))
    parts.append(
        "<h2>Inflation</h2><p>Genomic inflation factor \u03bb = median(\u03c7\u00b2\u2081 quantile of p) / 0.4549 of the combined "
        "p-values, per analysis (also <code>figures/inflation.tsv</code>).</p>"
    )
    parts.append(html_table(figures.inflation, "inflation-table", numeric=("n_p", "lambda")))

    warnings = manifest.get("warnings") or []
    parts.append("<h2>Warnings</h2>")
    parts.append(
        '<ul id="warnings">' + "".join(f"<li>{escape(w)}</li>" for w in warnings) + "</ul>" if warnings else '<p id="warnings">none</p>'
    )

    figure_files = [f"{f.name}{suffix}" for f in figures.figures for suffix in (".svg", ".png")] + ["inflation.tsv"]
    parts += ["<h2>Output files</h2>", output_links(folder, report, folder / "figures", figure_files)]

    parts.append("<h2>Figures</h2>")
    if kind == "meta" and estimates is None:
        parts.append(
            f'<p class="note" id="forest-note">No forest plots: this folder has no <code>{_FOREST_FILE}</code> (it was written by an '
            "earlier version of <code>scalable-assoc meta</code>, which kept no per-cohort estimates); rerun <code>meta</code> "
            "to get them.</p>"
        )
    for layer in dict.fromkeys(f.layer for f in figures.figures):
        parts.append(f"<h3>{escape(layer)}</h3>")
        for figure in (f for f in figures.figures if f.layer == layer):
            parts.append(figure_element(figure, relative_href(folder / "figures" / (figure.name + ".png"), report)))
    parts.append("</body></html>")
    return "\n".join(parts), figures
