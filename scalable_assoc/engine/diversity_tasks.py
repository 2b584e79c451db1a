"""The functions a diversity plan's tasks run on the workers: alpha diversity's per-sample sums and PERMANOVA's steps.

Kept apart from the client's side (:mod:`scalable_assoc.engine.alpha`,
:mod:`scalable_assoc.engine.permanova`, which lay these out as tasks and
import pandas, the preparation and the store writer): a worker imports this
module, NumPy and the kernels only, as it does :mod:`scalable_assoc.engine.tasks`
for the regressions (a task's function is pickled by reference: a worker imports
the module that defines it). Not in the workers' preload: only plans with a
``diversity`` block use it, and a worker imports it at its first such task.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scalable_assoc.io.chunk_files import read_block
from scalable_assoc.stats.diversity import alpha_partial_sums
from scalable_assoc.stats.permanova import (
    PermanovaDesign,
    bray_curtis_rows,
    distance_observed,
    distance_permuted,
    euclidean_observed,
    euclidean_permuted,
    gower_centre,
    permutation_indices,
)


def alpha_sums_block(store_path: Path, start: int, stop: int, sample_positions: np.ndarray, presence_threshold: float) -> np.ndarray:
    """``(n_samples, 5)`` alpha partial sums of one store chunk's raw values."""
    return alpha_partial_sums(read_block(store_path, start, stop, sample_positions), presence_threshold)


def permanova_sums(
    store_path: Path, start: int, stop: int, positions: np.ndarray, kept: np.ndarray, pseudocount: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per sample over the block's kept features: sum of ``log(x + c)``, values present, raw total (missing skipped)."""
    raw = read_block(store_path, start, stop, positions)[:, kept]
    present = ~np.isnan(raw)
    filled = np.where(present, raw, 0.0)
    logs = np.where(present, np.log(np.where(present, raw, 1.0) + pseudocount), 0.0)
    return logs.sum(axis=1), present.sum(axis=1), filled.sum(axis=1)


def clr_block(
    store_path: Path, start: int, stop: int, positions: np.ndarray, kept: np.ndarray, pseudocount: float, log_means: np.ndarray
) -> np.ndarray:
    """CLR values ``log(x + c) - mean log`` of the block's kept features, ``(n_used, kept.sum())`` (NaN where missing)."""
    raw = read_block(store_path, start, stop, positions)[:, kept]
    return np.log(raw + pseudocount) - log_means[:, None]


@dataclass(frozen=True)
class HeldDesign:
    """One analysis' participants (positions among the layer's samples), its factorised design and
    the cluster codes ``(len(rows),)`` its permutations stay within (None: permuted freely)."""

    rows: np.ndarray
    design: PermanovaDesign
    strata: np.ndarray | None = None


def aitchison_observed(clr: np.ndarray, designs: list[HeldDesign]) -> list[np.ndarray]:
    """Per analysis, the ``(4,)`` observed sums of one block of CLR values."""
    return [euclidean_observed(clr[d.rows], d.design) for d in designs]


def aitchison_permuted(clr: np.ndarray, designs: list[HeldDesign], seed: int, first: int, count: int) -> list[np.ndarray]:
    """Per analysis, the ``(count, 2)`` permuted sums of one block of CLR values for permutations ``first..first+count-1``."""
    return [euclidean_permuted(clr[d.rows], d.design, permutation_indices(d.design.n, seed, first, count, d.strata)) for d in designs]


def raw_kept(store_path: Path, bounds: list[tuple[int, int]], positions: np.ndarray, kept: list[np.ndarray]) -> np.ndarray:
    """Raw abundances of the layer's kept features, every sample used: ``(n_used, n_kept)``."""
    parts = [read_block(store_path, start, stop, positions)[:, k] for (start, stop), k in zip(bounds, kept, strict=True) if k.any()]
    return np.hstack(parts)


def bray_rows(raw: np.ndarray, usable: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of the Bray-Curtis matrix among the ``usable`` samples (no missing value, not all zero)."""
    x = raw[usable]
    return bray_curtis_rows(x[start:stop], x)


def bray_gower(row_blocks: list[np.ndarray], rows: np.ndarray) -> np.ndarray:
    """The Gower-centred Bray-Curtis matrix of one analysis' participants (``rows`` among the usable samples)."""
    distances = np.vstack(row_blocks)[np.ix_(rows, rows)]
    return gower_centre(distances)


def bray_observed(gower: np.ndarray, design: PermanovaDesign) -> np.ndarray:
    """The ``(4,)`` observed sums of one analysis."""
    return distance_observed(gower, design)


def bray_permuted(
    gower: np.ndarray, design: PermanovaDesign, seed: int, first: int, count: int, strata: np.ndarray | None = None
) -> np.ndarray:
    """The ``(count, 2)`` permuted sums of one analysis for permutations ``first..first+count-1`` (within ``strata``)."""
    return distance_permuted(gower, design, permutation_indices(design.n, seed, first, count, strata))
