"""Batched OLS for a block of ``J`` terms of interest jointly: coefficients, covariances and an F test.

Model for every feature ``j`` of one covariate design::

    y_j = Z gamma_j + X theta_j + error,    error ~ N(0, sigma_j^2)

over the design's participants, minus those whose value of feature ``j`` is
missing. ``Z`` are the design's covariates (intercept first), ``X`` the ``J``
columns of interest: the dummies of a categorical exposure's non-reference
levels, or (with an intercept-only design) an exposure and every covariate, so
that each covariate gets its own coefficient row.

Method. ``Q`` is the orthonormal basis of ``Z`` (the design's QR); the columns
of interest with ``Z`` projected out factor as ``X_r = U R``, so ``B = [Q, U]``
is an orthonormal basis of the full design and ``theta = R^-1 g_U`` where ``g``
are the coefficients on ``B``. Every feature's products ``B'y`` are one matrix
product; a feature without missing values has Gram matrix ``I``; one with
missing values has ``B' diag(present) B``, built for all such features by one
sparse (or dense) product and solved as a stack of small systems. Residual sums
of squares are computed from explicit residuals, and the extra sum of squares
of the F test as ``|fitted_full - fitted_reduced|^2`` over the present rows (the
two fits differ by a vector orthogonal to the full residual), so neither loses
digits by cancellation.

Pure numpy/scipy: no Dask, no files, no pandas.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.sparse

from scalable_assoc.models.design import CovariateDesign, project_out
from scalable_assoc.models.fits import FitStatus, two_sided_p
from scalable_assoc.models.ols import PreparedBlock, prepare_block
from scalable_assoc.models.thresholds import CONSTANT_FEATURE, EXPOSURE_COLLINEAR, GRAM_SINGULAR
from scalable_assoc.stats.tails import f_sf

#: Missing cells above this fraction of the design's cells: Gram matrices from the present rows
#: (one dense product) rather than the identity minus a sum over the missing cells.
_DENSE_MISSING = 0.25


@dataclass(frozen=True)
class TermFits:
    """``J`` coefficients of interest for ``m`` features, and the joint F test of all of them.

    ``beta``, ``se``, ``t``, ``p`` are ``(J, m)``: each column of interest's
    coefficient in the joint model, its standard error, ``beta / se`` and the
    two-sided p from Student's t with ``df`` degrees of freedom. ``covariance``
    is ``(m, J, J)``. ``f_statistic`` and ``f_p`` (``(m,)``) test all ``J``
    coefficients jointly against the covariates-only model:
    ``F = ((rss_reduced - rss_full) / J) / (rss_full / df)`` on ``(J, df)``
    degrees of freedom, ``df = n - rank(Z) - J``. ``status`` is ``(m,)``; every
    statistic of a feature whose status is not OK is NaN.
    """

    beta: np.ndarray
    se: np.ndarray
    t: np.ndarray
    p: np.ndarray
    covariance: np.ndarray
    f_statistic: np.ndarray
    f_p: np.ndarray
    rss_full: np.ndarray
    rss_reduced: np.ndarray
    df: np.ndarray
    n: np.ndarray
    status: np.ndarray


def _interest_basis(q: np.ndarray, columns: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """``(U, R, collinear)``: ``columns - Q Q'columns = U R``, U orthonormal, R upper triangular."""
    residual = project_out(q, columns)
    centred = np.linalg.norm(columns - columns.mean(axis=0), axis=0)
    scale = np.where(centred > 0, centred, 1.0)
    u, r_unit = scipy.linalg.qr(residual / scale, mode="economic")
    collinear = bool(np.any(np.abs(np.diag(r_unit)) <= EXPOSURE_COLLINEAR) or np.any(centred == 0))
    return u, r_unit * scale, collinear


