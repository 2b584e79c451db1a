"""The figures of a meta-analysis or pooled folder (``meta`` / ``pool`` output), drawn from its files only.

Meta-analysis, per layer and model: forest plots of the rows with the smallest p
(each cohort's beta with its 95% CI, the combined estimate as a diamond, tau^2 and
I^2), the distribution of I^2, and how often the cohorts agree in direction. Pooled
model: the run figures (heatmap, QQ, volcano, adjustment forest) of
:mod:`scalable_assoc.report.figures`, reused as they are.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Polygon

from scalable_assoc.report.figures import (
    RenderedFigure,
    RunFigures,
    file_stem,
    inflation_factors,
    render_figure,
    run_figures,
    short_label,
)

logger = logging.getLogger(__name__)

#: Width of the forest plots' grid of panels.
FOREST_COLUMNS = 3
#: I^2 (percent) from which heterogeneity is called substantial in the overview (Higgins' rule of thumb).
I2_SUBSTANTIAL = 50.0

_COHORT = "#3e4c59"
_POOLED = "#c0392b"
_MUTED = "#9aa5b1"
KEYS = ["layer", "feature", "exposure", "adjustment", "model"]


def _note(figure: Figure, text: str) -> None:
    axes = figure.add_subplot()
    axes.set_axis_off()
    axes.text(0.5, 0.5, text, ha="center", va="center", fontsize=11, wrap=True)


def meta_forests(estimates: pd.DataFrame, combined: pd.DataFrame, count: int) -> Figure:
    """Forest plots of ``count`` rows, one panel each: every cohort's beta +/- 1.96 se and the combined estimate (diamond).

    Parameters
    ----------
    estimates
        ``meta_forest_estimates`` rows of one layer x model (key columns, cohort, beta, se, n).
    combined
        ``meta_results`` rows of the same keys (key columns, beta, se, p, tau2, i2), in the order to draw.
    count
        Panels to draw (the first ``count`` rows of ``combined``).

    Returns
    -------
    Figure
        A grid of :data:`FOREST_COLUMNS` panels per line.
    """
    chosen = combined.head(count)
    figure = Figure(layout="constrained")
    if not len(chosen):
        figure.set_size_inches(7.0, 2.0)
        _note(figure, "no combined row with a p-value")
        return figure
    columns = min(FOREST_COLUMNS, len(chosen))
    lines = -(-len(chosen) // columns)
    cohorts_each = estimates.groupby(KEYS, sort=False).size()
    height = 0.9 + 0.28 * (max(int(cohorts_each.max()), 1) + 1) if len(cohorts_each) else 2.0
    figure.set_size_inches(4.2 * columns, max(2.2, height) * lines)
    grouped = {key: rows for key, rows in estimates.groupby(KEYS, sort=False)}
    for i, row in enumerate(chosen.itertuples(index=False)):
        axes = figure.add_subplot(lines, columns, i + 1)
        key = tuple(getattr(row, c) for c in KEYS)
        these = grouped.get(key, estimates.iloc[0:0])
        beta, se = these["beta"].to_numpy(dtype=float), these["se"].to_numpy(dtype=float)
        y = np.arange(len(these), dtype=float)
        axes.errorbar(beta, y, xerr=1.96 * se, fmt="s", markersize=3, color=_COHORT, linewidth=1)
        pooled_y = float(len(these))
        b, half = float(row.beta), 1.96 * float(row.se)
        if np.isfinite(b) and np.isfinite(half):
            diamond = [(b - half, pooled_y), (b, pooled_y + 0.3), (b + half, pooled_y), (b, pooled_y - 0.3)]
            axes.add_patch(Polygon(diamond, closed=True, color=_POOLED))
        axes.axvline(0.0, color=_MUTED, linewidth=0.6)
        labels = [f"{c} (n={n})" for c, n in these[["cohort", "n"]].itertuples(index=False)] + ["combined"]
        axes.set_yticks(np.arange(len(labels)), labels, fontsize=6)
        axes.set_ylim(len(labels) - 0.5, -0.5)
        lows = np.concatenate([beta - 1.96 * se, [b - half]])
        highs = np.concatenate([beta + 1.96 * se, [b + half]])
        finite = np.isfinite(lows) & np.isfinite(highs)
        if finite.any():
            span = max(float(highs[finite].max() - lows[finite].min()), 1e-9)
            axes.set_xlim(min(float(lows[finite].min()), 0.0) - 0.05 * span, max(float(highs[finite].max()), 0.0) + 0.05 * span)
        axes.tick_params(axis="x", labelsize=6)
        axes.set_title(
            f"{short_label(row.feature, 30)} \u00b7 {row.exposure} \u00b7 {row.adjustment}\n"
            f"\u03c4\u00b2 = {float(row.tau2):.3g}, I\u00b2 = {float(row.i2):.0f}%, p = {float(row.p):.2g}",
            fontsize=7,
        )
    figure.supxlabel("beta (95% CI: beta \u00b1 1.96 se)", fontsize=8)
    return figure


def heterogeneity_overview(rows: pd.DataFrame) -> Figure:
    """The distribution of I^2 over the rows combined from at least 2 cohorts, one panel per exposure (share >= 50% in the title)."""
    figure = Figure(layout="constrained")
    several = rows[rows["k"] >= 2]
    exposures = list(dict.fromkeys(several["exposure"]))
    if not exposures:
        figure.set_size_inches(7.0, 2.0)
        _note(figure, "no row was combined from 2 or more cohorts, so there is no heterogeneity to show")
        return figure
    columns = min(4, len(exposures))
    lines = -(-len(exposures) // columns)
    figure.set_size_inches(3.2 * columns, 2.8 * lines)
    bins = [5.0 * i for i in range(21)]  # 0, 5, ..., 100
    for i, exposure in enumerate(exposures):
        axes = figure.add_subplot(lines, columns, i + 1)
        i2 = several.loc[several["exposure"] == exposure, "i2"].dropna().to_numpy(dtype=float)
        axes.hist(i2, bins=bins, color=_COHORT)
        axes.axvline(I2_SUBSTANTIAL, color=_POOLED, linewidth=0.8, linestyle="--")
        share = 100.0 * float((i2 >= I2_SUBSTANTIAL).mean()) if i2.size else float("nan")
        axes.set_title(f"{exposure}: {share:.0f}% of {i2.size} rows with I\u00b2 \u2265 {I2_SUBSTANTIAL:g}%", fontsize=8)
        axes.set_xlabel("I\u00b2 (%)", fontsize=8)
        axes.set_ylabel("rows", fontsize=8)
    return figure


def direction_shares(rows: pd.DataFrame, alpha: float) -> pd.DataFrame:
    """Per exposure: rows combined from >= 2 cohorts, and the % whose cohorts all agree in sign, among all and among q < alpha.

    Parameters
    ----------
    rows
        ``meta_results`` rows (``exposure``, ``k``, ``q``, ``direction``).
    alpha
        Significance level.

    Returns
    -------
    pd.DataFrame
        One row per exposure: ``exposure, rows, agree_pct, significant, significant_agree_pct``.
    """
    several = rows[rows["k"] >= 2]
    signs = several["direction"].astype(str).str.replace("?", "", regex=False)
    length = signs.str.len()
    agree = (length > 0) & ((signs.str.count(r"\+") == length) | (signs.str.count("-") == length))
    significant = several["q"].lt(alpha).fillna(False)
    frame = pd.DataFrame({"exposure": several["exposure"], "agree": agree.to_numpy(), "significant": significant.to_numpy()})
    out = []
    for exposure, group in frame.groupby("exposure", sort=False):
        hits = group[group["significant"]]
        out.append(
            (
                exposure,
                len(group),
                100.0 * float(group["agree"].mean()),
                len(hits),
                100.0 * float(hits["agree"].mean()) if len(hits) else float("nan"),
            )
        )
    return pd.DataFrame(out, columns=["exposure", "rows", "agree_pct", "significant", "significant_agree_pct"])


def direction_consistency(shares: pd.DataFrame, alpha: float) -> Figure:
    """Bars of :func:`direction_shares`: % of rows whose cohorts agree in sign, all rows and q < alpha, per exposure."""
    figure = Figure(figsize=(max(4.5, 1.2 + 0.9 * len(shares)), 3.5), layout="constrained")
    if not len(shares):
        _note(figure, "no row was combined from 2 or more cohorts")
        return figure
    axes = figure.add_subplot()
    x = np.arange(len(shares))
    for offset, column, count, label, colour in (
        (-0.2, "agree_pct", "rows", "all rows", _MUTED),
        (0.2, "significant_agree_pct", "significant", f"q < {alpha:g}", _POOLED),
    ):
        values = shares[column].to_numpy(dtype=float)
        bars = axes.bar(x + offset, np.nan_to_num(values), width=0.4, color=colour, label=label)
        for bar, n, value in zip(bars, shares[count], values, strict=True):
            text = f"n={int(n)}" if np.isfinite(value) else "none"
            axes.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=6)
    axes.set_xticks(x, list(shares["exposure"]), rotation=30, ha="right")
    axes.set_ylim(0, 115)
    axes.set_ylabel("% rows: every cohort the same sign")
    axes.legend(fontsize=7, frameon=False, loc="upper center", ncols=2)
    return figure


def _rendered(kind: str, layer: object, model: object, figure: Figure, title: str) -> RenderedFigure:
    figure.suptitle(title, fontsize=10)
    svg, png = render_figure(figure)
    return RenderedFigure(f"{kind}_{file_stem(layer)}_{file_stem(model)}", kind, str(layer), str(model), title, svg, png)


def meta_figures(results: pd.DataFrame, estimates: pd.DataFrame | None, alpha: float, top: int) -> RunFigures:
    """Every figure of a meta-analysis folder, in memory, per layer and model (nothing is written).

    Parameters
    ----------
    results
        ``meta_results.parquet`` (r rows).
    estimates
        ``meta_forest_estimates.parquet``, or None for a folder written before it existed (no forest plots then).
    alpha
        Significance level (the manifest's ``settings.alpha``).
    top
        Forest plots per layer x model: the ``top`` rows with the smallest p, at most as many as ``estimates`` holds.

    Returns
    -------
    RunFigures
        The figures (forest, heterogeneity, direction per layer x model), the inflation factors of the
        combined p-values and, as ``marks``, the direction shares per layer x model x exposure.
    """
    figures: list[RenderedFigure] = []
    shares: list[pd.DataFrame] = []
    several_models = results["model"].nunique() > 1
    for (layer, model), rows in results.groupby(["layer", "model"], sort=False):
        label = f"{layer}, {model}" if several_models else str(layer)
        if estimates is not None:
            held = estimates[(estimates["layer"] == layer) & (estimates["model"] == model)]
            shown = rows.merge(held[KEYS].drop_duplicates(), on=KEYS).sort_values("p", kind="stable")
            count = min(top, len(shown))
            figures.append(
                _rendered(
                    "meta_forest",
                    layer,
                    model,
                    meta_forests(held, shown, count),
                    f"the {count} rows with the smallest p, each cohort and combined: {label}",
                )
            )
        figures.append(_rendered("heterogeneity", layer, model, heterogeneity_overview(rows), f"heterogeneity, I\u00b2: {label}"))
        these = direction_shares(rows, alpha)
        shares.append(these.assign(layer=layer, model=model))
        figures.append(_rendered("direction", layer, model, direction_consistency(these, alpha), f"cohorts agreeing in direction: {label}"))
        logger.info("drew the figures of %s", label)
    columns = ["layer", "model", "exposure", "rows", "agree_pct", "significant", "significant_agree_pct"]
    marks = pd.concat(shares, ignore_index=True)[columns] if shares else pd.DataFrame(columns=columns)
    return RunFigures(figures, inflation_factors(results), marks)


def pool_figures(results: pd.DataFrame, alpha: float, top: int) -> RunFigures:
    """Every figure of a pooled folder per layer and model, as a run's: heatmap, QQ, volcano (adjustment forest with several sets).

    Parameters
    ----------
    results
        ``pooled_results.parquet`` (r rows; the run's key columns, beta, se, p, q).
    alpha
        Significance level (the manifest's ``settings.alpha``).
    top
        Features in each heatmap.

    Returns
    -------
    RunFigures
        The figures, the inflation factors and the heatmaps' marks.
    """
    order = list(dict.fromkeys(results["adjustment"]))  # as pooled: the first set a group ran under is its base
    return run_figures(results, None, order, alpha, top, estimate="pooled beta")
