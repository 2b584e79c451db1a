"""An abundance table in memory or as a stream of feature blocks, and the checks every reader applies to its IDs and values."""

from __future__ import annotations

import queue
import sys
import threading
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd

from scalable_assoc.errors import DataError

T = TypeVar("T")


@dataclass(frozen=True)
class AbundanceTable:
    """An abundance matrix in memory: ``values`` is ``(n_samples, n_features)`` float64, NaN = missing."""

    sample_ids: tuple[str, ...]
    feature_ids: tuple[str, ...]
    values: np.ndarray
    source: Path


class SmallestPositive:
    """The smallest value > 0 of a whole table (inf if none), once a reader knows or guesses it (``value`` is None until then).

    A reader that sees every value before it yields its first block (a wide table goes through a temporary
    file) sets it; a MetaPhlAn reader sets its first pass's guess. The store's half-minimum sums are then taken
    with that pseudocount from the first block on and no block is read back; the store checks the value against
    every value written and, where it was not the table's smallest, reads blocks back as without it
    (:class:`~scalable_assoc.io.store._SampleSumsWriter`).
    """

    def __init__(self) -> None:
        self.value: float | None = None


@dataclass(frozen=True)
class TableStream:
    """An abundance table read a block of features at a time, never whole.

    ``blocks(width)`` yields ``(n_samples, width)`` float64 arrays (the last may
    be narrower) covering ``feature_ids`` in order; values are validated as they
    are read, so a bad cell raises :class:`DataError` part-way through.
    ``notes`` say what a reader left out or changed (rows it skipped); they are
    stored with the store and reach the run's manifest. ``renamed_samples`` maps
    each sample ID as written to the ID used (a reader that strips suffixes).
    """

    sample_ids: tuple[str, ...]
    feature_ids: tuple[str, ...]
    blocks: Callable[[int], Iterator[np.ndarray]]
    source: Path
    notes: tuple[str, ...] = ()
    renamed_samples: tuple[tuple[str, str], ...] = ()
    #: set by readers that know it before their first block (None: the store finds it block by block)
    smallest_positive: SmallestPositive | None = None


def rebatch(pieces: Iterator[np.ndarray], width: int) -> Iterator[np.ndarray]:
    """Regroup ``(n, k_i)`` pieces into ``(n, width)`` blocks (the last narrower), holding at most one block plus one piece.

    Each block is filled in place as the pieces come (no joined copy of pending pieces),
    so converting holds one block being filled, one piece, and the block last yielded.
    A block's memory is filled again for a later block once its consumer has let go of it
    (:func:`reused_block`), as the store writer does: a fresh block-sized array costs its
    first touch of every page, most of the system time of a conversion on some machines.
    """
    block: np.ndarray | None = None
    spare: list[np.ndarray] = []
    filled = 0
    for piece in read_ahead(pieces):
        used = 0
        while used < piece.shape[1]:
            if block is None:
                block, filled = reused_block(spare, (piece.shape[0], width)), 0
            take = min(width - filled, piece.shape[1] - used)
            block[:, filled : filled + take] = piece[:, used : used + take]
            filled, used = filled + take, used + take
            if filled == width:
                yield block
                block = None
    if block is not None and filled:
        yield np.ascontiguousarray(block[:, :filled])


#: Items a reader thread may have ready ahead of their consumer (:func:`read_ahead`): pieces of about 1 MiB of text each.
READ_AHEAD_ITEMS = 2
_END = object()


def read_ahead(items: Iterator[T], depth: int = READ_AHEAD_ITEMS) -> Generator[T, None, None]:
    """``items`` as they are, produced in a thread of their own up to ``depth`` ahead of the consumer.

    Why: reading and parsing a text table (pyarrow's parse, file reads) and what the consumer does with
    each item (the store's block copies and sums) take turns on one core otherwise; here they overlap on
    two. An error raised by ``items`` is raised here, where the consumer asks for the next item, after
    the items before it. When the consumer stops early (an error, or the stream closed), the thread stops
    at its next item and closes ``items`` (so its files are closed); this waits for it.
    """
    ready: queue.Queue[tuple[object, BaseException | None]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry: tuple[object, BaseException | None]) -> bool:
        while not stop.is_set():
            try:
                ready.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
                del item
            put((_END, None))
        except BaseException as error:  # handed to the consumer, raised there
            put((_END, error))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="scalable-assoc-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item, error = ready.get()
            if item is _END:
                if error is not None:
                    raise error
                return
            yield item  # type: ignore[misc]
            del item
    finally:
        stop.set()
        thread.join()


#: Blocks a reader keeps for re-use (:func:`reused_block`): the store writer holds two at once (one written, one summed).
SPARE_BLOCKS = 2


def reused_block(spare: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """A float64 array of ``shape`` (its values left as they were) for a reader to fill: one of ``spare`` no one else holds, or a new one.

    ``spare`` (at most :data:`SPARE_BLOCKS`, oldest first) holds the blocks the reader yielded before; the one
    returned is appended to it. A spare block is re-used only when its one reference left is the list's (and
    ``getrefcount``'s own): any consumer still holding it, a view of it, or a buffer exported from it, holds a
    reference, so a block kept (``list(stream.blocks(w))``) is never overwritten; it is simply not re-used.
    """
    for index in range(len(spare)):
        # No name bound to the candidate while it is counted: its references are then the list's and the argument's.
        if spare[index].shape == shape and sys.getrefcount(spare[index]) == 2:
            spare.append(spare.pop(index))
            return spare[-1]
    block = np.empty(shape, dtype=np.float64)
    spare.append(block)
    if len(spare) > SPARE_BLOCKS:
        del spare[0]
    return block


def chosen_rows(frames: Iterable[pd.DataFrame], keep: np.ndarray, start: int) -> Iterator[tuple[pd.DataFrame, slice, np.ndarray]]:
    """Each batch of a table read a batch of rows at a time (features as rows), its rows' positions and which to use.

    ``chosen`` (bool, one per row of the batch) marks the rows ``keep`` (``(n_rows,)`` bool) selects from row
    ``start`` on: the rows before were read already (by a fast path that handed over there).
    """
    offset = 0
    for frame in frames:
        rows = slice(offset, offset + len(frame))
        offset += len(frame)
        chosen = keep[rows].copy()
        chosen[: max(0, start - rows.start)] = False
        yield frame, rows, chosen


def _duplicates(values: pd.Index) -> list[str]:
    return [str(v) for v in values[values.duplicated()].unique()[:5]]


def check_ids(path: Path, what: str, ids: pd.Index) -> None:
    """Refuse empty or repeated IDs; ``what`` (``sample``, ``feature``) names them in the error."""
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
    numeric = (
        frame.apply(pd.to_numeric, errors="coerce") if any(not pd.api.types.is_numeric_dtype(dtype) for dtype in frame.dtypes) else frame
    )
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


def check_sample_id_column(path: Path, ids: pd.Index, header: object = None) -> None:
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
