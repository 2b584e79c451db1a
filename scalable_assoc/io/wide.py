"""Reading wide TSV/CSV tables (samples as rows, sample IDs in the first column) a block of features at a time.

The text arrives a sample at a time but blocks are features for all samples,
so the values go through a temporary file on disk (:func:`stream_wide`).
"""

from __future__ import annotations

import csv
import io
import logging
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from scalable_assoc.errors import DataError
from scalable_assoc.io.table_text import data_rows, raw_header, reading_problem, table_separator
from scalable_assoc.io.table_values import (
    SmallestPositive,
    TableStream,
    check_ids,
    check_sample_id_column,
    read_ahead,
    reused_block,
    validated_values,
)
from scalable_assoc.io.text_values import Declined, TextTable, row_ids_and_widths, row_values
from scalable_assoc.stats.transforms import smallest_positive

logger = logging.getLogger(__name__)

#: Cells in one batch of rows of a wide table (16 MiB as float64): with one block, what reading a wide table holds in memory.
WIDE_BATCH_CELLS = 1 << 21
#: Bytes of values (8 a value) up to which a wide table's blocks are put together in memory, not in a temporary file:
#: no more than the file route holds (a batch of rows and one or two blocks of the store's ~32 MiB chunks).
WIDE_IN_MEMORY_BYTES = 64 * 2**20


def read_as_missing(values: Sequence[str]) -> np.ndarray:
    """Which of ``values`` pandas reads as missing (its default NA strings: ``''``, ``NA``, ``NaN``, ``NULL`` ...).

    Asked of ``pandas.read_csv`` itself, each value a quoted field of a one-column
    table, so an ID counts as missing exactly when the reader would make it NaN.

    Parameters
    ----------
    values
        Cells as written in the file, ``k`` of them.

    Returns
    -------
    numpy.ndarray
        ``(k,)`` bool.
    """
    if not len(values):
        return np.zeros(0, dtype=bool)
    text = io.StringIO()
    writer = csv.writer(text, quoting=csv.QUOTE_ALL, lineterminator="\n")
    writer.writerow(["value"])
    writer.writerows([value] for value in values)
    column = pd.read_csv(io.StringIO(text.getvalue()), dtype=str).iloc[:, 0]
    return column.isna().to_numpy()


