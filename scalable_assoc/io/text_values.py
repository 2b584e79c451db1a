"""Parsing a TSV/CSV abundance table with pyarrow's CSV reader: the fast path of the text readers.

pandas' reader (with :func:`~scalable_assoc.io.table_values.validated_values`) stays
the reference. It names the first bad cell and reads whatever this path declines;
this path reads a table only where the two agree cell for cell: decimal numbers
(both parse them correctly rounded) and pandas' default NA strings as missing
values. It raises :class:`Declined` as soon as it meets anything else (a cell
pyarrow cannot convert, a NaN not written as an NA string, an infinite, negative
or -0 value, a whole number past 2**63, a missing ID, a quote, a carriage return
inside a line, a compression it does not open as pandas does), and the reader goes
on with pandas from the first row not yet yielded, so every error and its message
stay pandas'.

Why: pandas builds a frame per batch and a Series per column (18,000 of them for
the reference MetaPhlAn table), while pyarrow converts a block of text straight
into float64; and a block of text (:data:`TEXT_BLOCK_BYTES`) bounds memory whatever
a row's width, where pandas' batches of rows grew with the number of samples (a
512-row batch of a 50,000-sample MetaPhlAn table is 200 MB of values, 1 GB of RSS
while converting).
"""

from __future__ import annotations

import logging
import lzma
import zlib
from collections import deque
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from scalable_assoc.errors import DataError
from scalable_assoc.io.table_text import check_row_lengths, open_binary
from scalable_assoc.process_memory import map_large_allocations

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

#: pandas' default NA strings (``pandas.read_csv``'s ``na_values``): cells read as missing (a test checks them against pandas).
PANDAS_NA_STRINGS = (
    "",
    "#N/A",
    "#N/A N/A",
    "#NA",
    "-1.#IND",
    "-1.#QNAN",
    "-NaN",
    "-nan",
    "1.#IND",
    "1.#QNAN",
    "<NA>",
    "N/A",
    "NA",
    "NULL",
    "NaN",
    "None",
    "n/a",
    "nan",
    "null",
)

#: False: every text table is read by pandas, as before this path existed (benchmarks and tests compare the two).
FAST_PATH = True

#: Bytes of text read and parsed at a time (whole lines; a longer line whole): 1 MiB, as larger blocks were no faster
#: and each holds ~10x its size while parsed (at 8 MiB the 50,000-sample MetaPhlAn table peaked 70 MB higher).
TEXT_BLOCK_BYTES = 2**20

#: Blocks of text parsed at once (:func:`in_order`): the machine this was measured on has 2 cores.
PARSE_THREADS = 2

#: File name endings pandas opens as archives or with codecs this path does not use (it declines them).
_DECLINED_ENDINGS = (".tar", ".tar.gz", ".tar.bz2", ".tar.xz", ".zip", ".zst")

#: What reading through pyarrow can raise for a file pandas may still read (or refuse in its own words).
_READ_ERRORS = (pa.ArrowException, ValueError, OSError, EOFError, zlib.error, lzma.LZMAError, UnicodeError)


_NA = frozenset(PANDAS_NA_STRINGS)


class Declined(Exception):
    """The fast path does not read this table (or this block of it): the reader goes on with pandas."""


@dataclass(frozen=True)
class TextTable:
    """Where a text table's data rows start and how they split (what the readers' first passes found).

    ``skip_lines`` lines (comments, the header) come before the first data row;
    every data row has ``n_fields`` fields. Any ``"`` is declined: pandas unquotes
    fields (and joins quoted lines), except in HUMAnN tables (``csv.QUOTE_NONE``), whose
    lines the first pass may have split otherwise.

    ``block_rows`` holds, once a first pass (:func:`row_ids_and_widths`) has read the whole table, the length and
    number of data rows of each block of text it read (:func:`_text_blocks`), which a later read of the same blocks
    takes instead of counting their lines again (:func:`_numbered`).
    """

    path: Path
    separator: str
    skip_lines: int
    n_fields: int
    block_rows: list[tuple[int, int]] = field(default_factory=list, compare=False, repr=False)


