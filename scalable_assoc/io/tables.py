"""Reading abundance tables: MetaPhlAn merged tables, wide TSV/CSV, Parquet.

Every reader returns an :class:`AbundanceTable` with samples as rows and checks
what would otherwise corrupt a study silently: duplicate sample or feature IDs,
non-numeric, negative or infinite values. An empty cell or NA is a missing
value (NaN), not an error.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

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


def _separator(path: Path) -> str:
    return "," if path.suffix.lower() == ".csv" else "\t"


def _first_data_line(path: Path) -> list[str]:
    """The first non-comment line, split on the file's separator (MetaPhlAn headers start with '#mpa')."""
    with path.open(encoding="utf-8", errors="replace") as handle:
        reader = csv.reader(handle, delimiter=_separator(path))
        for row in reader:
            if row and not row[0].startswith("#mpa") and row[0] != "#":
                return row
    raise DataError(f"{path}: the file is empty")


def detect_format(path: Path) -> str:
    """Guess ``zarr``, ``parquet``, ``metaphlan`` or ``wide`` from a path and its first line."""
    if path.is_dir() or path.suffix == ".zarr":
        return "zarr"
    if path.suffix.lower() in (".parquet", ".pq"):
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
        original = frame.iat[row, column]
        raise DataError(
            f"{path}: {int(mask.sum())} {problem} value(s); the first is {original!r} for {row_word} "
            f"'{frame.index[row]}', {column_word} '{frame.columns[column]}'. Abundances must be non-negative numbers "
            f"(leave a cell empty or write NA for a missing value)."
        )

    first_bad(np.isnan(values) & ~originally_missing, "non-numeric")
    first_bad(np.isinf(values), "infinite")
    with np.errstate(invalid="ignore"):
        first_bad(values < 0, "negative")
    return values


def read_metaphlan(path: Path, rank: str = "species") -> AbundanceTable:
    """Read a MetaPhlAn merged table, keeping the rows of one rank.

    A row belongs to a rank when the last component of its clade name carries
    that rank's prefix (``s__`` for species). Feature IDs are that last
    component (``s__Ruminococcus_bromii``), as MetaPhlAn prints it.
    """
    prefix = RANK_PREFIXES[rank]
    try:
        frame = pd.read_csv(path, sep=_separator(path), comment=None, skiprows=_comment_lines(path), dtype={0: str})
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot be read as a MetaPhlAn table: {error}") from None
    clade_column = frame.columns[0]
    frame = frame.drop(columns=[c for c in frame.columns[1:] if c in METAPHLAN_TAXID_COLUMNS])
    clades = frame[clade_column].astype(str)
    last = clades.str.rsplit("|", n=1).str[-1]
    keep = last.str.startswith(prefix).to_numpy()
    if not keep.any():
        raise DataError(f"{path}: no '{prefix}' ({rank}) rows in this MetaPhlAn table; check 'rank' in the plan")
    selected = frame.loc[keep].set_index(last[keep])
    selected = selected.drop(columns=[clade_column])
    _check_ids(path, "feature", selected.index)
    _check_ids(path, "sample", selected.columns)
    values = validated_values(path, selected, samples_are_rows=False)
    return AbundanceTable(
        sample_ids=tuple(str(c) for c in selected.columns),
        feature_ids=tuple(str(i) for i in selected.index),
        values=np.ascontiguousarray(values.T),
        source=path,
    )


def _comment_lines(path: Path) -> list[int]:
    """Indices of leading '#mpa...' comment lines (the header may itself start with '#')."""
    skipped = []
    with path.open(encoding="utf-8", errors="replace") as handle:
        for index, line in enumerate(handle):
            if line.startswith("#mpa") or line.strip() == "#" or (line.startswith("#") and "\t" not in line and "," not in line):
                skipped.append(index)
            else:
                break
    return skipped


def read_wide(path: Path, sample_id_column: str | None = None) -> AbundanceTable:
    """Read a wide TSV/CSV or Parquet table with samples as rows, sample IDs in the first column."""
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
            if sample_id_column and sample_id_column in frame.columns:
                frame = frame.set_index(sample_id_column)
            elif not isinstance(frame.index, pd.RangeIndex):
                pass
            else:
                frame = frame.set_index(frame.columns[0])
        else:
            frame = pd.read_csv(path, sep=_separator(path), index_col=0, dtype={0: str})
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as error:
        raise DataError(f"{path}: cannot be read as a table with samples as rows: {error}") from None
    frame.index = frame.index.map(lambda v: v if pd.isna(v) else str(v))
    frame.columns = [str(c) for c in frame.columns]
    if frame.shape[1] == 0:
        raise DataError(f"{path}: no feature columns after the sample ID column")
    _check_ids(path, "sample", frame.index)
    _check_ids(path, "feature", pd.Index(frame.columns))
    values = validated_values(path, frame, samples_are_rows=True)
    return AbundanceTable(
        sample_ids=tuple(frame.index), feature_ids=tuple(frame.columns), values=values, source=path
    )


def read_abundance_table(path: Path, fmt: str = "auto", rank: str = "species") -> AbundanceTable:
    """Read any supported tabular abundance file (not a Zarr store)."""
    if not path.exists():
        raise DataError(f"abundance file {path} does not exist")
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt == "metaphlan":
        return read_metaphlan(path, rank)
    if fmt in ("wide", "parquet"):
        return read_wide(path)
    raise DataError(f"{path}: format {fmt!r} is not a table format")
