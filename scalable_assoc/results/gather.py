"""Gathering chunk files into the results table, with BH FDR per family.

The rows are ordered, given q-values and sorted for the TSV as Arrow tables
with integer key codes: a run at 100,000 features has 400,000 rows, and pandas'
string columns (Arrow-backed) made every categorical, ``groupby`` and ``iloc``
of the earlier pandas version a hashing pass or a copy of every string.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from scalable_assoc.results.columns import PARTIAL_SCHEMA, RESULT_COLUMNS, RESULT_SCHEMA
from scalable_assoc.stats.multitest import benjamini_hochberg_grouped

#: Arrow int64 columns become pandas' nullable Int64 (counts may be missing).
_INT64_AS_NULLABLE = {pa.int64(): pd.Int64Dtype()}.get


#: The partial schema's string columns with a few distinct values in a chunk (its analyses' labels, statuses), which
#: :func:`read_chunk` can keep dictionary-encoded, as the chunk files store them (not ``feature``: one per row).
LABEL_COLUMNS = tuple(f.name for f in PARTIAL_SCHEMA if pa.types.is_string(f.type) and f.name != "feature")
#: :data:`PARTIAL_SCHEMA` with the :data:`LABEL_COLUMNS` dictionary-encoded (``read_chunk(path, encoded_labels=True)``).
ENCODED_PARTIAL_SCHEMA = pa.schema(
    [pa.field(f.name, pa.dictionary(pa.int32(), f.type)) if f.name in LABEL_COLUMNS else f for f in PARTIAL_SCHEMA]
)


def read_chunks(paths: Sequence[Path]) -> pa.Table:
    """Concatenate chunk files (every one must exist and carry the partial schema)."""
    return concat_chunks([read_chunk(path) for path in paths])


def concat_chunks(tables: Sequence[pa.Table]) -> pa.Table:
    """Chunk tables of :func:`read_chunk`, one after the other (no copy: each becomes a chunk of every column)."""
    return pa.concat_tables(tables) if tables else PARTIAL_SCHEMA.empty_table()


def read_chunk(path: Path, encoded_labels: bool = False) -> pa.Table:
    """One chunk file as a table of :data:`PARTIAL_SCHEMA` (no schema metadata); :data:`ENCODED_PARTIAL_SCHEMA` with ``encoded_labels``.

    ``ParquetFile.read`` costs a third of ``pq.read_table`` (which sets up a
    dataset per file: 3.5 of 5 s of CPU for 183 files at 100,000 features);
    a file with other columns goes through ``read_table``'s schema, as before.
    A chunk file is small (one row group, about 100 kB), so it is read in the
    calling thread: Arrow's thread pools (column decoding, pre-buffered reads)
    only added hand-offs, 0.3 s of CPU in pool threads over 183 files read by
    the client while two workers fitted.

    With ``encoded_labels`` the label columns stay as the file's dictionary
    pages have them, a few strings and an index per row, rather than a string
    per row (``covariates`` alone is a quarter of a chunk's bytes): a third less
    CPU to read, and the gather's reordering moves indices
    (:func:`assemble_table` decodes them once, in plan order).
    """
    schema = ENCODED_PARTIAL_SCHEMA if encoded_labels else PARTIAL_SCHEMA
    table = pq.ParquetFile(path, pre_buffer=False, read_dictionary=LABEL_COLUMNS if encoded_labels else None).read(use_threads=False)
    if table.schema != schema:  # field names, types and order; metadata aside
        table = pq.read_table(path, schema=PARTIAL_SCHEMA)
        return encode_labels(table) if encoded_labels else table
    return pa.Table.from_arrays(table.columns, schema=schema)


def encode_labels(table: pa.Table) -> pa.Table:
    """A table of :data:`PARTIAL_SCHEMA` with its :data:`LABEL_COLUMNS` dictionary-encoded (:data:`ENCODED_PARTIAL_SCHEMA`)."""
    columns = [pc.dictionary_encode(table[f.name]) if f.name in LABEL_COLUMNS else table[f.name] for f in PARTIAL_SCHEMA]
    return pa.Table.from_arrays(columns, schema=ENCODED_PARTIAL_SCHEMA)


def key_codes(values: pa.ChunkedArray | pa.Array, order: Sequence[str]) -> np.ndarray:
    """``(m,)`` int64: each value's position in ``order``, -1 where it is absent or null (as pandas categorical codes)."""
    positions = pc.index_in(values, value_set=pa.array(list(order), type=pa.string()))
    return np.asarray(positions.fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int64)


def combined_codes(columns: Sequence[tuple[np.ndarray, int]]) -> np.ndarray:
    """``(m,)`` int64: codes equal exactly where the combinations of the columns' codes are equal.

    Each column is ``(codes, size)`` with codes in ``[-1, size)`` (-1 a value of its
    own, such as missing). The key is the codes read as digits of a mixed-radix
    number, whose order is that of the combinations (first column first); it is
    compacted (replaced by its rank among the distinct keys, the same order) only
    before a column that could overflow it, so it never overflows however many
    columns and values there are. Compacting is a sort of every row, which the
    usual few columns of a results table never need (the caller's
    :func:`first_appearance` sorts once anyway): 0.4 s of the gather at 100,000
    features, when every column compacted the key.
    """
    key = np.zeros(len(columns[0][0]) if columns else 0, dtype=np.int64)
    bound = 1  # the key's values are in [0, bound)
    for codes, size in columns:
        if bound * (size + 1) >= 2**62:
            key = np.unique(key, return_inverse=True)[1].reshape(-1)
            bound = int(key.max()) + 1 if key.size else 1
        key = key * (size + 1) + codes + 1
        bound *= size + 1
    return key


def first_appearance(key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Groups of equal ``key`` (``(m,)``) numbered in order of first appearance, and each group's first row.

    Returns ``(group of each row (m,), first row of each group (g,))``, as
    ``groupby(..., sort=False).ngroup()`` and ``drop_duplicates().index`` give them.
    """
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty(first.size, dtype=np.int64)
    rank[order] = np.arange(first.size)
    return rank[inverse.reshape(-1)], first[order]


def first_seen_groups(table: pa.Table, by: Sequence[str]) -> np.ndarray:
    """``(m,)`` group of each row by the values of ``by``, numbered in order of first appearance.

    What ``frame.groupby(by, sort=False).ngroup()`` gives (columns the table
    lacks are ignored; none: one group 0), from Arrow's dictionary encoding:
    int64, or float64 with NaN for the rows with a null key when there are any.
    """
    columns = [c for c in by if c in table.column_names]
    n = table.num_rows
    if not columns or not n:
        return np.zeros(n, dtype=np.int64)
    coded = []
    missing = np.zeros(n, dtype=bool)
    for column in columns:
        encoded = pc.dictionary_encode(table[column].combine_chunks())
        codes = np.asarray(encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int64)
        missing |= codes < 0
        coded.append((codes, len(encoded.dictionary)))
    present = ~missing
    groups = first_appearance(combined_codes(coded)[present])[0]
    if not missing.any():
        return groups
    with_missing = np.full(n, np.nan)
    with_missing[present] = groups
    return with_missing


def float_values(values: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """``(m,)`` float64 of a numeric column, NaN where null."""
    return np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float64)


def assemble_table(
    partial: pa.Table,
    layer_order: Sequence[str],
    exposure_order: Sequence[str],
    adjustment_order: Sequence[str],
    feature_order: dict[str, Sequence[str]],
    fdr_by: Sequence[str],
    model_order: Sequence[str] = ("lm",),
) -> pa.Table:
    """The rows of ``partial`` in plan order (layer, exposure, adjustment, model, feature) with ``q``: :data:`RESULT_SCHEMA`.

    ``partial`` has :data:`PARTIAL_SCHEMA`, or its label columns dictionary-encoded
    (:data:`ENCODED_PARTIAL_SCHEMA`, with any dictionaries per chunk): they are decoded here.

    The order does not depend on how features were chunked or which worker
    finished first, so results of any two runs compare row by row. Missing
    values of float columns are nulls (NaN included), as in a table made from
    the pandas frame (:func:`results_table`).
    """
    n = partial.num_rows
    feature_rank = np.zeros(n, dtype=np.int64)
    for layer, features in feature_order.items():
        rows = np.asarray(pc.equal(partial["layer"], layer).fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)
        if rows.any():
            feature_rank[rows] = key_codes(partial["feature"].filter(pa.array(rows)), features)
    order = np.lexsort(
        (
            feature_rank,
            key_codes(partial["model"], model_order),
            key_codes(partial["adjustment"], adjustment_order),
            key_codes(partial["exposure"], exposure_order),
            key_codes(partial["layer"], layer_order),
        )
    )
    table = partial.take(pa.array(order))
    p = float_values(table["p"])
    q = np.where(np.isnan(p), np.nan, benjamini_hochberg_grouped(p, first_seen_groups(table, fdr_by)))
    columns = {name: table[name] for name in table.column_names}
    columns["q"] = pa.chunked_array([pa.array(q, type=pa.float64())])
    arrays = []
    for field in RESULT_SCHEMA:
        column = columns[field.name]
        if pa.types.is_floating(field.type):  # NaN -> null: pandas reads both as missing and writes nulls back
            column = pc.if_else(pc.is_nan(column), pa.scalar(None, field.type), column)
        elif pa.types.is_dictionary(column.type):
            column = column.cast(field.type)
        arrays.append(column)
    return pa.Table.from_arrays(arrays, schema=RESULT_SCHEMA)


def results_frame(table: pa.Table) -> pd.DataFrame:
    """The results table (:data:`RESULT_SCHEMA`) as pandas: counts nullable ``Int64``, ``q`` nullable ``Float64``."""
    frame = table.to_pandas(types_mapper=_INT64_AS_NULLABLE)
    frame["q"] = pd.array(frame["q"].to_numpy(dtype=np.float64), dtype="Float64")
    return frame[[c.name for c in RESULT_COLUMNS]]


def assemble_results(
    partial: pa.Table,
    layer_order: Sequence[str],
    exposure_order: Sequence[str],
    adjustment_order: Sequence[str],
    feature_order: dict[str, Sequence[str]],
    fdr_by: Sequence[str],
    model_order: Sequence[str] = ("lm",),
) -> pd.DataFrame:
    """:func:`assemble_table` as a pandas frame (:func:`results_frame`)."""
    return results_frame(assemble_table(partial, layer_order, exposure_order, adjustment_order, feature_order, fdr_by, model_order))


def family_q(frame: pd.DataFrame, by: Sequence[str], p_column: str = "p") -> np.ndarray:
    """Benjamini-Hochberg q-values within families of rows that share the values of ``by``.

    Columns of ``by`` that ``frame`` lacks are ignored (no column: one family).
    Missing p-values are left out of their family, as R's ``p.adjust`` does, and
    get NaN. Returns ``(len(frame),)`` float64.
    """
    columns = [c for c in by if c in frame.columns]
    family = frame.groupby(columns, sort=False).ngroup().to_numpy() if columns and len(frame) else np.zeros(len(frame), dtype=np.int64)
    p = frame[p_column].to_numpy(dtype=np.float64, na_value=np.nan)
    return np.where(np.isnan(p), np.nan, benjamini_hochberg_grouped(p, family))


def family_q_order(family: np.ndarray, q: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Row positions sorted by q within each family (families in the order of their codes), then p; rows without p last, in order.

    ``family`` int codes, ``q`` and ``p`` float64 with NaN for missing, each ``(m,)``.
    """
    missing = np.isnan(p)
    # Ties keep plan order: the row position is the last key.
    return np.lexsort((np.arange(len(p)), np.where(missing, np.inf, p), np.where(np.isnan(q), np.inf, q), missing, family))


def sorted_by_family_q(frame: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """The rows of ``frame`` (in plan order) sorted by q within each FDR family of ``by``.

    Families keep the order in which they first appear (plan order); within a
    family rows go by q, then p, and rows without a p-value come last, in their
    plan order. Columns of ``by`` that ``frame`` lacks are ignored.
    """
    columns = [c for c in by if c in frame.columns]
    family = frame.groupby(columns, sort=False).ngroup().to_numpy() if columns and len(frame) else np.zeros(len(frame), dtype=np.int64)
    q = frame["q"].to_numpy(dtype=np.float64, na_value=np.nan)
    p = frame["p"].to_numpy(dtype=np.float64, na_value=np.nan)
    return frame.iloc[family_q_order(family, q, p)].reset_index(drop=True)


def sorted_table_by_family_q(table: pa.Table, by: Sequence[str]) -> pa.Table:
    """:func:`sorted_by_family_q` of a results table (:data:`RESULT_SCHEMA`), without pandas."""
    order = family_q_order(first_seen_groups(table, by), float_values(table["q"]), float_values(table["p"]))
    return table.take(pa.array(order))


def significant_table(table: pa.Table, alpha: float) -> pa.Table:
    """The rows of a results table with ``q < alpha``, by q (ties in plan order)."""
    q = float_values(table["q"])
    with np.errstate(invalid="ignore"):
        rows = np.flatnonzero(q < alpha)
    return table.take(pa.array(rows[np.argsort(q[rows], kind="stable")]))


def results_table(frame: pd.DataFrame) -> pa.Table:
    """The results frame as an Arrow table with the registered schema."""
    return pa.Table.from_pandas(frame, schema=RESULT_SCHEMA, preserve_index=False)
