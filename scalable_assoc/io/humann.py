"""Reading HUMAnN 3/4 merged tables (gene families, pathway abundance or coverage) a block of features at a time.

``humann_join_tables`` writes features as rows: the header is ``# Pathway`` or
``# Gene Family`` and one column per sample (``S1_Abundance``, ``S1_Abundance-RPKs``,
``S1_Coverage``, ...); a row is a community total (``PWY-101: name``) or one
species' share of it (``PWY-101: name|g__Genus.s__Species``, ``...|unclassified``).
HUMAnN's bookkeeping rows (``UNMAPPED``, ``UNINTEGRATED`` and its per-species rows,
``UNGROUPED``) are not features of a study: they are left out, and a note says so.

Memory: the first column (one string per row of the file) and a batch of
``rows_per_read`` rows with one block, as :func:`scalable_assoc.io.metaphlan.stream_metaphlan`;
never the whole table.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from scalable_assoc.errors import DataError
from scalable_assoc.io.table_text import HUMANN_HEADERS, raw_header, reading_problem, table_separator
from scalable_assoc.io.table_values import TableStream, check_ids, chosen_rows, rebatch, validated_values
from scalable_assoc.io.text_values import TextTable, checked_row_ids, kept_rows

logger = logging.getLogger(__name__)

#: Rows HUMAnN adds for reads or abundance it could not assign: not features.
HUMANN_SPECIAL_ROWS = ("UNMAPPED", "UNINTEGRATED", "UNGROUPED")

#: Suffixes HUMAnN appends to sample names in its column headers, longest first (so ``_Abundance-RPKs`` goes whole).
HUMANN_SAMPLE_SUFFIXES = (
    "_Abundance-RPKs",
    "_Abundance-CPM",
    "_Abundance-RELAB",
    "_Abundance",
    "_Coverage",
    "-RPKs",
    "-CPM",
    "-RELAB",
)


def is_humann_header(first_cell: str) -> bool:
    """Whether a table's first header cell is HUMAnN's (``# Pathway``, ``# Gene Family``, also with a version after it)."""
    return any(first_cell.startswith(header) for header in HUMANN_HEADERS)


def strip_sample_suffix(name: str) -> str:
    """A HUMAnN column name without its suffix (``S1_Abundance-RPKs`` -> ``S1``); unchanged if it has none (or is only a suffix)."""
    for suffix in HUMANN_SAMPLE_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def _special(row: str) -> bool:
    """``UNMAPPED``, ``UNINTEGRATED|g__...``, ``UNMAPPED: NO_NAME`` (a renamed table), ..."""
    return row.split("|", 1)[0].split(":", 1)[0].strip() in HUMANN_SPECIAL_ROWS


def _refuse_other_kind(path: Path, names: pd.Series, other: np.ndarray, stratified: bool) -> None:
    """No row of the kind asked for: say which kind the table holds (a split table read with the wrong ``stratified``)."""
    if not other.any():
        kind = "per-species ('|')" if stratified else "community (without '|')"
        raise DataError(f"{path}: no {kind} rows besides UNMAPPED/UNINTEGRATED/UNGROUPED in this HUMAnN table; check 'stratified'")
    first = int(np.argmax(other))
    where = f"the first, '{names.iat[first]}', on line {first + 2}"
    if stratified:
        raise DataError(
            f"{path}: this HUMAnN table has only community rows (without '|'; {where}), no per-species (stratified) rows; "
            f"drop 'stratified: true' (or --stratified) to read them"
        )
    raise DataError(
        f"{path}: this HUMAnN table has only per-species (stratified) rows ('PWY|g__Genus.s__species'; {where}), no community "
        f"rows; set 'stratified: true' (or --stratified) to read them, or give the unstratified table"
    )


#: Cells per batch of rows read (about 32 MB as float64): pandas' cost per column and batch dominates at 512 rows of a wide table.
HUMANN_BATCH_CELLS = 1 << 22


def stream_humann(path: Path, stratified: bool = False, rows_per_read: int | None = None) -> TableStream:
    """A HUMAnN merged table as a :class:`TableStream`: the community rows, or with ``stratified`` the per-species rows.

    Feature IDs are the rows' names as written (``PWY-101: name``, or
    ``PWY-101: name|g__Genus.s__Species``). Sample IDs lose HUMAnN's suffixes
    (:data:`HUMANN_SAMPLE_SUFFIXES`) so they match the metadata; the stream's
    ``renamed_samples`` holds each change and an INFO line shows the first ones.
    The rows left out (:data:`HUMANN_SPECIAL_ROWS`) are counted in the stream's
    ``notes``, which reach the run's manifest. Values are checked as every
    reader checks them (:func:`~scalable_assoc.io.table_values.validated_values`).

    Memory: the row names (one string per line of the file) and ``rows_per_read``
    rows (default: at least 512, about :data:`HUMANN_BATCH_CELLS` cells) with one
    block at a time; the file is read twice, never held whole.
    """
    header = raw_header(path, 0)
    if len(header) < 2 or not is_humann_header(header[0]):
        raise DataError(
            f"{path}: not a HUMAnN table: its first header cell should be '# Pathway' or '# Gene Family', "
            f"followed by one column per sample (found {len(header)} column(s))"
        )
    written = header[1:]
    check_ids(path, "sample", pd.Index(written))
    sample_ids = [strip_sample_suffix(name) for name in written]
    # Two columns such as S1_Abundance and S1_Coverage would become one sample: refused, naming them.
    check_ids(path, "sample (after removing HUMAnN's suffixes such as _Abundance)", pd.Index(sample_ids))
    renamed = tuple((old, new) for old, new in zip(written, sample_ids, strict=True) if old != new)
    if renamed:
        shown = ", ".join(f"{old} -> {new}" for old, new in renamed[:3])
        logger.info("%s: %d HUMAnN sample column(s) renamed to match metadata IDs, e.g. %s", path, len(renamed), shown)
    separator = table_separator(path)
    # Pathway names hold quotes and commas ("5'-phosphate"): no quoting, tab-separated fields as written.
    options = {"sep": separator, "comment": None, "quoting": csv.QUOTE_NONE}
    # pyarrow reads the names and values where it reads them as pandas does; pandas reads the rest (and words every error).
    layout = TextTable(path, separator, 1, len(header))
    ids = checked_row_ids(layout, "feature")  # the row names and every row's field count in one pass over the text
    fast = ids is not None
    if ids is not None:
        names = pd.Series(ids, dtype=str)
    else:
        try:
            names = pd.read_csv(path, usecols=[0], dtype=str, **options).iloc[:, 0].fillna("").astype(str)  # type: ignore[call-overload]
        except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as error:
            raise DataError(f"{path}: cannot be read as a HUMAnN table: {reading_problem(error)}") from None
    special = names.map(_special).to_numpy(dtype=bool)
    per_species = names.str.contains("|", regex=False).to_numpy(dtype=bool)
    keep = ~special & (per_species if stratified else ~per_species)
    if not keep.any():
        _refuse_other_kind(path, names, ~special & (~per_species if stratified else per_species), stratified)
    feature_ids = pd.Index(names[keep])
    check_ids(path, "feature", feature_ids)
    left_out = sorted({row.split("|", 1)[0].split(":", 1)[0].strip() for row in names[special]})
    notes = (
        (
            f"{int(special.sum())} HUMAnN row(s) left out ({', '.join(left_out)}: reads or abundance HUMAnN could not assign "
            f"to a gene family or pathway, not features)",
        )
        if special.any()
        else ()
    )
    row_names = names.to_numpy()
    batch_rows = rows_per_read or max(512, HUMANN_BATCH_CELLS // len(sample_ids))

    def pieces() -> Iterator[np.ndarray]:
        done = 0
        if fast:
            declined_at = yield from kept_rows(path, layout, 1, keep)
            if declined_at is None:
                return
            done = declined_at
        yield from _pandas_pieces(path, options, keep, row_names, sample_ids, batch_rows, done)

    return TableStream(
        tuple(sample_ids),
        tuple(str(f) for f in feature_ids),
        lambda width: rebatch(pieces(), width),
        path,
        notes=notes,
        renamed_samples=renamed,
    )


def _pandas_pieces(
    path: Path, options: dict, keep: np.ndarray, row_names: np.ndarray, sample_ids: list[str], batch_rows: int, start: int
) -> Iterator[np.ndarray]:
    """``(samples, rows)`` values of the kept rows from row ``start`` on, read and checked by pandas ``batch_rows`` rows at a time."""
    offset = 0
    try:
        with pd.read_csv(path, dtype={0: str}, chunksize=batch_rows, **options) as reader:
            for frame, rows, chosen in chosen_rows(reader, keep, start):
                offset = rows.stop
                if not chosen.any():
                    continue
                values = _plain_values(frame, chosen)
                if values is not None:
                    yield values.T
                    continue
                selected = frame.loc[chosen].drop(columns=[frame.columns[0]])
                selected.index = pd.Index(row_names[rows][chosen])
                selected.columns = pd.Index(sample_ids)
                yield validated_values(path, selected, samples_are_rows=False).T
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as error:
        raise DataError(f"{path}: cannot be read as a HUMAnN table: {reading_problem(error)}") from None
    if offset != len(row_names):
        raise DataError(f"{path}: {offset} rows read, but a first pass found {len(row_names)}; was the file changed while it was read?")


def _plain_values(frame: pd.DataFrame, chosen: np.ndarray) -> np.ndarray | None:
    """The chosen rows' values, ``(rows, samples)`` float64, when every value column parsed as numbers with none infinite
    or negative (the usual case: what :func:`validated_values` returns for them, without its per-cell frame work); else None.

    A numeric column's NaN was an empty or NA cell, which :func:`validated_values` also keeps as missing.
    """
    columns = frame.iloc[:, 1:]
    if not all(pd.api.types.is_numeric_dtype(dtype) for dtype in columns.dtypes):
        return None
    values = columns.to_numpy(dtype=np.float64, na_value=np.nan)[chosen]
    with np.errstate(invalid="ignore"):
        if np.isinf(values).any() or (values < 0).any():
            return None
    return values
