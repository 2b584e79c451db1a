"""Batched ordinary least squares: one exposure slope per feature, many features at once.

Model for every feature ``j`` and exposure ``e`` of one covariate design::

    y_j = Z gamma_j + x_e beta_ej + error,    error ~ N(0, sigma_j^2)

over the design's participants, minus those whose value of feature ``j`` is missing.

Method. Let ``Q`` be an orthonormal basis of the covariates (from the design's
QR) and ``b_e = x_r / s_e`` the exposure with the covariates projected out,
normalised (``s_e = |x_r|``). ``B = [Q, b_e]`` is an orthonormal basis of the
full design, so for a feature with no missing value the normal equations are
the identity (Frisch-Waugh-Lovell): ``beta = b_e'y / s_e`` and
``RSS = y'y - |B'y|^2``. All of ``B'y`` for every exposure and feature of a block
is ONE matrix product. A feature with missing values uses the same basis
restricted to its present rows: its Gram matrix is ``I - D_j`` where ``D_j``
sums ``b_i b_i'`` over its missing rows (a sparse product over the missing
cells only), solved as a stack of small well-conditioned systems.

The RSS identity loses digits when the model explains nearly all of ``y'y``;
those features (RSS below 1e-5 of ``y'y``) get their residuals computed
explicitly. Degrees of freedom use the design's rank, never an assumed count.

Layout: this module holds the block preparation, the public entry points and
the per-design remainder of a fit; :mod:`~scalable_assoc.models.ols_products`
the products with the block (shared between designs), and
:mod:`~scalable_assoc.models.ols_masked` the stacked solves of features with
missing values, aliasing included.

Pure numpy/scipy: no Dask, no files, no pandas.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import scipy.sparse

from scalable_assoc.models.design import CovariateDesign
from scalable_assoc.models.fits import FitStatus, SlopeFits, two_sided_p
from scalable_assoc.models.ols_masked import masked_downdates, solve_masked
from scalable_assoc.models.ols_products import BlockProducts, DesignTask, direct_products, exposure_basis, grouped_products
from scalable_assoc.models.thresholds import CONSTANT_FEATURE

#: RSS below this fraction of y'y: recompute residuals explicitly (identity unsafe).
_RSS_IDENTITY_FLOOR = 1e-5
#: Missing cells above this fraction of (participants x masked features): Gram matrices
#: from the present rows by one dense product rather than a sparse sum over missing cells.
_SPARSE_MISSING = 0.02
#: Reference distributions of cluster-robust p-values: t with G - 1 degrees of freedom, or the normal.
CLUSTER_REFERENCES = ("t", "normal")


@dataclass(frozen=True)
class PreparedBlock:
    """A block of transformed features, prepared once and shared by every design of a task.

    ``values`` is ``(N, m)``: each column centred by its mean over present values
    (a shift the intercept absorbs; it keeps ``y'y`` close to the centred sum of
    squares), zero where missing; ``missing`` marks the missing cells. Derived
    views are computed on first use only, since each path needs different ones:
    ``squares`` (``values**2``), the missing cells listed as
    ``(missing_rows, missing_columns)``, and ``present`` (1.0 / 0.0 per cell) for
    blocks with many missing cells (more than :data:`_SPARSE_MISSING`, as for
    lm_nonzero), where counts and Gram matrices are matrix products; None otherwise.
    """

    values: np.ndarray
    missing: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        """``(N, m)``: all participants of the layer x features of the block."""
        return self.values.shape  # type: ignore[return-value]

    @cached_property
    def squares(self) -> np.ndarray:
        """``(N, m)`` squared values."""
        return np.square(self.values)

    @cached_property
    def _missing_cells(self) -> tuple[np.ndarray, np.ndarray]:
        if self.n_missing == 0:  # the usual CLR block: np.nonzero would still scan every cell twice
            empty = np.zeros(0, dtype=np.intp)
            return empty, empty.copy()
        return np.nonzero(self.missing)  # type: ignore[return-value]

    @property
    def missing_rows(self) -> np.ndarray:
        """Row of every missing cell."""
        return self._missing_cells[0]

    @property
    def missing_columns(self) -> np.ndarray:
        """Column of every missing cell."""
        return self._missing_cells[1]

    @cached_property
    def n_missing(self) -> int:
        """Number of missing cells."""
        return int(np.count_nonzero(self.missing))

    @cached_property
    def present(self) -> np.ndarray | None:
        """1.0 where present, 0.0 where missing, for blocks with many missing cells; else None."""
        if self.n_missing <= _SPARSE_MISSING * self.values.size:
            return None
        return (~self.missing).astype(np.float64)


def prepare_block(block: np.ndarray) -> PreparedBlock:
    """Centre and zero-fill a ``(N, m)`` block (NaN = missing)."""
    block = np.asarray(block, dtype=np.float64)
    missing = np.isnan(block)
    any_missing = bool(missing.any())
    # Without missing cells (most blocks of a transformed layer) the zero-filled copy is the block
    # itself: one pass and one block-sized allocation fewer, the same sums and values.
    filled = np.where(missing, 0.0, block) if any_missing else block
    counts = block.shape[0] - missing.sum(axis=0) if any_missing else np.full(block.shape[1], block.shape[0])
    means = np.divide(filled.sum(axis=0), counts, out=np.zeros(block.shape[1]), where=counts > 0)
    values = np.subtract(filled, means, out=filled if any_missing else None)
    if any_missing:
        values[missing] = 0.0
    return PreparedBlock(values, missing)


def fit_exposure_slopes(
    design: CovariateDesign,
    exposures: np.ndarray,
    binary: np.ndarray,
    block: PreparedBlock | np.ndarray,
    rows: np.ndarray | None = None,
    clusters: np.ndarray | None = None,
    alias: bool = True,
    cluster_reference: str = "t",
) -> SlopeFits:
    """Fit ``feature ~ covariates + exposure`` for every exposure and feature of a block.

    Parameters
    ----------
    design:
        The factorised covariate design of its ``n`` participants.
    exposures:
        ``(k, n)`` exposure values over the design's participants (0/1 for
        binary exposures), no missing values.
    binary:
        ``(k,)`` bool, whether each exposure is a case/control indicator.
    block:
        ``(N, m)`` transformed feature values of all ``N`` participants of the
        layer (NaN marks a missing value, which leaves that participant out for
        that feature only), or the same already passed through :func:`prepare_block`.
    rows:
        ``(n,)`` positions of the design's participants among the ``N`` rows;
        None when the block holds exactly the design's participants.
    clusters:
        ``(n,)`` integer cluster codes (families, households) of the design's
        participants, or None. With clusters, ``se`` is cluster-robust (CR1:
        the sandwich times ``G/(G-1) * (n-1)/(n-p)`` over the ``G`` clusters
        with a value of the feature, as statsmodels ``OLS.fit(cov_type="cluster")``
        and R ``sandwich::vcovCL(type="HC1")`` compute it), ``t`` is beta / se,
        and ``p`` comes from the reference distribution ``cluster_reference``.
    alias:
        A covariate constant (or collinear) among one feature's participants is
        aliased as R's ``lm`` does (see :func:`~scalable_assoc.models.ols_masked.aliased_solve`); False gives such
        features the status ``FEATURE_RANK_DEFICIENT`` instead (for callers whose
        own solve needs a full-rank design, as the mixed model).
    cluster_reference:
        With clusters: ``"t"``, Student's t with ``G - 1`` degrees of freedom
        (as Stata reports cluster-robust fits), or ``"normal"`` (as statsmodels
        does). Without clusters ``p`` is always from t with ``n - rank`` degrees of freedom.
    """
    prepared = block if isinstance(block, PreparedBlock) else prepare_block(block)
    rows = np.arange(prepared.shape[0]) if rows is None else rows
    return fit_design_batch(
        [design], [rows], [exposures], [binary], prepared, [clusters], alias=alias, cluster_reference=cluster_reference
    )[0]


def fit_design_batch(
    designs: list[CovariateDesign],
    rows: list[np.ndarray],
    exposures: list[np.ndarray],
    binary: list[np.ndarray],
    block: PreparedBlock,
    clusters: list[np.ndarray | None] | None = None,
    alias: bool = True,
    cluster_reference: str = "t",
) -> list[SlopeFits]:
    """:func:`fit_exposure_slopes` for several designs over one block.

    The products with the block, the memory-bound part, are done for all
    designs together: the block is read twice in all, not twice per design.

    Parameters
    ----------
    designs, rows, exposures, binary, clusters:
        One entry per design, as the arguments of :func:`fit_exposure_slopes`:
        the design of ``n`` participants, their ``(n,)`` positions among the
        block's ``N`` rows, ``(k, n)`` exposures, ``(k,)`` binary flags, ``(n,)``
        cluster codes or None (``clusters`` None: no clusters anywhere).
    block:
        The ``(N, m)`` block passed through :func:`prepare_block`.
    alias, cluster_reference:
        As in :func:`fit_exposure_slopes`, for every design.

    Returns
    -------
    list of SlopeFits
        One per design, in order, each with ``(k, m)`` arrays.
    """
    if cluster_reference not in CLUSTER_REFERENCES:
        raise ValueError(f"cluster_reference must be one of {', '.join(CLUSTER_REFERENCES)}, got {cluster_reference!r}")
    n_total = block.shape[0]
    design_clusters = clusters if clusters is not None else [None] * len(designs)
    tasks = []
    for design, design_rows, design_exposures, design_binary, cluster_codes in zip(
        designs, rows, exposures, binary, design_clusters, strict=True
    ):
        design_rows = np.asarray(design_rows)
        design_exposures = np.atleast_2d(np.asarray(design_exposures, dtype=np.float64))
        basis = exposure_basis(design, design_rows, design_exposures, n_total)
        tasks.append(DesignTask(design, design_rows, design_exposures, np.asarray(design_binary), cluster_codes, basis))
    products = grouped_products(tasks, block)
    direct = [index for index, found in enumerate(products) if found is None]
    for index, found in zip(direct, direct_products([tasks[i] for i in direct], block), strict=True):
        products[index] = found
    results = []
    for task, task_products in zip(tasks, products, strict=True):
        assert task_products is not None
        results.append(_fit_one_design(task, block, task_products, alias, cluster_reference))
    return results


@dataclass(frozen=True)
class _DesignMissing:
    """The block's missing cells among one design's participants."""

    in_design: np.ndarray  # (N,) bool: the design's rows
    cells: tuple[np.ndarray, np.ndarray] | None  # rows and columns of those cells, for blocks with few (else None)
    count: np.ndarray  # (m,) missing cells per feature


def _design_missing(prepared: PreparedBlock, rows: np.ndarray, n: int, present_counts: np.ndarray | None) -> _DesignMissing:
    """Where the design's ``n`` participants (``rows``) miss a value, listed for sparse blocks, counted for all."""
    n_total, m = prepared.shape
    # Missing cells that fall among this design's participants, as a sparse (m x N) indicator.
    in_design = np.zeros(n_total, dtype=bool)
    in_design[rows] = True
    if prepared.present is None:
        # Few missing cells: this design's ones, listed.
        keep = in_design[prepared.missing_rows]
        miss_rows, miss_cols = prepared.missing_rows[keep], prepared.missing_columns[keep]
        return _DesignMissing(in_design, (miss_rows, miss_cols), np.bincount(miss_cols, minlength=m))
    assert present_counts is not None
    return _DesignMissing(in_design, None, n - present_counts[0])


