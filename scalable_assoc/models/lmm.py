"""Batched linear mixed models with a random intercept per cluster (family, household), fitted by REML.

Model for every feature ``j`` and exposure ``e`` of one covariate design::

    y_j = Z gamma_j + x_e beta_ej + u_c + error,   u_c ~ N(0, sigma_u^2) per cluster c,
                                                   error ~ N(0, sigma_e^2)

over the design's participants, minus those whose value of feature ``j`` is
missing (they leave that feature's model only, so cluster sizes are per feature).

Method. ``V = sigma_e^2 H`` with ``H = I + lambda * (cluster indicator)(cluster indicator)'``,
``lambda = sigma_u^2 / sigma_e^2``. ``H`` is block diagonal with one
compound-symmetric block ``I + lambda 11'`` per cluster, whose inverse is
``I - w 11'`` with ``w = lambda / (1 + lambda n_c)`` and whose log determinant is
``log(1 + lambda n_c)``. So with ``W`` an orthonormal basis of the design
``[Z, x_e]`` (as in :mod:`~scalable_assoc.models.ols`), ``S_c`` the cluster sums
of ``W``'s rows and ``T_c`` the cluster sums of ``y``::

    W'H^-1 W = W'W - sum_c w_c S_c S_c'      W'H^-1 y = W'y - sum_c w_c S_c T_c
    y'H^-1 y = y'y - sum_c w_c T_c^2         log|H|  = sum_c log(1 + lambda n_c)

``w_c`` depends on the cluster only through its size, and there are few distinct
sizes, so the cluster sums are aggregated once per (size, feature): afterwards
one evaluation of the criterion for all features at once costs
``O(m * sizes * p^2)``, whatever the number of participants. A missing value
moves its cluster to a smaller size for that feature only; those corrections are
made once over the (feature, cluster) pairs that contain missing cells, which
are few when missing values are sparse.

The profile REML criterion, with ``sigma_e^2`` profiled out and ``p`` design columns,
``N_j`` participants, ``A = W'H^-1W``, ``b = W'H^-1y``, ``r = y'H^-1y - b'A^-1 b``::

    -2 l_R(lambda) = (N_j - p) log r + log|H| + log|A| + const

is minimised over ``lambda`` for every (exposure, feature) together: a grid over
``log10(lambda)`` in ``[-8, 8]`` (step 0.25) locates the basin, bisection on
the sign of the analytic derivative refines it (all features updated at each
step; a root of the derivative is located to rounding, while comparing values
of a function flat at its minimum only reaches the square root of rounding), and
``lambda = 0`` is taken when it is at least as good (the boundary fit, which is
the OLS fit).
Then ``gamma = A^-1 b``, ``sigma_e^2 = r / (N_j - p)`` with ``r`` recomputed
from explicit residuals (the identity above loses digits when the model explains
most of ``y'y``), ``sigma_u^2 = lambda sigma_e^2``, and
``se = sqrt(sigma_e^2 (A^-1)_ee)``, all as REML/lme4 report them.

p-values: Student's t with ``N_j - p`` degrees of freedom (the residual df).
At ``lambda = 0`` this is exactly OLS. lme4 reports no p-value; lmerTest's
Satterthwaite df for an exposure that varies within clusters is close to
``N_j - p`` (committed reference data: 294-385 against 341-385, p-values
within 0.13%), and with the hundreds of clusters this package is meant for
any df in that range changes p-values negligibly. For an exposure constant
within clusters and few clusters the residual df is anti-conservative.

Speed: n = 7,656 participants in 3,231 families, 14 design columns, 500
features, one exposure: 0.6 s in one process (single-threaded BLAS), against
~2.2 s per feature for a statsmodels ``MixedLM`` loop (~1,100 s).

Pure numpy/scipy: no Dask, no files, no pandas.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse

from scalable_assoc.models.design import CovariateDesign, project_out
from scalable_assoc.models.fits import FitStatus, SlopeFits, two_sided_p
from scalable_assoc.models.ols import PreparedBlock, fit_exposure_slopes, prepare_block

#: Search range and grid step of log10(lambda), lambda = sigma_u^2 / sigma_e^2.
#: Below 1e-8 the random intercept changes no estimate; an optimum at 1e8 means
#: no within-cluster residual variation, reported as not converged.
_LOG10_LAMBDA_RANGE = (-8.0, 8.0)
_GRID_STEP = 0.25
#: Bisection steps inside a bracket of two grid steps: 0.5 * 2^-50 ~ 1e-15 in log10(lambda).
_BISECTION_STEPS = 50
#: A REML deviance this much larger than lambda = 0's is a tie, resolved towards the boundary.
_BOUNDARY_TIE = 1e-9
#: Largest number of (pair x basis-product) floats materialised at once while aggregating missing cells.
_CHUNK_FLOATS = 4_000_000


@dataclass(frozen=True)
class VarianceComponents:
    """REML variance components of every (exposure, feature) fit, each array ``(k, m)``.

    ``sigma_u2`` is the random-intercept (between-cluster) variance, ``sigma_e2``
    the residual variance, both in squared feature units. NaN where the fit's
    status is not OK. ``ratio`` is ``sigma_u2 / sigma_e2`` (0 at the boundary,
    where the fit equals OLS).
    """

    sigma_u2: np.ndarray
    sigma_e2: np.ndarray

    @property
    def ratio(self) -> np.ndarray:
        """``(k, m)`` variance ratio ``lambda = sigma_u^2 / sigma_e^2``."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.sigma_u2 / self.sigma_e2

    @property
    def icc(self) -> np.ndarray:
        """``(k, m)`` intraclass correlation ``sigma_u^2 / (sigma_u^2 + sigma_e^2)``, in [0, 1]; NaN where not OK."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.sigma_u2 / (self.sigma_u2 + self.sigma_e2)


@dataclass(frozen=True)
class _ClusterStatistics:
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


def fit_random_intercept(
    design: CovariateDesign,
    exposures: np.ndarray,
    binary: np.ndarray,
    block: PreparedBlock | np.ndarray,
    clusters: np.ndarray,
    rows: np.ndarray | None = None,
) -> tuple[SlopeFits, VarianceComponents]:
    """Fit ``feature ~ covariates + exposure + (1 | cluster)`` by REML for every exposure and feature.

    Parameters
    ----------
    design:
        The factorised covariate design of its ``n`` participants (intercept first).
    exposures:
        ``(k, n)`` exposure values over the design's participants (0/1 for
        binary exposures), no missing values.
    binary:
        ``(k,)`` bool, whether each exposure is a case/control indicator.
    block:
        ``(N, m)`` feature values of all ``N`` participants of the layer (NaN
        marks a missing value, which leaves that participant out of that
        feature's model only), or the same passed through :func:`prepare_block`.
    clusters:
        ``(n,)`` integer cluster codes of the design's participants (any
        non-negative integers; only equality matters).
    rows:
        ``(n,)`` positions of the design's participants among the ``N`` rows;
        None when the block holds exactly the design's participants.

    Returns
    -------
    fits:
        ``(k, m)`` exposure slopes (:class:`SlopeFits`): ``beta``, ``se`` from
        ``sigma_e^2 (X'H^-1X)^-1``, ``t``, two-sided p on ``n - p`` df (see the
        module docstring), statuses as for OLS plus ``NOT_CONVERGED`` where the
        REML optimum is at the top of the search range (no within-cluster
        residual variation) or the criterion is not finite.
    components:
        ``(k, m)`` REML variance components (:class:`VarianceComponents`).
    """
    prepared = block if isinstance(block, PreparedBlock) else prepare_block(block)
    n_total, m = prepared.shape
    exposures = np.atleast_2d(np.asarray(exposures, dtype=np.float64))
    binary = np.asarray(binary, dtype=bool)
    k, n = exposures.shape
    rows = np.arange(n_total) if rows is None else np.asarray(rows)
    clusters = np.asarray(clusters)
    if clusters.shape != (n,) or rows.shape != (n,) or design.n != n:
        raise ValueError(
            f"design has {design.n} participants, exposures {n}, clusters {clusters.shape}, rows {rows.shape}; they must agree"
        )
    if n and (not np.issubdtype(clusters.dtype, np.integer) or clusters.min() < 0):
        raise ValueError("clusters must be non-negative integer codes")

    # The OLS fit gives every status that does not depend on lambda (design,
    # collinearity, too few values, constant or rank-deficient feature) and the counts.
    # Not aliased: the REML solve below needs a full-rank design per feature.
    ols = fit_exposure_slopes(design, exposures, binary, prepared, rows, alias=False)
    shape = (k, m)
    status = ols.status.copy()
    beta = np.full(shape, np.nan)
    se = np.full(shape, np.nan)
    sigma_u2 = np.full(shape, np.nan)
    sigma_e2 = np.full(shape, np.nan)
    ok = status == FitStatus.OK
    if not ok.any():
        return (
            SlopeFits(beta, se, beta.copy(), beta.copy(), ols.n, ols.n_cases, ols.n_controls, status),
            VarianceComponents(sigma_u2, sigma_e2),
        )

    rank = design.q.shape[1]
    basis, scales = _basis(design, exposures)
    # Renumber 0..G-1 over the clusters present: arrays are (G, m), so sparse codes would waste memory.
    clusters = np.unique(clusters, return_inverse=True)[1].ravel()
    n_clusters = int(clusters.max()) + 1
    indicator = scipy.sparse.csr_matrix((np.ones(n), (clusters, rows)), shape=(n_clusters, n_total))
    padded = np.zeros((n_total, basis.shape[1]))
    padded[rows] = basis
    in_design = np.zeros(n_total, dtype=bool)
    in_design[rows] = True
    keep = in_design[prepared.missing_rows]
    miss_rows, miss_cols = prepared.missing_rows[keep], prepared.missing_columns[keep]
    statistics = _cluster_statistics(indicator, padded, prepared, miss_rows, miss_cols)
    present_sizes = _present_sizes(indicator, miss_rows, miss_cols, m)  # (G, m)
    n_used = ols.n[0].astype(np.float64)  # (m,) the same for every exposure
    df = n_used - (rank + 1)

    for e in range(k):  # a handful of exposures per design; features stay vectorised
        features = np.flatnonzero(ok[e])
        if features.size == 0:
            continue
        take = np.r_[np.arange(rank), rank + e]
        criterion = _Criterion(statistics, take, features, df[features])
        ratio, converged = _minimise(criterion, present_sizes[:, features].max(axis=0, initial=0) <= 1)
        gram, right = criterion.system(ratio)
        solved = np.linalg.solve(gram, np.stack([right, _unit(right)], axis=2))
        gamma, variance_factor = solved[:, :, 0], solved[:, -1, 1]
        # Residual quadratic form e'H^-1 e from explicit residuals, for accuracy.
        fitted = padded[:, take] @ gamma.T  # (N, features)
        residual = prepared.values[:, features] - fitted
        residual[~in_design] = 0.0
        cells = np.isin(miss_cols, features)
        residual[miss_rows[cells], np.searchsorted(features, miss_cols[cells])] = 0.0
        cluster_residual = indicator @ residual  # (G, features)
        sizes = present_sizes[:, features]
        weight = ratio / (1.0 + ratio * sizes)
        quadratic = np.einsum("ij,ij->j", residual, residual) - np.einsum("gj,gj->j", weight, cluster_residual**2)
        with np.errstate(invalid="ignore", divide="ignore"):
            residual_variance = quadratic / df[features]
            beta[e, features] = gamma[:, -1] / scales[e]
            se[e, features] = np.sqrt(residual_variance * variance_factor) / scales[e]
        sigma_e2[e, features] = residual_variance
        sigma_u2[e, features] = ratio * residual_variance
        failed = ~converged | ~(residual_variance > 0) | ~np.isfinite(se[e, features])
        status[e, features[failed]] = FitStatus.NOT_CONVERGED

    not_ok = status != FitStatus.OK
    for statistic in (beta, se, sigma_u2, sigma_e2):
        statistic[not_ok] = np.nan
    with np.errstate(invalid="ignore", divide="ignore"):
        t = beta / se
    p = np.full(shape, np.nan)
    p[~not_ok] = two_sided_p(t[~not_ok], np.broadcast_to(df, shape)[~not_ok])
    fits = SlopeFits(beta, se, t, p, ols.n, ols.n_cases, ols.n_controls, status)
    return fits, VarianceComponents(sigma_u2, sigma_e2)


def _unit(right: np.ndarray) -> np.ndarray:
    """``(f, p)`` zeros with a one in the last column: solves for the exposure's variance factor."""
    unit = np.zeros_like(right)
    unit[:, -1] = 1.0
    return unit


