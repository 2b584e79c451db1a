"""Figures of the methods benchmark: the files written, their size, and the data drawn."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from scalable_assoc.report.methods_figures import (
    FIGURE_DPI,
    LEGEND_INCHES,
    PANEL_INCHES,
    QQ_TAIL_RANKS,
    null_qq_figure,
    null_qq_plot,
    power_fdr_figure,
    power_fdr_plot,
    qq_points,
)


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _summary() -> pd.DataFrame:
    rows = []
    for scenario in ("global_null", "baseline"):
        for i, (model, transform) in enumerate([("lm", "clr"), ("lm", "log"), ("prevalence", "-"), ("joint", "log")]):
            for adjustment in ("adjusted", "unadjusted"):
                rows.append(
                    {
                        "scenario": scenario,
                        "method": f"{model}/{transform}/{adjustment}",
                        "model": model,
                        "transform": transform,
                        "adjustment": adjustment,
                        "power": np.nan if scenario == "global_null" else 0.1 + 0.2 * i + (adjustment == "adjusted") * 0.05,
                        "power_se": np.nan if scenario == "global_null" else 0.01 * (i + 1),
                        "fdr": 0.01 * i + (adjustment == "unadjusted") * 0.1,
                        "fdr_se": 0.005,
                    }
                )
    return pd.DataFrame(rows)


def test_power_fdr_figure_file_and_size(tmp_path: Path) -> None:
    path = power_fdr_figure(_summary(), tmp_path / "figures" / "power_fdr.png", alpha=0.05)
    assert path == tmp_path / "figures" / "power_fdr.png" and path.stat().st_size > 10_000
    # two scenarios: one row of two panels plus the legend column
    expected = (round((2 * PANEL_INCHES[0] + LEGEND_INCHES) * FIGURE_DPI), round((PANEL_INCHES[1] + 0.5) * FIGURE_DPI))
    assert _png_size(path) == expected


def test_power_fdr_plot_draws_every_method_at_its_fdr_and_power() -> None:
    summary = _summary()
    figure = power_fdr_plot(summary, alpha=0.05)
    panels = [axes for axes in figure.axes if axes.get_title()]
    assert [axes.get_title().split("\n")[0] for axes in panels] == ["global_null", "baseline"]
    assert "power undefined" in panels[0].get_title()
    for axes, scenario in zip(panels, ("global_null", "baseline"), strict=True):
        drawn = {
            line.get_gid(): (line.get_xdata()[0], line.get_ydata()[0], line.get_markerfacecolor())
            for line in axes.get_lines()
            if line.get_gid()
        }
        rows = summary[summary["scenario"] == scenario].set_index("method")
        assert set(drawn) == set(rows.index)
        for method, (x, y, face) in drawn.items():
            assert x == pytest.approx(rows.loc[method, "fdr"])
            assert y == pytest.approx(0.0 if scenario == "global_null" else rows.loc[method, "power"])
            assert (face == "white") == (rows.loc[method, "adjustment"] == "unadjusted")
        # the alpha line
        assert any(np.allclose(line.get_xdata(), 0.05) for line in axes.get_lines() if not line.get_gid())
        assert "FDR" in axes.get_xlabel() and "power" in axes.get_ylabel()


def test_qq_points_against_order_statistics() -> None:
    rng = np.random.default_rng(4)
    p = rng.random(2000)
    p[5] = np.nan
    expected, observed, low, high = qq_points(p)
    kept = np.sort(p[~np.isnan(p)])
    n = kept.size
    assert expected.size < 400 and np.all(np.diff(expected) < 0)
    ranks = np.rint((n + 1) * 10 ** (-expected)).astype(int)
    assert ranks[:QQ_TAIL_RANKS].tolist() == list(range(1, QQ_TAIL_RANKS + 1)) and ranks[-1] == n
    np.testing.assert_allclose(observed, -np.log10(kept[ranks - 1]))
    np.testing.assert_allclose(low, -np.log10(stats.beta.ppf(0.975, ranks, n - ranks + 1)))
    assert np.all(low < expected) and np.all(expected < high)
    # about 95% of uniform order statistics fall in the pointwise band
    assert 0.8 < np.mean((observed >= low) & (observed <= high)) <= 1.0


def test_null_qq_figure_lines_per_method(tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    frames = []
    for method, model, transform, adjustment, power in [
        ("lm/clr/adjusted", "lm", "clr", "adjusted", 1.0),
        ("lm/clr/unadjusted", "lm", "clr", "unadjusted", 2.0),
        ("prevalence/-/adjusted", "prevalence", "-", "adjusted", 1.0),
    ]:
        p = rng.random(600) ** power
        frames.append(
            pd.DataFrame(
                {"scenario": "global_null", "method": method, "model": model, "transform": transform, "adjustment": adjustment, "p": p}
            )
        )
    pvalues = pd.concat(frames, ignore_index=True)
    figure = null_qq_plot(pvalues)
    panels = [axes for axes in figure.axes if axes.get_title()]
    assert [axes.get_title() for axes in panels] == ["global_null: lm", "global_null: prevalence"]
    lines = {line.get_gid(): line for axes in panels for line in axes.get_lines() if line.get_gid()}
    assert set(lines) == set(pvalues["method"])
    for method, line in lines.items():
        _, observed, _, _ = qq_points(pvalues.loc[pvalues["method"] == method, "p"].to_numpy())
        np.testing.assert_allclose(line.get_ydata(), observed)
        assert line.get_linestyle() == ("--" if method.endswith("unadjusted") else "-")
    # the anti-conservative method leaves the band at the top
    assert lines["lm/clr/unadjusted"].get_ydata()[0] > lines["lm/clr/adjusted"].get_ydata()[0]
    path = null_qq_figure(pvalues, tmp_path / "null_qq.png")
    assert _png_size(path) == (round(2 * PANEL_INCHES[0] * FIGURE_DPI), round((PANEL_INCHES[1] + 0.5) * FIGURE_DPI))


def test_empty_inputs_still_write_a_figure(tmp_path: Path) -> None:
    empty = _summary().iloc[:0]
    assert power_fdr_figure(empty, tmp_path / "a.png", 0.05).stat().st_size > 0
    nulls = pd.DataFrame(
        {"scenario": ["s"], "method": ["lm/clr/adjusted"], "model": ["lm"], "transform": ["clr"], "adjustment": ["adjusted"], "p": [np.nan]}
    )
    assert null_qq_figure(nulls, tmp_path / "b.png").stat().st_size > 0