def fit_terms(
    design: CovariateDesign,
    columns: np.ndarray,
    block: PreparedBlock | np.ndarray,
    rows: np.ndarray | None = None,
) -> TermFits:
    """Fit ``feature ~ covariates + columns`` for every feature of a block; test ``columns`` jointly.

    Parameters
    ----------
    design:
        The factorised covariate design of its ``n`` participants (intercept included).
    columns:
        ``(n, J)`` columns of interest over the design's participants, no missing values.
    block:
        ``(N, m)`` transformed feature values of all ``N`` participants of the layer
        (NaN = missing: that participant is left out for that feature only), or the
        same passed through :func:`~scalable_assoc.models.ols.prepare_block`.
    rows:
        ``(n,)`` positions of the design's participants among the ``N`` rows; None
        when the block holds exactly the design's participants.

    Returns
    -------
    fits:
        :class:`TermFits`: ``(J, m)`` coefficients, standard errors, ``t`` and
        ``p``; ``(m, J, J)`` covariances; ``(m,)`` joint F statistics and their
        p-values, residual sums of squares of the full and covariates-only
        models, residual df, numbers of values used and statuses.
    """
    data = _checked_data(design, columns, block, rows)
    estimates = _TermEstimates.empty(data, design.rank)
    if design.problem is not None:
        estimates.status[:] = FitStatus.DESIGN_RANK_DEFICIENT
        return estimates.finish()
    q = design.q
    u, r_factor, collinear = _interest_basis(q, data.columns)
    if collinear:
        estimates.status[:] = FitStatus.EXPOSURE_COLLINEAR
        return estimates.finish()
    basis = np.hstack([q, u])  # (n, w), orthonormal
    coefficients = _coefficients(basis, data, design.rank)
    _store_fits(estimates, basis, q, r_factor, data, coefficients)
    _flag_features(estimates, coefficients.singular, _constant_features(data))
    return estimates.finish()


@dataclass(frozen=True)
class _TermData:
    """The block over the design's ``n`` rows and the ``J`` columns of interest, checked."""

    values: np.ndarray  # (n, m) zero where missing
    present: np.ndarray  # (n, m) bool
    n_used: np.ndarray  # (m,) int64 values present per feature
    columns: np.ndarray  # (n, J) float64


def _checked_data(design: CovariateDesign, columns: np.ndarray, block: PreparedBlock | np.ndarray, rows: np.ndarray | None) -> _TermData:
    """Convert the arguments of :func:`fit_terms`, check their shapes, and select the design's rows."""
    prepared = block if isinstance(block, PreparedBlock) else prepare_block(block)
    rows = np.arange(prepared.shape[0]) if rows is None else np.asarray(rows)
    columns = np.asarray(columns, dtype=np.float64)
    if columns.ndim != 2 or columns.shape[0] != rows.size or design.n != rows.size:
        raise ValueError(f"columns have shape {columns.shape}; the design has {design.n} participants and rows {rows.size}")
    if not np.all(np.isfinite(columns)):
        raise ValueError("columns of interest must be finite")
    values = prepared.values[rows]  # (n, m), zero where missing
    present = ~prepared.missing[rows]
    n_used = present.sum(axis=0).astype(np.int64)
    return _TermData(values, present, n_used, columns)


