"""Cluster sums of the random-intercept model, aggregated by present cluster size.

The REML criterion of :mod:`~scalable_assoc.models.lmm` needs, per feature, the
cluster sums ``S_c`` of the orthonormal design basis ``W`` and ``T_c`` of the
feature, only through sums over the clusters of each size: ``sum S_c S_c'``,
``sum S_c T_c``, ``sum T_c^2`` and the cluster counts by size. They are
computed here once for every feature of a block. A missing value moves its
cluster to a smaller size for that feature only: the shared sums are corrected
over the (feature, cluster) pairs that contain missing cells, which are few
when missing values are sparse.

Pure numpy/scipy: no Dask, no files, no pandas.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse

from scalable_assoc.models.ols import PreparedBlock

#: Largest number of (pair x basis-product) floats materialised at once while aggregating missing cells.
_CHUNK_FLOATS = 4_000_000


@dataclass(frozen=True)
class ClusterStatistics:
    """Everything the REML criterion needs, aggregated by present cluster size.

    ``w`` is the width of the basis ``[Q, b_1..b_k]``, ``L`` the number of
    distinct present cluster sizes ``levels``, ``m`` the number of features.
    """

    levels: np.ndarray  # (L,) distinct nonzero present cluster sizes
    counts: np.ndarray  # (m, L) clusters of each size per feature
    outer_shared: np.ndarray  # (L, w, w) sum of S_c S_c' over clusters of each full size
    outer_masked: np.ndarray  # (len(masked), L, w, w) the same per feature with missing values
    masked: np.ndarray  # (len(masked),) features with a missing value among the design's rows
    cross: np.ndarray  # (m, L, w) sum of S_c T_cj over clusters of each present size
    squares: np.ndarray  # (m, L) sum of T_cj^2 over clusters of each present size
    gram: np.ndarray  # (m, w, w) W'W over each feature's present rows (I - D_j)
    projections: np.ndarray  # (m, w) W'y_j
    sum_squares: np.ndarray  # (m,) y_j'y_j over the design's present rows


def present_sizes(indicator: scipy.sparse.csr_matrix, miss_rows: np.ndarray, miss_cols: np.ndarray, m: int) -> np.ndarray:
    """Number of participants of each cluster with a value of each feature.

    Parameters
    ----------
    indicator:
        ``(G, N)`` sparse cluster membership of the design's rows among the block's ``N`` rows.
    miss_rows, miss_cols:
        ``(c,)`` row and feature of every missing cell among the design's rows.
    m:
        Number of features.

    Returns
    -------
    sizes:
        ``(G, m)`` present cluster sizes.
    """
    sizes = np.asarray(indicator.sum(axis=1)).ravel()
    missing = scipy.sparse.csr_matrix((np.ones(miss_rows.size), (miss_rows, miss_cols)), shape=(indicator.shape[1], m))
    return sizes[:, None] - (indicator @ missing).toarray()


def _scatter(targets: np.ndarray, values: np.ndarray, size: int) -> np.ndarray:
    """Sum ``values`` (``(t,)`` or ``(t, c)``) into ``size`` rows at ``targets`` (``(t,)``): a sparse product, not a Python loop."""
    if values.ndim == 1:
        return np.bincount(targets, weights=values, minlength=size)
    summing = scipy.sparse.csr_matrix((np.ones(targets.size), (targets, np.arange(targets.size))), shape=(size, targets.size))
    return np.asarray(summing @ values)


@dataclass(frozen=True)
class _MissingPairs:
    """The (feature, cluster) pairs that contain missing cells: their present size and basis sums (``P`` pairs)."""

    feature: np.ndarray  # (P,)
    cluster: np.ndarray  # (P,)
    full: np.ndarray  # (P, w) S_c
    present: np.ndarray  # (P, w) S_cj
    size: np.ndarray  # (P,) present cluster size
    t: np.ndarray  # (P,) T_cj


def _missing_pairs(
    indicator: scipy.sparse.csr_matrix,
    padded: np.ndarray,
    sizes: np.ndarray,
    basis_sums: np.ndarray,
    feature_sums: np.ndarray,
    miss_rows: np.ndarray,
    miss_cols: np.ndarray,
) -> _MissingPairs:
    """Group the missing cells by (feature, cluster) pair; see :class:`_MissingPairs`."""
    n_clusters = indicator.shape[0]
    cluster_of = np.full(padded.shape[0], -1)
    cluster_of[indicator.indices] = np.repeat(np.arange(n_clusters), np.diff(indicator.indptr))
    pair_key, cell_pair = np.unique(miss_cols * n_clusters + cluster_of[miss_rows], return_inverse=True)
    pair_feature, pair_cluster = pair_key // n_clusters, pair_key % n_clusters
    n_pairs = pair_key.size
    to_pair = scipy.sparse.csr_matrix((np.ones(miss_rows.size), (cell_pair, np.arange(miss_rows.size))), shape=(n_pairs, miss_rows.size))
    missing_sums = to_pair @ padded[miss_rows]  # (pairs, w) basis sums over the missing cells
    pair_full = basis_sums[pair_cluster]  # S_c
    pair_present = pair_full - missing_sums  # S_cj
    pair_size = sizes[pair_cluster] - np.asarray(to_pair.sum(axis=1)).ravel().astype(np.int64)
    pair_t = feature_sums[pair_cluster, pair_feature]
    return _MissingPairs(pair_feature, pair_cluster, pair_full, pair_present, pair_size, pair_t)


def cluster_statistics(
    indicator: scipy.sparse.csr_matrix,
    padded: np.ndarray,
    prepared: PreparedBlock,
    miss_rows: np.ndarray,
    miss_cols: np.ndarray,
) -> ClusterStatistics:
    """Aggregate basis and feature cluster sums by present cluster size.

    Parameters
    ----------
    indicator:
        ``(G, N)`` sparse cluster membership of the design's rows among the block's ``N`` rows.
    padded:
        ``(N, w)`` orthonormal design basis ``W``, zero outside the design's rows.
    prepared:
        ``(N, m)`` feature values (missing cells zero) with their missing-cell index.
    miss_rows, miss_cols:
        ``(c,)`` row and feature of every missing cell among the design's rows.

    Returns
    -------
    statistics:
        :class:`ClusterStatistics`: ``L`` present size levels, counts ``(m, L)``,
        outer sums ``(L, w, w)`` (and per masked feature), cross sums ``(m, L, w)``,
        squares ``(m, L)``, Gram matrices ``(m, w, w)``, projections ``(m, w)``
        and sums of squares ``(m,)``.
    """
    n_total, m = prepared.shape
    width = padded.shape[1]
    n_clusters = indicator.shape[0]
    sizes = np.asarray(indicator.sum(axis=1)).ravel().astype(np.int64)  # (G,)
    basis_sums = indicator @ padded  # (G, w) S_c
    feature_sums = np.asarray(indicator @ prepared.values)  # (G, m) T_cj: missing cells are zero

    # (feature, cluster) pairs that contain missing cells: their present size and basis sums.
    pairs = _missing_pairs(indicator, padded, sizes, basis_sums, feature_sums, miss_rows, miss_cols)
    pair_feature, pair_full, pair_present, pair_size, pair_t = pairs.feature, pairs.full, pairs.present, pairs.size, pairs.t
    n_pairs = pair_feature.size

    levels = np.unique(np.concatenate([sizes, pair_size]))
    levels = levels[levels > 0]
    n_levels = levels.size
    level_full = np.searchsorted(levels, sizes)  # (G,) class of each cluster's full size (empty: ignored)
    nonempty = sizes > 0
    pair_old = np.searchsorted(levels, sizes[pairs.cluster])
    pair_new = np.searchsorted(levels, pair_size)
    pair_alive = pair_size > 0  # a cluster whose values are all missing leaves the model

    # Counts per (feature, level): full sizes, then each pair moves one cluster down a size.
    base_counts = np.bincount(level_full[nonempty], minlength=n_levels).astype(np.float64)
    counts = np.broadcast_to(base_counts, (m, n_levels)).copy()
    counts -= _scatter(pair_feature * n_levels + pair_old, np.ones(n_pairs), m * n_levels).reshape(m, n_levels)
    counts += _scatter(pair_feature * n_levels + pair_new, pair_alive.astype(np.float64), m * n_levels).reshape(m, n_levels)

    # One-hot (G, L) of full sizes: squares and cross sums by level with a matrix product each.
    onehot = scipy.sparse.csr_matrix(
        (np.ones(int(nonempty.sum())), (np.flatnonzero(nonempty), level_full[nonempty])), shape=(n_clusters, n_levels)
    )
    squares = np.asarray(onehot.T @ feature_sums**2).T.copy()  # (m, L)
    squares -= _scatter(pair_feature * n_levels + pair_old, pair_t**2, m * n_levels).reshape(m, n_levels)
    squares += _scatter(pair_feature * n_levels + pair_new, pair_alive * pair_t**2, m * n_levels).reshape(m, n_levels)
    cross = np.empty((m, n_levels, width))
    for level in range(n_levels):  # a bounded number of distinct cluster sizes
        members = np.flatnonzero(nonempty & (level_full == level))
        cross[:, level, :] = feature_sums[members].T @ basis_sums[members]
    move = scipy.sparse.csr_matrix(
        (
            np.concatenate([-pair_t, pair_t[pair_alive]]),
            (
                np.concatenate([pair_feature * n_levels + pair_old, pair_feature[pair_alive] * n_levels + pair_new[pair_alive]]),
                np.concatenate([np.arange(n_pairs), n_pairs + np.flatnonzero(pair_alive)]),
            ),
        ),
        shape=(m * n_levels, 2 * n_pairs),
    )
    cross += (move @ np.vstack([pair_full, pair_present])).reshape(m, n_levels, width)

    outer_shared = np.asarray(onehot.T @ np.einsum("ga,gb->gab", basis_sums, basis_sums).reshape(n_clusters, width * width))
    outer_shared = outer_shared.reshape(n_levels, width, width)
    masked = np.unique(pair_feature)
    outer_masked = _outer_masked(outer_shared, masked, pairs, pair_old, pair_new, pair_alive)
    gram = _present_gram(padded, masked, m, miss_rows, miss_cols)
    projections = (padded.T @ prepared.values).T  # (m, w)
    in_design = np.asarray(indicator.sum(axis=0)).ravel()  # (N,) 1 on the design's rows
    sum_squares = in_design @ prepared.squares
    return ClusterStatistics(levels, counts, outer_shared, outer_masked, masked, cross, squares, gram, projections, sum_squares)


def _outer_masked(
    outer_shared: np.ndarray, masked: np.ndarray, pairs: _MissingPairs, pair_old: np.ndarray, pair_new: np.ndarray, pair_alive: np.ndarray
) -> np.ndarray:
    """``(a, L, w, w)`` sums of ``S S'`` by level for the ``masked`` features (``(a,)``), from the shared ``(L, w, w)`` ones."""
    n_levels, width = outer_shared.shape[0], outer_shared.shape[1]
    n_pairs = pairs.feature.size
    position = np.searchsorted(masked, pairs.feature)
    # Per masked feature and level: the shared sums, minus each pair's full-size
    # S_c S_c', plus its present-size S_cj S_cj'; a chunk of pairs at a time to bound memory.
    flat = np.tile(outer_shared.reshape(n_levels, width * width), (masked.size, 1))  # (masked * L, w * w)
    chunk = max(1, _CHUNK_FLOATS // (width * width))
    for start in range(0, n_pairs, chunk):
        span = slice(start, start + chunk)
        alive = pair_alive[span]
        old = np.einsum("pa,pb->pab", pairs.full[span], pairs.full[span]).reshape(-1, width * width)
        new = np.einsum("pa,pb->pab", pairs.present[span][alive], pairs.present[span][alive]).reshape(-1, width * width)
        flat -= _scatter(position[span] * n_levels + pair_old[span], old, flat.shape[0])
        flat += _scatter(position[span][alive] * n_levels + pair_new[span][alive], new, flat.shape[0])
    return flat.reshape(masked.size, n_levels, width, width)


def _present_gram(padded: np.ndarray, masked: np.ndarray, m: int, miss_rows: np.ndarray, miss_cols: np.ndarray) -> np.ndarray:
    """``(m, w, w)`` ``W'W`` over each feature's present rows: ``I`` minus ``v v'`` summed over its missing cells (``v``: basis row)."""
    width = padded.shape[1]
    gram = np.broadcast_to(np.eye(width), (m, width, width)).copy()
    used = np.unique(miss_rows)
    row_products = np.einsum("ra,rb->rab", padded[used], padded[used]).reshape(used.size, width * width)
    cells = scipy.sparse.csr_matrix(
        (np.ones(miss_rows.size), (np.searchsorted(masked, miss_cols), np.searchsorted(used, miss_rows))), shape=(masked.size, used.size)
    )
    gram[masked] -= (cells @ row_products).reshape(masked.size, width, width)
    return gram
