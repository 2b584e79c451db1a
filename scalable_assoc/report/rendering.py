"""Rendering matplotlib figures to SVG and PNG bytes: one figure (:func:`render_figure`) or many on several cores (:func:`render_figures`).

This module imports only matplotlib, so the helper processes that render a report's
figures (``python -m scalable_assoc.report.rendering``) start in a fraction of a second.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import pickle
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

#: PNG resolution (print resolution).
PNG_DPI = 200
#: zlib level of the PNGs: 2 encodes in a third of the time of PIL's default 6, for files ~15% larger.
PNG_COMPRESSION = 2
#: Resolution of the rasterized parts of an SVG (dense scatters drawn with ``rasterized=True``).
SVG_RASTER_DPI = 150
#: Fixed seed of the element ids in an SVG (matplotlib draws random ones otherwise), so a figure renders to the same bytes.
SVG_HASH_SALT = "scalable_assoc"
#: Height of the report's axes titles, in axes coordinates (``set_title(..., y=TITLE_Y)``): the top of the axes, where
#: matplotlib's automatic placement puts them when no tick labels or offset text sit above the axes, as in every report
#: panel; given, it spares measuring the axes' tick labels once more at every draw (a seventh of a figure's time).
TITLE_Y = 1.0
#: A report with at least this many figures renders some in helper processes (when a core is idle);
#: below it, starting a helper costs more than it saves.
PARALLEL_FIGURES = 8


def render_figure(figure: Figure) -> tuple[bytes, bytes]:
    """Render a figure to SVG and PNG bytes in memory: ``(svg, png)``; the one helper every figure of a report goes through.

    The layout (e.g. ``layout="constrained"``) is computed once, for the SVG, and then
    frozen for the PNG (positions are fractions of the figure, so they hold at any dpi):
    the figure is left with no layout engine, so the PNG is one draw. The SVG carries no date and fixed element
    ids (``svg.hashsalt``), so the same figure gives the same bytes; artists drawn with
    ``rasterized=True`` (dense scatters) are embedded in it as images at
    :data:`SVG_RASTER_DPI`. The PNG is drawn at :data:`PNG_DPI`, compressed at :data:`PNG_COMPRESSION`.
    """
    FigureCanvasAgg(figure)
    svg, png = io.BytesIO(), io.BytesIO()
    with matplotlib.rc_context({"svg.hashsalt": SVG_HASH_SALT}):
        figure.savefig(svg, format="svg", dpi=SVG_RASTER_DPI, metadata={"Date": None})
    figure.set_layout_engine("none")
    # "none" leaves a placeholder engine, and savefig makes a whole extra draw (text, ticks, legends: a
    # third of a PNG's time) for any engine; with none at all the PNG is the same bytes from one draw.
    # matplotlib has no public way back to no engine, hence the attribute.
    figure._layout_engine = None  # type: ignore[attr-defined]
    figure.savefig(png, format="png", dpi=PNG_DPI, pil_kwargs={"compress_level": PNG_COMPRESSION})
    return svg.getvalue(), png.getvalue()


def free_cores(most: int = 4) -> int:
    """Cores this process may use that are idle (its cores minus the 1-minute load average), 1 to ``most``.

    On a busy machine helper processes only add their start-up to the same CPU time.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(1, min(most, cores - int(load + 0.5)))


def render_figures(figures: Sequence[Figure], workers: int | None = None) -> list[tuple[bytes, bytes]]:
    """:func:`render_figure` of every figure, in order, on up to ``workers`` cores (default: :func:`free_cores`).

    With several cores and at least :data:`PARALLEL_FIGURES` figures, the figures are
    rendered here and in ``workers - 1`` helper processes (see :class:`FigureRenderer`).
    Either way the bytes are the same.
    """
    workers = min(free_cores() if workers is None else workers, len(figures))
    if workers < 2 or len(figures) < PARALLEL_FIGURES:
        return [render_figure(figure) for figure in figures]
    with FigureRenderer(workers) as renderer:
        return renderer.render(figures)


