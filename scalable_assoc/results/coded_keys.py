"""Cohorts' key columns as integer codes: reading, matching and lining up rows without Python strings per row.

``meta`` and ``pool`` line up millions of rows of several cohorts by their keys
(layer, feature, exposure, adjustment, model). Comparing those as text row by
row is what made them slow; here each key column is read dictionary-encoded
(Parquet stores it so), each cohort's dictionary (a few hundred thousand
names at most) is translated once into codes shared by all cohorts (features
through :func:`~scalable_assoc.results.harmonise.harmonised_names`), and rows are
matched on one ``int64`` composite code per row.

Row order is the order of first appearance over the cohorts in file order
(the first cohort's rows as written, then each later cohort's new rows), as
``pandas.DataFrame.drop_duplicates`` gave it before.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from scalable_assoc.errors import DataError
from scalable_assoc.results.harmonise import harmonised_names

#: A composite key space at most this many times the rows (plus a million) is addressed densely; a larger one is hashed.
_DENSE_FACTOR = 4


def worker_threads() -> int:
    """Threads worth using for NumPy / Arrow work (the CPUs this process may run on, at least 1)."""
    import os

    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def thread_map(function, items: Sequence, threads: int | None = None) -> list:  # type: ignore[no-untyped-def]
    """``[function(item) for item in items]`` on a few threads (NumPy and Arrow release the GIL in their loops)."""
    threads = worker_threads() if threads is None else threads
    if threads <= 1 or len(items) <= 1:
        return [function(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(threads, len(items))) as pool:
        return list(pool.map(function, items))


class Dictionary:
    """Text values of one key column shared by all cohorts: value -> code, in order of first appearance."""

    def __init__(self) -> None:
        self.code_of: dict[str, int] = {}

    def codes(self, values: Sequence[str]) -> np.ndarray:
        """``(len(values),)`` int64 codes of ``values``, new values appended."""
        out = np.empty(len(values), dtype=np.int64)
        code_of = self.code_of
        for i, value in enumerate(values):
            code = code_of.get(value)
            if code is None:
                code = code_of[value] = len(code_of)
            out[i] = code
        return out

    @property
    def values(self) -> list[str]:
        return list(self.code_of)

    def __len__(self) -> int:
        return len(self.code_of)


def dictionary_column(table: pa.Table, column: str, source: str) -> tuple[np.ndarray, list[str]]:
    """Indices ``(rows,)`` (int32, or int64 for a dictionary of 2**31 values or more) and the dictionary of a key
    column; a missing value is refused."""
    array = table.column(column)
    if not pa.types.is_dictionary(array.type):
        array = array.dictionary_encode()
    if array.null_count:
        raise DataError(f"{source}: column '{column}' has {array.null_count} empty cells; a key column must name every row")
    chunks = array.chunks if isinstance(array, pa.ChunkedArray) else [array]
    # The dictionary Arrow's combine_chunks would unify (each chunk's values in order, new ones appended),
    # built once per distinct dictionary: a Parquet reader gives each batch of a row group (dozens per file)
    # the row group's whole dictionary, and unifying every chunk's copy (a hash insert per feature name per
    # chunk) was half the time of reading a cohort of ten million rows.
    unified: pa.Array | None = None
    seen: pa.Array | None = None
    to_unified = np.zeros(0, dtype=np.int64)
    pieces = []
    for chunk in chunks:
        dictionary = chunk.dictionary
        if seen is None or not dictionary.equals(seen):
            seen = dictionary
            if unified is None:
                unified, to_unified = dictionary, np.arange(len(dictionary), dtype=np.int64)
            else:
                found = pc.index_in(dictionary, value_set=unified)
                added = found.null_count
                to_unified = found.fill_null(-1).to_numpy().astype(np.int64)
                if added:
                    to_unified[to_unified < 0] = np.arange(len(unified), len(unified) + added)
                    unified = pa.concat_arrays([unified, dictionary.filter(found.is_null())])
            to_unified = to_unified.astype(_index_type(len(unified)))
        pieces.append(to_unified[chunk.indices.to_numpy(zero_copy_only=False)])
    if unified is None:  # no chunks: an empty column
        return np.zeros(0, dtype=np.int64), []
    indices = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
    return indices, unified.to_pylist()


@dataclass(frozen=True)
class CodedKeys:
    """One cohort's key columns as codes into shared :class:`Dictionary` objects (each ``(rows,)`` int32, or int64 for a
    dictionary of 2**31 values or more)."""

    codes: dict[str, np.ndarray]
    source_feature: np.ndarray  # (rows,) code into ``source_names``: the feature as this cohort spells it
    source_names: list[str]


def code_keys(
    table: pa.Table, columns: Sequence[str], dictionaries: dict[str, Dictionary], mapping: dict[str, str] | None, source: str
) -> CodedKeys:
    """The key ``columns`` of ``table`` as shared codes; ``feature`` matched across spellings (mapping, species part)."""
    codes = {}
    source_feature = np.zeros(0, dtype=np.int64)
    source_names: list[str] = []
    for column in columns:
        indices, values = dictionary_column(table, column, source)
        if column == "feature":
            source_feature, source_names = indices, [str(v) for v in values]
            values = harmonised_names(pd.Series(source_names, dtype=object), mapping).tolist()
        lookup = dictionaries[column].codes(values)
        # int32 where the codes fit (always, in practice): half the memory of the cohort's codes, which are
        # held for every cohort until all are read (ten million rows x five columns each)
        codes[column] = lookup.astype(_index_type(len(dictionaries[column])))[indices]
    return CodedKeys(codes, source_feature, source_names)


def _index_type(size: int) -> type[np.signedinteger]:
    """The integer type for codes or positions below ``size``: int32 where they fit, else int64."""
    return np.int32 if size < 2**31 else np.int64


def composite(codes: dict[str, np.ndarray], columns: Sequence[str], sizes: Sequence[int]) -> np.ndarray:
    """One int64 per row from its column codes (mixed radix, the last column fastest)."""
    key = np.zeros(len(codes[columns[0]]) if columns else 0, dtype=np.int64)
    for column, size in zip(columns, sizes, strict=True):
        key *= size
        key += codes[column]
    return key


def decompose(key: np.ndarray, sizes: Sequence[int]) -> list[np.ndarray]:
    """The column codes of composite keys (inverse of :func:`composite`), in column order."""
    out = []
    rest = key.copy()
    for size in reversed(sizes):
        out.append(rest % size)
        rest //= size
    return out[::-1]


def key_space(sizes: Sequence[int]) -> int:
    space = 1
    for size in sizes:
        space *= max(int(size), 1)
    if space >= 2**62:
        raise DataError("too many distinct key values to combine (more than 2^62 combinations)")
    return space


def duplicated_rows(keys: np.ndarray, space: int) -> np.ndarray:
    """Positions of the rows whose key occurs more than once in ``keys``."""
    if keys.size == 0:
        return np.zeros(0, dtype=np.int64)
    if space <= _DENSE_FACTOR * keys.size + 1_000_000:
        counts = np.bincount(keys, minlength=space)
        return np.flatnonzero(counts[keys] > 1)
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    same = ordered[1:] == ordered[:-1]
    if not same.any():
        return np.zeros(0, dtype=np.int64)
    flag = np.zeros(keys.size, dtype=bool)
    flag[1:] |= same
    flag[:-1] |= same
    return np.sort(order[flag])


def line_up(per_cohort: Sequence[np.ndarray], space: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Unique keys in order of first appearance, and each cohort's row position among them.

    Parameters
    ----------
    per_cohort
        Each cohort's ``(rows_j,)`` composite keys, unique within the cohort.
    space
        Number of possible keys (the product of the dictionaries' sizes).

    Returns
    -------
    keys, rows
        ``(r,)`` the unique keys, first cohort's order first; per cohort ``(rows_j,)`` int64 positions into ``keys``.
    """
    total = sum(k.size for k in per_cohort)
    if space <= _DENSE_FACTOR * total + 1_000_000:
        row_of = np.full(space, -1, dtype=np.int64)
        found = 0
        rows = []
        pieces = []
        for keys in per_cohort:
            where = row_of[keys]
            new = where < 0
            added = int(new.sum())
            where[new] = np.arange(found, found + added)
            row_of[keys[new]] = where[new]
            found += added
            pieces.append(keys[new])
            rows.append(where)
        return (np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)), rows
    codes, uniques = pd.factorize(np.concatenate(per_cohort) if per_cohort else np.zeros(0, dtype=np.int64))
    bounds = np.cumsum([0] + [k.size for k in per_cohort])
    return np.asarray(uniques, dtype=np.int64), [codes[bounds[j] : bounds[j + 1]].astype(np.int64) for j in range(len(per_cohort))]


def text_column(codes: np.ndarray, values: Sequence[str]) -> pa.Array:
    """``values[codes]`` as a plain ``large_string`` Arrow column, without a Python string per row."""
    dictionary = pa.array(list(values), pa.large_string())
    return pa.DictionaryArray.from_arrays(pa.array(codes.astype(np.int32, copy=False)), dictionary).cast(pa.large_string())


def pattern_codes(flags: np.ndarray, base: int) -> np.ndarray | None:
    """Each row of a ``(r, k)`` small-integer matrix (values < ``base``) as one int64; None when ``base**k`` overflows."""
    rows, k = flags.shape
    if k == 0 or base**k >= 2**62:
        return None
    code = np.zeros(rows, dtype=np.int64)
    for j in range(k):
        code *= base
        code += flags[:, j]
    return code
