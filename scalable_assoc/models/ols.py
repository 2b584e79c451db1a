"""Batched ordinary least squares: one exposure slope per feature, many features at once.

Model for every feature ``j`` and exposure ``e`` sharing one covariate design::

    y_j = Z gamma_j + x_e beta_ej + error,    error ~ N(0, sigma_j^2)

Two paths, chosen per feature column of a block:

* complete columns (no missing value among the design's participants) use
  Frisch-Waugh-Lovell: the covariates are projected out of the exposure and of
  the whole block once, after which every slope is one matrix product;
* columns with missing values get their own participant subset: per-feature
  Gram matrices ``X' W_j X`` are built for all such columns in one matrix
  product and solved as a stack of small systems.

Residual sums of squares are always computed from explicit residuals (never by
the ``|y|^2 - beta^2 |x|^2`` identity, which loses precision when R^2 is near 1).
Degrees of freedom use the rank of the design, never an assumed count.

Pure numpy/scipy: no Dask, no files, no pandas.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np
import scipy.stats

from scalable_assoc.models.design import CovariateDesign, project_out, standardise_columns


class FitStatus(IntEnum):
    """Why a (feature, analysis) has or lacks an estimate. Stored as int8 in kernels."""

    OK = 0
    CONSTANT_FEATURE = 1
    TOO_FEW_VALUES = 2
    FEATURE_RANK_DEFICIENT = 3
    EXPOSURE_COLLINEAR = 4
    DESIGN_RANK_DEFICIENT = 5


#: Text written to the ``status`` column for each code (the design-level code is
#: replaced by the design's own sentence naming the collinear covariates).
STATUS_TEXT: dict[FitStatus, str] = {
    FitStatus.OK: "ok",
    FitStatus.CONSTANT_FEATURE: "constant feature among these participants",
    FitStatus.TOO_FEW_VALUES: "too few non-missing values for the number of design columns",
    FitStatus.FEATURE_RANK_DEFICIENT: "rank-deficient design among this feature's non-missing participants",
    FitStatus.EXPOSURE_COLLINEAR: "exposure is constant or collinear with the covariates",
    FitStatus.DESIGN_RANK_DEFICIENT: "rank-deficient design",
}

#: A per-feature Gram matrix (columns standardised) whose smallest eigenvalue is
#: below this fraction of its largest is treated as singular (condition number
#: of the design above ~3e6).
_GRAM_SINGULAR = 1e-13
#: Exposure residual norm, relative to the centred exposure's norm, below which
#: the exposure counts as explained by the covariates.
_EXPOSURE_COLLINEAR = 1e-8


@dataclass(frozen=True)
class SlopeFits:
    """Exposure slopes for ``k`` exposures x ``m`` features (every array ``(k, m)``).

    ``beta`` is in feature units per exposure unit, ``se`` its standard error,
    ``t = beta / se``, ``p`` two-sided from Student's t with ``n - rank`` degrees
    of freedom. Rows without an estimate have NaN statistics and a non-OK status.
    ``n_cases``/``n_controls`` count exposure == 1 / == 0 participants among
    those used (-1 where the exposure is not binary).
    """

    beta: np.ndarray
    se: np.ndarray
    t: np.ndarray
    p: np.ndarray
    n: np.ndarray
    n_cases: np.ndarray
    n_controls: np.ndarray
    status: np.ndarray

    def __post_init__(self) -> None:
        shape = self.beta.shape
        for name in ("se", "t", "p", "n", "n_cases", "n_controls", "status"):
            if getattr(self, name).shape != shape:
                raise ValueError(f"SlopeFits.{name} has shape {getattr(self, name).shape}, expected {shape}")


def two_sided_p(t: np.ndarray, df: np.ndarray) -> np.ndarray:
    """Two-sided Student-t p-values, ``2 * P(T_df > |t|)``, elementwise."""
    return 2.0 * scipy.stats.t.sf(np.abs(t), df)


def _case_counts(exposure: np.ndarray, present: np.ndarray | None, binary: bool) -> tuple[np.ndarray, np.ndarray]:
    """Cases and controls among used participants; ``present`` is ``(n, m)`` or None for all."""
    if not binary:
        shape = () if present is None else (present.shape[1],)
        return np.full(shape, -1, dtype=np.int64), np.full(shape, -1, dtype=np.int64)
    is_case = (exposure == 1).astype(np.float64)
    is_control = (exposure == 0).astype(np.float64)
    if present is None:
        return np.int64(is_case.sum()), np.int64(is_control.sum())
    return (is_case @ present).astype(np.int64), (is_control @ present).astype(np.int64)


def _fit_complete(
    design: CovariateDesign, exposure: np.ndarray, residual_block: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FWL slopes for complete columns. Returns ``(beta, se, df)``; beta/se ``(m,)``."""
    n = design.n
    exposure_residual = project_out(design.q, exposure)
    sxx = float(exposure_residual @ exposure_residual)
    beta = (exposure_residual @ residual_block) / sxx
    residuals = residual_block - np.outer(exposure_residual, beta)
    rss = np.einsum("ij,ij->j", residuals, residuals)
    df = n - design.rank - 1
    with np.errstate(invalid="ignore", divide="ignore"):
        se = np.sqrt(rss / df / sxx)
    return beta, se, np.full(beta.shape, df, dtype=np.float64)


