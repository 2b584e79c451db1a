"""Reading AnnData ``.h5ad`` files (``X``: samples = ``obs_names``, features = ``var_names``) a block of features at a time.

The file is read with h5py (imported here, on first use) following AnnData's
documented on-disk format (encoding-type attributes, anndata >= 0.7), not through
the anndata package: anndata caps pandas below 3 (and under pandas 3 cannot even
write a default string index), a price every user would pay for what is a few
datasets read by name. Files written by anndata itself are the test fixtures.

Memory, by the layout of ``X``:

- dense (``encoding-type: array``): each block reads its columns ``X[:, a:b]``
  straight from the file (one block in memory);
- ``csc_matrix``: a block's columns are one contiguous run of ``data``/``indices``
  (one block plus its non-zeros);
- ``csr_matrix`` (scanpy's usual): a column block needs every row, so rows are read
  in batches of about :data:`~scalable_assoc.io.wide.WIDE_BATCH_CELLS` cells,
  densified, and laid out block by block in a temporary file (as a wide TSV is:
  :func:`~scalable_assoc.io.wide.blocks_through_file`, 8 bytes per value on disk);
  memory holds one batch of rows and one block.

A layer (``layers/<name>``, plan key ``h5ad_layer``) is read instead of ``X`` when named; it is
laid out as ``X`` is. ``obs`` can be the metadata table (``data.metadata: file.h5ad``; :func:`read_h5ad_obs`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from scalable_assoc.errors import DataError
from scalable_assoc.io.table_text import reading_problem
from scalable_assoc.io.table_values import TableStream, check_ids, validated_values
from scalable_assoc.io.wide import WIDE_BATCH_CELLS, blocks_through_file

_MATRIX_ENCODINGS = ("array", "csr_matrix", "csc_matrix")


def _open(path: Path) -> Any:
    import h5py

    try:
        return h5py.File(path, "r")
    except OSError as error:
        raise DataError(f"{path}: cannot be read as an AnnData .h5ad file (HDF5): {reading_problem(error)}") from None


def _encoding(node: Any) -> str:
    value = node.attrs.get("encoding-type", "")
    return value.decode() if isinstance(value, bytes) else str(value)


def _index(path: Path, handle: Any, axis: str) -> pd.Index:
    """``obs_names`` or ``var_names``: the dataframe's ``_index`` column (string or nullable-string array)."""
    import h5py

    frame = handle.get(axis)
    if not isinstance(frame, h5py.Group) or _encoding(frame) != "dataframe":
        raise DataError(
            f"{path}: '{axis}' is not an AnnData dataframe; the file may be written by anndata older than 0.7 "
            f"(re-save it with a recent anndata: anndata.read_h5ad(path).write_h5ad(new_path))"
        )
    name = frame.attrs.get("_index", "_index")
    node = frame.get(name.decode() if isinstance(name, bytes) else str(name))
    if isinstance(node, h5py.Dataset):
        values = [None if v is None else str(v) for v in node.asstr()[:]]
    elif isinstance(node, h5py.Group) and _encoding(node) == "nullable-string-array":
        strings, mask = node["values"].asstr()[:], node["mask"][:].astype(bool)
        values = [None if missing else str(v) for v, missing in zip(strings, mask, strict=True)]
    else:
        raise DataError(f"{path}: the index of '{axis}' is not a string array ({_encoding(node) if node is not None else 'missing'})")
    return pd.Index(values, dtype=object)


def _layer_names(handle: Any) -> list[str]:
    """The names under ``layers/`` (empty without the group)."""
    import h5py

    layers = handle.get("layers")
    return sorted(layers) if isinstance(layers, h5py.Group) else []