def stream_wide(path: Path, rows_per_read: int | None = None, scratch: Path | None = None) -> TableStream:
    """A wide TSV/CSV table (samples as rows, sample IDs in the first column) as a :class:`TableStream`, never read whole.

    A first pass reads the sample IDs and checks every line's field count, so
    the IDs are checked before any value is. The text arrives a sample at a
    time but blocks are features for all samples, so ``blocks(width)`` parses
    ``rows_per_read`` rows at a time (default: about :data:`WIDE_BATCH_CELLS`
    cells), validates them, and writes each block's columns of them into a
    temporary file in ``scratch`` (default: the system's temporary folder),
    where every block lies whole (float64, 8 bytes per value); it then yields
    the blocks read back one at a time. Memory holds one batch of rows and one
    block; the file is removed when the blocks end, fail or are abandoned. The
    checks and messages are those of every reader (Parquet: :func:`~scalable_assoc.io.tables.stream_parquet`).

    Parameters
    ----------
    path
        The table (``.csv`` comma-separated, else tab; ``.gz``, ``.bz2``, ``.xz`` compressed too).
    rows_per_read
        Sample rows parsed at a time; None: about :data:`WIDE_BATCH_CELLS` cells.
    scratch
        Folder of the temporary file; None: the system's temporary folder.

    Returns
    -------
    TableStream
        Its sample and feature IDs, and ``blocks(width)`` yielding ``(n_samples, width)`` float64 arrays.
    """
    sample_ids, feature_names = _wide_layout(path)
    rows = rows_per_read or max(1, WIDE_BATCH_CELLS // len(feature_names))

    smallest = SmallestPositive()

    def blocks(width: int) -> Iterator[np.ndarray]:
        return blocks_through_file(
            path, _wide_batches(path, sample_ids, feature_names, rows), len(sample_ids), len(feature_names), width, scratch, smallest
        )

    return TableStream(sample_ids, tuple(str(f) for f in feature_names), blocks, path, smallest_positive=smallest)


def _wide_layout(path: Path) -> tuple[tuple[str, ...], list[str]]:
    """The first pass: sample IDs and feature names, checked (every line's field count too)."""
    header = raw_header(path, 0)
    # Checked before pandas reads the file: it would rename a repeated feature 'X' to 'X.1'.
    check_ids(path, "feature", pd.Index(header[1:]))
    checked = _checked_first_fields(path, header)
    firsts, header_is_short = data_rows(path, 0, "sample") if checked is None else (checked, False)
    if not header:
        raise DataError(f"{path}: cannot be read as a table with samples as rows: the file is empty")
    feature_names = header if header_is_short else header[1:]
    if not feature_names:
        raise DataError(f"{path}: no feature columns after the sample ID column")
    if not firsts:
        raise DataError(f"{path}: the table has a header but no sample rows")
    # An ID pandas reads as missing ('', 'NA', ...) is missing here too (the text pass declines a table with one).
    missing = read_as_missing(firsts) if checked is None else np.zeros(len(firsts), dtype=bool)
    ids = pd.Index([None if absent else first for first, absent in zip(firsts, missing, strict=True)], dtype=object)
    # Before the ID checks: a missing ID column shows up as "duplicate IDs 0, 0, ..." otherwise.
    check_sample_id_column(path, ids, None if header_is_short else header[0] or None)
    check_ids(path, "sample", ids)
    if header_is_short:  # the first header field names a feature too (header[1:] is checked above)
        check_ids(path, "feature", pd.Index(feature_names))
    return tuple(str(i) for i in ids), feature_names


def _checked_first_fields(path: Path, header: list[str]) -> list[str] | None:
    """Every data line's first field (a sample ID) when every data line has as many fields as ``header``; None otherwise,
    or where this pass over the text declines the table (:func:`~scalable_assoc.io.text_values.row_ids_and_widths`).

    Why: :func:`~scalable_assoc.io.table_text.data_rows` reads the file a line at a time in Python: the reader's
    first pass over the reference study's pathways table (52 MB, 7,656 lines) took 0.09-0.12 s of CPU, on the
    conversion's critical path (nothing is parsed before it ends), and 0.06 s this way, where NumPy finds the line
    ends and separators (as for MetaPhlAn tables). It returns IDs only where :func:`data_rows` would return the
    same ones with a header that is not one field short (every line exactly the header's width), and no ID that
    pandas reads as missing; anything else (other widths, a quote, a line of blanks, text that is not UTF-8) is left
    to :func:`data_rows`, which checks it and words its errors as before.
    """
    if len(header) < 2:
        return None
    try:
        ids, widths_match = row_ids_and_widths(TextTable(path, table_separator(path), 1, len(header)))
    except Declined as why:
        logger.debug("%s: sample IDs read line by line (%s)", path, why)
        return None
    return ids if widths_match and ids else None


def _wide_batches(path: Path, sample_ids: tuple[str, ...], feature_names: list[str], rows: int) -> Iterator[np.ndarray]:
    """Validated ``(rows, n_features)`` values, a batch of rows at a time, in file order.

    pyarrow reads the rows while it reads them as pandas does (:mod:`~scalable_assoc.io.text_values`),
    each batch's IDs checked against the first pass; pandas reads the rest (and words every error).
    """
    n_features = len(feature_names)
    layout = TextTable(path, table_separator(path), 1, n_features + 1)
    done = 0
    try:
        for ids, values in row_values(layout, 1, with_ids=True):
            if tuple(ids or ()) != sample_ids[done : done + len(values)]:
                raise Declined("sample IDs other than the first pass's")
            yield values
            done += len(values)
    except Declined as why:
        logger.debug("%s: sample rows %d on read by pandas (%s)", path, done + 1, why)
    if done < len(sample_ids):
        yield from _pandas_wide_batches(path, sample_ids, feature_names, rows, done)


def _pandas_wide_batches(path: Path, sample_ids: tuple[str, ...], feature_names: list[str], rows: int, start: int) -> Iterator[np.ndarray]:
    """:func:`_wide_batches` by pandas, from sample row ``start`` on (the rows before it are read but not yielded)."""
    n_samples, n_features = len(sample_ids), len(feature_names)
    done = 0
    try:
        with pd.read_csv(path, sep=table_separator(path), index_col=0, dtype={0: str}, chunksize=rows) as reader:
            for frame in reader:
                expected = sample_ids[done : done + len(frame)]
                read = tuple(None if pd.isna(v) else str(v) for v in frame.index)
                if read != expected or frame.shape[1] != n_features:
                    # Not expected from a file that stays as it is; never a silent misplacement if it does not.
                    raise DataError(
                        f"{path}: sample rows {done + 1}-{done + len(frame)} read differently from a first pass over the file "
                        f"({frame.shape[1]} values per row, IDs from {read[0]!r}; expected {n_features}, from "
                        f"{expected[0] if expected else None!r}). "
                        f"Was the file changed while it was read?"
                    )
                skip = max(0, start - done)
                done += len(frame)
                if skip >= len(frame):
                    continue
                frame = frame.iloc[skip:]
                frame.index, frame.columns = pd.Index(expected[skip:], dtype=object), pd.Index(feature_names, dtype=object)
                yield validated_values(path, frame, samples_are_rows=True)
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as error:
        raise DataError(f"{path}: cannot be read as a table with samples as rows: {reading_problem(error)}") from None
    if done != n_samples:
        raise DataError(f"{path}: {done} sample rows read, but a first pass found {n_samples}; was the file changed while it was read?")


def blocks_through_file(
    path: Path,
    batches: Iterator[np.ndarray],
    n_samples: int,
    n_features: int,
    width: int,
    scratch: Path | None,
    smallest: SmallestPositive | None = None,
) -> Iterator[np.ndarray]:
    """Write ``batches`` (rows of all features) into a temporary file laid out block by block; yield the blocks read back.

    ``smallest`` is given the table's smallest value > 0 before the first block is yielded: every value has been read by then.
    A table of one block, or of at most :data:`WIDE_IN_MEMORY_BYTES`, is laid out the same way in memory instead
    (:func:`_blocks_in_memory`).
    """
    bounds = [(start, min(start + width, n_features)) for start in range(0, n_features, width)]
    if bounds and (len(bounds) == 1 or 8 * n_samples * n_features <= WIDE_IN_MEMORY_BYTES):
        yield from _blocks_in_memory(path, batches, n_samples, bounds, smallest)
        return
    least = np.inf
    folder: Path | None = None
    try:
        folder = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".rows.tmp", dir=scratch))
        with (folder / "values.f64").open("w+b") as handle:
            done = 0
            for values in read_ahead(batches):  # parsed in a thread of its own while the last batch is written out
                # Block by block, each holding all samples: rows done..done+k of a block are one contiguous run.
                for start, stop in bounds:
                    handle.seek(8 * (n_samples * start + done * (stop - start)))
                    handle.write(np.ascontiguousarray(values[:, start:stop]).data)
                done += values.shape[0]
                if smallest is not None:
                    # NaN > 0 is False; branch-free (np.min with where= took 1.9 ms a block of text, this 0.2 ms)
                    least = min(least, float(smallest_positive(values, values > 0).min(initial=np.inf)))
            if smallest is not None:
                smallest.value = least
            spare: list[np.ndarray] = []  # blocks the store writer has let go of, filled again (no fresh memory)
            for start, stop in bounds:
                block = reused_block(spare, (n_samples, stop - start))
                handle.seek(8 * n_samples * start)
                if handle.readinto(block.data.cast("B")) != block.nbytes:
                    raise DataError(f"{path}: the temporary file {handle.name} ended early; was it changed while it was written?")
                yield block
                del block  # only the consumer's reference left, so the block can be re-used once it lets go
    except OSError as error:
        place = folder or scratch or Path(tempfile.gettempdir())
        raise DataError(
            f"{path}: cannot write or read the temporary file in {place}: {error.strerror or error}. The table is converted "
            f"through a temporary file of {8 * n_samples * n_features / 2**30:.2f} GiB there (8 bytes per value)."
        ) from None
    finally:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