@dataclass(frozen=True)
class _Solution:
    """One design's least-squares solutions, every array ``(k, m)`` unless said otherwise."""

    coefficient: np.ndarray  # coefficient on b_e
    variance_factor: np.ndarray  # its variance over sigma^2
    rss: np.ndarray
    singular: np.ndarray  # bool: the exposure is not estimable among the feature's participants
    covariate_rank: np.ndarray  # (m,) rank of the covariates among each feature's participants
    constant: np.ndarray  # (m,) bool
    complete: np.ndarray  # (m,) bool: no missing value among the design's participants
    n_present: np.ndarray  # (m,) float: participants with a value
    masked: np.ndarray  # (a,) features with a missing value
    full_coefficients: dict[int, np.ndarray]  # per exposure: (a, rank + 1) solutions of the masked features
    exposure_rows: dict[int, np.ndarray]  # per exposure: (a, rank + 1) exposure rows of their G^-1


def _solve(task: DesignTask, prepared: PreparedBlock, products: BlockProducts, missing: _DesignMissing, alias: bool) -> _Solution:
    """Every exposure's slope and RSS: by the identity for complete features, by stacked solves for masked ones."""
    projections, sum_squares = products.projections, products.sum_squares
    m = prepared.shape[1]
    k, n = task.exposures.shape
    shape = (k, m)
    rank = task.design.q.shape[1]
    sums, covariate_part, exposure_part = projections[0], projections[1 : 1 + rank], projections[1 + rank :]
    n_present = (n - missing.count).astype(np.float64)  # exact integers
    with np.errstate(invalid="ignore", divide="ignore"):
        centred_ss = sum_squares - sums**2 / n_present
    constant = ~(centred_ss > CONSTANT_FEATURE * sum_squares)
    complete = ~(missing.count > 0)

    # Complete features: the Gram matrix is the identity.
    covariate_ss = np.einsum("ij,ij->j", covariate_part, covariate_part)
    rss = np.empty(shape)
    variance_factor = np.ones(shape)
    coefficient = exposure_part.copy()  # coefficient on b_e
    rss[:, complete] = sum_squares[complete] - covariate_ss[complete] - exposure_part[:, complete] ** 2

    singular = np.zeros(shape, dtype=bool)
    # Rank of the covariates among each feature's participants: the design's rank unless a
    # covariate is constant (or collinear) there, when it is aliased as R's lm does.
    covariate_rank = np.full(m, rank)
    masked = np.flatnonzero(~complete)
    full_coefficients: dict[int, np.ndarray] = {}
    exposure_rows: dict[int, np.ndarray] = {}
    if masked.size:
        # D_j = sum over missing rows i of feature j of v_i v_i', v = [Q, b_1..b_k] at row i.
        downdate = masked_downdates(task.basis.padded[:, 1:], masked, m, prepared.present, missing.cells, products.present_gram)
        for e in range(k):  # a handful of exposures per design; features stay vectorised
            take = np.r_[np.arange(rank), rank + e]
            gram = np.eye(rank + 1) - downdate[:, take][:, :, take]
            right = np.concatenate([covariate_part[:, masked], exposure_part[e : e + 1, masked]]).T  # (masked, rank+1)
            solution = solve_masked(gram, right, alias)
            singular[e, masked] = solution.singular
            if solution.aliased.any():
                covariate_rank[masked[solution.aliased]] = solution.covariate_rank
            coefficient[e, masked] = solution.coefficients[:, -1]
            variance_factor[e, masked] = solution.variance
            rss[e, masked] = sum_squares[masked] - np.einsum("ij,ij->i", solution.coefficients, right)
            full_coefficients[e] = solution.coefficients
            exposure_rows[e] = solution.exposure_rows
    return _Solution(
        coefficient, variance_factor, rss, singular, covariate_rank, constant, complete, n_present, masked, full_coefficients, exposure_rows
    )