@dataclass(frozen=True)
class _TermEstimates:
    """Arrays filled in place (NaN until fitted, status OK until flagged) and finished into :class:`TermFits`."""

    beta: np.ndarray  # (J, m)
    covariance: np.ndarray  # (m, J, J)
    rss_full: np.ndarray  # (m,)
    extra: np.ndarray  # (m,) extra sum of squares of the columns of interest
    status: np.ndarray  # (m,) int8
    df: np.ndarray  # (m,) float64 residual df n - rank(Z) - J
    n_used: np.ndarray  # (m,) int64

    @classmethod
    def empty(cls, data: _TermData, rank: int) -> _TermEstimates:
        """Unfitted estimates for the features of ``data`` with a covariate design of rank ``rank``."""
        n_terms = data.columns.shape[1]
        m = data.values.shape[1]
        return cls(
            beta=np.full((n_terms, m), np.nan),
            covariance=np.full((m, n_terms, n_terms), np.nan),
            rss_full=np.full(m, np.nan),
            extra=np.full(m, np.nan),
            status=np.zeros(m, dtype=np.int8),
            df=(data.n_used - rank - n_terms).astype(np.float64),
            n_used=data.n_used,
        )

    def finish(self) -> TermFits:
        """NaN every statistic of a feature that is not OK; standard errors, t, p and the F test."""
        beta, covariance, rss_full, extra, status, df = self.beta, self.covariance, self.rss_full, self.extra, self.status, self.df
        n_terms, m = beta.shape
        not_ok = status != FitStatus.OK
        beta[:, not_ok] = np.nan
        covariance[not_ok] = np.nan
        with np.errstate(invalid="ignore", divide="ignore"):
            se = np.sqrt(np.einsum("mjj->jm", covariance))
            t = beta / se
            f_statistic = np.where(not_ok, np.nan, extra / n_terms / (rss_full / df))
        p = np.full((n_terms, m), np.nan)
        ok = ~not_ok
        p[:, ok] = two_sided_p(t[:, ok], np.broadcast_to(df[ok], (n_terms, int(ok.sum()))))
        f_p = np.full(m, np.nan)
        f_p[ok] = f_sf(f_statistic[ok], n_terms, df[ok])
        rss = np.where(ok, rss_full, np.nan)
        return TermFits(beta, se, t, p, covariance, f_statistic, f_p, rss, rss + np.where(ok, extra, np.nan), df, self.n_used, status)


@dataclass(frozen=True)
class _Coefficients:
    """Coefficients on the orthonormal basis ``B = [Q, U]`` (``w`` columns, ``rank`` of them ``Q``)."""

    gamma: np.ndarray  # (w, m) full model
    reduced: np.ndarray  # (rank, m) covariates-only model
    inverse_interest: np.ndarray  # (m, J, J) [G^-1]_UU
    singular: np.ndarray  # (m,) bool: a singular Gram matrix over the present rows


def _coefficients(basis: np.ndarray, data: _TermData, rank: int) -> _Coefficients:
    """Solve every feature on ``basis`` (``(n, w)``): ``B'y`` without missing values, a stack of small systems with."""
    n_terms = data.columns.shape[1]
    m = data.values.shape[1]
    width = basis.shape[1]
    projections = basis.T @ data.values  # (w, m)
    gamma = projections.copy()  # coefficients on B, full model
    reduced = projections[:rank].copy()  # coefficients on Q, covariates only
    inverse_interest = np.broadcast_to(np.eye(n_terms), (m, n_terms, n_terms)).copy()  # [G^-1]_UU
    missing_count = data.values.shape[0] - data.n_used
    masked = np.flatnonzero(missing_count > 0)
    singular = np.zeros(m, dtype=bool)
    if masked.size:
        gram = _masked_grams(basis, data.present, masked, missing_count)
        bad = np.linalg.eigvalsh(gram)[:, 0] <= GRAM_SINGULAR
        singular[masked] = bad
        safe = np.where(bad[:, None, None], np.eye(width), gram)
        inverse = np.linalg.inv(safe)
        gamma[:, masked] = np.einsum("mij,jm->im", inverse, projections[:, masked])
        reduced[:, masked] = np.linalg.solve(safe[:, :rank, :rank], projections[:rank, masked].T[:, :, None])[:, :, 0].T
        inverse_interest[masked] = inverse[:, rank:, rank:]
    return _Coefficients(gamma, reduced, inverse_interest, singular)