def _source(path: Path) -> IO[bytes]:
    """The file opened for pyarrow, decompressed by the same modules as pandas (gzip, bz2, lzma)."""
    if not FAST_PATH:
        raise Declined("the fast path is switched off")
    name = path.name.lower()
    if name.endswith(_DECLINED_ENDINGS):
        raise Declined(f"{path.name}: compression read by pandas only")
    # Opened here, not by name: pyarrow would read ahead into its memory pool, as much as the whole file.
    return open_binary(path)


def row_ids_and_widths(table: TextTable, smallest: list[float] | None = None) -> tuple[list[str], bool]:
    """The first field of every data row, as pandas reads it with ``dtype=str`` (a MetaPhlAn clade, a HUMAnN row
    name), and whether every data row has exactly ``table.n_fields`` fields, from one pass over the text.

    Fields are counted as :func:`~scalable_assoc.io.table_text.check_row_lengths` counts them (separators + 1 on
    the same lines), so True means that check would pass: a reader need not read the file again for it. False
    (some row differs) says nothing more: the check then runs, to name the first such line in its words.
    ``smallest``, if given, gets each data row's :func:`_smallest_in_exponent_form` (a guess of its smallest value).

    Raises
    ------
    Declined
        A line pandas might split or read otherwise (:func:`_data_lines`), an ID that is missing
        (an NA string), holds a ``"`` or is not UTF-8.
    """
    ids: list[str] = []
    widths_match = True
    block_rows: list[tuple[int, int]] = []
    table.block_rows.clear()
    try:
        for text in _text_blocks(table):
            before = len(ids)
            widths_match = _block_ids(text, table, ids, widths_match, smallest)
            block_rows.append((len(text), len(ids) - before))
    except _READ_ERRORS as error:
        raise Declined(f"{table.path.name}: {type(error).__name__}") from None
    if _NA.intersection(ids):
        raise Declined(f"{table.path.name}: a missing ID")
    table.block_rows.extend(block_rows)
    return ids, widths_match


#: Whether a byte is one a line of blanks may start with (``bytes.isspace``; a line end is never a line's first byte).
_BLANKS = np.isin(np.arange(256), np.frombuffer(b" \t\r\x0b\x0c", dtype=np.uint8))


def _block_ids(text: bytes, table: TextTable, ids: list[str], widths_match: bool, smallest: list[float] | None = None) -> bool:
    """Append the first field of each of ``text``'s data lines (:func:`_data_lines`' lines) to ``ids``; return whether
    ``widths_match`` and every such line has ``table.n_fields`` fields. ``smallest``, if given, gets each line's
    :func:`_smallest_in_exponent_form`.

    The lines are found where they are in ``text``, never split into copies: NumPy finds the line ends and the
    separators (:func:`_widths_match` counts them). Splitting and counting line by line took 0.15 s of the first
    pass over the 307 MB MetaPhlAn table, beside 0.1 s to read it. :class:`Declined` for a line of blanks, as
    :func:`_data_lines`.
    """
    codes = np.frombuffer(text, dtype=np.uint8)
    starts, stops = _line_bounds(codes)
    if starts.size:
        _decline_blank_lines(text, codes, starts, stops, table)
    sep = table.separator.encode()
    line_starts, line_stops = starts.tolist(), stops.tolist()
    # where each ID ends: its line's first separator, or its line's end
    cuts = [cut if (cut := text.find(sep, start, stop)) >= 0 else stop for start, stop in zip(line_starts, line_stops, strict=True)]
    ids.extend(text[start:cut].decode("utf-8") for start, cut in zip(line_starts, cuts, strict=True))
    if widths_match and starts.size:
        widths_match = _widths_match(codes == sep[0], starts, stops, table.n_fields)
    if smallest is not None:
        smallest.extend(_smallest_in_exponent_form(text, codes, np.array(cuts, dtype=np.int64), stops, sep))
    return widths_match


#: Bytes per line above which :func:`_widths_match` counts a line's separators on their own, not a block's at once.
LONG_LINE_BYTES = 2048


