"""A run's figures, drawn from its output files only (no statistics are recomputed but the inflation factor).

Per layer and model: a heatmap of beta (features x exposures, base adjustment set),
QQ plots with the genomic inflation factor, volcano plots, an adjustment forest and
the survival of associations under further adjustment. Each figure is drawn with
:class:`matplotlib.figure.Figure` (no pyplot, no global state, the Agg canvas) and
rendered to SVG and PNG bytes in memory by :func:`render_figure` (see
:mod:`scalable_assoc.report.rendering`: layout once, dense scatters rasterized, figures
on idle cores); :func:`write_figures` writes them. QQ and volcano plots draw one point
per screen cell (:func:`screen_thin`), every point of the QQ tail and every hit, so a run
with 100,000 features draws in seconds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from scipy.special import chdtri

from scalable_assoc.io.atomic import write_atomically, write_tsv
from scalable_assoc.report.rendering import PNG_DPI as PNG_DPI
from scalable_assoc.report.rendering import TITLE_Y, render_figures
from scalable_assoc.report.rendering import render_figure as render_figure
from scalable_assoc.results.summary import base_sets, sets_run

logger = logging.getLogger(__name__)

#: The median of the chi-squared distribution with one degree of freedom, as the genomic inflation factor is usually defined.
CHI2_1_MEDIAN = 0.4549
#: Nominal significance marked ``*`` in the heatmap (``**``: also q < the plan's alpha).
NOMINAL_P = 0.05
#: Associations shown in the adjustment forest, per layer and model.
FOREST_ROWS = 12
#: QQ points whose expected -log10 p is above this (the tail, where inflation and hits show) are all drawn.
QQ_TAIL = 2.0
#: Below the tail, and for the volcano's muted points, one point is drawn per cell of a grid this many cells across each axis
#: (finer than a panel's pixels, coarser than tens of thousands of overlapping markers):
#: the picture is the same, drawn in a fraction of the time.
SCREEN_CELLS = 600

_DIVERGING = "RdBu_r"
_HIGHLIGHT = "#c0392b"
_MUTED = "#9aa5b1"


@dataclass(frozen=True)
class RenderedFigure:
    """One figure rendered in memory: where it belongs and its SVG and PNG bytes."""

    name: str  # file stem inside figures/, e.g. "heatmap_species_lm"
    kind: str  # heatmap, qq, volcano, forest, survival
    layer: str
    model: str
    title: str
    svg: bytes
    png: bytes


@dataclass(frozen=True)
class DrawnFigure:
    """One figure drawn but not yet rendered: where it belongs and the matplotlib figure."""

    name: str
    kind: str
    layer: str
    model: str
    title: str
    figure: Figure


def render_drawn(drawn: Sequence[DrawnFigure], rendered: Sequence[tuple[bytes, bytes]] | None = None) -> list[RenderedFigure]:
    """Drawn figures with their SVG and PNG bytes: ``rendered`` (in the same order, e.g. from a
    :class:`~scalable_assoc.report.rendering.FigureRenderer`) or, without, rendered now by :func:`render_figures`.
    """
    if rendered is None:
        rendered = render_figures([d.figure for d in drawn])
    return [RenderedFigure(d.name, d.kind, d.layer, d.model, d.title, svg, png) for d, (svg, png) in zip(drawn, rendered, strict=True)]


@dataclass(frozen=True)
class RunFigures:
    """Every figure of a run, the inflation table and the heatmaps' marks (what each cell shows)."""

    figures: list[RenderedFigure] = field(default_factory=list)
    inflation: pd.DataFrame = field(default_factory=pd.DataFrame)
    #: layer, model, feature, exposure, adjustment, beta, p, q, mark ('', '*' or '**') for every heatmap cell
    marks: pd.DataFrame = field(default_factory=pd.DataFrame)


def short_label(feature: str, width: int = 48) -> str:
    """A feature's name for an axis: a MetaPhlAn lineage's last rank without its prefix (``k__...|s__Name`` -> ``Name``), shortened."""
    name = str(feature).split("|")[-1]
    if len(name) > 3 and name[1:3] == "__":
        name = name[3:]
    name = name.replace("_", " ")
    return name if len(name) <= width else name[: width - 1] + "\u2026"