def _basis(design: CovariateDesign, exposures: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(n, rank + k)`` orthonormal ``[Q, b_1..b_k]`` and the exposure scales ``|x_r|`` (``(k,)``).

    ``b_e`` is exposure ``e`` with the covariates projected out, normalised; its
    coefficient is ``|x_r| beta_e`` in any fit over the span of ``[Z, x_e]``.
    Collinear exposures (already flagged by OLS) get a zero direction and scale 1.
    """
    residuals = project_out(design.q, exposures.T)
    scales = np.linalg.norm(residuals, axis=0)
    scales = np.where(scales > 0, scales, 1.0)
    return np.hstack([design.q, residuals / scales]), scales


def _present_sizes(indicator: scipy.sparse.csr_matrix, miss_rows: np.ndarray, miss_cols: np.ndarray, m: int) -> np.ndarray:
    """``(G, m)`` number of participants of each cluster with a value of each feature."""
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
    indicator: scipy.sparse.csr_matrix, padded: np.ndarray, sizes: np.ndarray, basis_sums: np.ndarray, feature_sums: np.ndarray, miss_rows: np.ndarray, miss_cols: np.ndarray
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


def _cluster_statistics(
    indicator: scipy.sparse.csr_matrix,
    padded: np.ndarray,
    prepared: PreparedBlock,
    miss_rows: np.ndarray,
    miss_cols: np.ndarray,
) -> _ClusterStatistics:
    """Aggregate basis and feature cluster sums by present cluster size (see :class:`_ClusterStatistics`).

    ``indicator`` is ``(G, N)``, ``padded`` the ``(N, w)`` basis (zero outside the
    design), ``miss_rows``/``miss_cols`` the missing cells among the design's rows.
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
    return _ClusterStatistics(levels, counts, outer_shared, outer_masked, masked, cross, squares, gram, projections, sum_squares)


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


class _Criterion:
    """The profile REML deviance of one exposure's fits, as a function of ``lambda`` per feature.

    ``take`` selects the basis columns ``[Q, b_e]`` (``p`` of them), ``features``
    the ``f`` features fitted, ``df`` their ``N_j - p``.
    """

    def __init__(self, statistics: _ClusterStatistics, take: np.ndarray, features: np.ndarray, df: np.ndarray) -> None:
        s = statistics
        self.levels = s.levels.astype(np.float64)
        self.counts = s.counts[features]
        self.gram = s.gram[features][:, take][:, :, take]
        self.outer = np.broadcast_to(
            s.outer_shared[:, take][:, :, take], (features.size, *s.outer_shared.shape[:1], take.size, take.size)
        ).copy()
        is_masked = np.isin(features, s.masked)
        if is_masked.any():
            which = np.searchsorted(s.masked, features[is_masked])
            self.outer[is_masked] = s.outer_masked[which][:, :, take][:, :, :, take]
        self.cross = s.cross[features][:, :, take]
        self.squares = s.squares[features]
        self.projections = s.projections[features][:, take]
        self.sum_squares = s.sum_squares[features]
        self.df = df

    def system(self, ratio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``A = W'H^-1W`` (``(f, p, p)``) and ``b = W'H^-1y`` (``(f, p)``) at ``lambda = ratio`` (``(f,)``)."""
        weight = ratio[:, None] / (1.0 + ratio[:, None] * self.levels)  # (f, L)
        gram = self.gram - np.einsum("fl,flab->fab", weight, self.outer)
        right = self.projections - np.einsum("fl,fla->fa", weight, self.cross)
        return gram, right

    def deviance(self, ratio: np.ndarray) -> np.ndarray:
        """``(f,)`` profile REML deviance (up to a constant per feature); +inf where undefined."""
        weight = ratio[:, None] / (1.0 + ratio[:, None] * self.levels)
        gram, right = self.system(ratio)
        quadratic = self.sum_squares - np.einsum("fl,fl->f", weight, self.squares)
        sign, log_det_gram = np.linalg.slogdet(gram)
        solved = np.linalg.solve(np.where((sign > 0)[:, None, None], gram, np.eye(gram.shape[1])), right[:, :, None])[:, :, 0]
        residual = quadratic - np.einsum("fa,fa->f", right, solved)
        log_det_h = np.einsum("fl,fl->f", self.counts, np.log1p(ratio[:, None] * self.levels))
        with np.errstate(invalid="ignore", divide="ignore"):
            value = self.df * np.log(residual) + log_det_h + log_det_gram
        return np.where((sign > 0) & (residual > 0) & np.isfinite(value), value, np.inf)

    def slope(self, ratio: np.ndarray) -> np.ndarray:
        """``(f,)`` derivative of :meth:`deviance` with respect to ``lambda``; NaN where undefined.

        With ``w' = dw/dlambda = 1 / (1 + lambda n_c)^2``: ``A' = -sum w' S S'``,
        ``b' = -sum w' S T``, ``(y'H^-1y)' = -sum w' T^2``, and with ``x = A^-1 b``
        ``r' = (y'H^-1y)' - 2 b''x + x'A'x``, ``(log|A|)' = tr(A^-1 A')``,
        ``(log|H|)' = sum n_c / (1 + lambda n_c)``.
        """
        denominator = 1.0 + ratio[:, None] * self.levels  # (f, L)
        weight, weight_slope = ratio[:, None] / denominator, denominator**-2.0
        gram, right = self.system(ratio)
        gram_slope = -np.einsum("fl,flab->fab", weight_slope, self.outer)
        right_slope = -np.einsum("fl,fla->fa", weight_slope, self.cross)
        quadratic = self.sum_squares - np.einsum("fl,fl->f", weight, self.squares)
        quadratic_slope = -np.einsum("fl,fl->f", weight_slope, self.squares)
        sign, _ = np.linalg.slogdet(gram)
        inverse = np.linalg.inv(np.where((sign > 0)[:, None, None], gram, np.eye(gram.shape[1])))
        solved = np.einsum("fab,fb->fa", inverse, right)
        residual = quadratic - np.einsum("fa,fa->f", right, solved)
        residual_slope = (
            quadratic_slope - 2.0 * np.einsum("fa,fa->f", right_slope, solved) + np.einsum("fa,fab,fb->f", solved, gram_slope, solved)
        )
        log_det_gram_slope = np.einsum("fab,fba->f", inverse, gram_slope)
        log_det_h_slope = np.einsum("fl,fl->f", self.counts, self.levels / denominator)
        with np.errstate(invalid="ignore", divide="ignore"):
            value = self.df * residual_slope / residual + log_det_h_slope + log_det_gram_slope
        return np.where((sign > 0) & (residual > 0), value, np.nan)


def _minimise(criterion: _Criterion, singletons: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """REML ``lambda`` per feature (``(f,)``) and whether it converged (``(f,)`` bool).

    Grid over log10(lambda), bisection on the derivative's sign between the
    best grid point's neighbours, then the boundary ``lambda = 0`` where it is
    as good. ``singletons`` marks features whose clusters all have at most one
    member: their criterion does not depend on lambda, which is set to 0 (the OLS fit).
    """
    n_features = singletons.size
    low, high = _LOG10_LAMBDA_RANGE
    grid = np.arange(low, high + _GRID_STEP / 2, _GRID_STEP)
    values = np.stack([criterion.deviance(np.full(n_features, 10.0**g)) for g in grid])  # (grid, f)
    best = np.argmin(values, axis=0)
    left = grid[np.maximum(best - 1, 0)]
    right = grid[np.minimum(best + 1, grid.size - 1)]
    # The best grid point is below both neighbours, so the deviance has a minimum
    # between them: bisect towards where its derivative turns positive.
    for _ in range(_BISECTION_STEPS):
        middle = (left + right) / 2.0
        rising = criterion.slope(10.0**middle) > 0
        left, right = np.where(rising, left, middle), np.where(rising, middle, right)
    position = (left + right) / 2.0
    value = criterion.deviance(10.0**position)
    # A NaN derivative (undefined criterion) stops nothing above; fall back to the grid's best.
    fallback = ~(value <= values[best, np.arange(n_features)])
    position = np.where(fallback, grid[best], position)
    value = np.where(fallback, values[best, np.arange(n_features)], value)
    ratio = 10.0**position
    at_boundary = criterion.deviance(np.zeros(n_features)) <= value + _BOUNDARY_TIE
    ratio = np.where(at_boundary | singletons, 0.0, ratio)
    converged = at_boundary | singletons | (np.isfinite(value) & (best < grid.size - 1))
    return ratio, converged