def _widths_match(separators: np.ndarray, starts: np.ndarray, stops: np.ndarray, n_fields: int) -> bool:
    """Whether every line ``starts[i]:stops[i]`` of a block holds ``n_fields - 1`` separators (``separators``, bool
    ``(bytes,)``: which bytes of the block are one).

    Long lines (a MetaPhlAn row of every sample, a pathways row) are counted one at a time, a line's cost little
    beside its bytes; short ones (the gut-brain modules' 57 fields) in one ``reduceat`` of the block, where a count
    per line cost more than its bytes (2.5 of the 10 ms of that table's first pass). Each ``reduceat`` segment runs
    to the next line's start: the bytes between (a line end, empty lines) hold no separator.
    """
    if separators.size > LONG_LINE_BYTES * starts.size:
        return all(
            int(np.count_nonzero(separators[start:stop])) + 1 == n_fields
            for start, stop in zip(starts.tolist(), stops.tolist(), strict=True)
        )
    return bool(np.all(np.add.reduceat(separators, starts, dtype=np.int64) + 1 == n_fields))


def _line_bounds(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(k,)`` start and stop offsets of the data lines of a block of text (``codes``, its bytes): lines split at
    newlines, the last one without its newline too, a carriage return before the newline left out (``_check_text``
    leaves one nowhere else), empty lines skipped (pandas skips blank lines)."""
    ends = np.flatnonzero(codes == ord("\n"))
    if codes.size and codes[-1] != ord("\n"):
        ends = np.append(ends, codes.size)
    starts = np.concatenate(([0], ends[:-1] + 1))[: ends.size].astype(ends.dtype, copy=False)
    returns = np.zeros(ends.size, dtype=bool)
    long_enough = ends > starts
    returns[long_enough] = codes[ends[long_enough] - 1] == ord("\r")
    stops = ends - returns
    data = stops > starts
    return starts[data], stops[data]


def _decline_blank_lines(text: bytes, codes: np.ndarray, starts: np.ndarray, stops: np.ndarray, table: TextTable) -> None:
    """:class:`Declined` if a line (``text[starts[i]:stops[i]]``) is all blanks: pandas may skip it or read it as a row."""
    maybe = _BLANKS[codes[starts]]  # the lines starting with a blank (hardly any)
    for start, stop in zip(starts[maybe].tolist(), stops[maybe].tolist(), strict=True):
        if text[start:stop].isspace():
            raise Declined(f"{table.path.name}: a line of blanks")


def _smallest_in_exponent_form(text: bytes, codes: np.ndarray, values_from: np.ndarray, stops: np.ndarray, sep: bytes) -> list[float]:
    """Per line (values ``text[values_from[i]:stops[i]]``), the smallest value > 0 written with a negative exponent
    (``5.04825e-07``), inf where there is none: a guess of the line's smallest value, never trusted as it.

    Why: the store's per-sample sums with the half-minimum pseudocount need the table's smallest value, known
    otherwise only after the last block; a MetaPhlAn table's falls late (in the 307 MB species table, in the
    seventh of ten blocks) and the blocks before are read back from the store (0.5 s at the end of its conversion).
    Tables print their smallest values with exponents (``%g``, Python, R), so NumPy finds ``e-`` and the
    exponents, and only the fields with a line's largest exponent are read. The store checks the guess against the
    values it writes and reads blocks back as before where it is wrong.
    """
    least = np.full(len(stops), np.inf)
    if not len(stops):
        return least.tolist()
    marks = np.flatnonzero(codes[:-3] == ord("e"))
    marks = marks[codes[marks + 1] == ord("-")]
    tens, units = codes[marks + 2].astype(np.int64) - ord("0"), codes[marks + 3].astype(np.int64) - ord("0")
    digits = (tens >= 0) & (tens <= 9) & (units >= 0) & (units <= 9)  # two digits at least (a third is read below)
    marks, exponents = marks[digits], (tens * 10 + units)[digits]
    after = codes[np.minimum(marks + 4, codes.size - 1)].astype(np.int64) - ord("0")
    third = (marks + 4 < codes.size) & (after >= 0) & (after <= 9)
    exponents[third] = exponents[third] * 10 + after[third]
    lines = np.searchsorted(stops, marks)  # the line whose stop is the first at or after the mark
    inside = (lines < len(stops)) & (marks > values_from[np.minimum(lines, len(stops) - 1)])
    marks, exponents, lines, third = marks[inside], exponents[inside], lines[inside], third[inside]
    if not marks.size:
        return least.tolist()
    largest = np.full(len(stops), -1)
    np.maximum.at(largest, lines, exponents)
    chosen = exponents == largest[lines]
    for mark, line, third_digit in zip(marks[chosen].tolist(), lines[chosen].tolist(), third[chosen].tolist(), strict=True):
        first = text.rfind(sep, 0, mark) + 1
        last = mark + (5 if third_digit else 4)
        try:
            value = float(text[first:last])
        except ValueError:
            continue
        if 0 < value < least[line]:
            least[line] = value
    return least.tolist()


def checked_row_ids(table: TextTable, row_word: str, smallest: list[float] | None = None) -> list[str] | None:
    """The data rows' first fields read here (:func:`row_ids_and_widths`), or None where pandas must read them;
    either way every row's field count is checked against the header's.

    None when this pass declines, or when some row's width differs from the header's: the line check
    (:func:`~scalable_assoc.io.table_text.check_row_lengths`, ``row_word`` naming the rows in its message) then
    names the first such line. It accepts rows all one field longer than the header (R's header without a
    row-name column), which this fast path would read shifted by one sample while pandas reads them as it does
    (for MetaPhlAn and HUMAnN tables: refused in pandas' words). ``smallest`` as :func:`row_ids_and_widths` fills it
    (complete only when IDs are returned).
    """
    try:
        ids, widths_match = row_ids_and_widths(table, smallest)
    except Declined as why:
        logger.debug("%s: row IDs read by pandas (%s)", table.path, why)
        ids, widths_match = None, False
    if not widths_match:
        check_row_lengths(table.path, table.skip_lines - 1, row_word)
        return None
    return ids


def kept_rows(path: Path, table: TextTable, first: int, keep: np.ndarray) -> Generator[np.ndarray, None, int | None]:
    """The rows ``keep`` (``(n_rows,)`` bool) selects, as ``(n_samples, k)`` pieces, for tables with features as rows.

    Only the rows kept are parsed (:func:`row_blocks`): a MetaPhlAn table's other ranks are a third of its text.
    Returns None once every row is read, or the number of rows read when the fast path declines (the caller's
    pandas reader goes on from there). Raises :class:`DataError` when the file holds other rows than the first
    pass found.
    """
    done = 0
    try:
        for rows, _, values in row_blocks(table, first, keep=keep):  # declines a block that goes past ``keep``
            done += rows
            if len(values):
                yield values.T
    except Declined as why:
        logger.debug("%s: rows %d on read by pandas (%s)", path, done + 1, why)
        return done
    if done != len(keep):
        raise DataError(f"{path}: {done} rows read, but a first pass found {len(keep)}; was the file changed while it was read?")
    return None


def row_values(table: TextTable, first: int, with_ids: bool = False) -> Iterator[tuple[list[str] | None, np.ndarray]]:
    """Fields ``first..`` of every data row, a block of text at a time: ``(ids, values)`` (:func:`row_blocks` of all rows)."""
    for _, ids, values in row_blocks(table, first, with_ids):
        yield ids, values


def row_blocks(
    table: TextTable, first: int, with_ids: bool = False, keep: np.ndarray | None = None
) -> Iterator[tuple[int, list[str] | None, np.ndarray]]:
    """Fields ``first..`` of the data rows ``keep`` selects (all without it), a block of text at a time: ``(rows, ids, values)``.

    ``rows`` is the number of data rows the block holds, kept or not; ``values`` is
    ``(kept rows, n_fields - first)`` float64, what :func:`~scalable_assoc.io.table_values.validated_values`
    returns for the same cells (NaN where a cell is empty or an NA string); ``ids`` the
    kept rows' first fields with ``with_ids`` (else None). ``keep`` (``(n_rows,)`` bool, the
    first pass's rows) leaves the other rows unparsed and unchecked, as pandas' readers check
    only the rows they keep. The fields of a block's rows are
    handed to pyarrow as one column (each separator made a newline) and the values
    reshaped: pyarrow's reader holds some 12 kB per column (600 MB for a MetaPhlAn
    table of 50,000 samples), and one column parses faster than 650 (a wide table). The rows' field counts are the first pass's
    (:func:`~scalable_assoc.io.table_text.check_row_lengths`, which counts every line's
    separators as here); the block's total is checked again.

    Raises
    ------
    Declined
        Before yielding a block holding anything pandas might read differently or
        refuse: the blocks yielded before are exact, the rest is pandas' to read.
        Also when the file holds more rows than ``keep``.
    """
    sep = table.separator.encode()
    newlines = bytes.maketrans(sep, b"\n")
    width = table.n_fields - first

    def parsed(numbered: tuple[int, bytes]) -> tuple[int, list[str] | None, np.ndarray]:
        offset, text = numbered
        cast = _cast_block(text, table, first, keep, offset, with_ids)
        if cast is not None:
            return cast
        lines = _data_lines(text, table.path)
        del text
        rows = len(lines)
        chosen = _kept_in_block(keep, offset, rows, table.path)
        if chosen is not None:
            lines = [line for line, kept in zip(lines, chosen.tolist(), strict=True) if kept]
        if not lines:
            return rows, [] if with_ids else None, np.empty((0, width))
        ids = [(line[: line.find(sep)] if sep in line else line).decode("utf-8") for line in lines] if with_ids else None
        parts: list[bytes | memoryview] = []
        for line in lines:
            start = 0
            for _ in range(first):
                start = line.find(sep, start) + 1
            # A view, not a copy: join copies the values once (slices of the lines made a second copy of the text).
            parts.append(memoryview(line)[start:] if start else b"")
        parts.append(b"")  # a newline after the last value too
        payload = b"\n".join(parts).translate(newlines)  # a table lookup per byte: a third faster than replace()
        del parts
        values, missing = _one_column(payload, table.separator)
        del payload
        if len(values) != len(lines) * width:
            raise Declined(f"{table.path.name}: {len(values)} values in {len(lines)} rows")
        return rows, ids, _checked(values.reshape(len(lines), width), missing, table.path)

    try:
        # Rows are numbered only where some are left out: a wide table's reader keeps every row.
        numbered = _numbered(_text_blocks(table), table.block_rows) if keep is not None else ((0, text) for text in _text_blocks(table))
        for block in in_order(numbered, parsed, PARSE_THREADS):
            if block[0]:
                yield block
    except _READ_ERRORS as error:
        raise Declined(f"{table.path.name}: {type(error).__name__}") from None


def _cast_block(
    text: bytes, table: TextTable, first: int, keep: np.ndarray | None, offset: int, with_ids: bool
) -> tuple[int, list[str] | None, np.ndarray] | None:
    """``(rows, ids, values)`` of a block of text as :func:`row_blocks` yields them, by a cast of its fields; None where the
    block needs the one-column CSV reader (:func:`_one_column`), which reads every block this reads to the same bits.

    The fields are cut where NumPy finds the separators and line ends, and pyarrow casts them from text to float64 in
    place (``pyarrow.compute.cast`` of a string array over the block's own text, a null slot for each separator): no
    copy of the values' text, no CSV tokenizer. On the 307 MB MetaPhlAn table the parsing threads' CPU fell by about a
    third against the CSV reader, and by a fifth more once the text was no longer copied without its separators. The ID
    fields, and the rows ``keep`` leaves out, are nulls to the cast: never parsed. Both readers turn a field into a number with the same
    function of pyarrow's (``ParseValue``); an empty field, the usual missing cell, is missing (NaN) to both, a null
    slot to the cast. The CSV reader also trims blanks around a number and reads pandas' other NA
    strings as missing, where the cast fails or gives NaN: such a block (and any block not exactly ``n_fields`` fields
    on every line ending in a newline, or holding a carriage return) is left to the CSV reader, which reads it as before
    (a test checks the cast against the CSV reader cell by cell).
    """
    sep = table.separator.encode()
    n_fields = table.n_fields
    if not text.endswith(b"\n") or b"\r" in text or len(text) >= 2**31 or n_fields <= first:
        return None
    codes = np.frombuffer(text, dtype=np.uint8)
    ends = np.flatnonzero((codes == sep[0]) | (codes == ord("\n")))  # the end of every field
    rows = ends.size // n_fields
    # Exactly n_fields fields a line: as many line ends as rows, each the last field's end of its row.
    if (
        ends.size % n_fields
        or np.count_nonzero(codes[ends] == ord("\n")) != rows
        or not (codes[ends[n_fields - 1 :: n_fields]] == ord("\n")).all()
    ):
        return None
    chosen = _kept_in_block(keep, offset, rows, table.path)
    if chosen is not None and not chosen.any():
        return rows, [] if with_ids else None, np.empty((0, n_fields - first))
    # Slot 2i is field i, slot 2i + 1 the separator (or line end) after it, a null: the fields are cast where they are
    # in the text, which is never copied (deleting the separators, the text less them, took a fifth of the parse's CPU).
    parsed = np.zeros((rows, n_fields, 2), dtype=bool)
    parsed[:, first:, 0] = True
    if chosen is not None:
        parsed[~chosen] = False
    offsets = np.empty(2 * ends.size + 1, dtype=np.int32)
    offsets[0] = 0
    offsets[1::2] = ends
    np.add(ends, 1, out=offsets[2::2], casting="unsafe")
    # An empty field is a missing value to the CSV reader (pandas' NA string ''): a null to the cast, NaN below. Tables
    # with missing cells leave a few empty in most blocks, which all went to the CSV reader before.
    empty = (offsets[0:-1:2] == offsets[1::2]).reshape(rows, n_fields)
    empty[:, :first] = False
    parsed[..., 0] &= ~empty
    fields = pa.StringArray.from_buffers(
        2 * ends.size,
        pa.py_buffer(offsets),
        pa.py_buffer(text),
        pa.py_buffer(np.packbits(parsed.ravel(), bitorder="little")),
        int(2 * ends.size - np.count_nonzero(parsed)),
    )
    try:
        values = _cast_rows(fields, rows, n_fields, first, chosen)
    except pa.ArrowInvalid:  # a cell that is no number to pyarrow: text, an NA string, blanks around a number
        return None
    del fields
    missing = (empty if chosen is None else empty[chosen])[:, first:] if empty.any() else None
    if missing is not None:
        values[missing] = 0.0  # a null slot's value is whatever the cast left there: not a cell read as NaN
    if np.isnan(values).any():  # 'nan' is missing to the CSV reader (an NA string), 'NAN' a NaN written as a number
        return None
    if missing is not None:
        values[missing] = np.nan
    ids = None
    if with_ids:
        starts = np.concatenate(([0], ends[n_fields - 1 :: n_fields][:-1] + 1))  # of each line
        id_ends = ends[::n_fields]
        if chosen is not None:
            starts, id_ends = starts[chosen], id_ends[chosen]
        ids = [text[start:end].decode("utf-8") for start, end in zip(starts.tolist(), id_ends.tolist(), strict=True)]
    return rows, ids, _checked(values, 0 if missing is None else int(np.count_nonzero(missing)), table.path)


#: Slots of a block's string array cast at a time (:func:`_cast_rows`): the cast's output, a float64 for every field
#: and separator, is this many times 8 bytes (512 KiB), not twice the block's values.
CAST_SLOTS = 1 << 16


def _cast_rows(fields: pa.StringArray, rows: int, n_fields: int, first: int, chosen: np.ndarray | None) -> np.ndarray:
    """``(kept rows, n_fields - first)`` float64: the value fields of the ``chosen`` rows (all without it) of ``fields``,
    ``rows`` lines of ``n_fields`` fields, each field's slot followed by its separator's (:func:`_cast_block`).

    Cast a few whole rows at a time (at least one; :data:`CAST_SLOTS`) into C's heap, as the CSV reader's values (see
    :func:`_one_column`), and copied into the result: casting a block at once held its output, twice the size of its
    values with the separators' slots, and the 50,000-sample MetaPhlAn table's conversion peaked 15-25 MB higher.
    Raises ``pyarrow.ArrowInvalid`` for a field that is no number to pyarrow.
    """
    chosen = np.ones(rows, dtype=bool) if chosen is None else chosen
    values = np.empty((int(np.count_nonzero(chosen)), n_fields - first))
    step = max(1, CAST_SLOTS // (2 * n_fields))
    done = 0
    for start in range(0, rows, step):
        stop = min(start + step, rows)
        kept = chosen[start:stop]
        if not kept.any():
            continue
        slots = 2 * n_fields * (stop - start)
        numbers = pc.cast(fields.slice(2 * n_fields * start, slots), pa.float64(), memory_pool=pa.system_memory_pool())
        # The cast's buffer as it is: its null slots (IDs, rows left out, separators) are never read.
        every = np.frombuffer(numbers.buffers()[1], dtype=np.float64, count=slots, offset=8 * numbers.offset)
        piece = every.reshape(stop - start, n_fields, 2)[kept, first:, 0]
        values[done : done + len(piece)] = piece
        done += len(piece)
    return values


def _kept_in_block(keep: np.ndarray | None, offset: int, rows: int, path: Path) -> np.ndarray | None:
    """``(rows,)`` bool: which of a block's ``rows`` data rows, the first ``offset`` rows of the table before it, ``keep``
    selects; None without ``keep`` (every row). Declines a block that goes past the first pass's rows."""
    if keep is None:
        return None
    if offset + rows > len(keep):
        raise Declined(f"{path.name}: more rows than the first pass")
    return keep[offset : offset + rows]


def _numbered(blocks: Iterator[bytes], known: Sequence[tuple[int, int]] = ()) -> Iterator[tuple[int, bytes]]:
    """Each block of text with the number of data rows before it (:func:`_data_lines`' count, without splitting lines).

    ``known``: ``(length, data rows)`` of the blocks a first pass read (:attr:`TextTable.block_rows`); a block of the
    same length in the same place is the same text (the same reads of the same file), so its rows are not counted
    again. Counting them took 0.07 s of CPU over the 307 MB MetaPhlAn table. Any other block is counted.
    """
    offset = 0
    for index, text in enumerate(blocks):
        yield offset, text
        same = index < len(known) and known[index][0] == len(text)
        offset += known[index][1] if same else _count_data_lines(text)


def _count_data_lines(text: bytes) -> int:
    """``len(_data_lines(text))`` without splitting ``text`` (nor declining anything): its lines neither empty nor a lone ``\\r``.

    From the positions of the line ends in NumPy: ``bytes.count`` and searches for an empty line took 0.6 s over
    the 307 MB MetaPhlAn table, in the thread that reads the text for the parsing threads.
    """
    if not text:
        return 0
    codes = np.frombuffer(text, dtype=np.uint8)
    ends = np.flatnonzero(codes == ord("\n"))
    starts = np.concatenate(([0], ends + 1))  # of each line; the last one's is len(text) when the text ends with a newline
    lengths = np.concatenate((ends, [codes.size])) - starts
    lone_return = (lengths == 1) & (codes[np.minimum(starts, codes.size - 1)] == ord("\r"))
    return int(np.count_nonzero(lengths) - np.count_nonzero(lone_return))


def in_order(items: Iterator[T], work: Callable[[T], R], threads: int) -> Iterator[R]:
    """``work(item)`` of each of ``items``, in their order, ``threads`` of them computed at once in threads of their own.

    Why: pyarrow's parse of a block of text releases the GIL, and parsing is most of a conversion's CPU; in one
    thread it was the conversion's longest thread, with the second core partly idle. ``items`` are drawn here
    (in the caller's thread), at most ``threads`` ahead of the one yielded. An error of ``work`` is raised when
    its item's turn comes, after the items before it. Stopping early drops the items not yet started.
    """
    if threads <= 1:
        yield from map(work, items)
        return
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="scalable-assoc-parse")
    pending: deque[Future[R]] = deque()
    try:
        for item in items:
            pending.append(pool.submit(work, item))
            del item
            if len(pending) > threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _one_column(payload: bytes, separator: str) -> tuple[np.ndarray, int]:
    """A single-column text of values (one a line; ``separator`` in none) as float64 (NaN where missing), and how many were missing."""
    read = pa_csv.ReadOptions(column_names=["v"], block_size=len(payload) + 1, use_threads=False)
    # An empty line is an empty cell here (a missing value), not a blank line to skip.
    parse = pa_csv.ParseOptions(delimiter=separator, quote_char=False, ignore_empty_lines=False)
    convert = pa_csv.ConvertOptions(column_types={"v": pa.float64()}, null_values=list(PANDAS_NA_STRINGS), strings_can_be_null=True)
    # In the C library's heap, not pyarrow's default pool (mimalloc), which kept more of the parsing threads' freed
    # memory: the 50,000-sample MetaPhlAn table's conversion peaked 25-30 MB higher (325 against 290 MB).
    table = pa_csv.read_csv(
        pa.py_buffer(payload), read_options=read, parse_options=parse, convert_options=convert, memory_pool=pa.system_memory_pool()
    )
    column = table.column(0)
    return column.to_numpy(), column.null_count