def stream_h5ad(path: Path, scratch: Path | None = None, layer: str | None = None) -> TableStream:
    """An ``.h5ad`` file's ``X`` (or ``layers/<layer>``) as a :class:`TableStream` (samples: ``obs_names``, features: ``var_names``).

    Parameters
    ----------
    path
        The ``.h5ad`` file.
    scratch
        Folder of the temporary file a ``csr_matrix`` X goes through (see the module docstring);
        None: the system's temporary folder.
    layer
        The name of a layer under ``layers/`` read instead of ``X`` (plan key ``h5ad_layer``); None: ``X``.

    Returns
    -------
    TableStream
        Values checked as every reader checks them (non-negative, finite; NaN is a missing value).

    Raises
    ------
    DataError
        Not an ``.h5ad`` file, no ``X`` or no such layer (the layers present are listed), an X layout other than
        dense, CSR or CSC, repeated IDs, or a bad value.
    """
    import h5py

    where, what = ("X", "X") if layer is None else (f"layers/{layer}", f"layer '{layer}' (layers/{layer})")
    with _open(path) as handle:
        sample_ids, feature_ids = _index(path, handle, "obs"), _index(path, handle, "var")
        x = handle.get(where)
        if x is None:
            present = _layer_names(handle)
            listed = f"the layers present are: {', '.join(present)}" if present else "it has no layers"
            hint = "; name one with the layer key 'h5ad_layer'" if present and layer is None else ""
            raise DataError(f"{path}: {what} is missing; {listed}{hint}")
        kind = _encoding(x)
        if kind not in _MATRIX_ENCODINGS or isinstance(x, h5py.Dataset) != (kind == "array"):
            raise DataError(
                f"{path}: {what} is {repr(kind or 'of an unknown layout')}; a dense array or a CSR/CSC sparse matrix is expected"
            )
        shape = tuple(int(n) for n in (x.shape if kind == "array" else x.attrs["shape"]))
        stored = x.dtype if kind == "array" else x["data"].dtype if isinstance(x.get("data"), h5py.Dataset) else None
        if stored is not None and stored.kind not in "biuf":
            raise DataError(f"{path}: {what} holds {stored} values, not numbers; abundances must be non-negative numbers")
    check_ids(path, "sample", sample_ids)
    check_ids(path, "feature", feature_ids)
    if shape != (len(sample_ids), len(feature_ids)):
        raise DataError(f"{path}: {what} has shape {shape}, but there are {len(sample_ids)} obs_names and {len(feature_ids)} var_names")
    n_samples, n_features = shape

    def checked(values: np.ndarray, columns: slice, rows: slice = slice(None)) -> np.ndarray:
        frame = pd.DataFrame(values, index=sample_ids[rows], columns=feature_ids[columns])
        # C order, as every reader's blocks: the store's per-sample sums then add in the same order, bit for bit.
        return np.ascontiguousarray(validated_values(path, frame, samples_are_rows=True))

    def read_failed(error: Exception) -> DataError:
        return DataError(f"{path}: cannot read {what}: {reading_problem(error)}")

    def column_blocks(width: int) -> Iterator[np.ndarray]:
        try:
            with _open(path) as handle:
                x = handle[where]
                indptr = x["indptr"] if kind == "csc_matrix" else None
                for start in range(0, n_features, width):
                    stop = min(start + width, n_features)
                    if indptr is None:
                        values = np.asarray(x[:, start:stop], dtype=np.float64)
                    else:
                        ends = indptr[start : stop + 1].astype(np.int64)
                        data = np.asarray(x["data"][ends[0] : ends[-1]], dtype=np.float64)
                        rows = np.asarray(x["indices"][ends[0] : ends[-1]], dtype=np.int64)
                        values = np.zeros((n_samples, stop - start))
                        values[rows, np.repeat(np.arange(stop - start), np.diff(ends))] = data
                    yield checked(values, slice(start, stop))
        except (OSError, KeyError, ValueError, TypeError) as error:
            raise read_failed(error) from None

    def row_batches() -> Iterator[np.ndarray]:
        rows_per_read = max(1, WIDE_BATCH_CELLS // max(1, n_features))
        try:
            with _open(path) as handle:
                x = handle[where]
                indptr = x["indptr"][:].astype(np.int64)
                for start in range(0, n_samples, rows_per_read):
                    stop = min(start + rows_per_read, n_samples)
                    ends = indptr[start : stop + 1]
                    data = np.asarray(x["data"][ends[0] : ends[-1]], dtype=np.float64)
                    columns = np.asarray(x["indices"][ends[0] : ends[-1]], dtype=np.int64)
                    values = np.zeros((stop - start, n_features))
                    values[np.repeat(np.arange(stop - start), np.diff(ends)), columns] = data
                    yield checked(values, slice(None), slice(start, stop))
        except (OSError, KeyError, ValueError, TypeError, IndexError) as error:
            raise read_failed(error) from None

    def blocks(width: int) -> Iterator[np.ndarray]:
        if kind == "csr_matrix":
            return blocks_through_file(path, row_batches(), n_samples, n_features, width, scratch)
        return column_blocks(width)

    return TableStream(tuple(str(s) for s in sample_ids), tuple(str(f) for f in feature_ids), blocks, path)


def read_h5ad_obs(path: Path, id_column: str) -> pd.DataFrame:
    """An ``.h5ad`` file's ``obs`` as a metadata table: ``obs_names`` in column ``id_column``, then obs's columns in order.

    Columns follow AnnData's encodings: ``array`` (numbers, booleans), ``string-array``,
    ``categorical`` (its categories; code -1 is missing), ``nullable-integer``,
    ``nullable-boolean`` and ``nullable-string-array`` (masked values are missing). A
    categorical column becomes its category values (strings or numbers), as a TSV column
    would read, so plan queries and covariates treat it the same.

    Raises
    ------
    DataError
        Not an ``.h5ad`` file, ``obs`` not an AnnData dataframe, a column of another encoding
        (named, with its encoding), or an obs column already called ``id_column``.
    """
    import h5py

    with _open(path) as handle:
        names = _index(path, handle, "obs")
        obs = handle["obs"]
        order = [c.decode() if isinstance(c, bytes) else str(c) for c in np.atleast_1d(obs.attrs.get("column-order", []))]
        if id_column in order:
            raise DataError(
                f"{path}: obs has a column '{id_column}' beside obs_names, which are the sample IDs of an .h5ad file; "
                "rename the column, or set data.sample_id_column to a name obs does not use"
            )
        columns: dict[str, Any] = {id_column: names.astype(str)}
        for name in order:
            node = obs.get(name)
            try:
                columns[name] = _obs_column(node, h5py)
            except (KeyError, ValueError, TypeError) as error:
                kind = _encoding(node) if node is not None else "missing"
                raise DataError(
                    f"{path}: obs column '{name}' (encoding {kind!r}) cannot be read as a metadata column: {reading_problem(error)}"
                ) from None
    return pd.DataFrame(columns)


def _obs_column(node: Any, h5py: Any) -> Any:
    """One obs column as numpy/pandas values (missing as NaN/None), by its AnnData encoding."""
    kind = _encoding(node)
    if isinstance(node, h5py.Dataset) and kind == "array":
        return node[:]
    if isinstance(node, h5py.Dataset) and kind == "string-array":
        return np.asarray(node.asstr()[:], dtype=object)
    if isinstance(node, h5py.Group) and kind == "categorical":
        categories = node["categories"]
        levels = np.asarray(categories.asstr()[:] if categories.dtype.kind in "OS" else categories[:], dtype=object)
        codes = node["codes"][:].astype(np.int64)
        values = np.where(codes >= 0, levels[np.clip(codes, 0, max(len(levels) - 1, 0))] if len(levels) else None, None)
        return pd.Series(values, dtype=object).infer_objects()
    if isinstance(node, h5py.Group) and kind in ("nullable-integer", "nullable-boolean", "nullable-string-array"):
        stored, mask = node["values"], node["mask"][:].astype(bool)
        if kind == "nullable-integer":  # as a TSV column of integers with an empty cell reads: floats, NaN missing
            return np.where(mask, np.nan, stored[:].astype(np.float64))
        masked = np.asarray(stored.asstr()[:] if kind == "nullable-string-array" else stored[:], dtype=object)
        masked[mask] = None
        return masked
    raise TypeError(f"an obs column encoded as {kind!r} is not a table column (expected a number, string or categorical column)")