def _fit_masked(
    design: CovariateDesign, exposure: np.ndarray, values: np.ndarray, present: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-feature-subset slopes via stacked Gram solves.

    ``values`` ``(n, m)`` with zeros where missing, ``present`` ``(n, m)`` float
    0/1. Returns ``(beta, se, df, singular)``, each ``(m,)``.
    """
    exposure_std, _, exposure_scale = standardise_columns(exposure[:, None])
    full = np.hstack([design.covariates, exposure_std])  # (n, p), exposure last
    p = full.shape[1]
    rows, cols = np.triu_indices(p)
    # Every Gram entry for every feature in one product: (pairs, n) @ (n, m).
    pair_products = full[:, rows] * full[:, cols]
    gram_upper = pair_products.T @ present  # (pairs, m)
    m = values.shape[1]
    gram = np.empty((m, p, p))
    gram[:, rows, cols] = gram_upper.T
    gram[:, cols, rows] = gram_upper.T
    cross = (full.T @ values).T  # (m, p)

    diagonal = np.sqrt(np.clip(np.einsum("mii->mi", gram), 0.0, None))
    safe_diagonal = np.where(diagonal > 0, diagonal, 1.0)
    normalised = gram / (safe_diagonal[:, :, None] * safe_diagonal[:, None, :])
    eigenvalues = np.linalg.eigvalsh(normalised)
    singular = (diagonal.min(axis=1) == 0) | (eigenvalues[:, 0] <= _GRAM_SINGULAR * eigenvalues[:, -1])

    solvable_gram = np.where(singular[:, None, None], np.eye(p), gram)
    unit = np.zeros((m, p))
    unit[:, -1] = 1.0
    solved = np.linalg.solve(solvable_gram, np.stack([cross, unit], axis=2))  # (m, p, 2)
    coefficients = solved[:, :, 0]
    # One step of iterative refinement removes most of the solve's rounding.
    correction = np.linalg.solve(solvable_gram, (cross - np.einsum("mij,mj->mi", solvable_gram, coefficients))[..., None])
    coefficients = coefficients + correction[..., 0]
    inverse_exposure = solved[:, -1, 1]

    residuals = (values - full @ coefficients.T) * present
    rss = np.einsum("ij,ij->j", residuals, residuals)
    n_used = present.sum(axis=0)
    df = n_used - p
    with np.errstate(invalid="ignore", divide="ignore"):
        se_std = np.sqrt(rss / df * inverse_exposure)
    beta = coefficients[:, -1] / exposure_scale[0]
    se = se_std / exposure_scale[0]
    return beta, se, df, singular


def fit_exposure_slopes(
    design: CovariateDesign,
    exposures: np.ndarray,
    binary: np.ndarray,
    block: np.ndarray,
) -> SlopeFits:
    """Fit ``feature ~ covariates + exposure`` for every exposure and feature.

    Parameters
    ----------
    design:
        The factorised covariate design of the ``n`` participants.
    exposures:
        ``(k, n)`` exposure values (0/1 for binary exposures), no missing values.
    binary:
        ``(k,)`` bool, whether each exposure is a case/control indicator.
    block:
        ``(n, m)`` transformed feature values; NaN marks a missing value, which
        leaves that participant out for that feature only.
    """
    exposures = np.atleast_2d(np.asarray(exposures, dtype=np.float64))
    block = np.asarray(block, dtype=np.float64)
    k, n = exposures.shape
    m = block.shape[1]
    if block.shape[0] != n or design.n != n:
        raise ValueError(f"block has {block.shape[0]} rows, exposures {n}, design {design.n}; they must agree")

    shape = (k, m)
    beta = np.full(shape, np.nan)
    se = np.full(shape, np.nan)
    df = np.full(shape, np.nan)
    n_used = np.zeros(shape, dtype=np.int64)
    n_cases = np.full(shape, -1, dtype=np.int64)
    n_controls = np.full(shape, -1, dtype=np.int64)
    status = np.zeros(shape, dtype=np.int8)

    missing = np.isnan(block)
    present_count = n - missing.sum(axis=0)
    with np.errstate(invalid="ignore"):
        spread = np.nanmax(block, axis=0) - np.nanmin(block, axis=0) if n else np.zeros(m)
    constant = ~(spread > 0)  # also true for all-missing columns
    complete = ~missing.any(axis=0)
    masked = ~complete

    if design.problem is not None:
        status[:] = FitStatus.DESIGN_RANK_DEFICIENT
        n_used[:] = present_count
        return SlopeFits(beta, se, beta.copy(), beta.copy(), n_used, n_cases, n_controls, status)

    residual_block = project_out(design.q, block[:, complete]) if complete.any() else None
    values = np.where(missing[:, masked], 0.0, block[:, masked])
    present = (~missing[:, masked]).astype(np.float64)

    for e in range(k):  # a handful of exposures per design; features stay vectorised
        exposure = exposures[e]
        centred = exposure - exposure.mean()
        exposure_residual = project_out(design.q, exposure)
        if np.linalg.norm(exposure_residual) <= _EXPOSURE_COLLINEAR * max(np.linalg.norm(centred), np.finfo(float).tiny):
            status[e] = FitStatus.EXPOSURE_COLLINEAR
            n_used[e] = present_count
            continue
        cases, controls = _case_counts(exposure, None, bool(binary[e]))
        n_cases[e, complete], n_controls[e, complete] = cases, controls
        n_used[e] = present_count
        if residual_block is not None:
            b, s, d = _fit_complete(design, exposure, residual_block)
            beta[e, complete], se[e, complete], df[e, complete] = b, s, d
        if masked.any():
            b, s, d, singular = _fit_masked(design, exposure, values, present)
            beta[e, masked], se[e, masked], df[e, masked] = b, s, d
            cases, controls = _case_counts(exposure, present, bool(binary[e]))
            n_cases[e, masked], n_controls[e, masked] = cases, controls
            masked_status = np.where(singular, FitStatus.FEATURE_RANK_DEFICIENT, FitStatus.OK)
            status[e, masked] = masked_status
        too_few = ~(df[e] >= 1)
        status[e] = np.where(too_few, FitStatus.TOO_FEW_VALUES, status[e])
        status[e] = np.where(constant & ~too_few, FitStatus.CONSTANT_FEATURE, status[e])

    not_ok = status != FitStatus.OK
    beta[not_ok] = np.nan
    se[not_ok] = np.nan
    with np.errstate(invalid="ignore", divide="ignore"):
        t = beta / se
    p = np.full(shape, np.nan)
    ok = ~not_ok
    p[ok] = two_sided_p(t[ok], df[ok])
    return SlopeFits(beta, se, t, p, n_used, n_cases, n_controls, status)
