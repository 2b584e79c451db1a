"""Figures of the methods benchmark: power against empirical FDR per scenario, and QQ plots of the null p-values.

Drawn from the frames of :mod:`scalable_assoc.results.methods_metrics` only (no
statistics recomputed but the QQ plot's expected quantiles and band). Each figure is a
:class:`matplotlib.figure.Figure` (no pyplot, the Agg canvas): :func:`power_fdr_plot` and
:func:`null_qq_plot` build it (tests read the data drawn from it), :func:`power_fdr_figure`
and :func:`null_qq_figure` write it as a PNG of fixed size (:data:`PANEL_INCHES` per panel,
:data:`FIGURE_DPI`).

Encoding, the same in both figures: colour = model, marker = transform (power-FDR) or
line style = adjustment (QQ); filled markers / solid lines = adjusted for the confounder,
hollow markers / dashed lines = unadjusted.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from scipy import stats

from scalable_assoc.io.atomic import write_atomically

#: Resolution of the PNGs (screen and slides; the figures are summaries, not print plates).
FIGURE_DPI = 120
#: Size of one panel (width, height) in inches; a figure is a grid of them plus :data:`LEGEND_INCHES` on the right.
PANEL_INCHES = (4.0, 3.4)
#: Width of the legend column, inches.
LEGEND_INCHES = 2.2
#: Panels per row.
PANEL_COLUMNS = 3
#: QQ lines draw every one of their smallest p-values up to this rank and then about :data:`QQ_POINTS` more, evenly spaced in rank.
QQ_TAIL_RANKS = 50
QQ_POINTS = 250

MODEL_COLOURS = {
    "lm": "#1f77b4",
    "lm_nonzero": "#ff7f0e",
    "prevalence": "#2ca02c",
    "joint": "#d62728",
    "lmm": "#9467bd",
    "limma_voom": "#8c564b",
    "limma_trend": "#e377c2",
}
TRANSFORM_MARKERS = {"clr": "o", "log": "s", "ast": "^", "tss": "D", "-": "P"}
_OTHER_COLOUR = "#7f7f7f"
_OTHER_MARKER = "X"
_MUTED = "#9aa5b1"


def _colour(model: str) -> str:
    return MODEL_COLOURS.get(model, _OTHER_COLOUR)


def _marker(transform: str) -> str:
    return TRANSFORM_MARKERS.get(transform, _OTHER_MARKER)


def _grid(figure: Figure, panels: int, legend: bool) -> list[Axes]:
    """``panels`` axes in rows of :data:`PANEL_COLUMNS`, with a legend column on the right if ``legend``; sets the figure size."""
    columns = min(PANEL_COLUMNS, max(panels, 1))
    rows = math.ceil(max(panels, 1) / columns)
    right = LEGEND_INCHES if legend else 0.0
    width = PANEL_INCHES[0] * columns + right
    height = PANEL_INCHES[1] * rows + 0.5  # 0.5 in for the title
    figure.set_size_inches(width, height)
    figure.subplots_adjust(
        left=0.7 / width,
        right=1 - (right + 0.15) / width,
        bottom=0.55 / height,
        top=1 - 0.9 / height,
        wspace=0.9 / (PANEL_INCHES[0] - 0.9),
        hspace=1.0 / (PANEL_INCHES[1] - 1.0),
    )
    return [figure.add_subplot(rows, columns, i + 1) for i in range(panels)]


def _write_png(figure: Figure, path: Path) -> Path:
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=FIGURE_DPI)
    data = buffer.getvalue()

    def writer(temporary: Path) -> None:
        temporary.write_bytes(data)

    return write_atomically(Path(path), writer)


def _empty(figure: Figure, text: str) -> Figure:
    figure.set_size_inches(*PANEL_INCHES)
    axes = figure.add_subplot()
    axes.set_axis_off()
    axes.text(0.5, 0.5, text, ha="center", va="center", fontsize=10, wrap=True)
    return figure


def _legend(figure: Figure, models: list[str], transforms: list[str], transform_title: str) -> None:
    handles = [Line2D([], [], linestyle="", marker="o", color=_colour(m), label=m) for m in models]
    handles.append(Line2D([], [], linestyle="", label=""))
    handles += [Line2D([], [], linestyle="", marker=_marker(t), color="black", label=f"{transform_title} {t}") for t in transforms]
    handles.append(Line2D([], [], linestyle="", label=""))
    handles.append(Line2D([], [], linestyle="", marker="o", color="black", label="adjusted (filled)"))
    handles.append(Line2D([], [], linestyle="", marker="o", color="black", markerfacecolor="none", label="unadjusted (hollow)"))
    figure.legend(handles=handles, loc="upper right", fontsize=8, frameon=False, title="model / transform", title_fontsize=8)


def power_fdr_plot(summary: pd.DataFrame, alpha: float) -> Figure:
    """Power against empirical FDR, one panel per scenario, one point per method with +-1 Monte-Carlo SE bars.

    ``summary``: :func:`~scalable_assoc.results.methods_metrics.summarise_methods` rows
    (scenario, method, model, transform, adjustment, power, power_se, fdr, fdr_se). Scenarios
    without true effects (power NaN: the global null) draw their points at power 0 and say so
    in the panel title. A dotted vertical line marks ``alpha``. Each point's artist has the
    method as its ``gid``.
    """
    figure = Figure()
    if not len(summary):
        return _empty(figure, "no methods summarised")
    scenarios = list(dict.fromkeys(summary["scenario"]))
    for axes, scenario in zip(_grid(figure, len(scenarios), legend=True), scenarios, strict=True):
        rows = summary[summary["scenario"] == scenario]
        null = bool(rows["power"].isna().all())
        for row in rows.itertuples(index=False):
            colour = _colour(str(row.model))
            adjusted = row.adjustment == "adjusted"
            power = 0.0 if null else float(row.power)
            container = axes.errorbar(
                [float(row.fdr)],
                [power],
                xerr=[[_se(row.fdr_se)], [_se(row.fdr_se)]],
                yerr=None if null else [[_se(row.power_se)], [_se(row.power_se)]],
                marker=_marker(str(row.transform)),
                markersize=6,
                color=colour,
                markerfacecolor=colour if adjusted else "white",
                markeredgecolor=colour,
                elinewidth=0.8,
                capsize=2,
                linestyle="",
            )
            container.lines[0].set_gid(str(row.method))
        axes.axvline(alpha, color=_MUTED, linestyle=":", linewidth=1.0)
        axes.text(alpha, 0.03, f" alpha = {alpha:g}", color="dimgray", fontsize=7, va="bottom", transform=axes.get_xaxis_transform())
        top_fdr = float(np.nanmax((rows["fdr"] + rows["fdr_se"].fillna(0.0)).to_numpy(dtype=float), initial=0.0))
        axes.set_xlim(-0.02, max(2.5 * alpha, top_fdr * 1.08, 0.1))
        axes.set_ylim(-0.03, 1.03)
        title = f"{scenario}\n(global null: power undefined, drawn at 0)" if null else str(scenario)
        axes.set_title(title, fontsize=9)
        axes.set_xlabel("empirical FDR (share of discoveries false)", fontsize=8)
        axes.set_ylabel("power (share of true effects found)", fontsize=8)
        axes.tick_params(labelsize=7)
        axes.grid(alpha=0.3, linewidth=0.5)
    models = list(dict.fromkeys(summary["model"].astype(str)))
    transforms = list(dict.fromkeys(summary["transform"].astype(str)))
    _legend(figure, models, transforms, "transform")
    figure.suptitle(f"Power vs empirical FDR at BH q <= {alpha:g} (mean over replicates, bars +-1 Monte-Carlo SE)", fontsize=11)
    return figure


def _se(value: float) -> float:
    return 0.0 if value is None or not np.isfinite(value) else float(value)


def power_fdr_figure(summary: pd.DataFrame, path: Path, alpha: float) -> Path:
    """Write :func:`power_fdr_plot` as a PNG at ``path``; returns the path."""
    return _write_png(power_fdr_plot(summary, alpha), path)


def qq_points(p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The points a QQ line draws of one method's null p-values ``(n,)`` (NaN dropped).

    Returns ``(expected, observed, low, high)``, each ``(k,)`` in -log10 units for the ranks
    drawn (every rank up to :data:`QQ_TAIL_RANKS`, then about :data:`QQ_POINTS` evenly
    spaced ranks up to n): expected = -log10(i / (n + 1)), the mean of the i-th of n
    uniform order statistics; observed = -log10 of the i-th smallest p (p = 0 drawn at
    1e-300); low/high = the pointwise 95% band, the 0.975 and 0.025 quantiles of
    Beta(i, n - i + 1) in -log10.
    """
    p = np.sort(np.asarray(p, dtype=np.float64)[~np.isnan(p)])
    n = p.size
    if n == 0:
        empty = np.zeros(0)
        return empty, empty, empty, empty
    step = max(1, (n - QQ_TAIL_RANKS) // QQ_POINTS)
    ranks = np.unique(np.r_[np.arange(1, min(n, QQ_TAIL_RANKS) + 1), np.arange(QQ_TAIL_RANKS + 1, n + 1, step), n])
    ranks = ranks[ranks <= n]
    expected = -np.log10(ranks / (n + 1))
    observed = -np.log10(np.clip(p[ranks - 1], 1e-300, 1.0))
    low = -np.log10(stats.beta.ppf(0.975, ranks, n - ranks + 1))
    high = -np.log10(stats.beta.ppf(0.025, ranks, n - ranks + 1))
    return expected, observed, low, high


def null_qq_plot(pvalues: pd.DataFrame) -> Figure:
    """QQ plots of the null p-values: observed against expected -log10 p, one panel per (scenario, model), one line per method.

    ``pvalues``: columns scenario, method, model, transform, adjustment, p (the null features
    pooled over replicates, e.g. from :func:`~scalable_assoc.results.methods_metrics.null_pvalues`).
    Line colour = transform, solid = adjusted, dashed = unadjusted; the grey band is the
    pointwise 95% band of uniform p-values for the largest n in the panel. Each line has
    the method as its ``gid``.
    """
    figure = Figure()
    frame = pvalues[pvalues["p"].notna()]
    if not len(frame):
        return _empty(figure, "no null p-values")
    panels = list(dict.fromkeys(zip(frame["scenario"].astype(str), frame["model"].astype(str), strict=True)))
    transform_colours = dict(zip(TRANSFORM_MARKERS, ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#7f7f7f"], strict=True))
    groups = {key: rows for key, rows in frame.groupby(["scenario", "model"], sort=False)}
    for axes, key in zip(_grid(figure, len(panels), legend=False), panels, strict=True):
        rows = groups[key]
        n_max = int(rows.groupby("method").size().max())
        expected, _, low, high = qq_points(np.linspace(0, 1, n_max))
        axes.fill_between(expected, low, high, color=_MUTED, alpha=0.35, linewidth=0, label="95% band")
        top = float(expected.max())
        for (method, transform, adjustment), group in rows.groupby(["method", "transform", "adjustment"], sort=True):
            x, y, _, _ = qq_points(group["p"].to_numpy())
            top = max(top, float(y.max()))
            (line,) = axes.plot(
                x,
                y,
                linestyle="-" if adjustment == "adjusted" else "--",
                marker=".",
                markersize=2,
                linewidth=1.0,
                color=transform_colours.get(str(transform), "black"),
                label=f"{transform} {adjustment} (n = {len(group):,})",
            )
            line.set_gid(str(method))
        axes.plot([0, top], [0, top], color="black", linewidth=0.6)
        axes.set_title(f"{key[0]}: {key[1]}", fontsize=9)
        axes.set_xlabel("expected -log10 p (uniform)", fontsize=8)
        axes.set_ylabel("observed -log10 p", fontsize=8)
        axes.tick_params(labelsize=7)
        axes.legend(fontsize=6, frameon=False, loc="lower right")
    figure.suptitle("Null p-values against the uniform (pooled over replicates; band: pointwise 95%)", fontsize=11)
    return figure


def null_qq_figure(pvalues: pd.DataFrame, path: Path) -> Path:
    """Write :func:`null_qq_plot` as a PNG at ``path``; returns the path."""
    return _write_png(null_qq_plot(pvalues), path)