@dataclass(frozen=True)
class _Model:
    """One design's fitted models on ``[Q, b_e]``, per exposure: coefficients and explicit residuals."""

    rank: int
    projections: np.ndarray  # (1 + rank + k, m) [1 | Q | b]'y
    solution: _Solution
    basis_padded: np.ndarray  # (N, 1 + rank + k)
    values: np.ndarray  # (N, m) the prepared block
    present_in_design: np.ndarray  # (N, m) bool: the design's rows with a value

    def coefficients(self, e: int, columns: np.ndarray) -> np.ndarray:
        """``(rank + 1, len(columns))`` coefficients on ``[Q, b_e]`` of the given features."""
        rank, masked = self.rank, self.solution.masked
        gamma = np.zeros((rank + 1, columns.size))
        gamma[:rank] = self.projections[1 : 1 + rank, columns]
        gamma[rank] = self.projections[1 + rank + e, columns]
        if masked.size:
            position = np.searchsorted(masked, columns)
            is_masked = ~self.solution.complete[columns]
            gamma[:, is_masked] = self.solution.full_coefficients[e][position[is_masked]].T
        return gamma

    def residuals(self, e: int, columns: np.ndarray) -> np.ndarray:
        """``(N, len(columns))`` explicit residuals, zero outside the design and at missing cells."""
        fitted = self.basis_padded[:, np.r_[1 : 1 + self.rank, 1 + self.rank + e]] @ self.coefficients(e, columns)
        return (self.values[:, columns] - fitted) * self.present_in_design[:, columns]