def _text_blocks(table: TextTable) -> Iterator[bytes]:
    """The data rows' text, whole lines, about :data:`TEXT_BLOCK_BYTES` at a time.

    Read here rather than by pyarrow's streaming reader, which reads up to 32 blocks
    ahead (the whole of a 250 MB table). Declines a quote anywhere (pandas would
    join quoted lines, or unquote an ID) and a carriage return inside a line (pandas
    ends a line there): from the first block holding one on.
    """
    # The store writer's heap settings from the first pass on: freed text buffers stay in the heap (see its docstring).
    map_large_allocations()
    with _source(table.path) as handle:
        for _ in range(table.skip_lines):
            _check_text(handle.readline(), table.path)
        carry = b""
        while block := handle.read(TEXT_BLOCK_BYTES):
            data = carry + block
            end = data.rfind(b"\n") + 1
            carry = data[end:]
            if end:
                yield _check_text(data[:end], table.path)
        if carry:
            yield _check_text(carry, table.path)


def _check_text(text: bytes, path: Path) -> bytes:
    """``text``, or :class:`Declined` if it holds a quote or a carriage return not ending a line."""
    if b'"' in text:
        raise Declined(f"{path.name}: a quote")
    if b"\r" in text and text.count(b"\r") != text.count(b"\r\n"):
        raise Declined(f"{path.name}: a carriage return inside a line")
    return text


