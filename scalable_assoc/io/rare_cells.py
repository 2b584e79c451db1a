"""A store's sparse copy of its rare features, in order of increasing prevalence: written at conversion, read by filters.

Arrays of the store's group::

    rare_features  (k,) int64: the features with prevalence (non-zero / observed values, 0 when none
                   is observed) below the cap, in order of increasing prevalence (ties in feature order)
    rare_indptr    (k + 1,) int64: where each one's cells start and end in the two arrays below
    rare_samples   (cells,) int32: each cell's sample index
    rare_values    (cells,) float64: each cell's value (NaN where missing)

The cells are every non-zero and every missing value of those features, feature
by feature. With the per-sample sums over every feature, they let a run on all
samples compose the sums of any prevalence filter up to the cap
(:mod:`scalable_assoc.stats.sample_sums`).

Why that order: a prevalence filter removes every feature below its threshold,
and those are a leading run of the copy, so their cells are its first chunks and
a run decompresses those alone. In feature order (stores written before this
order), the removed features' cells lay in every chunk, and a run decompressed
the whole copy: on 20,000 simulated features with 8% removed, 4.9 million cells
and 42 MB of zstd, 70-130 ms of a filter phase of 0.18-0.24 s.

Such stores (no ``rare_features``; ``rare_indptr`` has ``n_features + 1``
offsets) are read as they are.

The order is known only once every block is seen, so the writer holds the cells
in feature order, in memory up to a bound and beyond it in two raw files beside
the store being written, and writes them in order at the end, a chunk at a time.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import zarr

from scalable_assoc.io.side_arrays import SideArray, side_values
from scalable_assoc.stats.sample_sums import rare_features

#: The arrays of the cells and their dtypes (sample index, value).
RARE_CELL_DTYPES = (("rare_samples", "int32"), ("rare_values", "float64"))
#: Every array of the copy.
RARE_ARRAYS = ("rare_features", "rare_indptr", "rare_samples", "rare_values")
#: The raw files holding the cells in feature order while a store is written (removed before it is complete).
SPILL_FILES = (".rare_samples.spill", ".rare_values.spill")
#: At most this many cells (12 bytes each) read at once.
READ_CELLS = 1 << 22


def prevalence_order(nonzero: np.ndarray, observed: np.ndarray, cap: float) -> np.ndarray:
    """``(k,)`` int64: the features below ``cap`` (:func:`rare_features`), by increasing prevalence, ties by index.

    ``nonzero``, ``observed``: ``(m,)`` counts per feature over all samples.
    """
    rare = np.flatnonzero(rare_features(nonzero, observed, cap))
    with np.errstate(invalid="ignore", divide="ignore"):
        fraction = np.where(observed[rare] > 0, nonzero[rare] / np.maximum(observed[rare], 1), 0.0)
    return rare[np.argsort(fraction, kind="stable")]


def gather_positions(starts: np.ndarray, indptr: np.ndarray, first: int, stop: int) -> np.ndarray:
    """Where the cells ``first:stop`` of the ordered copy are in the copy as written: ``(stop - first,)`` int64.

    ``starts`` ``(k,)``: each ordered feature's first cell as written; ``indptr`` ``(k + 1,)``: its cells in order.
    Only the features overlapping ``first:stop`` are expanded (a chunk's worth of positions, not the whole copy's).
    """
    low = max(int(np.searchsorted(indptr, first, side="right")) - 1, 0)
    high = int(np.searchsorted(indptr, stop, side="left"))
    lengths = np.diff(indptr[low : high + 1])
    positions = np.repeat(starts[low:high] - indptr[low:high], lengths) + np.arange(indptr[low], indptr[high], dtype=np.int64)
    return positions[first - indptr[low] : stop - indptr[low]]


class RareCellsWriter:
    """Collects the rare features' cells block by block as a store is written, and writes them in prevalence order.

    ``folder``: the store being written (a temporary folder); ``chunk_cells``: cells per chunk of the arrays;
    ``memory_cells``: at most this many cells held in memory (beyond, all of them go to files in ``folder``).
    """

    def __init__(self, folder: Path, n_features: int, chunk_cells: int, memory_cells: int) -> None:
        self.folder, self.chunk_cells, self.memory_cells = folder, chunk_cells, memory_cells
        self.lengths = np.zeros(n_features, dtype=np.int64)  # per feature, its cells (0 unless rare)
        self.pending: list[tuple[np.ndarray, np.ndarray]] = []
        self.n_cells = 0
        self.spilled = False  # the cells are in the files SPILL_FILES (each block appended, the files closed between)

    def add_block(self, start: int, lengths: np.ndarray, samples: np.ndarray, values: np.ndarray) -> None:
        """Add the cells of features ``start:start + m`` (:func:`~scalable_assoc.stats.sample_sums.sparse_cells`)."""
        self.lengths[start : start + lengths.size] = lengths
        self.n_cells += samples.size
        if self.spilled:
            self._append(samples, values)
            return
        self.pending.append((samples, values))
        if self.n_cells > self.memory_cells:  # to the files from now on
            self.spilled = True
            for pending in self.pending:
                self._append(*pending)
            self.pending = []

    def _append(self, samples: np.ndarray, values: np.ndarray) -> None:
        for name, (_, dtype), cells in zip(SPILL_FILES, RARE_CELL_DTYPES, (samples, values), strict=True):
            with open(self.folder / name, "ab") as file:
                file.write(np.ascontiguousarray(cells, dtype=dtype).data)

    def finish(self, group: zarr.Group, compressors: list, nonzero: np.ndarray, observed: np.ndarray, cap: float) -> dict[str, SideArray]:
        """Write the cells in prevalence order (``nonzero``, ``observed``: ``(n_features,)`` counts), returning the
        arrays still to write with the store's other small arrays: the order, the offsets and, when they were
        held in memory, the cells. ``compressors``: the codecs of the cells' arrays when written here."""
        order = prevalence_order(nonzero, observed, cap)
        lengths = self.lengths[order]
        indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        starts = (np.cumsum(self.lengths) - self.lengths)[order]
        arrays = {"rare_features": SideArray(order.astype(np.int64), max(order.size, 1)), "rare_indptr": SideArray(indptr, indptr.size)}
        if not self.spilled:
            written = [
                np.concatenate([p[i] for p in self.pending]) if self.pending else np.zeros(0, dtype)
                for i, (_, dtype) in enumerate(RARE_CELL_DTYPES)
            ]
            positions = gather_positions(starts, indptr, 0, self.n_cells)
            for (name, dtype), cells in zip(RARE_CELL_DTYPES, written, strict=True):
                arrays[name] = SideArray(cells[positions].astype(dtype, copy=False), self.chunk_cells)
            self.pending = []
            return arrays
        self._write_spilled(group, compressors, starts, indptr)
        return arrays

    def _write_spilled(self, group: zarr.Group, compressors: list, starts: np.ndarray, indptr: np.ndarray) -> None:
        """Write the cells held in the spill files, in order, one chunk at a time; then remove the files."""
        paths = [self.folder / name for name in SPILL_FILES]
        try:
            written = [
                np.memmap(path, dtype=dtype, mode="r", shape=(self.n_cells,))
                for path, (_, dtype) in zip(paths, RARE_CELL_DTYPES, strict=True)
            ]
            targets = [
                group.create_array(name, shape=(self.n_cells,), chunks=(self.chunk_cells,), dtype=dtype, compressors=compressors)
                for name, dtype in RARE_CELL_DTYPES
            ]
            # a few chunks at a time (the cells a writer may hold in memory): zarr compresses them in its threads
            step = max(self.memory_cells // self.chunk_cells, 1) * self.chunk_cells
            for first in range(0, self.n_cells, step):
                stop = min(first + step, self.n_cells)
                positions = gather_positions(starts, indptr, first, stop)
                for target, cells in zip(targets, written, strict=True):
                    target[first:stop] = cells[positions]
            del written
        finally:
            self.spilled = False
            for path in paths:
                path.unlink(missing_ok=True)


def read_rare_cells(folder: Path, chosen: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The cells of the ``chosen`` features (bool ``(n_features,)``) in the sparse copy of the store at ``folder``.

    Yields ``(sample index, value)`` arrays, ``(c,)`` int32 and float64, a run of consecutive stored chunks
    holding some of them at a time (at most :data:`READ_CELLS` cells); chunks holding none are not read.
    Features without a copy have no cells here.
    """
    indptr = side_values(folder / "rare_indptr")
    try:
        in_order = np.asarray(chosen, dtype=bool)[side_values(folder / "rare_features")]
    except FileNotFoundError:  # a copy in feature order (stores written before the prevalence order)
        in_order = np.asarray(chosen, dtype=bool)
    cell_chosen = np.repeat(in_order, np.diff(indptr))
    if not cell_chosen.any():
        return
    step = _chunk_cells(folder / "rare_samples")
    for first, stop in chunk_runs(cell_chosen, step, max(READ_CELLS // step, 1)):
        mask = cell_chosen[first:stop]
        run_samples, run_values = side_values(folder / "rare_samples", first, stop), side_values(folder / "rare_values", first, stop)
        if mask.all():  # a prevalence filter's cells: the leading run but for its last chunk
            yield run_samples, run_values
        else:
            yield run_samples[mask], run_values[mask]


def _chunk_cells(folder: Path) -> int:
    """Cells per chunk of the 1-D array at ``folder`` (its ``zarr.json``)."""
    metadata = json.loads((folder / "zarr.json").read_bytes())
    return int(metadata["chunk_grid"]["configuration"]["chunk_shape"][0])


def chunk_runs(chosen: np.ndarray, step: int, most: int) -> list[tuple[int, int]]:
    """``(first, stop)`` cell ranges of the runs of consecutive chunks of ``step`` cells holding a ``chosen`` cell
    (bool ``(cells,)``), each at most ``most`` chunks long."""
    holds = np.logical_or.reduceat(chosen, np.arange(0, chosen.size, step)) if chosen.size else np.zeros(0, dtype=bool)
    edges = np.flatnonzero(np.diff(np.concatenate([[False], holds, [False]]).astype(np.int8)))
    runs = []
    for start, end in zip(edges[::2], edges[1::2], strict=True):
        for low in range(start, end, most):
            runs.append((int(low) * step, min(int(min(low + most, end)) * step, chosen.size)))
    return runs