def _present_in_design(prepared: PreparedBlock, missing: _DesignMissing) -> np.ndarray:
    """``(N, m)`` bool: a value present, in one of the design's rows."""
    if missing.cells is None:
        assert prepared.present is not None
        return (prepared.present > 0) & missing.in_design[:, None]
    present_in_design = np.repeat(missing.in_design[:, None], prepared.shape[1], axis=1)
    present_in_design[missing.cells] = False
    return present_in_design


def _fit_one_design(
    task: DesignTask, prepared: PreparedBlock, products: BlockProducts, alias: bool = True, cluster_reference: str = "t"
) -> SlopeFits:
    """The per-design remainder of the fit, given its products with the block."""
    design, rows, exposures = task.design, task.rows, task.exposures
    n_total, m = prepared.shape
    k, n = exposures.shape
    if rows.size != n or design.n != n:
        raise ValueError(f"design has {design.n} participants, exposures {n}, rows {rows.size}; they must agree")
    shape = (k, m)
    beta = np.full(shape, np.nan)
    se = np.full(shape, np.nan)
    n_cases = np.full(shape, -1, dtype=np.int64)
    n_controls = np.full(shape, -1, dtype=np.int64)
    status = np.zeros(shape, dtype=np.int8)
    missing = _design_missing(prepared, rows, n, products.counts)
    n_used = np.broadcast_to(n - missing.count, shape).copy()
    if design.problem is not None:
        status[:] = FitStatus.DESIGN_RANK_DEFICIENT
        return SlopeFits(beta, se, beta.copy(), beta.copy(), n_used, n_cases, n_controls, status)

    scales, collinear = task.basis.scales, task.basis.collinear
    solution = _solve(task, prepared, products, missing, alias)
    rss = solution.rss
    unsafe = (rss < _RSS_IDENTITY_FLOOR * products.sum_squares) & ~solution.constant
    present_in_design = np.zeros((0, 0), dtype=bool)
    if unsafe.any() or task.clusters is not None:
        present_in_design = _present_in_design(prepared, missing)
    model = _Model(design.q.shape[1], products.projections, solution, task.basis.padded, prepared.values, present_in_design)
    # Where the identity is unsafe (model explains nearly all of y'y), compute residuals explicitly.
    for exposure_index in np.flatnonzero(unsafe.any(axis=1)):
        e = int(exposure_index)
        columns = np.flatnonzero(unsafe[e])
        residual = model.residuals(e, columns)
        rss[e, columns] = np.einsum("ij,ij->j", residual, residual)

    df = solution.n_present - solution.covariate_rank - 1
    with np.errstate(invalid="ignore", divide="ignore"):
        beta[:] = solution.coefficient / np.where(collinear, np.nan, scales)[:, None]
        se[:] = np.sqrt(np.clip(rss, 0.0, None) / df * solution.variance_factor) / np.where(collinear, np.nan, scales)[:, None]

    p_df: np.ndarray | float = df
    too_few_clusters = np.zeros(m, dtype=bool)
    if task.clusters is not None:
        groups_used = _cluster_robust_se(task, model, df, se)
        too_few_clusters = groups_used < 2
        # t with G - 1 degrees of freedom (Stata's choice: with few clusters the normal is far too
        # liberal); the normal on request, as statsmodels reports cluster-robust fits.
        p_df = groups_used - 1.0 if cluster_reference == "t" else np.inf
    _count_cases(task, prepared, missing, products.counts, n_cases, n_controls)

    status[solution.singular] = FitStatus.FEATURE_RANK_DEFICIENT
    too_few = ~(df >= 1) | too_few_clusters
    status[:, too_few] = FitStatus.TOO_FEW_VALUES
    status[:, solution.constant & ~too_few] = FitStatus.CONSTANT_FEATURE
    status[collinear] = FitStatus.EXPOSURE_COLLINEAR
    not_ok = status != FitStatus.OK
    beta[not_ok] = np.nan
    se[not_ok] = np.nan
    with np.errstate(invalid="ignore", divide="ignore"):
        t = beta / se
    p = np.full(shape, np.nan)
    ok = ~not_ok
    p[ok] = two_sided_p(t[ok], np.broadcast_to(p_df, shape)[ok])
    return SlopeFits(beta, se, t, p, n_used, n_cases, n_controls, status)


