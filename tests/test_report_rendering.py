"""Rendering report figures: deterministic bytes, the same in a helper process, and screen thinning that hides nothing."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from scalable_assoc.report.figures import screen_thin
from scalable_assoc.report.rendering import PARALLEL_FIGURES, FigureRenderer, render_figure, render_figures


def _figures() -> list[Figure]:
    figures = []
    for i in range(PARALLEL_FIGURES):
        figure = Figure(layout="constrained")
        axes = figure.add_subplot()
        axes.plot(np.arange(10), np.arange(10) * i, ".", rasterized=True)
        axes.imshow(np.eye(3) * i)  # clip paths and images: ids that matplotlib draws at random without a fixed salt
        figure.suptitle(f"figure {i}")
        figures.append(figure)
    return figures


def test_a_figure_renders_to_the_same_bytes_every_time() -> None:
    assert render_figure(_figures()[1]) == render_figure(_figures()[1])


def test_figures_rendered_in_a_helper_process_are_the_same_bytes() -> None:
    assert render_figures(_figures(), workers=2) == render_figures(_figures(), workers=1)


def test_figures_rendered_by_helpers_started_ahead_are_the_same_bytes() -> None:
    with FigureRenderer(workers=2) as renderer:
        figures = _figures()  # drawn while the helper starts
        assert renderer.render(figures) == render_figures(_figures(), workers=1)


def test_helpers_started_ahead_and_not_needed_are_stopped() -> None:
    with FigureRenderer(workers=2) as renderer:
        started = list(renderer._helpers)
        assert len(started) == 1
        rendered = renderer.render(_figures()[: PARALLEL_FIGURES - 1])  # too few figures for a helper: all rendered here
    assert rendered == [render_figure(figure) for figure in _figures()[: PARALLEL_FIGURES - 1]]
    assert all(helper._process is None for helper in started)


def test_screen_thin_keeps_every_forced_point_and_one_point_per_cell() -> None:
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=100_000), rng.exponential(size=100_000)
    keep = y > 8.0
    mask = screen_thin(x, y, keep=keep, cells=100)
    assert mask[keep].all()
    cells = np.floor((x - x.min()) / np.ptp(x) * 100).astype(int) * 101 + np.floor((y - y.min()) / np.ptp(y) * 100).astype(int)
    assert set(cells[mask]) == set(cells)  # every occupied cell is drawn
    assert mask.sum() < 0.2 * x.size
