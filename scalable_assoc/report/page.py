"""What every report page shares: the CSS, escaping, HTML tables, relative links and inline figures."""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path

import pandas as pd

from scalable_assoc.report.figures import RenderedFigure

REPORT_CSS = """
body { font-family: "DejaVu Sans", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1200px; color: #1f2933; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #cbd2d9; }
h3 { font-size: 1.05em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.85em; }
th, td { border: 1px solid #cbd2d9; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f0f4f8; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
code { font-size: 0.9em; word-break: break-all; } .muted { color: #616e7c; }
figure { margin: 1em 0 2em; } figure img { max-width: 100%; height: auto; border: 1px solid #e4e7eb; }
figcaption { font-size: 0.85em; color: #52606d; }
nav.contents { font-size: 0.9em; margin: 0.5em 0 1em; } nav.contents a { color: #2c5282; }
.note { border-left: 4px solid #f0b429; background: #fffbea; padding: 0.5em 1em; }
"""


def escape(value: object) -> str:
    """``value`` as text safe inside HTML (None as empty)."""
    return html.escape("" if value is None else str(value))


def html_table(frame: pd.DataFrame, table_id: str | None = None, numeric: tuple[str, ...] = ()) -> str:
    """``frame`` (rows x columns) as an HTML table; floats to 4 significant digits, missing as NA, ``numeric`` columns right-aligned."""
    head = "".join(f"<th>{escape(c)}</th>" for c in frame.columns)
    body = []
    for row in frame.itertuples(index=False):
        cells = []
        for column, value in zip(frame.columns, row, strict=True):
            shown = "NA" if value is None or (isinstance(value, float) and value != value) else value
            if isinstance(shown, float):
                shown = f"{shown:.4g}"
            cells.append(f'<td class="num">{escape(shown)}</td>' if column in numeric else f"<td>{escape(shown)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    ident = f' id="{table_id}"' if table_id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def relative_href(path: Path, report: Path) -> str:
    """``path`` relative to the folder of the page ``report`` (POSIX separators), for an ``href``."""
    return Path(os.path.relpath(path.resolve(), report.parent.resolve())).as_posix()


def output_links(folder: Path, report: Path, figures_dir: Path, figure_files: list[str]) -> str:
    """A list of relative links to every file of ``folder`` (but the page itself) and to ``figure_files`` inside ``figures_dir``."""
    names = sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.resolve() != report.resolve())
    entries = [folder / n for n in names] + [figures_dir / n for n in figure_files]
    items = []
    for path in entries:
        relative = relative_href(path, report)
        items.append(f'<li><a href="{escape(relative)}">{escape(relative)}</a></li>')
    return "<ul>" + "".join(items) + "</ul>"


def figure_element(figure: RenderedFigure, png_href: str) -> str:
    """A ``<figure>`` showing ``figure`` inline (SVG data URI), with a link to its PNG."""
    data = base64.b64encode(figure.svg).decode("ascii")
    return (
        f'<figure id="figure-{escape(figure.name)}" data-kind="{figure.kind}" data-layer="{escape(figure.layer)}" '
        f'data-model="{escape(figure.model)}"><img class="report-figure" alt="{escape(figure.title)}" '
        f'src="data:image/svg+xml;base64,{data}"><figcaption>{escape(figure.title)} '
        f'(<a href="{escape(png_href)}">PNG</a>)</figcaption></figure>'
    )