def _cluster_robust_se(task: DesignTask, model: _Model, df: np.ndarray, se: np.ndarray) -> np.ndarray:
    """Write the cluster-robust (CR1) standard errors into ``se`` (``(k, m)``); returns ``(m,)`` clusters with a value."""
    # Cluster-robust (CR1) variance of the coefficient on b_e: the exposure row of
    # G_j^-1 B' is its influence on each participant; scores are summed per cluster.
    solution, rank, present_in_design = model.solution, model.rank, model.present_in_design
    n_total, m = present_in_design.shape
    codes = np.asarray(task.clusters)
    n_groups = int(codes.max()) + 1 if codes.size else 0
    indicator = scipy.sparse.csr_matrix((np.ones(task.rows.size), (codes, task.rows)), shape=(n_groups, n_total))
    groups_used = np.asarray((indicator @ present_in_design.astype(np.float64)) > 0).sum(axis=0)
    everything = np.arange(m)
    for e in range(task.exposures.shape[0]):
        if task.basis.collinear[e]:
            continue
        direction = np.zeros((rank + 1, m))
        direction[rank, solution.complete] = 1.0
        if solution.masked.size:
            direction[:, solution.masked] = solution.exposure_rows[e].T
        influence = (model.basis_padded[:, np.r_[1 : 1 + rank, 1 + rank + e]] @ direction) * present_in_design
        scores = indicator @ (influence * model.residuals(e, everything))
        with np.errstate(invalid="ignore", divide="ignore"):
            correction = groups_used / (groups_used - 1) * (solution.n_present - 1) / df
            se[e] = np.sqrt(np.einsum("gj,gj->j", scores, scores) * correction) / task.basis.scales[e]
    return groups_used


