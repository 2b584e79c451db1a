"""Abundance tables as text files: opening them (compressed too), their format, header and line structure.

Nothing here parses values: these are the checks and peeks made before a reader
(:mod:`scalable_assoc.io.wide`, :mod:`scalable_assoc.io.metaphlan`) parses a
table, and the wording of every "cannot be read" error (:func:`reading_problem`),
which never quotes the file's content.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import lzma
import re
from pathlib import Path
from typing import IO, cast

import numpy as np

from scalable_assoc.errors import DataError

#: Header names of the clade column in MetaPhlAn merged tables (versions 2-4).
METAPHLAN_CLADE_COLUMNS = ("clade_name", "#clade_name", "ID", "#SampleID")

#: Compression pandas recognises from the file name, and how to open it for a peek at the header.
_COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz")


def table_suffix(path: Path) -> str:
    """The suffix that says the table format ('.csv' for 'x.csv.gz')."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSION_SUFFIXES:
        suffixes.pop()
    return suffixes[-1] if suffixes else ""


def table_separator(path: Path) -> str:
    """Comma for .csv (also compressed, 'x.csv.gz'), else tab."""
    return "," if table_suffix(path) == ".csv" else "\t"


def open_binary(path: Path) -> IO[bytes]:
    """Open a (possibly compressed) table for reading bytes, as pandas would decompress it."""
    suffix = path.suffix.lower()
    if suffix == ".gz":
        return cast(IO[bytes], gzip.open(path, "rb"))
    if suffix == ".bz2":
        return bz2.open(path, "rb")
    if suffix == ".xz":
        return lzma.open(path, "rb")
    return path.open("rb")


def _open_text(path: Path) -> IO[str]:
    # utf-8-sig: spreadsheet exports often start with a byte order mark that would hide 'clade_name'.
    return io.TextIOWrapper(open_binary(path), encoding="utf-8-sig", errors="replace", newline="")


#: Library messages about a table's shape that hold no text of the file (pandas' C parser, pyarrow, compression).
_SHAPE_MESSAGES = (
    re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)"),
    re.compile(r"Parquet magic bytes not found[^\n]*"),
    re.compile(r"Compressed file ended before the end-of-stream marker was reached"),
    re.compile(r"Not a gzipped file[^\n]*|Invalid data stream|Input format not supported by decoder"),
    re.compile(r"No columns to parse from file"),
)


def reading_problem(error: BaseException) -> str:
    """Why a file could not be read, without quoting any of its content.

    A plan may name any file (with --allow-outside-paths), and library messages
    can echo a line of it (a secret, for a file that is not a table at all), so
    only the error's kind, a system error's reason, or a known message about the
    table's shape (line number and field counts) is passed on.
    """
    if isinstance(error, UnicodeDecodeError):
        return f"it is not UTF-8 text (an undecodable byte at position {error.start} of a block)"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    text = " ".join(str(error).split())
    for pattern in _SHAPE_MESSAGES:
        found = pattern.search(text)
        if found:
            if found.lastindex == 3:
                expected, line, saw = found.groups()
                return f"line {line} has {saw} fields where {expected} were expected"
            return found.group(0)
    return f"it is not a well-formed table ({type(error).__name__})"


def unreadable(path: Path, error: Exception) -> DataError:
    """The error for a file that cannot be read: ``PATH: cannot be read: <why>`` (:func:`reading_problem`)."""
    return DataError(f"{path}: cannot be read: {reading_problem(error)}")


def _first_data_line(path: Path) -> list[str]:
    """The first non-comment line, split on the file's separator (MetaPhlAn headers start with '#mpa')."""
    try:
        with _open_text(path) as handle:
            reader = csv.reader(handle, delimiter=table_separator(path))
            for row in reader:
                if row and not row[0].startswith("#mpa") and row[0] != "#":
                    return row
    except (OSError, EOFError, lzma.LZMAError, csv.Error) as error:
        raise unreadable(path, error) from None
    raise DataError(f"{path}: the file is empty")


def raw_header(path: Path, skipped: int) -> list[str]:
    """The header row as written (the line after ``skipped`` comment lines), split on the separator.

    pandas silently renames repeated column names ('x', 'x.1'), which would turn a
    duplicated sample or feature into a new one; the raw header keeps them visible.
    """
    try:
        with _open_text(path) as handle:
            reader = csv.reader(handle, delimiter=table_separator(path))
            for index, row in enumerate(reader):
                if index >= skipped:
                    return row
    except (OSError, EOFError, lzma.LZMAError, csv.Error) as error:
        raise unreadable(path, error) from None
    return []


def _line_fields(path: Path) -> tuple[list[int], list[str], list[bool]]:
    """The number of fields, the first field and whether the last field is empty, of every line (0 fields for a blank line).

    Read a line at a time. Lines are split as pandas splits them (on newlines
    only) and separators are counted without decoding every cell; a file with a
    quote anywhere goes through ``csv`` instead, as a quoted field may hold a
    separator or a newline.
    """
    separator = table_separator(path)
    sep = separator.encode()
    lengths: list[int] = []
    firsts: list[str] = []
    last_empty: list[bool] = []
    try:
        with open_binary(path) as handle:
            for raw in handle:
                if b'"' in raw:
                    break
                line = raw.removesuffix(b"\n") if lengths else raw.removesuffix(b"\n").removeprefix(b"\xef\xbb\xbf")
                lengths.append(count_byte(line, sep[0]) + 1 if line.strip() else 0)
                end = line.find(sep)
                firsts.append((line if end < 0 else line[:end]).decode("utf-8", errors="replace"))
                last_empty.append(line.removesuffix(b"\r").endswith(sep))
            else:
                return lengths, firsts, last_empty
        with _open_text(path) as text:
            rows = [(len(row), row[0] if row else "", len(row) > 1 and row[-1] == "") for row in csv.reader(text, delimiter=separator)]
    except (OSError, EOFError, lzma.LZMAError, csv.Error) as error:
        raise unreadable(path, error) from None
    return [n for n, _, _ in rows], [first for _, first, _ in rows], [empty for _, _, empty in rows]


