"""Rendering report figures: deterministic bytes, the same in a helper process, and screen thinning that hides nothing."""

from __future__ import annotations

import shutil
import sys

import numpy as np
import pytest
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


def test_figures_submitted_to_helpers_started_ahead_come_back_in_order_as_the_same_bytes() -> None:
    figures = _figures()
    with FigureRenderer(workers=3) as renderer:
        renderer.submit(figures[:3])  # the helpers may start on these while the others are "drawn"
        renderer.submit(figures[3:])
        rendered = renderer.results()
    assert rendered == [render_figure(figure) for figure in _figures()]


def test_helpers_given_no_figures_end() -> None:
    with FigureRenderer(workers=2) as renderer:
        started = list(renderer._helpers)
        assert len(started) == 1
    assert all(helper._process.returncode == 0 for helper in started)  # told there are no more figures, not killed


def test_screen_thin_keeps_every_forced_point_and_one_point_per_cell() -> None:
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=100_000), rng.exponential(size=100_000)
    keep = y > 8.0
    mask = screen_thin(x, y, keep=keep, cells=100)
    assert mask[keep].all()
    cells = np.floor((x - x.min()) / np.ptp(x) * 100).astype(int) * 101 + np.floor((y - y.min()) / np.ptp(y) * 100).astype(int)
    assert set(cells[mask]) == set(cells)  # every occupied cell is drawn
    assert mask.sum() < 0.2 * x.size


def test_figures_of_a_helper_that_dies_are_rendered_here(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "executable", shutil.which("false") or "/bin/false")  # the helper exits at once
    with FigureRenderer(workers=2) as renderer:
        rendered = renderer.render(_figures())
    assert rendered == [render_figure(figure) for figure in _figures()]
