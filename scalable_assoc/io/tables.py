"""Reading abundance tables: MetaPhlAn merged tables, wide TSV/CSV, Parquet.

Every format is read as a :class:`TableStream` (a block of features at a time,
never whole; :func:`read_abundance_table` gathers one into an :class:`AbundanceTable`)
and checked for what would otherwise corrupt a study silently: duplicate sample or
feature IDs, non-numeric, negative or infinite values. An empty cell or NA is a
missing value (NaN), not an error.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import lzma
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, cast

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from pandas._libs.parsers import STR_NA_VALUES

from scalable_assoc.errors import DataError
from scalable_assoc.plan.schema import RANK_PREFIXES

#: Header names of the clade column in MetaPhlAn merged tables (versions 2-4).
METAPHLAN_CLADE_COLUMNS = ("clade_name", "#clade_name", "ID", "#SampleID")
#: Columns of MetaPhlAn merged tables that hold taxonomy ids, not samples.
METAPHLAN_TAXID_COLUMNS = ("NCBI_tax_id", "clade_taxid", "taxid", "clade_ncbi_taxid")


@dataclass(frozen=True)
class AbundanceTable:
    """An abundance matrix in memory: ``values`` is ``(n_samples, n_features)`` float64, NaN = missing."""

    sample_ids: tuple[str, ...]
    feature_ids: tuple[str, ...]
    values: np.ndarray
    source: Path


@dataclass(frozen=True)
class TableStream:
    """An abundance table read a block of features at a time, never whole.

    ``blocks(width)`` yields ``(n_samples, width)`` float64 arrays (the last may
    be narrower) covering ``feature_ids`` in order; values are validated as they
    are read, so a bad cell raises :class:`DataError` part-way through.
    """

    sample_ids: tuple[str, ...]
    feature_ids: tuple[str, ...]
    blocks: Callable[[int], Iterator[np.ndarray]]
    source: Path


def _rebatch(pieces: Iterator[np.ndarray], width: int) -> Iterator[np.ndarray]:
    """Regroup ``(n, k_i)`` pieces into ``(n, width)`` blocks (the last narrower), holding at most one block plus one piece."""
    pending: list[np.ndarray] = []
    count = 0
    for piece in pieces:
        if piece.shape[1] == 0:
            continue
        pending.append(piece)
        count += piece.shape[1]
        while count >= width:
            joined = np.hstack(pending) if len(pending) > 1 else pending[0]
            yield np.ascontiguousarray(joined[:, :width])
            rest = joined[:, width:]
            pending, count = ([rest] if rest.shape[1] else []), rest.shape[1]
    if count:
        yield np.ascontiguousarray(np.hstack(pending))


#: Compression pandas recognises from the file name, and how to open it for a peek at the header.
_COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz")


def _table_suffix(path: Path) -> str:
    """The suffix that says the table format ('.csv' for 'x.csv.gz')."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSION_SUFFIXES:
        suffixes.pop()
    return suffixes[-1] if suffixes else ""


def table_separator(path: Path) -> str:
    """Comma for .csv (also compressed, 'x.csv.gz'), else tab."""
    return "," if _table_suffix(path) == ".csv" else "\t"


def _open_binary(path: Path) -> IO[bytes]:
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
    return io.TextIOWrapper(_open_binary(path), encoding="utf-8-sig", errors="replace", newline="")


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


def _unreadable(path: Path, error: Exception) -> DataError:
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
        raise _unreadable(path, error) from None
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
        raise _unreadable(path, error) from None
    return []


def _line_fields(path: Path) -> tuple[list[int], list[str]]:
    """The number of fields and the first field of every line (0 for a blank line), read a line at a time.

    Lines are split as pandas splits them (on newlines only) and separators are
    counted without decoding every cell; a file with a quote anywhere goes
    through ``csv`` instead, as a quoted field may hold a separator or a newline.
    """
    separator = table_separator(path)
    sep = separator.encode()
    lengths: list[int] = []
    firsts: list[str] = []
    try:
        with _open_binary(path) as handle:
            for raw in handle:
                if b'"' in raw:
                    break
                line = raw.removesuffix(b"\n") if lengths else raw.removesuffix(b"\n").removeprefix(b"\xef\xbb\xbf")
                lengths.append(line.count(sep) + 1 if line.strip() else 0)
                end = line.find(sep)
                firsts.append((line if end < 0 else line[:end]).decode("utf-8", errors="replace"))
            else:
                return lengths, firsts
        with _open_text(path) as text:
            rows = [(len(row), row[0] if row else "") for row in csv.reader(text, delimiter=separator)]
    except (OSError, EOFError, lzma.LZMAError, csv.Error) as error:
        raise _unreadable(path, error) from None
    return [n for n, _ in rows], [first for _, first in rows]


