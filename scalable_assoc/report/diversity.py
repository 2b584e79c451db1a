"""The report's "Community diversity" section: alpha diversity by case/control and the PERMANOVA table and figure.

Drawn from the run's files only, when the run has any (plan ``diversity``): the
per-sample metrics of ``alpha_diversity.parquet`` (written by
:mod:`scalable_assoc.engine.alpha`), grouped by the cases and controls of each
binary exposure as the plan's queries select them in the metadata
(:func:`~scalable_assoc.io.metadata.exposure_values`: every sample with the metric
in either group, not only the participants of one adjustment set), with the
base set's p of the ``alpha:<layer>`` rows in each panel's title; and
``permanova.parquet`` (:mod:`scalable_assoc.engine.permanova`) as a table and as
R² per exposure and adjustment set, one panel per layer x distance.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from scalable_assoc.errors import UserInputError
from scalable_assoc.io.metadata import exposure_values, load_metadata
from scalable_assoc.report.figures import RenderedFigure, file_stem, render_figures
from scalable_assoc.report.page import escape, figure_element, html_table, relative_href
from scalable_assoc.results.alpha_names import ALPHA_LAYER_PREFIX, ALPHA_VALUES_FILE, alpha_column, alpha_layer_name
from scalable_assoc.results.run_outputs import RunOutputs

logger = logging.getLogger(__name__)

#: PERMANOVA columns the report's table shows, and their headings.
PERMANOVA_SHOWN = {
    "layer": "layer",
    "distance": "distance",
    "exposure": "exposure",
    "adjustment": "adjustment",
    "n": "n",
    "r2": "R\u00b2",
    "f": "F",
    "p": "p",
    "permutations": "permutations",
}

_CASE, _CONTROL, _MUTED = "#c0392b", "#2c7fb8", "#9aa5b1"


@dataclass(frozen=True)
class DiversityReport:
    """The section's figures (kinds ``alpha`` and ``permanova``) and its HTML parts; empty when the run has no diversity outputs."""

    figures: list[RenderedFigure] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)


def has_diversity(run_dir: Path, results: pd.DataFrame) -> bool:
    """Whether the run has alpha diversity rows or a PERMANOVA file."""
    return bool(results["layer"].astype(str).str.startswith(ALPHA_LAYER_PREFIX).any()) or (run_dir / "permanova.parquet").is_file()


def _groups(run: RunOutputs, sample_ids: list[str]) -> dict[str, np.ndarray]:
    """Per binary exposure of the plan, ``(n,)`` 1 case / 0 control / NaN neither, over ``sample_ids``."""
    plan, manifest = run.plan, run.manifest
    metadata = load_metadata(plan.metadata, plan.sample_id_column)
    rows = metadata.index.get_indexer(pd.Index(sample_ids, dtype=object))
    min_cases = (manifest.get("min_cases") or {}).get("used", plan.min_cases)
    groups = {}
    for spec in plan.exposures:
        try:
            exposure = exposure_values(metadata, plan.metadata, spec, min_cases)
        except UserInputError as error:  # the run ran it; a metadata file edited since does not stop the report
            logger.warning("alpha diversity by '%s' not drawn: %s", spec.name, error)
            continue
        if exposure.binary:
            values = np.full(len(sample_ids), np.nan)
            values[rows >= 0] = exposure.values[rows[rows >= 0]]
            groups[spec.name] = values
    return groups


def _base_p(results: pd.DataFrame, layer: str, metric: str, exposure: str, adjustments: list[str]) -> str:
    rows = results[(results["layer"] == alpha_layer_name(layer)) & (results["feature"] == metric) & (results["exposure"] == exposure)]
    for adjustment in adjustments:
        row = rows[rows["adjustment"] == adjustment]
        if len(row):
            return f"{adjustment}: \u03b2 = {float(row['beta'].iat[0]):.3g}, p = {float(row['p'].iat[0]):.2g}"
    return ""