def inflation_factors(results: pd.DataFrame) -> pd.DataFrame:
    """Genomic inflation factor per layer x model x exposure x adjustment.

    lambda = median over non-missing p of ``chi2.isf(p, 1)``, divided by
    :data:`CHI2_1_MEDIAN`; missing where no p-value is present.
    """
    keys = ["layer", "model", "exposure", "adjustment"]
    rows = []
    for key, group in results.groupby(keys, sort=False):
        p = group["p"].to_numpy(dtype=float)
        p = p[~np.isnan(p)]
        # chdtri(1, p) is scipy.stats.chi2.isf(p, 1) (the same function underneath), without importing scipy.stats (0.4 s)
        value = float(np.median(chdtri(1, p)) / CHI2_1_MEDIAN) if p.size else float("nan")
        rows.append((*key, int(p.size), value))
    return pd.DataFrame(rows, columns=[*keys, "n_p", "lambda"])


def screen_thin(x: np.ndarray, y: np.ndarray, keep: np.ndarray | None = None, cells: int = SCREEN_CELLS) -> np.ndarray:
    """Which points to draw so that no two fall into one cell of a ``cells`` x ``cells`` grid over their range (a boolean mask).

    The first point of each cell is kept, and every point where ``keep`` is true; markers
    are larger than a cell, so the points dropped are hidden under those drawn.
    """
    mask = np.zeros(x.size, dtype=bool) if keep is None else keep.copy()
    if not x.size:
        return mask
    cell_x = np.floor((x - x.min()) / max(float(np.ptp(x)), 1e-300) * cells).astype(np.int64)
    cell_y = np.floor((y - y.min()) / max(float(np.ptp(y)), 1e-300) * cells).astype(np.int64)
    _, first = np.unique(cell_x * (cells + 1) + cell_y, return_index=True)
    mask[first] = True
    return mask


def _empty(figure: Figure, text: str) -> None:
    axes = figure.add_subplot()
    axes.set_axis_off()
    axes.text(0.5, 0.5, text, ha="center", va="center", fontsize=11, wrap=True)


def heatmap(base: pd.DataFrame, significant_anywhere: pd.DataFrame, alpha: float, top: int) -> tuple[Figure, pd.DataFrame]:
    """Beta of the ``top`` features with the smallest q anywhere (features x exposures, base set), with marks.

    Returns the figure and its cells (feature, exposure, adjustment, beta, p, q, mark).
    """
    best = significant_anywhere.groupby("feature", sort=False)["q"].min().sort_values(kind="stable").head(top)
    features = list(best.index)
    exposures = list(dict.fromkeys(base["exposure"]))
    cells = base[base["feature"].isin(features)][["feature", "exposure", "adjustment", "beta", "p", "q"]].copy()
    p, q = cells["p"].to_numpy(dtype=float), cells["q"].to_numpy(dtype=float)
    nominal = np.nan_to_num(p, nan=1.0) < NOMINAL_P
    cells["mark"] = np.where(nominal & (np.nan_to_num(q, nan=1.0) < alpha), "**", np.where(nominal, "*", ""))
    figure = Figure(figsize=(max(4.0, 1.0 + 0.7 * len(exposures)), max(2.5, 1.2 + 0.28 * len(features))), layout="constrained")
    if not features:
        _empty(figure, f"no association with q < {alpha:g}")
        return figure, cells.iloc[0:0]
    beta = cells.pivot_table(index="feature", columns="exposure", values="beta", aggfunc="first", dropna=False)
    beta = beta.reindex(index=features, columns=exposures)
    marks = cells.pivot_table(index="feature", columns="exposure", values="mark", aggfunc="first").reindex(
        index=features, columns=exposures
    )
    finite = beta.to_numpy(dtype=float)
    limit = float(np.nanmax(np.abs(finite))) if np.isfinite(finite).any() else 1.0
    limit = limit if limit > 0 else 1.0
    axes = figure.add_subplot()
    axes.set_facecolor("#e5e5e5")  # no estimate
    image = axes.imshow(np.ma.masked_invalid(finite), aspect="auto", cmap=_DIVERGING, norm=TwoSlopeNorm(0.0, -limit, limit))
    for i in range(len(features)):
        for j in range(len(exposures)):
            mark = marks.iat[i, j]
            if isinstance(mark, str) and mark:
                dark = abs(finite[i, j]) > 0.6 * limit  # white marks stay readable on the scale's dark ends
                axes.text(j, i, mark, ha="center", va="center", fontsize=8, color="white" if dark else "black")
    axes.set_xticks(range(len(exposures)), exposures, rotation=45, ha="right")
    axes.set_yticks(range(len(features)), [short_label(f) for f in features], fontsize=7)
    figure.colorbar(image, ax=axes, label="beta", shrink=0.8)
    axes.set_title(f"* p < {NOMINAL_P:g}   ** also q < {alpha:g}", fontsize=8, loc="left", y=TITLE_Y)
    return figure, cells


