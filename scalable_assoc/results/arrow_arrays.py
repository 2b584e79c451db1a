"""NumPy arrays and short string lists to Arrow arrays, built from their buffers: a worker's result tables without pandas.

``pyarrow.array`` imports pandas at its first call in a process, whatever it is
given (it asks pandas whether the input is one of its types): about 0.2 s of CPU
in each worker at its first fit task, paid on the way to a cold run's first
result. The workers' task modules import no pandas otherwise (their fork server
imports only what the tasks use), so the partial result tables
(:mod:`scalable_assoc.results.partials`) are built here, from each column's
values, validity bitmap and (for strings) offsets, as Arrow lays them out.
The arrays equal what ``pyarrow.array`` makes of the same values (tested);
nothing here calls it, nor ``pyarrow.compute``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

#: Largest offset of a ``pa.string()`` array (32-bit offsets).
_STRING_BYTES_MAX = 2**31 - 1


def _validity(null: np.ndarray | None, size: int) -> tuple[pa.Buffer | None, int]:
    """Arrow's validity bitmap (bit set where valid, least significant bit first) and null count; no bitmap without nulls."""
    if null is None:
        return None, 0
    null = np.asarray(null, dtype=bool).ravel()
    if null.shape != (size,):
        raise ValueError(f"a null mask of shape {null.shape} for {size} values")
    nulls = int(np.count_nonzero(null))
    if nulls == 0:
        return None, 0
    return pa.py_buffer(np.packbits(~null, bitorder="little")), nulls


def float64_array(values: np.ndarray, null: np.ndarray | None = None, nan_is_null: bool = False) -> pa.Array:
    """``(n,)`` float64 values as a ``pa.float64()`` array, null where ``null`` (``(n,)`` bool) is set.

    With ``nan_is_null`` NaN values are null too (``pyarrow.array(..., from_pandas=True)``).
    """
    flat = np.ascontiguousarray(values, dtype=np.float64).ravel()
    if nan_is_null:
        missing = np.isnan(flat)
        null = missing if null is None else (np.asarray(null, dtype=bool).ravel() | missing)
    bitmap, nulls = _validity(null, flat.size)
    return pa.Array.from_buffers(pa.float64(), flat.size, [bitmap, pa.py_buffer(flat)], null_count=nulls)


def int64_array(values: np.ndarray, null: np.ndarray | None = None) -> pa.Array:
    """``(n,)`` whole numbers as a ``pa.int64()`` array, null where ``null`` (``(n,)`` bool) is set.

    Floats must hold whole numbers (as ``pyarrow.array`` requires of them for an integer type).
    """
    given = np.asarray(values).ravel()
    if given.dtype.kind not in "iub" and not (np.isfinite(given).all() and np.array_equal(np.trunc(given), given)):
        raise ValueError(f"{given.dtype} values that are not whole numbers for an int64 column")
    flat = np.ascontiguousarray(given, dtype=np.int64)
    bitmap, nulls = _validity(null, flat.size)
    return pa.Array.from_buffers(pa.int64(), flat.size, [bitmap, pa.py_buffer(flat)], null_count=nulls)


def _encoded(values: Sequence[str]) -> tuple[list[bytes], np.ndarray]:
    """Each string's UTF-8 bytes and ``(len(values),)`` their lengths."""
    encoded = [value.encode("utf-8") for value in values]
    return encoded, np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))


def _string_array(row_lengths: np.ndarray, data: bytes | np.ndarray) -> pa.Array:
    """A ``pa.string()`` array of ``data`` (every row's bytes, one after another) cut at ``(n,)`` ``row_lengths``."""
    offsets = np.zeros(row_lengths.size + 1, dtype=np.int64)
    np.cumsum(row_lengths, out=offsets[1:])
    if offsets[-1] > _STRING_BYTES_MAX:
        raise ValueError(f"{offsets[-1]} bytes of text in one string column (at most {_STRING_BYTES_MAX})")
    buffers = [None, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(data)]
    return pa.Array.from_buffers(pa.string(), row_lengths.size, buffers, null_count=0)


def strings_at(distinct: Sequence[str], positions: np.ndarray) -> pa.Array:
    """``distinct[positions]`` as a ``pa.string()`` array: ``(n,)`` strings taken from a few by position.

    ``positions`` ``(n,)`` integers in ``0..len(distinct) - 1``. Made of runs of
    one position (a status column is mostly 'ok'), each run's bytes one string's
    repeated: the work grows with the runs, about 0.3 microseconds each.
    """
    encoded, lengths = _encoded(distinct)
    where = np.asarray(positions, dtype=np.intp).ravel()
    row_lengths = lengths[where]  # also refuses a position out of range
    starts = np.flatnonzero(np.diff(where, prepend=-1))  # first row of each run
    runs = np.diff(starts, append=where.size)
    return _string_array(row_lengths, b"".join(encoded[i] * n for i, n in zip(where[starts].tolist(), runs.tolist(), strict=True)))


def repeated_strings(values: Sequence[str], times: int) -> pa.Array:
    """``(len(values) * times,)`` strings: each of ``values`` ``times`` times over, in order (``np.repeat``)."""
    encoded, lengths = _encoded(values)
    return _string_array(np.repeat(lengths, times), b"".join(value * times for value in encoded))


def tiled_strings(values: Sequence[str], times: int) -> pa.Array:
    """``(len(values) * times,)`` strings: all of ``values``, ``times`` times over (``np.tile``)."""
    encoded, lengths = _encoded(values)
    return _string_array(np.tile(lengths, times), b"".join(encoded) * times)


def empty_table(schema: pa.Schema) -> pa.Table:
    """A table of ``schema`` without rows (``schema.empty_table()`` goes through pandas)."""
    return pa.Table.from_batches([], schema=schema)
