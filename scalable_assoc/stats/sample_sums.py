"""Per-sample sums kept with a store, so a run's transforms need no second read of the store.

The CLR, TSS and AST transforms need, per sample, sums over the *kept* features
of a layer (:func:`scalable_assoc.stats.transforms.sample_summaries`). Instead of
a pass over every block before the fit, the store keeps, computed while it is
written (each block is in memory then anyway):

* per sample, over **all** features (:class:`AllFeatureSums`): the number of
  observed values, the sum of ``x`` (TSS/AST), the number of ``x > 0`` and the
  sum of ``log x`` over them (the CLR of the non-zero view, presence threshold
  0), and the sum of ``log(x + c)`` with ``c`` half the smallest positive value
  of the whole layer (CLR with ``pseudocount: half_min`` over all features);
* a sparse copy of the *rare* features, those with prevalence below
  :data:`RARE_PREVALENCE_CAP`: per feature, the sample index and value of each
  cell that is not zero (missing cells included, as NaN).

A prevalence filter with ``min_prevalence <= cap`` removes only rare features, so
the sums over the kept features are the sums over all minus the removed
features' contributions (:func:`removed_cell_sums`, :func:`kept_sums`):
``log(x + c)`` at their non-zero cells and ``log(c)`` at their zeros (the
number of zeros follows from the counts, so zeros are never stored). The
composition is a few ``bincount`` calls over the sparse cells, no loop over
features. It equals the pass to rounding (the summation order differs).

Pure numpy: no Dask, no files.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from scalable_assoc.stats.transforms import FeatureSummary, feature_summary

#: Features with prevalence (values > 0 among observed) below this fraction get a sparse copy.
#: Microbiome filters use 0.05-0.2; 0.25 covers them while a rare feature's copy (12 bytes a
#: cell, at most a quarter of its cells) stays a fraction of the compressed dense chunk.
RARE_PREVALENCE_CAP = 0.25


@dataclass(frozen=True)
class AllFeatureSums:
    """Per-sample sums over every feature of a layer (each array ``(n_samples,)``).

    ``observed``: non-missing values; ``total``: sum of ``x``; ``positive``:
    values > 0; ``log_positive``: sum of ``log x`` over ``x > 0``;
    ``log_pseudo``: sum of ``log(x + pseudocount)`` over observed values, with
    ``pseudocount`` half the layer's smallest positive value (NaN if none).
    """

    observed: np.ndarray
    total: np.ndarray
    positive: np.ndarray
    log_positive: np.ndarray
    log_pseudo: np.ndarray
    pseudocount: float


#: Cells of a block summed at a time (2 MiB of float64): the temporaries of a block's sums stay a few MiB, not
#: a few copies of the block (a store chunk is 32 MiB). Each sum is over one sample's row (or one feature's column),
#: so summing a slab of rows at a time gives the same bits as the whole block.
SLAB_CELLS = 1 << 18


def row_slabs(n_rows: int, n_columns: int, cells: int | None = None) -> list[slice]:
    """Consecutive row ranges of an ``(n_rows, n_columns)`` block, each about ``cells`` cells (default :data:`SLAB_CELLS`)."""
    step = max(1, (cells or SLAB_CELLS) // max(n_columns, 1))
    return [slice(start, min(start + step, n_rows)) for start in range(0, n_rows, step)] or [slice(0, 0)]


def block_sums(block: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A block's per-sample ``(observed, positive, log_positive)`` (see :class:`AllFeatureSums`), each ``(n,)``.

    The sum of ``x`` is the store's ``sample_totals``, summed beside these. Summed a slab of rows at a time
    (:data:`SLAB_CELLS`): each sum is over one row, so the bits are those of the whole block at once.
    """
    n = block.shape[0]
    observed, positive, log_positive = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64), np.zeros(n)
    for rows in row_slabs(*block.shape):
        slab = block[rows]
        above = slab > 0  # NaN compares False
        # 1 where not positive (log 1 = 0), the value where positive (x + 0 is x): a blend without a branch per cell;
        # np.where(above, slab, 1.0) ran 5x slower, mispredicting the branch of a cell half the time on abundances.
        logs = np.fmax(slab, 0.0)  # NaN -> 0
        logs += ~above
        np.log(logs, out=logs)  # in place; a masked ufunc (where=) is 3-4x slower than logs of every cell
        observed[rows] = (~np.isnan(slab)).sum(axis=1)
        positive[rows] = above.sum(axis=1)
        log_positive[rows] = logs.sum(axis=1)
    return observed, positive, log_positive


