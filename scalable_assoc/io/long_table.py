"""Reading long abundance tables (one row per sample and feature: ``sample_id``, ``feature``, ``value``) a block of features at a time.

A long table (Parquet, TSV or CSV) lists only the pairs it has; a pair not in it
is a zero (sparse output of most profilers), or unknown (NaN) with ``missing: na``.

Memory: O(rows of the long table), never a dense samples x features frame: the
three columns as Arrow arrays while they are encoded, then per row a sample code
and a feature code (int32), the value (float64) and a sort order (int64), about
24 bytes a row, plus the distinct IDs and one ``(n_samples, width)`` block.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from scalable_assoc.errors import DataError
from scalable_assoc.io.table_text import reading_problem, table_separator, table_suffix
from scalable_assoc.io.table_values import TableStream, check_ids

#: The column names of a long table when the plan's ``columns`` does not name them: sample, feature, value.
LONG_COLUMNS = ("sample_id", "feature", "value")


def _read_columns(path: Path, columns: tuple[str, str, str]) -> pa.Table:
    """The three columns (Parquet, or TSV/CSV through pyarrow.csv), IDs as text; an absent column is named in the error."""
    sample, feature, value = columns
    try:
        if table_suffix(path) in (".parquet", ".pq"):
            names = pq.read_schema(path).names
        else:
            names = pacsv.open_csv(path, parse_options=pacsv.ParseOptions(delimiter=table_separator(path))).schema.names
    except (OSError, ValueError, pa.ArrowException) as error:
        raise DataError(f"{path}: cannot be read as a long table: {reading_problem(error)}") from None
    absent = [c for c in columns if c not in names]
    if absent:
        raise DataError(
            f"{path}: a long table needs the columns {', '.join(repr(c) for c in columns)}; column {absent[0]!r} is not in it "
            f"(it has: {', '.join(repr(n) for n in names[:10])}). Name other columns with the layer key "
            f"'columns: {{sample: .., feature: .., value: ..}}'."
        )
    try:
        if table_suffix(path) in (".parquet", ".pq"):
            table = pq.read_table(path, columns=list(columns))
        else:
            try:
                table = _read_text(path, columns, pa.float64())
            except pa.ArrowInvalid:
                # A cell that is not a number: read the values as text, so the error names the first bad one (rare, slower).
                table = _read_text(path, columns, pa.string())
    except (OSError, ValueError, pa.ArrowException) as error:
        raise DataError(f"{path}: cannot be read as a long table: {reading_problem(error)}") from None
    return table.select([sample, feature, value])


def _read_text(path: Path, columns: tuple[str, str, str], value_type: pa.DataType) -> pa.Table:
    """A TSV/CSV long table's three columns (empty, NA, NaN values are nulls)."""
    sample, feature, value = columns
    return pacsv.read_csv(
        path,
        parse_options=pacsv.ParseOptions(delimiter=table_separator(path)),
        convert_options=pacsv.ConvertOptions(
            include_columns=list(columns), column_types={sample: pa.string(), feature: pa.string(), value: value_type}
        ),
    )


def _codes(path: Path, column: pa.ChunkedArray, what: str, name: str) -> tuple[np.ndarray, pd.Index]:
    """Integer codes of an ID column (in order of first appearance) and its distinct IDs, checked."""
    text = column.cast(pa.string()) if not pa.types.is_string(column.type) else column
    if text.null_count:
        raise DataError(f"{path}: {text.null_count} row(s) have no {what} ID in column {name!r}; every row needs one")
    encoded = pc.dictionary_encode(text.combine_chunks())
    ids = pd.Index(encoded.dictionary.to_pylist(), dtype=object)
    check_ids(path, what, ids)
    return encoded.indices.to_numpy(zero_copy_only=False).astype(np.int32, copy=False), ids