def _data_lines(text: bytes, path: Path) -> list[bytes]:
    """The non-empty lines of ``text`` without their line ends; :class:`Declined` for a line of blanks (pandas skips some)."""
    lines = [line for line in text.split(b"\n") if line and line != b"\r"]
    if any(line.isspace() for line in lines):
        raise Declined(f"{path.name}: a line of blanks")
    return [line.removesuffix(b"\r") for line in lines]


def _checked(values: np.ndarray, missing: int, path: Path) -> np.ndarray:
    """``values`` if each NaN was a missing cell and none is infinite or negative; else :class:`Declined` (pandas names the cell)."""
    nan = np.isnan(values)
    # pyarrow reads 'NAN', '+nan', 'nan(1)' as NaN; pandas calls them non-numeric.
    if int(np.count_nonzero(nan)) != missing:
        raise Declined(f"{path.name}: NaN written as a number")
    # The sign bit: negative numbers, -inf, and -0 (pandas reads a column of whole numbers as integers: '-0' becomes
    # +0.0). From 2**63: +inf, and whole numbers pandas may read as text (past 2**64) or as unsigned integers.
    with np.errstate(invalid="ignore"):
        if np.signbit(values).any() or (values >= 2.0**63).any():
            raise Declined(f"{path.name}: a negative or infinite value, -0, or a number from 2**63")
    return values