def _data_rows(path: Path, skipped: int, row_word: str) -> tuple[list[str], bool]:
    """Check the field count of every line (:func:`check_row_lengths`); return the first field of each data line
    and whether the header is one field short of every line (R's ``write.table``: the first field is then a row name)."""
    lengths, firsts = _line_fields(path)
    if len(lengths) <= skipped + 1:
        return [], False
    header = lengths[skipped]
    data = [(number, n) for number, n in enumerate(lengths[skipped + 1 :], start=skipped + 2) if n]  # blank lines are skipped, as pandas does
    if not data:
        return [], False
    expected = header + 1 if all(n == header + 1 for _, n in data) else header
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
    _data_rows(path, skipped, row_word)


def detect_format(path: Path) -> str:
    """Guess ``zarr``, ``parquet``, ``metaphlan`` or ``wide`` from a path and its first line."""
    if path.is_dir() or path.suffix == ".zarr":
        return "zarr"
    if _table_suffix(path) in (".parquet", ".pq"):
        return "parquet"
    header = _first_data_line(path)
    if header and header[0] in METAPHLAN_CLADE_COLUMNS:
        return "metaphlan"
    return "wide"


def _duplicates(values: pd.Index) -> list[str]:
    return [str(v) for v in values[values.duplicated()].unique()[:5]]


def _check_ids(path: Path, what: str, ids: pd.Index) -> None:
    missing = ids.isna() | (ids.astype(str).str.strip() == "")
    if missing.any():
        raise DataError(f"{path}: {int(missing.sum())} {what} ID(s) are empty; every {what} needs an ID")
    dup = _duplicates(ids)
    if dup:
        raise DataError(
            f"{path}: duplicate {what} IDs ({int(ids.duplicated().sum())} repeated), for example: {', '.join(dup)}. "
            f"Each {what} must appear once."
        )


def _shown(value: object) -> str:
    """A cell as the user wrote it: ``'abc'`` for text, ``-1.0`` / ``inf`` for numbers (not ``np.float64(-1.0)``)."""
    if isinstance(value, str):
        return repr(value)
    try:
        return str(float(value))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return repr(value)


def validated_values(path: Path, frame: pd.DataFrame, samples_are_rows: bool) -> np.ndarray:
    """Convert a frame of abundances to float64, naming the first bad cell if any.

    Raises :class:`DataError` for non-numeric, negative or infinite values.
    """
    numeric = frame.apply(pd.to_numeric, errors="coerce") if any(
        not pd.api.types.is_numeric_dtype(dtype) for dtype in frame.dtypes
    ) else frame
    values = numeric.to_numpy(dtype=np.float64, na_value=np.nan)
    originally_missing = frame.isna().to_numpy()
    row_word, column_word = ("sample", "feature") if samples_are_rows else ("feature", "sample")

    def first_bad(mask: np.ndarray, problem: str) -> None:
        if not mask.any():
            return
        row, column = np.argwhere(mask)[0]
        original = _shown(frame.iat[row, column])
        raise DataError(
            f"{path}: {int(mask.sum())} {problem} value(s); the first is {original} for {row_word} "
            f"'{frame.index[row]}', {column_word} '{frame.columns[column]}'. Abundances must be non-negative numbers "
            f"(leave a cell empty or write NA for a missing value)."
        )

    first_bad(np.isnan(values) & ~originally_missing, "non-numeric")
    first_bad(np.isinf(values), "infinite")
    with np.errstate(invalid="ignore"):
        first_bad(values < 0, "negative")
    return values


def _comment_lines(path: Path) -> list[int]:
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
        raise _unreadable(path, error) from None
    return skipped


def _check_sample_id_column(path: Path, ids: pd.Index, header: object = None) -> None:
    """Refuse a first column of abundances where sample IDs belong.

    Without this, a table saved without its ID column reads "fine" with the first
    feature's values as sample IDs, and the user only sees a puzzling sample
    mismatch or "duplicate sample 0". Distinct whole numbers stay allowed
    (numeric sample IDs are common); fractions or repeated numbers are not IDs.
    """
    numbers = pd.to_numeric(pd.Series(ids, dtype=object), errors="coerce")
    if len(ids) and numbers.notna().all() and ((numbers % 1 != 0).any() or numbers.duplicated().any()):
        examples = ", ".join(str(v) for v in pd.unique(np.asarray(ids, dtype=object))[:3])
        named = f" ('{header}')" if header is not None and not pd.isna(header) else ""
        raise DataError(
            f"{path}: the first column{named} holds numbers such as {examples}, not sample IDs. A wide table needs the "
            f"sample IDs in its first column (e.g. 'sample_id') and one column per feature; add the ID column, "
            f"or give a MetaPhlAn table (features as rows) with format: metaphlan."
        )


