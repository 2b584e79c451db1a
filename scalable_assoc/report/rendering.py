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
    the bytes are the same.
    """
    workers = min(free_cores() if workers is None else workers, len(figures))
    if workers < 2 or len(figures) < PARALLEL_FIGURES:
        return [render_figure(figure) for figure in figures]
    shares = [list(range(k, len(figures), workers)) for k in range(workers)]
    helpers = [_Helper([figures[i] for i in share]) for share in shares[1:]]
    rendered: dict[int, tuple[bytes, bytes]] = {i: render_figure(figures[i]) for i in shares[0]}
    for helper, share in zip(helpers, shares[1:], strict=True):
        results = helper.results()
        if results is None:
            results = [render_figure(figures[i]) for i in share]
        rendered.update(zip(share, results, strict=True))
    return [rendered[i] for i in range(len(figures))]


class _Helper:
    """One helper process rendering pickled figures (stdin: a pickled list of figures; stdout: a pickled list of (svg, png))."""

    def __init__(self, figures: list[Figure]) -> None:
        self._out: bytes | None = None
        self._error = ""
        self._thread: threading.Thread | None = None
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
            return
        try:  # the helper imports matplotlib meanwhile
            payload = pickle.dumps(figures, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as error:  # an artist that does not pickle: render here
            self._process.kill()
            self._process.wait()
            self._error = f"the figures do not pickle: {error}"
            return
        self._thread = threading.Thread(target=self._talk, args=(payload,), daemon=True)
        self._thread.start()

    def _talk(self, payload: bytes) -> None:
        out, err = self._process.communicate(payload)
        if self._process.returncode == 0:
            self._out = out
        else:
            lines = err.decode("utf-8", "replace").strip().splitlines()
            self._error = f"exit {self._process.returncode}: {lines[-1] if lines else 'no message'}"

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