def count_byte(line: bytes, byte: int) -> int:
    """How many times ``byte`` occurs in ``line``: numpy's vectorised compare for long lines (a MetaPhlAn row of 50,000
    samples), several times faster than ``bytes.count``, which loops byte by byte; ``bytes.count`` for short ones."""
    if len(line) < 512:
        return line.count(byte)
    return int(np.count_nonzero(np.frombuffer(line, dtype=np.uint8) == byte))


def data_rows(path: Path, skipped: int, row_word: str) -> tuple[list[str], bool]:
    """Check the field count of every line (:func:`check_row_lengths`); return the first field of each data line
    and whether the header is one field short of every line (R's ``write.table``: the first field is then a row name)."""
    lengths, firsts, last_empty = _line_fields(path)
    if len(lengths) <= skipped + 1:
        return [], False
    header = lengths[skipped]
    data = [
        (number, n) for number, n in enumerate(lengths[skipped + 1 :], start=skipped + 2) if n
    ]  # blank lines are skipped, as pandas does
    if not data:
        return [], False
    expected = header + 1 if all(n == header + 1 for _, n in data) else header
    if expected == header + 1 and all(last_empty[number - 1] for number, _ in data):
        # Not R's header without a row-name column: a separator at the end of every row. Read as R's layout, every
        # column would take its left neighbour's name (the ID column's name becoming a feature) and the last be empty.
        raise DataError(
            f"{path}: every {row_word} row ends with an empty field after the header's last column (a separator at the end "
            f"of each line, {header + 1} fields against the header's {header}); read as it is, every value would be under "
            "the name of the column to its left. Remove the trailing separators."
        )
    bad = [(number, n) for number, n in data if n != expected]
    if bad:
        number, n = bad[0]
        raise DataError(
            # Line number and counts only: the line's text may be anything (the file need not be a table at all).
            f"{path}: line {number} ({row_word} row) has {n} fields but the header has {header}; "
            f"{len(bad)} line(s) differ. A short or long line would shift or lose values: fix the file "
            f"(write an empty cell or NA for a missing value, keeping the separators)."
        )
    return [firsts[number - 1] for number, _ in data], expected == header + 1


def check_row_lengths(path: Path, skipped: int = 0, row_word: str = "row") -> None:
    """Every line after the header has as many fields as the header.

    pandas pads a short line with missing values, so a truncated or misaligned
    line would silently become missing data (or shift values to the wrong
    column). A header one field shorter than every line (R's ``write.table``
    without a row-names header) is accepted, as pandas reads it the same way.
    The file is read a line at a time (:func:`_line_fields`), never whole.
    """
    data_rows(path, skipped, row_word)


def detect_format(path: Path) -> str:
    """Guess ``zarr``, ``parquet``, ``long``, ``biom``, ``h5ad``, ``metaphlan``, ``humann`` or ``wide`` from a path and its first line.

    A ``.biom`` file's content (HDF5 or JSON) is told apart by its reader (:func:`~scalable_assoc.io.biom_table.biom_kind`).
    """
    if path.is_dir() or path.suffix == ".zarr":
        return "zarr"
    if table_suffix(path) in (".parquet", ".pq"):
        return "long" if is_long_header(_parquet_names(path)) else "parquet"
    if table_suffix(path) in (".biom", ".h5ad"):
        return table_suffix(path)[1:]
    header = _first_data_line(path)
    if header and header[0] in METAPHLAN_CLADE_COLUMNS:
        return "metaphlan"
    if header and any(header[0].startswith(first) for first in HUMANN_HEADERS):
        return "humann"
    if is_long_header(header):
        return "long"
    return "wide"


#: First header cells of HUMAnN tables (``# Pathway HUMAnN v3`` too); :mod:`scalable_assoc.io.humann` reads them.
HUMANN_HEADERS = ("# Pathway", "# Gene Family")


def is_long_header(names: list[str]) -> bool:
    """Whether a header is exactly a long table's: ``sample_id``, ``feature``, ``value`` (any order)."""
    return len(names) == 3 and set(names) == {"sample_id", "feature", "value"}


def _parquet_names(path: Path) -> list[str]:
    """A Parquet file's column names ([] if it cannot be read: the reader then says why)."""
    import pyarrow.parquet as pq

    try:
        return list(pq.read_schema(path).names)
    except (OSError, ValueError):
        return []


def comment_lines(path: Path) -> list[int]:
    """Indices of leading '#mpa...' comment lines (the header may itself start with '#')."""
    skipped = []
    try:
        with _open_text(path) as handle:
            for index, line in enumerate(handle):
                if line.startswith("#mpa") or line.strip() == "#" or (line.startswith("#") and "\t" not in line and "," not in line):
                    skipped.append(index)
                else:
                    break
    except (OSError, EOFError, lzma.LZMAError) as error:
        raise unreadable(path, error) from None
    return skipped