#: Cells in one batch of rows of a wide table (16 MiB as float64): with one block, what reading a wide table holds in memory.
WIDE_BATCH_CELLS = 1 << 21


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
    checks and messages are those of every reader (Parquet: :func:`stream_parquet`).
    """
    separator = table_separator(path)
    header = raw_header(path, 0)
    # Checked before pandas reads the file: it would rename a repeated feature 'X' to 'X.1'.
    _check_ids(path, "feature", pd.Index(header[1:]))
    firsts, header_is_short = _data_rows(path, 0, "sample")
    if not header:
        raise DataError(f"{path}: cannot be read as a table with samples as rows: the file is empty")
    feature_names = header if header_is_short else header[1:]
    if not feature_names:
        raise DataError(f"{path}: no feature columns after the sample ID column")
    if not firsts:
        raise DataError(f"{path}: the table has a header but no sample rows")
    # An ID pandas reads as missing ('', 'NA', ...) is missing here too.
    ids = pd.Index([None if first in STR_NA_VALUES else first for first in firsts], dtype=object)
    # Before the ID checks: a missing ID column shows up as "duplicate IDs 0, 0, ..." otherwise.
    _check_sample_id_column(path, ids, None if header_is_short else header[0] or None)
    _check_ids(path, "sample", ids)
    if header_is_short:  # the first header field names a feature too (header[1:] is checked above)
        _check_ids(path, "feature", pd.Index(feature_names))
    sample_ids = tuple(str(i) for i in ids)
    n_samples, n_features = len(sample_ids), len(feature_names)
    rows = rows_per_read or max(1, WIDE_BATCH_CELLS // n_features)

    def batches() -> Iterator[np.ndarray]:
        """Validated ``(rows, n_features)`` values, a batch of rows at a time, in file order."""
        done = 0
        try:
            with pd.read_csv(path, sep=separator, index_col=0, dtype={0: str}, chunksize=rows) as reader:
                for frame in reader:
                    expected = sample_ids[done : done + len(frame)]
                    read = tuple(None if pd.isna(v) else str(v) for v in frame.index)
                    if read != expected or frame.shape[1] != n_features:
                        # Not expected from a file that stays as it is; never a silent misplacement if it does not.
                        raise DataError(
                            f"{path}: sample rows {done + 1}-{done + len(frame)} read differently from a first pass over the file "
                            f"({frame.shape[1]} values per row, IDs from {read[0]!r}; expected {n_features}, from {expected[0] if expected else None!r}). "
                            f"Was the file changed while it was read?"
                        )
                    frame.index, frame.columns = pd.Index(expected, dtype=object), pd.Index(feature_names, dtype=object)
                    yield validated_values(path, frame, samples_are_rows=True)
                    done += len(frame)
        except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as error:
            raise DataError(f"{path}: cannot be read as a table with samples as rows: {reading_problem(error)}") from None
        if done != n_samples:
            raise DataError(f"{path}: {done} sample rows read, but a first pass found {n_samples}; was the file changed while it was read?")

    def blocks(width: int) -> Iterator[np.ndarray]:
        bounds = [(start, min(start + width, n_features)) for start in range(0, n_features, width)]
        folder: Path | None = None
        try:
            folder = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".rows.tmp", dir=scratch))
            with (folder / "values.f64").open("w+b") as handle:
                done = 0
                for values in batches():
                    # Block by block, each holding all samples: rows done..done+k of a block are one contiguous run.
                    for start, stop in bounds:
                        handle.seek(8 * (n_samples * start + done * (stop - start)))
                        handle.write(np.ascontiguousarray(values[:, start:stop]).data)
                    done += values.shape[0]
                for start, stop in bounds:
                    block = np.empty((n_samples, stop - start), dtype=np.float64)
                    handle.seek(8 * n_samples * start)
                    if handle.readinto(block.data.cast("B")) != block.nbytes:
                        raise DataError(f"{path}: the temporary file {handle.name} ended early; was it changed while it was written?")
                    yield block
        except OSError as error:
            place = folder or scratch or Path(tempfile.gettempdir())
            raise DataError(
                f"{path}: cannot write or read the temporary file in {place}: {error.strerror or error}. A wide table is converted "
                f"through a temporary file of {8 * n_samples * n_features / 2**30:.2f} GiB there (8 bytes per value)."
            ) from None
        finally:
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)

    return TableStream(sample_ids, tuple(str(f) for f in feature_names), blocks, path)


def stream_metaphlan(path: Path, rank: str = "species", rows_per_read: int = 512) -> TableStream:
    """A MetaPhlAn merged table as a :class:`TableStream`: features are its rows, so blocks come straight from row chunks.

    The clade column is read first (to know the features of ``rank`` and check
    their IDs); values are then read ``rows_per_read`` rows at a time. Same
    checks and feature IDs (the last lineage part, ``s__Ruminococcus_bromii``) as
    every reader: duplicate IDs, non-numeric, negative or infinite values.
    """
    prefix = RANK_PREFIXES[rank]
    skipped = _comment_lines(path)
    header = raw_header(path, len(skipped))
    sample_ids = pd.Index([c for c in header[1:] if c not in METAPHLAN_TAXID_COLUMNS])
    _check_ids(path, "sample", sample_ids)
    check_row_lengths(path, len(skipped), "clade")
    if len(header) < 2:
        raise DataError(f"{path}: a MetaPhlAn table needs a clade column and at least one sample column; found {len(header)} column(s)")
    separator = table_separator(path)
    try:
        clades = pd.read_csv(path, sep=separator, comment=None, skiprows=skipped, usecols=[0], dtype=str).iloc[:, 0].astype(str)
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as error:
        raise DataError(f"{path}: cannot be read as a MetaPhlAn table: {reading_problem(error)}") from None
    last = clades.str.rsplit("|", n=1).str[-1]
    keep = last.str.startswith(prefix).to_numpy()
    if not keep.any():
        raise DataError(f"{path}: no '{prefix}' ({rank}) rows in this MetaPhlAn table; check 'rank' in the plan")
    feature_ids = pd.Index(last[keep])
    _check_ids(path, "feature", feature_ids)
    row_ids = last.to_numpy()

    def pieces() -> Iterator[np.ndarray]:
        offset = 0
        try:
            with pd.read_csv(path, sep=separator, comment=None, skiprows=skipped, dtype={0: str}, chunksize=rows_per_read) as reader:
                for frame in reader:
                    rows = slice(offset, offset + len(frame))
                    offset += len(frame)
                    chosen = keep[rows]
                    if not chosen.any():
                        continue
                    selected = frame.loc[chosen].drop(columns=[frame.columns[0], *[c for c in frame.columns[1:] if c in METAPHLAN_TAXID_COLUMNS]])
                    selected.index = pd.Index(row_ids[rows][chosen])
                    yield validated_values(path, selected, samples_are_rows=False).T
        except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as error:
            raise DataError(f"{path}: cannot be read as a MetaPhlAn table: {reading_problem(error)}") from None

    return TableStream(tuple(str(s) for s in sample_ids), tuple(str(f) for f in feature_ids), lambda width: _rebatch(pieces(), width), path)


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
    _check_sample_id_column(path, sample_index, id_column if not index_columns else None)
    _check_ids(path, "sample", sample_index)
    _check_ids(path, "feature", pd.Index(feature_names))

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


def stream_abundance_table(path: Path, fmt: str = "auto", rank: str = "species", scratch: Path | None = None) -> TableStream:
    """Any supported table as a :class:`TableStream`, block by block, never whole.

    ``scratch`` is the folder for the temporary file a wide TSV/CSV goes through
    (:func:`stream_wide`; default: the system's temporary folder).
    """
    if not path.exists():
        raise DataError(f"abundance file {path} does not exist")
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt == "metaphlan":
        return stream_metaphlan(path, rank)
    if fmt == "parquet" or (fmt == "wide" and _table_suffix(path) in (".parquet", ".pq")):
        return stream_parquet(path)
    if fmt != "wide":
        raise DataError(f"{path}: format {fmt!r} is not a table format")
    return stream_wide(path, scratch=scratch)


def read_abundance_table(path: Path, fmt: str = "auto", rank: str = "species") -> AbundanceTable:
    """Read any supported tabular abundance file (not a Zarr store) whole, into memory."""
    stream = stream_abundance_table(path, fmt, rank)
    width = max(1, len(stream.feature_ids))
    values = np.hstack(list(stream.blocks(width))) if stream.feature_ids else np.zeros((len(stream.sample_ids), 0))
    return AbundanceTable(stream.sample_ids, stream.feature_ids, values, path)