def _grid(figure: Figure, panels: int, columns: int = 4):  # -> list of Axes
    # Fixed margins in inches instead of constrained layout: the panels' labels are short numbers and
    # exposure names, and solving the layout of many panels cost more than drawing them.
    columns = min(columns, max(panels, 1))
    rows = -(-max(panels, 1) // columns)
    width, height = 3.2 * columns, 3.0 * rows + 0.35  # 0.35 in for the suptitle
    figure.set_size_inches(width, height)
    figure.subplots_adjust(
        left=0.65 / width, right=1 - 0.15 / width, bottom=0.5 / height, top=1 - 0.65 / height, wspace=0.75 / 2.4, hspace=0.95 / 2.05
    )
    return [figure.add_subplot(rows, columns, i + 1) for i in range(panels)]


def qq_plot(rows: pd.DataFrame, inflation: pd.DataFrame, adjustment_order: Sequence[str]) -> Figure:
    """Observed against expected -log10 p, one panel per exposure, one series per adjustment set (lambda in the legend)."""
    figure = Figure()  # laid out by _grid
    exposures = list(dict.fromkeys(rows["exposure"]))
    lambdas = {(e, a): v for e, a, v in inflation[["exposure", "adjustment", "lambda"]].itertuples(index=False)}
    series = {key: group.to_numpy(dtype=float) for key, group in rows.groupby(["exposure", "adjustment"], sort=False)["p"]}
    for axes, exposure in zip(_grid(figure, len(exposures)), exposures, strict=True):
        top = 1.0
        for adjustment in [a for a in adjustment_order if (exposure, a) in series]:
            p = series[(exposure, adjustment)]
            p = np.sort(p[~np.isnan(p)])
            if not p.size:
                continue
            expected = -np.log10((np.arange(1, p.size + 1) - 0.5) / p.size)
            observed = -np.log10(np.clip(p, 1e-300, 1.0))
            top = max(top, float(expected.max()), float(observed.max()))
            shown = screen_thin(expected, observed, keep=expected > QQ_TAIL)  # lambda (legend) is computed on every p
            axes.plot(
                expected[shown],
                observed[shown],
                ".",
                markersize=3,
                rasterized=True,
                label=f"{adjustment}  \u03bb = {lambdas.get((exposure, adjustment), np.nan):.3f}",
            )
        axes.plot([0, top], [0, top], color=_MUTED, linewidth=0.8)
        axes.set_title(exposure, fontsize=9, y=TITLE_Y)
        axes.set_xlabel("expected -log10 p", fontsize=8)
        axes.set_ylabel("observed -log10 p", fontsize=8)
        axes.legend(fontsize=6, frameon=False, loc="upper left")
    return figure


def volcano(base: pd.DataFrame, alpha: float) -> Figure:
    """Beta against -log10 p under the base set, one panel per exposure; q < alpha highlighted."""
    figure = Figure()  # laid out by _grid
    exposures = list(dict.fromkeys(base["exposure"]))
    for axes, exposure in zip(_grid(figure, len(exposures)), exposures, strict=True):
        these = base[(base["exposure"] == exposure) & base["p"].notna() & base["beta"].notna()]
        hit = these["q"].lt(alpha).fillna(False).to_numpy(dtype=bool)
        y = -np.log10(np.clip(these["p"].to_numpy(dtype=float), 1e-300, 1.0))
        x = these["beta"].to_numpy(dtype=float)
        muted = ~hit & screen_thin(x, y, keep=hit)  # every hit is drawn; muted points hidden under others are not
        axes.scatter(x[muted], y[muted], s=6, color=_MUTED, rasterized=True, label="q \u2265 " + f"{alpha:g}")
        axes.scatter(x[hit], y[hit], s=10, color=_HIGHLIGHT, rasterized=True, label=f"q < {alpha:g} ({int(hit.sum())})")
        axes.axvline(0.0, color=_MUTED, linewidth=0.6)
        axes.set_title(f"{exposure} ({these['adjustment'].iat[0] if len(these) else ''})", fontsize=9, y=TITLE_Y)
        axes.set_xlabel("beta", fontsize=8)
        axes.set_ylabel("-log10 p", fontsize=8)
        axes.set_ylim(0, 1.3 * max(float(y.max()) if y.size else 1.0, 1.0))  # room above the points for the legend
        axes.legend(fontsize=6, frameon=False, loc="upper center", ncols=2)
    return figure


def forest(rows: pd.DataFrame, base: pd.DataFrame, alpha: float, adjustment_order: Sequence[str]) -> Figure:
    """Beta with 95% CI (beta +/- 1.96 se) under every adjustment set, for the top significant associations under the base set."""
    chosen = base[base["q"].lt(alpha).fillna(False).to_numpy(dtype=bool)].sort_values(["q", "p"], kind="stable").head(FOREST_ROWS)
    figure = Figure(figsize=(7.0, max(2.5, 1.2 + 0.45 * len(chosen))), layout="constrained")
    if not len(chosen):
        _empty(figure, f"no association with q < {alpha:g} under the base adjustment set")
        return figure
    present = set(rows["adjustment"].unique())  # once, not per adjustment set (a Python pass over every row)
    sets = [a for a in adjustment_order if a in present]
    shown = rows[rows["feature"].isin(set(chosen["feature"])).to_numpy(dtype=bool)]  # index the shown features' rows, not every row
    indexed = shown.set_index(["feature", "exposure", "adjustment"])
    axes = figure.add_subplot()
    step = 0.7 / max(len(sets), 1)
    colours = [f"C{i}" for i in range(len(sets))]
    for i, (feature, exposure) in enumerate(chosen[["feature", "exposure"]].itertuples(index=False)):
        for k, adjustment in enumerate(sets):
            key = (feature, exposure, adjustment)
            if key not in indexed.index:
                continue
            row = indexed.loc[key]
            row = row.iloc[0] if isinstance(row, pd.DataFrame) else row
            beta, se = float(row["beta"]), float(row["se"])
            if not np.isfinite(beta):
                continue
            y = i + (k - (len(sets) - 1) / 2) * step
            half = 1.96 * se if np.isfinite(se) else 0.0
            axes.errorbar(beta, y, xerr=half, fmt="o", markersize=3, color=colours[k], label=adjustment if i == 0 else None)
    axes.axvline(0.0, color=_MUTED, linewidth=0.6)
    axes.set_yticks(
        range(len(chosen)), [f"{short_label(f, 36)} \u00b7 {e}" for f, e in chosen[["feature", "exposure"]].itertuples(index=False)]
    )
    axes.tick_params(axis="y", labelsize=7)
    axes.invert_yaxis()
    axes.set_xlabel("beta (95% CI)")
    axes.legend(fontsize=7, frameon=False, loc="center left", bbox_to_anchor=(1.01, 0.5), title="adjustment", title_fontsize=7)
    return figure


def survival_chart(survival: pd.DataFrame) -> Figure:
    """Share of base-set significant associations still significant under each further adjustment set, per exposure."""
    figure = Figure(figsize=(7.0, 3.5), layout="constrained")
    shown = survival[survival["significant_base"].fillna(0).astype(int) > 0]
    if not len(shown):
        _empty(figure, "no association significant under the base set, so none to follow under further adjustment")
        return figure
    exposures = list(dict.fromkeys(shown["exposure"]))
    sets = list(dict.fromkeys(shown["adjustment"]))
    axes = figure.add_subplot()
    width = 0.8 / len(sets)
    for k, adjustment in enumerate(sets):
        part = shown[shown["adjustment"] == adjustment].set_index("exposure").reindex(exposures)
        total = part["significant_base"].to_numpy(dtype=float)
        kept = part["still_significant"].to_numpy(dtype=float)
        share = np.divide(100.0 * kept, total, out=np.full_like(total, np.nan), where=total > 0)
        x = np.arange(len(exposures)) + (k - (len(sets) - 1) / 2) * width
        bars = axes.bar(x, np.nan_to_num(share), width=width, label=f"+ {adjustment}", color=f"C{k}")
        for bar, n, m in zip(bars, kept, total, strict=True):
            if np.isfinite(m):
                axes.annotate(
                    f"{int(n)}/{int(m)}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=6
                )
    axes.set_xticks(range(len(exposures)), exposures, rotation=30, ha="right")
    axes.set_ylim(0, 115)
    axes.set_ylabel("% still significant")
    axes.legend(fontsize=7, frameon=False, ncols=min(len(sets), 4), loc="upper center")
    return figure


def draw_run_figures(
    results: pd.DataFrame,
    survival: pd.DataFrame | None,
    adjustment_order: Sequence[str],
    alpha: float,
    top: int = 30,
    *,
    estimate: str = "beta",
) -> tuple[list[DrawnFigure], pd.DataFrame, pd.DataFrame]:
    """Every figure of a run (or of a pooled folder), drawn but not rendered, per layer and model (nothing is written).

    Parameters
    ----------
    results
        ``results.parquet`` of the run.
    survival
        ``adjustment_survival.tsv`` of the run; None for results without one (a pooled folder): then no
        survival chart, and the adjustment forest only for a layer and model fitted under several sets.
    adjustment_order
        The plan's adjustment sets in plan order (the first a group ran under is its base).
    alpha
        The plan's FDR threshold (``fdr.alpha``).
    top
        Features in each heatmap: those with the smallest q anywhere among those with q < alpha.
    estimate
        What the heatmap's title calls the estimates (``pooled beta`` for a pooled folder).

    Returns
    -------
    tuple of list of DrawnFigure, DataFrame and DataFrame
        The figures (render them with :func:`render_drawn`), the inflation table and the heatmap marks (as in :class:`RunFigures`).
    """
    inflation = inflation_factors(results)
    results = results.reset_index(drop=True)
    flags = results.assign(
        _base=results["adjustment"].to_numpy(dtype=object) == base_sets(results, sets_run(results, adjustment_order)),
        _significant=results["q"].lt(alpha).fillna(False).to_numpy(dtype=bool),
    )
    drawn_figures: list[DrawnFigure] = []
    marks: list[pd.DataFrame] = []
    several_models = results["model"].nunique() > 1
    for (layer, model), rows in flags.groupby(["layer", "model"], sort=False):
        label = f"{layer}, {model}" if several_models else str(layer)
        base, anywhere = rows[rows["_base"]], rows[rows["_significant"]]
        heat, cells = heatmap(base, anywhere, alpha, top)
        marks.append(cells.assign(layer=layer, model=model))
        these_lambdas = inflation[(inflation["layer"] == layer) & (inflation["model"] == model)]
        drawn = {
            "heatmap": (heat, f"{estimate} under the base adjustment set, top {top} features by q: {label}"),
            "qq": (qq_plot(rows, these_lambdas, adjustment_order), f"QQ plots with the inflation factor \u03bb: {label}"),
            "volcano": (volcano(base, alpha), f"volcano plots under the base adjustment set: {label}"),
        }
        if survival is not None or rows["adjustment"].nunique() > 1:
            drawn["forest"] = (forest(rows, base, alpha, adjustment_order), f"top associations under every adjustment set: {label}")
        if survival is not None:
            drawn["survival"] = (
                survival_chart(survival[(survival["layer"] == layer) & (survival["model"] == model)]),
                f"associations still significant after further adjustment: {label}",
            )
        for kind, (figure, title) in drawn.items():
            figure.suptitle(title, fontsize=10)
            drawn_figures.append(DrawnFigure(f"{kind}_{file_stem(layer)}_{file_stem(model)}", kind, str(layer), str(model), title, figure))
        logger.info("drew the figures of %s", label)
    columns = ["layer", "model", "feature", "exposure", "adjustment", "beta", "p", "q", "mark"]
    all_marks = pd.concat(marks, ignore_index=True)[columns] if marks else pd.DataFrame(columns=columns)
    return drawn_figures, inflation, all_marks


def run_figures(
    results: pd.DataFrame,
    survival: pd.DataFrame | None,
    adjustment_order: Sequence[str],
    alpha: float,
    top: int = 30,
    *,
    estimate: str = "beta",
) -> RunFigures:
    """Every figure of a run (or of a pooled folder), rendered in memory: :func:`draw_run_figures` then :func:`render_drawn`."""
    drawn, inflation, marks = draw_run_figures(results, survival, adjustment_order, alpha, top, estimate=estimate)
    return RunFigures(render_drawn(drawn), inflation, marks)


def file_stem(text: object) -> str:
    """``text`` as part of a figure's file name: letters, digits, '-' and '_' kept, anything else '-'."""
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in str(text))


def _bytes_writer(data: bytes) -> Callable[[Path], None]:
    def write(temporary: Path) -> None:
        temporary.write_bytes(data)

    return write


def write_figures(figures: RunFigures, folder: Path) -> list[Path]:
    """Write every figure as SVG and PNG, and ``inflation.tsv``, into ``folder`` (each file atomically)."""
    written = []
    for figure in figures.figures:
        for suffix, data in ((".svg", figure.svg), (".png", figure.png)):
            written.append(write_atomically(folder / f"{figure.name}{suffix}", _bytes_writer(data)))
    written.append(write_tsv(folder / "inflation.tsv", figures.inflation))
    return written