class FigureRenderer:
    """Renders figures here and in helper processes started at once, which take figures as soon as they are submitted.

    ``with FigureRenderer() as renderer:``, then ``renderer.submit(figures)`` as figures
    are drawn (the helpers render them meanwhile), then ``renderer.results()``: this
    process renders the figures no helper has taken yet, and the (svg, png) of every
    figure submitted come back in submission order. ``workers`` (default
    :func:`free_cores`) counts this process: ``workers - 1`` helpers
    (``python -m scalable_assoc.report.rendering``: they import only matplotlib, never
    the caller's ``__main__``, and fork nothing, so this is safe from scripts, notebooks
    and processes holding a Dask client). Each helper takes one figure at a time
    (pickled to it), so the work balances itself whatever the figures cost. A helper
    that fails is logged and its figure rendered here. The bytes are those of
    :func:`render_figure`.
    """

    def __init__(self, workers: int | None = None) -> None:
        workers = free_cores() if workers is None else workers
        self._figures: list[Figure] = []
        self._next = 0  # the first submitted figure no one has taken
        self._finished = False
        self._results: dict[int, tuple[bytes, bytes]] = {}
        self._condition = threading.Condition()
        self._helpers = [_Helper(self) for _ in range(workers - 1)]

    def __enter__(self) -> FigureRenderer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def submit(self, figures: Sequence[Figure]) -> None:
        """Hand figures over: helpers may start rendering them now."""
        with self._condition:
            self._figures.extend(figures)
            self._condition.notify_all()

    def take(self) -> tuple[int, Figure] | None:
        """The next figure no one has rendered (its index), waiting for one to be submitted; None once there are no more."""
        with self._condition:
            while self._next == len(self._figures) and not self._finished:
                self._condition.wait()
            if self._next == len(self._figures):
                return None
            self._next += 1
            return self._next - 1, self._figures[self._next - 1]

    def done(self, index: int, rendered: tuple[bytes, bytes]) -> None:
        """Record the rendered bytes of figure ``index``."""
        with self._condition:
            self._results[index] = rendered

    def results(self) -> list[tuple[bytes, bytes]]:
        """Render here what no helper has taken, wait for the helpers; (svg, png) of every submitted figure, in order."""
        self._end_submissions()
        while (item := self.take()) is not None:
            self.done(item[0], render_figure(item[1]))
        self.close()
        for index, figure in enumerate(self._figures):
            if index not in self._results:  # a helper failed on it
                self._results[index] = render_figure(figure)
        return [self._results[i] for i in range(len(self._figures))]

    def _end_submissions(self) -> None:
        """No more figures will be submitted: :meth:`take` returns None once the submitted ones are taken."""
        with self._condition:
            self._finished = True
            self._condition.notify_all()

    def render(self, figures: Sequence[Figure]) -> list[tuple[bytes, bytes]]:
        """:meth:`submit` then :meth:`results`."""
        self.submit(figures)
        return self.results()

    def close(self) -> None:
        """Tell the helpers there are no more figures and wait for them (their figure in hand is finished and kept)."""
        self._end_submissions()
        for helper in self._helpers:
            helper.join()
        self._helpers = []


class _Helper:
    """One helper process and the thread here that feeds it: one pickled figure at a time on its stdin, a pickled
    (svg, png) back on its stdout, until a pickled None.
    """

    def __init__(self, renderer: FigureRenderer) -> None:
        self._renderer = renderer
        self._thread: threading.Thread | None = None
        package_root = str(Path(__file__).resolve().parents[2])  # the scalable_assoc this process runs, not another installed one
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p)}
        self._errors = tempfile.TemporaryFile()  # not a pipe: nothing reads it until the end
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "scalable_assoc.report.rendering"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._errors,
                env=env,
                cwd=package_root,  # python -m puts the working folder first on sys.path
            )
        except OSError as error:
            logger.warning("could not start a process to render figures (%s); rendering them here", error)
            self._errors.close()
            return
        self._thread = threading.Thread(target=self._feed, daemon=True)
        self._thread.start()

    def _feed(self) -> None:
        process = self._process
        assert process.stdin is not None and process.stdout is not None
        index = None
        try:
            while (item := self._renderer.take()) is not None:
                index, figure = item
                try:
                    payload = pickle.dumps(figure, protocol=pickle.HIGHEST_PROTOCOL)
                except Exception as error:  # an artist that does not pickle: rendered here by results()
                    logger.warning("a figure does not pickle (%s); rendering it here", error)
                    continue
                process.stdin.write(payload)
                process.stdin.flush()
                rendered: tuple[bytes, bytes] = pickle.load(process.stdout)
                self._renderer.done(index, rendered)
            pickle.dump(None, process.stdin)
            process.stdin.close()
        except Exception as error:  # the helper died: its figure in hand is rendered here by results()
            self._errors.seek(0)
            lines = self._errors.read().decode("utf-8", "replace").strip().splitlines()
            logger.warning(
                "rendering figures in a helper process failed (%s: %s); rendering them here",
                type(error).__name__,
                lines[-1] if lines else "no message",
            )
            process.kill()
        finally:
            process.wait()
            for pipe in (process.stdin, process.stdout):
                with contextlib.suppress(OSError):  # a pipe to a helper that died may not flush
                    pipe.close()

    def join(self) -> None:
        """Wait for the helper to finish (after the renderer ran out of figures)."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            self._errors.close()


def _serve() -> None:
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while (figure := pickle.load(stdin)) is not None:
        pickle.dump(render_figure(figure), stdout, protocol=pickle.HIGHEST_PROTOCOL)
        stdout.flush()


if __name__ == "__main__":
    _serve()
