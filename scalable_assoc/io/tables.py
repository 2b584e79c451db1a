"""Reading abundance tables: MetaPhlAn merged tables, wide TSV/CSV, Parquet.

Every reader returns an :class:`AbundanceTable` with samples as rows and checks
what would otherwise corrupt a study silently: duplicate sample or feature IDs,
non-numeric, negative or infinite values. An empty cell or NA is a missing
value (NaN), not an error.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import lzma
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, cast

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

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


def _unreadable(path: Path, error: Exception) -> DataError:
    detail = error.strerror if isinstance(error, OSError) and error.strerror else " ".join(str(error).split())
    return DataError(f"{path}: cannot be read: {detail}")


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


def check_row_lengths(path: Path, skipped: int = 0, row_word: str = "row") -> None:
    """Every line after the header has as many fields as the header.

    pandas pads a short line with missing values, so a truncated or misaligned
    line would silently become missing data (or shift values to the wrong
    column). A header one field shorter than every line (R's ``write.table``
    without a row-names header) is accepted, as pandas reads it the same way.
    Counting separators is fast; files with quoted fields go through ``csv``.
    """
    separator = table_separator(path)
    try:
        with _open_binary(path) as handle:
            raw = handle.read()
    except (OSError, EOFError, lzma.LZMAError) as error:
        raise _unreadable(path, error) from None
    if b'"' in raw:
        rows = list(csv.reader(io.StringIO(raw.decode("utf-8-sig", errors="replace"), newline=""), delimiter=separator))
        lengths = [len(row) for row in rows]
        firsts = [row[0] if row else "" for row in rows]
    else:
        # Lines as pandas splits them (on newlines only), counted without decoding every cell.
        lines = raw.removeprefix(b"\xef\xbb\xbf").split(b"\n")
        sep = separator.encode()
        lengths = [line.count(sep) + 1 if line.strip() else 0 for line in lines]
        firsts = [line.split(sep, 1)[0].decode("utf-8", errors="replace") for line in lines]
    if len(lengths) <= skipped + 1:
        return
    header = lengths[skipped]
    data = [(number, n) for number, n in enumerate(lengths[skipped + 1 :], start=skipped + 2) if n]  # blank lines are skipped, as pandas does
    if not data:
        return
    expected = header + 1 if all(n == header + 1 for _, n in data) else header
    bad = [(number, n) for number, n in data if n != expected]
    if bad:
        number, n = bad[0]
        raise DataError(
            f"{path}: line {number} ({row_word} '{firsts[number - 1]}') has {n} fields but the header has {header}; "
            f"{len(bad)} line(s) differ. A short or long line would shift or lose values: fix the file "
            f"(write an empty cell or NA for a missing value, keeping the separators)."
        )


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


def _one_line(error: BaseException) -> str:
    """A library error message on one line (pandas parser errors end with a newline)."""
    return " ".join(str(error).split())


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


def read_wide(path: Path) -> AbundanceTable:
    """Read a wide TSV/CSV table with samples as rows, sample IDs in the first column (Parquet: :func:`stream_parquet`)."""
    try:
        # Checked before pandas reads the file: it would rename a repeated feature 'X' to 'X.1'.
        _check_ids(path, "feature", pd.Index(raw_header(path, 0)[1:]))
        check_row_lengths(path, 0, "sample")
        frame = pd.read_csv(path, sep=table_separator(path), index_col=0, dtype={0: str})
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as error:
        raise DataError(f"{path}: cannot be read as a table with samples as rows: {_one_line(error)}") from None
    frame.index = frame.index.map(lambda v: v if pd.isna(v) else str(v))
    frame.columns = [str(c) for c in frame.columns]
    if frame.shape[1] == 0:
        raise DataError(f"{path}: no feature columns after the sample ID column")
    if frame.shape[0] == 0:
        raise DataError(f"{path}: the table has a header but no sample rows")
    # Before the ID checks: a missing ID column shows up as "duplicate IDs 0, 0, ..." otherwise.
    _check_sample_id_column(path, frame.index, frame.index.name)
    _check_ids(path, "sample", frame.index)
    _check_ids(path, "feature", pd.Index(frame.columns))
    values = validated_values(path, frame, samples_are_rows=True)
    return AbundanceTable(
        sample_ids=tuple(frame.index), feature_ids=tuple(frame.columns), values=values, source=path
    )


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
        raise DataError(f"{path}: cannot be read as a MetaPhlAn table: {_one_line(error)}") from None
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
            raise DataError(f"{path}: cannot be read as a MetaPhlAn table: {_one_line(error)}") from None

    return TableStream(tuple(str(s) for s in sample_ids), tuple(str(f) for f in feature_ids), lambda width: _rebatch(pieces(), width), path)


def stream_parquet(path: Path) -> TableStream:
    """A Parquet table with samples as rows as a :class:`TableStream`, read a block of feature columns at a time.

    The sample IDs are the pandas index stored with the file, else the first
    column, as in :func:`read_wide`; same checks.
    """
    try:
        handle = pq.ParquetFile(path)
        schema = handle.schema_arrow
        index_columns = [c for c in ((schema.pandas_metadata or {}).get("index_columns") or []) if isinstance(c, str)]
        id_column = index_columns[0] if index_columns else schema.names[0]
        ids = handle.read(columns=[id_column]).column(0).to_pandas()
    except (OSError, ValueError, IndexError) as error:
        raise DataError(f"{path}: cannot be read as a table with samples as rows: {_one_line(error)}") from None
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
                raise DataError(f"{path}: cannot read columns {names[0]}..{names[-1]}: {_one_line(error)}") from None
            frame.index = sample_index
            yield validated_values(path, frame, samples_are_rows=True)

    return TableStream(tuple(sample_index), tuple(str(n) for n in feature_names), blocks, path)


def stream_abundance_table(path: Path, fmt: str = "auto", rank: str = "species") -> TableStream:
    """Any supported table as a :class:`TableStream`: MetaPhlAn and Parquet block by block; a wide TSV/CSV is read whole."""
    if not path.exists():
        raise DataError(f"abundance file {path} does not exist")
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt == "metaphlan":
        return stream_metaphlan(path, rank)
    if fmt == "parquet" or (fmt == "wide" and _table_suffix(path) in (".parquet", ".pq")):
        return stream_parquet(path)
    if fmt != "wide":
        raise DataError(f"{path}: format {fmt!r} is not a table format")
    table = read_wide(path)
    return TableStream(
        table.sample_ids, table.feature_ids, lambda width: (table.values[:, s : s + width] for s in range(0, table.values.shape[1], width)), path
    )


def read_abundance_table(path: Path, fmt: str = "auto", rank: str = "species") -> AbundanceTable:
    """Read any supported tabular abundance file (not a Zarr store) whole, into memory."""
    stream = stream_abundance_table(path, fmt, rank)
    width = max(1, len(stream.feature_ids))
    values = np.hstack(list(stream.blocks(width))) if stream.feature_ids else np.zeros((len(stream.sample_ids), 0))
    return AbundanceTable(stream.sample_ids, stream.feature_ids, values, path)