def _blocks_in_memory(
    path: Path, batches: Iterator[np.ndarray], n_samples: int, bounds: list[tuple[int, int]], smallest: SmallestPositive | None
) -> Iterator[np.ndarray]:
    """:func:`blocks_through_file` in memory: the rows put in place as they come in one buffer laid out block by block
    (as the file is), each ``(n_samples, stop - start)`` block then yielded as a view of it, not copied.

    Why: for a table of one block, the block is held whole anyway; for a small table the buffer is no larger than
    what the file route holds (a batch of rows and a block or two). Writing the file and reading it back took 37-49
    ms CPU (56-110 ms wall, load ~6) of the reference pathways table's conversion (40 MB of values, two blocks)
    against 12-13 ms this way, and 3 of gbm's 4 ms between parse and store.
    """
    buffer = np.empty(n_samples * bounds[-1][1])
    least = np.inf
    done = 0
    for values in read_ahead(batches):  # parsed in a thread of its own while the last batch is copied
        rows = values.shape[0]
        if done + rows > n_samples:
            break
        for start, stop in bounds:  # rows done..done+rows of a block are one contiguous run of it
            width = stop - start
            first = n_samples * start + done * width
            buffer[first : first + rows * width].reshape(rows, width)[:] = values[:, start:stop]
        done += rows
        if smallest is not None:
            least = min(least, float(smallest_positive(values, values > 0).min(initial=np.inf)))
    if done != n_samples:
        raise DataError(f"{path}: {done} sample rows read, but a first pass found {n_samples}; was the file changed while it was read?")
    if smallest is not None:
        smallest.value = least
    for start, stop in bounds:
        yield buffer[n_samples * start : n_samples * stop].reshape(n_samples, stop - start)