def block_log_pseudo(block: np.ndarray, pseudocount: float) -> np.ndarray:
    """``(n,)`` per-sample sum of ``log(x + pseudocount)`` over a block's observed values (as the CLR pass sums them).

    A slab of rows at a time, as :func:`block_sums`.
    """
    out = np.zeros(block.shape[0])
    for rows in row_slabs(*block.shape):
        slab = block[rows]
        shifted = slab + pseudocount
        shifted[np.isnan(slab)] = 1.0  # log 1 = 0: missing values add nothing
        with np.errstate(divide="ignore", invalid="ignore"):
            np.log(shifted, out=shifted)
        out[rows] = shifted.sum(axis=1)
    return out


def rare_features(nonzero: np.ndarray, observed: np.ndarray, cap: float = RARE_PREVALENCE_CAP) -> np.ndarray:
    """``(m,)`` bool: features whose prevalence (``nonzero / observed``, 0 when none observed) is below ``cap``."""
    with np.errstate(invalid="ignore", divide="ignore"):
        fraction = np.where(observed > 0, nonzero / np.maximum(observed, 1), 0.0)
    return fraction < cap


def sparse_cells(block: np.ndarray, features: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The cells of the block's ``features`` (bool ``(m,)``) that are not zero, feature by feature.

    Returns ``(lengths, samples, values)``: per feature of the block the number
    of its cells kept (0 for features not chosen), ``(m,)`` int64; and per cell
    its sample index (int32) and value (float64, NaN where missing). The chosen
    features are copied a few at a time (about :data:`SLAB_CELLS` cells), not all at once.
    """
    lengths = np.zeros(block.shape[1], dtype=np.int64)
    chosen_columns = np.flatnonzero(features)
    step = max(1, SLAB_CELLS // max(block.shape[0], 1))
    samples, values = [np.zeros(0, dtype=np.int32)], [np.zeros(0)]
    for first in range(0, chosen_columns.size, step):
        columns = chosen_columns[first : first + step]
        chosen = block[:, columns].T  # (r, n): cells of one feature are contiguous
        kept = chosen != 0  # NaN != 0: missing cells are kept
        lengths[columns] = kept.sum(axis=1)
        samples.append(np.nonzero(kept)[1].astype(np.int32))
        values.append(chosen[kept])
    return lengths, np.concatenate(samples), np.concatenate(values)


def summary_and_totals(block: np.ndarray) -> tuple[FeatureSummary, np.ndarray]:
    """A block's :func:`~scalable_assoc.stats.transforms.feature_summary` and each sample's sum of its observed values ``(n,)``.

    A slab of rows at a time (:func:`row_slabs`): the temporaries of both (a float copy for the minimum, one for
    the NaN-less sum, masks) stay a few MiB instead of a copy of the block each. The counts and minimums combine
    exactly and each sample's total is its own row's sum, so the bits are those of the whole block at once.
    """
    parts, totals = [], np.zeros(block.shape[0])
    for rows in row_slabs(*block.shape):
        slab = block[rows]
        parts.append(feature_summary(slab))
        totals[rows] = np.nansum(slab, axis=1)
    if len(parts) == 1:
        return parts[0], totals
    summary = FeatureSummary(
        nonzero=np.sum([p.nonzero for p in parts], axis=0),
        observed=np.sum([p.observed for p in parts], axis=0),
        min_positive=np.min([p.min_positive for p in parts], axis=0),
    )
    return summary, totals


@dataclass(frozen=True)
class BlockStatistics:
    """What a store keeps of one block ``(n, m)`` besides its values.

    ``summary``: per feature (``(m,)`` each) the values > 0, the observed values and the smallest value > 0.
    Per sample (``(n,)`` each, over the block's features, as :class:`AllFeatureSums`): ``total`` (sum of the
    observed values), ``observed``, ``positive`` (int64), ``log_positive``, and ``log_pseudo``, the sum of
    ``log(x + pseudocount)`` over observed values (None without a pseudocount). ``rare``: the
    :func:`sparse_cells` of the features with prevalence below the cap.
    """

    summary: FeatureSummary
    total: np.ndarray
    observed: np.ndarray
    positive: np.ndarray
    log_positive: np.ndarray
    pseudocount: float | None
    log_pseudo: np.ndarray | None
    rare: tuple[np.ndarray, np.ndarray, np.ndarray]


def reference_block_statistics(block: np.ndarray, pseudocount: float | None = None, cap: float = RARE_PREVALENCE_CAP) -> BlockStatistics:
    """:class:`BlockStatistics` by the definitions, one pass over the block each (:func:`block_sums`,
    :func:`summary_and_totals`, :func:`block_log_pseudo`, :func:`sparse_cells`).

    What :func:`block_statistics` gives bit for bit, and what it falls back to where its blends do not hold.
    """
    observed, positive, log_positive = block_sums(block)
    summary, total = summary_and_totals(block)
    log_pseudo = block_log_pseudo(block, pseudocount) if pseudocount is not None else None
    rare = sparse_cells(block, rare_features(summary.nonzero, summary.observed, cap))
    return BlockStatistics(summary, total, observed, positive, log_positive, pseudocount, log_pseudo, rare)


class BlockWorkspace:
    """Arrays :func:`block_statistics` fills again block after block: a slab's scratch and a block's mask.

    Why: fresh memory costs the first touch of every page (on a VM handing freed pages back to its host, most of
    a conversion's system time), and temporaries allocated per slab came back fresh at every block.
    """

    def __init__(self) -> None:
        self._arrays: dict[str, np.ndarray] = {}

    def array(self, name: str, shape: tuple[int, ...], dtype: type, order: Literal["C", "F"]) -> np.ndarray:
        """The array held under ``name`` if it has this shape, dtype and order (its values as left), else a new one."""
        held = self._arrays.get(name)
        if held is None or held.shape != shape or held.dtype != dtype or not held.flags[order]:
            held = self._arrays[name] = np.empty(shape, dtype=dtype, order=order)
        return held


#: The bits of +inf: a float64 >= 0 compares as its bits do as uint64, so the smallest value > 0 is the smallest of
#: ``bits - 1`` (zero wraps to the largest uint64; NaN and sign-bit values land above ``INF_BITS - 1``).
INF_BITS = np.uint64(0x7FF0000000000000)


def block_statistics(
    block: np.ndarray, pseudocount: float | None = None, workspace: BlockWorkspace | None = None, cap: float = RARE_PREVALENCE_CAP
) -> BlockStatistics:
    """:class:`BlockStatistics` of ``block`` ``(n, m)`` in one pass over it, with the bits of :func:`reference_block_statistics`.

    Every per-sample and per-feature sum of a slab of rows (:data:`SLAB_CELLS`) is taken while the slab is in
    cache, into ``workspace``'s arrays (no fresh memory per slab), and the cells of the sparse copy are found
    in a mask kept from the slabs. The reference's five passes streamed the block from memory five times and
    allocated temporaries per slab: on a 7,656 x 547 block of species abundances 41-46 ms against 19-22 ms
    (with one pseudocount, one thread), 1,820 pages touched fresh against 780.

    Bits: each element summed is the reference's (``x + 0`` is ``x``; ``log 1`` is 0 where a value is left out),
    in the reference's order (each row's sum over a slab laid out as the block is, as the reference's temporaries
    are); counts are integers and the minimum is exact. A block holding a negative value (the blends assume
    abundances), or laid out with neither axis contiguous, goes to :func:`reference_block_statistics`.
    """
    order = _slab_order(block)
    n, m = block.shape
    if order is None or n == 0 or m == 0:
        return reference_block_statistics(block, pseudocount, cap)
    workspace = workspace if workspace is not None else BlockWorkspace()
    slabs = row_slabs(n, m)
    scratch = _SlabScratch.of(workspace, (slabs[0].stop - slabs[0].start, m), order)
    nonzero = workspace.array("nonzero", (n, m), np.bool_, order)  # cells != 0 (missing ones too): the sparse copy's
    sums = _BlockSums.empty(n, m, pseudocount is not None)
    for rows in slabs:
        if not _add_slab(block[rows], rows, pseudocount, nonzero[rows], scratch, sums):
            return reference_block_statistics(block, pseudocount, cap)
    min_positive = np.where(sums.lowest_bits < INF_BITS, sums.lowest_bits + np.uint64(1), INF_BITS).view(np.float64)
    summary = FeatureSummary(nonzero=sums.feature_positive, observed=sums.feature_observed, min_positive=min_positive)
    rare_columns = np.flatnonzero(rare_features(summary.nonzero, summary.observed, cap))
    # No negative value: a cell is not zero where it is positive or missing.
    n_cells = int(sums.feature_positive[rare_columns].sum() + (n - sums.feature_observed[rare_columns]).sum())
    rare = _nonzero_cells(block, nonzero, rare_columns, n_cells, scratch.rooms(), workspace)
    return BlockStatistics(summary, sums.total, sums.observed, sums.positive, sums.log_positive, pseudocount, sums.log_pseudo, rare)


@dataclass(frozen=True)
class _SlabScratch:
    """A slab's scratch arrays (each ``(rows, m)``, laid out as the block): float64 ``logs`` and ``other``, bool
    ``not_positive`` and ``missing``."""

    logs: np.ndarray
    other: np.ndarray
    not_positive: np.ndarray
    missing: np.ndarray

    @classmethod
    def of(cls, workspace: BlockWorkspace, shape: tuple[int, int], order: Literal["C", "F"]) -> _SlabScratch:
        return cls(*(workspace.array(name, shape, dtype, order) for name, dtype in _SLAB_SCRATCH))

    def rooms(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Their memory once the slabs are summed, as flat arrays: two bool, two int64 (for :func:`_nonzero_cells`)."""
        return _flat(self.not_positive, np.bool_), _flat(self.missing, np.bool_), _flat(self.logs, np.int64), _flat(self.other, np.int64)


_SLAB_SCRATCH = (("logs", np.float64), ("other", np.float64), ("not_positive", np.bool_), ("missing", np.bool_))


@dataclass(frozen=True)
class _BlockSums:
    """A block's sums as its slabs are added: per sample (``(n,)``) and per feature (``(m,)``, the smallest value > 0
    as :data:`INF_BITS` describes)."""

    total: np.ndarray
    observed: np.ndarray
    positive: np.ndarray
    log_positive: np.ndarray
    log_pseudo: np.ndarray | None
    feature_positive: np.ndarray
    feature_observed: np.ndarray
    lowest_bits: np.ndarray

    @classmethod
    def empty(cls, n: int, m: int, with_pseudocount: bool) -> _BlockSums:
        return cls(
            total=np.empty(n),
            observed=np.empty(n, dtype=np.int64),
            positive=np.empty(n, dtype=np.int64),
            log_positive=np.empty(n),
            log_pseudo=np.empty(n) if with_pseudocount else None,
            feature_positive=np.zeros(m, dtype=np.int64),
            feature_observed=np.zeros(m, dtype=np.int64),
            lowest_bits=np.full(m, np.iinfo(np.uint64).max, dtype=np.uint64),
        )


def _add_slab(
    slab: np.ndarray, rows: slice, pseudocount: float | None, nonzero: np.ndarray, scratch: _SlabScratch, sums: _BlockSums
) -> bool:
    """Add the sums of ``slab`` (rows ``rows`` of the block, ``(k, m)``) to ``sums``; ``nonzero`` (bool ``(k, m)``) gets
    ``slab != 0``. False, with nothing added, if the slab holds a negative value."""
    k, m = slab.shape
    lowest = np.minimum.reduce(slab, axis=None)  # NaN if any is missing
    has_missing = bool(np.isnan(lowest))
    if (np.fmin.reduce(slab, axis=None) if has_missing else lowest) < 0:
        return False
    logs, other, not_positive, missing = scratch.logs[:k], scratch.other[:k], scratch.not_positive[:k], scratch.missing[:k]
    np.greater(slab, 0.0, out=nonzero)  # positive for now; NaN compares False
    sums.positive[rows] = _true_counts(nonzero, axis=1)
    sums.feature_positive[:] += _true_counts(nonzero, axis=0)
    np.logical_not(nonzero, out=not_positive)
    # x where x > 0 (x + 0 is x), 1 at zeros (log 1 = 0): the reference's fmax(x, 0) + (x <= 0) for x >= 0, one pass less
    np.add(slab, not_positive, out=logs)
    if has_missing:
        np.isnan(slab, out=missing)
        sums.observed[rows] = m - _true_counts(missing, axis=1)
        sums.feature_observed[:] += k - _true_counts(missing, axis=0)
        np.copyto(logs, 1.0, where=missing)
        np.copyto(other, slab)
        np.copyto(other, 0.0, where=missing)  # what nansum sums
        sums.total[rows] = other.sum(axis=1)
        np.logical_or(nonzero, missing, out=nonzero)  # the sparse copy keeps missing cells
    else:
        sums.observed[rows] = m
        sums.feature_observed[:] += k
        sums.total[rows] = slab.sum(axis=1)
    np.log(logs, out=logs)
    sums.log_positive[rows] = logs.sum(axis=1)
    bits = other.view(np.uint64)
    np.subtract(slab.view(np.uint64), 1, out=bits)
    np.minimum(sums.lowest_bits, np.minimum.reduce(bits, axis=0), out=sums.lowest_bits)
    if sums.log_pseudo is not None and pseudocount is not None:
        np.add(slab, pseudocount, out=other)
        if has_missing:
            np.copyto(other, 1.0, where=missing)  # log 1 = 0: missing values add nothing
        with np.errstate(divide="ignore", invalid="ignore"):
            np.log(other, out=other)
        sums.log_pseudo[rows] = other.sum(axis=1)
    return True


def _slab_order(block: np.ndarray) -> Literal["C", "F"] | None:
    """The order of arrays laid out as ``block``'s slabs (as NumPy lays out a temporary of a slab), None if neither.

    A row's sum runs over the row pairwise in a C-ordered array, one column after the other in an F-ordered one:
    the scratch arrays follow the block so that every sum adds in the reference's order.
    """
    n, m = block.shape
    if block.dtype != np.float64:
        return None
    if m <= 1 or n <= 1 or block.strides[1] == block.itemsize and block.strides[0] >= block.itemsize * m:
        return "C"
    if block.strides[0] == block.itemsize and block.strides[1] >= block.itemsize * n:
        return "F"
    return None


def _true_counts(mask: np.ndarray, axis: int) -> np.ndarray:
    """int64: the True cells of ``mask`` ``(k, m)`` along ``axis`` (1: per row, ``(k,)``; 0: per column, ``(m,)``),
    its bytes added up in 16 bits when they fit."""
    counted = mask.view(np.uint8).sum(axis=axis, dtype=np.uint16 if mask.shape[axis] < 2**16 else np.int64)
    return counted.astype(np.int64, copy=False)


def _flat(array: np.ndarray, dtype: type) -> np.ndarray:
    """The memory of a contiguous array (C or F) as a flat array of ``dtype`` (a view)."""
    return array.reshape(-1, order="A").view(dtype)


def _nonzero_cells(
    block: np.ndarray,
    nonzero: np.ndarray,
    columns: np.ndarray,
    n_cells: int,
    rooms: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    workspace: BlockWorkspace,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`sparse_cells` of the block's ``columns`` (indices), found in ``nonzero`` (bool ``(n, m)``: ``block != 0``),
    ``n_cells`` of them.

    The columns' flags are gathered and turned feature-major a byte a cell (the reference copied the values, 8
    bytes a cell, before comparing them), and only the kept cells' values are gathered, by their positions in the
    flat block. A few columns at a time, in ``rooms`` (two bool and two int64 flat arrays of a slab's cells, free by
    then): besides what it returns, one int64 array of the cells found (an int64 array per step of the way took
    more page faults than the block's sums).
    """
    n, m = block.shape
    lengths = np.zeros(m, dtype=np.int64)
    step = min(room.size for room in rooms) // max(n, 1)
    if step == 0:  # more samples than a slab has cells: a column at a time, in arrays of its own
        step = 1
        rooms = tuple(workspace.array(f"one_column_{i}", (n,), room.dtype.type, "C") for i, room in enumerate(rooms))  # type: ignore[assignment]
    gathered_room, flags_room, grid_room, position_room = rooms
    contiguous = block.flags.c_contiguous or block.flags.f_contiguous
    flat_block = block.reshape(-1, order="A") if contiguous else None
    # A cell's position in the flat block: sample * m + column (C), column * n + sample (F)
    sample_step, column_step = (m, 1) if block.flags.c_contiguous else (1, n)
    samples, values = np.empty(n_cells, dtype=np.int32), np.empty(n_cells)
    done = 0
    for first in range(0, columns.size, step):
        chosen = columns[first : first + step]
        r = chosen.size
        gathered = gathered_room[: n * r].reshape(n, r)
        np.take(nonzero, chosen, axis=1, out=gathered, mode="clip")  # clip: written straight into ``out``
        flags = flags_room[: n * r].reshape(r, n)
        np.copyto(flags, gathered.T)  # (r, n): a feature's cells contiguous
        counts = _true_counts(flags, axis=1)
        lengths[chosen] = counts
        cells = slice(done, done + int(counts.sum()))
        done = cells.stop
        kept = np.flatnonzero(flags)  # feature * n + sample; np.compress would allocate twice as much
        np.remainder(kept, n, out=samples[cells], casting="unsafe")
        if flat_block is None:
            values[cells] = block[samples[cells], np.repeat(chosen, counts)]
            continue
        grid = grid_room[: n * r].reshape(r, n)  # each cell's position in the flat block
        np.add((chosen * column_step)[:, None], np.arange(n, dtype=np.int64) * sample_step, out=grid)
        positions = position_room[: kept.size]
        np.take(grid.reshape(-1), kept, out=positions, mode="clip")  # clip: straight into ``out``, not buffered
        np.take(flat_block, positions, out=values[cells], mode="clip")
    if done != n_cells:
        raise AssertionError(f"{done} cells found where the counts gave {n_cells}")
    return lengths, samples, values


#: The rows of :func:`removed_cell_sums` each kind of :func:`kept_sums` reads.
REMOVED_ROWS = {"clr": (0, 1, 5), "tss": (0, 2), "ast": (0, 2), "nonzero": (3, 4)}


def removed_cell_sums(
    samples: np.ndarray, values: np.ndarray, n_samples: int, pseudocount: float | None, kinds: Iterable[str] = tuple(REMOVED_ROWS)
) -> np.ndarray:
    """Per-sample sums over sparse cells of removed features: ``(6, n_samples)`` float64.

    Rows: missing cells, non-zero observed cells, sum of ``x``, cells ``x > 0``,
    sum of ``log x`` over them, sum of ``log(x + pseudocount)`` over non-zero
    observed cells (0 without a pseudocount). Partial results of several slices
    of cells add up. Only the rows the ``kinds`` of :func:`kept_sums` read
    (:data:`REMOVED_ROWS`) are summed; the others stay 0.

    Each sum runs over the cells in their order, a missing cell adding 0 (the bits of summing the observed cells
    alone): weights with zeros where missing rather than a copy of the observed cells' samples and values.
    """
    rows = {row for kind in kinds for row in REMOVED_ROWS[kind]}
    missing = np.isnan(values)
    out = np.zeros((6, n_samples))
    out[0] = np.bincount(samples[missing], minlength=n_samples)
    if 1 in rows:
        out[1] = np.bincount(samples, minlength=n_samples) - out[0]
    if 2 in rows:
        out[2] = np.bincount(samples, weights=np.where(missing, 0.0, values), minlength=n_samples)
    if 3 in rows or 4 in rows:
        positive = values > 0
        out[3] = np.bincount(samples[positive], minlength=n_samples)
        out[4] = np.bincount(samples[positive], weights=np.log(values[positive]), minlength=n_samples)
    if 5 in rows and pseudocount is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            logs = np.log(values + pseudocount)
        logs[missing] = 0.0
        out[5] = np.bincount(samples, weights=logs, minlength=n_samples)
    return out


def kept_sums(
    sums: AllFeatureSums, removed: np.ndarray, n_removed: int, which: str, pseudocount: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample ``(total, count)`` over the kept features, as :func:`~scalable_assoc.stats.transforms.sample_summaries` gives them.

    ``removed`` is :func:`removed_cell_sums` over the sparse cells of the
    ``n_removed`` removed features. ``which``: ``"clr"`` (sum of
    ``log(x + pseudocount)``, which must be ``sums.pseudocount``), ``"tss"`` /
    ``"ast"`` (sum of ``x``), or ``"nonzero"`` (sum of ``log x`` over ``x > 0``,
    the CLR of the non-zero view with presence threshold 0).
    """
    # the counts travel as float64 rows of ``removed``
    missing, nonzero, positive = np.rint(removed[[0, 1, 3]]).astype(np.int64)
    observed_removed = n_removed - missing
    if which == "nonzero":
        return sums.log_positive - removed[4], sums.positive - positive
    count = sums.observed - observed_removed
    if which in ("tss", "ast"):
        return sums.total - removed[2], count
    if which != "clr":
        raise ValueError(f"no stored sums for {which!r}")
    if pseudocount is None or pseudocount != sums.pseudocount:
        raise ValueError(f"the stored CLR sums use pseudocount {sums.pseudocount}, not {pseudocount}")
    zeros_removed = observed_removed - nonzero
    return sums.log_pseudo - (removed[5] + zeros_removed * np.log(pseudocount)), count
