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

from dataclasses import dataclass

import numpy as np

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


def removed_cell_sums(samples: np.ndarray, values: np.ndarray, n_samples: int, pseudocount: float | None) -> np.ndarray:
    """Per-sample sums over sparse cells of removed features: ``(6, n_samples)`` float64.

    Rows: missing cells, non-zero observed cells, sum of ``x``, cells ``x > 0``,
    sum of ``log x`` over them, sum of ``log(x + pseudocount)`` over non-zero
    observed cells (0 without a pseudocount). Partial results of several slices
    of cells add up.
    """
    missing = np.isnan(values)
    present = ~missing
    positive = values > 0
    observed_samples, observed_values = samples[present], values[present]
    out = np.zeros((6, n_samples))
    out[0] = np.bincount(samples[missing], minlength=n_samples)
    out[1] = np.bincount(observed_samples, minlength=n_samples)
    out[2] = np.bincount(observed_samples, weights=observed_values, minlength=n_samples)
    out[3] = np.bincount(samples[positive], minlength=n_samples)
    out[4] = np.bincount(samples[positive], weights=np.log(values[positive]), minlength=n_samples)
    if pseudocount is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            out[5] = np.bincount(observed_samples, weights=np.log(observed_values + pseudocount), minlength=n_samples)
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