def _count_cases(
    task: DesignTask,
    prepared: PreparedBlock,
    missing: _DesignMissing,
    present_counts: np.ndarray | None,
    n_cases: np.ndarray,
    n_controls: np.ndarray,
) -> None:
    """Write the cases and controls with a value of each binary exposure into ``n_cases`` / ``n_controls`` (``(k, m)``)."""
    n_total, m = prepared.shape
    exposures, k = task.exposures, task.exposures.shape[0]
    for e in range(k):
        if not task.binary[e]:
            continue
        is_case = exposures[e] == 1
        case_padded = np.zeros(n_total, dtype=np.float64)
        case_padded[task.rows] = is_case
        control_padded = np.zeros(n_total, dtype=np.float64)
        control_padded[task.rows] = exposures[e] == 0
        if missing.cells is not None:
            miss_rows, miss_cols = missing.cells
            missing_cases = np.bincount(miss_cols, weights=case_padded[miss_rows], minlength=m)
            missing_controls = np.bincount(miss_cols, weights=control_padded[miss_rows], minlength=m)
            n_cases[e] = int(is_case.sum()) - np.rint(missing_cases).astype(np.int64)
            n_controls[e] = int((exposures[e] == 0).sum()) - np.rint(missing_controls).astype(np.int64)
        else:
            assert present_counts is not None
            n_cases[e] = present_counts[1 + e]
            n_controls[e] = present_counts[1 + k + e]
