"""Rendering matplotlib figures to SVG and PNG bytes: one figure (:func:`render_figure`) or many on several cores (:func:`render_figures`).

This module imports only matplotlib, so the helper processes that render a report's
figures (``python -m scalable_assoc.report.rendering``) start in a fraction of a second.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import subprocess
import sys
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

    With several cores and at least :data:`PARALLEL_FIGURES` figures, every
    ``workers``-th figure is rendered here and the others in ``workers - 1`` helper
    processes (``python -m scalable_assoc.report.rendering``: they import only
    matplotlib, never the caller's ``__main__``, and fork nothing, so this is safe from
    scripts, notebooks and processes holding a Dask client), the figures pickled to
    them. A helper that fails is logged and its figures are rendered here. Either way
    the bytes are the same. :class:`FigureRenderer` starts the helpers before the figures are drawn.
    """
    workers = min(free_cores() if workers is None else workers, len(figures))
    if workers < 2 or len(figures) < PARALLEL_FIGURES:
        return [render_figure(figure) for figure in figures]
    with FigureRenderer(workers) as renderer:
        return renderer.render(figures)


class FigureRenderer:
    """:func:`render_figures` with its helper processes started ahead, so that they import matplotlib while the caller draws.

    ``with FigureRenderer() as renderer:`` (``workers`` as in :func:`render_figures`),
    draw, then ``renderer.render(figures)``, once: it uses the helpers started (all, or
    none when there are fewer than :data:`PARALLEL_FIGURES` figures). Helpers left
    unused are stopped on leaving the block.
    """

    def __init__(self, workers: int | None = None) -> None:
        workers = free_cores() if workers is None else workers
        self._helpers = [_Helper() for _ in range(workers - 1)]

    def __enter__(self) -> FigureRenderer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the helpers not used."""
        for helper in self._helpers:
            helper.stop()
        self._helpers = []

    def render(self, figures: Sequence[Figure]) -> list[tuple[bytes, bytes]]:
        """:func:`render_figure` of every figure, in order, here and in the helpers started."""
        used = max(len(figures) - 1, 0)
        helpers, self._helpers = self._helpers[:used], self._helpers[used:]
        self.close()  # the helpers there are no figures for
        if not helpers or len(figures) < PARALLEL_FIGURES:
            for helper in helpers:
                helper.stop()
            return [render_figure(figure) for figure in figures]
        workers = len(helpers) + 1
        shares = [list(range(k, len(figures), workers)) for k in range(workers)]
        for helper, share in zip(helpers, shares[1:], strict=True):
            helper.send([figures[i] for i in share])
        rendered: dict[int, tuple[bytes, bytes]] = {i: render_figure(figures[i]) for i in shares[0]}
        for helper, share in zip(helpers, shares[1:], strict=True):
            results = helper.results()
            if results is None:
                results = [render_figure(figures[i]) for i in share]
            rendered.update(zip(share, results, strict=True))
        return [rendered[i] for i in range(len(figures))]


class _Helper:
    """One helper process rendering pickled figures (stdin: a pickled list of figures; stdout: a pickled list of (svg, png)).

    Started empty (it imports matplotlib meanwhile); :meth:`send` gives it its figures, :meth:`stop` ends it unused.
    """

    def __init__(self) -> None:
        self._out: bytes | None = None
        self._error = ""
        self._thread: threading.Thread | None = None
        self._process: subprocess.Popen[bytes] | None = None
        package_root = str(Path(__file__).resolve().parents[2])  # the scalable_assoc this process runs, not another installed one
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p)}
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "scalable_assoc.report.rendering"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                cwd=package_root,  # python -m puts the working folder first on sys.path
            )
        except OSError as error:
            self._error = str(error)

    def send(self, figures: list[Figure]) -> None:
        """Give the helper its figures (pickled here, rendered there)."""
        if self._process is None:
            return
        try:
            payload = pickle.dumps(figures, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as error:  # an artist that does not pickle: render here
            self.stop()
            self._error = f"the figures do not pickle: {error}"
            return
        self._thread = threading.Thread(target=self._talk, args=(self._process, payload), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End the helper without results (it was not needed, or its figures do not pickle)."""
        if self._process is not None and self._thread is None:
            self._process.kill()
            self._process.communicate()  # reap it and close its pipes
        self._process = None

    def _talk(self, process: subprocess.Popen[bytes], payload: bytes) -> None:
        out, err = process.communicate(payload)
        if process.returncode == 0:
            self._out = out
        else:
            lines = err.decode("utf-8", "replace").strip().splitlines()
            self._error = f"exit {process.returncode}: {lines[-1] if lines else 'no message'}"

    def results(self) -> list[tuple[bytes, bytes]] | None:
        """The rendered figures, or None (logged) when the helper failed."""
        if self._thread is not None:
            self._thread.join()
        if self._out is None:
            logger.warning("rendering figures in a helper process failed (%s); rendering them here", self._error or "no output")
            return None
        results: list[tuple[bytes, bytes]] = pickle.loads(self._out)
        return results


def _serve() -> None:
    figures = pickle.loads(sys.stdin.buffer.read())
    sys.stdout.buffer.write(pickle.dumps([render_figure(figure) for figure in figures], protocol=pickle.HIGHEST_PROTOCOL))
    sys.stdout.buffer.flush()


if __name__ == "__main__":
    _serve()
