"""Reading abundance tables: MetaPhlAn merged tables, wide TSV/CSV, Parquet, BIOM, AnnData .h5ad.

Every format is read as a :class:`TableStream` (a block of features at a time,
never whole; :func:`read_abundance_table` gathers one into an :class:`AbundanceTable`)
and checked for what would otherwise corrupt a study silently: duplicate sample or
feature IDs, non-numeric, negative or infinite values. An empty cell or NA is a
missing value (NaN), not an error.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from scalable_assoc.errors import DataError
from scalable_assoc.io.biom_table import stream_biom
from scalable_assoc.io.h5ad_table import stream_h5ad
from scalable_assoc.io.humann import is_humann_header, stream_humann
from scalable_assoc.io.long_table import stream_long
from scalable_assoc.io.metaphlan import METAPHLAN_TAXID_COLUMNS, stream_metaphlan
from scalable_assoc.io.table_text import (
    METAPHLAN_CLADE_COLUMNS,
    check_row_lengths,
    detect_format,
    raw_header,
    reading_problem,
    table_separator,
    table_suffix,
)
from scalable_assoc.io.table_values import AbundanceTable, TableStream, check_ids, check_sample_id_column, validated_values
from scalable_assoc.io.wide import WIDE_BATCH_CELLS, stream_wide

# Each format's reader lives in its own module (text checks: io.table_text; IDs and values:
# io.table_values; io.wide, io.metaphlan, io.biom_table, io.h5ad_table); their names stay importable from here.
__all__ = [
    "METAPHLAN_CLADE_COLUMNS",
    "METAPHLAN_TAXID_COLUMNS",
    "WIDE_BATCH_CELLS",
    "AbundanceTable",
    "TableStream",
    "check_row_lengths",
    "detect_format",
    "raw_header",
    "read_abundance_table",
    "reading_problem",
    "stream_abundance_table",
    "stream_biom",
    "stream_h5ad",
    "stream_metaphlan",
    "stream_parquet",
    "stream_wide",
    "table_separator",
    "validated_values",
]


def stream_parquet(path: Path) -> TableStream:
    """A Parquet table with samples as rows as a :class:`TableStream`, read a block of feature columns at a time.

    The sample IDs are the pandas index stored with the file, else the first
    column, as in :func:`stream_wide`; same checks.
    """
    try:
        handle = pq.ParquetFile(path)
        schema = handle.schema_arrow
        index_columns = [c for c in ((schema.pandas_metadata or {}).get("index_columns") or []) if isinstance(c, str)]
        id_column = index_columns[0] if index_columns else schema.names[0]
        ids = handle.read(columns=[id_column]).column(0).to_pandas()
    except (OSError, ValueError, IndexError) as error:
        raise DataError(f"{path}: cannot be read as a table with samples as rows: {reading_problem(error)}") from None
    feature_names = [name for name in schema.names if name != id_column and name not in index_columns]
    if not feature_names:
        raise DataError(f"{path}: no feature columns after the sample ID column")
    if len(ids) == 0:
        raise DataError(f"{path}: the table has a header but no sample rows")
    sample_index = pd.Index(ids.map(lambda v: v if pd.isna(v) else str(v)))
    check_sample_id_column(path, sample_index, id_column if not index_columns else None)
    check_ids(path, "sample", sample_index)
    check_ids(path, "feature", pd.Index(feature_names))

    def blocks(width: int) -> Iterator[np.ndarray]:
        for start in range(0, len(feature_names), width):
            names = feature_names[start : start + width]
            try:
                frame = handle.read(columns=names).to_pandas()
            except (OSError, ValueError) as error:
                raise DataError(f"{path}: cannot read columns {names[0]}..{names[-1]}: {reading_problem(error)}") from None
            frame.index = sample_index
            yield validated_values(path, frame, samples_are_rows=True)

    return TableStream(tuple(sample_index), tuple(str(n) for n in feature_names), blocks, path)


def stream_abundance_table(
    path: Path,
    fmt: str = "auto",
    rank: str = "species",
    scratch: Path | None = None,
    stratified: bool = False,
    columns: tuple[str, str, str] | None = None,
    missing: str = "zero",
    h5ad_layer: str | None = None,
    rank_given: bool = False,
) -> TableStream:
    """Any supported table as a :class:`TableStream`, block by block, never whole.

    ``scratch`` is the folder for the temporary file a wide TSV/CSV goes through
    (:func:`stream_wide`; default: the system's temporary folder). ``stratified``
    applies to HUMAnN tables, ``columns`` and ``missing`` to long tables, ``h5ad_layer``
    (``layers/<name>`` instead of ``X``) to .h5ad files; given for a table detected as
    another format, they are refused. ``rank_given``: the user wrote ``rank`` (a BIOM
    table without taxonomy is then refused rather than read with the rank ignored).
    """
    if not path.exists():
        raise DataError(f"abundance file {path} does not exist")
    fmt = detect_format(path) if fmt == "auto" else fmt
    check_read_options(path, fmt, stratified, columns, missing, h5ad_layer)
    if rank_given and fmt not in RANKED_FORMATS:
        raise DataError(
            f"{path}: 'rank: {rank}' applies to MetaPhlAn tables and BIOM tables with taxonomy, not to a {fmt} table "
            "(its features are kept as they are); remove 'rank' (or --rank)"
        )
    if fmt in ("metaphlan", "wide") and table_suffix(path) not in (".parquet", ".pq"):
        check_not_humann(path, fmt)
    stream = _stream(path, fmt, rank, scratch, stratified, columns, missing, h5ad_layer, rank_given)
    if fmt != "humann":
        check_not_stratified(path, stream.feature_ids)
    return stream


#: The formats whose features carry a rank to choose (MetaPhlAn lineages, BIOM taxonomy); others are read as they are.
RANKED_FORMATS = ("metaphlan", "biom")


def check_not_humann(path: Path, fmt: str) -> None:
    """Refuse a HUMAnN merged table read as a MetaPhlAn or wide table (its pathways would become samples, or nothing)."""
    first = raw_header(path, 0)[:1]
    if first and is_humann_header(first[0]):
        raise DataError(
            f"{path}: this is a HUMAnN table (its first header cell, row 1 column 1, is '{first[0]}'), not a {fmt} table; "
            f"read it with format: humann (or auto)"
        )


#: A HUMAnN per-species row name: ``PWY-101: name|g__Genus.s__species`` or ``...|unclassified``.
_STRATIFIED_NAME = re.compile(r"^(?P<community>[^|]+)\|(g__[^|]*\.s__[^|]*|unclassified)$")


def check_not_stratified(path: Path, feature_ids: tuple[str, ...]) -> None:
    """Refuse features that hold HUMAnN per-species rows beside their community totals (each abundance counted twice).

    A HUMAnN table converted to a wide, Parquet, long, BIOM or h5ad table keeps its row names; read as
    features, both a pathway's total and its per-species shares would enter the same analysis.
    """
    names = set(feature_ids)
    for position, name in enumerate(feature_ids):
        found = _STRATIFIED_NAME.match(name)
        if found and found.group("community") in names:
            raise DataError(
                f"{path}: feature '{name}' (feature column/row {position + 1}) is a HUMAnN per-species (stratified) row of the "
                f"feature '{found.group('community')}', which is in the table too: each abundance would be counted twice. "
                f"Keep one kind: the community rows, or only the per-species rows (a HUMAnN merged table: format humann, "
                f"with 'stratified: true' for the per-species rows)"
            )


def _stream(
    path: Path,
    fmt: str,
    rank: str,
    scratch: Path | None,
    stratified: bool,
    columns: tuple[str, str, str] | None,
    missing: str,
    h5ad_layer: str | None,
    rank_given: bool,
) -> TableStream:
    """The reader of format ``fmt``."""
    if fmt == "metaphlan":
        return stream_metaphlan(path, rank)
    if fmt == "biom":
        return stream_biom(path, rank, rank_given)
    if fmt == "h5ad":
        return stream_h5ad(path, scratch=scratch, layer=h5ad_layer)
    if fmt == "humann":
        return stream_humann(path, stratified)
    if fmt == "long":
        return stream_long(path, columns, missing)
    if fmt == "parquet" or (fmt == "wide" and table_suffix(path) in (".parquet", ".pq")):
        return stream_parquet(path)
    if fmt != "wide":
        raise DataError(f"{path}: format {fmt!r} is not a table format")
    return stream_wide(path, scratch=scratch)


#: Each reader key and the format it applies to (with how the message names that format).
_READ_OPTION_FORMATS = {
    "stratified": ("humann", "a HUMAnN table (format: humann)"),
    "columns": ("long", "a long table (format: long)"),
    "missing": ("long", "a long table (format: long)"),
    "h5ad_layer": ("h5ad", "an AnnData .h5ad file (format: h5ad)"),
}


def check_read_options(
    path: Path, fmt: str, stratified: bool, columns: tuple[str, str, str] | None, missing: str, h5ad_layer: str | None = None
) -> None:
    """Refuse a reader key for a table of another format (with ``format: auto``, the plan could not check it)."""
    used = {"stratified": stratified, "columns": columns is not None, "missing": missing != "zero", "h5ad_layer": h5ad_layer is not None}
    wrong = [key for key, given in used.items() if given and fmt != _READ_OPTION_FORMATS[key][0]]
    if wrong:
        raise DataError(
            f"{path}: the layer key '{wrong[0]}' applies to {_READ_OPTION_FORMATS[wrong[0]][1]}, but this table is read as format '{fmt}'"
        )


def read_abundance_table(path: Path, fmt: str = "auto", rank: str = "species") -> AbundanceTable:
    """Read any supported tabular abundance file (not a Zarr store) whole, into memory."""
    stream = stream_abundance_table(path, fmt, rank)
    width = max(1, len(stream.feature_ids))
    values = np.hstack(list(stream.blocks(width))) if stream.feature_ids else np.zeros((len(stream.sample_ids), 0))
    return AbundanceTable(stream.sample_ids, stream.feature_ids, values, path)
