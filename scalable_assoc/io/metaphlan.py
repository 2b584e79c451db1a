"""Reading MetaPhlAn merged tables (features as rows, one lineage per row) a block of features at a time."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from scalable_assoc.errors import DataError
from scalable_assoc.io.table_text import check_row_lengths, comment_lines, raw_header, reading_problem, table_separator
from scalable_assoc.io.table_values import SmallestPositive, TableStream, check_ids, chosen_rows, rebatch, validated_values
from scalable_assoc.io.text_values import TextTable, checked_row_ids, kept_rows
from scalable_assoc.plan.schema import RANK_PREFIXES

logger = logging.getLogger(__name__)

#: Columns of MetaPhlAn merged tables that hold taxonomy ids, not samples.
METAPHLAN_TAXID_COLUMNS = ("NCBI_tax_id", "clade_taxid", "taxid", "clade_ncbi_taxid")


def stream_metaphlan(path: Path, rank: str = "species", rows_per_read: int = 512) -> TableStream:
    """A MetaPhlAn merged table as a :class:`TableStream`: features are its rows, so blocks come straight from row chunks.

    The clade column is read first (to know the features of ``rank`` and check
    their IDs); values are then read ``rows_per_read`` rows at a time. Same
    checks and feature IDs (the last lineage part, ``s__Ruminococcus_bromii``) as
    every reader: duplicate IDs, non-numeric, negative or infinite values.
    """
    prefix = RANK_PREFIXES[rank]
    skipped = comment_lines(path)
    header = raw_header(path, len(skipped))
    sample_ids = pd.Index([c for c in header[1:] if c not in METAPHLAN_TAXID_COLUMNS])
    check_ids(path, "sample", sample_ids)
    separator = table_separator(path)
    layout = TextTable(path, separator, len(skipped) + 1, len(header))
    # pyarrow reads the values where it reads them as pandas does (text_values); pandas reads the rest and words every error.
    taxids = [i for i, name in enumerate(header) if name in METAPHLAN_TAXID_COLUMNS]
    first = 1 + len(taxids)
    # The fast path takes the taxonomy id columns only right after the clades; pandas would rename a repeated column name.
    fast = taxids == list(range(1, first)) and len(set(header)) == len(header)
    written_smallest: list[float] = []
    if fast and len(header) >= 2:
        # The clades and every row's field count in one pass over the text (a second pass took 0.4 s of 307 MB).
        ids = checked_row_ids(layout, "clade", written_smallest)
    else:
        ids = None
        check_row_lengths(path, len(skipped), "clade")
    if len(header) < 2:
        raise DataError(f"{path}: a MetaPhlAn table needs a clade column and at least one sample column; found {len(header)} column(s)")
    if ids is None:
        fast = False
        clades = _pandas_clades(path, separator, skipped)
    else:
        clades = pd.Series(ids, dtype=str)
    last = clades.str.rsplit("|", n=1).str[-1]
    keep = last.str.startswith(prefix).to_numpy(dtype=bool)
    if not keep.any():
        raise DataError(f"{path}: no '{prefix}' ({rank}) rows in this MetaPhlAn table; check 'rank' in the plan")
    feature_ids = pd.Index(last[keep])
    check_ids(path, "feature", feature_ids)
    clade_ids = last.to_numpy()

    def pieces() -> Iterator[np.ndarray]:
        done = 0
        if fast:
            declined_at = yield from kept_rows(path, layout, first, keep)
            if declined_at is None:
                return
            done = declined_at
        yield from _pandas_pieces(path, separator, skipped, keep, clade_ids, rows_per_read, done)

    return TableStream(
        tuple(str(s) for s in sample_ids),
        tuple(str(f) for f in feature_ids),
        lambda width: rebatch(pieces(), width),
        path,
        smallest_positive=_guessed_smallest(written_smallest, keep) if ids is not None else None,
    )


def _guessed_smallest(written_smallest: list[float], keep: np.ndarray) -> SmallestPositive | None:
    """The kept rows' smallest value written with an exponent (``text_values._smallest_in_exponent_form``, one per row)
    as the store's guess of the table's smallest value > 0, or None when no kept row has one.

    The store takes its half-minimum sums with it from the first block and checks it against every value written:
    where it is not the table's smallest, the blocks are read back as without a guess (correct either way).
    """
    if len(written_smallest) != len(keep):
        return None
    least = float(np.min(np.asarray(written_smallest)[keep], initial=np.inf))
    if not np.isfinite(least):
        return None
    guess = SmallestPositive()
    guess.value = least
    return guess


def _pandas_clades(path: Path, separator: str, skipped: list[int]) -> pd.Series:
    """The clade column as pandas reads it (the reference: quoted fields, missing clades as 'nan')."""
    try:
        return pd.read_csv(path, sep=separator, comment=None, skiprows=skipped, usecols=[0], dtype=str).iloc[:, 0].astype(str)
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as error:
        raise DataError(f"{path}: cannot be read as a MetaPhlAn table: {reading_problem(error)}") from None


def _pandas_pieces(
    path: Path, separator: str, skipped: list[int], keep: np.ndarray, row_ids: np.ndarray, rows_per_read: int, start: int
) -> Iterator[np.ndarray]:
    """``(samples, rows)`` values of the kept rows from row ``start`` on, read and checked by pandas ``rows_per_read`` rows at a time."""
    try:
        with pd.read_csv(path, sep=separator, comment=None, skiprows=skipped, dtype={0: str}, chunksize=rows_per_read) as reader:
            for frame, rows, chosen in chosen_rows(reader, keep, start):
                if not chosen.any():
                    continue
                selected = frame.loc[chosen].drop(
                    columns=[frame.columns[0], *[c for c in frame.columns[1:] if c in METAPHLAN_TAXID_COLUMNS]]
                )
                selected.index = pd.Index(row_ids[rows][chosen])
                yield validated_values(path, selected, samples_are_rows=False).T
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as error:
        raise DataError(f"{path}: cannot be read as a MetaPhlAn table: {reading_problem(error)}") from None