def _values(path: Path, column: pa.ChunkedArray, name: str, samples: np.ndarray, features: np.ndarray, ids: tuple[pd.Index, pd.Index]):
    """The value column as float64 (empty or NA: NaN), refusing non-numeric, negative or infinite values as every reader does."""
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        written = pd.Series(column.to_pandas(), dtype=object)
        values = pd.to_numeric(written, errors="coerce").to_numpy(dtype=np.float64)
        stated = written.notna().to_numpy() & (written.astype(str).str.strip() != "").to_numpy()
        stated &= ~written.isin(["NA", "NaN", "nan", "N/A", "NULL", "null"]).to_numpy()
    else:
        try:
            values = np.asarray(column.cast(pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
        except (pa.ArrowException, ValueError) as error:
            raise DataError(f"{path}: column {name!r} does not hold numbers: {reading_problem(error)}") from None
        written, stated = None, np.zeros(len(values), dtype=bool)

    def first_bad(mask: np.ndarray, problem: str) -> None:
        if not mask.any():
            return
        row = int(np.argmax(mask))
        shown = repr(written.iat[row]) if written is not None and problem == "non-numeric" else str(values[row])
        raise DataError(
            f"{path}: {int(mask.sum())} {problem} value(s) in column {name!r}; the first is {shown} for sample "
            f"'{ids[0][samples[row]]}', feature '{ids[1][features[row]]}' (row {row + 2}). Abundances must be non-negative "
            f"numbers (leave a cell empty or write NA for a missing value)."
        )

    first_bad(np.isnan(values) & stated, "non-numeric")
    first_bad(np.isinf(values), "infinite")
    with np.errstate(invalid="ignore"):
        first_bad(values < 0, "negative")
    return values


def stream_long(path: Path, columns: tuple[str, str, str] | None = None, missing: str = "zero") -> TableStream:
    """A long table (Parquet, TSV, CSV) as a :class:`TableStream`; samples and features in order of first appearance.

    ``columns`` names the (sample, feature, value) columns (default :data:`LONG_COLUMNS`).
    A pair the table does not list is 0, or NaN with ``missing='na'``; an empty or
    NA value is NaN either way. A repeated (sample, feature) pair is refused, naming
    the first. Memory: O(rows of the long table) in compact arrays (module docstring).
    """
    names = columns or LONG_COLUMNS
    table = _read_columns(path, names)
    if table.num_rows == 0:
        raise DataError(f"{path}: the long table has a header but no rows")
    samples, sample_ids = _codes(path, table.column(0), "sample", names[0])
    features, feature_ids = _codes(path, table.column(1), "feature", names[1])
    values = _values(path, table.column(2), names[2], samples, features, (sample_ids, feature_ids))
    del table
    n_samples, n_features = len(sample_ids), len(feature_ids)
    # Rows sorted by feature then sample: a block of features is one run of rows, and a repeated pair sits next to its twin.
    order = np.argsort(features.astype(np.int64) * n_samples + samples, kind="stable")
    samples, features, values = samples[order], features[order], values[order]
    del order
    repeated = (features[1:] == features[:-1]) & (samples[1:] == samples[:-1])
    if repeated.any():
        at = int(np.argmax(repeated))
        raise DataError(
            f"{path}: {int(repeated.sum())} repeated (sample, feature) pair(s); the first is sample '{sample_ids[samples[at]]}', "
            f"feature '{feature_ids[features[at]]}'. Each pair must appear once in a long table."
        )
    starts = np.searchsorted(features, np.arange(n_features + 1))
    fill = 0.0 if missing == "zero" else np.nan

    def blocks(width: int) -> Iterator[np.ndarray]:
        for start in range(0, n_features, width):
            stop = min(start + width, n_features)
            block = np.full((n_samples, stop - start), fill)
            rows = slice(starts[start], starts[stop])
            block[samples[rows], features[rows] - start] = values[rows]
            yield block

    return TableStream(tuple(str(s) for s in sample_ids), tuple(str(f) for f in feature_ids), blocks, path)
