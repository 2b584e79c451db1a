"""Covariate designs: rank checks and the shared QR factorisation.

A *design* is one (participant subset, covariate set). Every analysis that uses
the same design (for example several exposures over the same participants)
shares one factorisation, computed once and reused for every block of features.

Pure numpy/scipy: no Dask, no files, no pandas.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg

from scalable_assoc.models.thresholds import EXPOSURE_COLLINEAR

#: Relative tolerance on the pivoted-QR diagonal (columns scaled to unit norm)
#: below which a column counts as a linear combination of the others. Matches the
#: spirit of ``numpy.linalg.matrix_rank``: ``max(n, p) * eps`` relative to the
#: largest diagonal entry.
_EPS = np.finfo(np.float64).eps


@dataclass(frozen=True)
class CovariateDesign:
    """A factorised covariate design for ``n`` participants.

    Attributes
    ----------
    names:
        Column names of ``covariates`` (the first is always ``"(intercept)"``).
    covariates:
        ``(n, k)`` float64 design, intercept first, other columns centred and
        scaled to unit standard deviation (a reparametrisation that leaves every
        exposure slope unchanged but keeps per-feature Gram matrices well
        conditioned).
    q:
        ``(n, k)`` orthonormal basis of the column space of ``covariates``
        (only meaningful when ``problem`` is None).
    rank:
        Numerical rank of ``covariates``.
    problem:
        None for a full-rank design; otherwise a sentence naming the collinear
        covariates. No analysis is fitted on a design with a problem.
    """

    names: tuple[str, ...]
    covariates: np.ndarray
    q: np.ndarray
    rank: int
    problem: str | None
    #: ``(k,)`` the centring and scaling of ``covariates`` (0 and 1 for the intercept)
    column_means: np.ndarray | None = None
    column_scales: np.ndarray | None = None
    #: the pivoted QR behind ``q``: ``covariates[:, pivot] / norms[pivot] = q @ r_factor``
    pivot: np.ndarray | None = None
    r_factor: np.ndarray | None = None
    column_norms: np.ndarray | None = None

    def raw_covariates(self) -> np.ndarray:
        """``(n, k)`` the covariates as given (before centring and scaling)."""
        if self.column_means is None or self.column_scales is None:
            return self.covariates
        return self.covariates * self.column_scales + self.column_means

    @property
    def n(self) -> int:
        """Number of participants in the design."""
        return int(self.covariates.shape[0])


def standardise_columns(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centre and scale every column of ``matrix`` (shape ``(n, k)``).

    Returns ``(standardised, mean, scale)``; a constant column keeps scale 1 and
    becomes all zeros, which the rank check then reports.
    """
    mean = matrix.mean(axis=0)
    centred = matrix - mean
    scale = np.sqrt((centred**2).mean(axis=0))
    scale = np.where(scale > 0, scale, 1.0)
    return centred / scale, mean, scale


@dataclass(frozen=True)
class ExposureDirections:
    """Orthonormal exposure directions ``b_e = x_r / s_e`` (``(n, k)``), the scales ``s_e`` and which are collinear (``(k,)``).

    A collinear exposure keeps its (tiny) residual unscaled as its direction.
    """

    directions: np.ndarray
    scales: np.ndarray
    collinear: np.ndarray


def exposure_directions(design: CovariateDesign, exposures: np.ndarray) -> ExposureDirections:
    """Project the covariates out of every exposure and normalise it.

    Parameters
    ----------
    design:
        A full-rank factorised covariate design of ``n`` participants.
    exposures:
        ``(k, n)`` exposure values over the design's participants.

    Returns
    -------
    directions:
        :class:`ExposureDirections`: ``(n, k)`` directions, ``(k,)`` scales
        ``|x_r|`` and ``(k,)`` collinear flags (residual norm at most
        :data:`~scalable_assoc.models.thresholds.EXPOSURE_COLLINEAR` of the
        centred exposure's norm).
    """
    exposure_residuals = project_out(design.q, exposures.T)  # (n, k)
    scales = np.linalg.norm(exposure_residuals, axis=0)
    centred_norms = np.linalg.norm(exposures - exposures.mean(axis=1, keepdims=True), axis=1)
    collinear = scales <= EXPOSURE_COLLINEAR * np.maximum(centred_norms, np.finfo(float).tiny)
    return ExposureDirections(exposure_residuals / np.where(collinear, 1.0, scales), scales, collinear)