def _masked_grams(basis: np.ndarray, present: np.ndarray, masked: np.ndarray, missing_count: np.ndarray) -> np.ndarray:
    """``(a, w, w)`` Gram matrices ``B' diag(present) B`` of the ``masked`` features (``(a,)``, with missing values).

    From the present rows (one dense product) when many cells are missing, else
    the identity minus a sparse sum over the missing cells.
    """
    n = basis.shape[0]
    width = basis.shape[1]
    upper_r, upper_c = np.triu_indices(width)
    pairs = basis[:, upper_r] * basis[:, upper_c]  # (n, pairs)
    if missing_count[masked].sum() > _DENSE_MISSING * n * masked.size:
        gram_flat = (pairs.T @ present[:, masked].astype(np.float64)).T  # (masked, pairs)
    else:
        miss_rows, miss_cols = np.nonzero(~present[:, masked])
        indicator = scipy.sparse.csr_matrix((np.ones(miss_rows.size), (miss_cols, miss_rows)), shape=(masked.size, n))
        gram_flat = (upper_r == upper_c).astype(np.float64) - np.asarray(indicator @ pairs)
    gram = np.zeros((masked.size, width, width))
    gram[:, upper_r, upper_c] = gram_flat
    gram[:, upper_c, upper_r] = gram_flat
    return gram


def _store_fits(
    estimates: _TermEstimates, basis: np.ndarray, q: np.ndarray, r_factor: np.ndarray, data: _TermData, coefficients: _Coefficients
) -> None:
    """Residual and extra sums of squares from explicit fits, ``theta = R^-1 g_U`` and its covariance, into ``estimates``."""
    rank = q.shape[1]
    n_terms = r_factor.shape[0]
    present = data.present
    fitted_full = basis @ coefficients.gamma
    fitted_reduced = q @ coefficients.reduced
    residual = (data.values - fitted_full) * present
    estimates.rss_full[:] = np.einsum("ij,ij->j", residual, residual)
    difference = (fitted_full - fitted_reduced) * present
    estimates.extra[:] = np.einsum("ij,ij->j", difference, difference)

    # theta = R^-1 g_U, and its covariance sigma^2 R^-1 [G^-1]_UU R^-T.
    r_inverse = scipy.linalg.solve_triangular(r_factor, np.eye(n_terms))
    estimates.beta[:] = r_inverse @ coefficients.gamma[rank:]
    with np.errstate(invalid="ignore", divide="ignore"):
        sigma2 = estimates.rss_full / estimates.df
    estimates.covariance[:] = np.einsum("ab,mbc,dc->mad", r_inverse, coefficients.inverse_interest, r_inverse) * sigma2[:, None, None]


def _constant_features(data: _TermData) -> np.ndarray:
    """``(m,)`` bool: features constant over their present rows.

    A centred sum of squares below :data:`~scalable_assoc.models.thresholds.CONSTANT_FEATURE` of ``y'y``.
    """
    values = data.values
    sum_squares = np.einsum("ij,ij->j", values, values)
    with np.errstate(invalid="ignore", divide="ignore"):
        centred_ss = sum_squares - values.sum(axis=0) ** 2 / data.n_used
    return ~(centred_ss > CONSTANT_FEATURE * sum_squares)


def _flag_features(estimates: _TermEstimates, singular: np.ndarray, constant: np.ndarray) -> None:
    """Feature statuses, later ones overriding: singular Gram, too few values, constant (when not too few)."""
    status = estimates.status
    status[singular] = FitStatus.FEATURE_RANK_DEFICIENT
    too_few = ~(estimates.df >= 1)
    status[too_few] = FitStatus.TOO_FEW_VALUES
    status[constant & ~too_few] = FitStatus.CONSTANT_FEATURE


def level_dummies(codes: np.ndarray, n_levels: int) -> np.ndarray:
    """``(n, n_levels - 1)`` 0/1 dummies of levels ``1..n_levels-1`` for integer codes (0 = reference)."""
    codes = np.asarray(codes)
    return (codes[:, None] == np.arange(1, n_levels)[None, :]).astype(np.float64)