def alpha_figure(values: np.ndarray, groups: dict[str, np.ndarray], subtitles: dict[str, str], metric: str) -> Figure:
    """One metric by control/case of every binary exposure: a box plot with the points, one panel per exposure."""
    columns = min(4, max(len(groups), 1))
    rows = -(-max(len(groups), 1) // columns)
    width, height = 3.0 * columns, 2.9 * rows + 0.4
    figure = Figure(figsize=(width, height))
    figure.subplots_adjust(
        left=0.6 / width, right=1 - 0.15 / width, bottom=0.55 / height, top=1 - 0.75 / height, wspace=0.7 / 2.3, hspace=1.05 / 1.85
    )
    if not groups:
        empty = figure.add_subplot()
        empty.set_axis_off()
        empty.text(0.5, 0.5, "no binary exposure to group the samples by", ha="center", va="center")
        return figure
    jitter = np.random.default_rng(0)
    for k, (exposure, membership) in enumerate(groups.items()):
        axes: Axes = figure.add_subplot(rows, columns, k + 1)
        shown = ~np.isnan(values)
        data = [values[shown & (membership == code)] for code in (0.0, 1.0)]
        axes.boxplot(data, positions=[0, 1], widths=0.5, showfliers=False, medianprops={"color": "black"})
        for position, (points, colour) in enumerate(zip(data, (_CONTROL, _CASE), strict=True)):
            axes.scatter(
                position + jitter.uniform(-0.18, 0.18, points.size), points, s=3, alpha=0.5, color=colour, linewidths=0, rasterized=True
            )
        axes.set_xticks([0, 1], [f"control\n(n={data[0].size})", f"case\n(n={data[1].size})"])
        axes.tick_params(labelsize=6)
        axes.set_title(f"{exposure}\n{subtitles.get(exposure, '')}", fontsize=7)
        axes.set_ylabel(metric, fontsize=7)
    return figure


def permanova_figure(permanova: pd.DataFrame) -> Figure:
    """R² per exposure (y) for each adjustment set (grouped horizontal bars), one panel per layer x distance."""
    panels = list(dict.fromkeys(zip(permanova["layer"], permanova["distance"], strict=True)))
    exposures = list(dict.fromkeys(permanova["exposure"]))
    sets = list(dict.fromkeys(permanova["adjustment"]))
    columns = min(3, max(len(panels), 1))
    rows = -(-max(len(panels), 1) // columns)
    panel_height = max(2.0, 0.8 + 0.3 * len(exposures) * max(len(sets), 1) ** 0.5)
    figure = Figure(figsize=(3.8 * columns + 1.4, panel_height * rows + 0.5), layout="constrained")
    step = 0.8 / max(len(sets), 1)
    for k, (layer, distance) in enumerate(panels):
        axes = figure.add_subplot(rows, columns, k + 1)
        these = permanova[(permanova["layer"] == layer) & (permanova["distance"] == distance)]
        for j, adjustment in enumerate(sets):
            part = these[these["adjustment"] == adjustment].set_index("exposure").reindex(exposures)
            y = np.arange(len(exposures)) + (j - (len(sets) - 1) / 2) * step
            r2 = part["r2"].to_numpy(dtype=float)
            bars = axes.barh(y, np.nan_to_num(r2), height=step, color=f"C{j}", label=adjustment if k == 0 else None)
            for bar, p in zip(bars, part["p"].to_numpy(dtype=float), strict=True):
                if np.isfinite(p):
                    axes.annotate(f" p = {p:.2g}", (bar.get_width(), bar.get_y() + bar.get_height() / 2), va="center", fontsize=6)
        axes.margins(x=0.25)  # room for the p labels
        axes.set_yticks(range(len(exposures)), exposures, fontsize=7)
        axes.invert_yaxis()
        axes.set_xlabel("R\u00b2", fontsize=8)
        axes.tick_params(axis="x", labelsize=7)
        axes.set_title(f"{layer}, {distance}", fontsize=9)
    figure.legend(fontsize=7, frameon=False, loc="outside right center", title="adjustment", title_fontsize=7)
    return figure


def diversity_report(run: RunOutputs, report: Path) -> DiversityReport:
    """The section of a run with alpha diversity rows or a PERMANOVA file (figures rendered in memory); empty otherwise."""
    run_dir, results = run.run_dir, run.results
    if not has_diversity(run_dir, results):
        return DiversityReport()
    adjustments = list(run.plan.adjustments)
    drawn: list[tuple[str, str, str, str, str, Figure]] = []  # name, kind, layer, model, title, figure
    alpha_notes: list[str] = []
    alpha_layers = list(dict.fromkeys(str(x)[len(ALPHA_LAYER_PREFIX) :] for x in results["layer"] if str(x).startswith(ALPHA_LAYER_PREFIX)))
    values_path = run_dir / ALPHA_VALUES_FILE
    if alpha_layers and not values_path.is_file():
        alpha_notes.append(f"alpha diversity figures not drawn: {ALPHA_VALUES_FILE} is missing (rerun 'scalable-assoc run')")
    elif alpha_layers:
        values = pd.read_parquet(values_path)
        ids = values["sample_id"].astype(str).tolist()
        try:
            groups = _groups(run, ids)
        except (OSError, UserInputError) as error:
            groups = None
            alpha_notes.append(f"alpha diversity figures not drawn: the metadata cannot be read ({error})")
        for layer in alpha_layers if groups is not None else []:
            metrics = results.loc[results["layer"] == alpha_layer_name(layer), "feature"]
            for metric in dict.fromkeys(str(m) for m in metrics):
                column = alpha_column(layer, metric)
                if column not in values.columns:
                    continue
                subtitles = {e: _base_p(results, layer, metric, e, adjustments) for e in groups}  # type: ignore[union-attr]
                figure = alpha_figure(values[column].to_numpy(dtype=float), groups, subtitles, metric)  # type: ignore[arg-type]
                title = f"alpha diversity ({metric}) of {layer} by control/case of each binary exposure (every sample with the metric)"
                figure.suptitle(f"{metric} of {layer} by control/case", fontsize=9)
                name = f"alpha_{file_stem(layer)}_{file_stem(metric)}"
                drawn.append((name, "alpha", alpha_layer_name(layer), metric, title, figure))
    permanova_path = run_dir / "permanova.parquet"
    permanova = pd.read_parquet(permanova_path) if permanova_path.is_file() else None
    if permanova is not None and len(permanova):
        figure = permanova_figure(permanova)
        title = "PERMANOVA R\u00b2 per exposure and adjustment set, per layer and distance"
        figure.suptitle(title, fontsize=10)
        drawn.append(("permanova", "permanova", "", "permanova", title, figure))
    figures = [
        RenderedFigure(name, kind, layer, model, title, svg, png)
        for (name, kind, layer, model, title, _), (svg, png) in zip(drawn, render_figures([d[-1] for d in drawn]), strict=True)
    ]

    def element(figure: RenderedFigure) -> str:
        return figure_element(figure, relative_href(run_dir / "figures" / (figure.name + ".png"), report))

    parts = ['<h2 id="diversity">Community diversity</h2>']
    if alpha_layers:
        parts.append(
            "<h3>Alpha diversity</h3><p>Per-sample metrics (<code>alpha_diversity.parquet</code>) by control and case of each binary "
            "exposure; the fitted rows are those of layer <code>alpha:&lt;layer&gt;</code> in the results (panel titles: the base "
            "adjustment set's \u03b2 and p).</p>"
        )
        parts += [f'<p class="note">{escape(note)}</p>' for note in alpha_notes]
        parts += [element(f) for f in figures if f.kind == "alpha"]
    if permanova is not None:
        shown = permanova[list(PERMANOVA_SHOWN)].rename(columns=PERMANOVA_SHOWN)
        # Tables of runs before restricted permutations existed have no such column: they permuted freely.
        within = permanova["permuted_within"].dropna().unique() if "permuted_within" in permanova else []
        strata = f" Participants were permuted only within their <code>{escape(str(within[0]))}</code> clusters." if len(within) else ""
        parts += [
            "<h3>PERMANOVA</h3><p>Variance in community distance explained by each exposure under each adjustment set "
            f"(<code>permanova.tsv</code>).{strata}</p>",
            html_table(
                shown.astype(object).where(shown.notna(), None), "permanova-table", numeric=("n", "R\u00b2", "F", "p", "permutations")
            ),
        ]
        parts += [element(f) for f in figures if f.kind == "permanova"]
    return DiversityReport(figures, parts)