def _dependency_sentence(scaled: np.ndarray, names: tuple[str, ...], kept: np.ndarray, dropped: np.ndarray) -> str:
    """Say which columns each dropped column is a linear combination of."""
    parts = []
    for column in dropped:
        coef, *_ = np.linalg.lstsq(scaled[:, kept], scaled[:, column], rcond=None)
        involved = [names[k] for k, c in zip(kept, coef, strict=True) if abs(c) > 1e-8]
        if not involved:
            parts.append(f"'{names[column]}' is constant among these participants")
        else:
            parts.append(f"'{names[column]}' is a linear combination of " + ", ".join(f"'{n}'" for n in involved))
    return "rank-deficient design: " + "; ".join(parts)


def factorise_covariates(covariates: np.ndarray, names: tuple[str, ...]) -> CovariateDesign:
    """Check the rank of a covariate design and factorise it once.

    Parameters
    ----------
    covariates:
        ``(n, k)`` float64 matrix without missing values. Column 0 must be the
        intercept (all ones); the others are raw covariate values or dummies.
    names:
        ``k`` column names, used to name collinear covariates.
    """
    covariates = np.asarray(covariates, dtype=np.float64)
    n, k = covariates.shape
    if len(names) != k:
        raise ValueError(f"{k} covariate columns but {len(names)} names")
    if not np.all(np.isfinite(covariates)):
        raise ValueError("covariates must be finite; drop participants with missing covariates first")
    standardised = covariates.copy()
    means, scales = np.zeros(k), np.ones(k)
    if k > 1:
        standardised[:, 1:], means[1:], scales[1:] = standardise_columns(covariates[:, 1:])
    # Rank by pivoted QR on unit-norm columns, so the tolerance is scale-free.
    norms = np.linalg.norm(standardised, axis=0)
    unit = standardised / np.where(norms > 0, norms, 1.0)
    q_factor, r_factor, pivot = scipy.linalg.qr(unit, mode="economic", pivoting=True)
    diagonal = np.abs(np.diag(r_factor))
    tolerance = max(n, k) * _EPS * (diagonal[0] if diagonal.size else 0.0)
    rank = int(np.sum(diagonal > tolerance)) if n >= k else int(np.sum(diagonal[: min(n, k)] > tolerance))
    problem = None
    if n <= k:
        problem = f"too few participants ({n}) for {k} design columns"
    elif rank < k:
        problem = _dependency_sentence(unit, names, np.sort(pivot[:rank]), pivot[rank:])
    # Column pivoting and scaling change neither the span nor its orthonormal basis's use.
    q = q_factor if problem is None else np.empty((n, 0))
    return CovariateDesign(
        names=tuple(names),
        covariates=standardised,
        q=q,
        rank=rank,
        problem=problem,
        column_means=means,
        column_scales=scales,
        pivot=pivot,
        r_factor=r_factor,
        column_norms=np.where(norms > 0, norms, 1.0),
    )


def project_out(q: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Residuals of ``values`` (``(n,)`` or ``(n, m)``) after projection on ``q`` (``(n, k)``).

    Classical Gram-Schmidt applied twice ("twice is enough"): the second pass
    removes the rounding left by the first, so residuals stay accurate even when
    the covariates explain almost all of a feature's variance.
    """
    residual = values - q @ (q.T @ values)
    return residual - q @ (q.T @ residual)
